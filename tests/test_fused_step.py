"""The hand-written MF step (``fused_step="auto"``) gives autograd's gradients and training, faster."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import recneg
from recneg.config import TrainConfig
from recneg.errors import ConfigError
from recneg.fused_step import AUTOGRAD, GRADIENTS, UPDATED, FusedMFStep, fused_step_blocker
from recneg.losses import BPRConfig, BPRLoss, SoftBPRConfig, SoftBPRLoss
from recneg.optim import LazyAdam, compiled_adam_blocker, use_sparse_gradients
from recneg.train import Trainer, fit
from recneg.train_step import TrainStep

FAST = dict(epochs=2, batch_size=64, lr=0.01, eval_every=2, patience=0, progress=False, threads=1)

CASES = {
    "uniform-bpr": ("uniform", {}, BPRLoss()),
    "uniform-3-sum": ("uniform", {"n_negatives": 3}, BPRLoss(BPRConfig(reduction="sum"))),
    "dns-softbpr": ("dns", {"n_candidates": 8}, SoftBPRLoss(SoftBPRConfig(beta=0.3))),
    "dns_mn-weights": ("dns_mn", {"n_candidates": 8, "n_selected": 3}, BPRLoss()),
    "softmax_v-weights": ("softmax_v", {"n_candidates": 8, "rho": 1.0}, BPRLoss()),
}


def _pair(small_split, sampler_name, sampler_args, sparse):
    """Two identical (model, sampler) pairs."""
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        model = recneg.build_model("mf", small_split.train, dim=8)
        use_sparse_gradients(model, "sparse_adam" if sparse else "adam")
        sampler = recneg.build_sampler(sampler_name, **sampler_args).bind(small_split.train)
        out.append((model, sampler))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_hand_written_gradients_equal_autograd(small_split, case, sparse, reg):
    name, args, loss_fn = CASES[case]
    (m_auto, s_auto), (m_fused, s_fused) = _pair(small_split, name, args, sparse)
    users = torch.as_tensor(small_split.train.users[:50])
    pos = torch.as_tensor(small_split.train.items[:50])
    loss_auto, _, _ = TrainStep(m_auto, s_auto, loss_fn, reg)(users, pos, torch.Generator().manual_seed(1))
    loss_auto.backward()
    fused = FusedMFStep(m_fused, s_fused, loss_fn, reg)
    loss_fused, _, neg, status = fused(users, pos, torch.Generator().manual_seed(1))
    assert status == GRADIENTS, "real-item negatives must take the hand-written path"
    torch.testing.assert_close(loss_fused, loss_auto.detach())
    for a, f in zip(m_auto.parameters(), m_fused.parameters(), strict=True):
        assert a.grad is not None and f.grad is not None and f.grad.is_sparse == sparse
        torch.testing.assert_close(f.grad.to_dense(), a.grad.to_dense(), rtol=1e-5, atol=1e-7)


def test_gradient_buffers_hold_only_the_current_batch(small_split):
    """The persistent buffers are cleared row by row: the second batch's gradient has nothing of the first."""
    (m_auto, s_auto), (m_fused, s_fused) = _pair(small_split, "uniform", {}, sparse=False)
    fused = FusedMFStep(m_fused, s_fused, BPRLoss(), 1e-3)
    step = TrainStep(m_auto, s_auto, BPRLoss(), 1e-3)
    train = small_split.train
    for lo, hi in ((0, 40), (40, 90)):
        users, pos = torch.as_tensor(train.users[lo:hi]), torch.as_tensor(train.items[lo:hi])
        fused(users, pos, torch.Generator().manual_seed(lo))
        m_auto.zero_grad(set_to_none=True)
        step(users, pos, torch.Generator().manual_seed(lo))[0].backward()
        for a, f in zip(m_auto.parameters(), m_fused.parameters(), strict=True):
            torch.testing.assert_close(f.grad, a.grad, rtol=1e-5, atol=1e-7)
        fused.clear()
        assert all(not p.grad.any() for p in m_fused.parameters())


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam", "adagrad"])
def test_training_with_and_without_the_fused_step_matches(small_split, optimizer):
    runs = {}
    for mode in ("auto", "off"):
        torch.manual_seed(0)
        model = recneg.build_model("mf", small_split.train, dim=8)
        sampler = recneg.build_sampler("dns", n_candidates=4)
        trainer = Trainer(
            model, sampler, small_split, config=TrainConfig(**FAST, optimizer=optimizer, fused_step=mode)
        )
        assert (trainer.fused is not None) == (mode == "auto")
        runs[mode] = (trainer.run(), model)
    (res_a, model_a), (res_o, model_o) = runs["auto"], runs["off"]
    for a, o in zip(model_a.parameters(), model_o.parameters(), strict=True):
        torch.testing.assert_close(a, o, rtol=1e-4, atol=1e-5)
    assert res_a.history[0]["loss"] == pytest.approx(res_o.history[0]["loss"], rel=1e-5)
    assert res_a.test["recall@20"] == pytest.approx(res_o.test["recall@20"], abs=0.01)


def test_synthetic_negatives_take_the_autograd_path(small_split):
    """PDNS mixing returns synthetic negatives: each batch falls back to autograd and still trains."""
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler("pdns", n_candidates=4).bind(small_split.train)
    fused = FusedMFStep(model, sampler, BPRLoss(), 1e-4)
    users, pos = torch.as_tensor(small_split.train.users[:30]), torch.as_tensor(small_split.train.items[:30])
    loss, _, neg, status = fused(users, pos, torch.Generator().manual_seed(0))
    assert status == AUTOGRAD and neg.reg_emb is not None and loss.requires_grad
    before = model.item_embedding.weight.detach().clone()
    fit(model, sampler, small_split, **{**FAST, "epochs": 1})
    assert not torch.equal(before, model.item_embedding.weight.detach())


def test_blockers_name_what_keeps_the_fused_step_off(small_split):
    mf = recneg.build_model("mf", small_split.train, dim=8)
    lightgcn = recneg.build_model("lightgcn", small_split.train, dim=8)
    dns = recneg.build_sampler("dns")

    class OwnSampler(recneg.samplers.Sampler):  # a user's sampler: autograd unless it opts in
        pass

    assert fused_step_blocker(mf, dns, BPRLoss(), "r1", distributed=False) is None
    assert "lightgcn" in fused_step_blocker(lightgcn, dns, BPRLoss(), "r1", False).lower()
    assert "OwnSampler" in fused_step_blocker(mf, OwnSampler(), BPRLoss(), "r1", False)
    assert "mixgcf" in fused_step_blocker(mf, recneg.build_sampler("mixgcf"), BPRLoss(), "r1", False).lower()
    assert "kpair" in fused_step_blocker(mf, dns, recneg.build_loss("kpair"), "r1", False).lower()
    assert "r2" in fused_step_blocker(mf, dns, BPRLoss(), "r2", distributed=False)
    assert "none" in fused_step_blocker(mf, dns, BPRLoss(BPRConfig(reduction="none")), "r1", False)
    assert "distributed" in fused_step_blocker(mf, dns, BPRLoss(), "r1", distributed=True)
    assert "deterministic" in fused_step_blocker(mf, dns, BPRLoss(), "r1", False, deterministic_cuda=True)
    with pytest.raises(ConfigError, match="fused_step"):
        TrainConfig(fused_step="always")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_compiled_lazy_adam_step_equals_autograd_plus_lazy_adam(small_split, case, reg):
    """Three numba-kernel steps give LazyAdam's parameters, moments and losses (batches repeat rows)."""
    pytest.importorskip("numba")
    name, args, loss_fn = CASES[case]
    (m_auto, s_auto), (m_comp, s_comp) = _pair(small_split, name, args, sparse=True)
    opt_auto = LazyAdam(list(m_auto.parameters()), lr=0.05)
    opt_comp = LazyAdam(list(m_comp.parameters()), lr=0.05)
    step = TrainStep(m_auto, s_auto, loss_fn, reg)
    fused = FusedMFStep(m_comp, s_comp, loss_fn, reg, opt_comp)
    assert fused.compiled
    train = small_split.train
    for s in range(3):
        idx = torch.randint(0, len(train), (40,), generator=torch.Generator().manual_seed(s))
        idx = torch.cat([idx, idx[:10]])  # the same (user, positive) twice in one batch
        users, pos = torch.as_tensor(train.users)[idx], torch.as_tensor(train.items)[idx]
        opt_auto.zero_grad(set_to_none=True)
        loss_auto = step(users, pos, torch.Generator().manual_seed(s))[0]
        loss_auto.backward()
        opt_auto.step()
        loss_comp, _, _, status = fused(users, pos, torch.Generator().manual_seed(s))
        assert status == UPDATED
        torch.testing.assert_close(loss_comp, loss_auto.detach(), rtol=1e-5, atol=1e-6)
        for a, c in zip(m_auto.parameters(), m_comp.parameters(), strict=True):
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)
            sa, sc = opt_auto.state[a], opt_comp.state[c]
            assert sc["step"] == sa["step"] == s + 1
            torch.testing.assert_close(sc["exp_avg"], sa["exp_avg"], rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(sc["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-4, atol=1e-9)


def test_trainer_runs_the_compiled_step_for_sparse_adam(small_split):
    pytest.importorskip("numba")
    model = recneg.build_model("mf", small_split.train, dim=8)
    trainer = Trainer(
        model,
        recneg.build_sampler("uniform"),
        small_split,
        config=TrainConfig(**FAST, optimizer="sparse_adam"),
    )
    assert trainer.fused is not None and trainer.fused.compiled
    adam = Trainer(
        recneg.build_model("mf", small_split.train, dim=8),
        recneg.build_sampler("uniform"),
        small_split,
        config=TrainConfig(**FAST, optimizer="adam"),
    )
    assert adam.fused is not None and adam.fused.compiled  # dense Adam: the compiled dense update
    adagrad = Trainer(
        recneg.build_model("mf", small_split.train, dim=8),
        recneg.build_sampler("uniform"),
        small_split,
        config=TrainConfig(**FAST, optimizer="adagrad"),
    )
    assert adagrad.fused is not None and not adagrad.fused.compiled  # Adagrad: the tensor path
    assert adagrad.train_epoch()["step_paths"] == {"fused": math.ceil(len(small_split.train) / 64)}


def _adam_steps(small_split, case, reg, weight_decay, compiled_steps, n_steps=3, defer=False):
    """``n_steps`` MF steps with torch's Adam; those in ``compiled_steps`` through the compiled kernel
    (with ``defer``: deferring unread rows' steps), the others through autograd + ``optimizer.step()``.
    The lr changes every step (as a scheduler would). Returns the model, optimiser and losses."""
    name, args, loss_fn = CASES[case]
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler(name, **args).bind(small_split.train)
    opt = torch.optim.Adam(list(model.parameters()), lr=0.05, weight_decay=weight_decay, fused=True)
    fused = FusedMFStep(model, sampler, loss_fn, reg, opt, defer=defer)
    step = TrainStep(model, sampler, loss_fn, reg)
    train, losses = small_split.train, []
    for s in range(n_steps):
        opt.param_groups[0]["lr"] = 0.05 / (1 + s)
        idx = torch.randint(0, len(train), (40,), generator=torch.Generator().manual_seed(s))
        idx = torch.cat([idx, idx[:10]])  # the same (user, positive) twice in one batch
        users, pos = torch.as_tensor(train.users)[idx], torch.as_tensor(train.items)[idx]
        if s in compiled_steps:
            assert fused.compiled
            loss, _, _, status = fused(users, pos, torch.Generator().manual_seed(s))
            assert status == UPDATED
        else:
            fused.flush()  # the contract of defer: current tables before anything else steps or reads
            opt.zero_grad(set_to_none=True)
            loss = step(users, pos, torch.Generator().manual_seed(s))[0]
            loss.backward()
            opt.step()
        losses.append(loss.detach())
    fused.flush()
    return model, opt, losses


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("reg", "weight_decay"), [(0.0, 0.0), (0.05, 0.0), (0.0, 0.01)])
def test_compiled_dense_adam_step_equals_autograd_plus_adam(small_split, case, reg, weight_decay):
    """The compiled dense update is torch's Adam: every row moves (momentum), weight decay on all rows."""
    pytest.importorskip("numba")
    m_auto, opt_auto, loss_auto = _adam_steps(small_split, case, reg, weight_decay, compiled_steps=())
    m_comp, opt_comp, loss_comp = _adam_steps(small_split, case, reg, weight_decay, compiled_steps=(0, 1, 2))
    torch.testing.assert_close(loss_comp, loss_auto, rtol=1e-5, atol=1e-6)
    for a, c in zip(m_auto.parameters(), m_comp.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)
        sa, sc = opt_auto.state[a], opt_comp.state[c]
        assert sc["step"].dtype == sa["step"].dtype and float(sc["step"]) == float(sa["step"]) == 3
        torch.testing.assert_close(sc["exp_avg"], sa["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sc["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-4, atol=1e-9)


#: DeferredAdam.FLUSH_FRACTION that sends every read and update row by row (0) or through whole-table
#: passes (huge); the default (4) sends this small split's batches through whole-table passes
ROUTES = {"row by row": 0, "whole table": 10**9}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(("reg", "weight_decay"), [(0.0, 0.0), (0.05, 0.0), (0.0, 0.01)])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_deferred_dense_adam_equals_adam_at_every_row(
    small_split, case, reg, weight_decay, route, monkeypatch
):
    """``defer``: rows a batch does not touch take their steps when read or flushed; the same tables and
    moments as torch's Adam over six steps (rows left behind for several steps, the lr changing)."""
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    monkeypatch.setattr(DeferredAdam, "FLUSH_FRACTION", ROUTES[route])
    m_auto, opt_auto, loss_auto = _adam_steps(small_split, case, reg, weight_decay, (), n_steps=6)
    m_def, opt_def, loss_def = _adam_steps(small_split, case, reg, weight_decay, range(6), 6, defer=True)
    torch.testing.assert_close(loss_def, loss_auto, rtol=1e-5, atol=1e-6)  # DNS scored current rows
    for a, c in zip(m_auto.parameters(), m_def.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)
        sa, sc = opt_auto.state[a], opt_def.state[c]
        assert float(sc["step"]) == float(sa["step"]) == 6
        torch.testing.assert_close(sc["exp_avg"], sa["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sc["exp_avg_sq"], sa["exp_avg_sq"], rtol=1e-4, atol=1e-9)


def test_deferred_steps_interleave_with_the_optimisers_own(small_split, monkeypatch):
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    monkeypatch.setattr(DeferredAdam, "FLUSH_FRACTION", 0)  # rows left behind between the torch steps
    m_auto, _, loss_auto = _adam_steps(small_split, "dns-softbpr", 0.05, 0.0, (), n_steps=6)
    m_mix, _, loss_mix = _adam_steps(small_split, "dns-softbpr", 0.05, 0.0, (0, 1, 3, 4), 6, defer=True)
    torch.testing.assert_close(loss_mix, loss_auto, rtol=1e-5, atol=1e-6)
    for a, c in zip(m_auto.parameters(), m_mix.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("route", ["row by row", "whole table"])
def test_replayed_steps_equal_adam_written_out_by_hand(route):
    """A row left behind for three steps (no gradient, lr changing) is brought up to date on reading:
    Adam's formulas written out in float64. ``whole table``: a read of many rows replays every row."""
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    beta1, beta2, eps = 0.9, 0.999, 1e-8
    table = np.full((16, 2), 0.5, dtype=np.float32)
    m = np.zeros((16, 2), dtype=np.float32)
    v = np.zeros((16, 2), dtype=np.float32)
    table[1], m[1], v[1] = [0.3, 0.1], [0.02, -0.01], [4e-4, 1e-8]
    expect_p, expect_m, expect_v = (x[1].astype(np.float64) for x in (table, m, v))
    deferred = DeferredAdam(16)
    if route == "whole table":
        deferred.FLUSH_FRACTION = 16  # 3 ids of 16 rows count as "many"
    deferred.start(10, (beta1, beta2, eps, 0.0))
    for t, lr in ((11, 0.01), (12, 0.005), (13, 0.02)):
        deferred.record(t, lr / (1 - beta1**t), math.sqrt(1 - beta2**t))
        expect_m, expect_v = beta1 * expect_m, beta2 * expect_v
        m_hat, v_hat = expect_m / (1 - beta1**t), expect_v / (1 - beta2**t)
        expect_p = expect_p - lr * m_hat / (np.sqrt(v_hat) + eps)
    deferred.synced[0] = 13  # row 0 is current (a batch touched it); the others owe steps 11-13
    deferred.catch_up(table, m, v, np.array([1, 1, 0], dtype=np.int64))
    np.testing.assert_allclose(table[1], expect_p, rtol=1e-6)
    np.testing.assert_allclose(m[1], expect_m, rtol=1e-6)
    np.testing.assert_allclose(v[1], expect_v, rtol=1e-6)
    assert table[0].tolist() == [0.5, 0.5] and deferred.synced[:2].tolist() == [13, 13]
    assert table[2].tolist() == [0.5, 0.5]  # zero moments: replayed (whole table) or not, it stays
    assert deferred.synced[2] == (13 if route == "whole table" else 10)
    assert deferred.pending == (route == "row by row")
    deferred.record(14, 0.01, 1.0)
    with pytest.raises(IndexError, match="outside"):
        deferred.catch_up(table, m, v, np.array([16], dtype=np.int64))


@pytest.mark.parametrize("route", ["row by row", "whole table"])
def test_long_gaps_are_summed_in_closed_form_where_the_series_converges(route):
    """Rows 300 steps behind (lr changing every step) against Adam written out in float64, step by step.

    Row 0's parameters have ``u = ε / sqrt(v)`` from 1e-6 to 0.08 (the series' later terms matter): each
    moved once, in closed form. Row 5 has one parameter with ``v`` so small that the series would
    converge too slowly: that one is replayed step by step, the others summed. Row 1 has three such
    parameters (more than an eighth of the row): the whole row is replayed step by step. A parameter with
    ``m = 0``, ``v > 0`` does not move; row 2 has moments of zero and stays; row 6, summed in closed
    form, has parameters with ``m = 0`` (``v`` zero or not) that stay beside others that move. Rows that
    started at other steps (3 at step 100, 4 at 299) read the sums of their own starting step.
    Displacements are checked to float32's rounding of the parameter: 2 ulp for one update, 50 ulp for
    300 updates one by one."""
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    beta1, beta2, eps, start, n_steps, dim = 0.9, 0.999, 1e-8, 20, 300, 16
    rng = np.random.default_rng(3)
    table = rng.standard_normal((8, dim)).astype(np.float32)
    m = (rng.standard_normal((8, dim)) * 1e-3).astype(np.float32)
    v = (rng.random((8, dim)) * 1e-4 + 1e-4).astype(np.float32)
    v[0, :6] = [1e-4, 1e-8, 1e-11, 1e-13, 4e-14, 1.5e-14]  # u = 1e-6 ... 0.082 (0.095 after 300 steps)
    m[0] = 0.3 * np.sqrt(v[0]) * np.sign(m[0])
    v[1, :3] = [1e-16, 4e-15, 1e-14]  # u = 1, 0.16, 0.1
    v[5, 0], m[5, 0], m[5, 1] = 1e-16, 1e-9, 0.0
    m[1, 3], m[2], v[2] = 0.0, 0.0, 0.0
    m[6, :4], v[6, :2] = 0.0, 0.0
    lrs = 1e-2 * (1.0 + 0.5 * np.sin(np.arange(n_steps)))
    deferred = DeferredAdam(8)
    deferred.FLUSH_FRACTION = 8 if route == "whole table" else 1  # 7 of 8 rows read: whole table or not
    deferred.start(start, (beta1, beta2, eps, 0.0))
    expect = [[x[r].astype(np.float64) for x in (table, m, v)] for r in range(8)]
    joined = {3: 100, 4: 299}  # row -> the step a batch last brought it to (its values as they are now)
    for i, lr in enumerate(lrs):
        t = start + 1 + i
        deferred.record(t, lr / (1 - beta1**t), math.sqrt(1 - beta2**t))
        for row in range(8):
            if t <= joined.get(row, start):
                continue
            p_, m_, v_ = expect[row]
            m_, v_ = beta1 * m_, beta2 * v_
            p_ = p_ - lr / (1 - beta1**t) * m_ / (np.sqrt(v_ / (1 - beta2**t)) + eps)
            expect[row] = [p_, m_, v_]
    for row, at in joined.items():
        deferred.synced[row] = at
    before = table.copy()
    deferred.catch_up(table, m, v, np.array([0, 1, 2, 3, 4, 5, 6], dtype=np.int64))
    for row in range(7):
        moved, want_moved = table[row].astype(np.float64) - before[row], expect[row][0] - before[row]
        ulps = 50 if row == 1 else 2
        error = np.abs(moved - want_moved) - 1e-5 * np.abs(want_moved)
        assert (error <= ulps * np.spacing(np.abs(before[row]))).all(), (row, moved, want_moved)
        for got, want in zip((m[row], v[row]), expect[row][1:], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (table[0] != before[0]).all() and (table[5, 2:] != before[5, 2:]).all()  # the rows did move
    assert table[1, 3] == before[1, 3] and table[5, 1] == before[5, 1]  # m = 0: not moved
    assert (table[6, :4] == before[6, :4]).all() and (table[6, 4:] != before[6, 4:]).all()
    assert not m[6, :4].any() and not v[6, :2].any()
    assert table[2].tolist() == before[2].tolist() and not m[2].any()
    assert deferred.rows_one_by_one == 2  # rows 1 and 5
    assert deferred.rows_caught_up == (8 if route == "whole table" else 7)


def test_step_by_step_replay_agrees_with_the_closed_form():
    """``DeferredAdam(closed_form=False)`` (the benchmarks' comparison) replays every row one step at a
    time, and lands where the closed form does, to float32 rounding over 40 steps. Rows fewer than
    ``CLOSED_FORM_MIN_STEPS`` behind are replayed step by step either way."""
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    rng = np.random.default_rng(1)
    v = (rng.random((50, 32)) * 1e-8 + 1e-10).astype(np.float32)
    arrays = [
        (rng.standard_normal((50, 32)) * 0.1).astype(np.float32),
        (rng.standard_normal((50, 32)) * 1e-5).astype(np.float32),
        v,
    ]
    results = {}
    for closed_form in (True, False):
        table, m, v = (a.copy() for a in arrays)
        deferred = DeferredAdam(50, closed_form=closed_form)
        deferred.start(100, (0.9, 0.999, 1e-8, 0.0))
        for t in range(101, 141):
            deferred.record(t, 1e-3 / (1 - 0.9**t), math.sqrt(1 - 0.999**t))
        deferred.catch_up(table, m, v, np.arange(0, 50, 2))
        deferred.flush(table, m, v)
        assert deferred.rows_caught_up == 50
        assert deferred.rows_one_by_one == (0 if closed_form else 50)
        results[closed_form] = (table, m, v)
    moved = results[True][0] - arrays[0]
    assert np.abs(moved).min() > 0
    np.testing.assert_allclose(
        results[False][0] - arrays[0], moved, rtol=1e-4, atol=4 * np.spacing(np.float32(0.5))
    )
    for a, b in zip(results[True][1:], results[False][1:], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5)
    from recneg.kernels import CLOSED_FORM_MIN_STEPS

    table, m, v = (a.copy() for a in arrays)
    deferred = DeferredAdam(50)
    deferred.start(100, (0.9, 0.999, 1e-8, 0.0))
    for t in range(101, 101 + CLOSED_FORM_MIN_STEPS - 1):
        deferred.record(t, 1e-3 / (1 - 0.9**t), math.sqrt(1 - 0.999**t))
    deferred.flush(table, m, v)
    assert deferred.rows_one_by_one == deferred.rows_caught_up == 50


def test_the_series_sums_equal_their_definition():
    """``DeferredAdam.series[n, s − offset + 1]`` is ``S_n(s) = Σ_{τ=s+1}^{t} a_τ b_τ^(n+1) ρ_n^(τ−s)`` with
    ``ρ_n = β1 / sqrt(β2)^(n+1)``, summed here term by term, for every term ``n`` and starting step ``s``;
    after the table grows (more than 64 steps) and after a flush (the sums start again)."""
    pytest.importorskip("numba")
    from recneg.kernels import SERIES_TERMS, DeferredAdam

    beta1, beta2, start = 0.8, 0.99, 5
    deferred = DeferredAdam(3)
    deferred.start(start, (beta1, beta2, 1e-8, 0.0))
    rng = np.random.default_rng(0)
    a, b = rng.random(90) * 1e-2, rng.random(90)
    for i in range(90):
        deferred.record(start + 1 + i, a[i], b[i])
    t = start + 90
    for s in (start, start + 1, start + 40, t - 1, t):
        for n in range(SERIES_TERMS):
            rho = beta1 / math.sqrt(beta2) ** (n + 1)
            want = sum(
                a[tau - start - 1] * b[tau - start - 1] ** (n + 1) * rho ** (tau - s)
                for tau in range(s + 1, t + 1)
            )
            assert deferred.series[n, s - deferred.offset + 1] == pytest.approx(want, rel=1e-12, abs=1e-300)
    table = np.zeros((3, 2), dtype=np.float32)
    deferred.flush(table, table.copy(), table.copy())
    deferred.record(t + 1, 0.5, 0.25)
    assert deferred.series[:, 0] == pytest.approx(
        [0.5 * 0.25 ** (n + 1) * beta1 / math.sqrt(beta2) ** (n + 1) for n in range(SERIES_TERMS)]
    )
    assert not deferred.series[:, 1].any()


def test_stepping_adam_elsewhere_while_rows_are_behind_is_refused(small_split, monkeypatch):
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    monkeypatch.setattr(DeferredAdam, "FLUSH_FRACTION", 0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    opt = torch.optim.Adam(list(model.parameters()), lr=0.05)
    fused = FusedMFStep(
        model, recneg.build_sampler("uniform").bind(small_split.train), BPRLoss(), 0.0, opt, defer=True
    )
    users, pos = torch.as_tensor(small_split.train.users[:20]), torch.as_tensor(small_split.train.items[:20])
    assert fused(users, pos, torch.Generator().manual_seed(0))[3] == UPDATED
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # without fused.flush(): the rows left behind would take the wrong steps
    with pytest.raises(RuntimeError, match="flush"):
        fused(users, pos, torch.Generator().manual_seed(1))


def test_the_trainer_flushes_deferred_steps_at_the_end_of_an_epoch(small_split, monkeypatch):
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    monkeypatch.setattr(DeferredAdam, "FLUSH_FRACTION", 0)
    behind = []
    original = DeferredAdam.flush

    def flush(self, *arrays):
        behind.append(int((self.synced < self.step).sum()))
        original(self, *arrays)

    monkeypatch.setattr(DeferredAdam, "flush", flush)
    trainer = Trainer(
        recneg.build_model("mf", small_split.train, dim=8),
        recneg.build_sampler("uniform"),
        small_split,
        config=TrainConfig(**FAST, optimizer="adam"),
    )
    assert trainer.fused is not None and trainer.fused.defer
    trainer.train_epoch()
    assert max(behind) > 0  # rows were left behind during the epoch, and brought up to date at its end
    assert trainer.fused._deferred and not any(d.pending for d in trainer.fused._deferred.values())
    steps = {int(trainer.optimizer.state[p]["step"]) for p in trainer.model.parameters()}
    assert all(set(d.synced.tolist()) == steps for d in trainer.fused._deferred.values())


def test_compiled_and_autograd_adam_steps_share_one_state(small_split):
    """A compiled step, then torch's own Adam step, then a compiled one: the same as three of torch's."""
    pytest.importorskip("numba")
    m_auto, _, loss_auto = _adam_steps(small_split, "dns-softbpr", 0.05, 0.0, compiled_steps=())
    m_mix, _, loss_mix = _adam_steps(small_split, "dns-softbpr", 0.05, 0.0, compiled_steps=(0, 2))
    torch.testing.assert_close(loss_mix, loss_auto, rtol=1e-5, atol=1e-6)
    for a, c in zip(m_auto.parameters(), m_mix.parameters(), strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-6)


def test_adam_variants_the_kernel_does_not_implement_keep_the_tensor_path(small_split):
    pytest.importorskip("numba")
    model = recneg.build_model("mf", small_split.train, dim=8)
    tables = list(model.parameters())
    assert compiled_adam_blocker(torch.optim.Adam(tables), tables) is None
    assert "amsgrad" in compiled_adam_blocker(torch.optim.Adam(tables, amsgrad=True), tables)
    assert "maximize" in compiled_adam_blocker(torch.optim.Adam(tables, maximize=True), tables)
    assert "AdamW" in compiled_adam_blocker(torch.optim.AdamW(tables), tables)
    assert "not among" in compiled_adam_blocker(torch.optim.Adam(tables[:1]), tables)
    sampler = recneg.build_sampler("uniform").bind(small_split.train)
    fused = FusedMFStep(model, sampler, BPRLoss(), 1e-4, torch.optim.Adam(tables, amsgrad=True))
    users, pos = torch.as_tensor(small_split.train.users[:20]), torch.as_tensor(small_split.train.items[:20])
    assert not fused.compiled and fused(users, pos, torch.Generator().manual_seed(0))[3] == GRADIENTS


def test_a_kernel_that_cannot_compile_falls_back_to_the_tensor_path(small_split, monkeypatch):
    """numba present but failing to compile (an odd platform): one warning, then the same maths in tensors."""
    pytest.importorskip("numba")
    from recneg import kernels

    def broken():
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernels.AdamBPRKernel, "warm_up", staticmethod(broken))
    (model, sampler), _ = _pair(small_split, "uniform", {}, sparse=True)
    opt = LazyAdam(list(model.parameters()), lr=0.05)
    fused = FusedMFStep(model, sampler, BPRLoss(), 1e-4, opt)
    users, pos = torch.as_tensor(small_split.train.users[:20]), torch.as_tensor(small_split.train.items[:20])
    with pytest.warns(RuntimeWarning, match="no LLVM here"):
        status = fused(users, pos, torch.Generator().manual_seed(0))[3]
    assert status == GRADIENTS and not fused.compiled
    assert model.item_embedding.weight.grad.is_sparse
    assert fused(users, pos, torch.Generator().manual_seed(1))[3] == GRADIENTS  # no second warning needed


class _OutOfRangeSampler(recneg.samplers.Sampler):
    """Declares item-row negatives but returns an id one past the catalogue (a bug in a user's sampler)."""

    emits_item_rows = True

    def forward(self, users, pos, view, generator=None):
        from recneg.samplers.base import Negatives

        ids = torch.full((len(users), 1), self.bound_train.n_items)
        return Negatives(emb=torch.zeros(len(users), 1, 8), ids=ids)


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_the_compiled_step_refuses_ids_outside_the_tables(small_split, optimizer):
    """The kernels index rows unsigned, without bounds checks: ids are checked first, nothing is written."""
    pytest.importorskip("numba")
    model = recneg.build_model("mf", small_split.train, dim=8)
    use_sparse_gradients(model, optimizer)
    params = list(model.parameters())
    opt = LazyAdam(params, lr=0.01) if optimizer == "sparse_adam" else torch.optim.Adam(params, lr=0.01)
    sampler = _OutOfRangeSampler().bind(small_split.train)
    fused = FusedMFStep(model, sampler, BPRLoss(), 0.0, opt, defer=True)
    users, pos = torch.as_tensor(small_split.train.users[:20]), torch.as_tensor(small_split.train.items[:20])
    before = [p.detach().clone() for p in params]
    with pytest.raises(IndexError, match="outside the tables"):
        fused(users, pos, torch.Generator().manual_seed(0))
    for b, p in zip(before, params, strict=True):
        assert torch.equal(b, p.detach())


@pytest.mark.parametrize(("sampler", "item_rows_behind"), [("dns", False), ("uniform", True)])
def test_a_table_the_sampler_reads_wholesale_takes_the_dense_pass(
    small_split, monkeypatch, sampler, item_rows_behind
):
    """DNS reads most of the item table every step: its update then runs over every row (no row left
    behind for the next step's read to replay at random); uniform's item rows stay deferred."""
    pytest.importorskip("numba")
    from recneg.kernels import DeferredAdam

    monkeypatch.setattr(DeferredAdam, "FLUSH_FRACTION", 1)  # 400 candidates of 300 items: wholesale; 100: not
    model = recneg.build_model("mf", small_split.train, dim=8)
    opt = torch.optim.Adam(list(model.parameters()), lr=0.05)
    args = {"n_candidates": 8} if sampler == "dns" else {}
    built = recneg.build_sampler(sampler, **args).bind(small_split.train)
    fused = FusedMFStep(model, built, BPRLoss(), 0.0, opt, defer=True)
    users, pos = torch.as_tensor(small_split.train.users[:50]), torch.as_tensor(small_split.train.items[:50])
    for s in range(3):
        assert fused(users, pos, torch.Generator().manual_seed(s))[3] == UPDATED
    assert fused._deferred["item"].pending == item_rows_behind
    assert fused._deferred["user"].pending  # 50 pairs of 200 users: those rows stay deferred either way

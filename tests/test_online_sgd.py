"""``online_sgd``: LearnBPR's pair-by-pair SGD in the compiled MF step, against a reference and by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import recneg
from recneg import kernels
from recneg.config import TrainConfig
from recneg.errors import ConfigError
from recneg.fused_step import UPDATED, FusedMFStep
from recneg.losses import BPRConfig, BPRLoss, SoftBPRConfig, SoftBPRLoss
from recneg.optim import OnlineSGD, make_optimizer
from recneg.train import Trainer

# numba is a dev dependency, so CI runs these; it is imported by the kernels on first use, not here
pytestmark = pytest.mark.skipif(
    not kernels.AVAILABLE, reason="online_sgd needs numba (pip install recneg[fast])"
)

FAST = dict(epochs=3, batch_size=64, lr=0.05, eval_every=3, patience=0, progress=False, threads=1)


def reference(user_table, item_table, users, pos, negs, weight, beta, lr, lam):
    """LearnBPR written pair by pair in float64 vectors (the formulas of ``kernels._online_sgd_bpr``)."""
    U, V = user_table.astype(np.float64), item_table.astype(np.float64)
    n = negs.shape[1]
    w_all = weight if weight is not None else np.full(negs.shape, 1.0 / n)
    total = 0.0
    for b in range(len(users)):
        u, i, js, w = users[b], pos[b], negs[b], w_all[b]
        e_u, e_i = U[u].copy(), V[i].copy()
        z = beta * (V[js] @ e_u - e_u @ e_i)  # [n]
        total += float(np.sum(w * np.logaddexp(0.0, z)))
        total += 0.5 * lam * (e_u @ e_u + e_i @ e_i + float(np.sum(w * (V[js] ** 2).sum(1))))
        g = w * beta / (1.0 + np.exp(-z))  # ∂f_b/∂r_bj
        U[u] = e_u - lr * (g @ V[js] - g.sum() * e_i + lam * e_u)
        V[i] = e_i - lr * (-g.sum() * e_u + lam * e_i)
        for c, j in enumerate(js):  # one negative after another, each on its current value
            V[j] = V[j] - lr * (g[c] * e_u + lam * w[c] * V[j])
    return U, V, total


def _problem(seed, batch=30, n=1, n_users=12, n_items=20, dim=8, weighted=False):
    rng = np.random.default_rng(seed)
    U = (rng.standard_normal((n_users, dim)) * 0.5).astype(np.float32)
    V = (rng.standard_normal((n_items, dim)) * 0.5).astype(np.float32)
    users = rng.integers(0, n_users, batch)
    pos = rng.integers(0, n_items, batch)
    negs = rng.integers(0, n_items, (batch, n))
    if n > 1:
        negs[0, 1] = negs[0, 0]  # a negative listed twice in one row
    weight = None
    if weighted:
        raw = rng.random((batch, n)).astype(np.float32)
        weight = (raw / raw.sum(1, keepdims=True)).astype(np.float32)
    return U, V, users, pos, negs, weight


@pytest.mark.parametrize(
    "n, weighted, beta, lam",
    [
        (1, False, 1.0, 0.0),
        (1, False, 1.0, 0.05),
        (1, True, 0.4, 0.05),
        (3, False, 1.0, 0.05),
        (4, True, 0.7, 0.02),
    ],
)
def test_sequential_kernel_equals_the_pair_by_pair_reference(n, weighted, beta, lam):
    U, V, users, pos, negs, weight = _problem(n + int(weighted), n=n, weighted=weighted)
    U_ref, V_ref, total_ref = reference(U, V, users, pos, negs, weight, beta, 0.1, lam)
    total = kernels.online_sgd_bpr(U, V, users, pos, negs, weight, beta, 0.1, lam, n_parts=1)
    np.testing.assert_allclose(U, U_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(V, V_ref, rtol=1e-4, atol=1e-5)
    assert total == pytest.approx(total_ref, rel=1e-5)


def test_one_pair_by_hand():
    """e_u = (1, 0), e_i = (0, 1), e_j = (1, 1): r⁺ = 0, r⁻ = 1, g = σ(1) = 0.731059; lr 0.1, λ = 0."""
    U = np.array([[1.0, 0.0]], dtype=np.float32)
    V = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    ids = np.zeros(1, dtype=np.int64)
    total = kernels.online_sgd_bpr(U, V, ids, ids, np.ones((1, 1), dtype=np.int64), None, 1.0, 0.1, 0.0)
    g = 1.0 / (1.0 + math.exp(-1.0))
    assert total == pytest.approx(math.log1p(math.e))  # softplus(1) = 1.313262
    np.testing.assert_allclose(U, [[1.0 - 0.1 * g, 0.0]], rtol=1e-6)  # − lr · g (e_j − e_i) = −lr g (1, 0)
    np.testing.assert_allclose(V, [[0.1 * g, 1.0], [1.0 - 0.1 * g, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("parts", [2, 3])
def test_blocks_on_disjoint_rows_equal_the_sequential_run(parts):
    """Blocks that share no row cannot interfere, so however the threads run them, the result is exact."""
    rng = np.random.default_rng(5)
    U = (rng.standard_normal((8, 4)) * 0.5).astype(np.float32)
    V = (rng.standard_normal((24, 4)) * 0.5).astype(np.float32)
    users = np.arange(8)
    pos = np.arange(8) * 3
    negs = (np.arange(8) * 3 + 1).reshape(8, 1)  # every pair owns its three rows
    U1, V1 = U.copy(), V.copy()
    t1 = kernels.online_sgd_bpr(U1, V1, users, pos, negs, None, 1.0, 0.2, 0.01, n_parts=1)
    U2, V2 = U.copy(), V.copy()
    t2 = kernels.online_sgd_bpr(U2, V2, users, pos, negs, None, 1.0, 0.2, 0.01, n_parts=parts)
    assert not np.array_equal(U1, U)  # every pair moved its rows
    np.testing.assert_array_equal(U2, U1)
    np.testing.assert_array_equal(V2, V1)
    assert t2 == pytest.approx(t1, rel=1e-6)


def test_online_sgd_step_reports_the_mean_loss_and_updates_in_place(small_split):
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler("uniform").bind(small_split.train)
    opt = make_optimizer("online_sgd", model.parameters(), lr=0.1)
    assert isinstance(opt, OnlineSGD)
    step = FusedMFStep(model, sampler, BPRLoss(), 0.01, opt, deterministic=True)
    step.check_online_sgd()
    users = torch.as_tensor(small_split.train.users[:40])
    pos = torch.as_tensor(small_split.train.items[:40])
    U0, V0 = (t.detach().numpy().copy() for t in model.tables())
    loss, _, neg, status = step(users, pos, torch.Generator().manual_seed(0))
    assert status == UPDATED and model.user_embedding.weight.grad is None
    U_ref, V_ref, total = reference(U0, V0, users.numpy(), pos.numpy(), neg.ids.numpy(), None, 1.0, 0.1, 0.01)
    assert float(loss) == pytest.approx(total / 40, rel=1e-5)
    np.testing.assert_allclose(model.user_embedding.weight.detach().numpy(), U_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.item_embedding.weight.detach().numpy(), V_ref, rtol=1e-4, atol=1e-6)


def _trainer(split, sampler="uniform", loss=None, model="mf", **cfg):
    config = TrainConfig(**{**FAST, "optimizer": "online_sgd", **cfg})
    torch.manual_seed(0)
    return Trainer(
        recneg.build_model(model, split.train, dim=8),
        recneg.build_sampler(sampler),
        split,
        config=config,
        loss=loss,
    )


@pytest.mark.parametrize("sampler", ["uniform", "dns"])
def test_trainer_learns_with_online_sgd_and_repeats_itself(small_split, sampler):
    runs = []
    for _ in range(2):
        trainer = _trainer(small_split, sampler=sampler, deterministic=True)
        before = trainer.evaluate("test").metrics["recall@20"]
        records = [trainer.train_epoch() for _ in range(3)]
        trainer.epoch = 3
        assert all(r["step_paths"] == {"compiled": records[0]["step_paths"]["compiled"]} for r in records)
        assert records[-1]["loss"] < records[0]["loss"]
        after = trainer.evaluate("test").metrics["recall@20"]
        assert after > before
        runs.append(trainer.model.item_embedding.weight.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)  # deterministic: one thread, in order


def test_soft_bpr_runs_online(small_split):
    trainer = _trainer(small_split, sampler="dns", loss=SoftBPRLoss(SoftBPRConfig(beta=0.3)))
    assert trainer.train_epoch()["step_paths"] == {"compiled": math.ceil(len(small_split.train) / 64)}


def test_online_sgd_refuses_what_it_cannot_run(small_split):
    with pytest.raises(ConfigError, match="online_sgd.*lightgcn|mf"):
        _trainer(small_split, model="lightgcn")
    with pytest.raises(ConfigError, match="compiled MF step.*MixGCF|emits_item_rows"):
        _trainer(small_split, sampler="mixgcf")
    with pytest.raises(ConfigError, match="reduction='mean'"):
        _trainer(small_split, loss=BPRLoss(BPRConfig(reduction="sum")))
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(optimizer="online_sgd", weight_decay=0.1)
    with pytest.raises(ConfigError, match="regularizer"):
        _trainer(small_split, regularizer="r2")


def test_online_sgd_step_is_plain_sgd_for_a_gradient_it_is_handed():
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = OnlineSGD([p], lr=0.5)
    p.grad = torch.full((3, 2), 2.0)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="lr"):
        OnlineSGD([p], lr=0.0)


def test_cli_trains_with_online_sgd(tmp_path, capsys):
    from recneg.cli import main

    args = ["train", "--optimizer", "online_sgd", "--lr", "0.05", "--epochs", "2", "--threads", "1"]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "run")]) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in history if "step_paths" in h]
    assert epochs and all(set(h["step_paths"]) == {"compiled"} for h in epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"]


def test_an_adam_sized_lr_warns():
    with pytest.warns(UserWarning, match="lr=0.001 .* learn very slowly"):
        TrainConfig(optimizer="online_sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(optimizer="online_sgd", lr=0.05)
        TrainConfig(optimizer="adam", lr=1e-3)


def test_a_kernel_that_cannot_compile_is_a_config_error(small_split, monkeypatch):
    def broken():
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernels, "warm_up_online_sgd", broken)
    with pytest.raises(ConfigError, match="could not be built here .*no LLVM here"):
        _trainer(small_split)

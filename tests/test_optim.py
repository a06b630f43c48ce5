"""Row-sparse training: LazyAdam (``sparse_adam``) semantics, sparse MF gradients, wiring and resume."""

from __future__ import annotations

import json

import pytest
import torch

import recneg
from recneg.config import TrainConfig
from recneg.losses import bpr_loss, l2_regularization
from recneg.models import base as model_base
from recneg.optim import LazyAdam, OnlineSGD, make_optimizer, use_sparse_gradients
from recneg.train import Trainer, fit

B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 0.1


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values), shape, check_invariants=True)


def test_lazy_adam_moves_only_touched_rows_by_the_hand_computed_step():
    p = torch.nn.Parameter(torch.arange(8.0).view(4, 2))
    before = p.detach().clone()
    opt = LazyAdam([p], lr=LR)
    # step 1: row 1 twice (summed: g = [2, -6]), row 3 once (g = [0.5, 0.5]); rows 0 and 2 untouched
    p.grad = _sparse([1, 3, 1], [[1.0, -2.0], [0.5, 0.5], [1.0, -4.0]], (4, 2))
    opt.step()

    def first_step(g):  # m̂ = g, v̂ = g²  ->  Δ = −lr · g / (|g| + ε)
        return -LR * g / (g.abs() + EPS)

    assert torch.equal(p[0], before[0]) and torch.equal(p[2], before[2])
    torch.testing.assert_close(p[1].detach(), before[1] + first_step(torch.tensor([2.0, -6.0])))
    torch.testing.assert_close(p[3].detach(), before[3] + first_step(torch.tensor([0.5, 0.5])))
    after_1 = p.detach().clone()

    # step 2: only row 3 (g = [1, -1]); row 1 keeps its value (dense Adam would move it by its momentum)
    p.grad = _sparse([3], [[1.0, -1.0]], (4, 2))
    opt.step()
    g1, g2 = torch.tensor([0.5, 0.5]), torch.tensor([1.0, -1.0])
    m = B1 * (1 - B1) * g1 + (1 - B1) * g2
    v = B2 * (1 - B2) * g1**2 + (1 - B2) * g2**2
    step = LR * (m / (1 - B1**2)) / ((v / (1 - B2**2)).sqrt() + EPS)
    torch.testing.assert_close(p[3].detach(), after_1[3] - step)
    assert torch.equal(p[1], after_1[1]) and torch.equal(p[0], before[0])
    assert opt.state[p]["step"] == 2
    torch.testing.assert_close(opt.state[p]["exp_avg"][1], (1 - B1) * torch.tensor([2.0, -6.0]))
    # the scratch table holds zeros again between steps
    assert not opt._scratch[id(p)].any()


def test_lazy_adam_matches_torch_sparse_adam_on_uncoalesced_gradients():
    gen = torch.Generator().manual_seed(0)
    init = torch.randn(50, 6, generator=gen)
    ours, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_ours, opt_ref = LazyAdam([ours], lr=0.01), torch.optim.SparseAdam([ref], lr=0.01)
    for _ in range(5):
        rows = torch.randint(0, 50, (40,), generator=gen)  # with duplicates
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(40, 6, generator=gen), (50, 6))
        ours.grad, ref.grad = grad, grad.clone()
        opt_ours.step()
        opt_ref.step()
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_lazy_adam_on_dense_gradients_is_adam():
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(7, 3, generator=gen)
    ours, ref = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    opt_ours, opt_ref = LazyAdam([ours], lr=0.05), torch.optim.Adam([ref], lr=0.05)
    for _ in range(4):
        g = torch.randn(7, 3, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    torch.testing.assert_close(ours.detach(), ref.detach())


def test_lazy_adam_rejects_bad_settings():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(recneg.ConfigError, match="lr of LazyAdam must be > 0, got 0"):
        LazyAdam([p], lr=0.0)
    with pytest.raises(recneg.ConfigError, match=r"betas of LazyAdam must lie in \[0, 1\)"):
        LazyAdam([p], betas=(0.9, 1.0))
    with pytest.raises(recneg.ConfigError, match="weight_decay must be 0 with optimizer sparse_adam"):
        make_optimizer("sparse_adam", [p], 1e-3, weight_decay=1e-4)
    with pytest.raises(recneg.ConfigError, match="optimizer must be one of"):
        make_optimizer("sgd", [p], 1e-3)


def test_sparse_mf_gradients_equal_the_dense_ones(small_split):
    """With R1 and a DNS sampler, the sparse gradient of each table densifies to the dense gradient."""
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler("dns", n_candidates=4).bind(small_split.train)
    users = torch.as_tensor(small_split.train.users[:64])
    pos = torch.as_tensor(small_split.train.items[:64])
    grads = {}
    for sparse in (False, True):
        model.zero_grad(set_to_none=True)
        model.sparse_gradients = sparse
        view = model.view(users, pos)
        neg = sampler(users, pos, view, generator=torch.Generator().manual_seed(3))
        loss = bpr_loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 0.1)
        loss.backward()
        grads[sparse] = [p.grad for p in (model.user_embedding.weight, model.item_embedding.weight)]
    for dense, sparse in zip(grads[False], grads[True], strict=True):
        assert sparse.is_sparse and not dense.is_sparse
        torch.testing.assert_close(sparse.to_dense(), dense)


def test_sparse_adam_needs_a_row_sparse_model_and_no_weight_decay(small_split):
    with pytest.raises(
        recneg.ConfigError, match="weight_decay of TrainConfig must be 0 with optimizer sparse_adam"
    ):
        TrainConfig(optimizer="sparse_adam", weight_decay=1e-4)
    lightgcn = recneg.build_model("lightgcn", small_split.train, dim=8)
    with pytest.raises(recneg.ConfigError, match="optimizer sparse_adam needs a model .* LightGCN"):
        use_sparse_gradients(lightgcn, "sparse_adam")
    mf = recneg.build_model("mf", small_split.train, dim=8)
    use_sparse_gradients(mf, "adam")
    assert not mf.sparse_gradients


FAST = dict(epochs=4, batch_size=256, eval_every=2, patience=0, progress=False, lr=5e-3, threads=1)


@pytest.mark.parametrize(
    "optimizer, lr, cls", [("sparse_adam", 5e-3, LazyAdam), ("online_sgd", 0.05, OnlineSGD)]
)
def test_row_sparse_optimizers_train_and_resume_to_the_same_numbers(
    small_split, tmp_path, monkeypatch, optimizer, lr, cls
):
    cfg = TrainConfig(**{**FAST, "lr": lr}, optimizer=optimizer)  # threads=1: online_sgd runs in order

    def trainer(out):
        torch.manual_seed(0)
        model = recneg.build_model("mf", small_split.train, dim=16)
        return Trainer(
            model, recneg.build_sampler("dns", n_candidates=8), small_split, config=cfg, out_dir=out
        )

    (tmp_path / "a").mkdir()
    full = trainer(tmp_path / "a").run()
    assert full.model.sparse_gradients
    assert full.test["recall@20"] > 0.05  # learns (popularity-free random MF scores ~0.07 x 20/300)
    assert full.history[-1]["loss"] < full.history[0]["loss"]

    (tmp_path / "b").mkdir()
    crashed = trainer(tmp_path / "b")
    original = Trainer.train_epoch

    def crash_in_epoch_3(self):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = trainer(tmp_path / "b")
    assert resumed.resume_from(tmp_path / "b") and resumed.epoch == 2
    assert isinstance(resumed.optimizer, cls)
    res = resumed.run()
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history]
    assert res.test == full.test


def test_sparse_adam_keeps_dense_updates_for_sampler_parameters(small_split):
    """ANS has its own (dense) parameters: they train under sparse_adam beside the sparse MF tables."""
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler("ans", dim=8)
    before = [p.detach().clone() for p in sampler.parameters()]
    fit(model, sampler, small_split, **{**FAST, "epochs": 1}, optimizer="sparse_adam")
    after = list(sampler.parameters())
    assert before and any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_chunked_candidate_scores_equal_one_gather(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    table, users = torch.randn(30, 5, generator=gen), torch.randn(7, 5, generator=gen)
    ids = torch.randint(0, 30, (7, 4), generator=gen)
    expected = (users.unsqueeze(1) * table[ids]).sum(-1)
    monkeypatch.setattr(model_base, "SCORE_CHUNK_BYTES", 3 * 4 * 5 * 4)  # 3 rows per chunk
    torch.testing.assert_close(model_base.score_rows(table, users, ids), expected)


def test_cli_optimizer_flag_reaches_the_run_and_names_bad_combinations(tmp_path, capsys):
    from recneg.cli import main

    flags = ["--dataset", "synthetic", "--epochs", "1", "--threads", "1", "--no-progress"]
    assert main(["train", *flags, "--optimizer", "sparse_adam", "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["optimizer"] == "sparse_adam"
    assert main(["train", *flags, "--optimizer", "sparse_adam", "--model", "lightgcn"]) != 0
    assert "optimizer sparse_adam needs a model" in capsys.readouterr().err

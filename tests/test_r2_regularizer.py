"""R2 (RecBole ``EmbLoss``) as a selectable regulariser: formula, candidate pools, config, training."""

import math

import pytest
import torch

import recneg
from recneg.cli import build_run_config, make_parser
from recneg.config import TrainConfig
from recneg.errors import ConfigError
from recneg.losses import BPRLoss, bpr_loss, l2_regularization, r2_regularization, regularization
from recneg.models.base import TableView
from recneg.samplers.base import Negatives
from recneg.train import fit
from recneg.train_step import TrainStep

USERS_T = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
ITEMS_T = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])


def _hand_view(users_t=USERS_T, items_t=ITEMS_T) -> TableView:
    return TableView(torch.tensor([0, 1]), torch.tensor([0, 1]), users_t, items_t, users_t, items_t)


def test_r2_by_hand_both_forms():
    view = _hand_view()
    ids = torch.tensor([[2], [2]])
    neg = Negatives(emb=ITEMS_T[ids], ids=ids)
    # ‖U‖_F² = 2 + 4, ‖P‖_F² = 1 + 9, ‖N‖_F² = 4 + 4; B = 2
    plain = 0.1 * (math.sqrt(6) + math.sqrt(10) + math.sqrt(8)) / 2
    assert float(r2_regularization(view, neg, 0.1)) == pytest.approx(plain)
    assert float(regularization(view, neg, 0.1, "r2")) == pytest.approx(plain)
    squared = 0.1 * (6 + 10 + 8) / (2 * 2)
    assert float(r2_regularization(view, neg, 0.1, squared=True)) == pytest.approx(squared)
    assert float(regularization(view, neg, 0.1, "r2_pow")) == pytest.approx(squared)
    assert float(r2_regularization(view, neg, 0.0)) == 0.0


def test_r2_uses_the_whole_pool_unweighted_and_falls_back_to_reg_emb():
    view = _hand_view()
    ids = torch.tensor([[2], [0]])
    pool = torch.tensor([[2, 0], [1, 2]])  # rows 2, 0, 1, 2: ‖N‖_F² = 4 + 1 + 9 + 4
    weight = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    neg = Negatives(emb=ITEMS_T[ids], ids=ids, weight=weight, pool_ids=pool)
    expected = 0.1 * (math.sqrt(6) + math.sqrt(10) + math.sqrt(18)) / 2
    assert float(r2_regularization(view, neg, 0.1)) == pytest.approx(expected)
    # synthetic negatives without a pool: their reg_emb rows
    synthetic = Negatives(emb=torch.zeros(2, 1, 2), reg_emb=torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]]))
    assert float(r2_regularization(view, synthetic, 0.1)) == pytest.approx(
        0.1 * (math.sqrt(6) + math.sqrt(10) + 5.0) / 2
    )
    # shared (batch) negatives are not regularised, as in R1
    shared = Negatives(emb=ITEMS_T, ids=torch.arange(3))
    assert float(r2_regularization(view, shared, 0.1)) == pytest.approx(
        0.1 * (math.sqrt(6) + math.sqrt(10)) / 2
    )


def test_r2_gradient_by_hand():
    users_t = USERS_T.clone().requires_grad_(True)
    items_t = ITEMS_T.clone().requires_grad_(True)
    view = _hand_view(users_t, items_t)
    ids = torch.tensor([[2], [2]])
    r2_regularization(view, Negatives(emb=items_t[ids], ids=ids), 0.1).backward()
    # d/dU λ‖U‖_F / B = λ U / (‖U‖_F B)
    assert torch.allclose(users_t.grad, 0.1 * USERS_T / (math.sqrt(6) * 2))
    # item 2 appears twice in N: 2 λ e_2 / (‖N‖_F B); items 0 and 1 only in P
    expected = 0.1 * ITEMS_T / (math.sqrt(10) * 2)
    expected[2] = 2 * 0.1 * ITEMS_T[2] / (math.sqrt(8) * 2)
    assert torch.allclose(items_t.grad, expected)


def _mf_batch(small_split, dim=8, b=16):
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=dim)
    users = torch.as_tensor(small_split.train.users[:b])
    pos = torch.as_tensor(small_split.train.items[:b])
    return model, users, pos


def test_r2_over_a_dns_pool_includes_every_candidate(small_split):
    model, users, pos = _mf_batch(small_split)
    sampler = recneg.build_sampler("dns", n_candidates=8).bind(small_split.train)
    view = model.view(users, pos)
    neg = sampler(users, pos, view, generator=torch.Generator().manual_seed(1))
    assert neg.pool_ids is not None and neg.pool_ids.shape == (16, 8)
    assert bool((neg.pool_ids == neg.ids).any(1).all())  # the chosen one is in its row's pool
    table = model.item_embedding.weight
    by_hand = 1e-2 * (view.user_emb.norm() + table[pos].norm() + table[neg.pool_ids].norm()) / users.numel()
    assert r2_regularization(view, neg, 1e-2).item() == pytest.approx(by_hand.item(), rel=1e-6)

    # an item scored in the pool but chosen for no row and not a positive of the batch
    spare = sorted(set(neg.pool_ids.flatten().tolist()) - set(neg.ids.flatten().tolist()) - set(pos.tolist()))
    j = spare[0]
    r2_regularization(view, neg, 1e-2).backward()
    assert float(table.grad[j].abs().sum()) > 0
    model.zero_grad()
    l2_regularization(model.view(users, pos), neg, 1e-2).backward()
    assert float(table.grad[j].abs().sum()) == 0  # R1 sees only the chosen rows

    before_r2 = float(r2_regularization(model.view(users, pos), neg, 1e-2))
    before_r1 = float(l2_regularization(model.view(users, pos), neg, 1e-2))
    with torch.no_grad():
        table[j] *= 3.0
    after = model.view(users, pos)
    assert float(r2_regularization(after, neg, 1e-2)) > before_r2
    assert float(l2_regularization(after, neg, 1e-2)) == before_r1


POOLS = [
    ("dns", {"n_candidates": 6}, 6),
    ("dns_mn", {"n_candidates": 6, "n_selected": 2}, 6),
    ("softmax_v", {"n_candidates": 6}, 6),
    ("pdns", {"n_candidates": 6}, 6),
    ("mixgcf", {"n_candidates": 3, "n_negatives": 2}, 6),
    ("ans", {"n_candidates": 6, "dim": 8}, 6),
    ("dens", {"n_candidates": 3, "n_negatives": 2, "dim": 8}, 6),
    ("srns", {"memory_size": 6}, 6),
    ("gdns", {"memory_size": 6}, 6),
]


@pytest.mark.parametrize("name, args, per_row", POOLS, ids=[p[0] for p in POOLS])
def test_candidate_samplers_report_their_whole_pool(small_split, name, args, per_row):
    model, users, pos = _mf_batch(small_split)
    sampler = recneg.build_sampler(name, **args).bind(small_split.train)
    neg = sampler(users, pos, model.view(users, pos), generator=torch.Generator().manual_seed(2))
    assert neg.pool_ids is not None
    assert neg.pool_ids.shape[0] == users.numel() and neg.pool_ids[0].numel() == per_row
    if neg.ids is not None:  # every chosen id comes from its own row's pool
        pools, chosen = neg.pool_ids.reshape(users.numel(), -1), neg.ids.reshape(users.numel(), -1)
        assert bool((chosen.unsqueeze(-1) == pools.unsqueeze(1)).any(-1).all())


def _ego_calls(monkeypatch) -> list:
    shapes: list = []
    original = TableView.item_ego

    def spy(self, ids):
        shapes.append(tuple(ids.shape))
        return original(self, ids)

    monkeypatch.setattr(TableView, "item_ego", spy)
    return shapes


@pytest.mark.parametrize("regularizer, gathers_pool", [("r1", False), ("r2", True), ("r2_pow", True)])
def test_pool_rows_are_gathered_only_under_r2(small_split, monkeypatch, regularizer, gathers_pool):
    model, users, pos = _mf_batch(small_split)
    sampler = recneg.build_sampler("dns", n_candidates=8).bind(small_split.train)
    shapes = _ego_calls(monkeypatch)
    step = TrainStep(model, sampler, BPRLoss(), 1e-3, regularizer)
    step(users, pos, torch.Generator().manual_seed(0))[0].backward()
    assert ((users.numel(), 8) in shapes) is gathers_pool


def test_r1_step_is_unchanged(small_split):
    """The default step is exactly BPR + l2_regularization (the pre-R2 composition), value and gradient."""
    model, users, pos = _mf_batch(small_split)
    sampler = recneg.build_sampler("dns_mn", n_candidates=8, n_selected=2).bind(small_split.train)
    loss, _, _ = TrainStep(model, sampler, BPRLoss(), 1e-2)(users, pos, torch.Generator().manual_seed(3))
    loss.backward()
    grad = model.item_embedding.weight.grad.clone()
    model.zero_grad()
    view = model.view(users, pos)
    neg = sampler(users, pos, view, generator=torch.Generator().manual_seed(3))
    ref = bpr_loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-2)
    ref.backward()
    assert float(loss) == float(ref)
    assert torch.equal(grad, model.item_embedding.weight.grad)


def test_regularizer_is_validated():
    with pytest.raises(
        ConfigError, match=r"regularizer of TrainConfig must be one of \['r1', 'r2', 'r2_pow'\], got 'l2'"
    ):
        TrainConfig(regularizer="l2")
    assert TrainConfig().regularizer == "r1"
    with pytest.raises(ConfigError, match="regularizer of TrainStep"):
        TrainStep(None, None, BPRLoss(), 1e-4, "R2")  # type: ignore[arg-type]


def test_regularizer_from_cli_and_toml(tmp_path):
    args = make_parser().parse_args(["train", "--regularizer", "r2", "--reg", "1e-5"])
    cfg = build_run_config(args)
    assert cfg.train.regularizer == "r2" and cfg.train.reg == 1e-5
    toml = tmp_path / "ans.toml"
    toml.write_text('[train]\nregularizer = "r2_pow"\n')
    assert build_run_config(make_parser().parse_args(["train", "--config", str(toml)])).train.regularizer == (
        "r2_pow"
    )


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_fit_with_r2_runs_and_differs_from_r1(small_split, optimizer):
    def run(regularizer):
        torch.manual_seed(0)
        model = recneg.build_model("mf", small_split.train, dim=8)
        sampler = recneg.build_sampler("dns", n_candidates=8)
        return fit(
            model,
            sampler,
            small_split,
            epochs=2,
            batch_size=256,
            eval_every=2,
            patience=0,
            progress=False,
            lr=5e-3,
            threads=1,
            reg=1e-2,
            regularizer=regularizer,
            optimizer=optimizer,
        )

    r1, r2 = run("r1"), run("r2")
    losses_r1 = [h["loss"] for h in r1.history]
    losses_r2 = [h["loss"] for h in r2.history]
    assert len(losses_r2) == 2 and all(math.isfinite(x) for x in losses_r2)
    assert losses_r1 != losses_r2
    assert r1.test != r2.test

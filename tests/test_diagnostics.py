import numpy as np
import pytest
import torch

import recneg
from recneg.data.interactions import Interactions, Split
from recneg.diagnostics import (
    FalseNegativeRate,
    Hardness,
    PickOverlap,
    PoolSpread,
    ScoreHistogram,
    percentile_among_nonpositives,
)
from recneg.samplers.base import Negatives, Sampler
from recneg.train import fit

FAST = dict(epochs=2, batch_size=256, eval_every=2, patience=0, progress=False, lr=5e-3, threads=1)


def _fit(split, sampler, callbacks, **kw):
    torch.manual_seed(0)
    model = recneg.build_model("mf", split.train, dim=16)
    return fit(model, sampler, split, callbacks=callbacks, **{**FAST, **kw})


def test_percentile_hand_example():
    # one user, items 0..5 with scores 0..5 (1-d embeddings); positives {1, 4}: non-positives {0, 2, 3, 5}
    index = Interactions([0, 0], [1, 4], 1, 6).positives()
    items = torch.arange(6, dtype=torch.float64).unsqueeze(1)
    u = torch.ones(1, 1, dtype=torch.float64)
    s = torch.tensor([[5.0, 3.0, 2.5, 0.0, 9.0]], dtype=torch.float64)
    pct = percentile_among_nonpositives(u, items, torch.tensor([0]), s, index)
    # 5: 3 below + ½ tie -> 3.5/4; 3: 2 below + ½ -> 2.5/4; 2.5: 2 below; 0: ½ tie; 9: all 4 below
    assert pct[0].tolist() == pytest.approx([3.5 / 4, 2.5 / 4, 2 / 4, 0.5 / 4, 1.0])


def test_hardness_dns_is_hard_uniform_is_median(small_split):
    res_u = _fit(small_split, recneg.build_sampler("uniform"), [Hardness(every=1, rows=64)])
    res_d = _fit(small_split, recneg.build_sampler("dns", n_candidates=32), [Hardness(every=1, rows=64)])
    pu = res_u.history[-1]["diagnostics"]["hardness_percentile"]
    pd = res_d.history[-1]["diagnostics"]["hardness_percentile"]
    assert 0.4 < pu < 0.6
    assert pd > 0.9  # the best of 32 uniform draws sits near the top: E = 32/33
    assert (
        res_d.history[-1]["diagnostics"]["hardness_top1_share"]
        > res_u.history[-1]["diagnostics"]["hardness_top1_share"]
    )


def test_hardness_handles_weights_shared_negatives_and_synthetic(small_split):
    for name, kw in (("softmax_v", {"n_candidates": 8}), ("in_batch", {}), ("pdns", {"n_candidates": 8})):
        loss = recneg.build_loss("softmax") if name == "in_batch" else None
        torch.manual_seed(0)
        model = recneg.build_model("mf", small_split.train, dim=16)
        res = fit(
            model,
            recneg.build_sampler(name, **kw),
            small_split,
            loss=loss,
            callbacks=[Hardness(every=2, rows=16)],
            **FAST,
        )
        p = res.history[-1]["diagnostics"]["hardness_percentile"]
        assert 0.0 <= p <= 1.0, name


class _Fixed(Sampler):
    """Always returns the same item per user (a table ``pick[u]``)."""

    def __init__(self, pick):
        super().__init__()
        self.pick = torch.as_tensor(pick)

    def forward(self, users, pos, view, generator=None):
        ids = self.pick[users].unsqueeze(1)
        return Negatives(emb=view.item_emb(ids), ids=ids)


def test_false_negative_rate_exact_and_uniform_baseline():
    n_users, n_items = 20, 30
    rng = np.random.default_rng(0)
    train_r = np.zeros((n_users, n_items), bool)
    for u in range(n_users):
        train_r[u, rng.choice(n_items - 5, 4, replace=False)] = True
    tu, ti = np.nonzero(train_r)
    train = Interactions(tu, ti, n_users, n_items)
    split = Split(train=train, test=Interactions([0], [29], n_users, n_items))
    fn = Interactions(np.repeat(np.arange(n_users), 2), np.tile([27, 28], n_users), n_users, n_items)
    always_fn = _Fixed(torch.full((n_users,), 28))
    never_fn = _Fixed(torch.full((n_users,), 29))
    r1 = _fit(split, always_fn, [FalseNegativeRate(fn)], batch_size=16, topk=(5,), metric="recall@5")
    r0 = _fit(split, never_fn, [FalseNegativeRate(fn)], batch_size=16, topk=(5,), metric="recall@5")
    assert r1.history[-1]["diagnostics"]["fn_rate"] == pytest.approx(1.0)
    assert r0.history[-1]["diagnostics"]["fn_rate"] == 0.0
    assert r0.history[-1]["diagnostics"]["fn_uniform"] == pytest.approx(2 / (n_items - 4))
    ru = _fit(
        split,
        recneg.build_sampler("uniform", n_negatives=64),
        [FalseNegativeRate(fn)],
        batch_size=16,
        topk=(5,),
        metric="recall@5",
        epochs=6,
    )
    assert ru.history[-1]["diagnostics"]["fn_rate"] == pytest.approx(2 / 26, abs=0.02)


@pytest.mark.parametrize("optimizer", ["adam", "sparse_adam"])
def test_pick_overlap_replays_the_same_pools(small_split, optimizer):
    """Also where the MF step has compiled kernels (they update the tables inside the step): with a
    per-batch hook the trainer keeps the tensor path, so the replay scores the tables the sampler saw."""
    same = PickOverlap(recneg.build_sampler("dns", n_candidates=16))
    other = PickOverlap(recneg.build_sampler("dns", n_candidates=16, exclude_positives=False), name="o2")
    weak = PickOverlap(recneg.build_sampler("uniform"), name="vs_uniform")
    sampler = recneg.build_sampler("dns", n_candidates=16)
    res = _fit(small_split, sampler, [same, other, weak], optimizer=optimizer)
    assert set(res.history[0]["step_paths"]) == {"fused"}
    d = res.history[-1]["diagnostics"]
    assert d["overlap"] == pytest.approx(1.0)  # identical sampler on identical pools
    assert d["vs_uniform"] < 0.2
    assert d["o2"] < 0.99  # a different draw (positives not redrawn) changes some pools


def test_pick_overlap_ans_vs_dns_matches_ans_own_statistic(small_split):
    ov = PickOverlap(recneg.build_sampler("dns", n_candidates=8))
    res = _fit(small_split, recneg.build_sampler("ans", dim=16, n_candidates=8), [ov], epochs=1)
    mine = res.history[-1]["diagnostics"]["overlap"]
    theirs = res.history[-1]["sampler"]["dns_overlap"]  # ANS's own count, batch 0 included
    assert 0.0 < mine < 1.0
    assert mine == pytest.approx(theirs, abs=0.1)


def test_pool_spread_and_histograms(small_split):
    hist = ScoreHistogram(n_users=50, bins=10)
    res = _fit(small_split, recneg.build_sampler("dns", n_candidates=8), [PoolSpread(), hist])
    d = res.history[-1]["diagnostics"]
    assert d["pool_score_spread"] == pytest.approx(res.history[-1]["sampler"]["pool_score_spread"])
    assert "chosen_minus_pool_mean" in d and d["score_gap"] == pytest.approx(
        d["score_pos_median"] - d["score_neg_median"]
    )
    assert len(hist.epochs) == 2
    assert sum(hist.epochs[-1]["neg_hist"]) == pytest.approx(1.0)
    res_u = _fit(small_split, recneg.build_sampler("uniform"), [PoolSpread()])
    assert "diagnostics" not in res_u.history[-1]  # nothing to report without pool statistics

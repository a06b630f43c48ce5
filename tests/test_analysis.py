import math

import numpy as np
import pytest
import torch

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.eval.analysis import (
    auc_brute_force,
    opauc_k,
    paired_test,
    per,
    per_matrix,
    per_user_paired_test,
    ranking_auc,
    theorem3_bounds,
)
from recneg.eval.ranking import EvalResult, evaluate_tables


def _one_user_tables(scores):
    """A 1-d embedding per item equal to its score, one user with embedding 1."""
    return torch.ones(1, 1, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64).unsqueeze(1)


def test_auc_by_ranks_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    # integer scores in a small range: many ties
    u = torch.tensor(rng.integers(-2, 3, size=(n_users, 3)), dtype=torch.float64)
    it = torch.tensor(rng.integers(-2, 3, size=(n_items, 3)), dtype=torch.float64)
    scores = (u @ it.T).numpy()
    train_r = rng.random((n_users, n_items)) < 0.2
    test_r = (rng.random((n_users, n_items)) < 0.15) & ~train_r
    train = Interactions(*np.nonzero(train_r), n_users, n_items)
    test = Interactions(*np.nonzero(test_r), n_users, n_items)
    res = ranking_auc(u, it, test, [train], betas=(0.1, 0.3), chunk_size=7)
    assert res.users.size > 20
    for row, user in enumerate(res.users):
        pos = scores[user, test_r[user]]
        neg = scores[user, ~test_r[user] & ~train_r[user]]
        for beta in (0.1, 0.3):
            auc, pairs, hat = auc_brute_force(pos, neg, beta)
            assert res.auc[row] == pytest.approx(auc, abs=1e-12)
            assert res.opauc_pairs[beta][row] == pytest.approx(pairs, abs=1e-12)
            assert res.opauc_hat[beta][row] == pytest.approx(hat, abs=1e-12)
            assert res.nopauc[beta][row] == pytest.approx(pairs / beta, abs=1e-12)
    assert res.metrics["auc"] == pytest.approx(res.auc.mean())


def test_hand_example_auc_and_opauc():
    # items 0..5: scores; the user's test positives are items 1 and 4; item 5 is a training positive
    u, it = _one_user_tables([0.1, 0.9, 0.5, 0.7, 0.3, 2.0])
    test = Interactions([0, 0], [1, 4], 1, 6)
    train = Interactions([0], [5], 1, 6)
    res = ranking_auc(u, it, test, [train], betas=(0.5,))
    # negatives {0.1, 0.5, 0.7}; pos 0.9 beats 3, pos 0.3 beats 1 -> AUC 4/6
    assert res.auc[0] == pytest.approx(4 / 6)
    # k = floor(0.5 * 3) = 1: top negative 0.7; 0.9 > 0.7 only -> pairs 1/6; hat = 1 - 1/6
    assert res.opauc_pairs[0.5][0] == pytest.approx(1 / 6)
    assert res.opauc_hat[0.5][0] == pytest.approx(1 - 1 / 6)
    assert res.n_neg[0] == 3 and res.n_pos[0] == 2


def test_opauc_k_floor_at_least_one():
    assert opauc_k(0.1, 25) == 2  # floor(2.5)
    assert opauc_k(0.01, 25) == 1  # at least one
    assert opauc_k(0.2, 10) == 2  # 0.2 * 10 is 2 despite float rounding
    assert opauc_k(1.0, 7) == 7
    assert opauc_k(0.3, np.array([10, 3])).tolist() == [3, 1]
    with pytest.raises(ConfigError):
        ranking_auc(torch.ones(1, 1), torch.ones(2, 1), Interactions([0], [0], 1, 2), betas=(0.0,))


def test_opauc_hat_is_one_minus_beta_plus_pairs_without_ties():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n_items = 60
        scores = rng.permutation(n_items).astype(np.float64)  # distinct: no ties
        u, it = _one_user_tables(scores)
        pos = rng.choice(n_items, size=int(rng.integers(1, 20)), replace=False)
        n_neg = n_items - pos.size
        beta = int(rng.integers(1, n_neg + 1)) / n_neg  # k = beta * n- exactly
        res = ranking_auc(u, it, Interactions(np.zeros(pos.size, int), pos, 1, n_items), betas=(beta,))
        assert res.opauc_hat[beta][0] == pytest.approx(1 - beta + res.opauc_pairs[beta][0], abs=1e-12)
        assert 0 <= res.opauc_pairs[beta][0] <= beta + 1e-12
        assert 1 - beta - 1e-12 <= res.opauc_hat[beta][0] <= 1


def test_theorem3_bounds_hold_by_simulation_for_opauc_pairs_only():
    rng = np.random.default_rng(2)
    violations_pairs = violations_hat = 0
    trials = 3000
    for _ in range(trials):
        k = int(rng.integers(1, 15))
        n_pos = int(rng.integers(k + 1, k + 25))
        n_neg = int(rng.integers(k + 1, 150))
        shift = rng.uniform(-1, 4)
        pos = rng.normal(shift, 1.0, n_pos)
        neg = rng.normal(0.0, 1.0, n_neg)
        top = np.argsort(-np.concatenate([pos, neg]))[:k]
        hits = int((top < n_pos).sum())
        recall, precision = hits / n_pos, hits / k
        beta = k / n_neg
        _, pairs, hat = auc_brute_force(pos, neg, beta)
        for o, is_pairs in ((pairs, True), (hat, False)):
            b = theorem3_bounds(o, n_pos, n_neg, k)
            ok = (
                b["recall_low"] - 1e-9 <= recall <= b["recall_high"] + 1e-9
                and b["precision_low"] - 1e-9 <= precision <= b["precision_high"] + 1e-9
            )
            if is_pairs:
                violations_pairs += not ok
            else:
                violations_hat += not ok
    assert violations_pairs == 0
    assert violations_hat > trials // 2  # the slide's 1 − … form does not satisfy them


def test_perfect_ranking_makes_lower_bound_tight():
    n_pos, n_neg, k = 10, 50, 5
    pos, neg = np.arange(100, 100 + n_pos), np.arange(n_neg)
    _, pairs, _ = auc_brute_force(pos, neg, k / n_neg)
    assert pairs == pytest.approx(k / n_neg)
    b = theorem3_bounds(pairs, n_pos, n_neg, k)
    assert b["recall_low"] == pytest.approx(k / n_pos)  # recall@K of the perfect ranking


def test_ranking_auc_masks_like_full_ranking_and_matches_random_scores():
    torch.manual_seed(0)
    u, it = torch.randn(5, 4), torch.randn(12, 4)
    train = Interactions([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5, 12)
    valid = Interactions([0, 1], [5, 6], 5, 12)
    test = Interactions([0, 1, 2, 3], [7, 8, 9, 10], 5, 12)
    res = ranking_auc(u, it, test, [train, valid], betas=(0.2,))
    assert res.users.tolist() == [0, 1, 2, 3]
    assert res.n_neg.tolist() == [12 - 3, 12 - 3, 12 - 2, 12 - 2]
    s = (u @ it.T).numpy()
    auc, _, _ = auc_brute_force(s[0, [7]], s[0, [1, 2, 3, 4, 6, 8, 9, 10, 11]])
    assert res.auc[0] == pytest.approx(auc, rel=1e-6)


def test_per_small_sets_and_matrix():
    hx = {(0, 1), (0, 2), (1, 3), (2, 4)}
    hy = {(0, 1), (1, 3), (5, 5)}
    assert per(hx, hy) == pytest.approx(2 / 4)
    assert per(hy, hx) == pytest.approx(1 / 3)
    assert per(hx, hx) == 0.0
    assert math.isnan(per(set(), hx))
    names, m = per_matrix({"x": hx, "y": hy, "z": set()})
    assert names == ["x", "y", "z"]
    assert np.diag(m).tolist() == [0.0, 0.0, 0.0]
    assert m[0, 1] == pytest.approx(0.5) and m[1, 0] == pytest.approx(1 / 3) and m[0, 2] == 1.0


def test_per_from_eval_results():
    torch.manual_seed(0)
    n_users, n_items = 20, 30
    test = Interactions(np.arange(n_users), np.arange(n_users) % n_items, n_users, n_items)
    u = torch.randn(n_users, 3)
    a = evaluate_tables(u, torch.randn(n_items, 3), test, topk=(10,))
    b = evaluate_tables(u, torch.randn(n_items, 3), test, topk=(10,))
    assert isinstance(a, EvalResult)
    ha, hb = a.hit_set(10), b.hit_set(10)
    assert per(a, b, k=10) == pytest.approx(len(ha - hb) / len(ha))
    assert per(a, a, k=10) == 0.0
    with pytest.raises(ConfigError):
        per(a, b)


def test_paired_tests():
    a = np.array([0.30, 0.32, 0.31, 0.35, 0.33])
    b = a - np.array([0.01, 0.02, 0.015, 0.012, 0.018])
    t = paired_test(a, b, "ttest")
    assert t["pvalue"] < 0.01 and t["mean_diff"] > 0 and t["n"] == 5
    w = paired_test(a, b, "wilcoxon")
    assert w["pvalue"] == pytest.approx(0.0625)  # exact two-sided, 5 positive differences: 2 / 2^5
    same = paired_test(a, a)
    assert same["pvalue"] == 1.0
    assert math.isnan(paired_test([1.0], [0.0])["pvalue"])
    noise = paired_test(np.random.default_rng(0).random(40), np.random.default_rng(1).random(40))
    assert noise["pvalue"] > 0.01
    with pytest.raises(ConfigError):
        paired_test([1, 2], [1, 2, 3])


def test_per_user_paired_test_aligns_users():
    x = {"users": np.array([1, 2, 3, 4]), "per_user": {"recall@20": np.array([0.5, 0.6, 0.7, 0.8])}}
    y = {"users": np.array([2, 3, 4, 9]), "per_user": {"recall@20": np.array([0.6, 0.7, 0.8, 0.0])}}
    r = per_user_paired_test(x, y, "recall@20")
    assert r["n"] == 3 and r["pvalue"] == 1.0

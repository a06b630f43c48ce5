"""Recall by popularity bucket and the cold-start split, against hand-computed tiny cases."""

import math

import numpy as np
import pytest
import torch

from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError
from recneg.eval.buckets import (
    bucket_recall,
    cold_start_recall,
    cold_start_split,
    popularity_buckets,
    popularity_recall,
)
from recneg.eval.ranking import EvalResult, evaluate_tables


def test_popularity_buckets_hand_computed():
    # counts -> order by count desc, id asc: 2 (9), 0 (5), 3 (1), 4 (1), 1 (0)
    assert popularity_buckets([5, 0, 9, 1, 1], head=0.2, tail=0.4).tolist() == [1, 2, 0, 1, 2]
    # 10 items, defaults: head = 2 items, tail = 5 items
    codes = popularity_buckets(np.arange(10), 0.2, 0.5)
    assert codes.tolist() == [2, 2, 2, 2, 2, 1, 1, 1, 0, 0]
    # round half up: 0.25 * 6 = 1.5 -> 2 head items
    assert (popularity_buckets([1, 2, 3, 4, 5, 6], head=0.25, tail=0.0) == 0).sum() == 2
    assert popularity_buckets([3, 3], head=1.0, tail=0.0).tolist() == [0, 0]


def test_popularity_buckets_validation():
    with pytest.raises(ConfigError):
        popularity_buckets([1, 2], head=0.7, tail=0.5)
    with pytest.raises(ConfigError):
        popularity_buckets([1, 2], head=-0.1)
    with pytest.raises(DataError):
        popularity_buckets(np.ones((2, 2)))


def _result(users, topk, target: Interactions) -> EvalResult:
    users, topk = np.asarray(users), np.asarray(topk)
    pos = target.positives()
    hits = pos.contains(torch.as_tensor(users)[:, None], torch.as_tensor(topk)).numpy()
    return EvalResult({}, users, {}, topk, hits)


def test_bucket_recall_hand_computed():
    # 6 items; buckets: items 0,1 head (0); 2,3 torso (1); 4,5 tail (2)
    buckets = np.array([0, 0, 1, 1, 2, 2])
    # user 0 targets {0, 4, 5}; user 1 targets {2}; user 2 targets {1, 3}
    target = Interactions([0, 0, 0, 1, 2, 2], [0, 4, 5, 2, 1, 3], n_users=3, n_items=6)
    topk = [[4, 0, 1, 5], [3, 1, 2, 0], [0, 2, 4, 5]]
    res = _result([0, 1, 2], topk, target)
    out = bucket_recall(res, target, buckets, ks=(1, 3))
    # head: user 0 target {0} (hit at rank 2), user 2 target {1} (never) -> @1: (0+0)/2, @3: (1 + 0)/2
    assert out["head"]["recall@1"] == 0.0 and out["head"]["recall@3"] == 0.5
    assert (
        out["head"]["recall_micro@3"] == 0.5 and out["head"]["n_users"] == 2 and out["head"]["n_targets"] == 2
    )
    # torso: user 1 {2} hit at rank 3; user 2 {3} never -> @3: (1 + 0)/2
    assert out["torso"]["recall@1"] == 0.0 and out["torso"]["recall@3"] == 0.5
    # tail: user 0 {4, 5}: 4 at rank 1, 5 at rank 4 -> @1: 1/2, @3: 1/2; only one user
    assert out["tail"]["recall@1"] == 0.5 and out["tail"]["recall@3"] == 0.5
    assert out["tail"]["n_users"] == 1 and out["tail"]["recall_micro@3"] == 0.5


def test_bucket_recall_micro_differs_from_user_average():
    buckets = np.array([0, 1, 1, 1])
    # user 0: tail-ish bucket 1 targets {1, 2, 3}, retrieves {1}; user 1: target {1}, retrieves it
    target = Interactions([0, 0, 0, 1], [1, 2, 3, 1], n_users=2, n_items=4)
    res = _result([0, 1], [[1, 0], [1, 0]], target)
    out = bucket_recall(res, target, buckets, ks=(2,), names=("a", "b"))
    assert out["b"]["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["b"]["recall_micro@2"] == pytest.approx(2 / 4)
    assert math.isnan(out["a"]["recall@2"]) and out["a"]["n_users"] == 0


def test_bucket_recall_rejects_bad_input():
    target = Interactions([0], [1], n_users=1, n_items=3)
    res = _result([0], [[1, 0]], target)
    with pytest.raises(DataError):
        bucket_recall(res, target, [0, 1], ks=(1,))
    with pytest.raises(ConfigError):
        bucket_recall(res, target, [0, 1, 2], ks=(3,))


def test_bucket_recalls_add_up_to_overall_micro_recall():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    train = Interactions(rng.integers(0, n_users, 300), rng.integers(0, n_items, 300), n_users, n_items)
    test = Interactions(rng.integers(0, n_users, 100), rng.integers(0, n_items, 100), n_users, n_items)
    test = test.subset(
        ~train.positives().contains(torch.as_tensor(test.users), torch.as_tensor(test.items)).numpy()
    )
    split = Split(train, test)
    torch.manual_seed(0)
    res = evaluate_tables(torch.randn(n_users, 4), torch.randn(n_items, 4), test, [train], topk=(10,))
    out = popularity_recall(res, split, ks=(10,))
    total_hits = sum(out[b]["recall_micro@10"] * out[b]["n_targets"] for b in out if out[b]["n_targets"])
    assert total_hits == pytest.approx(res.hits[:, :10].sum())
    assert sum(out[b]["n_targets"] for b in out) == test.csr.nnz


def test_cold_start_split_holds_items_out_of_training():
    rng = np.random.default_rng(1)
    n_users, n_items = 50, 60
    u, i = rng.integers(0, n_users, 800), rng.integers(0, n_items, 800)
    data = Interactions(u, i, n_users, n_items)
    split = cold_start_split(data, cold_ratio=0.1, seed=3)
    cold = np.asarray(split.info["cold_items"])
    active = np.unique(i)
    assert cold.size == round(0.1 * active.size) and np.isin(cold, active).all()
    assert not np.isin(split.train.items, cold).any()
    assert not np.isin(split.valid.items, cold).any()
    # every interaction of a cold item is in test; nothing is lost or duplicated
    data_pairs = set(zip(data.users.tolist(), data.items.tolist(), strict=True))
    test_pairs = set(zip(split.test.users.tolist(), split.test.items.tolist(), strict=True))
    assert {p for p in data_pairs if p[1] in set(cold.tolist())} <= test_pairs
    assert len(split.train) + len(split.valid) + len(split.test) == len(data_pairs)
    assert split.n_items == n_items and split.train.item_counts[cold].sum() == 0
    # seeded
    assert cold_start_split(data, 0.1, seed=3).info["cold_items"] == split.info["cold_items"]
    assert cold_start_split(data, 0.1, seed=4).info["cold_items"] != split.info["cold_items"]
    # a Split is merged first
    again = cold_start_split(Split(split.train, split.test, split.valid), 0.1, seed=3)
    assert len(again.train) + len(again.valid) + len(again.test) == len(data_pairs)


def test_cold_start_split_validation():
    data = Interactions([0, 1], [0, 1], 2, 2)
    with pytest.raises(ConfigError):
        cold_start_split(data, cold_ratio=0.0)
    with pytest.raises(DataError):
        cold_start_split(data, cold_ratio=0.9)  # would hold out every active item


def test_cold_start_recall_hand_computed():
    # items 2, 3 cold; user 0 test {2, 1}; user 1 test {3}
    train = Interactions([0, 1], [0, 1], 2, 4)
    test = Interactions([0, 0, 1], [2, 1, 3], 2, 4)
    split = Split(train, test, info={"cold_items": [2, 3]})
    res = _result([0, 1], [[2, 1, 3], [2, 0, 3]], test)
    out = cold_start_recall(res, split, ks=(1, 3))
    assert out["recall@1"] == 0.5  # user 0 hits cold 2 at rank 1; user 1's 3 is at rank 3
    assert out["recall@3"] == 1.0 and out["n_targets"] == 2
    with pytest.raises(ConfigError):
        cold_start_recall(res, Split(train, test), ks=(1,))

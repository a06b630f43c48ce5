"""Preprocessing (dedupe, threshold, k-core, remap) and the split protocols: hand cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recneg.data import preprocess as pp
from recneg.data import split as sp
from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError


def keys(inter):
    return set((inter.users * inter.n_items + inter.items).tolist())


def rows(inter):
    return sorted(zip(inter.users.tolist(), inter.items.tolist(), strict=True))


def assert_leak_free(split: Split, source: Interactions):
    parts = [p for p in (split.train, split.valid, split.test) if p is not None]
    for p in parts:
        assert (p.n_users, p.n_items) == (source.n_users, source.n_items)
    seen = set()
    total = 0
    for p in parts:
        k = keys(p)
        assert len(k) == len(p), "a pair is duplicated inside a part"
        assert not (k & seen), "a pair is in two parts"
        seen |= k
        total += len(p)
    assert seen == keys(source)  # nothing lost, nothing invented
    assert total == len(keys(source))


def random_inter(seed, n_users=20, n_items=15, n=150, with_time=True):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n)
    i = rng.integers(0, n_items, n)
    t = rng.integers(0, 50, n).astype(float) if with_time else None
    return Interactions(u, i, n_users, n_items, timestamps=t)


# ---------------------------------------------------------------------------------------------- preprocess
def test_dedupe_keeps_earliest_then_first_in_file():
    inter = Interactions(
        [0, 0, 1, 0], [1, 1, 2, 1], 2, 3, timestamps=[5.0, 3.0, 1.0, 3.0], weights=[1, 2, 3, 4]
    )
    d = pp.dedupe(inter)
    assert rows(d) == [(0, 1), (1, 2)]
    assert d.weights.tolist() == [2, 3]  # row 1 (t=3, before row 3 with the same time) is kept
    no_t = Interactions([0, 0, 1], [1, 1, 2], 2, 3, weights=[7, 8, 9])
    assert pp.dedupe(no_t).weights.tolist() == [7, 9]


def test_threshold_needs_weights():
    inter = Interactions([0, 0, 1], [0, 1, 1], 2, 2, weights=[3, 4, 5])
    assert rows(pp.apply_threshold(inter, 4)) == [(0, 1), (1, 1)]
    assert pp.apply_threshold(inter, None) is inter
    with pytest.raises(DataError, match=r"toy: threshold=4 needs ratings"):
        pp.apply_threshold(Interactions([0], [0]), 4, source="toy")


def test_kcore_is_iterative():
    # items: 0 is liked by users 0,1,2; 1 by 0,1; 2 by 2 only. Users: 0 {0,1}, 1 {0,1}, 2 {0,2}, 3 {1}.
    u = [0, 0, 1, 1, 2, 2, 3]
    i = [0, 1, 0, 1, 0, 2, 1]
    inter = Interactions(u, i, 4, 3)
    # min_item=2 drops item 2 → user 2 has 1 item → min_user=2 drops user 2 → item 0 has 2 users (ok);
    # user 3 has 1 item → dropped → item 1 has 2 users (ok). Core = users 0,1 × items 0,1.
    core = pp.kcore(inter, min_user=2, min_item=2)
    assert rows(core) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # with min_item=3 the cascade empties everything
    assert len(pp.kcore(inter, min_user=2, min_item=3)) == 0
    assert pp.kcore(inter) is inter
    with pytest.raises(ConfigError, match="min_user of kcore"):
        pp.kcore(inter, min_user=-1)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 4), st.integers(0, 4))
def test_kcore_property(seed, min_user, min_item):
    inter = pp.dedupe(random_inter(seed, n=80))
    core = pp.kcore(inter, min_user, min_item)
    if len(core):
        uc, ic = core.user_counts, core.item_counts
        assert uc[uc > 0].min() >= min_user and ic[ic > 0].min() >= min_item
    assert keys(core) <= keys(inter)
    assert rows(core) == naive_kcore(rows(inter), min_user, min_item)


def naive_kcore(pairs, min_user, min_item):
    """Reference: remove one deficient user or item at a time (another peeling order, same unique core)."""
    pairs = set(pairs)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        bad_u = next((u for u, c in sorted(users.items()) if c < min_user), None)
        if bad_u is not None:
            pairs = {(u, i) for u, i in pairs if u != bad_u}
            continue
        bad_i = next((i for i, c in sorted(items.items()) if c < min_item), None)
        if bad_i is None:
            return sorted(pairs)
        pairs = {(u, i) for u, i in pairs if i != bad_i}


def test_remap_composes_original_ids():
    inter = Interactions([0, 2, 2], [1, 3, 1], 3, 4, user_ids=["a", "b", "c"], item_ids=[10, 11, 12, 13])
    r = pp.remap(inter)
    assert (r.n_users, r.n_items) == (2, 2)
    assert r.user_ids.tolist() == ["a", "c"] and r.item_ids.tolist() == [11, 13]
    assert r.user_ids[r.users].tolist() == ["a", "c", "c"] and r.item_ids[r.items].tolist() == [11, 13, 11]


def test_preprocess_split_kcore_on_train_drops_test_rows_and_renumbers():
    train = Interactions([0, 0, 1, 1, 2], [0, 1, 0, 1, 2], 3, 4)
    test = Interactions([0, 2, 1], [3, 0, 2], 3, 4)
    s = pp.preprocess_split(Split(train, test), min_user=2, min_item=2)
    assert (s.n_users, s.n_items) == (2, 2)  # users 0,1; items 0,1
    assert rows(s.train) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(s.test) == 0  # test items 3 and 2 were not in the core, user 2 neither
    same = pp.preprocess_split(Split(train, test))
    assert (same.n_users, same.n_items) == (3, 4)  # no filtering → the shipped id space is kept


# ---------------------------------------------------------------------------------------------- sizes
def test_part_sizes_hand_cases():
    deg = np.array([0, 1, 2, 3, 4, 5, 10, 15])
    n_test, n_valid = sp.part_sizes(deg, 0.1, 0.1)
    assert n_test.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]  # 0.5 rounds up; 1.5 → 2
    assert n_valid.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    n_test, n_valid = sp.part_sizes(np.array([1, 2, 3]), 0.5, 0.4)
    # deg 2: test 1, valid 1 → train 0, so valid drops to 0; deg 3: test 2 (1.5↑), valid 1 → valid 0
    assert n_test.tolist() == [0, 1, 2] and n_valid.tolist() == [0, 0, 0]


# ---------------------------------------------------------------------------------------------- protocols
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.1, 0.25]), st.sampled_from([0.1, 0.2, 0.3]))
def test_random_split_leak_free_deterministic_train_nonempty(seed, valid_ratio, test_ratio):
    inter = random_inter(seed)
    s = sp.random_split(inter, test_ratio, valid_ratio, seed=seed)
    assert_leak_free(s, pp.dedupe(inter))
    assert (s.valid is None) == (valid_ratio == 0)
    deg = pp.dedupe(inter).user_counts
    assert (s.train.user_counts[deg > 0] >= 1).all()
    again = sp.random_split(inter, test_ratio, valid_ratio, seed=seed)
    assert rows(again.test) == rows(s.test) and rows(again.train) == rows(s.train)


def test_random_split_ratio_and_seed_changes_it():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 20)
    items = np.concatenate([rng.permutation(50)[:20] for _ in range(30)])
    inter = Interactions(users, items, 30, 50)
    s = sp.random_split(inter, 0.1, 0.1, seed=0)
    assert (
        (s.test.user_counts == 2).all()
        and (s.valid.user_counts == 2).all()
        and (s.train.user_counts == 16).all()
    )
    other = sp.random_split(inter, 0.1, 0.1, seed=1)
    assert rows(other.test) != rows(s.test)


def test_latest_ratio_split_takes_latest_per_user():
    # user 0: 10 items at times 0..9 → test = latest 1 (t=9), valid = t=8; user 1: 20 items → 2 test, 2 valid
    u = np.r_[np.zeros(10, int), np.ones(20, int)]
    i = np.r_[np.arange(10), np.arange(20)]
    t = np.r_[np.arange(10)[::-1], np.arange(20)].astype(float)  # user 0's file order is reversed in time
    s = sp.latest_ratio_split(Interactions(u, i, 2, 20, timestamps=t))
    assert rows(s.test) == [(0, 0), (1, 18), (1, 19)]
    assert rows(s.valid) == [(0, 1), (1, 16), (1, 17)]
    assert len(s.train) == 8 + 16
    with pytest.raises(DataError, match="split='latest' needs timestamps"):
        sp.latest_ratio_split(Interactions(u, i, 2, 20))


def test_leave_one_out():
    u = [0, 0, 0, 1, 1, 2]
    i = [0, 1, 2, 0, 1, 2]
    t = [3.0, 1.0, 2.0, 5.0, 6.0, 1.0]
    s = sp.leave_one_out_split(Interactions(u, i, 3, 3, timestamps=t))
    assert rows(s.test) == [(0, 0), (1, 1)]  # user 2 (one item) keeps it in train
    assert rows(s.valid) == [(0, 2)]  # user 1 (two items) has no valid
    assert rows(s.train) == [(0, 1), (1, 0), (2, 2)]
    s2 = sp.leave_one_out_split(Interactions(u, i, 3, 3, timestamps=t), valid=False)
    assert s2.valid is None and len(s2.train) == 4


def test_temporal_split_cutoffs():
    t = np.arange(20, dtype=float)
    inter = Interactions(np.arange(20) % 4, np.arange(20), 4, 20, timestamps=t[::-1].copy())
    s = sp.temporal_split(inter, 0.1, 0.1)
    assert sorted(s.test.timestamps.tolist()) == [18.0, 19.0]
    assert sorted(s.valid.timestamps.tolist()) == [16.0, 17.0]
    assert s.train.timestamps.max() == 15.0
    assert s.info["test_cutoff"] == 17.0
    # ties at the cutoff stay in the earlier part
    tied = Interactions([0, 1, 2, 3], [0, 1, 2, 3], 4, 4, timestamps=[1.0, 2.0, 2.0, 3.0])
    st_ = sp.temporal_split(tied, 0.5, 0.0)
    assert rows(st_.test) == [(3, 3)] and st_.valid is None
    with pytest.raises(DataError, match="leaves test empty"):
        sp.temporal_split(Interactions([0, 1], [0, 1], timestamps=[1.0, 1.0]), 0.5, 0.0)
    r = sp.temporal_split(inter, 0.1, 0.2, seed=3, valid_mode="random")
    assert_leak_free(r, inter)
    assert len(r.valid) > 0 and r.test.timestamps.min() > r.valid.timestamps.max()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["random", "temporal", "latest", "loo"]))
def test_every_protocol_is_leak_free(seed, protocol):
    inter = random_inter(seed, n=200)
    s = sp.split_interactions(inter, protocol, 0.2, 0.1, seed=seed)
    assert_leak_free(s, pp.dedupe(inter))


def test_carve_validation_and_leak_free_repair():
    train = Interactions(np.repeat(np.arange(3), 10), np.tile(np.arange(10), 3), 3, 10)
    tr, va = sp.carve_validation(train, 0.2, seed=0)
    assert (va.user_counts == 2).all() and not (keys(tr) & keys(va)) and keys(tr) | keys(va) == keys(train)
    assert sp.carve_validation(train, 0.0)[1] is None
    test = Interactions([0, 0, 1], [0, 1, 5], 3, 10)  # (0,0), (0,1) and (1,5) are all in train
    s, dropped = sp.make_leak_free(Split(train, Interactions([2], [3], 3, 10)))
    assert dropped == 1 and len(s.test) == 0
    s, dropped = sp.make_leak_free(Split(tr, test, va))
    assert dropped == 3 and len(s.test) == 0


def test_bad_ratios_are_config_errors():
    inter = random_inter(0)
    with pytest.raises(ConfigError, match=r"test_ratio \+ valid_ratio of random_split must be < 1"):
        sp.random_split(inter, 0.6, 0.5)
    with pytest.raises(ConfigError, match=r"test_ratio of random_split must be a number in \(0, 1\)"):
        sp.random_split(inter, 0.0)
    with pytest.raises(ConfigError, match="split must be one of"):
        sp.split_interactions(inter, "nope")

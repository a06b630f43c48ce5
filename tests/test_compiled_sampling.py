"""The compiled candidate scorer and membership test give the tensor paths' results, refuse bad ids, and step
aside where they do not serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recneg
from recneg import kernels
from recneg.models import base
from recneg.samplers.base import scored_uniform_pool, uniform_pool


def _reference(table, user_emb, ids):
    return torch.bmm(user_emb.unsqueeze(1), table[ids].transpose(1, 2)).squeeze(1)


def test_compiled_scores_equal_gather_and_bmm():
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(500, 24, generator=gen)
    user_emb = torch.randn(64, 24, generator=gen)
    ids = torch.randint(0, 500, (64, 9), generator=gen)
    compiled = base._score_compiled(table, user_emb, ids)
    assert compiled is not None and compiled.shape == (64, 9) and compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, _reference(table, user_emb, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base.score_rows(table, user_emb, ids), compiled)
    # a hand-computed case: ⟨(1, 2), (3, 4)⟩ = 11, ⟨(1, 2), (0, -1)⟩ = -2
    small = torch.tensor([[3.0, 4.0], [0.0, -1.0]])
    got = base.score_rows(small, torch.tensor([[1.0, 2.0]]), torch.tensor([[0, 1, 0]]))
    assert got.tolist() == [[11.0, -2.0, 11.0]]


def test_ids_outside_the_table_raise_instead_of_reading_past_it():
    pytest.importorskip("numba")
    table, user_emb = torch.randn(10, 4), torch.randn(2, 4)
    for bad in (10, -1):
        ids = torch.tensor([[0, 1], [2, bad]])
        with pytest.raises(IndexError, match=r"1 candidate ids lie outside the table's rows \[0, 10\)"):
            base.score_rows(table, user_emb, ids)


def test_mismatched_shapes_get_the_tensor_paths_error():
    table, ids = torch.randn(10, 4), torch.randint(0, 10, (3, 2))
    for user_emb in (torch.randn(2, 4), torch.randn(3, 5)):
        assert base._score_compiled(table, user_emb, ids) is None
        with pytest.raises(RuntimeError):
            base.score_rows(table, user_emb, ids)


def test_other_dtypes_and_a_failed_build_take_gather_and_bmm(monkeypatch):
    table = torch.randn(30, 4, dtype=torch.float64)
    user_emb, ids = torch.randn(3, 4, dtype=torch.float64), torch.randint(0, 30, (3, 5))
    assert base._score_compiled(table, user_emb, ids) is None  # float64: the tensor path, exact
    torch.testing.assert_close(base.score_rows(table, user_emb, ids), _reference(table, user_emb, ids))
    pytest.importorskip("numba")

    def broken(name):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernels, "compiled", broken)
    monkeypatch.setattr(kernels, "_READY", {})
    t32, u32 = table.float(), user_emb.float()
    with pytest.warns(RuntimeWarning, match="score_rows could not be built here .*no LLVM here"):
        got = base.score_rows(t32, u32, ids)
    torch.testing.assert_close(got, _reference(t32, u32, ids))
    assert kernels._READY["score_rows"] is False  # warned once, then the tensor path for good


def test_dns_picks_the_top_scored_candidate_with_the_compiled_scorer(small_split):
    pytest.importorskip("numba")
    torch.manual_seed(0)
    model = recneg.build_model("mf", small_split.train, dim=8)
    sampler = recneg.build_sampler("dns", n_candidates=16).bind(small_split.train)
    users = torch.as_tensor(small_split.train.users[:40])
    pos = torch.as_tensor(small_split.train.items[:40])
    view = model.view(users, pos)
    neg = sampler(users, pos, view, generator=torch.Generator().manual_seed(3))
    user_emb = model.user_embedding.weight[users].detach()
    pool_scores = _reference(model.item_embedding.weight.detach(), user_emb, neg.pool_ids)
    chosen = (user_emb * model.item_embedding.weight[neg.ids[:, 0]].detach()).sum(-1)
    torch.testing.assert_close(chosen, pool_scores.max(1).values, rtol=1e-5, atol=1e-6)


def test_the_compiled_scorer_can_be_switched_off():
    table, user_emb, ids = torch.randn(20, 4), torch.randn(3, 4), torch.randint(0, 20, (3, 5))
    previous = base.use_compiled_scorer(False)
    try:
        assert base._score_compiled(table, user_emb, ids) is None
        torch.testing.assert_close(base.score_rows(table, user_emb, ids), _reference(table, user_emb, ids))
    finally:
        assert base.use_compiled_scorer(previous) is False


def _positives(small_split):
    index = small_split.train.positives()
    assert index._bitmap() is not None
    return index


def _tensor_contains(index, users, items):
    """The bitmap test in tensor operations, and the sorted-key search, both without the compiled kernel."""
    q = (users * index.n_items + items).reshape(-1)
    shape = torch.broadcast_shapes(users.shape, items.shape)
    bits = index._bitmap()
    by_bits = ((bits.index_select(0, q >> 3) >> (q & 7).to(torch.uint8)) & 1).bool().reshape(shape)
    pos = torch.searchsorted(index.keys, q).clamp_(max=index.keys.numel() - 1)
    by_keys = (index.keys[pos] == q).reshape(shape)
    assert torch.equal(by_bits, by_keys)
    return by_bits


def test_compiled_membership_equals_the_tensor_paths(small_split):
    pytest.importorskip("numba")
    index, train = _positives(small_split), small_split.train
    gen = torch.Generator().manual_seed(0)
    users = torch.as_tensor(train.users[:300])
    items = torch.randint(0, index.n_items, (300, 7), generator=gen)
    items[:, 0] = torch.as_tensor(train.items[:300])  # known positives: every row's first entry is one
    got = index.contains(users.unsqueeze(1), items)
    assert got.dtype == torch.bool and got.shape == (300, 7) and bool(got[:, 0].all())
    assert torch.equal(got, _tensor_contains(index, users.unsqueeze(1), items))
    flat_users, flat_items = users.repeat_interleave(7), items.reshape(-1)
    assert torch.equal(index.contains(flat_users, flat_items), got.reshape(-1))
    assert index._contains_compiled(index._bitmap(), users.unsqueeze(1), items) is not None
    # shapes the kernel does not take go to the tensor path, with the same answer
    users3, items3 = users.view(-1, 1, 1), items.view(300, 7, 1).expand(300, 7, 2)
    assert index._contains_compiled(index._bitmap(), users3, items3) is None
    assert torch.equal(index.contains(users3, items3), _tensor_contains(index, users3, items3))


def test_membership_of_ids_outside_the_id_space_raises(small_split):
    pytest.importorskip("numba")
    index = _positives(small_split)
    users = torch.tensor([0, 1])
    for items in (torch.tensor([0, index.n_items]), torch.tensor([-1, 0])):
        with pytest.raises(IndexError, match="1 \\(user, item\\) pairs lie outside the id space"):
            index.contains(users, items)


def test_redrawn_pools_do_not_depend_on_the_compiled_kernels(small_split, monkeypatch):
    """Same seed, same pool, with or without numba: the kernels change the speed, not the draws."""
    pytest.importorskip("numba")
    index = _positives(small_split)
    users = torch.as_tensor(small_split.train.users[:200])
    compiled = uniform_pool(index, users, 16, torch.Generator().manual_seed(5))
    assert not bool(index.contains(users.unsqueeze(1), compiled).any())
    first_draw = torch.randint(index.n_items, (200, 16), generator=torch.Generator().manual_seed(5))
    assert int(index.contains(users.unsqueeze(1), first_draw).sum()) > 20  # entries were redrawn
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_READY", {})
    assert index._contains_compiled(index._bitmap(), users.unsqueeze(1), compiled) is None
    assert torch.equal(uniform_pool(index, users, 16, torch.Generator().manual_seed(5)), compiled)


def test_a_membership_kernel_that_cannot_build_leaves_the_tensor_path(small_split, monkeypatch):
    pytest.importorskip("numba")
    index = _positives(small_split)
    users = torch.as_tensor(small_split.train.users[:50])
    items = torch.randint(0, index.n_items, (50, 4), generator=torch.Generator().manual_seed(1))
    expected = index.contains(users.unsqueeze(1), items)

    def broken(name):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernels, "compiled", broken)
    monkeypatch.setattr(kernels, "_READY", {})
    with pytest.warns(RuntimeWarning, match="bitmap_contains could not be built here"):
        assert torch.equal(index.contains(users.unsqueeze(1), items), expected)
    assert torch.equal(index.contains(users.unsqueeze(1), items), expected)  # no second warning needed


def test_one_pass_test_and_score_equals_the_two_passes(small_split):
    pytest.importorskip("numba")
    index, train = _positives(small_split), small_split.train
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(index.n_items, 16, generator=gen)
    users = torch.as_tensor(train.users[:300])
    user_emb = torch.randn(300, 16, generator=gen)
    ids = torch.randint(0, index.n_items, (300, 9), generator=gen)
    ids[:, 3] = torch.as_tensor(train.items[:300])  # a known positive in every row
    bits = index._bitmap().numpy()
    scores, hits = kernels.check_and_score(
        bits, users.numpy(), ids.numpy(), user_emb.numpy(), table.numpy(), index.n_users
    )
    assert hits.dtype == bool and bool(hits[:, 3].all())
    assert torch.equal(torch.from_numpy(hits), _tensor_contains(index, users.unsqueeze(1), ids))
    got_scores = torch.from_numpy(scores)
    torch.testing.assert_close(got_scores, _reference(table, user_emb, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_scores, base.score_rows(table, user_emb, ids), rtol=0, atol=0)
    # a hand-computed case: user 0 has item 1 (of 2); ⟨(1, 2), (3, 4)⟩ = 11, ⟨(1, 2), (0, -1)⟩ = -2
    one = np.zeros(1, dtype=np.uint8)
    one[0] = 1 << 1  # pair (0, 1): bit q = 0 · 2 + 1
    small = np.array([[3.0, 4.0], [0.0, -1.0]], dtype=np.float32)
    got, hit = kernels.check_and_score(
        one, np.array([0]), np.array([[0, 1, 0]]), np.array([[1.0, 2.0]], dtype=np.float32), small, 1
    )
    assert got.tolist() == [[11.0, -2.0, 11.0]] and hit.tolist() == [[False, True, False]]
    for bad_users, bad_ids in ((np.array([1]), np.array([[0, 1]])), (np.array([0]), np.array([[0, 2]]))):
        with pytest.raises(IndexError, match="lie outside the id space 1 × 2"):
            kernels.check_and_score(one, bad_users, bad_ids, np.ones((1, 2), dtype=np.float32), small, 1)


def _read_log(view):
    reads = []
    view.before_read = lambda which, ids: reads.append((which, None if ids is None else ids.clone()))
    return reads


def test_a_scored_uniform_pool_has_uniform_pools_draws_and_the_views_scores(small_split, monkeypatch):
    pytest.importorskip("numba")
    index, train = _positives(small_split), small_split.train
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    users = torch.as_tensor(train.users[:200])
    pos = torch.as_tensor(train.items[:200])
    view = model.view(users, pos)
    reads = _read_log(view)
    assert base.compiled_scoring_tables(view) is not None
    pool, scores = scored_uniform_pool(index, users, 16, view, torch.Generator().manual_seed(5))
    reads = list(reads)  # what scored_uniform_pool announced (view.score below announces its own)
    first_draw = torch.randint(index.n_items, (200, 16), generator=torch.Generator().manual_seed(5))
    assert int(index.contains(users.unsqueeze(1), first_draw).sum()) > 20  # some were redrawn and rescored
    assert torch.equal(pool, uniform_pool(index, users, 16, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(scores, view.score(pool), rtol=0, atol=0)
    # every row was announced before it was read (a deferred optimiser catches rows up on that call)
    item_reads = [ids for which, ids in reads if which == "item"]
    assert {"user", "item"} <= {which for which, _ in reads}
    assert set(pool.view(-1).tolist()) <= set(torch.cat([i.view(-1) for i in item_reads]).tolist())
    # without numba: the same pool and scores from uniform_pool and view.score
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_READY", {})
    view = model.view(users, pos)
    assert base.compiled_scoring_tables(view) is None
    tensor_pool, tensor_scores = scored_uniform_pool(index, users, 16, view, torch.Generator().manual_seed(5))
    assert torch.equal(tensor_pool, pool)
    torch.testing.assert_close(tensor_scores, scores, rtol=1e-5, atol=1e-6)


def test_the_one_pass_top_candidate_and_statistics_equal_torchs():
    pytest.importorskip("numba")
    scores = np.array(
        [[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5], [1.0, np.nan, 9.0, np.nan], [-1.0, -3.0, -0.5, -4.0]],
        dtype=np.float32,
    )
    ids = np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43]])
    chosen, best, spread, gap = kernels.row_max(scores, ids)
    # first of a tie (as torch.max), the first NaN when there is one
    assert chosen.tolist() == [11, 20, 31, 42]
    assert best[[0, 1, 3]].tolist() == [3.0, 0.5, -0.5] and np.isnan(best[2])
    assert np.isnan(spread) and np.isnan(gap)  # a NaN score shows in the statistics, as in torch's
    finite = scores[[0, 1, 3]]
    _, _, spread, gap = kernels.row_max(finite, ids[[0, 1, 3]])
    assert spread == pytest.approx((5.0 + 0.0 + 3.5) / 3)  # max − min per row: 5, 0, 3.5
    assert gap == pytest.approx(((3.0 - 1.25) + 0.0 + (-0.5 + 2.125)) / 3)  # max − mean per row


@pytest.mark.parametrize("model_name", ["mf", "lightgcn"])
def test_dns_takes_the_same_negatives_and_statistics_with_or_without_the_one_pass_kernels(
    small_split, model_name
):
    """On MF's tables and on LightGCN's propagated ones (both views score with the compiled scorer)."""
    pytest.importorskip("numba")
    from recneg.samplers import hard

    torch.manual_seed(0)
    model = recneg.build_model(model_name, small_split.train, dim=8)
    assert base.compiled_scoring_tables(model.view(torch.tensor([0]), torch.tensor([0]))) is not None
    sampler = recneg.build_sampler("dns", n_candidates=16).bind(small_split.train)
    users = torch.as_tensor(small_split.train.users[:300])
    pos = torch.as_tensor(small_split.train.items[:300])
    fast = sampler(users, pos, model.view(users, pos), generator=torch.Generator().manual_seed(3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hard, "_top_one_compiled", lambda pool, scores: None)
        patch.setattr(hard, "scored_uniform_pool", _two_pass_pool)
        slow = sampler(users, pos, model.view(users, pos), generator=torch.Generator().manual_seed(3))
    assert torch.equal(fast.pool_ids, slow.pool_ids) and torch.equal(fast.ids, slow.ids)
    torch.testing.assert_close(fast.emb, slow.emb)
    assert set(fast.stats) == set(slow.stats)
    for key in fast.stats:
        torch.testing.assert_close(fast.stats[key], slow.stats[key], rtol=1e-5, atol=1e-6)


def _two_pass_pool(index, users, n, view, generator=None, max_rounds=10000):
    pool = uniform_pool(index, users, n, generator, True, max_rounds)
    return pool, view.score(pool)


def test_compiled_scoring_tables_step_aside_where_view_score_would_not_use_the_compiled_scorer(small_split):
    pytest.importorskip("numba")
    model = recneg.build_model("mf", small_split.train, dim=8)
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 1])
    assert base.compiled_scoring_tables(model.view(users, pos)) is not None
    previous = base.use_compiled_scorer(False)
    try:
        assert base.compiled_scoring_tables(model.view(users, pos)) is None
    finally:
        base.use_compiled_scorer(previous)

    class OwnScores(base.TableView):  # a view that scores its own way is left to do so
        def score(self, ids):
            return super().score(ids) * 2.0

    view = model.view(users, pos)
    view.__class__ = OwnScores
    assert base.compiled_scoring_tables(view) is None
    assert base.compiled_scoring_tables(model.double().view(users, pos)) is None  # float64 tables

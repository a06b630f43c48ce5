"""The compiled candidate scorer gives the gather + bmm scores, refuses bad ids, and steps aside."""

from __future__ import annotations

import pytest
import torch

import recneg
from recneg.models import base


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
    from recneg import kernels

    def broken(name):
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(kernels, "compiled", broken)
    monkeypatch.setitem(base._COMPILED_SCORER, "usable", True)
    t32, u32 = table.float(), user_emb.float()
    with pytest.warns(RuntimeWarning, match="no LLVM here"):
        got = base.score_rows(t32, u32, ids)
    torch.testing.assert_close(got, _reference(t32, u32, ids))
    assert base._COMPILED_SCORER["usable"] is False  # warned once, then the tensor path for good


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

"""Fuzzing every registered sampler: shapes, weights and the no-positive promise on random tiny data.

For each name of ``recneg.SAMPLERS`` hypothesis draws a random tiny training set (2–6 users, 5–15 items,
random positives leaving every user at least two non-positive items), a random batch of training pairs and
random small settings (pool sizes, proposals, masking flags, …), binds the sampler, and runs two epochs of
one step each on an MF model (``on_epoch_start(epoch, model, generator)`` first, as the trainer does). Each
returned :class:`~recneg.samplers.base.Negatives` must satisfy:

- ``emb`` is ``[B, n, d]`` (or ``[n, d]`` shared) and finite; ``ids`` has ``emb``'s leading shape and holds
  item ids; ``reg_emb`` has ``emb``'s shape; ``score`` is ``[B, n]``, ``pos_score`` ``[B]``;
- ``weight`` rows are ``≥ 0``, sum to 1 within ``1e-5`` and carry no gradient;
- ``log_q``, ``pos_log_q`` and ``aux_loss`` (a scalar) are finite; stats are finite floats or 0-d tensors;
- where ``sampler.excludes_positives``: no ``ids[b, k]`` is a training positive of ``users[b]`` (MixGCF,
  whose negatives are synthetic: no item of its candidate pool ``[B, K, M]``);
- batch samplers (shared columns, positives included by design): the first ``B`` columns of ``in_batch``/
  ``mns`` are the batch's positives; ``mask`` is ``[B, n]`` bool and covers every column whose item is the
  row's positive (``remove_accidental_hits``; the diagonal at least otherwise) and, with
  ``mask_user_positives``, every training positive of the row's user;
- the record trains: the paired loss (``softmax`` for batch samplers, ``kpair`` for MixGCF, else ``bpr``) plus
  R1 and ``aux_loss`` is finite and backpropagates finite gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from recneg.data.interactions import Interactions
from recneg.errors import DataError
from recneg.losses import l2_regularization
from recneg.models.mf import MF, MFConfig
from recneg.registry import SAMPLERS, build_loss, build_sampler
from recneg.samplers.base import Negatives

BATCH_SAMPLERS = {"in_batch", "mns", "uniform_corpus", "popularity_corpus"}
#: loss paired with a sampler (anything else: bpr)
LOSS = {**{name: "softmax" for name in BATCH_SAMPLERS}, "mixgcf": "kpair"}

#: strategies for config fields, applied to whichever sampler config has the field
FIELD_STRATEGIES = {
    "n_candidates": st.integers(1, 8),
    "n_negatives": st.integers(1, 6),
    "memory_size": st.integers(1, 6),
    "fresh_ratio": st.integers(0, 3),
    "history": st.integers(1, 3),
    "warmup": st.integers(0, 2),
    "pool_size": st.integers(1, 8),
    "sample_size": st.integers(1, 10),
    "n_uniform": st.integers(0, 6),
    "proposal": st.sampled_from(["uniform", "popularity"]),
    "alpha": st.sampled_from([0.0, 0.5, 1.0]),
    "frequency": st.sampled_from(["exact", "streaming"]),
    "q_scale": st.sampled_from(["count", "probability"]),
    "mixture": st.sampled_from(["per_item", "per_stream"]),
    "remove_accidental_hits": st.booleans(),
    "mask_user_positives": st.booleans(),
    "pick": st.sampled_from(["uniform", "top"]),
    "refresh_every": st.integers(0, 2),
    "mode": st.sampled_from(["code", "paper"]),
    "selection": st.sampled_from(["auto", "per_layer", "pooled"]),
    "weight_correction": st.sampled_from(["paper", "code", "none"]),
    "pool_update": st.sampled_from(["mix", "replace"]),
    "memory_update": st.sampled_from(["batch", "epoch"]),
    "regularize": st.sampled_from(["raw", "mixed"]),
    "lambda_w": st.sampled_from([0.1, 1.0]),
}
#: settings kept fixed: the index (FAISS on 5 items tests FAISS, not the sampler), alpha of PDNS/MixGCF
#: have their own ranges
FIXED = {"ann_hard": {"index": "flat"}}
SKIP_FIELDS = {"pdns": {"alpha"}}


def sampler_fields(name: str) -> list[str]:
    import dataclasses

    cfg = SAMPLERS.get(name).config
    return [f.name for f in dataclasses.fields(cfg)] if cfg is not None else []


def popularity_feasible(train: Interactions) -> bool:
    """Whether every user has a non-positive item of non-zero popularity (the proposal's support).

    Otherwise a popularity proposal with exclusion cannot draw a negative for that user: it raises a
    DataError after ``max_rounds`` redraws (:func:`test_popularity_support_covered_by_positives`).
    """
    support = train.item_counts > 0
    dense = train.csr.toarray() > 0
    return bool((support[None, :] & ~dense).any(1).all())


@st.composite
def cases(draw, name: str):
    n_users = draw(st.integers(2, 6))
    n_items = draw(st.integers(5, 15))
    users, items = [], []
    for u in range(n_users):
        k = draw(st.integers(0, n_items - 2))  # every user keeps >= 2 non-positives
        chosen = draw(st.permutations(range(n_items)))[:k]
        users += [u] * k
        items += sorted(chosen)
    if not users:  # at least one training pair
        users, items = [0], [draw(st.integers(0, n_items - 1))]
    train = Interactions(np.array(users), np.array(items), n_users=n_users, n_items=n_items)
    rows = draw(st.lists(st.integers(0, len(users) - 1), min_size=1, max_size=8))
    settings_ = {}
    fields = sampler_fields(name)
    for f in fields:
        if f in FIELD_STRATEGIES and f not in SKIP_FIELDS.get(name, ()):
            settings_[f] = draw(FIELD_STRATEGIES[f])
    if "n_selected" in fields:
        settings_["n_selected"] = draw(st.integers(1, settings_.get("n_candidates", 1)))
    if "n_refresh" in fields:
        settings_["n_refresh"] = draw(st.integers(0, settings_.get("memory_size", 1)))
    settings_.update(FIXED.get(name, {}))
    if name == "popularity" or settings_.get("proposal") == "popularity":
        assume(popularity_feasible(train))
    dim = draw(st.sampled_from([2, 4]))
    if "dim" in fields:
        settings_["dim"] = dim
    seed = draw(st.integers(0, 2**16))
    return train, np.array(rows), settings_, dim, seed


def check_record(name, sampler, neg, users, pos, index, n_items, dim):
    b = users.numel()
    assert isinstance(neg, Negatives)
    emb = neg.emb
    assert emb.dim() in (2, 3) and emb.shape[-1] == dim and neg.n >= 1
    shared = emb.dim() == 2
    assert shared == (name in BATCH_SAMPLERS), "only batch samplers share their negatives"
    if not shared:
        assert emb.shape[0] == b
    assert torch.isfinite(emb).all()
    n = neg.n
    row_shape = (n,) if shared else (b, n)
    if neg.ids is not None:
        assert neg.ids.shape == emb.shape[:-1] and neg.ids.dtype == torch.int64
        assert int(neg.ids.min()) >= 0 and int(neg.ids.max()) < n_items
    if neg.weight is not None:
        w = neg.weight
        assert w.shape == (b, n) and not w.requires_grad
        assert bool((w >= 0).all())
        torch.testing.assert_close(w.sum(1).double(), torch.ones(b, dtype=torch.float64), atol=1e-5, rtol=0)
    if neg.log_q is not None:
        assert neg.log_q.shape in (row_shape, (b, n), (n,))
        assert torch.isfinite(neg.log_q).all()
    if neg.pos_log_q is not None:
        assert neg.pos_log_q.shape == (b,) and torch.isfinite(neg.pos_log_q).all()
    if neg.aux_loss is not None:
        assert neg.aux_loss.dim() == 0 and torch.isfinite(neg.aux_loss)
    if neg.reg_emb is not None:
        assert neg.reg_emb.shape == emb.shape and torch.isfinite(neg.reg_emb).all()
    if neg.score is not None:
        assert neg.score.shape == (b, n) and torch.isfinite(neg.score).all()
    if neg.pos_score is not None:
        assert neg.pos_score.shape == (b,)
    for key, value in neg.stats.items():
        v = value if torch.is_tensor(value) else torch.tensor(float(value))
        assert v.dim() == 0 and torch.isfinite(v), key
    if sampler.excludes_positives and neg.ids is not None:
        ids = neg.ids if not shared else neg.ids.expand(b, -1)
        hits = index.contains(users.view(b, *([1] * (ids.dim() - 1))), ids)
        assert not bool(hits.any()), f"{name} returned a training positive: {ids[hits].tolist()}"
    if shared:
        cfg = sampler.config
        mask = neg.mask
        assert neg.ids is not None and neg.log_q is not None
        if name in ("in_batch", "mns"):
            assert torch.equal(neg.ids[:b], pos)
            assert n == b + getattr(cfg, "n_uniform", 0)
            assert mask is not None and bool(mask[:, :b].diagonal().all())
        if cfg.remove_accidental_hits:
            accidental = neg.ids.unsqueeze(0) == pos.unsqueeze(1)
            assert mask is not None and bool(mask[accidental].all())
        if cfg.mask_user_positives:
            user_pos = index.contains(users.unsqueeze(1), neg.ids.unsqueeze(0))
            assert mask is not None and bool(mask[user_pos].all())
        if mask is not None:
            assert mask.shape == (b, n) and mask.dtype == torch.bool


def run_case(name: str, case) -> None:
    train, rows, cfg, dim, seed = case
    torch.manual_seed(seed)
    model = MF(train.n_users, train.n_items, MFConfig(dim=dim))
    sampler = build_sampler(name, **cfg).bind(train)
    loss_fn = build_loss(LOSS.get(name, "bpr"))
    gen = torch.Generator().manual_seed(seed)
    index = train.positives("cpu")
    users = torch.as_tensor(train.users[rows])
    pos = torch.as_tensor(train.items[rows])
    for epoch in range(2):
        sampler.on_epoch_start(epoch, model, gen)
        view = model.view(users, pos)
        neg = sampler(users, pos, view, generator=gen)
        check_record(name, sampler, neg, users, pos, index, train.n_items, dim)
        if neg.ids is None and sampler.excludes_positives and hasattr(sampler, "candidates"):
            pool = sampler.candidates(users, gen)  # MixGCF: synthetic negatives, check the pool they mix
            assert not bool(index.contains(users.view(-1, 1, 1), pool).any())
        loss = loss_fn(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-4)
        if neg.aux_loss is not None:
            loss = loss + neg.aux_loss
        assert loss.dim() == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
        model.zero_grad(set_to_none=True)
        sampler.zero_grad(set_to_none=True)
        loss.backward()
        for p in list(model.parameters()) + list(sampler.parameters()):
            assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampler_properties(name):
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=cases(name))
    def prop(case):
        run_case(name, case)

    prop()


def test_every_sampler_declares_its_promise():
    # batch samplers share columns that are positives by design; every other sampler excludes positives by
    # default (what the property above relies on to check anything)
    for name in SAMPLERS.names():
        sampler = build_sampler(name)
        assert sampler.excludes_positives == (name not in BATCH_SAMPLERS), name


def test_the_property_catches_a_positive():
    # the check is live: a record holding a training positive fails it
    train = Interactions(np.array([0, 0, 1]), np.array([1, 2, 0]), n_users=2, n_items=6)
    sampler = build_sampler("uniform").bind(train)
    users, pos = torch.tensor([0, 1]), torch.tensor([1, 0])
    view = MF(2, 6, MFConfig(dim=2)).view(users, pos)
    ids = torch.tensor([[2], [3]])  # item 2 is a positive of user 0
    neg = Negatives(emb=view.item_emb(ids), ids=ids)
    with pytest.raises(AssertionError, match="training positive"):
        check_record("uniform", sampler, neg, users, pos, train.positives("cpu"), 6, 2)
    bad = Negatives(emb=view.item_emb(torch.tensor([[3, 4]] * 2)), weight=torch.tensor([[0.7, 0.4]] * 2))
    with pytest.raises(AssertionError):
        check_record("uniform", sampler, bad, users, pos, train.positives("cpu"), 6, 2)


def test_popularity_support_covered_by_positives():
    # user 0's only positive is the only item with a count: p(j) = 0 for every non-positive item, so no
    # negative can be drawn: a one-line DataError at once (not after thousands of redraw rounds).
    train = Interactions(np.array([0]), np.array([3]), n_users=2, n_items=5)
    sampler = build_sampler("popularity").bind(train)
    users, pos = torch.tensor([0]), torch.tensor([3])
    view = MF(2, 5, MFConfig(dim=2)).view(users, pos)
    with pytest.raises(DataError, match="user 0: every item of non-zero proposal probability") as info:
        sampler(users, pos, view, generator=torch.Generator().manual_seed(0))
    assert "\n" not in str(info.value)

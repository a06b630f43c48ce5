"""Batch samplers: in_batch, mns, uniform_corpus, popularity_corpus (ALGORITHMS.md §6.3–6.4, §8.7)."""

import math

import numpy as np
import pytest
import torch

from recneg import build_sampler
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.models.base import TableView
from recneg.samplers.batch import (
    BatchNegatives,
    InBatchSampler,
    MNSConfig,
    MNSSampler,
    PopularityCorpusSampler,
    UniformCorpusSampler,
)

torch.set_num_threads(1)

N_ITEMS = 6
# item counts c = [4, 3, 2, 1, 1, 0] over |O+| = 11 interactions of 4 users
PAIRS = [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (3, 3), (2, 4)]


@pytest.fixture
def train():
    u, i = zip(*PAIRS, strict=True)
    return Interactions(np.array(u), np.array(i), n_users=4, n_items=N_ITEMS)


def _view(users, pos, d=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    ut = torch.randn(4, d, generator=g)
    it = torch.randn(N_ITEMS, d, generator=g).requires_grad_(requires_grad)
    return TableView(users, pos, ut, it, ut, it)


def test_in_batch_shapes_diagonal_and_accidental_hits(train):
    users, pos = (
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([0, 1, 0, 3]),
    )  # item 0 is the positive of rows 0 and 2
    neg = build_sampler("in_batch").bind(train)(users, pos, _view(users, pos))
    assert isinstance(neg, BatchNegatives) and neg.shared
    assert neg.emb.shape == (4, 3) and torch.equal(neg.ids, pos)
    assert torch.all(neg.mask.diagonal())
    assert neg.mask[0, 2] and neg.mask[2, 0]  # the duplicated item is an accidental hit in the other row
    assert neg.mask.sum() == 4 + 2
    assert float(neg.stats["accidental_hits"]) == pytest.approx(2 / 4)
    off = build_sampler("in_batch", remove_accidental_hits=False).bind(train)(users, pos, _view(users, pos))
    assert torch.equal(off.mask, torch.eye(4, dtype=torch.bool))  # the positive itself is always left out


def test_in_batch_exact_log_q_and_scales(train):
    users, pos = torch.tensor([0, 1, 3]), torch.tensor([0, 2, 3])
    q = torch.tensor([4, 3, 2, 1, 1, 0], dtype=torch.float64) / 11
    neg = build_sampler("in_batch").bind(train)(users, pos, _view(users, pos))
    want = torch.log(3 * q[pos]).float()  # p_batch(j) = B q_j
    assert torch.allclose(neg.log_q, want) and torch.equal(neg.pos_log_q, neg.log_q)
    prob = build_sampler("in_batch", q_scale="probability").bind(train)(users, pos, _view(users, pos))
    assert torch.allclose(prob.log_q, want - math.log(3))


def test_mns_mixture_log_q_per_item_and_per_stream(train):
    users, pos = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 4, 3])
    q = torch.tensor([4, 3, 2, 1, 1, 0], dtype=torch.float64) / 11
    B, Bp = 4, 5
    s = MNSSampler(MNSConfig(n_uniform=Bp)).bind(train)
    neg = s(users, pos, _view(users, pos), torch.Generator().manual_seed(3))
    assert neg.emb.shape == (B + Bp, 3) and neg.ids.shape == (B + Bp,) and neg.mask.shape == (B, B + Bp)
    assert torch.equal(neg.ids[:B], pos)
    q_tilde = B * q[neg.ids] + Bp / N_ITEMS  # Q~_j = B q_j + B'/n, the same for an item in either stream
    assert torch.allclose(neg.log_q, q_tilde.log().float())
    assert torch.equal(neg.pos_log_q, neg.log_q[:B])
    assert torch.equal(neg.mask, neg.ids[None, :] == pos[:, None])

    stream = MNSSampler(MNSConfig(n_uniform=Bp, mixture="per_stream")).bind(train)
    neg2 = stream(users, pos, _view(users, pos), torch.Generator().manual_seed(3))
    assert torch.equal(neg2.ids, neg.ids)
    want = torch.cat([(B * q[pos]).log(), torch.full((Bp,), math.log(Bp / N_ITEMS), dtype=torch.float64)])
    assert torch.allclose(neg2.log_q, want.float())

    prob = MNSSampler(MNSConfig(n_uniform=Bp, q_scale="probability")).bind(train)
    neg3 = prob(users, pos, _view(users, pos), torch.Generator().manual_seed(3))
    assert torch.allclose(neg3.log_q, (q_tilde / (B + Bp)).log().float())


def test_mns_with_zero_uniform_items_is_in_batch(train):
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 4])
    a = MNSSampler(MNSConfig(n_uniform=0)).bind(train)(users, pos, _view(users, pos))
    b = InBatchSampler().bind(train)(users, pos, _view(users, pos))
    for f in ("emb", "ids", "log_q", "mask", "pos_log_q"):
        assert torch.equal(getattr(a, f), getattr(b, f))


def test_q_tilde_matches_empirical_column_counts(train):
    """Σ over steps of column occurrences / steps -> B q_j + B'/n when batches are uniform over O+."""
    s = MNSSampler(MNSConfig(n_uniform=3)).bind(train)
    g = torch.Generator().manual_seed(0)
    tu, ti = torch.as_tensor(train.users), torch.as_tensor(train.items)
    B, steps = 4, 3000
    counts = torch.zeros(N_ITEMS, dtype=torch.float64)
    for _ in range(steps):
        idx = torch.randint(len(train), (B,), generator=g)
        users, pos = tu[idx], ti[idx]
        neg = s(users, pos, _view(users, pos), g)
        counts += torch.bincount(neg.ids, minlength=N_ITEMS)
    empirical = counts / steps
    expected = B * torch.tensor([4, 3, 2, 1, 1, 0], dtype=torch.float64) / 11 + 3 / N_ITEMS
    assert torch.allclose(empirical, expected, atol=0.06)
    # and the sampler's own log Q~ is exactly that expected count
    assert torch.allclose(neg.log_q.double().exp(), expected[neg.ids], rtol=1e-5)


def test_mask_user_positives(train):
    users, pos = torch.tensor([0, 3]), torch.tensor([1, 3])
    s = build_sampler("mns", n_uniform=4, mask_user_positives=True).bind(train)
    neg = s(users, pos, _view(users, pos), torch.Generator().manual_seed(1))
    pos_sets = {0: {0, 1, 2}, 3: {0, 3}}
    for b, u in enumerate(users.tolist()):
        for j, item in enumerate(neg.ids.tolist()):
            assert bool(neg.mask[b, j]) == (item in pos_sets[u] or item == pos[b].item())


def test_uniform_stream_items_get_gradient(train):
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 1])
    view = _view(users, pos, requires_grad=True)
    neg = build_sampler("mns", n_uniform=8).bind(train)(users, pos, view, torch.Generator().manual_seed(2))
    neg.emb.sum().backward()
    drawn = set(neg.ids[2:].tolist())
    touched = set(torch.nonzero(view.item_table.grad.abs().sum(1)).flatten().tolist())
    assert drawn <= touched
    assert neg.log_q.grad is None and not neg.log_q.requires_grad


def test_same_generator_same_draws(train):
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 1])
    s = build_sampler("mns", n_uniform=16).bind(train)
    a = s(users, pos, _view(users, pos), torch.Generator().manual_seed(7)).ids
    b = s(users, pos, _view(users, pos), torch.Generator().manual_seed(7)).ids
    assert torch.equal(a, b)


def test_streaming_frequency_feeds_log_q_and_checkpoints(train):
    cfg = dict(n_uniform=2, frequency="streaming", stream_alpha=0.5)
    s = build_sampler("mns", **cfg).bind(train)
    users, pos = torch.tensor([0, 1]), torch.tensor([0, 1])
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        neg = s(users, pos, _view(users, pos), g)
    p_hat = s.estimator.estimate(neg.ids)
    assert torch.allclose(neg.log_q, (p_hat + 2 / N_ITEMS).log().float())
    assert p_hat[0].item() > 0.5  # item 0 occurs every step: its gap shrinks toward 1
    state = s.state_dict()
    assert "estimator.gap" in state and "estimator.step" in state
    fresh = build_sampler("mns", **cfg).bind(train)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.estimator.gap, s.estimator.gap)


def test_corpus_samplers_log_q_and_masks(train):
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 4])
    g = torch.Generator().manual_seed(0)
    uni = UniformCorpusSampler().bind(train)
    neg = build_sampler("uniform_corpus", n_negatives=20).bind(train)(users, pos, _view(users, pos), g)
    assert isinstance(uni, UniformCorpusSampler) and neg.emb.shape == (20, 3)
    assert torch.allclose(neg.log_q, torch.full((20,), math.log(20 / N_ITEMS)))
    assert torch.allclose(neg.pos_log_q, torch.full((3,), math.log(20 / N_ITEMS)))
    assert torch.equal(neg.mask, neg.ids[None, :] == pos[:, None])

    pop = build_sampler("popularity_corpus", n_negatives=200).bind(train)
    assert isinstance(pop, PopularityCorpusSampler)
    neg = pop(users, pos, _view(users, pos), g)
    p = torch.tensor([4, 3, 2, 1, 1, 0], dtype=torch.float64) / 11
    assert not (neg.ids == 5).any()  # c_j = 0 is never drawn
    assert torch.allclose(neg.log_q, (200 * p[neg.ids]).log().float())
    assert torch.allclose(neg.pos_log_q, (200 * p[pos]).log().float())
    freq = torch.bincount(neg.ids, minlength=N_ITEMS).double() / 200
    assert freq[0] > freq[3]  # popular items drawn more


def test_config_validation_and_unbound_error(train):
    with pytest.raises(ConfigError, match="n_uniform"):
        MNSConfig(n_uniform=-1)
    with pytest.raises(ConfigError, match="mixture"):
        MNSConfig(mixture="both")
    with pytest.raises(ConfigError, match="frequency"):
        build_sampler("in_batch", frequency="approx")
    users, pos = torch.tensor([0]), torch.tensor([0])
    with pytest.raises(ConfigError, match="bind"):
        build_sampler("in_batch")(users, pos, _view(users, pos))

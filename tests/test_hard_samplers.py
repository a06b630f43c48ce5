"""Candidate selectors (samplers/hard.py): hand-computed cases and the oracles of ALGORITHMS.md §8.7."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

import recneg
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.losses import bpr_loss
from recneg.samplers.hard import (
    AdaSIRSampler,
    GDNSSampler,
    SRNSSampler,
    adasir_weights,
    importance_resample,
    softmax_v_weights,
)

torch.set_num_threads(1)

HARD = ["dns", "dns_mn", "softmax_v", "srns", "adasir", "pris", "gdns"]


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def tiny_train() -> Interactions:
    # 3 users, 8 items; user 0 likes {0, 1, 2}, user 1 likes {3}, user 2 likes {1, 5, 6, 7}
    users = [0, 0, 0, 1, 2, 2, 2, 2]
    items = [0, 1, 2, 3, 1, 5, 6, 7]
    return Interactions(np.array(users), np.array(items), 3, 8)


def set_scores(model, user_vecs, item_vecs) -> None:
    """Write hand-made embeddings (first coordinates) into an MF model; the rest stays 0."""
    with torch.no_grad():
        model.user_embedding.weight.zero_()
        model.item_embedding.weight.zero_()
        u = torch.as_tensor(user_vecs, dtype=torch.float32)
        i = torch.as_tensor(item_vecs, dtype=torch.float32)
        model.user_embedding.weight[:, : u.shape[1]] = u
        model.item_embedding.weight[:, : i.shape[1]] = i


def batch_of(train: Interactions):
    return torch.as_tensor(train.users), torch.as_tensor(train.items)


def build(name: str, train: Interactions, **kw):
    return recneg.build_sampler(name, **kw).bind(train)


# ------------------------------------------------------------------------------------------ registry/config
def test_all_registered_and_configs_validate():
    for name in HARD:
        assert name in recneg.SAMPLERS
    with pytest.raises(ConfigError, match="n_selected"):
        recneg.build_sampler("dns_mn", n_candidates=4, n_selected=5)
    with pytest.raises(ConfigError, match="proposal"):
        recneg.build_sampler("dns", proposal="zipf")
    with pytest.raises(ConfigError, match="weight_correction"):
        recneg.build_sampler("adasir", weight_correction="maybe")
    with pytest.raises(ConfigError):
        recneg.build_sampler("softmax_v", rho=-1.0)


# ---------------------------------------------------------------------------------------- exclusion property
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 11)), min_size=1, max_size=30),
    name=st.sampled_from(HARD),
    proposal=st.sampled_from(["uniform", "popularity"]),
    seed=st.integers(0, 10_000),
)
def test_never_returns_a_training_positive(data, name, proposal, seed):
    users = np.array([u for u, _ in data])
    items = np.array([i for _, i in data])
    train = Interactions(users, items, 5, 12)
    if proposal == "popularity":  # every user needs a popular item it has not interacted with
        popular = set(items.tolist())
        assume(all(popular - set(items[users == u].tolist()) for u in set(users.tolist())))
    kw = {"proposal": proposal} if name in {"dns", "dns_mn", "softmax_v", "adasir", "pris"} else {}
    if name == "adasir":
        kw.update(sample_size=20, pool_size=6, n_negatives=3)
    sampler = build(name, train, **kw)
    torch.manual_seed(seed)
    model = recneg.build_model("mf", train, dim=8)
    g = gen(seed)
    u, p = batch_of(train)
    for epoch in range(3):
        sampler.on_epoch_start(epoch, model, g)
        neg = sampler(u, p, model.view(u, p), g)
        pos_set = set(zip(users.tolist(), items.tolist(), strict=True))
        for row, ids in zip(u.tolist(), neg.ids.tolist(), strict=True):
            assert all((row, j) not in pos_set for j in ids)
        if neg.weight is not None:
            assert torch.allclose(neg.weight.sum(1), torch.ones(len(u)), atol=1e-5)
            assert not neg.weight.requires_grad


# ------------------------------------------------------------------------------------------ DNS
def test_dns_picks_the_highest_scored_non_positive():
    train = tiny_train()
    model = recneg.build_model("mf", train, dim=8)
    # r_uj = j for user 0 (scores 0..7); positives 0, 1, 2 and the top non-positive is item 7
    # user 2: r_uj = -j, positives {1, 5, 6, 7}: top non-positive is item 0
    set_scores(model, [[1.0], [1.0], [-1.0]], [[float(j)] for j in range(8)])
    sampler = build("dns", train, n_candidates=300)  # all non-positives in the pool, w.p. ≈ 1
    u, p = torch.tensor([0, 2, 1]), torch.tensor([0, 5, 3])
    neg = sampler(u, p, model.view(u, p), gen(1))
    assert neg.ids.shape == (3, 1) and neg.emb.shape == (3, 1, 8)
    assert neg.ids[:, 0].tolist() == [7, 0, 7]
    assert neg.weight is None
    assert neg.stats["pool_score_spread"] > 0 and neg.stats["chosen_minus_pool_mean"] > 0


def test_dns_gradient_reaches_only_chosen_rows():
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    sampler = build("dns", train, n_candidates=4)
    u, p = batch_of(train)
    view = model.view(u, p)
    neg = sampler(u, p, view, gen(3))
    bpr_loss(view.user_emb, view.pos_emb, neg).backward()
    grad_rows = set(torch.nonzero(model.item_embedding.weight.grad.abs().sum(1)).flatten().tolist())
    allowed = set(neg.ids.flatten().tolist()) | set(p.tolist())
    assert grad_rows <= allowed
    assert set(neg.ids.flatten().tolist()) <= grad_rows


def test_dns_mn_m1_equals_dns_and_mn_equals_mean_bpr():
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    u, p = batch_of(train)
    view = model.view(u, p)
    n = 6
    dns = build("dns", train, n_candidates=n)(u, p, view, gen(5))
    m1 = build("dns_mn", train, n_candidates=n, n_selected=1)(u, p, view, gen(5))
    assert torch.equal(dns.ids, m1.ids)
    assert torch.allclose(m1.weight, torch.ones_like(m1.weight))
    loss = bpr_loss(view.user_emb, view.pos_emb, dns)
    assert torch.allclose(loss, bpr_loss(view.user_emb, view.pos_emb, m1))

    mn = build("dns_mn", train, n_candidates=n, n_selected=n)(u, p, view, gen(5))
    pool = build("uniform", train, n_negatives=n)(u, p, view, gen(5))  # same generator calls: the same pool
    assert torch.equal(mn.ids.sort(1).values, pool.ids.sort(1).values)
    assert torch.allclose(mn.weight, torch.full_like(mn.weight, 1.0 / n))
    r_ui = (view.user_emb * view.pos_emb).sum(-1, keepdim=True)
    expected = F.softplus(torch.einsum("bd,bnd->bn", view.user_emb, pool.emb) - r_ui).mean()
    assert torch.allclose(bpr_loss(view.user_emb, view.pos_emb, mn), expected, atol=1e-6)
    assert torch.allclose(bpr_loss(view.user_emb, view.pos_emb, pool), expected, atol=1e-6)


def test_dns_mn_keeps_the_top_m():
    train = tiny_train()
    model = recneg.build_model("mf", train, dim=8)
    set_scores(model, [[1.0], [1.0], [1.0]], [[float(j)] for j in range(8)])
    u, p = torch.tensor([1]), torch.tensor([3])
    view = model.view(u, p)
    neg = build("dns_mn", train, n_candidates=6, n_selected=3)(u, p, view, gen(0))
    pool = build("uniform", train, n_negatives=6)(u, p, view, gen(0)).ids[0]  # the same pool, duplicates too
    assert sorted(neg.ids[0].tolist()) == sorted(pool.tolist())[-3:]  # r_uj = j: top-3 = the 3 largest ids


# ------------------------------------------------------------------------------------------ Softmax-v
def test_softmax_v_weights_hand_case():
    # L = [0, 1]: unbiased std = 1/sqrt(2); ρ = 1: logits = sqrt(2)·L/std = [0, 2]
    w = softmax_v_weights(torch.tensor([[0.0, 1.0]]), rho=1.0)
    e2 = math.exp(2.0)
    assert torch.allclose(w, torch.tensor([[1 / (1 + e2), e2 / (1 + e2)]]), atol=1e-6)
    # popularity proposal: log q subtracted inside the softmax
    log_q = torch.log(torch.tensor([[0.5, 0.25]]))
    w = softmax_v_weights(torch.tensor([[0.0, 1.0]]), rho=1.0, log_q=log_q)
    logits = torch.tensor([0.0, 2.0]) - log_q[0]
    assert torch.allclose(w[0], torch.softmax(logits, 0), atol=1e-6)


def test_softmax_v_weights_oracles():
    torch.manual_seed(0)
    losses = torch.rand(5, 7) * 3
    w = softmax_v_weights(losses, rho=0.7)
    # affine invariance L -> aL + b, a > 0
    assert torch.allclose(w, softmax_v_weights(3.5 * losses - 2.0, rho=0.7), atol=1e-6)
    # ρ = 0 -> uniform; huge ρ -> argmax
    assert torch.allclose(softmax_v_weights(losses, rho=0.0), torch.full_like(losses, 1 / 7))
    hard = softmax_v_weights(losses, rho=1e6)
    assert torch.equal(hard.argmax(1), losses.argmax(1))
    assert torch.allclose(hard.max(1).values, torch.ones(5), atol=1e-4)
    # equal losses -> uniform, not NaN; N = 1 -> weight 1
    eq = softmax_v_weights(torch.full((2, 4), 0.3), rho=1.0)
    assert torch.allclose(eq, torch.full((2, 4), 0.25))
    assert torch.equal(softmax_v_weights(torch.tensor([[0.2]]), rho=1.0), torch.ones(1, 1))
    # no gradient reaches the weights
    leaf = losses.clone().requires_grad_(True)
    assert not softmax_v_weights(leaf, rho=1.0).requires_grad


def test_softmax_v_sampler_weights_and_gradient():
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    u, p = batch_of(train)
    view = model.view(u, p)
    neg = build("softmax_v", train, n_candidates=5, rho=2.0)(u, p, view, gen(2))
    assert neg.emb.shape == (len(u), 5, 8) and neg.weight.shape == (len(u), 5)
    assert not neg.weight.requires_grad
    with torch.no_grad():
        r_ui = (view.user_emb * view.pos_emb).sum(-1, keepdim=True)
        losses = F.softplus(torch.einsum("bd,bnd->bn", view.user_emb, neg.emb) - r_ui)
    assert torch.allclose(neg.weight, softmax_v_weights(losses, 2.0), atol=1e-6)
    loss = bpr_loss(view.user_emb, view.pos_emb, neg)
    loss.backward()
    grad_rows = set(torch.nonzero(model.item_embedding.weight.grad.abs().sum(1)).flatten().tolist())
    assert grad_rows <= set(neg.ids.flatten().tolist()) | set(p.tolist())


# ------------------------------------------------------------------------------------------ SRNS
def test_srns_memory_update_and_state_dict_round_trip():
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    s = build("srns", train, memory_size=3, fresh_ratio=2, warmup=0, std_weight=1.0)
    g = gen(0)
    positives = {0: {0, 1, 2}, 1: {3}, 2: {1, 5, 6, 7}}
    for epoch in range(4):
        s.on_epoch_start(epoch, model, g)
        assert s.memory_.shape == (3, 3)
        for user, row in enumerate(s.memory_.tolist()):
            assert not set(row) & positives[user]
            if user != 2:  # users 0, 1 have >= 3 non-positives: the memory holds distinct items
                assert len(set(row)) == 3
    assert int(s.n_records_) == 4
    assert torch.equal(torch.isnan(s.pos_hist_).sum(1), torch.ones(len(train), dtype=torch.long))  # 4 of 5
    fresh = SRNSSampler(s.config).bind(train)
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.memory_, s.memory_)
    assert torch.equal(torch.nan_to_num(fresh.hist_, -7.0), torch.nan_to_num(s.hist_, -7.0))
    assert int(fresh.epoch_) == 3 and fresh._epoch() == 3 and fresh._ready()  # mirrors re-read after loading
    u, p = batch_of(train)
    a = s(u, p, model.view(u, p), gen(9))
    b = fresh(u, p, model.view(u, p), gen(9))
    assert torch.equal(a.ids, b.ids)


def test_srns_std_and_variance_boosted_choice():
    train = tiny_train()
    model = recneg.build_model("mf", train, dim=8)
    set_scores(model, [[1.0], [1.0], [1.0]], [[0.0]] * 8)  # every score 0: p_now = 0.5 for all
    s = SRNSSampler(recneg.SAMPLERS.make_config("srns", {"memory_size": 2, "history": 3, "warmup": 0}))
    s.bind(train)
    s._set_ready(True)
    s.memory_[1] = torch.tensor([4, 6])
    nan = float("nan")
    # item 4: scores 0, 0, 0 (std 0); item 6: scores -1, 1, nan (two records)
    s.hist_[1] = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 1.0, nan]])
    pair = int(torch.searchsorted(s.positives("cpu").keys, torch.tensor(1 * 8 + 3)))
    s.pos_hist_[pair] = torch.tensor([0.0, 0.0, 0.0])
    std = s.score_std(torch.tensor([1]), torch.tensor([3]))
    p = torch.sigmoid(torch.tensor([-1.0, 1.0]))
    assert torch.allclose(std[0], torch.tensor([0.0, float(p.std(unbiased=False))]), atol=1e-6)
    neg = s(torch.tensor([1]), torch.tensor([3]), model.view(torch.tensor([1]), torch.tensor([3])), gen(0))
    assert neg.ids.tolist() == [[6]]  # equal p_now: the std decides


def test_srns_batch_update_scores_each_users_candidates_with_its_embedding(monkeypatch):
    """The per-batch memory refresh scores the candidates of each distinct user of the batch (users repeated
    and out of order) with that user's embedding: ⟨e_u, e_j⟩ for every candidate j."""
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    s = build("srns", train, memory_size=2, fresh_ratio=2, warmup=0)
    s.on_epoch_start(0, model, gen(0))
    seen = {}

    def capture(users, score, generator):
        cand = torch.tensor([[4, 5, 6, 7, 3, 0], [0, 1, 2, 3, 4, 5], [2, 3, 4, 0, 1, 7]])[: len(users)]
        seen["users"], seen["cand"], seen["scores"] = users, cand, score(users, cand)

    monkeypatch.setattr(s, "_update_rows", capture)
    users, pos = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([5, 1, 6, 3, 2])
    s(users, pos, model.view(users, pos), gen(1))
    user_table, item_table = model.tables()
    want = torch.einsum("cd,cnd->cn", user_table[seen["users"]], item_table[seen["cand"]]).detach()
    assert seen["users"].tolist() == [0, 1, 2]
    torch.testing.assert_close(seen["scores"], want)


# ------------------------------------------------------------------------------------------ AdaSIR / PRIS
def test_importance_resample_matches_its_distribution():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]])
    ids = torch.tensor([[10, 11, 12, 13]])
    n = 20_000
    out, w = importance_resample(ids, logits, n, gen(4))
    probs = torch.softmax(logits, 1)[0]
    counts = torch.bincount(out[0] - 10, minlength=4).double()
    expected = probs.double() / probs.double().sum() * counts.sum()
    assert sps.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    assert torch.allclose(w[0], probs[out[0] - 10])


def test_adasir_pool_follows_the_target_distribution():
    # one user with positive item 0; items 1..4 with scores 0, 1, 2, -1; uniform proposal over {1..4}
    train = Interactions(np.array([0]), np.array([0]), 1, 5)
    model = recneg.build_model("mf", train, dim=8)
    r = [5.0, 0.0, 1.0, 2.0, -1.0]
    set_scores(model, [[1.0]], [[x] for x in r])
    s = build("adasir", train, sample_size=4000, pool_size=4000, pool_update="replace")
    s.on_epoch_start(0, model, gen(1))
    assert not (s.pool_ == 0).any()  # the positive is never in the pool
    counts = torch.bincount(s.pool_[0], minlength=5)[1:].double()
    target = torch.softmax(torch.tensor(r[1:], dtype=torch.float64), 0) * counts.sum()
    assert sps.chisquare(counts.numpy(), target.numpy()).pvalue > 1e-3


def test_adasir_weight_sign_choice():
    neg_scores = torch.tensor([[1.0, 2.0]])
    pos_score = torch.tensor([0.5])
    w = torch.tensor([[0.2, 0.6]])
    paper = adasir_weights(neg_scores, pos_score, w.log(), lambda_w=1.0)
    code = adasir_weights(neg_scores, pos_score, -w.log(), lambda_w=1.0)
    z_paper = torch.tensor([0.5 - math.log(0.2), 1.5 - math.log(0.6)])
    z_code = torch.tensor([0.5 + math.log(0.2), 1.5 + math.log(0.6)])
    assert torch.allclose(paper[0], torch.softmax(z_paper, 0))
    assert torch.allclose(code[0], torch.softmax(z_code, 0))
    # the decided ("paper") sign undoes the resampling: entries drawn ∝ exp(r) get uniform weights
    r = torch.tensor([[0.3, -1.2, 2.0]])
    w_exp = torch.softmax(r, 1)
    assert torch.allclose(adasir_weights(r, torch.zeros(1), w_exp.log(), 1.0), torch.full((1, 3), 1 / 3))


def test_adasir_sampler_uses_pool_weights_and_round_trips():
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    s = build("adasir", train, sample_size=10, pool_size=4, n_negatives=3)
    u, p = batch_of(train)
    with pytest.raises(ConfigError, match="on_epoch_start"):
        s(u, p, model.view(u, p), gen(0))
    s.on_epoch_start(0, model, gen(0))
    s.on_epoch_start(1, model, gen(1))  # "mix" update
    view = model.view(u, p)
    neg = s(u, p, view, gen(2))
    assert neg.ids.shape == (len(u), 3) and neg.weight.shape == (len(u), 3)
    # recompute: the draws are pool entries; find each entry's stored w
    g = gen(2)
    pick = torch.randint(0, 4, (len(u), 3), generator=g)
    assert torch.equal(neg.ids, s.pool_[u].gather(1, pick))
    w = s.pool_w_[u].gather(1, pick)
    with torch.no_grad():
        r_uj = torch.einsum("bd,bnd->bn", view.user_emb, neg.emb)
        r_ui = (view.user_emb * view.pos_emb).sum(-1)
    assert torch.allclose(neg.weight, torch.softmax(r_uj - r_ui[:, None] - w.log(), 1), atol=1e-5)
    fresh = AdaSIRSampler(s.config).bind(train)
    fresh.load_state_dict(s.state_dict())
    assert torch.equal(fresh.pool_, s.pool_) and bool(fresh.initialized_)


def test_pris_uniform_weights_reduce_to_softmax_of_scores():
    train = tiny_train()
    torch.manual_seed(1)
    model = recneg.build_model("mf", train, dim=8)
    u, p = batch_of(train)
    view = model.view(u, p)
    neg = build("pris", train, n_negatives=4, lambda_w=0.5)(u, p, view, gen(0))
    with torch.no_grad():
        r_uj = torch.einsum("bd,bnd->bn", view.user_emb, neg.emb)
    assert neg.log_q is None
    assert torch.allclose(neg.weight, torch.softmax(r_uj / 0.5, 1), atol=1e-5)
    popn = build("pris", train, n_negatives=4, proposal="popularity")(u, p, view, gen(0))
    assert popn.log_q is not None
    with torch.no_grad():
        r_uj = torch.einsum("bd,bnd->bn", view.user_emb, popn.emb)
        r_ui = (view.user_emb * view.pos_emb).sum(-1, keepdim=True)
    assert torch.allclose(popn.weight, torch.softmax(r_uj - r_ui - popn.log_q, 1), atol=1e-5)


# ------------------------------------------------------------------------------------------ GDNS
def test_gdns_expected_gap_gain_and_refresh():
    train = tiny_train()
    model = recneg.build_model("mf", train, dim=8)
    set_scores(model, [[1.0], [1.0], [1.0]], [[0.1 * j] for j in range(8)])
    s = GDNSSampler(recneg.SAMPLERS.make_config("gdns", {"memory_size": 2, "n_refresh": 1})).bind(train)
    s.on_epoch_start(0, model, gen(0))
    s.memory_[0] = torch.tensor([3, 7])
    gap = s.expected_gap(*model.tables())
    # user 0, positives {0, 1, 2} with r = 0, .1, .2
    for slot, j in enumerate([3, 7]):
        expected = np.mean([1 / (1 + math.exp(-(0.1 * j - 0.1 * i))) for i in (0, 1, 2)])
        assert gap[0, slot].item() == pytest.approx(expected, abs=1e-6)
    s.gap_ = gap
    s.fresh_.fill_(False)
    # training pulls item 7 up (gap grows: a suspect) and pushes item 3 down (gap shrinks: a true negative)
    with torch.no_grad():
        model.item_embedding.weight[7, 0] = 2.0
        model.item_embedding.weight[3, 0] = -1.0
    keep = GDNSSampler(recneg.SAMPLERS.make_config("gdns", {"memory_size": 2, "n_refresh": 0})).bind(train)
    keep.load_state_dict(s.state_dict())
    keep.on_epoch_start(1, model, gen(1))
    assert keep.memory_[0].tolist() == [3, 7]
    assert keep.gain_[0, 0] > 0 and keep.gain_[0, 1] < 0
    s.on_epoch_start(1, model, gen(1))
    # the lowest-gap slot (item 3) was refreshed, item 7 was kept
    assert s.memory_[0, 1].item() == 7 and s.memory_[0, 0].item() not in {0, 1, 2}
    assert s.gain_[0, 0] == 0 and s.gain_[0, 1] < 0
    # the gain penalises the suspect: with a large β the choice avoids item 7
    s.memory_[0, 0] = 4
    s.gain_[0, 0] = 0.0
    cfg = recneg.SAMPLERS.make_config("gdns", {"memory_size": 2, "n_refresh": 1, "gain_weight": 100.0})
    s2 = GDNSSampler(cfg).bind(train)
    s2.load_state_dict(s.state_dict())
    u, p = torch.tensor([0]), torch.tensor([0])
    assert s2(u, p, model.view(u, p), gen(0)).ids.tolist() == [[4]]


# ------------------------------------------------------------------------------------------ all: a step runs
@pytest.mark.parametrize("name", HARD)
def test_one_training_step_runs_and_stats_are_scalars(name):
    train = tiny_train()
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=8)
    kw = {"sample_size": 12, "pool_size": 5} if name == "adasir" else {}
    s = build(name, train, **kw)
    s.on_epoch_start(0, model, gen(0))
    u, p = batch_of(train)
    view = model.view(u, p)
    neg = s(u, p, view, gen(1))
    loss = bpr_loss(view.user_emb, view.pos_emb, neg)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.item_embedding.weight.grad is not None
    for v in neg.stats.values():  # detached 0-d tensors: the trainer sums them on device
        assert torch.is_tensor(v) and v.dim() == 0 and not v.requires_grad and torch.isfinite(v)

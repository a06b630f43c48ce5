"""PDNS (mixing form) and MixGCF against hand-computed cases (ALGORITHMS.md §3, §4, §8.7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.losses import bpr_loss, kpair_loss, l2_regularization, soft_bpr_loss
from recneg.models.base import ModelView
from recneg.models.lightgcn import LightGCN, LightGCNConfig
from recneg.models.mf import MF, MFConfig
from recneg.registry import SAMPLERS, build_sampler
from recneg.samplers.base import Negatives, uniform_pool
from recneg.samplers.mixing import MixGCFConfig, MixGCFSampler, PDNSConfig, PDNSSampler

torch.set_num_threads(1)

N_USERS, N_ITEMS = 5, 12
# user 0 has 9 of the 12 items: candidates must come from {9, 10, 11}
POSITIVES = {0: [0, 1, 2, 3, 4, 5, 6, 7, 8], 1: [0, 9], 2: [1, 2, 10], 3: [3, 11], 4: [4, 5]}


def tiny() -> Interactions:
    users = [u for u, items in POSITIVES.items() for _ in items]
    items = [i for its in POSITIVES.values() for i in its]
    return Interactions(np.array(users), np.array(items), n_users=N_USERS, n_items=N_ITEMS)


TRAIN = tiny()
USERS = torch.tensor([0, 1, 2, 3, 4, 0, 2])
POS = torch.tensor([3, 9, 10, 11, 5, 8, 1])


def make_model(kind: str, seed: int = 0, dim: int = 6, n_layers: int = 2):
    torch.manual_seed(seed)
    if kind == "mf":
        return MF.from_interactions(TRAIN, MFConfig(dim=dim)).double()
    return LightGCN.from_interactions(TRAIN, LightGCNConfig(dim=dim, n_layers=n_layers)).double()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dns(view: ModelView, users: Tensor, n_candidates: int, generator) -> Negatives:
    """A tiny reference DNS (top-1 of a uniform_excl pool by pooled score)."""
    pool = uniform_pool(TRAIN.positives("cpu"), users, n_candidates, generator)
    scores = torch.einsum("bd,bnd->bn", view.user_emb.detach(), view.item_emb(pool).detach())
    ids = pool.gather(1, scores.argmax(1, keepdim=True))
    return Negatives(emb=view.item_emb(ids), ids=ids)


def grads(model, loss):
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


# --------------------------------------------------------------------------------------------- PDNS


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
@pytest.mark.parametrize("lam", [0.0, 0.05])
@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_pdns_mixing_equals_softbpr_with_dns(kind, lam, beta):
    model = make_model(kind)
    view = model.view(USERS, POS)
    ref_neg = dns(view, USERS, 4, gen(1))
    ref = soft_bpr_loss(view.user_emb, view.pos_emb, ref_neg, beta) + l2_regularization(view, ref_neg, lam)
    ref_g = grads(model, ref)
    ref_pooled = torch.autograd.grad(
        soft_bpr_loss(view.user_emb, view.pos_emb, ref_neg, beta), [view.user_emb, view.pos_emb, ref_neg.emb]
    )

    view = model.view(USERS, POS)
    sampler = PDNSSampler(PDNSConfig(n_candidates=4, alpha=1 - beta)).bind(TRAIN)
    neg = sampler(USERS, POS, view, gen(1))
    assert torch.equal(neg.ids, ref_neg.ids) and neg.emb.shape == (7, 1, 6)
    torch.testing.assert_close(neg.reg_emb, view.item_ego(neg.ids))  # the raw negative's layer-0 row
    out = bpr_loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, lam)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads(model, out), ref_g, strict=True):
        torch.testing.assert_close(g, r)
    # gradients w.r.t. the pooled e_u, e_i, e_j (the mix carries gradient to both e_i and e_j)
    view = model.view(USERS, POS)
    neg = sampler(USERS, POS, view, gen(1))
    e_j = view.item_emb(neg.ids)
    emb = (1 - beta) * view.pos_emb.unsqueeze(1) + beta * e_j
    mixed = bpr_loss(view.user_emb, view.pos_emb, Negatives(emb=emb, ids=neg.ids))
    for g, r in zip(torch.autograd.grad(mixed, [view.user_emb, view.pos_emb, e_j]), ref_pooled, strict=True):
        torch.testing.assert_close(g, r)


def test_pdns_alpha_zero_and_beta_one_are_dns():
    model = make_model("lightgcn")
    view = model.view(USERS, POS)
    ref_neg = dns(view, USERS, 5, gen(2))
    ref = bpr_loss(view.user_emb, view.pos_emb, ref_neg)
    torch.testing.assert_close(soft_bpr_loss(view.user_emb, view.pos_emb, ref_neg, beta=1.0), ref)
    neg = PDNSSampler(PDNSConfig(n_candidates=5, alpha=0.0)).bind(TRAIN)(USERS, POS, view, gen(2))
    torch.testing.assert_close(neg.emb, ref_neg.emb)
    torch.testing.assert_close(bpr_loss(view.user_emb, view.pos_emb, neg), ref)


def test_pdns_hand_computed_row():
    # MF, one pair: e_u = (1, 0), e_i = (2, 0); candidates 9, 10, 11 with scores 0.5, 3, -1 -> DNS picks 10
    model = make_model("mf", dim=2)
    with torch.no_grad():
        model.user_embedding.weight[0] = torch.tensor([1.0, 0.0])
        model.item_embedding.weight[3] = torch.tensor([2.0, 0.0])
        model.item_embedding.weight[9:12] = torch.tensor([[0.5, 1.0], [3.0, -1.0], [-1.0, 2.0]])
    view = model.view(torch.tensor([0]), torch.tensor([3]))
    neg = PDNSSampler(PDNSConfig(n_candidates=32, alpha=0.8)).bind(TRAIN)(view.users, view.pos, view, gen(0))
    assert neg.ids.tolist() == [[10]]  # 32 draws from {9, 10, 11}: 10 is drawn (probability 1 - (2/3)^32)
    torch.testing.assert_close(
        neg.emb[0, 0], torch.tensor([0.8 * 2 + 0.2 * 3, 0.2 * -1.0], dtype=torch.float64)
    )
    # loss = softplus(<e_u, ẽ> - r_ui) = softplus(2.2 - 2) = softplus(0.2 * (3 - 2))
    loss = bpr_loss(view.user_emb, view.pos_emb, neg)
    assert float(loss.detach()) == pytest.approx(math.log1p(math.exp(0.2)))


def test_pdns_mixed_regularisation():
    model = make_model("mf")
    view = model.view(USERS, POS)
    raw = PDNSSampler(PDNSConfig(n_candidates=4, alpha=0.75)).bind(TRAIN)(USERS, POS, view, gen(3))
    mixed = PDNSSampler(PDNSConfig(n_candidates=4, alpha=0.75, regularize="mixed")).bind(TRAIN)(
        USERS, POS, view, gen(3)
    )
    torch.testing.assert_close(mixed.emb, raw.emb)
    expected = 0.75 * view.pos_ego.unsqueeze(1) + 0.25 * view.item_ego(raw.ids)
    torch.testing.assert_close(mixed.reg_emb, expected)
    assert float(l2_regularization(view, mixed, 0.0)) == float(l2_regularization(view, raw, 0.0)) == 0.0
    reg_mixed, reg_raw = (float(l2_regularization(view, n, 0.1).detach()) for n in (mixed, raw))
    assert reg_mixed != pytest.approx(reg_raw)


def test_pdns_never_returns_a_training_positive():
    model = make_model("mf")
    users = torch.zeros(200, dtype=torch.long)
    view = model.view(users, torch.zeros(200, dtype=torch.long))
    neg = PDNSSampler(PDNSConfig(n_candidates=3)).bind(TRAIN)(users, view.pos, view, gen(4))
    assert set(neg.ids.flatten().tolist()) <= {9, 10, 11}


def test_pdns_config_validation():
    with pytest.raises(ConfigError, match="alpha of PDNSConfig"):
        PDNSConfig(alpha=1.0)
    with pytest.raises(ConfigError, match="n_candidates"):
        PDNSConfig(n_candidates=0)
    with pytest.raises(ConfigError, match="regularize"):
        PDNSConfig(regularize="both")
    s = build_sampler("pdns", n_candidates=8, alpha="0.8")
    assert isinstance(s, PDNSSampler) and s.config.alpha == 0.8 and not s.needs_layers


# --------------------------------------------------------------------------------------------- MixGCF


def mixgcf(**kw) -> MixGCFSampler:
    return MixGCFSampler(MixGCFConfig(**kw)).bind(TRAIN)


def test_mixgcf_alpha_zero_is_per_layer_dns_on_raw_candidates():
    model = make_model("lightgcn", seed=5, n_layers=3)
    view = model.view(USERS, POS)
    neg = mixgcf(n_candidates=6, n_negatives=2, alpha_override=0.0)(USERS, POS, view, gen(6))
    assert neg.emb.shape == (7, 2, 6) and neg.ids is None

    pool = uniform_pool(TRAIN.positives("cpu"), USERS, 12, gen(6)).view(7, 2, 6)
    layers = view.item_layers(pool).detach()  # [B, K, M, L+1, d]
    expected, chosen = [], []
    for layer in range(4):
        s = torch.einsum("bd,bkmd->bkm", view.user_emb.detach(), layers[..., layer, :])
        ids = pool.gather(2, s.argmax(2, keepdim=True)).squeeze(2)  # [B, K]
        chosen.append(ids)
        expected.append(view.item_layers(ids)[..., layer, :])
    torch.testing.assert_close(neg.emb, torch.stack(expected, 2).mean(2))
    torch.testing.assert_close(neg.reg_emb, view.item_ego(chosen[0]))
    chosen = torch.stack(chosen, -1)
    assert (chosen != chosen[..., :1]).any(), "test data should make some layer pick another candidate"


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
@pytest.mark.parametrize("k", [1, 3])
def test_mixgcf_alpha_one_gives_the_positive(kind, k):
    model = make_model(kind)
    view = model.view(USERS, POS)
    neg = mixgcf(n_candidates=4, n_negatives=k, alpha_override=1.0)(USERS, POS, view, gen(7))
    torch.testing.assert_close(neg.emb, view.pos_emb.unsqueeze(1).expand(-1, k, -1))
    torch.testing.assert_close(neg.reg_emb, view.pos_ego.unsqueeze(1).expand(-1, k, -1))
    per_pair = kpair_loss(view.user_emb, view.pos_emb, neg, reduction="none")
    torch.testing.assert_close(per_pair, torch.full((7,), math.log(1 + k), dtype=torch.float64))


def test_mixgcf_with_mf_is_positive_mixing_plus_dns_alpha_shared():
    """MF (L + 1 = 1): the choice is DNS's (α is shared by the candidates, so mixing keeps their order), and
    ``emb = α e_i + (1 − α) e_j`` with one α per (pair, slot) for all coordinates, drawn from U(0, 1)."""
    model = make_model("mf", seed=8, dim=5)
    view = model.view(USERS, POS)
    neg = mixgcf(n_candidates=5, n_negatives=2)(USERS, POS, view, gen(8))
    pool = uniform_pool(TRAIN.positives("cpu"), USERS, 10, gen(8)).view(7, 2, 5)
    scores = torch.einsum("bd,bkmd->bkm", view.user_emb, view.item_emb(pool)).detach()
    j = pool.gather(2, scores.argmax(2, keepdim=True)).squeeze(2)  # DNS choice per slot
    e_i, e_j = view.pos_emb.detach().unsqueeze(1), view.item_emb(j).detach()
    alpha = (neg.emb.detach() - e_j) / (e_i - e_j)  # [B, K, d]: per-coordinate estimate
    torch.testing.assert_close(alpha, alpha[..., :1].expand_as(alpha))  # constant over coordinates
    a = alpha[..., 0]
    assert ((a > 0) & (a < 1)).all()
    assert a.flatten().unique().numel() == a.numel()  # a fresh draw per (pair, slot)
    # the drawn α are the generator's next U(0, 1) numbers after the pool
    g = gen(8)
    uniform_pool(TRAIN.positives("cpu"), USERS, 10, g)
    torch.testing.assert_close(a, torch.rand((7, 2, 1), generator=g, dtype=torch.float64)[..., 0])


def test_mixgcf_alpha_per_layer_constant_over_candidates_and_coordinates():
    model = make_model("lightgcn", seed=9, n_layers=2)
    view = model.view(USERS, POS)
    sampler = mixgcf(n_candidates=4)
    g = gen(9)
    pool = sampler.candidates(USERS, g)
    alpha = sampler.draw_alpha((7, 1, 3), view.user_emb, g)
    assert alpha.shape == (7, 1, 3) and alpha.unique().numel() == 21
    synthetic, ids = sampler.synthesize(view, pool, alpha)
    assert synthetic.shape == (7, 1, 3, 6) and ids.shape == (7, 1, 3)
    e_i = view.pos_layers.detach().unsqueeze(1)  # [B, 1, L+1, d]
    e_j = torch.diagonal(view.item_layers(ids), dim1=2, dim2=3).movedim(-1, 2).detach()
    est = (synthetic.detach() - e_j) / (e_i - e_j)
    torch.testing.assert_close(est, alpha.unsqueeze(-1).expand_as(est))
    # per layer the choice is the argmax of raw scores with the pooled user (α shared by candidates)
    raw = torch.einsum("bd,bkmld->bkml", view.user_emb.detach(), view.item_layers(pool).detach())
    torch.testing.assert_close(ids, pool.gather(2, raw.argmax(2)))
    # forward = this pool, these α, mean pooling, synthetic layer-0 row regularised
    neg = sampler(USERS, POS, view, gen(9))
    torch.testing.assert_close(neg.emb, synthetic.mean(2))
    torch.testing.assert_close(neg.reg_emb, synthetic[:, :, 0])


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_mixgcf_never_uses_a_training_positive(kind):
    model = make_model(kind, seed=10)
    users = torch.zeros(100, dtype=torch.long)
    view = model.view(users, torch.zeros(100, dtype=torch.long))
    sampler = mixgcf(n_candidates=8, n_negatives=2, alpha_override=0.0)
    pool = sampler.candidates(users, gen(11))
    assert set(pool.flatten().tolist()) <= {9, 10, 11}
    _, ids = sampler.synthesize(view, pool, torch.zeros(100, 2, view.n_layers, dtype=torch.float64))
    assert set(ids.flatten().tolist()) <= {9, 10, 11}
    if kind == "mf":  # black box: with α = 0 every negative is an item row; find which
        neg = sampler(users, view.pos, view, gen(12))
        dist = torch.cdist(neg.emb.reshape(-1, 6), view.all_items())
        assert torch.allclose(dist.min(1).values, torch.zeros(200, dtype=torch.float64))
        assert set(dist.argmin(1).tolist()) <= {9, 10, 11}


def test_mixgcf_negatives_use_disjoint_candidate_slices():
    model = make_model("mf", seed=13)
    view = model.view(USERS, POS)
    neg = mixgcf(n_candidates=3, n_negatives=4, alpha_override=0.0)(USERS, POS, view, gen(14))
    pool = uniform_pool(TRAIN.positives("cpu"), USERS, 12, gen(14)).view(7, 4, 3)
    scores = torch.einsum("bd,bkmd->bkm", view.user_emb, view.item_emb(pool)).detach()
    j = pool.gather(2, scores.argmax(2, keepdim=True)).squeeze(2)
    torch.testing.assert_close(neg.emb, view.item_emb(j))


def test_mixgcf_gradient_hand_computed():
    # MF, one pair, K = 1: x = <e_u, ẽ> - <e_u, e_i>, ẽ = a e_i + (1 - a) e_j, loss = softplus(x)
    model = make_model("mf", seed=15, dim=3)
    users, pos = torch.tensor([1]), torch.tensor([9])
    view = model.view(users, pos)
    neg = mixgcf(n_candidates=1, alpha_override=0.3)(users, pos, view, gen(15))
    loss = kpair_loss(view.user_emb, view.pos_emb, neg)
    loss.backward()
    e_u, e_i = model.user_embedding.weight[1].detach(), model.item_embedding.weight[9].detach()
    j = int(
        torch.cdist(((neg.emb[0] - 0.3 * e_i) / 0.7).detach(), model.item_embedding.weight.detach()).argmin()
    )
    assert j not in POSITIVES[1]
    e_j = model.item_embedding.weight[j].detach()
    mix = 0.3 * e_i + 0.7 * e_j
    s = torch.sigmoid(e_u @ mix - e_u @ e_i)
    gi, gj = model.item_embedding.weight.grad[9], model.item_embedding.weight.grad[j]
    torch.testing.assert_close(model.user_embedding.weight.grad[1], s * (mix - e_i))
    torch.testing.assert_close(gi, s * (0.3 - 1) * e_u)  # through the positive term and the mix
    torch.testing.assert_close(gj, s * 0.7 * e_u)
    others = [r for r in range(N_ITEMS) if r not in (9, j)]
    assert model.item_embedding.weight.grad[others].abs().sum() == 0  # only the chosen rows


def test_mixgcf_needs_layers_clear_error():
    class TwoTowerView(ModelView):  # a view without per-layer embeddings
        model_name = "twotower"

        def __init__(self, users, pos):
            super().__init__(users, pos)
            self.user_emb = torch.randn(len(users), 4)
            self.pos_emb = torch.randn(len(pos), 4)

        def item_emb(self, ids):
            return torch.randn(*ids.shape, 4)

    sampler = mixgcf()
    assert sampler.needs_layers and MixGCFSampler.needs_layers
    with pytest.raises(ConfigError, match=r"mixgcf needs per-layer embeddings.*'twotower'"):
        sampler(USERS, POS, TwoTowerView(USERS, POS), gen(0))


def test_mixgcf_config_and_registry():
    with pytest.raises(ConfigError, match="alpha_override of MixGCFConfig"):
        MixGCFConfig(alpha_override=1.5)
    with pytest.raises(ConfigError, match="n_negatives"):
        MixGCFConfig(n_negatives=0)
    s = build_sampler("mixgcf", n_candidates="8", alpha_override="none")
    assert isinstance(s, MixGCFSampler) and s.config.n_candidates == 8 and s.config.alpha_override is None
    assert build_sampler("mixgcf", alpha_override="0.5").config.alpha_override == 0.5
    assert {"mixgcf", "pdns"} <= set(SAMPLERS.names())


def test_mixgcf_trains_lightgcn():
    model = make_model("lightgcn", seed=16, dim=8).float()
    sampler = mixgcf(n_candidates=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = gen(17)
    before = model.item_embedding.weight.detach().clone()
    for _ in range(5):
        view = model.view(USERS, POS)
        neg = sampler(USERS, POS, view, g)
        loss = kpair_loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert not torch.equal(before, model.item_embedding.weight)

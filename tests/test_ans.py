"""ANS and DENS samplers: ALGORITHMS.md §5 and §7.5 oracles (§8.7), on tiny hand-made views."""

import math

import pytest
import torch

import recneg
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.losses import bpr_loss, l2_regularization
from recneg.models.base import TableView
from recneg.samplers.ans import ANSConfig, ANSSampler, DENSConfig, DENSSampler, safe_reciprocal_sigmoid
from recneg.samplers.base import uniform_pool

torch.set_num_threads(1)

N_USERS, N_ITEMS, D = 5, 40, 6


@pytest.fixture
def train() -> Interactions:
    users = [0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 4]
    items = [1, 2, 3, 0, 5, 7, 8, 9, 10, 11, 12, 13]
    return Interactions(users, items, n_users=N_USERS, n_items=N_ITEMS)


def batch():
    users = torch.tensor([0, 1, 2, 3, 4, 0, 4, 2])
    pos = torch.tensor([1, 0, 7, 8, 10, 2, 13, 7])
    return users, pos


class Tables:
    """Random per-layer tables (leaves with grad) and the views built from them, LightGCN-style pooling."""

    def __init__(self, n_layers: int = 3, d: int = D, seed: int = 0, scale: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.user_layers = (scale * torch.randn(N_USERS, n_layers, d, generator=g)).requires_grad_()
        self.item_layers = (scale * torch.randn(N_ITEMS, n_layers, d, generator=g)).requires_grad_()

    def view(self, users, pos, layers: bool = True) -> TableView:
        ul, il = self.user_layers, self.item_layers
        return TableView(
            users,
            pos,
            ul.mean(1),
            il.mean(1),
            ul[:, 0],
            il[:, 0],
            ul if layers else None,
            il if layers else None,
            model_name="fake",
        )


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ans(train, **kw) -> ANSSampler:
    torch.manual_seed(kw.pop("init_seed", 0))
    return ANSSampler(ANSConfig(dim=D, **kw)).bind(train)


def random_inputs(b=4, m=5, l=2, d=D, seed=1, scale=1.0):
    g = gen(seed)
    e_u = scale * torch.randn(b, l, d, generator=g)
    e_p = scale * torch.randn(b, l, d, generator=g)
    e_n = scale * torch.randn(b, m, l, d, generator=g)
    return e_u, e_p, e_n


# ------------------------------------------------------------------------------------------- config
def test_config_validation_and_registry():
    assert {"ans", "dens"} <= set(recneg.SAMPLERS.names())
    with pytest.raises(ConfigError, match="mode"):
        ANSConfig(mode="bogus")
    with pytest.raises(ConfigError, match="eps"):
        ANSConfig(eps=-0.1)
    with pytest.raises(ConfigError, match="sum_layers"):
        ANSConfig(selection="pooled", score="sum_layers")
    with pytest.raises(ConfigError, match="warmup"):
        DENSConfig(warmup=-1.0)
    s = recneg.build_sampler("ans", dim=7, n_candidates="8", eps="0.3")
    assert s.config.n_candidates == 8 and s.config.eps == 0.3
    assert s.user_gate.weight.shape == (7, 7) and s.margin_layer.weight.shape == (1, 7)
    d = recneg.build_sampler("dens", dim=5)
    assert {n for n, _ in d.named_parameters()} >= {
        "user_gate.weight",
        "item_gate.bias",
        "neg_gate.weight",
        "pos_gate.weight",
    }


def test_dim_mismatch_is_a_clear_error(train):
    users, pos = batch()
    view = Tables(d=4).view(users, pos)
    with pytest.raises(ConfigError, match="dim=6 .* d=4"):
        ans(train)(users, pos, view, gen())
    with pytest.raises(ConfigError, match="dim"):
        DENSSampler(DENSConfig(dim=6)).bind(train)(users, pos, view, gen())


# ------------------------------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direction_is_sign_of_positive_minus_negative_for_any_gate(train, mode, seed):
    s = ans(train, mode=mode, init_seed=seed)
    with torch.no_grad():  # a different, non-trivial gate each time
        for lin in (s.user_gate, s.item_gate):
            lin.weight.normal_(0, 0.7, generator=gen(seed + 10))
            lin.bias.normal_(0, 0.7, generator=gen(seed + 20))
    e_u, e_p, e_n = random_inputs(seed=seed)
    a = s.augment(e_u, e_p, e_n, gen(3))
    assert a.gate.std() > 0.05  # really a data-dependent gate
    assert torch.equal(a.direction, torch.sign(e_p.unsqueeze(1) - e_n))
    # Eq. 8–9 as the code writes them, sgn(z_p − z_n), agree wherever the gate has not rounded to 1
    open_gate = a.gate < 1
    assert open_gate.float().mean() > 0.8
    code_dir = torch.sign(a.easy_pos - a.easy_neg)
    assert torch.equal(code_dir[open_gate], a.direction[open_gate])
    # Eq. 4, 6, 11
    torch.testing.assert_close(a.hard_neg + a.easy_neg, e_n)
    torch.testing.assert_close(a.hard_pos, a.gate * e_p.unsqueeze(1))
    torch.testing.assert_close(a.aug, a.hard_neg + (a.easy_neg + a.direction * a.delta))


def test_gate_formula_by_hand(train):
    s = ans(train)
    e_u, e_p, e_n = random_inputs(b=2, m=3, l=1)
    a = s.augment(e_u, e_p, e_n, gen())
    Wi, bi, Wu, bu = s.item_gate.weight, s.item_gate.bias, s.user_gate.weight, s.user_gate.bias
    for b in range(2):
        for m in range(3):
            expect = torch.sigmoid((Wi @ e_n[b, m, 0] + bi) * (Wu @ e_u[b, 0] + bu))
            torch.testing.assert_close(a.gate[b, m, 0], expect)


def test_code_mode_delta_norm_is_a_tenth_of_the_margin(train):
    s = ans(train, mode="code")
    e_u, e_p, e_n = random_inputs(b=6, m=7, l=3)
    a = s.augment(e_u, e_p, e_n, gen(5))
    x = (a.hard_neg * a.hard_pos) @ s.margin_layer.weight[0] + s.margin_layer.bias[0]
    torch.testing.assert_close(a.margin.squeeze(-1), torch.sigmoid(1 / x))  # reciprocal inside σ
    torch.testing.assert_close(a.delta.norm(dim=-1), 0.1 * a.margin.squeeze(-1))  # every (b, m, l)
    assert (a.delta >= 0).all()
    # the noise direction is random: two generators give different Δ with the same norms
    a2 = s.augment(e_u, e_p, e_n, gen(6))
    assert not torch.allclose(a.delta, a2.delta)
    torch.testing.assert_close(a2.delta.norm(dim=-1), a.delta.norm(dim=-1))


def test_paper_mode_delta_is_uniform_capped_by_the_margin(train):
    s = ans(train, mode="paper")
    e_u, e_p, e_n = random_inputs(b=8, m=8, l=2)
    with torch.no_grad():
        s.margin_layer.weight.zero_()
        s.margin_layer.bias.fill_(-3.0)  # κ = σ(−3) ≈ 0.047 < 0.1: the cap binds
    a = s.augment(e_u, e_p, e_n, gen(1))
    kappa = torch.sigmoid(torch.tensor(-3.0))
    torch.testing.assert_close(a.margin, torch.full_like(a.margin, float(kappa)))  # no 1/x in paper mode
    assert (a.delta >= 0).all() and (a.delta <= kappa + 1e-7).all()
    assert (a.delta == kappa).float().mean() > 0.3  # U[0, 0.1] capped at κ ≈ 0.047 half the time
    with torch.no_grad():
        s.margin_layer.bias.fill_(5.0)  # κ ≈ 0.99: no cap, Δ ~ U[0, 0.1]^d
    a = s.augment(e_u, e_p, e_n, gen(1))
    assert (a.delta <= 0.1).all() and a.delta.max() > 0.09 and a.delta.min() < 0.01
    assert not (a.delta.norm(dim=-1) - a.delta.norm(dim=-1)[0, 0, 0]).abs().lt(1e-6).all()


def test_ablations_of_direction_and_magnitude(train):
    e_u, e_p, e_n = random_inputs(b=6, m=6, l=2)
    a = ans(train, regulate_direction=False).augment(e_u, e_p, e_n, gen(2))
    assert set(a.direction.unique().tolist()) == {-1.0, 1.0}
    agree = (a.direction == torch.sign(e_p.unsqueeze(1) - e_n)).float().mean()
    assert 0.35 < agree < 0.65
    a = ans(train, regulate_magnitude=False, mode="code").augment(e_u, e_p, e_n, gen(2))
    assert a.margin is None
    torch.testing.assert_close(a.delta.norm(dim=-1), torch.full(a.delta.shape[:-1], 0.1))
    a = ans(train, regulate_magnitude=False, mode="paper").augment(e_u, e_p, e_n, gen(2))
    assert a.margin is None and (a.delta <= 0.1).all() and a.delta.max() > 0.09
    a = ans(train, augment=False).augment(e_u, e_p, e_n, gen(2))
    assert torch.equal(a.aug, e_n) and (a.delta == 0).all()
    a = ans(train, disentangle=False).augment(e_u, e_p, e_n, gen(2))
    assert (a.gate == 0.5).all()
    assert torch.equal(a.direction, torch.sign(e_p.unsqueeze(1) - e_n))


# ------------------------------------------------------------------------------------------- aux losses
@pytest.mark.parametrize("mode", ["code", "paper"])
def test_aux_losses_by_hand(train, mode):
    s = ans(train, mode=mode)
    b_, m_, l_ = 2, 3, 2
    e_u, e_p, e_n = random_inputs(b=b_, m=m_, l=l_)
    with torch.no_grad():
        a = s.augment(e_u, e_p, e_n, gen())
        l_c, l_d = s.aux_losses(e_u, a)
    lc = 0.0
    for b in range(b_):
        for l in range(l_):
            tot = sum(
                math.exp(float(e_u[b, l] @ a.easy_neg[b, m, l] - e_u[b, l] @ a.hard_neg[b, m, l]))
                for m in range(m_)
            )
            lc += math.log(1 + tot)
    lc /= b_ * l_
    dist, easy = 0.0, 0.0
    for b in range(b_):
        for m in range(m_):
            for l in range(l_):
                dist += float((a.hard_neg[b, m, l] - a.hard_pos[b, m, l] + 1e-6).norm())
                zz = a.easy_pos[b, m, l] * a.easy_neg[b, m, l]
                easy += float(zz.norm()) if mode == "code" else float(zz.sum())
    ld = dist / (b_ * m_ * l_) + easy / (b_ * m_)
    assert float(l_c) == pytest.approx(lc, rel=1e-5)
    assert float(l_d) == pytest.approx(ld, rel=1e-5)


def test_reciprocal_sigmoid_has_no_nan_gradient():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-12, 0.5, -0.5, 3.0], requires_grad=True)
    y = safe_reciprocal_sigmoid(x)
    torch.testing.assert_close(y.detach(), torch.sigmoid(1 / x.detach()))  # the forward value is untouched
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[:5].abs().max() == 0  # saturated there


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_aux_losses_finite_even_at_the_margin_jump(train, mode, scale):
    users, pos = batch()
    tables = Tables(scale=scale, seed=4)
    s = ans(train, mode=mode, gamma=0.5)
    with torch.no_grad():  # w·x + b == 0 exactly: σ(1/x) sits on its jump
        s.margin_layer.weight.zero_()
        s.margin_layer.bias.zero_()
    view = tables.view(users, pos)
    neg = s(users, pos, view, gen())
    assert torch.isfinite(neg.aux_loss) and neg.aux_loss > 0
    loss = bpr_loss(view.user_emb, view.pos_emb, neg) + neg.aux_loss + l2_regularization(view, neg, 1e-4)
    loss.backward()
    for p in [*s.parameters(), tables.user_layers, tables.item_layers]:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert all(math.isfinite(v) for v in neg.stats.values())


# ------------------------------------------------------------------------------------------- gradient flow
@pytest.mark.parametrize("detach", [False, True])
def test_gate_gets_bpr_gradient_only_through_the_margin(train, detach):
    users, pos = batch()
    tables = Tables(seed=2)
    view = tables.view(users, pos)
    s = ans(train, detach_margin=detach, gamma=0.1)
    neg = s(users, pos, view, gen())
    bpr_loss(view.user_emb, view.pos_emb, neg).backward(retain_graph=True)
    gate_grads = [p.grad for p in [*s.user_gate.parameters(), *s.item_gate.parameters()]]
    margin_grads = [p.grad for p in s.margin_layer.parameters()]
    if detach:
        assert all(g is None or (g == 0).all() for g in gate_grads + margin_grads)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in gate_grads + margin_grads)
    # the auxiliary loss always trains the gate (not the margin)
    s.zero_grad(set_to_none=True)
    neg.aux_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.user_gate.parameters())
    assert all(p.grad is None for p in s.margin_layer.parameters())


def test_no_margin_ablation_gives_gate_no_bpr_gradient(train):
    users, pos = batch()
    tables = Tables(seed=2)
    view = tables.view(users, pos)
    s = ans(train, regulate_magnitude=False)
    neg = s(users, pos, view, gen())
    bpr_loss(view.user_emb, view.pos_emb, neg).backward()
    assert all(p.grad is None for p in s.parameters())
    assert "margin_mean" not in neg.stats


# ------------------------------------------------------------------------------------------- selection
def _dns_reference(tables, users, pool, per_layer):
    """Hop-wise DNS on one pool: per layer argmax_m <e_u^(l), e_n^(l)>. Returns (idx [B, L'], emb [B, d])."""
    with torch.no_grad():
        ul, il = tables.user_layers[users], tables.item_layers[pool]  # [B, L, d], [B, M, L, d]
        if not per_layer:
            ul, il = ul.mean(1, keepdim=True), il.mean(2, keepdim=True)
        idx = torch.einsum("bld,bmld->bml", ul, il).argmax(1)
        chosen = il.gather(1, idx[:, None, :, None].expand(-1, 1, -1, il.shape[-1])).squeeze(1)
        return idx, chosen.mean(1)


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("selection", ["auto", "pooled"])
def test_no_augmentation_and_no_gamma_is_exactly_dns(train, n_layers, selection):
    users, pos = batch()
    tables = Tables(n_layers=n_layers, seed=7)
    view = tables.view(users, pos)
    s = ans(train, augment=False, gamma=0.0, n_candidates=9, selection=selection, eps=0.8)
    neg = s(users, pos, view, gen(11))
    pool = uniform_pool(train.positives("cpu"), users, 9, gen(11))  # the sampler's pool: first draw
    idx, emb = _dns_reference(tables, users, pool, per_layer=selection == "auto")
    torch.testing.assert_close(neg.emb.squeeze(1), emb)
    if n_layers == 1 or selection == "pooled":
        assert torch.equal(neg.ids.squeeze(1), pool.gather(1, idx).squeeze(1))
        assert neg.stats["dns_overlap"] == 1.0
    else:
        assert neg.ids is None
    assert float(neg.aux_loss) == 0.0
    assert neg.stats["aug_gain_mean"] == 0.0
    if n_layers == 1:  # MF: plain DNS (argmax of the view's score) and its embedding with gradient
        dns = pool.gather(1, view.score(pool).argmax(1, keepdim=True))
        assert torch.equal(neg.ids, dns)
        assert torch.equal(neg.emb, view.item_emb(dns))
        assert neg.emb.requires_grad


@pytest.mark.parametrize("eps,use_gain", [(0.0, True), (0.7, True), (0.7, False)])
def test_selection_is_argmax_of_score_plus_eps_gain(train, eps, use_gain):
    users, pos = batch()
    tables = Tables(n_layers=1, seed=3, scale=0.5)
    view = tables.view(users, pos)
    s = ans(train, eps=eps, use_gain=use_gain, n_candidates=12, noise_scale=2.0)  # big Δ: choices differ
    neg = s(users, pos, view, gen(21))
    g = gen(21)
    pool = uniform_pool(train.positives("cpu"), users, 12, g)
    e_u, e_p, e_n = view.user_layers, view.pos_layers, view.item_layers(pool)
    a = s.augment(e_u, e_p, e_n, g)  # same generator state: same noise as inside forward
    s_aug = torch.einsum("bld,bmld->bml", e_u, a.aug).squeeze(-1)
    s_orig = torch.einsum("bld,bmld->bml", e_u, e_n).squeeze(-1)
    e = eps if use_gain else 0.0
    idx = (s_aug + e * (s_aug - s_orig)).argmax(1)
    assert torch.equal(neg.ids.squeeze(1), pool.gather(1, idx[:, None]).squeeze(1))
    torch.testing.assert_close(neg.emb.squeeze(1), a.aug[torch.arange(len(users)), idx, 0])
    by_aug = s_aug.argmax(1)
    if e == 0:
        assert torch.equal(idx, by_aug)  # ε = 0 ranks by s_aug alone
    else:
        assert not torch.equal(idx, by_aug)  # the gain term changes some choices
    gain = (s_aug - s_orig).gather(1, idx[:, None])
    assert neg.stats["aug_gain_mean"] == pytest.approx(float(gain.detach().mean()), rel=1e-5)


def test_never_picks_a_training_positive(train):
    users = torch.arange(N_USERS).repeat(10)
    pos = torch.tensor([1, 0, 7, 8, 10]).repeat(10)
    tables = Tables(n_layers=1, seed=1)
    positives = train.positives("cpu")
    for seed in range(5):
        for name, s in (("ans", ans(train, n_candidates=20)), ("dens", dens(train))):
            neg = s(users, pos, tables.view(users, pos), gen(seed))
            assert not positives.contains(users[:, None], neg.ids).any(), name


def test_multilayer_shapes_sum_layers_and_regularised_rows(train):
    users, pos = batch()
    tables = Tables(n_layers=3, seed=5)
    view = tables.view(users, pos)
    s = ans(train, score="sum_layers")
    assert s.per_layer(view)
    neg = s(users, pos, view, gen())
    B = len(users)
    assert neg.emb.shape == (B, 1, D) and neg.ids is None and neg.reg_emb.shape == (B, 1, D)
    assert neg.score.shape == (B, 1) and neg.pos_score.shape == (B,)
    # sum over layers of per-layer scores of the positive
    torch.testing.assert_close(neg.pos_score, (view.user_layers * view.pos_layers).sum((-1, -2)))
    # pooled score of the pooled negative differs from the sum-of-layers score
    assert not torch.allclose(neg.score.squeeze(1), (view.user_emb * neg.emb.squeeze(1)).sum(-1))
    # every regularised row is a layer-0 item row
    rows = tables.item_layers[:, 0].detach()
    assert all(((rows - r).abs().sum(-1) == 0).any() for r in neg.reg_emb.squeeze(1).detach())
    # the loss uses the override logits
    loss = bpr_loss(view.user_emb, view.pos_emb, neg)
    ref = torch.nn.functional.softplus(neg.score.squeeze(1) - neg.pos_score).mean()
    torch.testing.assert_close(loss, ref)
    expected = {"dns_overlap", "aug_gain_mean", "aug_gain_std", "margin_mean", "loss_contrastive"}
    assert set(neg.stats) >= expected
    assert 0.0 <= neg.stats["dns_overlap"] <= 1.0 and 0.0 < neg.stats["margin_mean"] < 1.0


def test_selection_without_layers(train):
    users, pos = batch()
    view = Tables(n_layers=2, seed=5).view(users, pos, layers=False)
    neg = ans(train)(users, pos, view, gen())  # auto: pooled
    assert neg.ids.shape == (len(users), 1)
    with pytest.raises(ConfigError, match="per-layer"):
        ans(train, selection="per_layer")(users, pos, view, gen())


def test_disentangle_ablation_has_no_aux_loss_and_no_gate_gradient(train):
    users, pos = batch()
    tables = Tables(seed=8)
    view = tables.view(users, pos)
    s = ans(train, disentangle=False, gamma=0.3)
    neg = s(users, pos, view, gen())
    assert float(neg.aux_loss) == 0.0
    (bpr_loss(view.user_emb, view.pos_emb, neg) + neg.aux_loss).backward()
    assert all(p.grad is None for p in [*s.user_gate.parameters(), *s.item_gate.parameters()])
    assert s.margin_layer.weight.grad is not None and s.margin_layer.weight.grad.abs().sum() > 0


def test_training_steps_with_mf_decrease_the_loss(small_split):
    torch.manual_seed(0)
    train_ = small_split.train
    model = recneg.build_model("mf", train_, dim=16)
    s = ANSSampler(ANSConfig(dim=16, n_candidates=8, gamma=0.1)).bind(train_)
    opt = torch.optim.Adam([*model.parameters(), *s.parameters()], lr=0.02)
    users = torch.as_tensor(train_.users[:512])
    pos = torch.as_tensor(train_.items[:512])

    def total(seed):
        view = model.view(users, pos)
        neg = s(users, pos, view, gen(seed))
        return bpr_loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-4) + neg.aux_loss

    with torch.no_grad():
        before = float(total(123))
    for step in range(40):
        opt.zero_grad()
        total(step).backward()
        opt.step()
    with torch.no_grad():
        after = float(total(123))
    assert math.isfinite(after) and after < 0.8 * before


def test_ans_runs_with_lightgcn(small_split):
    if "lightgcn" not in recneg.MODELS.names():
        pytest.skip("lightgcn not available")
    model = recneg.build_model("lightgcn", small_split.train, dim=8)
    users = torch.as_tensor(small_split.train.users[:64])
    pos = torch.as_tensor(small_split.train.items[:64])
    view = model.view(users, pos)
    for s in (ANSSampler(ANSConfig(dim=8)), DENSSampler(DENSConfig(dim=8))):
        neg = s.bind(small_split.train)(users, pos, view, gen())
        assert neg.emb.shape == (64, 1, 8) and torch.isfinite(neg.aux_loss)
        (bpr_loss(view.user_emb, view.pos_emb, neg) + neg.aux_loss).backward(retain_graph=True)


# ------------------------------------------------------------------------------------------- DENS
def dens(train, **kw) -> DENSSampler:
    torch.manual_seed(kw.pop("init_seed", 0))
    return DENSSampler(DENSConfig(dim=D, **kw)).bind(train)


def test_dens_warmup_schedule_and_checkpointed_epoch(train):
    s = dens(train, warmup=10.0)
    assert s.warmup_factor() == 0.0
    s.on_epoch_start(5, None)
    assert s.warmup_factor() == 0.5
    s.on_epoch_start(25, None)
    assert s.warmup_factor() == 1.0
    assert int(s.state_dict()["epoch_"]) == 25
    t = dens(train, warmup=10.0)
    t.load_state_dict(s.state_dict())
    assert t.warmup_factor() == 1.0
    z = dens(train, warmup=0.0)
    assert z.warmup_factor() == 1.0


@pytest.mark.parametrize("epoch", [0, 4, 100])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_dens_selection_by_hand(train, epoch, n_layers):
    users, pos = batch()
    tables = Tables(n_layers=n_layers, seed=9)
    view = tables.view(users, pos)
    s = dens(train, warmup=8.0, n_candidates=7)
    s.on_epoch_start(epoch, None)
    neg = s(users, pos, view, gen(4))
    pool = uniform_pool(train.positives("cpu"), users, 7, gen(4))
    with torch.no_grad():
        e_u, e_p, e_n = view.user_layers, view.pos_layers, view.item_layers(pool)
        rho_p = torch.sigmoid(s.item_gate(e_p) + s.user_gate(e_u)) * e_p
        rho_n = torch.sigmoid(s.neg_gate(e_n) + s.pos_gate(rho_p).unsqueeze(1)) * e_n
        alpha = min(1.0, epoch / 8.0)
        idx = torch.einsum("bld,bmld->bml", e_u, (1 - alpha) * e_n - rho_n).argmax(1)  # [B, L]
        chosen = e_n.gather(1, idx[:, None, :, None].expand(-1, 1, -1, D)).squeeze(1)  # raw candidates
    torch.testing.assert_close(neg.emb.squeeze(1), chosen.mean(1))
    layer0_choice = pool.gather(1, idx[:, :1]).squeeze(1)
    torch.testing.assert_close(neg.reg_emb.squeeze(1), tables.item_layers[layer0_choice, 0])
    assert neg.stats["warmup_factor"] == pytest.approx(alpha)
    if n_layers == 1:
        assert torch.equal(neg.ids.squeeze(1), pool.gather(1, idx).squeeze(1))
    else:
        assert neg.ids is None


def test_dens_shapes_with_several_negatives(train):
    users, pos = batch()
    view = Tables(n_layers=3, seed=2).view(users, pos)
    neg = dens(train, n_negatives=2, n_candidates=4)(users, pos, view, gen())
    assert neg.emb.shape == (len(users), 2, D) and neg.reg_emb.shape == (len(users), 2, D) and neg.ids is None
    loss = recneg.build_loss("kpair")(view.user_emb, view.pos_emb, neg)
    assert torch.isfinite(loss)


def test_dens_gate_loss_by_hand(train):
    users, pos = batch()
    tables = Tables(n_layers=2, seed=6)
    view = tables.view(users, pos)
    s = dens(train, gamma=0.3)
    neg = s(users, pos, view, gen(1))
    # recompute on the chosen raw negative (K = 1): four softplus terms on pooled factor scores
    with torch.no_grad():
        pool = uniform_pool(train.positives("cpu"), users, s.config.n_candidates, gen(1))
        e_u, e_p, e_n = view.user_layers, view.pos_layers, view.item_layers(pool)
        rho_p, rho_n = s.factors(e_u, e_p, e_n)
        idx = torch.einsum("bld,bmld->bml", e_u, e_n - rho_n).argmax(1)
        chosen_layers = e_n.gather(1, idx[:, None, :, None].expand(-1, 1, -1, D)).squeeze(1)  # [B, L, d]
        gn = torch.sigmoid(s.neg_gate(chosen_layers) + s.pos_gate(rho_p))
        u = view.user_emb
        sc = lambda x: (u * x.mean(1)).sum(-1)  # noqa: E731
        p_r, p_ir = sc(rho_p), sc(e_p - rho_p)
        n_r, n_ir = sc(gn * chosen_layers), sc(chosen_layers - gn * chosen_layers)
        sp = torch.nn.functional.softplus
        terms = [sp(p_ir - p_r), sp(n_r - n_ir), sp(n_r - p_r), sp(p_ir - n_ir)]
        ref = sum(t.mean() for t in terms) / 4
    assert float(neg.aux_loss.detach()) == pytest.approx(0.3 * float(ref), rel=1e-5)
    assert neg.stats["loss_gate"] == pytest.approx(float(ref), rel=1e-5)


def test_dens_gates_are_trained_only_by_the_aux_loss(train):
    users, pos = batch()
    tables = Tables(n_layers=3, seed=3)
    view = tables.view(users, pos)
    s = dens(train)
    neg = s(users, pos, view, gen())
    bpr_loss(view.user_emb, view.pos_emb, neg).backward(retain_graph=True)
    assert all(p.grad is None for p in s.parameters())
    # BPR's gradient reaches only the chosen candidates' rows (and the batch's users/positives)
    touched = (tables.item_layers.grad.abs().sum((1, 2)) > 0).sum()
    assert 0 < touched <= len(users) * (1 + 3)
    neg.aux_loss.backward()
    for name, p in s.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert torch.isfinite(neg.aux_loss)


def test_dens_gamma_zero_has_no_aux_loss(train):
    users, pos = batch()
    view = Tables(n_layers=1, seed=3).view(users, pos)
    s = dens(train, gamma=0.0)
    neg = s(users, pos, view, gen())
    assert float(neg.aux_loss) == 0.0 and "loss_gate" not in neg.stats


# ------------------------------------------------------------------------------ lean forward vs reference
def _reference_forward(s: ANSSampler, users, pos, view, generator):
    """ANS written the plain way: :meth:`augment` over the whole pool with gradient, gather the choice.

    The sampler's forward keeps autograd to what the losses need (and rebuilds the chosen candidate's Δ
    with its gradient); this is what it must equal. Returns ``(emb [B, 1, d], aux, stats-like dict)``.
    """
    cfg = s.config
    pool = uniform_pool(s.positives("cpu"), users, cfg.n_candidates, generator, cfg.exclude_positives)
    e_u, e_p, e_n = recneg.samplers.ans.layer_tensors(view, pool, s.per_layer(view))
    a = s.augment(e_u, e_p, e_n, generator)
    eps = cfg.eps if cfg.use_gain else 0.0
    with torch.no_grad():
        s_aug = torch.einsum("bld,bmld->bml", e_u, a.aug)
        s_orig = torch.einsum("bld,bmld->bml", e_u, e_n)
        gain = s_aug - s_orig
        idx = (s_aug + eps * gain).argmax(dim=1)
    chosen = recneg.samplers.ans._gather_candidates(a.aug, idx)
    if cfg.gamma > 0 and cfg.disentangle:
        l_c, l_d = s.aux_losses(e_u, a)
        aux = cfg.gamma * (l_c + l_d)
    else:
        aux = e_u.new_zeros(())
    gain_c = gain.gather(1, idx.unsqueeze(1)).squeeze(1)
    return chosen.mean(1, keepdim=True), aux, {"aug_gain_mean": float(gain_c.mean())}


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "code"},
        {"mode": "paper", "noise_scale": 0.5},
        {"mode": "code", "gamma": 0.0},
        {"mode": "paper", "gamma": 0.0, "noise_scale": 0.5},
        {"mode": "code", "detach_margin": True},
        {"disentangle": False},
        {"regulate_magnitude": False},
        {"regulate_direction": False, "mode": "paper"},
        {"use_gain": False},
        {"augment": False},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_forward_equals_the_plain_autograd_reference(train, n_layers, kw):
    """Same negative, auxiliary loss and gain, and the same gradient for every table and sampler weight."""
    users, pos = batch()
    kw = {"gamma": 0.2, **kw}
    results = []
    for reference in (False, True):
        tables = Tables(n_layers=n_layers, seed=4)
        view = tables.view(users, pos)
        s = ans(train, n_candidates=7, **kw)
        if reference:
            emb, aux, stats = _reference_forward(s, users, pos, view, gen(9))
        else:
            neg = s(users, pos, view, gen(9))
            emb, aux, stats = neg.emb, neg.aux_loss, neg.stats
        loss = bpr_loss(view.user_emb, view.pos_emb, recneg.samplers.base.Negatives(emb=emb)) + aux
        loss.backward()
        grads = [tables.user_layers.grad, tables.item_layers.grad]
        grads += [p.grad if p.grad is not None else torch.zeros_like(p) for p in s.parameters()]
        results.append((emb.detach(), aux.detach(), stats["aug_gain_mean"], grads))
    (emb0, aux0, gain0, grads0), (emb1, aux1, gain1, grads1) = results
    torch.testing.assert_close(emb0, emb1)
    torch.testing.assert_close(aux0, aux1)
    assert gain0 == pytest.approx(gain1, rel=1e-5, abs=1e-6)
    for g0, g1 in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)

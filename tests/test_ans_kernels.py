"""ANS's compiled auxiliary losses (recneg.ans_kernels) against the tensor path; the sampler's use."""

import pytest
import torch

from recneg import ans_kernels, kernels
from recneg.data.interactions import Interactions
from recneg.models.base import TableView
from recneg.samplers.ans import ANSConfig, ANSSampler

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="needs numba (pip install recneg[fast])")

D = 6


def _sampler(mode: str, seed: int = 0) -> ANSSampler:
    torch.manual_seed(seed)
    return ANSSampler(ANSConfig(dim=D, mode=mode))


def _inputs(b: int, m: int, n_layers: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    e_u = torch.randn(b, n_layers, D, generator=g)
    e_p = torch.randn(b, n_layers, D, generator=g)
    e_n = torch.randn(b, m, n_layers, D, generator=g)
    e_p[0, 0] = 0.0  # z_p = 0: the code's ‖z_p ⊙ z_n‖ is 0 there, and so is its gradient (as torch's)
    e_n[1, 2, 0, :3] = 0.0
    return [t.requires_grad_() for t in (e_u, e_p, e_n)]


def _losses_and_grads(s: ANSSampler, inputs, compiled: bool):
    e_u, e_p, e_n = inputs
    for t in (*inputs, *s.parameters()):
        t.grad = None
    gate_item, gate_user = s.item_gate(e_n), s.user_gate(e_u)
    if compiled:
        paper = s.config.mode == "paper"
        l_c, l_d, logit = ans_kernels.fused_aux_losses(
            gate_item, gate_user, e_u, e_p, e_n, s.margin_layer, paper
        )
    else:
        a = s.augment(e_u, e_p, e_n, torch.Generator().manual_seed(0))
        l_c, l_d = s.aux_losses(e_u, a)
        logit = s.margin_layer(a.hard_neg * a.hard_pos).squeeze(-1)
    (0.7 * l_c + 1.3 * l_d).backward()
    grads = [t.grad.clone() for t in inputs]
    grads += [
        p.grad.clone() for p in (s.item_gate.weight, s.item_gate.bias, s.user_gate.weight, s.user_gate.bias)
    ]
    return l_c.detach(), l_d.detach(), logit.detach(), grads


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_values_and_gradients_equal_the_tensor_path(mode, n_layers):
    s = _sampler(mode)
    inputs = _inputs(5, 7, n_layers, seed=n_layers)
    fused = _losses_and_grads(s, inputs, compiled=True)
    reference = _losses_and_grads(s, inputs, compiled=False)
    for got, want in zip(fused[:3], reference[:3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(fused[3], reference[3], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert all(g.abs().sum() > 0 for g in fused[3])  # every input and gate weight gets some gradient


def test_hand_computed_case():
    """One user, two candidates, d = 1, gate logits 0 (g = 1/2): L_c and L_d by hand."""
    s = _sampler("code")
    with torch.no_grad():
        s.margin_layer.weight.fill_(2.0)
        s.margin_layer.bias.fill_(0.5)
    gate_item = torch.zeros(1, 2, 1, 1, requires_grad=True)
    gate_user = torch.ones(1, 1, 1, requires_grad=True)
    e_u = torch.tensor([[[2.0]]], requires_grad=True)
    e_p = torch.tensor([[[1.0]]], requires_grad=True)
    e_n = torch.tensor([[[[3.0]], [[-1.0]]]], requires_grad=True)
    l_c, l_d, logit = ans_kernels.fused_aux_losses(gate_item, gate_user, e_u, e_p, e_n, s.margin_layer, False)
    # g = 1/2: h_n = z_n = n/2, so x = <u, z_n> - <u, h_n> = 0 for both; L_c = softplus(log 2) = log 3
    assert float(l_c.detach()) == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-6)
    # dist = |(n - p)/2 + 1e-6| = 1 + 1e-6 and 1 - 1e-6; easy = |(p/2)(n/2)| = 3/4 and 1/4
    assert float(l_d.detach()) == pytest.approx((1.0 + 1.0) / 2 + (0.75 + 0.25) / 2, rel=1e-5)
    # margin logit w · (h_n h_p) + b = 2 · (n/2)(1/2) + 0.5
    torch.testing.assert_close(logit, torch.tensor([[[2.0], [0.0]]]))
    l_c.backward()
    # ∂L_c/∂u = Σ_m softplus'(lse) softmax_m n (1 - 2g) = 0 at g = 1/2; ∂L_c/∂n_m = (2/3)(1/2) u (1 - 2g) = 0
    assert float(e_u.grad) == 0.0 and e_n.grad.abs().sum() == 0.0
    # ∂L_c/∂g_m = (1/3) (-2 u n_m) = (-4, 4/3); ∂g/∂A = g (1 - g) C = 1/4
    torch.testing.assert_close(gate_item.grad.reshape(-1), torch.tensor([-1.0, 1.0 / 3.0]))


def test_sampler_takes_the_compiled_path_and_agrees_with_the_tensor_path(monkeypatch):
    users = torch.tensor([0, 1, 2, 3, 0, 2])
    pos = torch.tensor([1, 0, 7, 8, 2, 7])
    train = Interactions([0, 0, 1, 2, 3], [1, 2, 0, 7, 8], n_users=4, n_items=30)
    calls = []
    real = ans_kernels.fused_aux_losses

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr("recneg.samplers.ans.fused_aux_losses", counted)
    results = []
    for compiled in (True, False):
        previous = ans_kernels.use_compiled_ans(compiled)
        try:
            g = torch.Generator().manual_seed(1)
            user_table = torch.randn(4, D, generator=g).requires_grad_()
            item_table = torch.randn(30, D, generator=g).requires_grad_()
            view = TableView(users, pos, user_table, item_table, user_table, item_table, model_name="mf")
            s = _sampler("code", seed=3).bind(train)
            neg = s(users, pos, view, torch.Generator().manual_seed(5))
            (neg.aux_loss + (neg.emb.squeeze(1) * view.user_emb).sum()).backward()
            grads = [user_table.grad, item_table.grad, *(p.grad for p in s.parameters())]
            results.append((neg.ids, neg.aux_loss.detach(), neg.stats, grads))
        finally:
            ans_kernels.use_compiled_ans(previous)
    assert len(calls) == 1  # the compiled passes ran with compiled=True, not with False
    (ids0, aux0, stats0, grads0), (ids1, aux1, stats1, grads1) = results
    assert torch.equal(ids0, ids1)
    torch.testing.assert_close(aux0, aux1, rtol=1e-5, atol=1e-6)
    assert stats0["margin_mean"] == pytest.approx(stats1["margin_mean"], rel=1e-5)
    for a, b in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_not_used_without_gradient():
    s = _sampler("code")
    e_u, e_p, e_n = _inputs(2, 3, 1, seed=0)
    assert ans_kernels.compiled_ans_serves(e_u, e_p, e_n)
    with torch.no_grad():
        assert not ans_kernels.compiled_ans_serves(e_u, e_p, e_n)
    assert not ans_kernels.compiled_ans_serves(e_u.double(), e_p, e_n)
    previous = ans_kernels.use_compiled_ans(False)
    try:
        assert not ans_kernels.compiled_ans_serves(e_u, e_p, e_n)
    finally:
        ans_kernels.use_compiled_ans(previous)
    del s

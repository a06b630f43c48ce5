import math

import pytest
import torch

from recneg.losses import bpr_loss, kpair_loss, l2_regularization, soft_bpr_loss
from recneg.models.base import TableView
from recneg.samplers.base import Negatives


def test_bpr_loss_and_gradient_by_hand():
    u = torch.tensor([[1.0, 2.0]], requires_grad=True)
    p = torch.tensor([[0.5, 0.5]], requires_grad=True)
    n = torch.tensor([[[1.0, -1.0]]], requires_grad=True)
    loss = bpr_loss(u, p, Negatives(emb=n))
    x = 1.5 - (-1.0)  # r_ui − r_uj
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-x)))
    loss.backward()
    g = -1 / (1 + math.exp(x))  # dℓ/dx = −σ(−x)
    # x = u·p − u·n: dx/du = p − n, dx/dp = u, dx/dn = −u
    torch.testing.assert_close(u.grad, g * torch.tensor([[-0.5, 1.5]]))
    torch.testing.assert_close(p.grad, g * torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(n.grad, -g * torch.tensor([[[1.0, 2.0]]]))


def test_weighted_bpr_and_mean_over_negatives():
    g = torch.Generator().manual_seed(0)
    u, p, n = (
        torch.randn(3, 4, generator=g),
        torch.randn(3, 4, generator=g),
        torch.randn(3, 5, 4, generator=g),
    )
    per = torch.nn.functional.softplus(torch.einsum("bd,bnd->bn", u, n) - (u * p).sum(-1, keepdim=True))
    assert float(bpr_loss(u, p, Negatives(emb=n))) == pytest.approx(float(per.mean()), rel=1e-6)
    w = torch.softmax(torch.randn(3, 5, generator=g), -1)
    assert float(bpr_loss(u, p, Negatives(emb=n, weight=w))) == pytest.approx(
        float((per * w).sum(1).mean()), rel=1e-6
    )
    assert bpr_loss(u, p, Negatives(emb=n), reduction="none").shape == (3,)


def test_soft_bpr_beta_one_is_bpr_and_kpair_one_is_bpr():
    g = torch.Generator().manual_seed(1)
    u, p, n = (
        torch.randn(4, 3, generator=g),
        torch.randn(4, 3, generator=g),
        torch.randn(4, 1, 3, generator=g),
    )
    neg = Negatives(emb=n)
    b = float(bpr_loss(u, p, neg))
    assert float(soft_bpr_loss(u, p, neg, beta=1.0)) == pytest.approx(b, rel=1e-6)
    assert float(kpair_loss(u, p, neg)) == pytest.approx(b, rel=1e-6)
    x = (u * p).sum(-1) - (u * n[:, 0]).sum(-1)
    assert float(soft_bpr_loss(u, p, neg, beta=0.2)) == pytest.approx(
        float(torch.nn.functional.softplus(-0.2 * x).mean()), rel=1e-6
    )


def test_kpair_by_hand():
    u = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[2.0, 0.0]])
    n = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = math.log(1 + math.exp(1 - 2) + math.exp(0 - 2))
    assert float(kpair_loss(u, p, Negatives(emb=n))) == pytest.approx(expected)


def test_shared_negatives_broadcast():
    u, p, shared = torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 2)
    a = bpr_loss(u, p, Negatives(emb=shared))
    b = bpr_loss(u, p, Negatives(emb=shared.expand(3, 4, 2)))
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_r1_regulariser_by_hand():
    users_t = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    items_t = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    view = TableView(torch.tensor([0, 1]), torch.tensor([0, 1]), users_t, items_t, users_t, items_t)
    neg = Negatives(emb=items_t[torch.tensor([[2], [2]])], ids=torch.tensor([[2], [2]]))
    # ½ (‖u‖² = 2 + 4, ‖p‖² = 1 + 9, ‖n‖² = 4 + 4) / B=2, times λ
    assert float(l2_regularization(view, neg, 0.1)) == pytest.approx(0.1 * 0.5 * (6 + 10 + 8) / 2)
    # a weighted pool counts like one negative per row
    neg2 = Negatives(
        emb=items_t[torch.tensor([[2, 0], [2, 0]])],
        ids=torch.tensor([[2, 0], [2, 0]]),
        weight=torch.tensor([[0.5, 0.5], [1.0, 0.0]]),
    )
    assert float(l2_regularization(view, neg2, 0.1)) == pytest.approx(0.1 * 0.5 * (6 + 10 + 2.5 + 4) / 2)

"""LightGCN: adjacency, propagation, pooling, gradient, evaluation tables, device/dtype moves."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.models import base, lightgcn
from recneg.models.lightgcn import LightGCN, LightGCNConfig, normalized_adjacency
from recneg.registry import build_model

torch.set_num_threads(1)

# 3 users, 4 items; item 3 has no interaction (degree 0), pair (0, 1) is duplicated.
USERS = [0, 0, 0, 1, 1, 2]
ITEMS = [0, 1, 1, 1, 2, 0]


def tiny() -> Interactions:
    return Interactions(np.array(USERS), np.array(ITEMS), n_users=3, n_items=4)


def dense_reference(model: LightGCN) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer [N, L+1, d] and pooled [N, d] computed densely in numpy (float64)."""
    r = np.zeros((3, 4))
    for u, i in zip(USERS, ITEMS, strict=True):
        r[u, i] = 1.0
    a = np.block([[np.zeros((3, 3)), r], [r.T, np.zeros((4, 4))]])
    deg = a.sum(1)
    dinv = np.array([1 / math.sqrt(x) if x > 0 else 0.0 for x in deg])
    norm = dinv[:, None] * a * dinv[None, :]
    e = np.concatenate(
        [
            model.user_embedding.weight.detach().double().numpy(),
            model.item_embedding.weight.detach().double().numpy(),
        ]
    )
    layers = [e]
    for _ in range(model.config.n_layers):
        layers.append(norm @ layers[-1])
    stacked = np.stack(layers, 1)
    return stacked, stacked.mean(1)


def test_adjacency_hand_values():
    adj = normalized_adjacency(tiny().csr).toarray()
    # degrees: users (2, 2, 1), items (2, 2, 1, 0); node of item j is 3 + j
    assert adj.shape == (7, 7)
    np.testing.assert_allclose(adj, adj.T)
    assert adj[0, 3] == pytest.approx(1 / math.sqrt(2 * 2))  # u0 - i0
    assert adj[0, 4] == pytest.approx(1 / math.sqrt(2 * 2))  # u0 - i1 (duplicate counted once)
    assert adj[1, 5] == pytest.approx(1 / math.sqrt(2 * 1))  # u1 - i2
    assert adj[2, 3] == pytest.approx(1 / math.sqrt(1 * 2))  # u2 - i0
    assert adj[0, 5] == 0.0 and adj[0, 1] == 0.0  # no edge; no user-user edge
    assert not adj[6].any() and not adj[:, 6].any()  # degree-0 item: zero row and column
    assert np.isfinite(adj).all()


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_propagation_matches_dense_numpy(n_layers):
    torch.manual_seed(0)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=5, n_layers=n_layers)).double()
    users, pos = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    view = model.view(users, pos)
    ref_layers, ref_pooled = dense_reference(model)  # Ã is stored in float32, so compare to ~1e-7
    assert view.n_layers == n_layers + 1
    np.testing.assert_allclose(view.user_layer_table.detach().numpy(), ref_layers[:3], atol=1e-7)
    np.testing.assert_allclose(view.item_layer_table.detach().numpy(), ref_layers[3:], atol=1e-7)
    np.testing.assert_allclose(view.user_table.detach().numpy(), ref_pooled[:3], atol=1e-7)
    np.testing.assert_allclose(view.item_table.detach().numpy(), ref_pooled[3:], atol=1e-7)
    # gathers: pooled, ego and layers of the batch
    np.testing.assert_allclose(view.user_emb.detach().numpy(), ref_pooled[[0, 1, 2]], atol=1e-7)
    np.testing.assert_allclose(view.pos_emb.detach().numpy(), ref_pooled[[3 + 1, 3 + 2, 3 + 0]], atol=1e-7)
    assert torch.equal(view.user_ego, model.user_embedding.weight[users])
    assert torch.equal(view.pos_ego, model.item_embedding.weight[pos])
    assert view.item_layers(torch.tensor([[0, 3]])).shape == (1, 2, n_layers + 1, 5)
    assert torch.equal(view.user_layers, view.user_layer_table[users])
    assert torch.equal(view.pos_layers[:, 0], view.pos_ego)  # layer 0 is the ego row


def test_isolated_item_keeps_only_its_ego_row():
    torch.manual_seed(1)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=2))
    view = model.view(torch.tensor([0]), torch.tensor([0]))
    layers = view.item_layers(torch.tensor([3]))[0]  # item 3: degree 0
    assert torch.equal(layers[0], model.item_embedding.weight[3])
    assert torch.count_nonzero(layers[1:]) == 0
    torch.testing.assert_close(view.item_emb(torch.tensor(3)), model.item_embedding.weight[3] / 3)


def test_pooled_is_mean_of_layers():
    torch.manual_seed(2)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=6, n_layers=3))
    view = model.view(torch.tensor([0, 1]), torch.tensor([0, 1]))
    torch.testing.assert_close(view.user_table, view.user_layer_table.mean(1))
    torch.testing.assert_close(view.item_table, view.item_layer_table.mean(1))
    assert view.item_layer_table.shape == (4, 4, 6)


def test_layer_lookups_gather_from_each_layer_and_never_stack_them():
    """Per-layer lookups gather from each layer's [N, d] table; the [N, L+1, d] stack is built only when the
    whole per-layer table is read."""
    torch.manual_seed(2)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=6, n_layers=2))
    view = model.view(torch.tensor([0, 2]), torch.tensor([1, 0]))
    assert view.n_layers == 3 and view._item_layer_table is None  # not built yet
    stacked = model.propagate()
    items, users = stacked[3:], stacked[:3]
    torch.testing.assert_close(view.item_table, items.mean(1))
    ids = torch.tensor([[1, 3], [2, 0]])
    torch.testing.assert_close(view.item_layers(ids), items[ids])
    torch.testing.assert_close(view.user_layers, users[torch.tensor([0, 2])])
    torch.testing.assert_close(view.pos_layers, items[torch.tensor([1, 0])])
    # layer l of item ids[..., l]; and the pooled user against every layer of the items, without gradient
    per_layer = torch.tensor([[1, 3, 0], [2, 2, 1]])
    want = torch.stack([items[per_layer[:, i], i] for i in range(3)], 1)
    torch.testing.assert_close(view.item_layer_rows(per_layer), want)
    scores = view.score_layers(ids)
    assert scores.shape == (2, 2, 3) and not scores.requires_grad
    torch.testing.assert_close(scores, torch.einsum("bd,bjld->bjl", view.user_emb, items[ids]).detach())
    with pytest.raises(ValueError, match="one id per layer"):
        view.item_layer_rows(ids)
    assert view._item_layer_table is None  # none of these stacked the layers
    torch.testing.assert_close(view.item_layer_table, items)  # a whole-table read builds the stack
    assert view._item_layer_table is not None
    view.item_layer_rows(per_layer).sum().backward()  # gradient reaches the ego tables
    assert model.item_embedding.weight.grad is not None


@pytest.mark.parametrize(
    "n_layers, reads",
    [
        (2, "layer 0 only"),
        (2, "last layer only"),
        (2, "both, and the pooled table"),
        (2, "the pooled table only"),
        (0, "layer 0 only"),
    ],
)
def test_few_row_layer_lookups_take_sparse_gradients_through_propagation(n_layers, reads):
    """Lookups of few rows (at most a quarter of the nodes), per layer or pooled, gather with a row-sparse
    gradient; whatever the loss reads, backward reaches the ego tables with the dense reference's gradient
    (with L = 0 the sparse gradient is all the ego table gets)."""
    gen = np.random.default_rng(3)
    data = Interactions(gen.integers(0, 40, 400), gen.integers(0, 30, 400), n_users=40, n_items=30)
    torch.manual_seed(4)
    model = LightGCN.from_interactions(data, LightGCNConfig(dim=5, n_layers=n_layers))
    view = model.view(torch.tensor([0, 3, 9]), torch.tensor([1, 2, 29]))
    ids = torch.tensor([[4, 7, 7], [0, 29, 11]])  # 6 rows of 70 nodes: sparse gradients
    rows = view.item_layers(ids)
    assert view._layer_nodes is not None
    leaf = view._layer_nodes[0][-1].detach().requires_grad_()
    base._layer_rows(leaf, ids.reshape(-1) + 40).sum().backward()
    assert leaf.grad.is_sparse  # the gather's own gradient is row-sparse
    if reads == "layer 0 only":
        loss = (rows[..., 0, :] ** 2).sum()
    elif reads == "last layer only":
        loss = (rows[..., 2, :] * 3).sum() + (view.user_layers[:, 2] ** 2).sum()
    elif reads == "the pooled table only":
        loss = (view.user_emb * view.pos_emb).sum() + (view.item_emb(ids) ** 2).sum()
    else:
        loss = (rows**2).sum() + (view.item_layer_rows(ids) * 2).sum() + view.user_emb.sum()
    loss.backward()

    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach().double()
    ego.requires_grad_()
    dense = torch.as_tensor(normalized_adjacency(data.csr).toarray())
    layers = [ego]
    for _ in range(n_layers):
        layers.append(dense @ layers[-1])
    stacked = torch.stack(layers, 1)
    ref_rows = stacked[ids + 40]
    if reads == "layer 0 only":
        ref = (ref_rows[..., 0, :] ** 2).sum()
    elif reads == "last layer only":
        ref = (ref_rows[..., 2, :] * 3).sum() + (stacked[torch.tensor([0, 3, 9]), 2] ** 2).sum()
    elif reads == "the pooled table only":
        pooled = stacked.mean(1)
        users, pos = torch.tensor([0, 3, 9]), torch.tensor([1, 2, 29]) + 40
        ref = (pooled[users] * pooled[pos]).sum() + (pooled[ids + 40] ** 2).sum()
    else:
        picked = torch.stack([stacked[ids[:, i] + 40, i] for i in range(3)], 1)
        ref = (ref_rows**2).sum() + (picked * 2).sum() + stacked.mean(1)[torch.tensor([0, 3, 9])].sum()
    ref.backward()
    grad = torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad]).double()
    torch.testing.assert_close(grad, ego.grad, rtol=1e-5, atol=1e-6)
    assert ego.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_backward_matches_dense_autograd(layout):
    torch.manual_seed(3)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=3, n_layers=2)).double()
    model._use_coo = layout == "coo"
    assert model.adjacency().layout == (torch.sparse_coo if layout == "coo" else torch.sparse_csr)
    users, pos = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 0])
    neg_ids = torch.tensor([3, 0, 1, 2])
    view = model.view(users, pos)
    w = torch.randn(4, 3, dtype=torch.float64)
    loss = (
        (view.user_emb * view.pos_emb).sum()
        - (view.user_emb * view.item_emb(neg_ids)).sum()
        + (w * view.item_layers(neg_ids)[:, 1]).sum()
    )
    loss.backward()

    # the same function with a dense Ã and autograd
    adj = torch.as_tensor(normalized_adjacency(tiny().csr).toarray())
    ego = (
        torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        .detach()
        .clone()
        .requires_grad_()
    )
    layers = [ego]
    for _ in range(2):
        layers.append(adj @ layers[-1])
    stacked = torch.stack(layers, 1)
    pooled = stacked.mean(1)
    u, it = pooled[:3], pooled[3:]
    ref = (u[users] * it[pos]).sum() - (u[users] * it[neg_ids]).sum() + (w * stacked[3:][neg_ids][:, 1]).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(model.user_embedding.weight.grad, ego.grad[:3])
    torch.testing.assert_close(model.item_embedding.weight.grad, ego.grad[3:])
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_falls_back_to_coo_when_csr_product_fails():
    torch.manual_seed(10)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=3, n_layers=2))
    ref = model.tables()
    real = model._spmm

    def csr_unsupported(adj, x):
        if adj.layout == torch.sparse_csr:
            raise NotImplementedError("no CSR kernel here")
        return real(adj, x)

    model._spmm = csr_unsupported
    with pytest.warns(RuntimeWarning, match="using COO"):
        out = model.tables()
    assert model._use_coo
    torch.testing.assert_close(out, ref)
    view = model.view(torch.tensor([0]), torch.tensor([1]))  # no second warning, backward through COO
    (view.user_emb * view.pos_emb).sum().backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_gradcheck_propagation():
    torch.manual_seed(4)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=2, n_layers=2)).double()
    adj = model.adjacency()
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: model._spmm(adj, t), (x,))


def test_compiled_product_by_hand_and_its_checks():
    pytest.importorskip("numba")
    from recneg import kernels

    # A = [[1, 0, 2], [0, 0, 0], [0, -1, 0.5]] (row 1 empty); x rows (1, 2), (3, 4), (5, 6)
    indptr, indices = np.array([0, 2, 2, 4]), np.array([0, 2, 1, 2])
    data = np.array([1.0, 2.0, -1.0, 0.5], dtype=np.float32)
    x = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    got = kernels.csr_spmm(indptr, indices, data, x)
    assert got.tolist() == [[11.0, 14.0], [0.0, 0.0], [-0.5, -1.0]]
    with pytest.raises(IndexError, match="1 column indices"):
        kernels.csr_spmm(indptr, np.array([0, 3, 1, 2]), data, x)
    with pytest.raises(IndexError, match="indptr of 4 entries does not describe 3 non-zeros"):
        kernels.csr_spmm(indptr, indices[:3], data[:3], x)
    # more rows than tasks, uneven rows: equal to scipy, and the same bits whatever the thread count; the
    # general kernel (d = 33) and d = 64's
    gen = np.random.default_rng(0)
    a = sp.random(3000, 500, density=0.02, format="csr", dtype=np.float32, random_state=gen)
    a.data[:] = gen.standard_normal(a.nnz).astype(np.float32)
    for dim in (33, 64):
        x = gen.standard_normal((500, dim)).astype(np.float32)
        args = (a.indptr.astype(np.int64), a.indices.astype(np.int64), a.data, x)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            two = kernels.csr_spmm(*args)
            torch.set_num_threads(1)
            one = kernels.csr_spmm(*args, check=False)
        finally:
            torch.set_num_threads(threads)
        np.testing.assert_allclose(one, (a @ x.astype(np.float64)), rtol=1e-5, atol=1e-5)
        assert np.array_equal(one, two)


@pytest.mark.parametrize("dim", [16, 64])
def test_compiled_propagation_matches_torch_product_values_and_gradients(monkeypatch, dim):
    """Float32 on CPU takes recneg.kernels.csr_spmm (forward and backward); it agrees with torch's CSR
    product, and both with a dense float64 propagation."""
    pytest.importorskip("numba")
    from recneg import kernels

    gen = np.random.default_rng(5)
    users, items = gen.integers(0, 120, 1500), gen.integers(0, 90, 1500)
    data = Interactions(users, items, n_users=120, n_items=90)
    torch.manual_seed(6)
    model = LightGCN.from_interactions(data, LightGCNConfig(dim=dim, n_layers=3))
    batch_users, batch_pos, negs = (
        torch.tensor([0, 5, 7, 119]),
        torch.tensor([1, 2, 89, 0]),
        torch.tensor([3, 4, 5, 6]),
    )
    weights = torch.randn(4, dim)

    def run():
        model.zero_grad()
        view = model.view(batch_users, batch_pos)
        loss = (view.user_emb * (view.pos_emb - view.item_emb(negs))).sum() + (
            weights * view.item_layers(negs)[:, 2]
        ).sum()
        loss.backward()
        grads = (model.user_embedding.weight.grad.clone(), model.item_embedding.weight.grad.clone())
        return model.propagate().detach(), grads

    calls = []
    real = kernels.csr_spmm
    monkeypatch.setattr(kernels, "csr_spmm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    compiled_layers, compiled_grads = run()
    assert len(calls) == 3 + 3 + 3  # the view's layers, their backward, propagate()
    previous = lightgcn.use_compiled_propagation(False)
    try:
        torch_layers, torch_grads = run()
    finally:
        assert lightgcn.use_compiled_propagation(previous) is False
    assert len(calls) == 9
    torch.testing.assert_close(compiled_layers, torch_layers, rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled_grads, torch_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    adj = normalized_adjacency(data.csr).toarray()
    ego = compiled_layers[:, 0].double().numpy()
    dense = [ego]
    for _ in range(3):
        dense.append(adj @ dense[-1])
    np.testing.assert_allclose(compiled_layers.numpy(), np.stack(dense, 1), rtol=1e-4, atol=1e-6)


def test_tables_equal_view_tables_without_grad():
    torch.manual_seed(5)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=3))
    view = model.view(torch.tensor([0]), torch.tensor([0]))
    u, i = model.tables()
    assert not u.requires_grad and not i.requires_grad
    torch.testing.assert_close(u, view.user_table.detach())
    torch.testing.assert_close(i, view.item_table.detach())
    scores = model.score_users(torch.tensor([0, 2]))
    torch.testing.assert_close(scores, view.user_table.detach()[[0, 2]] @ view.item_table.detach().T)


def test_no_state_cached_across_steps():
    torch.manual_seed(6)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=1))
    v1 = model.view(torch.tensor([0]), torch.tensor([0]))
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    v2 = model.view(torch.tensor([0]), torch.tensor([0]))
    assert not torch.allclose(v1.user_emb, v2.user_emb)
    torch.testing.assert_close(model.tables()[0], v2.user_table.detach())


def test_state_dict_dtype_and_deepcopy():
    torch.manual_seed(7)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=2))
    assert set(model.state_dict()) == {"user_embedding.weight", "item_embedding.weight"}
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone.tables()[1], model.tables()[1])
    model.double()
    assert model.adj_values.dtype == torch.float64
    assert model.tables()[0].dtype == torch.float64
    model.to("cpu")
    other = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=2)).double()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.tables()[0], model.tables()[0])


def test_registry_and_config_validation():
    model = build_model("lightgcn", tiny(), dim=8, n_layers=2)
    assert isinstance(model, LightGCN) and model.config.n_layers == 2 and model.provides_layers
    assert model.view(torch.tensor([0]), torch.tensor([1])).model_name == "lightgcn"
    with pytest.raises(ConfigError, match="n_layers of LightGCNConfig"):
        LightGCNConfig(n_layers=-1)
    with pytest.raises(ConfigError, match="init"):
        LightGCNConfig(init="uniform")


def test_training_steps_reduce_bpr_loss():
    torch.manual_seed(8)
    train = tiny()
    model = LightGCN.from_interactions(train, LightGCNConfig(dim=8, n_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    users, pos, neg = (
        torch.tensor([0, 0, 1, 1, 2]),
        torch.tensor([0, 1, 1, 2, 0]),
        torch.tensor([3, 2, 3, 0, 3]),
    )
    losses = []
    for _ in range(30):
        view = model.view(users, pos)
        loss = torch.nn.functional.softplus(
            (view.user_emb * view.item_emb(neg)).sum(-1) - (view.user_emb * view.pos_emb).sum(-1)
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(9)
    model = LightGCN.from_interactions(tiny(), LightGCNConfig(dim=4, n_layers=3))
    u_cpu, i_cpu = model.tables()
    model.cuda()
    assert model.adj_values.is_cuda
    view = model.view(torch.tensor([0, 1], device="cuda"), torch.tensor([0, 1], device="cuda"))
    (view.user_emb * view.pos_emb).sum().backward()
    assert model.user_embedding.weight.grad.is_cuda
    u, i = model.tables()
    torch.testing.assert_close(u.cpu(), u_cpu)
    torch.testing.assert_close(i.cpu(), i_cpu)

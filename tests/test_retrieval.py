"""Retrieval: export, exact/approximate indexes (FAISS optional), already-seen filtering, ANN recall."""

import json

import numpy as np
import pytest
import torch

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.models.mf import MF, MFConfig
from recneg.retrieval import (
    ItemIndex,
    ann_recall_at_k,
    compare_indexes,
    export_embeddings,
    faiss_available,
    load_embeddings,
    retrieve,
)

torch.set_num_threads(1)
needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss not installed (pip install 'recneg[faiss]')"
)


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    if faiss_available():
        import faiss

        faiss.omp_set_num_threads(1)


def _vectors(n_users=40, n_items=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_users, d, generator=g), torch.randn(n_items, d, generator=g)


def _brute_force(users, items, k):
    return torch.topk(users @ items.T, k, dim=1).indices


def test_torch_exact_search_matches_brute_force():
    users, items = _vectors()
    index = ItemIndex(items, kind="flat", backend="torch")
    assert index.backend == "torch" and index.exact
    scores, ids = retrieve(index, users, 10)
    assert torch.equal(ids, _brute_force(users, items, 10))
    assert torch.allclose(scores, (users @ items.T).gather(1, ids), atol=1e-5)


def test_approximate_kind_without_faiss_falls_back_loudly():
    _, items = _vectors()
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        index = ItemIndex(items, kind="hnsw", backend="torch")
    assert index.exact and index.backend == "torch"
    with pytest.raises(ConfigError, match="kind"):
        ItemIndex(items, kind="lsh")


@needs_faiss
def test_faiss_flat_is_exact():
    users, items = _vectors()
    _, ids = ItemIndex(items, kind="flat", backend="faiss").search(users, 10)
    assert torch.equal(ids, _brute_force(users, items, 10))


@needs_faiss
def test_faiss_approximate_indexes_recall():
    users, items = _vectors(n_items=500)
    exact = _brute_force(users, items, 20)
    _, hnsw = ItemIndex(items, kind="hnsw", ef_search=200).search(users, 20)
    assert ann_recall_at_k(exact, hnsw) > 0.9
    _, ivf_all = ItemIndex(items, kind="ivf", nlist=8, nprobe=8).search(users, 20)  # every cell probed: exact
    assert ann_recall_at_k(exact, ivf_all) == pytest.approx(1.0)
    report = compare_indexes(users, items, k=20, kind="ivf", nlist=16, nprobe=1)
    assert report["backend"] == "faiss" and 0.0 < report["ann_recall@20"] < 1.0  # one of 16 cells: lossy


def test_ann_recall_hand_example():
    exact = torch.tensor([[1, 2, 3, 4], [5, 6, 7, -1]])
    approx = torch.tensor([[4, 9, 1, 8], [-1, 7, 6, 5]])
    # row 0: {1, 4} of 4 found = 0.5; row 1: 3 valid exact ids, all found = 1.0 (padding never counts)
    assert ann_recall_at_k(exact, approx) == pytest.approx(0.75)


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=needs_faiss)])
def test_exclude_training_positives(backend):
    users, items = _vectors(n_users=3, n_items=20)
    top = _brute_force(users, items, 20)
    seen_items = top[:, :3].reshape(-1)  # each user has seen its own top-3
    train = Interactions(np.repeat(np.arange(3), 3), seen_items.numpy(), n_users=3, n_items=20)
    index = ItemIndex(items, kind="flat", backend=backend)
    _, ids = index.search(users, 5, exclude=train.positives(), query_ids=torch.arange(3))
    assert torch.equal(ids, top[:, 3:8])
    with pytest.raises(ConfigError, match="query_ids"):
        index.search(users, 5, exclude=train.positives())


def test_k_larger_than_catalogue_is_padded():
    users, items = _vectors(n_users=2, n_items=4)
    scores, ids = ItemIndex(items, backend="torch").search(users, 6)
    assert ids.shape == (2, 6) and (ids[:, 4:] == -1).all() and torch.isinf(scores[:, 4:]).all()


def test_export_and_load_round_trip(tmp_path):
    train = Interactions([0, 1], [1, 2], n_users=2, n_items=3, item_ids=np.array([30, 10, 20]))
    model = MF(2, 3, MFConfig(dim=4))
    paths = export_embeddings(model, tmp_path / "out", train)
    emb, ids = load_embeddings(tmp_path / "out", "items")
    assert ids == [30, 10, 20] and np.allclose(emb, model.item_embedding.weight.detach().numpy())
    assert emb.dtype == np.float32 and paths["users"].exists()
    assert json.loads(paths["id_maps"].read_text())["users"] == [0, 1]


def test_missing_faiss_is_reported(monkeypatch):
    import recneg.retrieval as retrieval

    monkeypatch.setattr(retrieval, "faiss_available", lambda: False)
    users, items = _vectors(n_users=3, n_items=30)
    assert ItemIndex(items).backend == "torch"  # auto + flat: exact torch search, no warning needed
    with pytest.warns(RuntimeWarning, match="exact torch search"):
        index = ItemIndex(items, kind="ivf")
    assert index.exact and torch.equal(index.search(users, 5)[1], _brute_force(users, items, 5))
    with pytest.raises(ConfigError, match="needs faiss"):
        ItemIndex(items, backend="faiss")

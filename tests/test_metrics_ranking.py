import math

import numpy as np
import pytest
import torch

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.eval.metrics import topk_metrics
from recneg.eval.ranking import evaluate_tables, rank_topk


def test_one_user_ten_items_by_hand():
    # ranking (best first): items 9..0 (score = item id); targets {8, 5, 0}; nothing masked
    users = torch.zeros(1, 1)
    items = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    user_table = torch.ones(1, 1)
    target = Interactions([0, 0, 0], [8, 5, 0], n_users=1, n_items=10)
    res = evaluate_tables(
        user_table, items, target, exclude=None, topk=(1, 3, 5, 10), deterministic_ties=True
    )
    m = res.metrics
    assert users.shape == (1, 1)
    # ranks: 9→1, 8→2, 7→3, 6→4, 5→5, ..., 0→10; hits at ranks 2, 5, 10
    assert m["recall@1"] == 0 and m["hit@1"] == 0 and m["mrr@1"] == 0
    assert m["recall@3"] == pytest.approx(1 / 3)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["mrr@3"] == pytest.approx(1 / 2)
    dcg5 = 1 / math.log2(3) + 1 / math.log2(6)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@5"] == pytest.approx(dcg5 / idcg3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["precision@5"] == pytest.approx(2 / 5)
    assert m["hit@5"] == 1
    dcg10 = dcg5 + 1 / math.log2(11)
    assert m["ndcg@10"] == pytest.approx(dcg10 / idcg3)
    assert m["recall@10"] == 1


def test_idcg_uses_min_k_targets():
    hits = torch.tensor([[True, False]])
    out = topk_metrics(hits, torch.tensor([5]), [1, 2])
    assert float(out["ndcg@1"]) == pytest.approx(1.0)
    assert float(out["ndcg@2"]) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_training_and_validation_items_are_masked():
    user_table = torch.ones(2, 1)
    item_table = torch.arange(6, dtype=torch.float32).unsqueeze(1)  # item 5 best
    train = Interactions([0, 1], [5, 4], 2, 6)
    valid = Interactions([0], [4], 2, 6)
    top = rank_topk(user_table, item_table, torch.tensor([0, 1]), 2, exclude=None)
    assert top.tolist() == [[5, 4], [5, 4]]
    test = Interactions([0, 1], [3, 3], 2, 6)
    res = evaluate_tables(user_table, item_table, test, [train, valid], topk=(1,))
    assert res.topk[:, 0].tolist() == [3, 5]  # user 0: 5 and 4 masked; user 1: 4 masked
    assert res.metrics["recall@1"] == pytest.approx(0.5)


def test_items_only_in_test_are_legal_and_count():
    # item 3 has no training interaction but is in the id space; user 1 has no test items (skipped)
    train = Interactions([0, 1], [0, 1], 2, 4)
    test = Interactions([0, 0], [3, 2], 2, 4)
    user_table = torch.ones(2, 1)
    item_table = torch.tensor([[0.0], [0.1], [0.5], [0.2]])
    res = evaluate_tables(user_table, item_table, test, [train], topk=(1, 2))
    assert res.users.tolist() == [0]
    assert res.metrics["recall@1"] == pytest.approx(0.5)
    assert res.metrics["recall@2"] == pytest.approx(1.0)


def test_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(0)
    user_table, item_table = torch.randn(37, 4, generator=g), torch.randn(50, 4, generator=g)
    rng = np.random.default_rng(0)
    train = Interactions(rng.integers(0, 37, 300), rng.integers(0, 50, 300), 37, 50)
    test = Interactions(rng.integers(0, 37, 100), rng.integers(0, 50, 100), 37, 50)
    a = evaluate_tables(user_table, item_table, test, [train], topk=(5, 10), chunk_size=4)
    b = evaluate_tables(user_table, item_table, test, [train], topk=(5, 10), chunk_size=1000)
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.topk, b.topk)
    # no masked (training) item appears in any list
    for row, u in zip(a.topk, a.users, strict=True):
        assert not set(row.tolist()) & set(train.csr[u].indices.tolist())


def test_hit_set_and_per_user_detail():
    user_table = torch.ones(2, 1)
    item_table = torch.arange(4, dtype=torch.float32).unsqueeze(1)
    test = Interactions([0, 1, 1], [3, 0, 2], 2, 4)
    res = evaluate_tables(user_table, item_table, test, None, topk=(2,))
    assert res.hit_set(2) == {(0, 3), (1, 2)}
    np.testing.assert_allclose(res.per_user["recall@2"], [1.0, 0.5])


def test_topk_larger_than_catalogue_is_an_error():
    with pytest.raises(ConfigError, match="exceeds the number of items"):
        evaluate_tables(torch.ones(1, 1), torch.ones(3, 1), Interactions([0], [1], 1, 3), None, topk=(5,))

"""TwoTower model: shapes, features, cold start, the Recommender protocol, CF samplers on top of it."""

import numpy as np
import pandas as pd
import pytest
import torch

from recneg import build_loss, build_model, build_sampler
from recneg.data.features import FeatureSet
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError, DataError
from recneg.losses import l2_regularization
from recneg.models.twotower import TowerView, TwoTower, TwoTowerConfig

torch.set_num_threads(1)


@pytest.fixture
def train():
    # items 0..4 have interactions, item 5 has none (cold start)
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 1, 2, 3, 4, 0])
    return Interactions(users, items, n_users=4, n_items=6, item_ids=np.array([10, 11, 12, 13, 14, 15]))


@pytest.fixture
def item_features(train):
    frame = pd.DataFrame(
        {
            "item": [10, 11, 12, 13, 14, 15],
            "kind": ["a", "b", "a", "c", "b", "a"],
            "tags": ["x|y", "y", "z", "x", "", "x|y"],  # item 15 (cold) has the same features as item 10
            "score": [0.5, 1.0, 0.0, 2.0, 1.5, 0.5],
        }
    )
    return FeatureSet.from_frame(
        frame, "item", train.item_ids, categorical=["kind"], multi_hot=["tags"], dense=["score"]
    )


@pytest.fixture
def user_features():
    frame = pd.DataFrame({"user": [0, 1, 2, 3], "age": ["18-24", "25-34", "18-24", "56+"]})
    return FeatureSet.from_frame(frame, "user", np.arange(4), categorical=["age"])


def test_forward_shapes_and_tables(train):
    model = build_model("twotower", train, hidden="32,8", id_dim=6)
    assert isinstance(model, TwoTower) and model.dim == 8
    users, pos = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 0])
    view = model.view(users, pos)
    assert isinstance(view, TowerView)
    assert view.user_emb.shape == (3, 8) and view.pos_emb.shape == (3, 8)
    assert view.item_emb(torch.tensor([[0, 1], [2, 3], [4, 5]])).shape == (3, 2, 8)
    assert torch.allclose(view.item_emb(pos), view.pos_emb)
    assert view.all_items().shape == (6, 8) and view.score(torch.tensor([[0, 1]] * 3)).shape == (3, 2)
    u, i = model.tables()
    assert u.shape == (4, 8) and i.shape == (6, 8) and not u.requires_grad
    assert torch.allclose(model.score_users(torch.tensor([2, 0])), u[[2, 0]] @ i.T, atol=1e-6)


def test_mlp_has_relu_on_hidden_layers_only(train):
    model = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(16, 12, 4)))
    layers = list(model.item_tower.mlp)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    out = model.tables()[1]
    assert (out < 0).any()  # no activation on the top layer


def test_per_layer_access_raises_clear_error(train):
    view = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(8,))).view(
        torch.tensor([0]), torch.tensor([1])
    )
    with pytest.raises(ConfigError, match="twotower does not provide per-layer"):
        view.item_layers(torch.tensor([0]))
    with pytest.raises(ConfigError, match="per-layer"):
        _ = view.user_layers


def test_cold_start_item_gets_embedding_from_features(train, item_features):
    cfg = TwoTowerConfig(hidden=(16, 8), use_item_id=False)
    model = TwoTower.from_interactions(train, cfg)
    with pytest.raises(ConfigError, match="use_item_id=false needs item features"):
        model.tables()
    model.with_features(item_features=item_features)
    _, items = model.tables()
    assert torch.isfinite(items).all()
    assert torch.allclose(
        items[5], items[0]
    )  # same features, no id => same embedding, though never trained on
    assert not torch.allclose(items[5], items[3])
    # with the id embedding, the cold item differs from its feature twin
    with_id = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(16, 8)), item_features=item_features)
    _, items = with_id.tables()
    assert not torch.allclose(items[5], items[0])


def test_features_change_the_input_width_and_reach_the_gradient(train, item_features, user_features):
    model = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(8,), id_dim=4, feature_dim=3))
    assert model.item_tower.in_dim == 4
    model.with_features(user_features, item_features)
    assert model.item_tower.in_dim == 4 + 3 + 3 + 1  # id + kind + tags bag + 1 dense
    assert model.user_tower.in_dim == 4 + 3
    view = model.view(torch.tensor([0, 1]), torch.tensor([0, 4]))
    (view.user_emb * view.pos_emb).sum().backward()
    assert model.item_tower.bag_embeddings[0].weight.grad.abs().sum() > 0
    assert model.user_tower.cat_embeddings[0].weight.grad.abs().sum() > 0
    with pytest.raises(DataError, match="rows"):
        model.with_features(user_features=item_features)  # 6 rows for 4 users


def test_cf_samplers_and_losses_work_with_the_towers(train, item_features):
    model = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(16, 8)), item_features=item_features)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    users, pos = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0])
    g = torch.Generator().manual_seed(0)
    for name, loss_name, kw in [("uniform", "bpr", {"n_negatives": 2}), ("mns", "softmax", {"n_uniform": 4})]:
        sampler = build_sampler(name, **kw).bind(train)
        loss_fn = build_loss(loss_name)
        before = [p.detach().clone() for p in model.item_tower.mlp.parameters()]
        view = model.view(users, pos)
        neg = sampler(users, pos, view, g)
        loss = loss_fn(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        assert any(
            not torch.equal(b, a) for b, a in zip(before, model.item_tower.mlp.parameters(), strict=True)
        )


def test_tables_are_eval_mode_and_restore_training(train):
    model = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(32, 8), dropout=0.5))
    model.train()
    a, b = model.tables()[1], model.tables()[1]
    assert torch.equal(a, b) and model.training  # dropout off inside, mode restored


def test_state_dict_round_trip_with_features(train, item_features):
    cfg = TwoTowerConfig(hidden=(8,), use_item_id=False)
    model = TwoTower.from_interactions(train, cfg, item_features=item_features)
    state = model.state_dict()
    assert not any("bag_indices" in k or "dense" in k for k in state)  # data, not state
    other = TwoTower.from_interactions(train, cfg).with_features(item_features=item_features)
    other.load_state_dict(state)
    assert torch.equal(other.tables()[1], model.tables()[1])


def test_config_validation():
    with pytest.raises(ConfigError, match="hidden"):
        TwoTowerConfig(hidden=())
    with pytest.raises(ConfigError, match="hidden"):
        TwoTowerConfig(hidden=(16, 0))
    with pytest.raises(ConfigError, match="dropout"):
        TwoTowerConfig(dropout=1.0)
    assert TwoTowerConfig().hidden == (256, 64)

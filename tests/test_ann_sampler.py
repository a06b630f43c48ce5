"""ann_hard: hard negatives from an ANN index of the item table."""

import numpy as np
import pytest
import torch

import recneg
from recneg.data.interactions import Interactions
from recneg.retrieval import faiss_available
from recneg.samplers.ann import ANNHardConfig, ANNHardSampler

torch.set_num_threads(1)


def _mf(train, user_w, item_w):
    user_w, item_w = np.asarray(user_w, dtype=np.float32), np.asarray(item_w, dtype=np.float32)
    model = recneg.build_model("mf", train, dim=user_w.shape[1])
    with torch.no_grad():
        model.user_embedding.weight.copy_(torch.as_tensor(user_w, dtype=torch.float32))
        model.item_embedding.weight.copy_(torch.as_tensor(item_w, dtype=torch.float32))
    return model


@pytest.fixture
def line():
    """1-d embeddings: user 0 at +1, user 1 at -1; item j at j (user 0 ranks 7, 6, ...; user 1: 0, 1, ...).

    Positives: user 0 = {7, 5}, user 1 = {0}.
    """
    train = Interactions([0, 0, 1], [7, 5, 0], n_users=2, n_items=8)
    model = _mf(train, [[1.0], [-1.0]], np.arange(8, dtype=np.float32)[:, None])
    return train, model


def _draw(sampler, model, users, gen=None):
    users = torch.as_tensor(users)
    pos = torch.zeros_like(users)
    view = model.view(users, pos)
    return sampler(users, pos, view, generator=gen)


def test_registered_and_validated():
    s = recneg.build_sampler("ann_hard", n_candidates=8, pick="top")
    assert isinstance(s, ANNHardSampler) and s.config.n_candidates == 8
    with pytest.raises(recneg.errors.ConfigError):
        ANNHardConfig(pick="best")
    with pytest.raises(recneg.errors.ConfigError):
        ANNHardConfig(refresh_every=-1)


def test_top_pick_hand_computed(line):
    train, model = line
    s = ANNHardSampler(ANNHardConfig(n_negatives=2, n_candidates=4, pick="top", index="flat")).bind(train)
    neg = _draw(s, model, [0, 1])
    # user 0: exact top-4 = 7, 6, 5, 4; positives 7, 5 dropped -> 6, 4
    # user 1: exact top-4 = 0, 1, 2, 3; positive 0 dropped -> 1, 2
    assert neg.ids.tolist() == [[6, 4], [1, 2]]
    assert torch.equal(neg.emb[..., 0], neg.ids.float())
    assert float(neg.stats["ann_pool"]) == pytest.approx((2 + 3) / 2)
    assert float(neg.stats["ann_fallback"]) == 0.0


def test_uniform_pick_within_exact_topk_and_never_positive(line):
    train, model = line
    s = ANNHardSampler(ANNHardConfig(n_negatives=2, n_candidates=5, index="flat")).bind(train)
    gen = torch.Generator().manual_seed(0)
    seen = {0: set(), 1: set()}
    for _ in range(200):
        ids = _draw(s, model, [0, 1], gen).ids
        for row, u in enumerate((0, 1)):
            assert len(set(ids[row].tolist())) == 2  # without replacement
            seen[u] |= set(ids[row].tolist())
    assert seen[0] == {6, 4, 3}  # top-5 {7,6,5,4,3} minus positives {7,5}
    assert seen[1] == {1, 2, 3, 4}  # top-5 {0..4} minus {0}


def test_uniform_pick_is_uniform(line):
    train, model = line
    s = ANNHardSampler(ANNHardConfig(n_negatives=1, n_candidates=5, index="flat")).bind(train)
    gen = torch.Generator().manual_seed(1)
    ids = torch.cat([_draw(s, model, [1] * 500, gen).ids for _ in range(8)]).flatten()
    counts = torch.bincount(ids, minlength=8)[1:5].double()
    assert counts.sum() == 4000
    assert torch.all((counts / 4000 - 0.25).abs() < 0.03)


def test_fallback_when_positives_fill_the_candidates(line):
    train, model = line
    # user 0 with N = 2: top-2 = {7, 6}, only 6 remains; the second negative comes from Uniform(I \ {7, 5})
    s = ANNHardSampler(ANNHardConfig(n_negatives=2, n_candidates=2, pick="top", index="flat")).bind(train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg = _draw(s, model, [0], gen)
        assert neg.ids[0, 0] == 6
        assert int(neg.ids[0, 1]) not in (7, 5)
        assert float(neg.stats["ann_fallback"]) == 0.5


def test_never_a_positive_on_synthetic_data(small_split):
    train = small_split.train
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=16)
    index = train.positives()
    for pick in ("uniform", "top"):
        s = ANNHardSampler(ANNHardConfig(n_negatives=4, n_candidates=20, pick=pick, index="flat")).bind(train)
        gen = torch.Generator().manual_seed(0)
        users = torch.as_tensor(train.users[:256])
        ids = _draw(s, model, users, gen).ids
        assert not index.contains(users.unsqueeze(1), ids).any()
        # each hard pick is in the user's exact top-20 (no fallback is needed here)
        u_t, i_t = model.tables()
        top = torch.topk(u_t[users] @ i_t.T, 20, dim=1).indices
        assert (ids.unsqueeze(2) == top.unsqueeze(1)).any(2).all()


def test_refresh_schedule_every_k_steps(line):
    train, model = line
    s = ANNHardSampler(ANNHardConfig(n_candidates=3, pick="top", refresh_every=3, index="flat")).bind(train)
    for _ in range(7):
        _draw(s, model, [0])
    assert s.builds == [0, 3, 6]
    assert int(s.step_) == 7
    # the index is a snapshot: moving the items between refreshes changes nothing until the next build
    s2 = ANNHardSampler(ANNHardConfig(n_candidates=2, pick="top", refresh_every=2, index="flat")).bind(train)
    assert _draw(s2, model, [1]).ids.item() == 1  # user 1: best non-positive is 1
    with torch.no_grad():
        model.item_embedding.weight[6, 0] = -100.0  # item 6 becomes user 1's best
    assert _draw(s2, model, [1]).ids.item() == 1  # step 1: stale snapshot
    assert _draw(s2, model, [1]).ids.item() == 6  # step 2: rebuilt


def test_refresh_each_epoch_and_checkpoint(line):
    train, model = line
    s = ANNHardSampler(ANNHardConfig(n_candidates=3, pick="top", index="flat")).bind(train)
    s.on_epoch_start(0, model)
    for _ in range(4):
        _draw(s, model, [0])
    s.on_epoch_start(1, model)
    _draw(s, model, [0])
    assert s.builds == [-1, -1]
    state = s.state_dict()
    assert int(state["step_"]) == 5
    s3 = ANNHardSampler(ANNHardConfig(n_candidates=3, pick="top", refresh_every=5, index="flat")).bind(train)
    s3.load_state_dict(state)
    _draw(s3, model, [0])  # step 5: 5 % 5 == 0 -> rebuild
    assert s3.builds == [5] and int(s3.step_) == 6


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_hnsw_index_on_synthetic_data(small_split):
    train = small_split.train
    torch.manual_seed(0)
    model = recneg.build_model("mf", train, dim=16)
    s = ANNHardSampler(ANNHardConfig(n_negatives=3, n_candidates=30, index="hnsw")).bind(train)
    assert not s.exact
    users = torch.as_tensor(train.users[:128])
    ids = _draw(s, model, users, torch.Generator().manual_seed(0)).ids
    assert not train.positives().contains(users.unsqueeze(1), ids).any()
    u_t, i_t = model.tables()
    top = torch.topk(u_t[users] @ i_t.T, 30, dim=1).indices
    share = (ids.unsqueeze(2) == top.unsqueeze(1)).any(2).float().mean()
    assert share > 0.9  # HNSW on 300 items is nearly exact


def test_without_faiss_falls_back_to_exact(monkeypatch, line):
    train, model = line
    monkeypatch.setattr("recneg.samplers.ann.faiss_available", lambda: False)
    s = ANNHardSampler(ANNHardConfig(n_negatives=2, n_candidates=4, pick="top", index="hnsw")).bind(train)
    assert s.exact
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        neg = _draw(s, model, [0, 1])
    assert neg.ids.tolist() == [[6, 4], [1, 2]]


def test_trains_mf_and_twotower(small_split):
    for model_name, kw in (("mf", {"dim": 8}), ("twotower", {"hidden": (16, 8), "id_dim": 8})):
        model = recneg.build_model(model_name, small_split.train, **kw)
        s = recneg.build_sampler("ann_hard", n_negatives=2, n_candidates=16, index="flat", refresh_every=4)
        res = recneg.fit(model, s, small_split, epochs=1, batch_size=256, progress=False, eval_every=1)
        assert np.isfinite(res.history[0]["loss"])
        assert s.builds[:2] == [0, 4]
        assert res.history[0]["sampler"]["ann_fallback"] < 0.5


def test_epoch_refresh_with_twotower_uses_the_item_tower(line):
    train, _ = line
    torch.manual_seed(0)
    model = recneg.build_model("twotower", train, hidden=(8, 4), id_dim=4)
    s = ANNHardSampler(ANNHardConfig(n_negatives=2, n_candidates=8, pick="top", index="flat")).bind(train)
    s.on_epoch_start(0, model)
    assert s.builds == [-1]
    assert torch.allclose(s._items, model.tables()[1])
    users = torch.tensor([0, 1])
    neg = s(users, torch.tensor([7, 0]), model.view(users, torch.tensor([7, 0])))
    scores = model.tables()[0][users] @ model.tables()[1].T
    scores[0, [7, 5]] = scores[1, 0] = -float("inf")
    assert neg.ids.tolist() == torch.topk(scores, 2).indices.tolist()

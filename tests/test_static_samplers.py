import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import recneg
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError, DataError
from recneg.samplers.base import uniform_pool


def _view(train, users, pos, dim=4):
    model = recneg.build_model("mf", train, dim=dim)
    return model.view(users, pos)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(3, 12),
    st.data(),
)
def test_uniform_never_returns_a_training_positive(n_users, n_items, data):
    # each user keeps at least one non-positive item
    pairs = data.draw(
        st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), max_size=40)
    )
    pairs = {(u, i) for u, i in pairs if i < n_items - 1 or u % 2}  # never all items for any user
    pairs = [(u, i) for u, i in pairs if sum(1 for uu, _ in pairs if uu == u) < n_items]
    users = np.array([p[0] for p in pairs], dtype=np.int64)
    items = np.array([p[1] for p in pairs], dtype=np.int64)
    train = Interactions(users, items, n_users, n_items)
    seed = data.draw(st.integers(0, 1000))
    for name in ("uniform", "popularity"):
        if name == "popularity" and len(pairs) == 0:
            continue
        sampler = recneg.build_sampler(name, n_negatives=7).bind(train)
        batch_users = torch.arange(n_users).repeat(3)
        pos = torch.zeros_like(batch_users)
        try:
            neg = sampler(
                batch_users,
                pos,
                _view(train, batch_users, pos),
                generator=torch.Generator().manual_seed(seed),
            )
        except DataError:
            # popularity: a user whose positives hold all the proposal's mass has no drawable negative
            assert name == "popularity"
            continue
        positive = {(int(u), int(i)) for u, i in pairs}
        for u, row in zip(batch_users.tolist(), neg.ids.tolist(), strict=True):
            assert not any((u, j) in positive for j in row)
        assert neg.emb.shape == (batch_users.numel(), 7, 4)


def test_uniform_is_uniform_over_non_positives(tiny_train):
    users = torch.zeros(20000, dtype=torch.long)  # user 0 has positives {1, 2} of 8 items
    ids = uniform_pool(tiny_train.positives("cpu"), users, 1, torch.Generator().manual_seed(0))
    counts = np.bincount(ids.numpy().ravel(), minlength=8)
    assert counts[1] == counts[2] == 0
    observed = counts[[0, 3, 4, 5, 6, 7]]
    assert stats.chisquare(observed).pvalue > 1e-3


def test_without_exclusion_positives_are_drawn(tiny_train):
    ids = uniform_pool(
        tiny_train.positives("cpu"),
        torch.zeros(2000, dtype=torch.long),
        1,
        torch.Generator().manual_seed(0),
        exclude_positives=False,
    )
    assert {1, 2} <= set(ids.unique().tolist())


def test_popularity_matches_its_distribution():
    # item counts 1..6 over users 1..; user 0 has only item 0, so its proposal excludes item 0
    users = np.concatenate([np.arange(1, 1 + c) for c in range(1, 7)])
    items = np.concatenate([np.full(c, c - 1) for c in range(1, 7)])
    users = np.append(users, 0)
    items = np.append(items, 0)
    train = Interactions(users, items, 8, 7)  # item 6 never occurs: probability 0
    alpha = 0.75
    sampler = recneg.build_sampler("popularity", alpha=alpha, n_negatives=1).bind(train)
    counts = train.item_counts.astype(float)
    b = torch.zeros(30000, dtype=torch.long)
    neg = sampler(b, b, _view(train, b, b), generator=torch.Generator().manual_seed(1))
    observed = np.bincount(neg.ids.numpy().ravel(), minlength=7)
    assert observed[0] == 0 and observed[6] == 0
    p = counts[1:6] ** alpha
    expected = p / p.sum() * observed.sum()
    assert stats.chisquare(observed[1:6], expected).pvalue > 1e-3
    # log_q is the proposal's log probability
    expected_q = (counts**alpha) / (counts**alpha).sum()
    np.testing.assert_allclose(neg.log_q[:5, 0].exp().numpy(), expected_q[neg.ids[:5, 0].numpy()], rtol=1e-5)


def test_user_with_every_item_is_a_clear_error():
    train = Interactions([0, 0, 0, 1], [0, 1, 2, 0], 2, 3)
    sampler = recneg.build_sampler("uniform").bind(train)
    u = torch.tensor([0])
    with pytest.raises(DataError, match="user 0 has interacted with every item"):
        sampler(u, u, _view(train, u, u), generator=torch.Generator().manual_seed(0))


def test_sampler_settings_are_validated_with_suggestions():
    with pytest.raises(ConfigError, match="n_negatives of .* must be an int >= 1, got 0"):
        recneg.build_sampler("uniform", n_negatives=0)
    with pytest.raises(ConfigError, match="did you mean 'n_negatives'"):
        recneg.build_sampler("uniform", n_negative=2)
    with pytest.raises(ConfigError, match="unknown sampler 'unifrom'.*did you mean 'uniform'"):
        recneg.build_sampler("unifrom")
    s = recneg.build_sampler("popularity", alpha="0.5", n_negatives="3")  # CLI strings are coerced
    assert s.config.alpha == 0.5 and s.config.n_negatives == 3


def test_same_generator_seed_same_draws(tiny_train):
    a = uniform_pool(
        tiny_train.positives("cpu"), torch.tensor([0, 1, 2]), 5, torch.Generator().manual_seed(3)
    )
    b = uniform_pool(
        tiny_train.positives("cpu"), torch.tensor([0, 1, 2]), 5, torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)

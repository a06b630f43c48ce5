import numpy as np
import pytest
import torch

from recneg.data.interactions import Interactions, Split
from recneg.data.synthetic import SyntheticConfig, generate

torch.set_num_threads(1)


def random_split(inter: Interactions, seed: int = 0, valid: float = 0.1, test: float = 0.1) -> Split:
    r = np.random.default_rng(seed).random(len(inter))
    return Split(
        train=inter.subset(r >= valid + test),
        test=inter.subset(r < test),
        valid=inter.subset((r >= test) & (r < valid + test)) if valid > 0 else None,
        name="synthetic-test",
    )


@pytest.fixture(scope="session")
def small_split() -> Split:
    """About 200 users × 300 items: a training epoch takes milliseconds."""
    data = generate(SyntheticConfig(n_users=200, n_items=300, mean_degree=20, seed=3)).interactions
    return random_split(data)


@pytest.fixture
def tiny_train() -> Interactions:
    # user 0: {1, 2}; user 1: {0}; user 2: {3, 4, 5}
    return Interactions([0, 0, 1, 2, 2, 2], [1, 2, 0, 3, 4, 5], n_users=3, n_items=8)

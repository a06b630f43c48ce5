"""A seeded synthetic implicit-feedback generator with a known ground truth.

Users and items get latent factors; item popularity follows a power law; each user's interactions are
drawn without replacement with probability ∝ ``popularity_j · exp(⟨x_u, y_j⟩ / temperature)``. So a
model that learns the latent structure beats a popularity ranking, and a popularity ranking beats random.

The generator also holds back a *false-negative set* per user (items the user would like, drawn from the
same distribution, never shown to training or test) for the false-negative protocols of PDNS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recneg._validation import require_float, require_int
from recneg.data.interactions import Interactions


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = field(default=600, metadata={"help": "number of users"})
    n_items: int = field(default=800, metadata={"help": "number of items"})
    n_factors: int = field(default=8, metadata={"help": "latent dimension of the ground truth"})
    mean_degree: float = field(default=30.0, metadata={"help": "mean interactions per user"})
    min_degree: int = field(default=8, metadata={"help": "minimum interactions per user"})
    popularity_exponent: float = field(default=0.8, metadata={"help": "item popularity ∝ rank^-exponent"})
    temperature: float = field(default=0.25, metadata={"help": "softness of the latent preference"})
    n_false_negatives: int = field(default=0, metadata={"help": "held-back liked items per user"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self):
        require_int("n_users", self, low=1)
        require_int("n_items", self, low=2)
        require_int("n_factors", self, low=1)
        require_float("mean_degree", self, low=1.0)
        require_int("min_degree", self, low=1)
        require_float("popularity_exponent", self, low=0.0)
        require_float("temperature", self, low=0.0, low_open=True)
        require_int("n_false_negatives", self, low=0)
        require_int("seed", self, low=0)


@dataclass
class SyntheticData:
    """Generated interactions with timestamps, and the held-back false negatives (``[n_users]`` lists)."""

    interactions: Interactions
    false_negatives: Interactions
    user_factors: np.ndarray
    item_factors: np.ndarray


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate a dataset. Same config (seed included) ⇒ identical output."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    x = rng.normal(size=(cfg.n_users, cfg.n_factors))
    y = rng.normal(size=(cfg.n_items, cfg.n_factors))
    ranks = rng.permutation(cfg.n_items) + 1
    log_pop = -cfg.popularity_exponent * np.log(ranks)
    logits = (x @ y.T) / (np.sqrt(cfg.n_factors) * cfg.temperature) + log_pop  # [n_users, n_items]
    max_deg = cfg.n_items - 1 - cfg.n_false_negatives
    degrees = np.clip(
        rng.geometric(1.0 / cfg.mean_degree, size=cfg.n_users), cfg.min_degree, max(cfg.min_degree, max_deg)
    )
    degrees = np.minimum(degrees, max_deg)
    # Gumbel top-k = sampling without replacement ∝ exp(logits)
    keys = logits + rng.gumbel(size=logits.shape)
    order = np.argsort(-keys, axis=1)
    position = np.arange(cfg.n_items)[None, :]
    taken = position < degrees[:, None]
    users, items = np.nonzero(taken)[0], order[taken]
    held = (position >= degrees[:, None]) & (position < degrees[:, None] + cfg.n_false_negatives)
    fn_users, fn_items = np.nonzero(held)[0], order[held]
    timestamps = rng.permutation(users.size).astype(np.float64)  # a random global clock
    inter = Interactions(users, items, cfg.n_users, cfg.n_items, timestamps=timestamps)
    fn = Interactions(fn_users, fn_items, cfg.n_users, cfg.n_items)
    return SyntheticData(inter, fn, x, y)

"""Index samplers that ignore the model: uniform (RNS) and popularity (PNS)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from recneg._validation import require_bool, require_float, require_int
from recneg.errors import DataError
from recneg.models.base import ModelView
from recneg.registry import SAMPLERS
from recneg.samplers.base import Negatives, Sampler, categorical_pool, uniform_pool


@dataclass(frozen=True)
class UniformConfig:
    n_negatives: int = field(default=1, metadata={"help": "negatives per positive"})
    exclude_positives: bool = field(
        default=True, metadata={"help": "redraw training positives (membership test)"}
    )

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        require_bool("exclude_positives", self)


@SAMPLERS.register("uniform", config=UniformConfig, help="RNS: uniform over the user's non-positives")
class UniformSampler(Sampler):
    """Random negative sampling (RNS): ``j ~ Uniform(I \\ I_u^+)``.

    Shape: ``users, pos [B]`` -> ``Negatives(emb [B, n_negatives, d], ids [B, n_negatives])``.
    """

    emits_item_rows = True

    def __init__(self, config: UniformConfig | None = None):
        super().__init__(config or UniformConfig())
        self.excludes_positives = self.config.exclude_positives

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        ids = uniform_pool(
            self.positives(users.device),
            users,
            self.config.n_negatives,
            generator,
            self.config.exclude_positives,
        )
        return Negatives(emb=view.item_emb(ids), ids=ids)


@dataclass(frozen=True)
class PopularityConfig:
    n_negatives: int = field(default=1, metadata={"help": "negatives per positive"})
    alpha: float = field(
        default=1.0, metadata={"help": "exponent: p(j) ∝ c_j^alpha (1.0 RecBole, 0.75 word2vec)"}
    )
    exclude_positives: bool = field(default=True, metadata={"help": "redraw training positives"})

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        require_float("alpha", self, low=0.0)
        require_bool("exclude_positives", self)


@SAMPLERS.register("popularity", config=PopularityConfig, help="PNS: p(j) ∝ c_j^alpha over non-positives")
class PopularitySampler(Sampler):
    """Popularity negative sampling (PNS): ``p(j) ∝ c_j^α``, ``c_j`` the training count of item ``j``.

    Items with ``c_j = 0`` get probability 0. Training positives are redrawn.

    Attributes:
        item_prob_: ``[n_items]`` float64 proposal probabilities after :meth:`bind`.

    Shape: ``users, pos [B]`` -> ``Negatives(emb [B, n_negatives, d], ids [B, n_negatives], log_q [B, n])``.
    """

    emits_item_rows = True

    def __init__(self, config: PopularityConfig | None = None):
        super().__init__(config or PopularityConfig())
        self.excludes_positives = self.config.exclude_positives

    def bind(self, train) -> PopularitySampler:
        super().bind(train)
        counts = torch.as_tensor(train.item_counts, dtype=torch.float64)
        weights = torch.where(counts > 0, counts.pow(self.config.alpha), torch.zeros_like(counts))
        if float(weights.sum()) <= 0:
            raise DataError("popularity sampler: the training data has no interactions")
        self.item_prob_ = weights / weights.sum()
        self._prob_cache: dict[str, Tensor] = {}
        return self

    def _probs(self, device) -> Tensor:
        key = str(device)
        if key not in self._prob_cache:
            self._prob_cache[key] = self.item_prob_.to(device)
        return self._prob_cache[key]

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        probs = self._probs(users.device)
        ids = categorical_pool(
            self.positives(users.device),
            users,
            self.config.n_negatives,
            probs,
            generator,
            self.config.exclude_positives,
        )
        return Negatives(emb=view.item_emb(ids), ids=ids, log_q=probs[ids].log().to(view.user_emb.dtype))

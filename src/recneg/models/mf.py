"""Matrix factorisation: ``r_ui = ⟨e_u, e_i⟩`` with one trainable table per side."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from recneg._validation import require_choice, require_int
from recneg.models.base import Recommender, TableView
from recneg.registry import MODELS


@dataclass(frozen=True)
class MFConfig:
    dim: int = field(default=64, metadata={"help": "embedding size d"})
    init: str = field(
        default="xavier", metadata={"help": "xavier (uniform) or normal (N(0, 0.1²), WWW'23 code)"}
    )

    def __post_init__(self):
        require_int("dim", self, low=1)
        require_choice("init", self, {"xavier", "normal"})


@MODELS.register("mf", config=MFConfig, help="Matrix factorisation, r_ui = <e_u, e_i> (L = 0)")
class MF(Recommender):
    """Matrix factorisation.

    Args:
        n_users, n_items: id space.
        config: :class:`MFConfig` (``dim`` = d).

    Attributes:
        user_embedding: ``nn.Embedding [n_users, d]`` (``E_u``).
        item_embedding: ``nn.Embedding [n_items, d]`` (``E_i``).
        sparse_gradients: gather rows with row-sparse gradients (set by the trainer for ``sparse_adam``).
    """

    provides_layers = True
    supports_sparse_gradients = True

    def __init__(self, n_users: int, n_items: int, config: MFConfig | None = None):
        super().__init__()
        self.config = config or MFConfig()
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.user_embedding = nn.Embedding(self.n_users, self.config.dim)
        self.item_embedding = nn.Embedding(self.n_items, self.config.dim)
        self.reset_parameters()

    @classmethod
    def from_interactions(cls, train, config=None):
        return cls(train.n_users, train.n_items, config)

    def reset_parameters(self) -> None:
        for emb in (self.user_embedding, self.item_embedding):
            if self.config.init == "xavier":
                nn.init.xavier_uniform_(emb.weight)
            else:
                nn.init.normal_(emb.weight, std=0.1)

    def view(self, users: Tensor, pos: Tensor) -> TableView:
        u, i = self.user_embedding.weight, self.item_embedding.weight
        # MF exposes its single layer (L + 1 = 1) so per-layer samplers (ANS, MixGCF) run with MF semantics.
        return TableView(
            users,
            pos,
            u,
            i,
            u,
            i,
            u.unsqueeze(1),
            i.unsqueeze(1),
            model_name="mf",
            sparse=self.sparse_gradients,
        )

    @torch.no_grad()
    def tables(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight.detach(), self.item_embedding.weight.detach()

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, n_items={self.n_items}, dim={self.config.dim}"

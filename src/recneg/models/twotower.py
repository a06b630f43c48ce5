"""Two-tower retrieval model: a query tower over user id + user features, an item tower over item id + item
features, scored by inner product ``s(u, i) = ⟨f(u), g(i)⟩`` (Yi et al., RecSys 2019; Yang et al., MNS,
WWW 2020 companion).

Each tower concatenates its inputs — an id embedding (``id_dim``), one embedding per categorical field and
one mean-pooled ``EmbeddingBag`` per multi-hot field (``feature_dim`` each), and the dense features as they
are — and runs an MLP with ReLU on the hidden layers and no activation on the top layer. L2 normalisation
and the temperature belong to the loss (``softmax`` loss, ``normalize=True, temperature=0.05``).

Features. ``TwoTower.from_interactions(train, cfg)`` builds id-only towers; attach side features with
:meth:`TwoTower.with_features` (or pass them to the constructor). Attaching features **rebuilds the towers
with fresh parameters**, so do it before creating the optimizer and before loading a checkpoint. The feature
tensors are non-persistent buffers: they move with ``.to(device)`` but are not saved in ``state_dict``
(attach the same features again before ``load_state_dict``).

Cold start. With ``use_item_id=False`` the item tower sees features only, so an item without interactions
gets a meaningful embedding. With ``use_item_id=True`` such an item's id row is never trained.

References:
    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
    Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations",
    WWW 2020 companion (towers with hidden sizes [512, 128], Adagrad lr 0.01).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.data.features import FeatureSet, gather_bags
from recneg.errors import ConfigError, DataError
from recneg.models.base import ModelView, Recommender
from recneg.registry import MODELS


@dataclass(frozen=True)
class TwoTowerConfig:
    hidden: tuple[int, ...] = field(
        default=(256, 64),
        metadata={
            "help": "MLP layer sizes of each tower; the last is the embedding size d (MNS paper: 512,128)"
        },
    )
    id_dim: int = field(default=64, metadata={"help": "size of the user/item id embeddings"})
    feature_dim: int = field(
        default=16, metadata={"help": "embedding size of each categorical/multi-hot field"}
    )
    use_user_id: bool = field(
        default=True, metadata={"help": "feed the user id embedding to the query tower"}
    )
    use_item_id: bool = field(
        default=True,
        metadata={"help": "feed the item id embedding to the item tower (false: cold-start items)"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout after each hidden ReLU"})
    init: str = field(
        default="xavier", metadata={"help": "id/feature embedding init: xavier or normal (std 0.1)"}
    )
    chunk_size: int = field(default=8192, metadata={"help": "ids per chunk when computing full tables"})

    def __post_init__(self):
        hidden = tuple(self.hidden)
        if not hidden:
            raise ConfigError("hidden of TwoTowerConfig must name at least one layer size, got ()")
        for h in hidden:
            require_int("hidden", self, low=1, value=h)
        object.__setattr__(self, "hidden", hidden)
        require_int("id_dim", self, low=1)
        require_int("feature_dim", self, low=1)
        require_bool("use_user_id", self)
        require_bool("use_item_id", self)
        require_float("dropout", self, low=0.0, high=1.0, high_open=True)
        require_choice("init", self, {"xavier", "normal"})
        require_int("chunk_size", self, low=1)

    @property
    def dim(self) -> int:
        """Embedding size ``d`` (the top layer's width)."""
        return self.hidden[-1]


class Tower(nn.Module):
    """One tower: ``ids [...] -> [..., d]``.

    Args:
        n_ids: size of the id space (rows of the id table).
        config: :class:`TwoTowerConfig`.
        features: optional :class:`FeatureSet` with ``n_rows == n_ids``.
        use_id: whether the id embedding is an input.
        side: ``"user"`` or ``"item"`` (error messages).

    Attributes:
        id_embedding: ``nn.Embedding [n_ids, id_dim]`` or ``None``.
        cat_embeddings: one ``nn.Embedding [cardinality, feature_dim]`` per categorical field.
        bag_embeddings: one ``nn.EmbeddingBag [vocab, feature_dim]`` (mean) per multi-hot field.
        mlp: ``nn.Sequential`` of Linear/ReLU(/Dropout), no activation after the last Linear.
        in_dim: width of the concatenated input (0 when the tower has no input).
    """

    # registered buffers, present when the features have such fields (has_categorical, has_dense)
    cat_codes: Tensor  # [n_ids, n_categorical] int64
    dense: Tensor  # [n_ids, n_dense] float32

    def __init__(
        self, n_ids: int, config: TwoTowerConfig, features: FeatureSet | None, use_id: bool, side: str
    ):
        super().__init__()
        self.n_ids, self.side, self.use_id = int(n_ids), side, use_id
        cfg = config
        if features is not None and features.n_rows != self.n_ids:
            raise DataError(
                f"{side} features have {features.n_rows} rows, the model has {self.n_ids} {side}s"
            )
        self.id_embedding = nn.Embedding(self.n_ids, cfg.id_dim) if use_id else None
        fs = features if features is not None and not features.empty else None
        self.cat_embeddings = nn.ModuleList()
        self.bag_embeddings = nn.ModuleList()
        self.bag_names: list[str] = []
        in_dim = cfg.id_dim if use_id else 0
        if fs is not None:
            if fs.categorical is not None:
                self.register_buffer("cat_codes", fs.categorical.long(), persistent=False)
                for card in fs.cardinalities:
                    self.cat_embeddings.append(nn.Embedding(card, cfg.feature_dim))
                    in_dim += cfg.feature_dim
            for k, (name, mh) in enumerate(fs.multi_hot.items()):
                self.register_buffer(f"bag_indices_{k}", mh.indices.long(), persistent=False)
                self.register_buffer(f"bag_offsets_{k}", mh.offsets.long(), persistent=False)
                self.bag_embeddings.append(nn.EmbeddingBag(len(mh.vocab), cfg.feature_dim, mode="mean"))
                self.bag_names.append(name)
                in_dim += cfg.feature_dim
            if fs.dense is not None:
                self.register_buffer("dense", fs.dense.float(), persistent=False)
                in_dim += fs.n_dense
        self.has_categorical = fs is not None and fs.categorical is not None
        self.has_dense = fs is not None and fs.dense is not None
        self.in_dim = in_dim
        layers: list[nn.Module] = []
        width = max(in_dim, 1)
        for k, h in enumerate(cfg.hidden):
            layers.append(nn.Linear(width, h))
            if k < len(cfg.hidden) - 1:
                layers.append(nn.ReLU())
                if cfg.dropout > 0:
                    layers.append(nn.Dropout(cfg.dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        self.reset_parameters(cfg.init)

    def reset_parameters(self, init: str = "xavier") -> None:
        tables = [
            m.weight for m in (self.id_embedding, *self.cat_embeddings, *self.bag_embeddings) if m is not None
        ]
        for w in tables:
            if init == "xavier":
                nn.init.xavier_uniform_(w)
            else:
                nn.init.normal_(w, std=0.1)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def check_ready(self) -> None:
        if self.in_dim == 0:
            raise ConfigError(
                f"the {self.side} tower has no input: use_{self.side}_id=false needs {self.side} features "
                f"(call TwoTower.with_features({self.side}_features=...))"
            )

    def id_rows(self, ids: Tensor) -> Tensor | None:
        """Trainable id-embedding rows ``[..., id_dim]`` (``None`` without an id embedding)."""
        return None if self.id_embedding is None else self.id_embedding(ids)

    def forward(self, ids: Tensor) -> Tensor:
        """Shape: ``ids [...]`` int64 -> ``[..., d]``."""
        self.check_ready()
        flat = ids.reshape(-1)
        parts = []
        if self.id_embedding is not None:
            parts.append(self.id_embedding(flat))
        if self.has_categorical:
            codes = self.cat_codes[flat]
            parts.extend(emb(codes[:, f]) for f, emb in enumerate(self.cat_embeddings))
        # nn.ModuleList iterates as nn.Module; bag_embeddings holds nn.EmbeddingBag only
        for k, bag in enumerate(cast(Iterable[nn.EmbeddingBag], self.bag_embeddings)):
            ind, off = gather_bags(getattr(self, f"bag_indices_{k}"), getattr(self, f"bag_offsets_{k}"), flat)
            parts.append(bag(ind, off[:-1]) if flat.numel() else bag.weight.new_zeros(0, bag.embedding_dim))
        if self.has_dense:
            parts.append(self.dense[flat])
        out = self.mlp(torch.cat(parts, -1))
        return out.reshape(*ids.shape, out.shape[-1])


class TowerView(ModelView):
    """A training step's view of a :class:`TwoTower`.

    ``user_emb`` / ``pos_emb`` are tower outputs for the batch; :meth:`item_emb` runs the item tower on any
    ids (so the CF samplers — uniform, DNS, … — work unchanged); ``item_ego`` returns the trainable item-id
    rows (what R1 regularises; zero-width rows when ``use_item_id=False``). There are no per-layer
    embeddings: per-layer samplers get the clear :class:`ConfigError` of :class:`ModelView`.
    """

    model_name = "twotower"

    def __init__(self, model: TwoTower, users: Tensor, pos: Tensor):
        super().__init__(users, pos)
        self.model = model
        self.user_emb = model.user_tower(users)
        self.pos_emb = model.item_tower(pos)

    def item_emb(self, ids: Tensor) -> Tensor:
        return self.model.item_tower(ids)

    def item_ego(self, ids: Tensor) -> Tensor:
        rows = self.model.item_tower.id_rows(ids)
        return rows if rows is not None else self.pos_emb.new_zeros(*ids.shape, 0)

    @property
    def user_ego(self) -> Tensor:
        rows = self.model.user_tower.id_rows(self.users)
        return rows if rows is not None else self.user_emb.new_zeros(self.users.shape[0], 0)

    def all_items(self) -> Tensor:
        return self.model.item_tower(torch.arange(self.model.n_items, device=self.pos.device))


@MODELS.register(
    "twotower", config=TwoTowerConfig, help="Two-tower MLP over ids + side features (Yi 2019, MNS)"
)
class TwoTower(Recommender):
    """Two-tower retrieval model ``r_ui = ⟨f(u), g(i)⟩``.

    Args:
        n_users, n_items: id space.
        config: :class:`TwoTowerConfig` (``hidden[-1]`` = d).
        user_features, item_features: optional :class:`~recneg.data.features.FeatureSet` aligned to the
            id space (``n_rows`` = ``n_users`` / ``n_items``).

    Attributes:
        user_tower: query tower ``f`` (:class:`Tower`); item_tower: item tower ``g``.

    Shape:
        ``view(users [B], pos [B])`` -> :class:`TowerView` with ``user_emb, pos_emb [B, d]``;
        ``tables()`` -> ``([n_users, d], [n_items, d])``.

    Example::

        model = TwoTower.from_interactions(train, TwoTowerConfig(hidden=(512, 128)))
        model.with_features(*movielens_100k_features("ml-100k", train))
    """

    provides_layers = False

    def __init__(
        self,
        n_users: int,
        n_items: int,
        config: TwoTowerConfig | None = None,
        user_features: FeatureSet | None = None,
        item_features: FeatureSet | None = None,
    ):
        super().__init__()
        self.config = config or TwoTowerConfig()
        self.n_users, self.n_items = int(n_users), int(n_items)
        self._build(user_features, item_features)

    def _build(self, user_features, item_features) -> None:
        device = None
        if hasattr(self, "user_tower"):
            device = next(self.parameters()).device
        self.user_features, self.item_features = user_features, item_features
        self.user_tower = Tower(self.n_users, self.config, user_features, self.config.use_user_id, "user")
        self.item_tower = Tower(self.n_items, self.config, item_features, self.config.use_item_id, "item")
        if device is not None:
            self.to(device)

    @classmethod
    def from_interactions(cls, train, config=None, user_features=None, item_features=None):
        return cls(train.n_users, train.n_items, config, user_features, item_features)

    def with_features(
        self, user_features: FeatureSet | None = None, item_features: FeatureSet | None = None
    ) -> TwoTower:
        """Attach side features (``None`` keeps that side's current features) and rebuild both towers.

        The towers get **fresh parameters**: call this before creating the optimizer. Returns ``self``.
        """
        self._build(
            user_features if user_features is not None else self.user_features,
            item_features if item_features is not None else self.item_features,
        )
        return self

    @property
    def dim(self) -> int:
        return self.config.dim

    def view(self, users: Tensor, pos: Tensor) -> TowerView:
        return TowerView(self, users, pos)

    @torch.no_grad()
    def _encode_all(self, tower: Tower, n: int) -> Tensor:
        device = next(self.parameters()).device
        step = self.config.chunk_size
        chunks = [tower(torch.arange(s, min(s + step, n), device=device)) for s in range(0, n, step)]
        return torch.cat(chunks, 0) if chunks else torch.zeros(0, self.dim, device=device)

    @torch.no_grad()
    def tables(self) -> tuple[Tensor, Tensor]:
        """All user and item embeddings, computed in chunks of ``chunk_size`` in eval mode (no dropout).

        The module's train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            return self._encode_all(self.user_tower, self.n_users), self._encode_all(
                self.item_tower, self.n_items
            )
        finally:
            self.train(was_training)

    @torch.no_grad()
    def item_table(self) -> Tensor:
        """``[n_items, d]`` item embeddings (eval mode), e.g. to export to a retrieval index."""
        return self._eval_encode(self.item_tower, self.n_items)

    @torch.no_grad()
    def user_vectors(self, users: Tensor) -> Tensor:
        """``[C, d]`` query embeddings of ``users [C]`` (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            return self.user_tower(users)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def _eval_encode(self, tower: Tower, n: int) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            return self._encode_all(tower, n)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score_users(self, users: Tensor) -> Tensor:
        """Scores of every item for ``users [C]`` -> ``[C, n_items]`` (only ``users`` are encoded)."""
        return self.user_vectors(users) @ self._eval_encode(self.item_tower, self.n_items).T

    def extra_repr(self) -> str:
        return (
            f"n_users={self.n_users}, n_items={self.n_items}, hidden={self.config.hidden}, "
            f"use_user_id={self.config.use_user_id}, use_item_id={self.config.use_item_id}"
        )

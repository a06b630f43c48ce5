"""Batch samplers: negatives shared by every row of the batch, with their log proposal for logQ correction.

- ``in_batch``: the batch's ``B`` positives are the negatives of every other row (Yi et al. 2019, SBC);
- ``mns``: mixed negative sampling, in-batch plus ``B′`` (``n_uniform``) items drawn uniformly from the whole
  item index each step and passed through the item tower (Yang et al., MNS, WWW 2020 companion);
- ``uniform_corpus`` / ``popularity_corpus``: a classic sampled softmax over ``n`` shared draws from
  ``Uniform(I)`` or ``p(j) ∝ c_j^α`` (for comparison).

All return a :class:`BatchNegatives` (a :class:`Negatives` with ``pos_log_q``) for the ``softmax`` loss:
``emb [n, d]`` shared, ``ids [n]``, ``log_q [n]``, ``mask [B, n]``, ``pos_log_q [B]``.

logQ for in-batch and MNS (ALGORITHMS.md §6.3; decisions of §9.9):

- **Which Q.** The correction depends on the column's *item*, not on the stream that delivered it (either
  stream can deliver any item): ``Q̃_j = p_batch(j) + B′ / n_items`` (``mixture="per_item"``, default). The
  "per-stream" variant corrects in-batch columns with ``p_batch(j)`` and uniform columns with ``B′/n_items``
  (``mixture="per_stream"``, for ablation only).
- **p_batch.** ``frequency="exact"``: ``p_batch(j) = B · q_j``, ``q_j = c_j / |O+|`` from the training counts
  (exact when batches are drawn uniformly from the training interactions, as the trainer does);
  ``frequency="streaming"``: ``p̂(j)`` from the :class:`~recneg.softmax.StreamingFrequencyEstimator` fed with
  each step's positives (updated first, then read; its arrays are buffers, so checkpointed).
- **Scale.** ``q_scale="count"`` (default) keeps the per-step expected count ``Q̃_j``; ``"probability"``
  divides by ``B + B′`` (``Q*_j``). The two differ by ``log(B + B′)``, which cancels only when the positive is
  corrected too.
- **Positive.** ``pos_log_q[b]`` = ``log_q`` of row ``b``'s own in-batch column (the diagonal); the loss uses
  it only with ``correct_positive=True``.

Accidental hits (§6.4): column ``j`` of row ``b`` is masked when its item equals ``i_b``: the diagonal (the
positive itself, scored as class 0 by the loss), another row with the same positive, or a uniform draw of
``i_b`` (``remove_accidental_hits``, default on; off masks the diagonal only). ``mask_user_positives`` also
masks every training positive of ``u_b`` (one ``searchsorted`` over ``B × n`` keys per step).

Several processes (torchrun, :mod:`recneg.distributed`). ``in_batch`` and ``mns`` share negatives across the
whole *global* batch: every rank gathers the ``W`` ranks' positives (ids and embeddings, the latter with
autograd, so each column's gradient returns to the rank that owns the row) and, for MNS, each rank draws
``B′ / W`` uniform items from its own stream and gathers them too, so the columns are the global
``B + B′`` of one process. ``B`` in ``p_batch`` is the global batch size, and the streaming estimator is fed
the global batch's positives on every rank, so its state stays identical across ranks. The corpus samplers
draw their ``n`` shared items per rank (nothing gathered).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.distributed import active_world, gather_ids, gather_with_grad
from recneg.errors import ConfigError, DataError
from recneg.models.base import ModelView
from recneg.registry import SAMPLERS
from recneg.samplers.base import Negatives, Sampler
from recneg.softmax import StreamingFrequencyEstimator


@dataclass
class BatchNegatives(Negatives):
    """:class:`Negatives` of a batch sampler, plus the positive's log proposal.

    Attributes:
        pos_log_q: ``[B]`` ``log Q`` of each row's positive item on the scale of ``log_q`` (used by the
            ``softmax`` loss when ``correct_positive=True``).
    """

    pos_log_q: Tensor | None = None


# --------------------------------------------------------------------------------------------- configs
def _check_masking(cfg) -> None:
    require_bool("remove_accidental_hits", cfg)
    require_bool("mask_user_positives", cfg)
    require_choice("q_scale", cfg, {"count", "probability"})


@dataclass(frozen=True)
class InBatchConfig:
    frequency: str = field(
        default="exact",
        metadata={"help": "exact (q_j = c_j/|O+| from training counts) or streaming (Yi 2019)"},
    )
    q_scale: str = field(
        default="count", metadata={"help": "count: log(B q_j + B'/n) | probability: divided by B + B'"}
    )
    remove_accidental_hits: bool = field(
        default=True, metadata={"help": "mask columns whose item is the row's positive"}
    )
    mask_user_positives: bool = field(
        default=False, metadata={"help": "also mask any training positive of the row's user"}
    )
    stream_alpha: float = field(default=0.01, metadata={"help": "streaming estimator learning rate α"})
    stream_init_gap: float = field(default=100.0, metadata={"help": "streaming estimator initial Bgap"})
    n_hashes: int = field(default=1, metadata={"help": "streaming estimator hash functions m (max-gap rule)"})
    hash_size: int = field(default=0, metadata={"help": "streaming estimator array size H (0 = n_items)"})
    hash_seed: int = field(default=0, metadata={"help": "seed of the streaming estimator's hash functions"})

    def __post_init__(self):
        require_choice("frequency", self, {"exact", "streaming"})
        _check_masking(self)
        require_float("stream_alpha", self, low=0.0, high=1.0, low_open=True)
        require_float("stream_init_gap", self, low=1.0)
        require_int("n_hashes", self, low=1)
        require_int("hash_size", self, low=0)
        require_int("hash_seed", self, low=0)


@dataclass(frozen=True)
class MNSConfig(InBatchConfig):
    n_uniform: int = field(
        default=1024, metadata={"help": "B': items drawn uniformly from the index per step"}
    )
    mixture: str = field(
        default="per_item", metadata={"help": "per_item: Q~_j = B q_j + B'/n for every column | per_stream"}
    )

    def __post_init__(self):
        super().__post_init__()
        require_int("n_uniform", self, low=0)
        require_choice("mixture", self, {"per_item", "per_stream"})


@dataclass(frozen=True)
class UniformCorpusConfig:
    n_negatives: int = field(default=1024, metadata={"help": "shared draws from Uniform(I) per step"})
    q_scale: str = field(
        default="count", metadata={"help": "count: log(n/n_items) | probability: log(1/n_items)"}
    )
    remove_accidental_hits: bool = field(
        default=True, metadata={"help": "mask draws equal to the row's positive"}
    )
    mask_user_positives: bool = field(
        default=False, metadata={"help": "also mask any training positive of the row's user"}
    )

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        _check_masking(self)


@dataclass(frozen=True)
class PopularityCorpusConfig(UniformCorpusConfig):
    alpha: float = field(default=1.0, metadata={"help": "exponent: p(j) ∝ c_j^alpha (0.75 word2vec)"})

    def __post_init__(self):
        super().__post_init__()
        require_float("alpha", self, low=0.0)


# --------------------------------------------------------------------------------------------- helpers
def accidental_hit_mask(pos: Tensor, ids: Tensor) -> Tensor:
    """``[B, n]`` bool, True where column ``j``'s item equals row ``b``'s positive.

    Shape: ``pos [B]``, ``ids [n]`` -> ``[B, n]``.
    """
    return ids.unsqueeze(0) == pos.unsqueeze(1)


def _finish_mask(sampler: Sampler, mask: Tensor | None, users: Tensor, ids: Tensor) -> Tensor | None:
    if sampler.config.mask_user_positives:
        hits = sampler.positives(users.device).contains(users.unsqueeze(1), ids.unsqueeze(0))
        mask = hits if mask is None else mask | hits
    return mask


# --------------------------------------------------------------------------------------------- in-batch / MNS
@SAMPLERS.register(
    "in_batch", config=InBatchConfig, help="in-batch softmax: the batch's positives, logQ-corrected"
)
class InBatchSampler(Sampler):
    """In-batch negatives (SBC batch softmax, Yi et al. 2019): each row's positive is the others' negative.

    Equivalent to :class:`MNSSampler` with ``n_uniform = 0`` (``B′ = 0``).

    Attributes:
        item_freq_: ``[n_items]`` float64 ``q_j = c_j / |O+|`` after :meth:`bind`.
        estimator: :class:`~recneg.softmax.StreamingFrequencyEstimator` (``frequency="streaming"`` only;
            created by :meth:`bind`, so bind before ``load_state_dict``).

    Shape:
        ``users, pos [B]`` -> ``BatchNegatives(emb [B + B′, d] shared, ids [B + B′], log_q [B + B′],
        mask [B, B + B′], pos_log_q [B])``.
    """

    excludes_positives = False

    def __init__(self, config: InBatchConfig | None = None):
        super().__init__(config or InBatchConfig())
        self._freq_cache: dict[str, Tensor] = {}

    @property
    def n_uniform(self) -> int:
        return int(getattr(self.config, "n_uniform", 0))

    @property
    def mixture(self) -> str:
        return getattr(self.config, "mixture", "per_item")

    def bind(self, train) -> InBatchSampler:
        super().bind(train)
        counts = torch.as_tensor(train.item_counts, dtype=torch.float64)
        if float(counts.sum()) <= 0:
            raise DataError(f"{type(self).__name__}: the training data has no interactions")
        self.item_freq_ = counts / counts.sum()
        self._freq_cache = {}
        if self.config.frequency == "streaming":
            c = self.config
            self.estimator = StreamingFrequencyEstimator(
                train.n_items, c.hash_size, c.n_hashes, c.stream_alpha, c.stream_init_gap, c.hash_seed
            )
        return self

    def _item_freq(self, device) -> Tensor:
        key = str(device)
        if key not in self._freq_cache:
            self._freq_cache[key] = self.item_freq_.to(device)
        return self._freq_cache[key]

    def batch_frequency(self, ids: Tensor, batch_size: int) -> Tensor:
        """``p_batch(j)`` of ``ids [...]`` (float64): ``B · q_j`` (exact) or the streaming ``p̂(j)``."""
        if self.config.frequency == "streaming":
            return self.estimator.estimate(ids)
        return batch_size * self._item_freq(ids.device)[ids]

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> BatchNegatives:
        if self.train_ is None:
            raise ConfigError(f"{type(self).__name__} is not bound to training data: call .bind(train) first")
        device, n_rows, n_uniform = pos.device, pos.numel(), self.n_uniform
        n_items = self.train_.n_items
        # the global batch's positives; this rank's rows are columns offset .. offset + n_rows
        batch_emb, offset = gather_with_grad(view.pos_emb)
        batch_ids = gather_ids(pos)
        n_batch = batch_ids.numel()  # B of the global batch
        if self.config.frequency == "streaming":
            if self.estimator.gap.device != device:
                self.estimator.to(device)
            self.estimator.update(batch_ids)
        if n_uniform:
            drawn = self._draw_uniform(n_items, device, generator)
            drawn_emb, _ = gather_with_grad(view.item_emb(drawn))
            ids = torch.cat([batch_ids, gather_ids(drawn)])
            emb = torch.cat([batch_emb, drawn_emb], 0)
        else:
            ids, emb = batch_ids, batch_emb
        uniform_count = n_uniform / n_items  # expected count of any one item in the uniform stream, B'/n
        if self.mixture == "per_item":
            q = self.batch_frequency(ids, n_batch) + uniform_count  # Q~_j  [B + B']
        else:  # per_stream
            q = torch.cat(
                [
                    self.batch_frequency(batch_ids, n_batch),
                    torch.full((n_uniform,), uniform_count, dtype=torch.float64, device=device),
                ]
            )
        if self.config.q_scale == "probability":
            q = q / (n_batch + n_uniform)  # Q*_j
        log_q = q.clamp_min(torch.finfo(torch.float64).tiny).log().to(emb.dtype)
        own = slice(offset, offset + n_rows)  # each row's own (diagonal) column
        if self.config.remove_accidental_hits:
            mask = accidental_hit_mask(pos, ids)  # the diagonal included
        else:
            mask = torch.zeros(n_rows, ids.numel(), dtype=torch.bool, device=device)
            mask[:, own].fill_diagonal_(True)
        # count_nonzero, not sum: a bool sum first converts the whole [B, n] mask to int64
        n_hits = torch.count_nonzero(mask) - n_rows  # accidental hits, the diagonal excluded
        stats = {"accidental_hits": n_hits.detach().float() / max(n_rows, 1)}  # 0-d tensor: no device sync
        return BatchNegatives(
            emb=emb,
            ids=ids,
            log_q=log_q,
            mask=_finish_mask(self, mask, users, ids),
            pos_log_q=log_q[own],
            stats=stats,
        )

    def _draw_uniform(self, n_items: int, device, generator) -> Tensor:
        """This rank's share of the step's ``B′`` uniform items: ``[B′ / W]`` ids (all ``B′`` alone)."""
        world = active_world()
        if self.n_uniform % world:
            raise ConfigError(
                f"{type(self).__name__}: n_uniform={self.n_uniform} must be divisible by the number of "
                f"processes ({world}): each rank draws n_uniform / {world} of them"
            )
        return torch.randint(n_items, (self.n_uniform // world,), device=device, generator=generator)


@SAMPLERS.register(
    "mns", config=MNSConfig, help="MNS: in-batch + B' uniform items from the index, mixture logQ"
)
class MNSSampler(InBatchSampler):
    """Mixed negative sampling (Yang et al., WWW 2020 companion): in-batch + ``B′`` uniform corpus items.

    Each step draws ``n_uniform`` = ``B′`` item ids i.i.d. from ``Uniform(I)`` (training positives included:
    masked only when they are the row's positive, or with ``mask_user_positives``), runs them through the item
    tower (they receive gradient), and appends them to the in-batch columns:
    ``V = concat(V_B, V_B′)`` ``[B + B′, d]``, logits ``U Vᵀ`` ``[B, B + B′]``, label = column ``b``.

    ``log_q`` follows the module docstring: ``log Q̃_j = log(p_batch(j) + B′/n_items)`` by default.
    ``n_uniform = 0`` is the plain logQ-corrected in-batch softmax.

    References:
        Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations",
        WWW 2020 companion, Eq. 5 (defaults: towers [512, 128], Adagrad lr 0.01, best B′ = 8192).
    """

    def __init__(self, config: MNSConfig | None = None):
        super().__init__(config or MNSConfig())


# --------------------------------------------------------------------------------------------- corpus
@SAMPLERS.register(
    "uniform_corpus", config=UniformCorpusConfig, help="sampled softmax over shared Uniform(I) draws"
)
class UniformCorpusSampler(Sampler):
    """Sampled softmax over ``n_negatives`` draws from ``Uniform(I)`` shared by the batch.

    ``log_q = log(n / n_items)`` (expected count, ``q_scale="count"``) or ``log(1 / n_items)``; the positive's
    term ``pos_log_q`` is the same constant (it would be drawn with the same probability).

    Shape:
        ``users, pos [B]`` -> ``BatchNegatives(emb [n, d] shared, ids [n], log_q [n], mask [B, n],
        pos_log_q [B])``.
    """

    excludes_positives = False

    def __init__(self, config: UniformCorpusConfig | None = None):
        super().__init__(config or UniformCorpusConfig())

    def proposal(self, device) -> Tensor | None:
        """``[n_items]`` float64 proposal ``p(j)``, or ``None`` for the uniform one."""
        return None

    def _draw(self, n: int, device, generator) -> Tensor:
        return torch.randint(self.bound_train.n_items, (n,), device=device, generator=generator)

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> BatchNegatives:
        if self.train_ is None:
            raise ConfigError(f"{type(self).__name__} is not bound to training data: call .bind(train) first")
        n, device = self.config.n_negatives, pos.device
        ids = self._draw(n, device, generator)
        emb = view.item_emb(ids)
        probs = self.proposal(device)
        if probs is None:
            p_ids = torch.full((n,), 1.0 / self.train_.n_items, dtype=torch.float64, device=device)
            p_pos = torch.full((pos.numel(),), 1.0 / self.train_.n_items, dtype=torch.float64, device=device)
        else:
            p_ids, p_pos = probs[ids], probs[pos]
        scale = n if self.config.q_scale == "count" else 1
        tiny = torch.finfo(torch.float64).tiny
        log_q = (scale * p_ids).clamp_min(tiny).log().to(emb.dtype)
        pos_log_q = (scale * p_pos).clamp_min(tiny).log().to(emb.dtype)
        mask = accidental_hit_mask(pos, ids) if self.config.remove_accidental_hits else None
        stats = (
            {"accidental_hits": torch.count_nonzero(mask).float() / max(pos.numel(), 1)}
            if mask is not None
            else {}
        )
        mask = _finish_mask(self, mask, users, ids)
        return BatchNegatives(emb=emb, ids=ids, log_q=log_q, mask=mask, pos_log_q=pos_log_q, stats=stats)


@SAMPLERS.register(
    "popularity_corpus",
    config=PopularityCorpusConfig,
    help="sampled softmax over shared p(j) ∝ c_j^alpha draws",
)
class PopularityCorpusSampler(UniformCorpusSampler):
    """Sampled softmax over ``n_negatives`` shared draws from ``p(j) ∝ c_j^α`` (items with ``c_j = 0``: 0).

    ``log_q = log(n · p(j))`` (count) or ``log p(j)``; ``pos_log_q = log(n · p(i_b))`` likewise.

    Attributes:
        item_prob_: ``[n_items]`` float64 proposal after :meth:`bind`.
    """

    def __init__(self, config: PopularityCorpusConfig | None = None):
        super().__init__(config or PopularityCorpusConfig())
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def bind(self, train) -> PopularityCorpusSampler:
        super().bind(train)
        counts = torch.as_tensor(train.item_counts, dtype=torch.float64)
        weights = torch.where(counts > 0, counts.pow(self.config.alpha), torch.zeros_like(counts))
        if float(weights.sum()) <= 0:
            raise DataError("popularity_corpus sampler: the training data has no interactions")
        self.item_prob_ = weights / weights.sum()
        self._cache = {}
        return self

    def _tables(self, device) -> tuple[Tensor, Tensor]:
        key = str(device)
        if key not in self._cache:
            probs = self.item_prob_.to(device)
            cdf = torch.cumsum(probs, 0)
            self._cache[key] = (probs, cdf / cdf[-1])
        return self._cache[key]

    def proposal(self, device) -> Tensor:
        return self._tables(device)[0]

    def _draw(self, n: int, device, generator) -> Tensor:
        cdf = self._tables(device)[1]
        u = torch.rand(n, device=device, generator=generator, dtype=torch.float64)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=self.bound_train.n_items - 1)

"""Candidate selectors: score a pool of real items without gradient, then keep some of them or weight them.

Registered samplers (ALGORITHMS.md §2, §7.3, §7.4, §7.6):

- ``dns``: DNS, the top-1 of ``n_candidates`` candidates (Zhang et al., SIGIR 2013);
- ``dns_mn``: DNS(M, N), the top-``n_selected`` of ``n_candidates``, weight ``1/M`` (Shi et al., WWW 2023);
- ``softmax_v``: Softmax-v(ρ, N), softmax weights over the whole pool with an adaptive temperature (WWW 2023);
- ``srns``: SRNS, a per-user memory and a variance-boosted selection (Ding et al., NeurIPS 2020);
- ``adasir`` / ``pris``: importance resampling with and without a per-user pool (Chen et al., WWW 2022);
- ``gdns``: a reading of GDNS (Zhu et al., WWW 2022) from its public abstract only (see :class:`GDNSSampler`).

Every sampler here draws its pool from ``uniform_excl`` (or the popularity proposal with the training
positives redrawn) unless ``exclude_positives=False``, scores it under ``torch.no_grad()`` and gathers only
the chosen rows with gradient through :meth:`ModelView.item_emb`. Candidate weights are always detached.
Per-epoch state (SRNS memory, AdaSIR pools, GDNS trackers) lives in registered buffers, so a ``state_dict``
checkpoints it; it is refreshed in :meth:`Sampler.on_epoch_start` from ``model.tables()``, in chunks of users
or of training pairs, without a Python loop over users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.errors import ConfigError, DataError
from recneg.models.base import ModelView, score_rows
from recneg.registry import SAMPLERS
from recneg.samplers.base import Negatives, Sampler, categorical_pool, scored_uniform_pool, uniform_pool

PROPOSALS = {"uniform", "popularity"}
_CHUNK = 4096  # users (or training pairs, x8) per chunk in epoch-level scoring


# ============================================================================================ helpers
def _require_common(cfg) -> None:
    require_bool("exclude_positives", cfg)
    require_choice("proposal", cfg, PROPOSALS)
    require_float("alpha", cfg, low=0.0)


class _ProposalSampler(Sampler):
    """Shared proposal machinery: ``uniform`` (``uniform_excl`` / ``uniform_all``) or ``popularity(α)``.

    Attributes:
        item_prob_: ``[n_items]`` float64 popularity probabilities ``∝ c_j^α`` after :meth:`bind`
            (``None`` for the uniform proposal).
    """

    emits_item_rows = True

    def __init__(self, config):
        super().__init__(config)
        self.excludes_positives = self.config.exclude_positives
        self.item_prob_: Tensor | None = None
        self._prob_cache: dict[str, Tensor] = {}

    def bind(self, train):
        super().bind(train)
        self._prob_cache = {}
        self.item_prob_ = None
        if self.config.proposal == "popularity":
            counts = torch.as_tensor(train.item_counts, dtype=torch.float64)
            weights = torch.where(counts > 0, counts.pow(self.config.alpha), torch.zeros_like(counts))
            if float(weights.sum()) <= 0:
                raise DataError(f"{type(self).__name__}: the training data has no interactions")
            self.item_prob_ = weights / weights.sum()
        return self

    def _probs(self, device) -> Tensor | None:
        if self.item_prob_ is None:
            return None
        key = str(device)
        if key not in self._prob_cache:
            self._prob_cache[key] = self.item_prob_.to(device)
        return self._prob_cache[key]

    def _draw(self, users: Tensor, n: int, generator) -> tuple[Tensor, Tensor | None]:
        """``n`` proposal draws per row and their log proposal probability (``None`` when uniform).

        Shape: ``users [B] -> (ids [B, n], log_q [B, n] float32 or None)``.
        """
        index = self.positives(users.device)
        probs = self._probs(users.device)
        if probs is None:
            return uniform_pool(index, users, n, generator, self.config.exclude_positives), None
        ids = categorical_pool(index, users, n, probs, generator, self.config.exclude_positives)
        return ids, probs[ids].log().float()

    def _scored_draw(
        self, users: Tensor, n: int, view: ModelView, generator
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """:meth:`_draw` and ``view.score`` of the pool, the uniform proposal's in one compiled pass where
        it serves (:func:`~recneg.samplers.base.scored_uniform_pool`; the same draws and scores).

        Shape: ``users [B] -> (ids [B, n], log_q [B, n] or None, scores [B, n])``.
        """
        if self.item_prob_ is None and self.config.exclude_positives:
            index = self.positives(users.device)
            pool, scores = scored_uniform_pool(index, users, n, view, generator)
            return pool, None, scores
        pool, log_q = self._draw(users, n, generator)
        return pool, log_q, view.score(pool)


def _stat(x: Tensor) -> Tensor:
    """A per-batch diagnostic as a detached 0-d tensor (the trainer sums them on device: no sync)."""
    return x.detach().float()


def _reset_mirrors(module, incompatible_keys) -> None:
    module._ready_py = None
    module._epoch_py = None


class _EpochState(nn.Module):
    """Python mirrors of the scalar buffers ``initialized_`` and ``epoch_``, so ``forward`` reads them
    without a device sync; the mirrors are dropped after ``load_state_dict`` and re-read once."""

    initialized_: Tensor
    epoch_: Tensor

    def _init_mirrors(self) -> None:
        self._ready_py: bool | None = None
        self._epoch_py: int | None = None
        self.register_load_state_dict_post_hook(_reset_mirrors)

    def _ready(self) -> bool:
        if self._ready_py is None:
            self._ready_py = bool(self.initialized_)
        return self._ready_py

    def _set_ready(self, value: bool) -> None:
        self.initialized_.fill_(value)
        self._ready_py = value

    def _epoch(self) -> int:
        if self._epoch_py is None:
            self._epoch_py = int(self.epoch_)
        return self._epoch_py

    def _set_epoch(self, epoch: int) -> None:
        self.epoch_.fill_(int(epoch))
        self._epoch_py = int(epoch)


def _user_chunks(n_users: int, device, size: int = _CHUNK):
    for start in range(0, n_users, size):
        yield torch.arange(start, min(start + size, n_users), device=device)


def _table_scores(user_table: Tensor, item_table: Tensor, users: Tensor, ids: Tensor) -> Tensor:
    """``r_uj`` from full tables, without gradient (:func:`recneg.models.base.score_rows`: on CPU the rows
    are read in place, not gathered into a ``[C, n, d]`` copy). Shape: ``users [C], ids [C, n] -> [C, n]``."""
    return score_rows(item_table, user_table[users], ids)


def _gumbel_topk(logits: Tensor, k: int, generator) -> Tensor:
    """Indices of ``k`` draws without replacement from ``softmax(logits)`` per row (Gumbel top-k).

    Shape: ``logits [C, K] -> [C, k]`` int64.
    """
    u = torch.rand(logits.shape, device=logits.device, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() + gumbel).topk(k, dim=1).indices


def _duplicate_mask(ids: Tensor) -> Tensor:
    """True at every entry equal to an earlier entry of its row. Shape: ``[C, K] -> [C, K]`` bool."""
    sorted_ids, order = torch.sort(ids, dim=1, stable=True)
    dup_sorted = torch.zeros_like(ids, dtype=torch.bool)
    dup_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    mask = torch.zeros_like(dup_sorted)
    mask.scatter_(1, order, dup_sorted)
    return mask


def _pair_index(index, users: Tensor, items: Tensor) -> Tensor:
    """Position of each training pair ``(u, i)`` in CSR order (the order of ``PositiveIndex.keys``)."""
    return torch.searchsorted(index.keys, users * index.n_items + items)


# ============================================================================================ DNS
@dataclass(frozen=True)
class DNSConfig:
    n_candidates: int = field(default=32, metadata={"help": "pool size N per positive (PDNS grid 8-64)"})
    exclude_positives: bool = field(default=True, metadata={"help": "redraw training positives"})
    proposal: str = field(default="uniform", metadata={"help": "pool proposal: uniform | popularity"})
    alpha: float = field(default=1.0, metadata={"help": "popularity exponent, q_j ∝ c_j^alpha"})

    def __post_init__(self):
        require_int("n_candidates", self, low=1)
        _require_common(self)


@dataclass(frozen=True)
class DNSMNConfig:
    n_candidates: int = field(default=32, metadata={"help": "pool size N per positive (WWW'23 code: 200)"})
    n_selected: int = field(default=2, metadata={"help": "top-M kept, weight 1/M each (M in DNS(M,N))"})
    exclude_positives: bool = field(default=True, metadata={"help": "redraw training positives"})
    proposal: str = field(default="uniform", metadata={"help": "pool proposal: uniform | popularity"})
    alpha: float = field(default=1.0, metadata={"help": "popularity exponent, q_j ∝ c_j^alpha"})

    def __post_init__(self):
        require_int("n_candidates", self, low=1)
        require_int("n_selected", self, low=1)
        if self.n_selected > self.n_candidates:
            raise ConfigError(
                f"n_selected of DNSMNConfig must be an int <= n_candidates ({self.n_candidates}), "
                f"got {self.n_selected}"
            )
        _require_common(self)


def _top_one_compiled(pool: Tensor, scores: Tensor) -> tuple[Tensor, dict[str, Tensor]] | None:
    """DNS's choice (``ids [B, 1]``) and pool statistics in one compiled pass over ``scores [B, n]``
    (:func:`recneg.kernels.row_max`), or ``None`` where it does not serve (not CPU float32, no numba)."""
    from recneg import kernels

    if not (
        scores.device.type == "cpu"
        and scores.dtype == torch.float32
        and scores.dim() == 2
        and scores.shape[1] > 0
        and kernels.ready("row_max")
    ):
        return None
    if pool.device.type != "cpu" or pool.dtype != torch.int64 or pool.shape != scores.shape:
        return None
    chosen, _, spread, gap = kernels.row_max(scores.detach().contiguous().numpy(), pool.contiguous().numpy())
    ids = torch.from_numpy(chosen).view(-1, 1)
    stats = {
        "pool_score_spread": torch.tensor(spread, dtype=torch.float32),
        "chosen_minus_pool_mean": torch.tensor(gap, dtype=torch.float32),
    }
    return ids, stats


def _topk_negatives(pool: Tensor, scores: Tensor, k: int, view: ModelView, weighted: bool) -> Negatives:
    if k == 1 and not weighted:
        top_one = _top_one_compiled(pool, scores)
        if top_one is not None:
            ids, stats = top_one
            return Negatives(emb=view.item_emb(ids), ids=ids, weight=None, stats=stats, pool_ids=pool)
    # k = 1 (DNS): one max instead of topk + max (on CPU topk over [2048, 32] took 4x a max)
    top_values, top_indices = scores.max(1, keepdim=True) if k == 1 else scores.topk(k, dim=1)
    ids = pool.gather(1, top_indices)
    best = top_values[:, 0] if k == 1 else scores.amax(1)
    stats = {  # amin, not min(1).values: no indices (on CPU ~6x faster over [2048, 32])
        "pool_score_spread": _stat((best - scores.amin(1)).mean()),
        "chosen_minus_pool_mean": _stat((top_values.mean(1) - scores.mean(1)).mean()),
    }
    weight = None
    if weighted:
        weight = torch.full(ids.shape, 1.0 / k, device=ids.device, dtype=view.user_emb.dtype)
    return Negatives(emb=view.item_emb(ids), ids=ids, weight=weight, stats=stats, pool_ids=pool)


@SAMPLERS.register("dns", config=DNSConfig, help="DNS: the top-scored of n_candidates pool items")
class DNSSampler(_ProposalSampler):
    """Dynamic negative sampling: draw ``n_candidates`` candidates, keep the highest-scored one.

    ``C ~ uniform_excl`` (or popularity), ``s_bn = r_{u_b C_bn}`` without gradient, ``j_b = C_{b, argmax s}``;
    only ``ē_{j_b}`` is gathered with gradient (ALGORITHMS.md §2.1).

    Args:
        config: :class:`DNSConfig`; ``n_candidates`` is N in WWW'23, H in PDNS, M in ANS.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, 1, d], ids [B, 1], pool_ids [B, N])`` with stats
        ``pool_score_spread`` (mean of max − min pool score) and ``chosen_minus_pool_mean``.

    References:
        Zhang et al., Optimizing Top-N Collaborative Filtering via Dynamic Negative Item Sampling, SIGIR 2013.
    """

    def __init__(self, config: DNSConfig | None = None):
        super().__init__(config or DNSConfig())

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        pool, _, scores = self._scored_draw(users, self.config.n_candidates, view, generator)
        return _topk_negatives(pool, scores, 1, view, weighted=False)


@SAMPLERS.register("dns_mn", config=DNSMNConfig, help="DNS(M,N): top-M of N candidates, weight 1/M each")
class DNSMNSampler(_ProposalSampler):
    """DNS(M, N): the ``n_selected`` (M) top-scored of ``n_candidates`` (N) candidates, weight ``1/M`` each.

    ``p_ij = 1/M`` on the top-M of the pool, 0 elsewhere; with the weighted BPR loss (L3) the row loss is
    ``(1/M) Σ_{m≤M} ℓ(r_ui − r_{u, top_m})`` (WWW 2023 slides, Algorithm 1; ALGORITHMS.md §2.2).
    ``M = 1`` is DNS; ``M = N`` is the mean BPR over the pool. The official code sums instead of averaging
    and draws from ``uniform_all``; recneg averages and excludes positives by default.

    Args:
        config: :class:`DNSMNConfig`; ``n_selected > n_candidates`` raises :class:`ConfigError`.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, M, d], ids [B, M], weight [B, M] = 1/M, pool_ids [B, N])``.

    References:
        Shi et al., On the Theories Behind Hard Negative Sampling for Recommendation, WWW 2023.
    """

    def __init__(self, config: DNSMNConfig | None = None):
        super().__init__(config or DNSMNConfig())

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        pool, _, scores = self._scored_draw(users, self.config.n_candidates, view, generator)
        return _topk_negatives(pool, scores, self.config.n_selected, view, weighted=True)


# ============================================================================================ Softmax-v
@dataclass(frozen=True)
class SoftmaxVConfig:
    n_candidates: int = field(default=32, metadata={"help": "pool size N (paper/code: 200; 500 on Amazon)"})
    rho: float = field(default=1.0, metadata={"help": "ρ >= 0 (β = e^-ρ); 0 = uniform, large = argmax"})
    exclude_positives: bool = field(default=True, metadata={"help": "redraw training positives"})
    proposal: str = field(default="uniform", metadata={"help": "pool proposal: uniform | popularity"})
    alpha: float = field(default=1.0, metadata={"help": "popularity exponent, q_j ∝ c_j^alpha"})

    def __post_init__(self):
        require_int("n_candidates", self, low=1)
        require_float("rho", self, low=0.0)
        _require_common(self)


def softmax_v_weights(losses: Tensor, rho: float, log_q: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """Softmax-v weights ``p_j = softmax_j(L_j / τ − log q_j)``, ``τ = sqrt(Var_j L / (2ρ))`` per row.

    Computed as ``softmax(sqrt(2ρ) · L / std(L) − log q)`` with the unbiased standard deviation over the
    row's candidates, detached. Rows whose ``std < eps`` (equal losses, or ``N = 1``) drop the loss term:
    uniform weights for the uniform proposal (``softmax(−log q)`` otherwise), never NaN.

    Shape: ``losses [B, N]``, ``log_q [B, N]`` or ``None`` -> ``[B, N]``, rows summing to 1.
    """
    with torch.no_grad():
        losses = losses.detach()
        n = losses.shape[-1]
        if n > 1:
            std = losses.std(dim=-1, keepdim=True, unbiased=True)
        else:
            std = torch.zeros_like(losses[..., :1])
        flat = std < eps
        scale = math.sqrt(2.0 * rho) / torch.where(flat, torch.ones_like(std), std)
        centred = losses - losses.mean(dim=-1, keepdim=True)  # shift-invariant; keeps exp() in range
        logits = torch.where(flat, torch.zeros_like(losses), centred * scale)
        if log_q is not None:
            logits = logits - log_q.detach().to(logits.dtype)
        return torch.softmax(logits, dim=-1)


@SAMPLERS.register("softmax_v", config=SoftmaxVConfig, help="Softmax-v(rho,N): adaptive-temperature weights")
class SoftmaxVSampler(_ProposalSampler):
    """Softmax-v(ρ, N): weights ``p_j = softmax_j(L_j/τ − log q_j)`` over all N candidates.

    ``L_j = softplus(r_uj − r_ui)`` is the BPR loss of candidate ``j`` (Algorithm 2 and the code use the loss,
    Theorem 2 writes the score; recneg follows Algorithm 2), ``τ = sqrt(Var_j L_j / (2ρ))`` per row with the
    unbiased variance, everything detached (ALGORITHMS.md §2.3). With the weighted BPR loss (L3) gradient
    reaches all N candidates, each scaled by its weight. ``ρ → 0`` gives uniform weights, ``ρ → ∞`` the
    argmax (DNS). For the popularity proposal ``log q_j`` is subtracted inside the softmax (the code's
    correction); for the uniform proposal it is a constant and cancels. Guard: ``std < 1e-12`` → the loss
    term is dropped (uniform weights for the uniform proposal).

    Args:
        config: :class:`SoftmaxVConfig`; ``rho`` is ρ (``β = e^{−ρ}`` in Theorem 2), ``n_candidates`` is N
            (the paper and code use 200; recneg defaults to 32).

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, N, d], ids [B, N], weight [B, N], pool_ids [B, N])``.

    References:
        Shi et al., On the Theories Behind Hard Negative Sampling for Recommendation, WWW 2023.
    """

    def __init__(self, config: SoftmaxVConfig | None = None):
        super().__init__(config or SoftmaxVConfig())

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        pool, log_q, scores = self._scored_draw(users, self.config.n_candidates, view, generator)
        with torch.no_grad():
            pos_score = (view.user_emb.detach() * view.pos_emb.detach()).sum(-1, keepdim=True)
            losses = F.softplus(scores - pos_score)
            weight = softmax_v_weights(losses, self.config.rho, log_q).to(view.user_emb.dtype)
            stats = {
                "weight_max": _stat(weight.amax(1).mean()),
                "weight_entropy": _stat(-(weight * weight.clamp_min(1e-30).log()).sum(1).mean()),
                "pool_score_spread": _stat((scores.amax(1) - scores.amin(1)).mean()),
            }
        return Negatives(emb=view.item_emb(pool), ids=pool, weight=weight, stats=stats, pool_ids=pool)


# ============================================================================================ SRNS
@dataclass(frozen=True)
class SRNSConfig:
    memory_size: int = field(default=8, metadata={"help": "S1: memory items per user (ML-1M script: 8)"})
    fresh_ratio: int = field(default=8, metadata={"help": "S2 / S1: fresh candidates per memory update"})
    std_weight: float = field(default=5.0, metadata={"help": "α: weight of the score std (code: alpha)"})
    warmup: int = field(default=50, metadata={"help": "epochs over which α ramps up, α·min(1, epoch/warmup)"})
    temperature: float = field(default=10.0, metadata={"help": "τ of softmax(r/τ) in the memory update"})
    history: int = field(default=5, metadata={"help": "epochs of score history for the std (code: 5)"})
    memory_update: str = field(
        default="batch",
        metadata={"help": "batch: refresh the batch users' memories after each step (code) | epoch"},
    )
    exclude_positives: bool = field(default=True, metadata={"help": "SRNS always excludes; must stay true"})

    def __post_init__(self):
        require_int("memory_size", self, low=1)
        require_int("fresh_ratio", self, low=0)
        require_float("std_weight", self, low=0.0)
        require_int("warmup", self, low=0)
        require_float("temperature", self, low=0.0, low_open=True)
        require_int("history", self, low=1)
        require_choice("memory_update", self, {"batch", "epoch"})
        require_bool("exclude_positives", self)
        if not self.exclude_positives:
            raise ConfigError("exclude_positives of SRNSConfig must be true (SRNS draws from I \\ I_u^+)")


@SAMPLERS.register("srns", config=SRNSConfig, help="SRNS: memory of hard negatives, score-std boosted choice")
class SRNSSampler(_EpochState, Sampler):
    """SRNS: a per-user memory of ``S1`` candidates and a variance-boosted choice (ALGORITHMS.md §7.3).

    For a pair ``(u, i)`` and the memory ``M_u`` (``S1`` items from ``uniform_excl``):

    1. ``p_now(j) = σ(r_uj − r_ui)`` for ``j ∈ M_u`` (current model, no gradient);
       ``std(j)`` = population std over the recorded epochs ``t`` of ``p_t(j) = σ(r^t_uj − r^t_ui)``;
    2. ``j* = argmax_{j∈M_u} [p_now(j) + α · min(1, epoch / warmup) · std(j)]``; BPR on ``(u, i, j*)``;
    3. memory update: ``S2 = S1 · fresh_ratio`` fresh ``uniform_excl`` candidates join the memory, and
       ``S1`` of the ``S1 + S2`` are kept by sampling without replacement ∝ ``softmax(r_uj / τ)``
       (Gumbel top-k).

    Simplifications against the official code (documented decisions):

    - the score history is kept for the *memory items* only, a ring buffer ``[n_users, S1, history]`` of
      ``r^t_uj`` recorded at each epoch start, plus ``[nnz, history]`` for every training positive (exact,
      indexed by the pair's CSR position); the code scores a separate candidate set of ``V = 3000`` items per
      user, pre-drawn five epochs ahead. An item that enters the memory starts with an empty history, so its
      std is 0 until it has stayed in memory for two recorded epochs; the std thus ranks the items that
      persisted in memory, which are the ones the selection can pick repeatedly;
    - the memory of the batch's users is refreshed after every step (``memory_update="batch"``, as in the
      official code; a kept item's history moves with it); ``memory_update="epoch"`` refreshes every memory
      once per epoch instead (a memory then stays fixed for a whole epoch, so a user's negatives concentrate
      on few items: on ml-100k it trained far worse than uniform); the fresh candidates are drawn from
      ``uniform_excl`` directly (an unbounded candidate set instead of ``V`` items); duplicates of an item
      already in the row are never kept while distinct items remain.

    Args:
        config: :class:`SRNSConfig`; ``memory_size`` = S1, ``fresh_ratio`` = S2_div_S1, ``std_weight`` = α,
            ``warmup``, ``temperature`` = τ, ``history`` = 5.

    Attributes (buffers, in ``state_dict``):
        memory_: ``[n_users, S1]`` int64 memory item ids.
        hist_: ``[n_users, S1, history]`` recorded scores of the memory items (NaN = not recorded).
        pos_hist_: ``[nnz, history]`` recorded scores of every training pair.
        epoch_: scalar int64, the current epoch; ``n_records_``: scalar int64, records written.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, 1, d], ids [B, 1], pool_ids [B, S])`` (the memory rows).

    References:
        Ding et al., Simplify and Robustify Negative Sampling for Implicit Collaborative Filtering,
        NeurIPS 2020.
    """

    emits_item_rows = True

    memory_: Tensor
    hist_: Tensor
    pos_hist_: Tensor
    n_records_: Tensor

    def __init__(self, config: SRNSConfig | None = None):
        super().__init__(config or SRNSConfig())
        h = self.config.history
        self.register_buffer("memory_", torch.zeros(0, self.config.memory_size, dtype=torch.long))
        self.register_buffer("hist_", torch.zeros(0, self.config.memory_size, h))
        self.register_buffer("pos_hist_", torch.zeros(0, h))
        self.register_buffer("epoch_", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_records_", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized_", torch.zeros((), dtype=torch.bool))
        self._init_mirrors()

    def bind(self, train) -> SRNSSampler:
        super().bind(train)
        s1, h = self.config.memory_size, self.config.history
        dev = self.memory_.device
        self.memory_ = torch.zeros(train.n_users, s1, dtype=torch.long, device=dev)
        self.hist_ = torch.full((train.n_users, s1, h), float("nan"), device=dev)
        self.pos_hist_ = torch.full((int(train.csr.nnz), h), float("nan"), device=dev)
        self._set_ready(False)
        self.n_records_.zero_()
        self._set_epoch(0)
        return self

    # ---------------------------------------------------------------- epoch-level state
    def _init_memory(self, generator) -> None:
        index = self.positives(self.memory_.device)
        for u in _user_chunks(index.n_users, self.memory_.device):
            self.memory_[u] = uniform_pool(index, u, self.config.memory_size, generator)
        self.hist_.fill_(float("nan"))
        self._set_ready(True)

    @torch.no_grad()
    def _update_rows(self, users: Tensor, score, generator) -> None:
        """Memory update for ``users [C]``: ``score(users, cand [C, S1+S2]) -> [C, S1+S2]`` (no grad)."""
        s1 = self.config.memory_size
        s2 = s1 * self.config.fresh_ratio
        if s2 == 0:
            return
        index = self.positives(self.memory_.device)
        fresh = uniform_pool(index, users, s2, generator)
        cand = torch.cat([self.memory_[users], fresh], dim=1)  # [C, S1 + S2]
        logits = score(users, cand) / self.config.temperature
        logits = logits.masked_fill(_duplicate_mask(cand), float("-inf"))
        keep = _gumbel_topk(logits, s1, generator)  # [C, S1] positions in cand
        old_hist = self.hist_[users]  # [C, S1, H]
        nan_hist = torch.full_like(old_hist[:, :1].expand(-1, s2, -1), float("nan"))
        cand_hist = torch.cat([old_hist, nan_hist], dim=1)  # [C, S1 + S2, H]
        self.memory_[users] = cand.gather(1, keep)
        self.hist_[users] = cand_hist.gather(1, keep.unsqueeze(-1).expand(-1, -1, cand_hist.shape[-1]))

    @torch.no_grad()
    def _update_memory(self, user_table: Tensor, item_table: Tensor, generator) -> None:
        def score(u, cand):
            return _table_scores(user_table, item_table, u, cand)

        for u in _user_chunks(self.memory_.shape[0], self.memory_.device):
            self._update_rows(u, score, generator)

    @torch.no_grad()
    def _record(self, user_table: Tensor, item_table: Tensor) -> None:
        slot = int(self.n_records_) % self.config.history
        dev = self.memory_.device
        for users in _user_chunks(self.memory_.shape[0], dev):
            scores = _table_scores(user_table, item_table, users, self.memory_[users])
            self.hist_[users, :, slot] = scores.float()
        index = self.positives(dev)
        rows = torch.repeat_interleave(torch.arange(index.n_users, device=dev), index.degree)
        step = _CHUNK * 8
        for start in range(0, rows.numel(), step):
            r, c = rows[start : start + step], index.indices[start : start + step]
            self.pos_hist_[start : start + step, slot] = (user_table[r] * item_table[c]).sum(-1).float()
        self.n_records_ += 1

    def on_epoch_start(self, epoch: int, model, generator=None) -> None:
        user_table, item_table = model.tables()
        user_table, item_table = user_table.to(self.memory_.device), item_table.to(self.memory_.device)
        self._set_epoch(epoch)
        if not self._ready():
            self._init_memory(generator)
        elif self.config.memory_update == "epoch":
            self._update_memory(user_table, item_table, generator)
        self._record(user_table, item_table)

    # ---------------------------------------------------------------- per batch
    def score_std(self, users: Tensor, pos: Tensor) -> Tensor:
        """Population std over recorded epochs of ``σ(r^t_uj − r^t_ui)`` for each memory slot.

        Shape: ``users, pos [B] -> [B, S1]`` (0 where fewer than two epochs are recorded).
        """
        index = self.positives(users.device)
        hist = self.hist_[users]  # [B, S1, H]
        pos_hist = self.pos_hist_[_pair_index(index, users, pos)].unsqueeze(1)  # [B, 1, H]
        valid = ~torch.isnan(hist) & ~torch.isnan(pos_hist)
        p = torch.sigmoid(torch.nan_to_num(hist) - torch.nan_to_num(pos_hist))
        count = valid.sum(-1).clamp_min(1)
        mean = (p * valid).sum(-1) / count
        var = (((p - mean.unsqueeze(-1)) ** 2) * valid).sum(-1) / count
        return torch.where(valid.sum(-1) >= 2, var.sqrt(), torch.zeros_like(var))

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        if self.train_ is None:
            self.positives(users.device)  # raises the "not bound" error
        if not self._ready():
            self._init_memory(generator)
        mem = self.memory_[users]  # [B, S1]
        scores = view.score(mem)
        with torch.no_grad():
            pos_score = (view.user_emb.detach() * view.pos_emb.detach()).sum(-1, keepdim=True)
            p_now = torch.sigmoid(scores - pos_score)
            std = self.score_std(users, pos).to(p_now.dtype)
            ramp = 1.0 if self.config.warmup == 0 else min(1.0, self._epoch() / self.config.warmup)
            crit = p_now + self.config.std_weight * ramp * std
            choice = crit.argmax(1, keepdim=True)
            ids = mem.gather(1, choice)
            stats = {
                "memory_std_mean": _stat(std.mean()),
                "chosen_p_now": _stat(p_now.gather(1, choice).mean()),
                "chosen_is_argmax_score": _stat((choice.squeeze(1) == scores.argmax(1)).float().mean()),
            }
        if self.config.memory_update == "batch":
            self._update_batch_memory(users, view, generator)
        return Negatives(emb=view.item_emb(ids), ids=ids, stats=stats, pool_ids=mem)

    @torch.no_grad()
    def _update_batch_memory(self, users: Tensor, view: ModelView, generator) -> None:
        """The official code's schedule: after choosing, refresh the memories of the batch's users."""
        uniq, inverse = torch.unique(users, return_inverse=True)
        first = torch.full((uniq.numel(),), users.numel(), dtype=torch.long, device=users.device)
        first.scatter_reduce_(0, inverse, torch.arange(users.numel(), device=users.device), "amin")

        def score(_u, cand):
            # every batch row scores its user's candidates (view.score reads the rows in place, where a
            # gather would copy [C, S1 + S2, d]); the first row of each user stands for it
            return view.score(cand[inverse])[first]

        self._update_rows(uniq, score, generator)


# ============================================================================================ AdaSIR / PRIS
CORRECTIONS = {"paper", "code", "none"}


@dataclass(frozen=True)
class AdaSIRConfig:
    n_negatives: int = field(default=5, metadata={"help": "negatives per positive from the pool (num_neg)"})
    sample_size: int = field(default=200, metadata={"help": "proposal draws per user per epoch"})
    pool_size: int = field(default=50, metadata={"help": "items resampled into each user's pool"})
    lambda_w: float = field(default=1.0, metadata={"help": "temperature λ_w of the loss weights"})
    weight_correction: str = field(
        default="paper",
        metadata={"help": "paper: − log w_k (importance weights) | code: + log w_k (AdaSIR repo) | none"},
    )
    pool_update: str = field(default="mix", metadata={"help": "mix: slots from old ∪ new (code) | replace"})
    exclude_positives: bool = field(default=True, metadata={"help": "redraw positives (code: false)"})
    proposal: str = field(default="uniform", metadata={"help": "proposal Q: uniform | popularity"})
    alpha: float = field(default=1.0, metadata={"help": "popularity exponent, Q_j ∝ c_j^alpha"})

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        require_int("sample_size", self, low=1)
        require_int("pool_size", self, low=1)
        require_float("lambda_w", self, low=0.0, low_open=True)
        require_choice("weight_correction", self, CORRECTIONS)
        require_choice("pool_update", self, {"mix", "replace"})
        _require_common(self)


@dataclass(frozen=True)
class PRISConfig:
    n_negatives: int = field(default=5, metadata={"help": "negatives per positive drawn from the proposal"})
    lambda_w: float = field(default=1.0, metadata={"help": "temperature λ_w of the loss weights"})
    exclude_positives: bool = field(default=True, metadata={"help": "redraw positives (code: false)"})
    proposal: str = field(default="uniform", metadata={"help": "proposal Q: uniform | popularity"})
    alpha: float = field(default=1.0, metadata={"help": "popularity exponent, Q_j ∝ c_j^alpha"})

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        require_float("lambda_w", self, low=0.0, low_open=True)
        _require_common(self)


def importance_resample(
    ids: Tensor, logits: Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sampling-importance-resampling: ``n`` draws with replacement per row ∝ ``w = softmax(logits)``.

    Shape: ``ids, logits [C, S] -> (ids [C, n], w [C, n])``, ``w`` the resampling probability of each
    kept entry (the normalised softmax value of its position).
    """
    w = torch.softmax(logits.float(), dim=1)
    pick = torch.multinomial(w, n, replacement=True, generator=generator)
    return ids.gather(1, pick), w.gather(1, pick)


def adasir_weights(neg_scores: Tensor, pos_score: Tensor, log_c: Tensor | None, lambda_w: float) -> Tensor:
    """Loss weights ``softmax_k((r_uj_k − r_ui) / λ_w − c_k)``, detached.

    Shape: ``neg_scores [B, n]``, ``pos_score [B]``, ``log_c [B, n]`` or ``None`` -> ``[B, n]``.
    """
    with torch.no_grad():
        logits = (neg_scores - pos_score.unsqueeze(-1)) / lambda_w
        if log_c is not None:
            logits = logits - log_c.to(logits.dtype)
        return torch.softmax(logits, dim=-1)


@SAMPLERS.register("pris", config=PRISConfig, help="PRIS: proposal draws weighted by softmax(r - log Q)")
class PRISSampler(_ProposalSampler):
    """PRIS(U)/(P): ``n_negatives`` draws straight from the proposal ``Q``, weighted by importance.

    Weights ``softmax_k((r_uj_k − r_ui)/λ_w − log Q_k)``, detached (ALGORITHMS.md §7.4); for the uniform
    proposal ``log Q`` is constant and the weights are ``softmax_k(r_uj_k / λ_w)``. Train with the weighted
    BPR loss (L3).

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, n, d], ids [B, n], weight [B, n], log_q [B, n] | None)``.

    References:
        Chen et al., Learning Recommenders for Implicit Feedback with Importance Resampling, WWW 2022.
    """

    def __init__(self, config: PRISConfig | None = None):
        super().__init__(config or PRISConfig())

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        ids, log_q = self._draw(users, self.config.n_negatives, generator)
        scores = view.score(ids)
        pos_score = (view.user_emb.detach() * view.pos_emb.detach()).sum(-1)
        weight = adasir_weights(scores, pos_score, log_q, self.config.lambda_w).to(view.user_emb.dtype)
        return Negatives(
            emb=view.item_emb(ids),
            ids=ids,
            weight=weight,
            log_q=log_q,
            stats={"weight_max": _stat(weight.amax(1).mean())},
        )


@SAMPLERS.register("adasir", config=AdaSIRConfig, help="AdaSIR: per-user pools by importance resampling")
class AdaSIRSampler(_EpochState, _ProposalSampler):
    """AdaSIR: per-epoch per-user pools built by importance resampling, weighted BPR over pool draws.

    Each epoch (:meth:`on_epoch_start`), per user: ``sample_size`` draws from ``Q`` (uniform or popularity,
    positives redrawn unless ``exclude_positives=False``), resampling weights
    ``w_j = softmax_j(r_uj − log Q_j)``, ``pool_size`` entries resampled with replacement ∝ ``w``
    (:func:`importance_resample`). The first epoch
    replaces the pool; later epochs (``pool_update="mix"``, the code's default) fill each slot with a random
    entry of ``old pool ∪ new draw``; each entry keeps its resampling weight ``w_k``. Training: per pair,
    ``n_negatives`` entries uniformly from the user's pool; weights
    ``softmax_k((r_uj_k − r_ui)/λ_w − c_k)``, detached (ALGORITHMS.md §7.4).

    **The sign of c_k (decided).** A pool entry was drawn with probability ∝ ``w_k``, so importance weighting
    towards ``exp(r/λ_w)`` divides by it: ``c_k = log w_k`` (``weight_correction="paper"``, the default).
    With ``λ_w = 1`` and the uniform proposal the weights are then close to uniform, because the pool already
    holds draws ∝ ``exp(r)``. The official code returns ``−log w_k`` and subtracts it, i.e. *multiplies* by
    ``w_k`` (``"code"``, for reproductions; harder weights ∝ ``exp(r) · w``); ``"none"`` uses ``c_k`` = const
    (the unweighted pool, the code's ``two_pass``).

    Args:
        config: :class:`AdaSIRConfig`; ``n_negatives`` = num_neg, ``lambda_w`` = λ_w.

    Attributes (buffers, in ``state_dict``):
        pool_: ``[n_users, pool_size]`` int64 pool items; ``pool_w_``: ``[n_users, pool_size]`` their
        resampling weights ``w_k``; ``initialized_``: scalar bool.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, n, d], ids [B, n], weight [B, n])``.

    References:
        Chen et al., Learning Recommenders for Implicit Feedback with Importance Resampling, WWW 2022.
    """

    pool_: Tensor

    def __init__(self, config: AdaSIRConfig | None = None):
        super().__init__(config or AdaSIRConfig())
        p = self.config.pool_size
        self.register_buffer("pool_", torch.zeros(0, p, dtype=torch.long))
        self.register_buffer("pool_w_", torch.zeros(0, p))
        self.register_buffer("initialized_", torch.zeros((), dtype=torch.bool))
        self._init_mirrors()

    def bind(self, train) -> AdaSIRSampler:
        super().bind(train)
        dev = self.pool_.device
        self.pool_ = torch.zeros(train.n_users, self.config.pool_size, dtype=torch.long, device=dev)
        p = self.config.pool_size
        self.pool_w_ = torch.full((train.n_users, p), 1.0 / p, device=dev)
        self._set_ready(False)
        return self

    @torch.no_grad()
    def refresh(self, user_table: Tensor, item_table: Tensor, generator=None) -> None:
        """Rebuild (first call) or mix (later calls) every user's pool from fresh proposal draws."""
        dev = self.pool_.device
        index = self.positives(dev)
        first = not self._ready()
        p = self.config.pool_size
        for u in _user_chunks(index.n_users, dev):
            draws, log_q = self._draw(u, self.config.sample_size, generator)
            logits = _table_scores(user_table, item_table, u, draws)
            if log_q is not None:
                logits = logits - log_q
            new_ids, new_w = importance_resample(draws, logits, p, generator)
            if first or self.config.pool_update == "replace":
                self.pool_[u], self.pool_w_[u] = new_ids, new_w
            else:
                pick = torch.randint(0, 2 * p, (u.numel(), p), device=dev, generator=generator)
                self.pool_[u] = torch.cat([self.pool_[u], new_ids], 1).gather(1, pick)
                self.pool_w_[u] = torch.cat([self.pool_w_[u], new_w], 1).gather(1, pick)
        self._set_ready(True)

    def on_epoch_start(self, epoch: int, model, generator=None) -> None:
        user_table, item_table = model.tables()
        self.refresh(user_table.to(self.pool_.device), item_table.to(self.pool_.device), generator)

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        if not self._ready():
            raise ConfigError(
                "adasir: the pools are empty; the trainer must call on_epoch_start(epoch, model) before "
                "the first batch"
            )
        n = self.config.n_negatives
        shape = (users.numel(), n)
        pick = torch.randint(0, self.config.pool_size, shape, device=users.device, generator=generator)
        ids = self.pool_[users].gather(1, pick)
        w = self.pool_w_[users].gather(1, pick)
        scores = view.score(ids)
        pos_score = (view.user_emb.detach() * view.pos_emb.detach()).sum(-1)
        mode = self.config.weight_correction
        log_c = None if mode == "none" else (w.clamp_min(1e-30).log() * (1.0 if mode == "paper" else -1.0))
        weight = adasir_weights(scores, pos_score, log_c, self.config.lambda_w).to(view.user_emb.dtype)
        return Negatives(
            emb=view.item_emb(ids),
            ids=ids,
            weight=weight,
            stats={"weight_max": _stat(weight.amax(1).mean())},
        )


# ============================================================================================ GDNS
@dataclass(frozen=True)
class GDNSConfig:
    memory_size: int = field(default=16, metadata={"help": "candidate slots tracked per user"})
    n_refresh: int = field(default=4, metadata={"help": "slots per user replaced each epoch (lowest gap)"})
    gain_weight: float = field(default=1.0, metadata={"help": "β: weight of the expectational gain"})
    warmup: int = field(default=0, metadata={"help": "epochs over which β ramps up, β·min(1, epoch/warmup)"})
    exclude_positives: bool = field(default=True, metadata={"help": "must stay true (memory ⊂ I \\ I_u^+)"})

    def __post_init__(self):
        require_int("memory_size", self, low=1)
        require_int("n_refresh", self, low=0, high=self.memory_size)
        require_float("gain_weight", self, low=0.0)
        require_int("warmup", self, low=0)
        require_bool("exclude_positives", self)
        if not self.exclude_positives:
            raise ConfigError("exclude_positives of GDNSConfig must be true")


@SAMPLERS.register("gdns", config=GDNSConfig, help="GDNS (from its abstract): hardness + expectational gain")
class GDNSSampler(_EpochState, Sampler):
    """A modest reading of GDNS (Zhu et al., WWW 2022) from its public abstract and ALGORITHMS.md §7.6 [U].

    What the public text says: GDNS "designs an expectational gain sampler, concerning the expectation of
    user's preference gap between the positive and negative samples in training, to guide the negative
    selection dynamically", which "can effectively identify the false negative samples", and trains with
    "positive and negative groups for each user in each iteration" and "a group-wise optimizer". No paper
    body, equations or code were available to us. What recneg implements (every line below is an
    **assumption**, not a quotation):

    - a memory of ``memory_size`` candidate slots per user from ``uniform_excl``;
    - the expected preference gap of slot item ``j`` at epoch ``t``:
      ``H^t(u, j) = mean_{i ∈ I_u^+} σ(r_uj − r_ui)`` (full tables, at each epoch start);
    - the expectational gain ``G^t(u, j) = H^{t−1}(u, j) − H^t(u, j)``: positive when training widened the
      gap (the item behaves as a true negative), negative when the model keeps pulling the item up towards the
      positives despite being trained against it (a false-negative suspect); ``G = 0`` for a fresh slot;
    - selection per pair ``(u, i)``: ``j* = argmax_j [σ(r_uj − r_ui) + β · min(1, epoch/warmup) · G(u, j)]``
      (hardness, boosted for gaining items and penalised for suspects), BPR on ``(u, i, j*)``;
    - each epoch the ``n_refresh`` slots with the lowest ``H^t`` (the easiest, least informative) are
      replaced by fresh ``uniform_excl`` draws;
    - the group-wise optimiser is **not** implemented (it is a batching/optimiser concern outside the
      sampler protocol); training uses the trainer's usual pairs.

    Attributes (buffers): ``memory_ [n_users, S]`` item ids, ``gap_ [n_users, S]`` the last ``H``,
    ``gain_ [n_users, S]`` the last ``G``, ``epoch_``, ``initialized_``.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, 1, d], ids [B, 1], pool_ids [B, S])`` (the memory rows).

    References:
        Zhu et al., Gain-Tuning Dynamic Negative Sampling for Recommendation, WWW 2022 (abstract only).
    """

    emits_item_rows = True

    memory_: Tensor

    def __init__(self, config: GDNSConfig | None = None):
        super().__init__(config or GDNSConfig())
        s = self.config.memory_size
        self.register_buffer("memory_", torch.zeros(0, s, dtype=torch.long))
        self.register_buffer("gap_", torch.zeros(0, s))
        self.register_buffer("gain_", torch.zeros(0, s))
        self.register_buffer("fresh_", torch.zeros(0, s, dtype=torch.bool))
        self.register_buffer("epoch_", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized_", torch.zeros((), dtype=torch.bool))
        self._init_mirrors()

    def bind(self, train) -> GDNSSampler:
        super().bind(train)
        s, dev = self.config.memory_size, self.memory_.device
        self.memory_ = torch.zeros(train.n_users, s, dtype=torch.long, device=dev)
        self.gap_ = torch.zeros(train.n_users, s, device=dev)
        self.gain_ = torch.zeros(train.n_users, s, device=dev)
        self.fresh_ = torch.ones(train.n_users, s, dtype=torch.bool, device=dev)
        self._set_ready(False)
        self._set_epoch(0)
        return self

    def _init_memory(self, generator) -> None:
        index = self.positives(self.memory_.device)
        for u in _user_chunks(index.n_users, index.degree.device):
            self.memory_[u] = uniform_pool(index, u, self.config.memory_size, generator)
        self.gain_.zero_()
        self.fresh_.fill_(True)
        self._set_ready(True)

    @torch.no_grad()
    def expected_gap(self, user_table: Tensor, item_table: Tensor) -> Tensor:
        """``H(u, j) = mean_{i∈I_u^+} σ(r_uj − r_ui)`` for every memory slot. Shape: ``[n_users, S]``.

        Computed over the training pairs in chunks (scatter-mean by user); users without positives get 0.
        """
        dev = self.memory_.device
        index = self.positives(dev)
        mem_scores = torch.empty(self.memory_.shape, device=dev, dtype=user_table.dtype)
        for users in _user_chunks(self.memory_.shape[0], dev):
            mem_scores[users] = _table_scores(user_table, item_table, users, self.memory_[users])
        rows = torch.repeat_interleave(torch.arange(index.n_users, device=dev), index.degree)
        total = torch.zeros_like(mem_scores)
        step = _CHUNK * 8
        for start in range(0, rows.numel(), step):
            r, c = rows[start : start + step], index.indices[start : start + step]
            r_ui = (user_table[r] * item_table[c]).sum(-1, keepdim=True)
            total.index_add_(0, r, torch.sigmoid(mem_scores[r] - r_ui))
        return (total / index.degree.clamp_min(1).unsqueeze(1).to(total.dtype)).float()

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, model, generator=None) -> None:
        user_table, item_table = model.tables()
        user_table, item_table = user_table.to(self.memory_.device), item_table.to(self.memory_.device)
        self._set_epoch(epoch)
        if not self._ready():
            self._init_memory(generator)
        gap = self.expected_gap(user_table, item_table)
        self.gain_ = torch.where(self.fresh_, torch.zeros_like(gap), self.gap_ - gap)
        self.gap_ = gap
        self.fresh_.fill_(False)
        k = self.config.n_refresh
        if k > 0 and epoch > 0:
            index = self.positives(self.memory_.device)
            for u in _user_chunks(index.n_users, index.degree.device):
                slots = gap[u].topk(k, dim=1, largest=False).indices  # easiest slots
                new = uniform_pool(index, u, k, generator)
                self.memory_[u] = self.memory_[u].scatter(1, slots, new)
                self.fresh_[u] = self.fresh_[u].scatter(1, slots, torch.ones_like(slots, dtype=torch.bool))
                self.gain_[u] = self.gain_[u].scatter(1, slots, torch.zeros_like(new, dtype=self.gain_.dtype))

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        if self.train_ is None:
            self.positives(users.device)
        if not self._ready():
            self._init_memory(generator)
        mem = self.memory_[users]
        scores = view.score(mem)
        with torch.no_grad():
            pos_score = (view.user_emb.detach() * view.pos_emb.detach()).sum(-1, keepdim=True)
            hard = torch.sigmoid(scores - pos_score)
            ramp = 1.0 if self.config.warmup == 0 else min(1.0, self._epoch() / self.config.warmup)
            gain = self.gain_[users].to(hard.dtype)
            choice = (hard + self.config.gain_weight * ramp * gain).argmax(1, keepdim=True)
            ids = mem.gather(1, choice)
            stats = {
                "gain_mean": _stat(gain.mean()),
                "suspect_fraction": _stat((gain < 0).float().mean()),
                "chosen_hardness": _stat(hard.gather(1, choice).mean()),
            }
        return Negatives(emb=view.item_emb(ids), ids=ids, stats=stats, pool_ids=mem)

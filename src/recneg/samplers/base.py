"""The sampler protocol: one record, :class:`Negatives`, carries all four families of methods.

- index samplers (uniform, popularity) return real item ids and their embeddings;
- candidate selectors (DNS, DNS(M,N), Softmax-v, SRNS, AdaSIR) score a pool without gradient and return the
  chosen ids, or weights over the pool;
- synthesizers (MixGCF, PDNS mixing, ANS) return embeddings that are not rows of the item table, optionally
  with their own parameters (the sampler is an ``nn.Module``) and an auxiliary loss;
- batch samplers (in-batch, MNS) return negatives shared by every row, with ``log_q`` for logQ correction.

A loss takes ``(user_emb, pos_emb, negatives)``; the trainer adds ``negatives.aux_loss`` and the
regulariser, and never looks at which sampler produced the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from recneg.data.interactions import Interactions, PositiveIndex
from recneg.errors import ConfigError, DataError
from recneg.models.base import ModelView


@dataclass
class Negatives:
    """What a sampler returns for one batch.

    Attributes:
        emb: ``[B, n, d]`` per-row negative embeddings, or ``[n, d]`` shared by all rows (batch samplers).
        ids: ``[B, n]`` (or ``[n]``) item ids when the negatives are real items; ``None`` for synthetic ones.
        weight: ``[B, n]`` detached weights per negative, each row summing to 1 (DNS(M,N), Softmax-v,
            AdaSIR); ``None`` means uniform ``1/n``.
        log_q: ``[n]`` or ``[B, n]`` log proposal probability of each negative, for logQ correction.
        aux_loss: scalar auxiliary loss of a parametric sampler (ANS, DENS), already weighted by its ``γ``.
        reg_emb: ``[B, n, d]`` layer-0 rows to regularise (R1) when the negatives are synthetic; ``None``
            means "the layer-0 rows of ``ids``".
        score: ``[B, n]`` negative logits with gradient when the sampler scores differently from
            ``⟨ē_u, emb⟩`` (ANS ``score="sum_layers"``); ``pos_score``: ``[B]`` likewise for the positive.
        mask: ``[B, n]`` bool, True where column ``j`` must be left out of row ``b``'s softmax (accidental
            hits, the row's own positive among shared in-batch columns); used by softmax losses.
        pos_log_q: ``[B]`` log Q of each row's positive, on the scale of ``log_q`` (for ``correct_positive``).
        stats: detached per-batch diagnostics, floats or 0-d tensors (summed on device by the trainer,
            averaged per epoch).
        pool_ids: ``[B, M]`` (or ``[B, K, M]``, one pool per negative) item ids of every candidate the
            sampler scored, chosen or not, for the R2 regulariser (ALGORITHMS.md §1.3), which norms the
            layer-0 rows of the whole pool; ``None`` when the sampler has no pool (R2 then uses the
            negatives' own rows). Only ids: the rows are gathered by the regulariser that needs them.
    """

    emb: Tensor
    ids: Tensor | None = None
    weight: Tensor | None = None
    log_q: Tensor | None = None
    aux_loss: Tensor | None = None
    reg_emb: Tensor | None = None
    score: Tensor | None = None
    pos_score: Tensor | None = None
    mask: Tensor | None = None
    pos_log_q: Tensor | None = None
    stats: dict = field(default_factory=dict)
    pool_ids: Tensor | None = None

    @property
    def shared(self) -> bool:
        """True when one set of negatives ``[n, d]`` serves every row of the batch."""
        return self.emb.dim() == 2

    @property
    def n(self) -> int:
        return int(self.emb.shape[-2])


class Sampler(nn.Module):
    """Base class of every sampler.

    Lifecycle (scikit-learn style): the constructor stores a frozen config and nothing else;
    :meth:`bind` receives the training interactions (data-dependent state ends in ``_``); :meth:`forward`
    draws one batch's negatives. Samplers with state across epochs (SRNS memory, AdaSIR pools) keep it in
    buffers so ``state_dict`` checkpoints it, and refresh it in :meth:`on_epoch_start`.

    Class attributes:
        needs_layers: the sampler reads per-layer embeddings (``ModelView.item_layers``).
        excludes_positives: whether drawn ids are guaranteed not to be training positives.
        emits_item_rows: every ``Negatives`` it returns with ``ids`` and no ``reg_emb`` has
            ``emb = view.item_emb(ids)`` (real items, not synthesised); lets MF take the hand-written
            gradient step (:mod:`recneg.fused_step`). Off by default, so a custom sampler keeps autograd.
    """

    needs_layers: bool = False
    excludes_positives: bool = True
    emits_item_rows: bool = False

    def __init__(self, config=None):
        super().__init__()
        self.config = config
        self.train_: Interactions | None = None

    def bind(self, train: Interactions) -> Sampler:
        """Attach the training interactions. Returns ``self``."""
        self.train_ = train
        return self

    @property
    def bound_train(self) -> Interactions:
        """The bound training interactions; a :class:`ConfigError` if :meth:`bind` was not called."""
        if self.train_ is None:
            raise ConfigError(f"{type(self).__name__} is not bound to training data: call .bind(train) first")
        return self.train_

    def positives(self, device) -> PositiveIndex:
        return self.bound_train.positives(device)

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator: torch.Generator | None = None):
        """Draw negatives for the batch ``(users, pos)``, both ``[B]``; returns :class:`Negatives`."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Hook called before each epoch (0-based ``epoch``). Default: nothing."""

    def extra_repr(self) -> str:
        return repr(self.config) if self.config is not None else ""


# --------------------------------------------------------------------------------------------- pools
def check_negatives_exist(index: PositiveIndex, users: Tensor) -> None:
    if not index.has_full_users:  # the usual case: no per-batch check (and no device sync)
        return
    full = index.degree[users] >= index.n_items
    if bool(full.any()):
        u = int(users[full][0])
        raise DataError(
            f"user {u} has interacted with every item ({index.n_items}); no negative can be drawn for it "
            "(filter such users out before training)"
        )


def _redraw_positives(index: PositiveIndex, users: Tensor, pool: Tensor, draw, max_rounds: int) -> Tensor:
    """Redraw, in place, the entries of ``pool [B, n]`` that are training positives of their row's user.

    Only the offending entries are redrawn and re-checked each round, so the cost of a round shrinks with
    the number of hits (dense users need several rounds; most entries are settled in the first).
    """
    if _redraw_positives_compiled(index, users, pool, draw, max_rounds):
        return pool
    n = pool.shape[1]
    flat = pool.view(-1)
    bad = torch.nonzero(index.contains(users.unsqueeze(1), pool).view(-1)).squeeze(1)
    rows = users[bad // n]  # the user of each offending entry
    if bad.numel():
        check_negatives_exist(index, users)
    rounds = 0
    while bad.numel():
        rounds += 1
        if rounds > max_rounds:
            raise DataError(
                f"could not draw a non-positive item after {max_rounds} rounds; some user's positives cover "
                "almost all of the proposal's mass"
            )
        fresh = draw(bad.numel())
        flat[bad] = fresh
        hit = index.contains(rows, fresh)
        bad, rows = bad[hit], rows[hit]
    return pool


def _redraw_positives_compiled(
    index: PositiveIndex, users: Tensor, pool: Tensor, draw, max_rounds: int
) -> bool:
    """:func:`_redraw_positives` on numpy views with the compiled bitmap test, where it serves (CPU, the
    pair bitmap built, numba here); False (nothing done) elsewhere. The same entries are redrawn in the
    same order, so the draws are the same; it saves the tensor path's ~0.1 ms of small operations a batch.
    """
    from recneg import kernels

    arrays = _compiled_bitmap_arrays(index, users, pool, "bitmap_contains")
    if arrays is None:
        return False
    bits_np, users_np, pool_np = arrays
    hits = kernels.bitmap_contains(bits_np, users_np, pool_np, index.n_users, index.n_items)
    _redraw_hits(index, users, bits_np, users_np, pool_np, np.flatnonzero(hits), draw, max_rounds)
    return True


def _compiled_bitmap_arrays(
    index: PositiveIndex, users: Tensor, pool: Tensor, kernel: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(bitmap, users [B], pool [B, n])`` as numpy views for the compiled test ``kernel``, or ``None``
    where it does not serve (not CPU int64, no bitmap, numba missing or unable to build it)."""
    from recneg import kernels

    if pool.device.type != "cpu" or users.dtype != torch.int64 or pool.dtype != torch.int64:
        return None
    if not pool.is_contiguous():
        return None
    bits = index.bitmap()
    if bits is None or bits.device.type != "cpu" or not kernels.ready(kernel):
        return None
    return bits.numpy(), users.contiguous().numpy(), pool.numpy()


def _redraw_hits(
    index: PositiveIndex,
    users: Tensor,
    bits_np: np.ndarray,
    users_np: np.ndarray,
    pool_np: np.ndarray,
    bad: np.ndarray,
    draw,
    max_rounds: int,
) -> None:
    """Redraw, in place, the entries ``bad`` (flat positions) of ``pool_np [B, n]``, and those of the new
    draws that are positives again (``bits_np``: the pair bitmap), until none is: :func:`_redraw_positives`'s
    loop, in numpy."""
    from recneg import kernels

    if not bad.size:
        return
    check_negatives_exist(index, users)
    n = pool_np.shape[1]
    flat = pool_np.reshape(-1)
    rows = users_np[bad // n]
    rounds = 0
    while bad.size:
        rounds += 1
        if rounds > max_rounds:
            raise DataError(
                f"could not draw a non-positive item after {max_rounds} rounds; some user's positives cover "
                "almost all of the proposal's mass"
            )
        fresh = draw(bad.size).numpy()
        flat[bad] = fresh
        hit = kernels.bitmap_contains(bits_np, rows, fresh.reshape(-1, 1), index.n_users, index.n_items)
        hit = hit.reshape(-1)
        bad, rows = bad[hit], rows[hit]


def uniform_pool(
    index: PositiveIndex,
    users: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    exclude_positives: bool = True,
    max_rounds: int = 10000,
) -> Tensor:
    """``n`` i.i.d. draws per row from ``Uniform(I \\ I_u^+)`` (``uniform_excl``) or ``Uniform(I)``.

    Rejection by a vectorised membership test: draw all, redraw only the entries that hit a training
    positive, repeat until none does.

    Shape: ``users [B] -> [B, n]`` int64 item ids.
    """
    device = users.device
    pool = torch.randint(index.n_items, (users.numel(), n), device=device, generator=generator)
    if not exclude_positives:
        return pool

    def draw(k: int) -> Tensor:
        return torch.randint(index.n_items, (k,), device=device, generator=generator)

    return _redraw_positives(index, users.reshape(-1), pool, draw, max_rounds)


def scored_uniform_pool(
    index: PositiveIndex,
    users: Tensor,
    n: int,
    view: ModelView,
    generator: torch.Generator | None = None,
    max_rounds: int = 10000,
) -> tuple[Tensor, Tensor]:
    """``uniform_pool(index, users, n, generator)`` (positives excluded) and ``view.score`` of it.

    The same draws and the same scores as those two calls. Where the compiled kernels serve (CPU, the pair
    bitmap, a :class:`~recneg.models.base.TableView` scoring with the compiled scorer), the candidates are
    tested against the positives and scored in one pass (:func:`recneg.kernels.check_and_score`): each
    candidate's bitmap byte and item row are fetched together, instead of in two passes over the batch.
    The few that hit a positive are redrawn as :func:`uniform_pool` does, then scored.

    Shape: ``users [B] -> (pool [B, n] int64, scores [B, n] float32)``.
    """
    from recneg import kernels
    from recneg.models.base import TableView, compiled_scoring_tables

    device = users.device
    users = users.reshape(-1)

    def draw(k: int) -> Tensor:
        return torch.randint(index.n_items, (k,), device=device, generator=generator)

    tables = compiled_scoring_tables(view)
    arrays = None
    if tables is not None:
        pool = torch.randint(index.n_items, (users.numel(), n), device=device, generator=generator)
        arrays = _compiled_bitmap_arrays(index, users, pool, "check_and_score")
    if tables is None or arrays is None:
        if tables is not None:  # the same first draw, then the tensor path's exclusion and scores
            pool = _redraw_positives(index, users, pool, draw, max_rounds)
        else:
            pool = uniform_pool(index, users, n, generator, True, max_rounds)
        return pool, view.score(pool)
    bits_np, users_np, pool_np = arrays
    item_table, user_emb = tables
    assert isinstance(view, TableView)  # what compiled_scoring_tables serves
    view.read("item", pool)  # before reading the rows (a deferred optimiser brings them up to date)
    user_emb_np = user_emb.contiguous().numpy()
    scores_np, hits = kernels.check_and_score(
        bits_np, users_np, pool_np, user_emb_np, item_table.numpy(), index.n_users
    )
    bad = np.flatnonzero(hits)
    if bad.size:
        _redraw_hits(index, users, bits_np, users_np, pool_np, bad, draw, max_rounds)
        fresh = torch.from_numpy(pool_np.reshape(-1)[bad])
        view.read("item", fresh)
        rows = bad // n
        scores_np.reshape(-1)[bad] = kernels.score_rows(
            item_table.numpy(), user_emb_np[rows], fresh.numpy().reshape(-1, 1)
        ).reshape(-1)
    return pool, torch.from_numpy(scores_np)


def categorical_pool(
    index: PositiveIndex,
    users: Tensor,
    n: int,
    probs: Tensor,
    generator: torch.Generator | None = None,
    exclude_positives: bool = True,
    max_rounds: int = 10000,
) -> Tensor:
    """``n`` i.i.d. draws per row from a categorical ``probs [n_items]``, positives redrawn.

    Uses inverse-CDF sampling (``searchsorted`` on the cumulative distribution), so a draw costs
    ``O(log n_items)`` and the generator drives it reproducibly.

    Shape: ``users [B] -> [B, n]``.
    """
    cdf = torch.cumsum(probs.to(torch.float64), 0)
    cdf = cdf / cdf[-1]
    device = users.device

    def draw(k: int) -> Tensor:
        u = torch.rand(k, device=device, generator=generator, dtype=torch.float64)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=index.n_items - 1)

    pool = draw(users.numel() * n).view(users.numel(), n)
    if not exclude_positives:
        return pool
    rows = users.reshape(-1)
    if bool(index.contains(rows.unsqueeze(1), pool).any()):
        _check_proposal_support(index, rows, probs)
    return _redraw_positives(index, rows, pool, draw, max_rounds)


def _check_proposal_support(index: PositiveIndex, users: Tensor, probs: Tensor) -> None:
    """Fail at once when a user's positives hold all of the proposal's mass (no negative can be drawn)."""
    p = probs.to(torch.float64)
    owner = torch.repeat_interleave(torch.arange(index.n_users, device=p.device), index.degree)
    mass = torch.zeros(index.n_users, dtype=torch.float64, device=p.device).index_add_(
        0, owner, p[index.indices]
    )
    left = 1.0 - mass[users] / p.sum()
    stuck = left <= 1e-12
    if bool(stuck.any()):
        u = int(users[stuck][0])
        raise DataError(
            f"user {u}: every item of non-zero proposal probability is a training positive; no negative "
            "can be drawn (use the uniform proposal, or filter such users out)"
        )

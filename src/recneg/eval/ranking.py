"""Full ranking over all items, chunked over users (ALGORITHMS.md §8.1).

For every user with a non-empty target set: score all items, set the scores of the items to exclude
(training positives, and validation positives when testing) to ``−inf``, take the top ``K_max``, and compare
with the targets. Memory is bounded by one ``[chunk_size, n_items]`` score block.

Items that occur only in the target set (no training interaction) are legal: they are in the id space and
count in recall denominators.

Sharded over processes (``dist`` with more than one rank): rank ``r`` ranks block ``r`` of the evaluated users
(contiguous, ascending), the per-user results are gathered in rank order, and every rank averages the same
arrays as one process would, so the metrics are bit-for-bit those of a single-process evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from recneg.data.interactions import Interactions, PositiveIndex, Split
from recneg.distributed import SINGLE, DistContext, gather_objects, user_block
from recneg.errors import ConfigError
from recneg.eval.metrics import topk_metrics
from recneg.resources import format_bytes, is_out_of_memory


@dataclass
class EvalResult:
    """Metrics averaged over evaluated users, plus per-user detail for significance tests and PER.

    Attributes:
        metrics: ``{"recall@20": float, ...}``.
        users: ``[n_eval]`` int64 ids of evaluated users (non-empty targets), ascending.
        per_user: ``{"recall@20": [n_eval] float64 array, ...}``.
        topk: ``[n_eval, K_max]`` int64 ranked item ids (the per-user hit lists derive from it).
        hits: ``[n_eval, K_max]`` bool, whether each ranked item is a target.
    """

    metrics: dict[str, float]
    users: np.ndarray
    per_user: dict[str, np.ndarray] = field(repr=False)
    topk: np.ndarray = field(repr=False)
    hits: np.ndarray = field(repr=False)

    def hit_set(self, k: int) -> set[tuple[int, int]]:
        """``H`` = set of (user, item) test interactions correctly predicted in the top ``k`` (for PER)."""
        rows, cols = np.nonzero(self.hits[:, :k])
        return set(zip(self.users[rows].tolist(), self.topk[rows, cols].tolist(), strict=True))


def _csr_union(*parts: Interactions | None) -> sp.csr_matrix:
    mats = [p.csr for p in parts if p is not None]
    m = mats[0]
    for other in mats[1:]:
        m = m + other
    m = m.tocsr()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def rank_topk(
    user_table: Tensor,
    item_table: Tensor,
    users: Tensor,
    k: int,
    exclude: PositiveIndex | None = None,
    chunk_size: int = 1024,
    deterministic_ties: bool = False,
) -> Tensor:
    """Top-``k`` item ids per user after masking excluded items.

    Args:
        user_table: ``[n_users, d]``; item_table: ``[n_items, d]``.
        users: ``[C]`` user ids to rank for.
        k: list length.
        exclude: per-user items to mask (CSR arrays in a :class:`PositiveIndex`).
        chunk_size: users scored at once (memory ``chunk_size × n_items`` floats).
        deterministic_ties: break score ties by ascending item id (a full stable sort; slower).

    Returns:
        ``[C, k]`` int64 item ids, best first.
    """
    n_items = item_table.shape[0]
    if k > n_items:
        raise ConfigError(f"top-k of {k} exceeds the number of items ({n_items})")
    out = []
    item_t = item_table.T.contiguous()
    for start in range(0, users.numel(), chunk_size):
        chunk = users[start : start + chunk_size]
        try:
            out.append(_rank_chunk(user_table, item_t, chunk, k, exclude, deterministic_ties))
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            need = format_bytes(chunk.numel() * n_items * 4)
            raise ConfigError(
                f"evaluation ran out of memory scoring {chunk.numel()} users × n_items={n_items} items at "
                f"once ({need} of scores, eval_chunk={chunk_size}); lower eval_chunk"
            ) from None
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=user_table.device)


def _rank_chunk(
    user_table: Tensor,
    item_t: Tensor,
    chunk: Tensor,
    k: int,
    exclude: PositiveIndex | None,
    deterministic_ties: bool,
) -> Tensor:
    """Top-``k`` of one chunk of users. Shape: ``chunk [c]`` -> ``[c, k]``; memory ``c × n_items`` floats."""
    scores = user_table[chunk] @ item_t  # [c, n_items]
    if exclude is not None:
        lo, hi = exclude.indptr[chunk], exclude.indptr[chunk + 1]
        counts = hi - lo
        if int(counts.sum()) > 0:
            rows = torch.repeat_interleave(torch.arange(chunk.numel(), device=scores.device), counts)
            offsets = torch.arange(rows.numel(), device=scores.device) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts
            )
            cols = exclude.indices[torch.repeat_interleave(lo, counts) + offsets]
            scores[rows, cols] = float("-inf")
    if deterministic_ties:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.topk(scores, k, dim=1, sorted=True).indices


@torch.no_grad()
def evaluate_tables(
    user_table: Tensor,
    item_table: Tensor,
    target: Interactions,
    exclude: list[Interactions | None] | None = None,
    topk=(10, 20, 50),
    chunk_size: int = 1024,
    deterministic_ties: bool = False,
    dist: DistContext = SINGLE,
) -> EvalResult:
    """Evaluate fixed user/item tables on ``target`` (e.g. test), masking the ``exclude`` interactions.

    With ``dist`` of several ranks, every rank must call this with the same tables; each ranks its block of
    users and all return the same :class:`EvalResult` as a single process.

    Shape: ``user_table [n_users, d]``, ``item_table [n_items, d]``.
    """
    ks = sorted({int(k) for k in topk})
    if not ks or ks[0] < 1:
        raise ConfigError(f"topk must be a non-empty list of ints >= 1, got {list(topk)}")
    device = user_table.device
    n_targets_np = target.csr.getnnz(axis=1)
    all_users_np = np.flatnonzero(n_targets_np > 0)
    users_np = user_block(all_users_np, dist)
    users = torch.as_tensor(users_np, device=device)
    parts = [p for p in (exclude or []) if p is not None]
    excl = PositiveIndex.from_csr(_csr_union(*parts), device) if parts else None
    tgt = target.positives(device)
    k_max = min(ks[-1], item_table.shape[0])
    if ks[-1] > item_table.shape[0]:
        raise ConfigError(f"top-k of {ks[-1]} exceeds the number of items ({item_table.shape[0]})")
    top = rank_topk(user_table, item_table, users, k_max, excl, chunk_size, deterministic_ties)
    hits = tgt.contains(users.unsqueeze(1), top)
    n_targets = torch.as_tensor(n_targets_np[users_np], device=device)
    per_user_t = topk_metrics(hits, n_targets, ks) if users.numel() else {}
    per_user = {k: v.cpu().numpy() for k, v in per_user_t.items()}
    top_np, hits_np = top.cpu().numpy(), hits.cpu().numpy()
    if dist.enabled:
        users_np, per_user, top_np, hits_np = _gather_blocks(users_np, per_user, top_np, hits_np, ks)
    metrics = {k: float(v.mean()) if v.size else 0.0 for k, v in per_user.items()}
    return EvalResult(metrics, users_np, per_user, top_np, hits_np)


def _gather_blocks(users: np.ndarray, per_user: dict, top: np.ndarray, hits: np.ndarray, ks: list[int]):
    """Every rank's block of per-user results, concatenated in rank order (= ascending users).

    A rank whose block is empty has no per-user arrays (``topk_metrics`` was not run): its metric arrays
    are empty ones of the right keys.
    """
    blocks = [
        (b[0].numpy(), {k: v.numpy() for k, v in b[1].items()}, b[2].numpy(), b[3].numpy())
        for b in gather_objects(_numpy_to_torch((users, per_user, top, hits)))
    ]
    keys = next((list(b[1]) for b in blocks if b[1]), [])
    per_user_all = {
        k: np.concatenate([b[1].get(k, np.zeros(0, dtype=np.float64)) for b in blocks]) for k in keys
    }
    return (
        np.concatenate([b[0] for b in blocks]),
        per_user_all,
        np.concatenate([b[2] for b in blocks]),
        np.concatenate([b[3] for b in blocks]),
    )


def _numpy_to_torch(blocks: tuple) -> tuple:
    """``(users, per_user, top, hits)`` with every array a tensor (what :func:`gather_objects` sends)."""
    users, per_user, top, hits = blocks
    as_t = torch.from_numpy
    return as_t(users), {k: as_t(np.asarray(v)) for k, v in per_user.items()}, as_t(top), as_t(hits)


@torch.no_grad()
def evaluate(
    model,
    split: Split,
    part: str = "test",
    topk=(10, 20, 50),
    chunk_size: int = 1024,
    mask_valid: bool = True,
    deterministic_ties: bool = False,
    dist: DistContext = SINGLE,
) -> EvalResult:
    """Full-ranking evaluation of a model on ``split.test`` (or ``split.valid``).

    Masks training positives; when testing, also masks validation positives unless ``mask_valid=False``
    (ALGORITHMS.md §8.1 DECIDE: recneg masks them, as RecBole does). ``dist``: shard the users over the
    ranks of a process group (every rank calls this with the same model); the result equals one process's.
    """
    user_table, item_table, target, exclude = evaluation_inputs(model, split, part, mask_valid)
    return evaluate_tables(
        user_table, item_table, target, exclude, topk, chunk_size, deterministic_ties, dist=dist
    )


@torch.no_grad()
def evaluation_inputs(model, split: Split, part: str = "test", mask_valid: bool = True):
    """The full-ranking protocol's inputs: ``(user_table, item_table, target, exclude)``.

    ``target`` is ``split.test`` or ``split.valid``; ``exclude`` holds the training positives, plus the
    validation positives when testing with ``mask_valid``. The tables come from ``model.tables()`` in eval
    mode (the model's training mode is restored).
    """
    if part not in ("test", "valid"):
        raise ConfigError(f"part must be 'test' or 'valid', got {part!r}")
    target = split.test if part == "test" else split.valid
    if target is None:
        raise ConfigError("this split has no validation part (valid_ratio = 0)")
    exclude = [split.train]
    if part == "test" and mask_valid and split.valid is not None:
        exclude.append(split.valid)
    was_training = model.training
    model.eval()
    try:
        user_table, item_table = model.tables()
    finally:
        model.train(was_training)
    return user_table, item_table, target, exclude

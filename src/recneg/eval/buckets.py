"""Recall by item-popularity bucket (head / torso / tail) and a cold-start split.

Popularity buckets. Items are ranked by training count ``c_j`` (descending; ties by ascending item id, so the
assignment is deterministic). The first ``round(head · n_items)`` items are *head*, the last
``round(tail · n_items)`` are *tail*, the rest *torso* (halves rounded up). Items without a training
interaction sort last, so they are tail. Defaults: ``head = 0.2``, ``tail = 0.5``.

Bucket recall (from an :class:`~recneg.eval.ranking.EvalResult`). For bucket ``g`` and user ``u`` with
``T_u^g = {target items of u in g}`` non-empty: ``recall_g@K(u) = |R_K(u) ∩ T_u^g| / |T_u^g|``, where
``R_K(u)`` is the user's top-``K`` over **all** items (the full-ranking list of the evaluation: items of
other buckets still occupy slots). ``recall@K`` averages over the users with ``T_u^g ≠ ∅``;
``recall_micro@K`` is ``Σ_u |R_K(u) ∩ T_u^g| / Σ_u |T_u^g|`` (the share of the bucket's target
interactions retrieved; steadier for the tail, where most users have one or two targets).

Cold start. :func:`cold_start_split` holds a fraction of items out of training entirely: every interaction
of a cold item goes to test, the remaining ("warm") interactions are split per user as
:func:`recneg.data.split.random_split` does. Cold-start recall is then :func:`bucket_recall` with the
two buckets "warm" / "cold" (:func:`cold_start_recall`). Only a model that embeds items from features
(``twotower`` with ``use_item_id=False``) can score cold items meaningfully; an id-embedding row of a cold
item is never trained.
"""

from __future__ import annotations

import math

import numpy as np

from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError

BUCKET_NAMES = ("head", "torso", "tail")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def popularity_buckets(item_counts, head: float = 0.2, tail: float = 0.5) -> np.ndarray:
    """Bucket code of every item by training popularity: 0 = head, 1 = torso, 2 = tail.

    Args:
        item_counts: ``[n_items]`` training counts ``c_j`` (e.g. ``split.train.item_counts``).
        head: share of items, the most popular, in the head bucket, in ``[0, 1]``.
        tail: share of items, the least popular, in the tail bucket, in ``[0, 1]``, ``head + tail ≤ 1``.

    Returns:
        ``[n_items]`` int64 codes into :data:`BUCKET_NAMES`.

    Example::

        >>> popularity_buckets([5, 0, 9, 1, 1], head=0.2, tail=0.4).tolist()   # ranks: 2, 0, 3, 4, 1
        [1, 2, 0, 1, 2]
    """
    counts = np.asarray(item_counts)
    if counts.ndim != 1:
        raise DataError(f"item_counts must be a 1-D array, got shape {counts.shape}")
    for name, v in (("head", head), ("tail", tail)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} of popularity_buckets must be a share in [0, 1], got {v!r}")
    if head + tail > 1.0 + 1e-12:
        raise ConfigError(f"head + tail of popularity_buckets must be <= 1, got {head} + {tail}")
    n = counts.size
    order = np.lexsort((np.arange(n), -counts.astype(np.float64)))  # by count desc, then id asc
    n_head = min(_round_half_up(head * n), n)
    n_tail = min(_round_half_up(tail * n), n - n_head)
    codes = np.ones(n, dtype=np.int64)
    codes[order[:n_head]] = 0
    if n_tail:
        codes[order[n - n_tail :]] = 2
    return codes


def bucket_recall(
    result,
    target: Interactions,
    buckets,
    ks=(20, 50),
    names=BUCKET_NAMES,
) -> dict[str, dict[str, float]]:
    """Recall@K restricted to the target items of each bucket (see the module docstring).

    Args:
        result: an :class:`~recneg.eval.ranking.EvalResult` (``users``, ``topk``, ``hits``) computed on
            ``target``.
        target: the interactions the evaluation ranked against (e.g. ``split.test``).
        buckets: ``[n_items]`` int codes ``0..len(names)-1`` (e.g. :func:`popularity_buckets`).
        ks: list lengths, each ``≤ result.topk.shape[1]``.
        names: bucket names, in code order.

    Returns:
        ``{name: {"recall@K": float, "recall_micro@K": float, "n_users": int, "n_targets": int}}``; a bucket
        without target interactions gets ``nan`` recalls and zero counts.
    """
    buckets = np.asarray(buckets, dtype=np.int64)
    if buckets.shape != (target.n_items,):
        raise DataError(f"buckets must have one code per item ({target.n_items}), got {buckets.shape}")
    topk, hits, users = np.asarray(result.topk), np.asarray(result.hits, dtype=bool), np.asarray(result.users)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > topk.shape[1]:
        raise ConfigError(f"ks must be ints in 1..{topk.shape[1]} (the evaluated list length), got {ks}")
    # targets per (user, bucket): [n_users, n_buckets]
    n_b = len(names)
    if buckets.size and (buckets.min() < 0 or buckets.max() >= n_b):
        raise DataError(f"bucket codes must lie in 0..{n_b - 1}")
    csr = target.csr
    t_rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    per_user = np.zeros((target.n_users, n_b), dtype=np.int64)
    np.add.at(per_user, (t_rows, buckets[csr.indices]), 1)
    n_targets = per_user[users]  # [n_eval, n_b]
    slot_bucket = buckets[np.clip(topk, 0, None)]  # [n_eval, K_max]
    out: dict[str, dict[str, float]] = {}
    for g, name in enumerate(names):
        has = n_targets[:, g] > 0
        entry: dict[str, float] = {"n_users": int(has.sum()), "n_targets": int(n_targets[:, g].sum())}
        in_g = hits & (slot_bucket == g) & (topk >= 0)
        for k in ks:
            n_hit = in_g[:, :k].sum(1)
            if has.any():
                entry[f"recall@{k}"] = float((n_hit[has] / n_targets[has, g]).mean())
                entry[f"recall_micro@{k}"] = float(n_hit.sum() / n_targets[:, g].sum())
            else:
                entry[f"recall@{k}"] = float("nan")
                entry[f"recall_micro@{k}"] = float("nan")
        out[name] = entry
    return out


def popularity_recall(result, split: Split, ks=(20, 50), head: float = 0.2, tail: float = 0.5, part="test"):
    """:func:`bucket_recall` over head / torso / tail buckets (``split.train`` counts) on ``split.<part>``.

    Returns:
        ``{"head" | "torso" | "tail": {"recall@K", "recall_micro@K", "n_users", "n_targets"}}``.
    """
    target = split.test if part == "test" else split.valid
    if target is None:
        raise ConfigError(f"popularity_recall: part={part!r} but the split has no validation part")
    return bucket_recall(result, target, popularity_buckets(split.train.item_counts, head, tail), ks)


def cold_start_split(
    data: Interactions | Split,
    cold_ratio: float = 0.1,
    test_ratio: float = 0.1,
    valid_ratio: float = 0.1,
    seed: int = 0,
) -> Split:
    """A split in which a share of the items never occurs in training (cold-start items).

    ``round(cold_ratio · n_active)`` items are drawn uniformly (seeded, without replacement) among the items
    with at least one interaction; **all** their interactions go to test. The other interactions are split
    per user by :func:`recneg.data.split.random_split` (``test_ratio``, ``valid_ratio``, ``seed``), and their
    test part joins the cold interactions in ``test``. Validation holds warm items only. The id space is
    unchanged (cold items keep their ids, so a model built on ``split.train`` has rows for them).

    Uniform item draws make the cold set mostly long-tail items (as new items are); a user whose every
    interaction is cold has no training data and is evaluated on test only.

    Args:
        data: all interactions, or a :class:`Split` whose parts are merged first.
        cold_ratio: share of the active items held out, in ``(0, 1)``.
        test_ratio, valid_ratio, seed: as for ``random_split`` (applied to the warm interactions).

    Returns:
        A :class:`Split`; ``info["cold_items"]`` is the sorted list of cold item ids, ``info["split"]`` is
        ``"cold_start"``.
    """
    from recneg.data.preprocess import dedupe
    from recneg.data.split import random_split

    if isinstance(cold_ratio, bool) or not isinstance(cold_ratio, (int, float)) or not 0 < cold_ratio < 1:
        raise ConfigError(f"cold_ratio of cold_start_split must be in (0, 1), got {cold_ratio!r}")
    if isinstance(data, Split):
        data = _concat([p for p in (data.train, data.valid, data.test) if p is not None])
    data = dedupe(data)
    active = np.flatnonzero(data.item_counts > 0)
    n_cold = _round_half_up(cold_ratio * active.size)
    if n_cold < 1 or n_cold >= active.size:
        raise DataError(
            f"cold_ratio {cold_ratio} holds out {n_cold} of {active.size} active items; "
            f"need 1..{active.size - 1}"
        )
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(active, size=n_cold, replace=False))
    is_cold = np.zeros(data.n_items, dtype=bool)
    is_cold[cold] = True
    row_cold = is_cold[data.items]
    warm_split = random_split(data.subset(np.flatnonzero(~row_cold)), test_ratio, valid_ratio, seed)
    test = _concat([warm_split.test, data.subset(np.flatnonzero(row_cold))])
    info = dict(warm_split.info)
    info.update({"split": "cold_start", "cold_ratio": float(cold_ratio), "cold_items": cold.tolist()})
    return Split(warm_split.train, test, warm_split.valid, name=getattr(data, "name", "data"), info=info)


def cold_start_recall(result, split: Split, ks=(20, 50), cold_items=None) -> dict[str, float]:
    """Recall@K on the cold items' test interactions (full ranking over all items; see the module docstring).

    Args:
        result: :class:`~recneg.eval.ranking.EvalResult` on ``split.test``.
        split: a :func:`cold_start_split` result (its ``info["cold_items"]``), or pass ``cold_items``.

    Returns:
        ``{"recall@K", "recall_micro@K", "n_users", "n_targets"}`` of the cold bucket.
    """
    if cold_items is None:
        if "cold_items" not in split.info:
            raise ConfigError("cold_start_recall needs a cold_start_split or explicit cold_items")
        cold_items = split.info["cold_items"]
    codes = np.zeros(split.n_items, dtype=np.int64)
    codes[np.asarray(cold_items, dtype=np.int64)] = 1
    return bucket_recall(result, split.test, codes, ks, names=("warm", "cold"))["cold"]


def _concat(parts: list[Interactions]) -> Interactions:
    first = parts[0]

    def cat(attr):
        arrs = [getattr(p, attr) for p in parts]
        return None if any(a is None for a in arrs) else np.concatenate(arrs)

    return Interactions(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        first.n_users,
        first.n_items,
        cat("timestamps"),
        cat("weights"),
        first.user_ids,
        first.item_ids,
    )


__all__ = [
    "BUCKET_NAMES",
    "bucket_recall",
    "cold_start_recall",
    "cold_start_split",
    "popularity_buckets",
    "popularity_recall",
]

"""Cleaning steps applied between reading and splitting: threshold, dedupe, k-core, id remapping.

All functions are vectorized (numpy sorts and bincounts), keep the original-id maps, and return new
:class:`~recneg.data.interactions.Interactions` objects; inputs are never modified.

Order used by :func:`preprocess` (and :func:`recneg.data.datasets.load_dataset`):
``apply_threshold`` → ``dedupe`` → ``kcore`` → ``remap``. Thresholding before deduplication keeps a pair that
was rated twice if any of its ratings passes.
"""

from __future__ import annotations

import numpy as np

from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError, DataError

__all__ = [
    "apply_threshold",
    "dedupe",
    "first_occurrence",
    "kcore",
    "kcore_mask",
    "preprocess",
    "preprocess_split",
    "remap",
]


def _order_key(inter: Interactions) -> np.ndarray:
    """Stable chronological order (file order among equal or missing timestamps)."""
    if inter.timestamps is None:
        return np.arange(len(inter))
    return np.argsort(inter.timestamps, kind="stable")


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of every distinct value of ``keys`` (a stable sort, no hashing)."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.ones(sk.size, dtype=bool)
    first[1:] = sk[1:] != sk[:-1]
    return order[first]


def dedupe(inter: Interactions) -> Interactions:
    """Keep one row per ``(user, item)`` pair: the earliest by timestamp, else the first in file order.

    The kept rows stay in their original (file) order.
    """
    if len(inter) == 0:
        return inter
    order = _order_key(inter)
    keys = inter.users[order] * inter.n_items + inter.items[order]
    keep = np.sort(order[first_occurrence(keys)])
    if keep.size == len(inter):
        return inter
    return inter.subset(keep)


def apply_threshold(inter: Interactions, threshold: float | None, source: str = "data") -> Interactions:
    """Keep interactions whose weight (rating, play count) is ``>= threshold``; ``None`` keeps all.

    Raises:
        DataError: a threshold is set but the data carries no ratings/weights.
    """
    if threshold is None:
        return inter
    if inter.weights is None:
        raise DataError(f"{source}: threshold={threshold} needs ratings or weights, but this data has none")
    return inter.subset(np.flatnonzero(inter.weights >= threshold))


def kcore_mask(users, items, n_users: int, n_items: int, min_user: int = 0, min_item: int = 0) -> np.ndarray:
    """Boolean mask of the rows in the (``min_user``, ``min_item``)-core.

    Iteratively drops users with fewer than ``min_user`` interactions and items with fewer than ``min_item``
    until both hold for every remaining row (counts are over rows; deduplicate first to count pairs).
    """
    for name, v in (("min_user", min_user), ("min_item", min_item)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ConfigError(f"{name} of kcore must be an int >= 0, got {v!r}")
    keep = np.ones(len(users), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    while True:
        u, i = users[keep], items[keep]
        bad_u = np.bincount(u, minlength=n_users) < min_user
        bad_i = np.bincount(i, minlength=n_items) < min_item
        drop = bad_u[u] | bad_i[i]
        if not drop.any():
            return keep
        keep[np.flatnonzero(keep)[drop]] = False


def kcore(inter: Interactions, min_user: int = 0, min_item: int = 0) -> Interactions:
    """The (``min_user``, ``min_item``)-core of ``inter`` in the same id space (see :func:`kcore_mask`)."""
    keep = kcore_mask(inter.users, inter.items, inter.n_users, inter.n_items, min_user, min_item)
    return inter if keep.all() else inter.subset(np.flatnonzero(keep))


def _compact(ids: np.ndarray, n: int, originals) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    new_of_old = np.cumsum(present) - 1
    kept = np.flatnonzero(present)
    orig = kept if originals is None else np.asarray(originals)[kept]
    return new_of_old, kept, int(kept.size), orig


def remap(inter: Interactions) -> Interactions:
    """Renumber users and items that occur to ``0..n-1`` (order preserved), composing the original-id maps."""
    nu, _, n_users, uid = _compact(inter.users, inter.n_users, inter.user_ids)
    ni, _, n_items, iid = _compact(inter.items, inter.n_items, inter.item_ids)
    if n_users == inter.n_users and n_items == inter.n_items:
        return inter
    return Interactions(
        nu[inter.users], ni[inter.items], n_users, n_items, inter.timestamps, inter.weights, uid, iid
    )


def preprocess(
    inter: Interactions,
    threshold: float | None = None,
    min_user: int = 0,
    min_item: int = 0,
    source: str = "data",
) -> Interactions:
    """``apply_threshold`` → ``dedupe`` → ``kcore`` → ``remap`` (contiguous ids over what remains)."""
    out = apply_threshold(inter, threshold, source)
    out = dedupe(out)
    out = kcore(out, min_user, min_item)
    if len(out) == 0:
        raise DataError(
            f"{source}: no interactions left after threshold={threshold}, min_user={min_user}, "
            f"min_item={min_item}"
        )
    return remap(out)


def preprocess_split(
    split: Split,
    threshold: float | None = None,
    min_user: int = 0,
    min_item: int = 0,
    source: str = "data",
) -> Split:
    """Clean a split that a dataset ships (e.g. NGCF train/test files).

    Each part is thresholded and deduplicated; the k-core is computed on **train** only, and valid/test rows
    of users or items outside it are dropped. Ids are renumbered over the union of the parts only when k-core
    filtering removed something, so by default the shipped id space (``max id + 1``, empty users and test-only
    items included) is kept as it is.
    """

    def clean(part: Interactions) -> Interactions:
        return dedupe(apply_threshold(part, threshold, source))

    tr = clean(split.train)
    valid = None if split.valid is None else clean(split.valid)
    test = clean(split.test)
    keep = kcore_mask(tr.users, tr.items, tr.n_users, tr.n_items, min_user, min_item)
    if keep.all():
        return Split(tr, test, valid, split.name, dict(split.info))
    tr = tr.subset(np.flatnonzero(keep))
    ok_u = np.zeros(tr.n_users, dtype=bool)
    ok_u[tr.users] = True
    ok_i = np.zeros(tr.n_items, dtype=bool)
    ok_i[tr.items] = True

    def inside_core(part: Interactions) -> Interactions:
        return part.subset(np.flatnonzero(ok_u[part.users] & ok_i[part.items]))

    valid = None if valid is None else inside_core(valid)
    test = inside_core(test)
    nu, _, n_users, uid = _compact(tr.users, tr.n_users, tr.user_ids)
    ni, _, n_items, iid = _compact(tr.items, tr.n_items, tr.item_ids)
    if n_users == 0:
        raise DataError(f"{source}: no interactions left after min_user={min_user}, min_item={min_item}")

    def renum(part: Interactions) -> Interactions:
        return Interactions(
            nu[part.users], ni[part.items], n_users, n_items, part.timestamps, part.weights, uid, iid
        )

    return Split(
        renum(tr), renum(test), None if valid is None else renum(valid), split.name, dict(split.info)
    )

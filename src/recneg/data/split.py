"""Train / validation / test splits: seeded, leak-free, vectorized.

Every function returns a :class:`~recneg.data.interactions.Split` whose parts share the input's id space
(``n_users``, ``n_items`` and the original-id maps). Duplicated ``(user, item)`` pairs are collapsed first
(earliest kept, :func:`recneg.data.preprocess.dedupe`), so no pair can fall in two parts. Grouping by user is
a ``np.lexsort`` over ``(key, user)`` and a rank within each user's run; there is no Python loop over users.

Per-user part sizes (random and latest-ratio protocols), for a user with ``n`` interactions:
``n_test = round(test_ratio · n)`` and ``n_valid = round(valid_ratio · n)`` with halves rounded up; then, so
that every user keeps at least one training interaction, validation and then test are reduced until
``n_train = n − n_test − n_valid ≥ 1``. Users with a single interaction therefore stay in train only, and
users with few interactions may have no test item (the evaluator skips users without test items).

Protocols (:data:`SPLITS`):

* ``random``: per user, a seeded random ``test_ratio`` → test, ``valid_ratio`` → valid, rest → train
  (default 80/10/10).
* ``temporal``: one global time cutoff at the ``1 − test_ratio`` quantile of the timestamps; later
  interactions → test; validation is the next ``valid_ratio`` slice before it (``valid_mode="temporal"``) or a
  random ``valid_ratio`` of each user's train items (``valid_mode="random"``, the DENS/ANS protocol).
  Interactions *at* a cutoff time stay in the earlier part.
* ``latest``: per user, sorted by time, the latest ``test_ratio`` → test and the ``valid_ratio`` before them →
  valid (PDNS: latest 10 % to test, the rest 8:1 train/valid ⇒ ``test_ratio = valid_ratio = 0.1``).
* ``loo``: leave-one-out: per user, the last interaction by time → test, the second last → valid (users with
  ≥ 3 interactions; with 2, test only; with 1, train only).

Ties in time are broken by file order (stable sort), so temporal splits do not depend on the seed.
"""

from __future__ import annotations

import numpy as np

from recneg.data.interactions import Interactions, Split
from recneg.data.preprocess import dedupe
from recneg.errors import ConfigError, DataError

__all__ = [
    "SPLITS",
    "carve_validation",
    "check_split",
    "latest_ratio_split",
    "leave_one_out_split",
    "make_leak_free",
    "part_sizes",
    "random_split",
    "split_interactions",
    "temporal_split",
]

#: Protocol names accepted by :func:`split_interactions`.
SPLITS = ("random", "temporal", "latest", "loo")


def _ratio(name: str, value, owner: str, allow_zero: bool = True) -> float:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = np.isfinite(value) and (0.0 <= value < 1.0) and (allow_zero or value > 0.0)
    if not ok:
        rng = "in [0, 1)" if allow_zero else "in (0, 1)"
        raise ConfigError(f"{name} of {owner} must be a number {rng}, got {value!r}")
    return value


def _ratios(test_ratio, valid_ratio, owner: str) -> tuple[float, float]:
    t = _ratio("test_ratio", test_ratio, owner, allow_zero=False)
    v = _ratio("valid_ratio", valid_ratio, owner)
    if t + v >= 1.0:
        raise ConfigError(f"test_ratio + valid_ratio of {owner} must be < 1, got {t} + {v}")
    return t, v


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def part_sizes(degree: np.ndarray, test_ratio: float, valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ``(n_test, n_valid)`` for users with ``degree`` interactions (see the module docstring).

    Shape: ``degree [n_users]`` → two ``[n_users]`` int64 arrays with
    ``n_test + n_valid <= max(degree - 1, 0)``.
    """
    degree = np.asarray(degree, dtype=np.int64)
    n_test = _round_half_up(test_ratio * degree)
    n_valid = _round_half_up(valid_ratio * degree)
    excess = np.maximum(n_test + n_valid - np.maximum(degree - 1, 0), 0)
    cut = np.minimum(excess, n_valid)
    n_valid = n_valid - cut
    n_test = n_test - (excess - cut)
    return n_test, n_valid


def _ranks(users: np.ndarray, key: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank of every row within its user when sorted by ``key`` (stable), and each user's degree."""
    order = np.lexsort((np.arange(users.size), key, users))
    degree = np.bincount(users, minlength=n_users)
    start = np.cumsum(degree) - degree
    rank = np.empty(users.size, dtype=np.int64)
    rank[order] = np.arange(users.size) - start[users[order]]
    return rank, degree


def _assemble(inter: Interactions, part: np.ndarray, info: dict, name: str = "data") -> Split:
    """``part`` codes rows 0 = train, 1 = valid, 2 = test."""
    train = inter.subset(np.flatnonzero(part == 0))
    valid_idx = np.flatnonzero(part == 1)
    valid = inter.subset(valid_idx) if info.get("valid_ratio", 1) > 0 or valid_idx.size else None
    test = inter.subset(np.flatnonzero(part == 2))
    return Split(train=train, test=test, valid=valid, name=name, info=info)


def _need_time(inter: Interactions, protocol: str) -> np.ndarray:
    if inter.timestamps is None:
        raise DataError(
            f"split={protocol!r} needs timestamps, but this data has none (NGCF/LightGCN files and Last.fm "
            "user_artists.dat carry no time); use split='random' or a file with a time column"
        )
    return inter.timestamps


def random_split(
    inter: Interactions, test_ratio: float = 0.1, valid_ratio: float = 0.1, seed: int = 0
) -> Split:
    """Per-user random split (default 80/10/10), seeded by ``np.random.default_rng(seed)``.

    Args:
        inter: the interactions (duplicates are collapsed first).
        test_ratio: share of each user's interactions in test, in (0, 1).
        valid_ratio: share in validation, in [0, 1); 0 gives ``split.valid = None``.
        seed: random seed.
    """
    t, v = _ratios(test_ratio, valid_ratio, "random_split")
    inter = dedupe(inter)
    key = np.random.default_rng(seed).random(len(inter))
    rank, degree = _ranks(inter.users, key, inter.n_users)
    n_test, n_valid = part_sizes(degree, t, v)
    u = inter.users
    part = np.where(rank < n_test[u], 2, np.where(rank < n_test[u] + n_valid[u], 1, 0))
    return _assemble(inter, part, {"split": "random", "test_ratio": t, "valid_ratio": v, "seed": seed})


def latest_ratio_split(inter: Interactions, test_ratio: float = 0.1, valid_ratio: float = 0.1) -> Split:
    """Per-user chronological split: the latest ``test_ratio`` of each user → test, the ``valid_ratio`` before
    them → valid, the earliest rest → train (PDNS protocol with the defaults: 10 % test, the rest 8:1).

    Raises:
        DataError: the data has no timestamps.
    """
    t, v = _ratios(test_ratio, valid_ratio, "latest_ratio_split")
    inter = dedupe(inter)
    rank, degree = _ranks(inter.users, _need_time(inter, "latest"), inter.n_users)
    n_test, n_valid = part_sizes(degree, t, v)
    u = inter.users
    from_end = degree[u] - rank  # 1 for the latest
    part = np.where(from_end <= n_test[u], 2, np.where(from_end <= n_test[u] + n_valid[u], 1, 0))
    return _assemble(inter, part, {"split": "latest", "test_ratio": t, "valid_ratio": v})


def leave_one_out_split(inter: Interactions, valid: bool = True) -> Split:
    """Leave-one-out by time: last → test, second last → valid (when ``valid`` and the user has ≥ 3).

    Raises:
        DataError: the data has no timestamps.
    """
    inter = dedupe(inter)
    rank, degree = _ranks(inter.users, _need_time(inter, "loo"), inter.n_users)
    from_end = degree[inter.users] - rank
    d = degree[inter.users]
    part = np.zeros(len(inter), dtype=np.int64)
    part[(from_end == 1) & (d >= 2)] = 2
    if valid:
        part[(from_end == 2) & (d >= 3)] = 1
    return _assemble(inter, part, {"split": "loo", "valid_ratio": 1.0 if valid else 0.0})


def temporal_split(
    inter: Interactions,
    test_ratio: float = 0.1,
    valid_ratio: float = 0.1,
    seed: int = 0,
    valid_mode: str = "temporal",
    test_cutoff: float | None = None,
) -> Split:
    """Global temporal split at a time cutoff.

    Args:
        test_ratio: the cutoff is the timestamp below which ``1 − test_ratio`` of the interactions lie;
            interactions strictly after it → test. Ignored when ``test_cutoff`` is given.
        valid_ratio: share for validation; 0 → ``split.valid = None``.
        valid_mode: ``"temporal"``: the ``valid_ratio`` slice just before the test cutoff;
            ``"random"``: a seeded random ``valid_ratio`` of each user's train interactions (DENS/ANS).
        test_cutoff: explicit cutoff time (interactions ``<= test_cutoff`` are train/valid).
        seed: used by ``valid_mode="random"`` only.

    Raises:
        DataError: no timestamps, or the cutoff leaves train or test empty.
    """
    t, v = _ratios(test_ratio, valid_ratio, "temporal_split")
    if valid_mode not in ("temporal", "random"):
        raise ConfigError(
            f"valid_mode of temporal_split must be one of ['random', 'temporal'], got {valid_mode!r}"
        )
    inter = dedupe(inter)
    ts = _need_time(inter, "temporal")
    n = len(inter)
    srt = np.sort(ts)
    n_test = max(int(_round_half_up(np.array(t * n))), 1)
    c_test = float(test_cutoff) if test_cutoff is not None else float(srt[max(n - n_test - 1, 0)])
    part = np.where(ts > c_test, 2, 0)
    info = {
        "split": "temporal",
        "test_ratio": t,
        "valid_ratio": v,
        "test_cutoff": c_test,
        "valid_mode": valid_mode,
    }
    if v > 0 and valid_mode == "temporal":
        n_before = int((ts <= c_test).sum())
        n_valid = int(_round_half_up(np.array(v * n)))
        c_valid = srt[max(n_before - n_valid - 1, 0)]
        part[(ts > c_valid) & (ts <= c_test)] = 1
        info["valid_cutoff"] = float(c_valid)
    if not (part == 2).any() or not (part == 0).any():
        raise DataError(
            f"temporal split at time {c_test} leaves {'test' if not (part == 2).any() else 'train'} empty "
            f"(timestamps run {srt[0]}..{srt[-1]})"
        )
    out = _assemble(inter, part, info)
    if v > 0 and valid_mode == "random":
        out.train, out.valid = carve_validation(out.train, v, seed)
        info["seed"] = seed
    return out


def carve_validation(
    train: Interactions, valid_ratio: float = 0.1, seed: int = 0
) -> tuple[Interactions, Interactions | None]:
    """Hold out a seeded random ``valid_ratio`` of each user's train interactions as validation.

    Every user keeps at least one train interaction. ``valid_ratio = 0`` carves nothing.

    Returns:
        ``(train, valid)``; ``valid`` is ``None`` when ``valid_ratio == 0``.
    """
    v = _ratio("valid_ratio", valid_ratio, "carve_validation")
    if v == 0:
        return train, None
    key = np.random.default_rng(seed).random(len(train))
    rank, degree = _ranks(train.users, key, train.n_users)
    n_valid, _ = part_sizes(degree, v, 0.0)
    is_valid = rank < n_valid[train.users]
    return train.subset(np.flatnonzero(~is_valid)), train.subset(np.flatnonzero(is_valid))


def _pair_keys(inter: Interactions) -> np.ndarray:
    return inter.users * inter.n_items + inter.items


def _isin_sorted(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(keys.size, dtype=bool)
    pos = np.searchsorted(sorted_set, keys).clip(max=sorted_set.size - 1)
    return sorted_set[pos] == keys


def make_leak_free(split: Split) -> tuple[Split, int]:
    """Drop from valid the pairs that are in train, and from test the pairs in train or valid.

    Returns:
        ``(split, n_dropped)``; the split is a new object (parts without overlap are reused).
    """
    seen = np.sort(_pair_keys(split.train))
    valid, n_valid_dropped = split.valid, 0
    if valid is not None:
        valid, n_valid_dropped, seen = _drop_seen_pairs(valid, seen)
    test, n_test_dropped, _ = _drop_seen_pairs(split.test, seen)
    out = Split(split.train, test, valid, split.name, dict(split.info))
    return out, n_valid_dropped + n_test_dropped


def _drop_seen_pairs(part: Interactions, seen: np.ndarray) -> tuple[Interactions, int, np.ndarray]:
    """``part`` without its (user, item) pairs in ``seen`` (sorted pair keys), the number dropped, and the
    sorted keys of ``seen`` plus those of the returned part. ``part`` itself is returned when nothing clashes.
    """
    keys = _pair_keys(part)
    clash = _isin_sorted(keys, seen)
    n_dropped = int(clash.sum())
    if n_dropped:
        part = part.subset(np.flatnonzero(~clash))
        keys = keys[~clash]
    return part, n_dropped, np.sort(np.concatenate([seen, keys]))


def split_interactions(
    inter: Interactions,
    protocol: str = "random",
    test_ratio: float = 0.1,
    valid_ratio: float = 0.1,
    seed: int = 0,
) -> Split:
    """Dispatch to a protocol of :data:`SPLITS` (``loo`` carves validation iff ``valid_ratio > 0``)."""
    if protocol == "random":
        return random_split(inter, test_ratio, valid_ratio, seed)
    if protocol == "temporal":
        return temporal_split(inter, test_ratio, valid_ratio, seed)
    if protocol == "latest":
        return latest_ratio_split(inter, test_ratio, valid_ratio)
    if protocol == "loo":
        return leave_one_out_split(inter, valid=_ratio("valid_ratio", valid_ratio, "split_interactions") > 0)
    raise ConfigError(f"split must be one of {['auto', 'given', *SPLITS]}, got {protocol!r}")


def _orig(ids, k: int):
    v = ids[k] if ids is not None else k
    return v.item() if hasattr(v, "item") else v


def check_split(
    split: Split, source: str | None = None, cold_users: bool = True, negatives: bool = True, note: str = ""
) -> None:
    """Refuse a split that training or evaluation cannot use, with one line naming the first offender.

    Checks, in order:

    * every part shares the train part's id space (``n_users``, ``n_items``, and the original-id maps
      where both parts carry them);
    * with ``negatives``: no user has a training interaction with **every** item (no negative exists for
      it; the trainer checks this, :func:`~recneg.data.datasets.load_dataset` does not, so such data can
      still be loaded and described);
    * with ``cold_users``: no user has validation or test interactions but no training interaction (a model
      cannot rank for a user it never trained on). Items that occur only in validation or test stay legal.
      :func:`~recneg.data.datasets.load_dataset` turns this off for the ``temporal`` protocol, whose global
      cutoff makes users who arrive after it test-only by design.

    Args:
        split: the split to check.
        source: what to call the data in messages (default ``split.name``).
        cold_users: whether users without training interactions but with valid/test ones are an error.
        negatives: whether users who have every item in train are an error.
        note: appended to the cold-user message (e.g. the filters that were applied).

    Raises:
        DataError: the first failed check.
    """
    src = source or split.name
    train = split.train
    for name in ("valid", "test"):
        part = getattr(split, name)
        if part is None:
            continue
        if (part.n_users, part.n_items) != (train.n_users, train.n_items):
            raise DataError(
                f"{src}: the {name} part has an id space of {part.n_users} users x {part.n_items} items, "
                f"train has {train.n_users} x {train.n_items}; expected one id space for all parts "
                "(load_dataset builds one; by hand use Interactions.with_id_space)"
            )
        for what, a, b in (("user", train.user_ids, part.user_ids), ("item", train.item_ids, part.item_ids)):
            if a is None or b is None or a is b:
                continue
            if len(a) != len(b) or not np.array_equal(a, b):
                k = int(np.flatnonzero(a[: min(len(a), len(b))] != b[: min(len(a), len(b))])[0])
                raise DataError(
                    f"{src}: the {name} part maps internal {what} {k} to original id {_orig(b, k)!r}, train "
                    f"maps it to {_orig(a, k)!r}; expected one id space for all parts"
                )
    degree = np.diff(train.csr.indptr)
    full = np.flatnonzero(degree >= train.n_items) if negatives else np.zeros(0, dtype=np.int64)
    if full.size:
        u = int(full[0])
        raise DataError(
            f"{src}: user {_orig(train.user_ids, u)!r} has a training interaction with every one of the "
            f"{train.n_items} items, so no negative item exists for it ({full.size} such users); expected "
            "at least one item per user outside its training items (filter such users out)"
        )
    if not cold_users:
        return
    for name in ("valid", "test"):
        part = getattr(split, name)
        if part is None or len(part) == 0:
            continue
        cold = np.flatnonzero((part.user_counts > 0) & (degree == 0))
        if cold.size:
            u = int(cold[0])
            raise DataError(
                f"{src}: user {_orig(train.user_ids, u)!r} has {int(part.user_counts[u])} {name} "
                f"interaction(s) but no training interaction{note} ({cold.size} such users); expected every "
                f"{name} user to have training data (items that occur only in {name} are fine): remove these "
                "users or re-split with split='random'"
            )

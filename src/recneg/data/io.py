"""Readers of the public recommender-data formats.

Every reader returns an :class:`~recneg.data.interactions.Interactions` (ids remapped to ``0..n-1`` in the
sorted order of the original ids, which are kept in ``user_ids`` / ``item_ids``), or a
:class:`~recneg.data.interactions.Split` for formats that ship their own train/test files. Nothing here
filters or splits; see :mod:`recneg.data.preprocess` and :mod:`recneg.data.split`.

Formats:

* NGCF / LightGCN directories (:func:`read_ngcf`): ``train.txt``, ``test.txt``, optional ``valid.txt``;
  one line per user ``user item item ...``; ids already 0-based; an optional ``user_list.txt`` /
  ``item_list.txt`` (``org_id remap_id``) gives the original ids.
* MovieLens (:func:`read_movielens`): 100K ``u.data`` (tab), 1M/10M ``ratings.dat`` (``::``), 20M/25M
  ``ratings.csv`` (header ``userId,movieId,rating,timestamp``).
* Last.fm HetRec 2011 ``user_artists.dat`` (:func:`read_hetrec_lastfm`): tab with header; weight = plays.
* S3-Rec sequences such as ``Beauty.txt`` (:func:`read_sequences`): ``user item item ...`` in time order,
  1-based ids; the timestamp of an interaction is its position in the user's sequence.
* Generic CSV / TSV / Parquet with named columns (:func:`read_table`).
* RecBole atomic ``.inter`` files (:func:`read_recbole_inter`).

Repeated ``(user, item)`` pairs: a MovieLens ratings file and Last.fm ``user_artists.dat`` list each pair once
by construction, so a repeat is a :class:`~recneg.errors.DataError` naming both lines; in the other formats
(NGCF, sequences, tables, ``.inter``) a repeat is a legal event (a re-purchase, a second check-in), reported
by a :class:`DuplicateWarning` and collapsed to the earliest by :func:`recneg.data.preprocess.dedupe`.

Bad input raises :class:`~recneg.errors.DataError` with one line naming the file, the line, the field and what
was expected, e.g. ``u.data line 3, field item: expected a non-negative integer id, got '4.5'``.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from recneg.data.interactions import Interactions, Split
from recneg.errors import DataError

__all__ = [
    "FORMATS",
    "DuplicateWarning",
    "detect_format",
    "from_arrays",
    "read_hetrec_lastfm",
    "read_movielens",
    "read_ngcf",
    "read_path",
    "read_recbole_inter",
    "read_sequences",
    "read_table",
]

#: Format names :func:`detect_format` returns and :func:`read_path` accepts.
FORMATS = ("ngcf", "ml-100k", "ml-dat", "ml-csv", "hetrec-lastfm", "sequences", "table", "recbole")

#: ids of the integer-id formats must be below this (``np.fromstring`` silently saturates beyond int64)
_MAX_ID = 10**18

_PARSER_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


class DuplicateWarning(UserWarning):
    """Repeated ``(user, item)`` pairs in a file whose format allows them; each pair counts once."""


# ---------------------------------------------------------------------------------------------- helpers
def _name(path: Path) -> str:
    return str(path)


def _read_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} line {line}: expected UTF-8 text, found byte {data[e.start]:#04x}") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty, expected at least one line of data")
    return text


def from_arrays(users, items, timestamps=None, weights=None) -> Interactions:
    """Build :class:`Interactions` from original ids (any hashable, sortable type), remapping them.

    Internal ids follow the sorted order of the original ids, so integer ids keep their order.

    Args:
        users, items: ``[n]`` arrays of original ids.
        timestamps, weights: optional ``[n]`` float arrays.

    Returns:
        Interactions with ``user_ids[u]`` / ``item_ids[i]`` the original id of internal ``u`` / ``i``.
    """
    u_codes, u_ids = pd.factorize(np.asarray(users), sort=True)
    i_codes, i_ids = pd.factorize(np.asarray(items), sort=True)
    return Interactions(
        u_codes.astype(np.int64),
        i_codes.astype(np.int64),
        len(u_ids),
        len(i_ids),
        timestamps=timestamps,
        weights=weights,
        user_ids=np.asarray(u_ids),
        item_ids=np.asarray(i_ids),
    )


def _read_frame(
    path: Path, sep: str, names=None, header=None, text: str | None = None, expected_header=None, **kw
) -> pd.DataFrame:
    """``pd.read_csv`` with exact 1-based physical line numbers in errors; blank lines dropped.

    The returned frame keeps a ``_line`` column with the physical line number of every row. With
    ``expected_header`` (a list of names), the header line must be exactly that.
    """
    path = Path(path)
    if text is None and not path.is_file():
        raise DataError(f"{path}: no such file")
    if text is None and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty, expected at least one line of data")
    src = io.StringIO(text) if text is not None else path
    try:
        df = pd.read_csv(src, sep=sep, header=header, names=names, skip_blank_lines=False, engine="c", **kw)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty, expected a header line and data") from None
    except pd.errors.ParserError as e:
        m = _PARSER_LINE.search(str(e))
        if m:
            raise DataError(
                f"{path} line {m.group(2)}: expected {m.group(1)} fields separated by {sep!r}, "
                f"found {m.group(3)}"
            ) from None
        raise DataError(f"{path}: could not parse ({str(e).strip().splitlines()[-1]})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: expected UTF-8 text ({e.reason} at byte {e.start})") from None
    if expected_header is not None and [str(c) for c in df.columns] != list(expected_header):
        raise DataError(
            f"{path} line 1: expected header {sep.join(expected_header)!r}, "
            f"got {sep.join(map(str, df.columns))!r}"
        )
    first = 1 + (0 if header is None else 1)
    df["_line"] = np.arange(first, first + len(df), dtype=np.int64)
    data_cols = [c for c in df.columns if c != "_line"]
    blank = df[data_cols].isna().all(axis=1).to_numpy()
    if blank.any():
        df = df[~blank]
    if len(df) == 0:
        raise DataError(f"{path}: no data lines, expected at least one interaction")
    return df


def _bad_row(df: pd.DataFrame, bad: np.ndarray, col, path: Path, field: str, expected: str):
    k = int(np.flatnonzero(bad)[0])
    value = df[col].iloc[k]
    shown = "an empty or NaN value" if pd.isna(value) and not isinstance(value, str) else repr(_plain(value))
    raise DataError(
        f"{path} line {int(df['_line'].iloc[k])}, field {field}: expected {expected}, got {shown}"
    )


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _check_duplicates(
    inter: Interactions, lines: np.ndarray, path: Path, policy: str, what: str, unit: str = "line"
) -> None:
    """Repeated ``(user, item)`` pairs: ``policy="error"`` raises, ``"warn"`` warns (collapsed later).

    ``lines[k]`` is the physical line of interaction ``k``. The message names the first repeated pair in file
    order and the line it repeats. Cost: one stable sort of ``[n]`` int64 keys.
    """
    n = len(inter)
    if n < 2:
        return
    keys = inter.users * max(inter.n_items, 1) + inter.items
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    if not same.any():
        return
    later = order[1:][same]  # rows that repeat an earlier row
    k = int(later.min())
    first = int(np.flatnonzero(keys == keys[k])[0])
    u = _plain(inter.user_ids[inter.users[k]]) if inter.user_ids is not None else int(inter.users[k])
    i = _plain(inter.item_ids[inter.items[k]]) if inter.item_ids is not None else int(inter.items[k])
    where = f"{unit} {int(lines[k])} repeats {unit} {int(lines[first])} (user {u!r}, item {i!r})"
    if policy == "error":
        raise DataError(
            f"{path} {unit} {int(lines[k])}, fields user,item: expected each (user, item) pair once in a "
            f"{what}, got a repeat of {unit} {int(lines[first])} (user {u!r}, item {i!r})"
        )
    warnings.warn(
        f"{path}: {int(same.sum())} duplicate (user, item) interactions, first: {where}; "
        "each pair counts once (the earliest is kept)",
        DuplicateWarning,
        stacklevel=3,
    )


def _id_column(df: pd.DataFrame, col, path: Path, field: str) -> np.ndarray:
    """A column of non-negative integer ids, validated cheaply (the common case is already int64)."""
    s = df[col]
    if pd.api.types.is_integer_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.int64)
    else:
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(num) | (num != np.round(num))
        if bad.any():
            _bad_row(df, bad, col, path, field, "a non-negative integer id")
        arr = num.astype(np.int64)
    if arr.size and arr.min() < 0:
        _bad_row(df, arr < 0, col, path, field, "a non-negative integer id")
    return arr


def _token_column(df: pd.DataFrame, col, path: Path, field: str) -> np.ndarray:
    """A column of ids of any type (strings or ints); missing values are an error."""
    s = df[col]
    miss = s.isna().to_numpy()
    if miss.any():
        _bad_row(df, miss, col, path, field, "an id")
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.float64)
        if (arr == np.round(arr)).all():
            return arr.astype(np.int64)
        return arr
    arr = s.astype(str).to_numpy(dtype=object)
    ints = pd.to_numeric(s, errors="coerce")
    if ints.notna().all() and (ints == np.round(ints)).all():  # "12" tokens: keep them as ints
        return ints.to_numpy(dtype=np.int64)
    return arr


def _float_column(df: pd.DataFrame, col, path: Path, field: str, what: str = "a finite number") -> np.ndarray:
    s = df[col]
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        arr = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr)
    if bad.any():
        _bad_row(df, bad, col, path, field, what)
    return arr


def _time_column(df: pd.DataFrame, col, path: Path, field: str) -> np.ndarray:
    """Numeric timestamps, or date strings (converted to seconds since 1970)."""
    s = df[col]
    if not pd.api.types.is_numeric_dtype(s.dtype) and s.notna().all():
        num = pd.to_numeric(s, errors="coerce")
        if num.isna().any():
            with warnings.catch_warnings():  # "could not infer format": fine, we check every value below
                warnings.simplefilter("ignore", UserWarning)
                dt = pd.to_datetime(s, errors="coerce", utc=True)
            if dt.notna().all():  # via numpy microseconds: any pandas unit, years 1..9999, no overflow
                us = dt.dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype(np.int64)
                return us.astype(np.float64) / 1e6
            if dt.notna().any():
                _bad_row(df, dt.isna().to_numpy(), col, path, field, "a date like the other rows")
    return _float_column(df, col, path, field, "a finite timestamp (number or date)")


# ---------------------------------------------------------------------------------------------- NGCF
def _parse_id_lines(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``first rest rest ...`` integer lines fast.

    Returns:
        heads ``[n_lines]`` (the first id of every non-blank line), counts ``[n_lines]`` (ids after the
        first), rest ``[sum(counts)]`` (the following ids, line by line), lines ``[n_lines]`` (the 1-based
        physical line number of every non-blank line).
    """
    text = _read_text(path)
    lines = text.splitlines()
    tokens = [line.split() for line in lines]
    ntok = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    for k, t in enumerate(tokens):  # cheap C-level check per line; details only on failure
        s = "".join(t)
        if not (s.isascii() and s.isdigit()):
            for j, tok in enumerate(t):
                if not (tok.isascii() and tok.isdigit()):
                    field = "user" if j == 0 else f"item (id {j} of the line)"
                    raise DataError(
                        f"{path} line {k + 1}, field {field}: expected a non-negative integer id, got {tok!r}"
                    )
    try:
        flat = np.fromstring(text, dtype=np.int64, sep=" ") if ntok.sum() else np.zeros(0, np.int64)
    except ValueError:  # whitespace that str.split knows and numpy does not (\x1c, \x85, ...): re-join
        flat = np.fromstring(" ".join(" ".join(t) for t in tokens), dtype=np.int64, sep=" ")
    if flat.size != ntok.sum():  # pragma: no cover - guarded by the digit check above
        raise DataError(f"{path}: could not parse every id as an integer")
    if flat.size and flat.max() >= _MAX_ID:  # np.fromstring saturates at 2^63 - 1 instead of failing
        for k, t in enumerate(tokens):
            for j, tok in enumerate(t):
                if len(tok.lstrip("0")) > 18:
                    field = "user" if j == 0 else f"item (id {j} of the line)"
                    raise DataError(
                        f"{path} line {k + 1}, field {field}: expected an integer id below 10^18, got {tok!r}"
                    )
    nonblank = ntok > 0
    line_no = np.flatnonzero(nonblank) + 1
    ntok = ntok[nonblank]
    starts = np.cumsum(ntok) - ntok
    is_head = np.zeros(flat.size, dtype=bool)
    is_head[starts] = True
    return flat[starts], ntok - 1, flat[~is_head], line_no


def _read_id_list(path: Path, n: int, what: str, parts: dict):
    """``org_id remap_id`` list (NGCF ``user_list.txt``); returns original ids by remapped id, or None.

    The list declares the id space: its ``remap_id`` must run over ``0..n-1`` once each, where ``n`` is
    ``max id + 1`` of the split files. An id of the split files beyond the declared ids is named with its
    file and line.
    """
    if not path.is_file():
        return None
    df = _read_frame(path, sep=" ", header=0, names=["org_id", "remap_id"], dtype={"org_id": str})
    remap = _id_column(df, "remap_id", path, "remap_id")
    org = _token_column(df, "org_id", path, "org_id")
    if remap.size != n or not np.array_equal(np.sort(remap), np.arange(n)):
        beyond = ""
        if np.array_equal(np.sort(remap), np.arange(remap.size)):  # a valid list, but too short
            f, line, field, value = _locate_id(parts, what, remap.size)
            beyond = f"; {f} line {line}, field {field} has id {value}, beyond the {remap.size} declared"
        raise DataError(
            f"{path}: expected remap_id to run over 0..{n - 1} once each (the {what} id space of the "
            f"split files), found {remap.size} rows with ids {int(remap.min())}..{int(remap.max())}{beyond}"
        )
    out = np.empty(n, dtype=org.dtype)
    out[remap] = org
    return out


def _locate_id(parts: dict, what: str, limit: int) -> tuple[Path, int, str, int]:
    """``(file, line, field, id)`` of the first id ``>= limit`` of kind ``what`` (user/item) in the parts."""
    for p, (heads, counts, items, lines) in parts.items():
        ids = heads if what == "user" else items
        bad = np.flatnonzero(ids >= limit)
        if not bad.size:
            continue
        k = int(bad[0])
        if what == "user":
            return p, int(lines[k]), "user", int(heads[k])
        ends = np.cumsum(counts)
        row = int(np.searchsorted(ends, k, side="right"))
        j = k - int(ends[row] - counts[row]) + 1
        return p, int(lines[row]), f"item (id {j} of the line)", int(items[k])
    raise AssertionError("no id beyond the limit")  # pragma: no cover - callers check that one exists


def _check_dense_ids(parts: dict, what: str, n: int) -> None:
    """NGCF ids are remapped to ``0..n-1`` already: refuse an id space far larger than the ids in use (a
    file of another format, or one stray huge id, would otherwise allocate ``max id + 1`` rows)."""
    ids = [v[0] if what == "user" else v[2] for v in parts.values()]
    n_distinct = int(np.unique(np.concatenate(ids)).size)
    limit = 10 * n_distinct + 100_000
    if n > limit:
        f, line, field, value = _locate_id(parts, what, limit)
        raise DataError(
            f"{f} line {line}, field {field}: expected a remapped 0-based id (the files use {n_distinct} "
            f"distinct {what} ids), got {value}; NGCF files hold remapped ids (add a {what}_list.txt, or use "
            "another format)"
        )


def read_ngcf(directory: str | Path) -> Split:
    """Read an NGCF / LightGCN split directory.

    ``train.txt`` and ``test.txt`` (and ``valid.txt`` if present) hold one line per user:
    ``user item item ...`` with 0-based ids. A user line with no items is legal. The id space is
    ``max id + 1`` over all files, so items that occur only in the test file stay in it. Original ids
    come from ``user_list.txt`` / ``item_list.txt`` (``org_id remap_id``) when present; they declare the
    id space, and an id beyond it is an error naming its file and line. A ``(user, item)`` pair repeated
    within one file is collapsed later (:func:`recneg.data.preprocess.preprocess_split`) with a
    :class:`DuplicateWarning`.

    Returns:
        Split with ``train``, ``test`` and ``valid`` (``None`` without ``valid.txt``); no
        timestamps or weights.
    """
    directory = Path(directory)
    parts = {}
    for part in ("train", "valid", "test"):
        p = directory / f"{part}.txt"
        if part == "valid" and not p.is_file():
            continue
        if not p.is_file():
            raise DataError(
                f"{directory}: expected NGCF split files train.txt and test.txt, missing {p.name}"
            )
        parts[p] = _parse_id_lines(p)
    n_users = max(int(h.max()) + 1 if h.size else 0 for h, _, _, _ in parts.values())
    n_items = max(int(i.max()) + 1 if i.size else 0 for _, _, i, _ in parts.values())
    user_ids = _read_id_list(directory / "user_list.txt", n_users, "user", parts)
    item_ids = _read_id_list(directory / "item_list.txt", n_items, "item", parts)
    if user_ids is None:
        _check_dense_ids(parts, "user", n_users)
        user_ids = np.arange(n_users)
    if item_ids is None:
        _check_dense_ids(parts, "item", n_items)
        item_ids = np.arange(n_items)
    out = {}
    for p, (heads, counts, items, lines) in parts.items():
        inter = Interactions(
            np.repeat(heads, counts), items, n_users, n_items, user_ids=user_ids, item_ids=item_ids
        )
        _check_duplicates(inter, np.repeat(lines, counts), p, "warn", "NGCF file")
        out[p.stem] = inter
    return Split(
        train=out["train"],
        test=out["test"],
        valid=out.get("valid"),
        name=directory.name,
        info={"source": str(directory), "format": "ngcf"},
    )


# ---------------------------------------------------------------------------------------------- sequences
def read_sequences(path: str | Path) -> Interactions:
    """Read an S3-Rec sequence file (e.g. ``Beauty.txt``): ``user item item ...`` per line, in time order.

    Ids are 1-based in the official files (any non-negative ints are accepted and remapped). The file has no
    timestamps, so ``timestamps`` holds each interaction's position (0, 1, ...) in its user's sequence:
    per-user temporal splits (leave-one-out, latest-ratio) follow the sequence order. A global temporal
    cutoff over positions is legal but not meaningful.
    """
    path = Path(path)
    heads, counts, items, lines = _parse_id_lines(path)
    users = np.repeat(heads, counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(items.size, dtype=np.float64) - np.repeat(starts, counts)
    out = from_arrays(users, items, timestamps=pos)
    _check_duplicates(out, np.repeat(lines, counts), path, "warn", "sequence file")
    return out


# ---------------------------------------------------------------------------------------------- MovieLens
def read_movielens(path: str | Path) -> Interactions:
    """Read a MovieLens ratings file, chosen by its name.

    * ``u.data`` (100K): ``user \\t item \\t rating \\t timestamp``, no header, 1-based ids.
    * ``ratings.dat`` (1M, 10M): ``UserID::MovieID::Rating::Timestamp``.
    * ``ratings.csv`` (20M, 25M, latest): header ``userId,movieId,rating,timestamp``.

    Returns:
        Interactions with ``weights`` = rating and ``timestamps`` = unix seconds. Every rating is kept;
        apply a threshold with :func:`recneg.data.preprocess.apply_threshold`.
    """
    path = Path(path)
    names = ["user", "item", "rating", "timestamp"]
    if path.suffix == ".csv":
        expected = ["userId", "movieId", "rating", "timestamp"]
        df = _read_frame(path, sep=",", header=0, expected_header=expected)
        df = df.rename(columns=dict(zip(expected, names, strict=True)))
    elif path.suffix == ".dat":
        text = _read_text(path)
        if "\t" in text:
            raise DataError(
                f"{path} line {text.count(chr(10), 0, text.index(chr(9))) + 1}: "
                "expected '::' separators, found a tab"
            )
        df = _read_frame(path, sep="\t", names=names, text=text.replace("::", "\t"))
    else:
        df = _read_frame(path, sep="\t", names=names)
    users = _id_column(df, "user", path, "user")
    items = _id_column(df, "item", path, "item")
    ratings = _float_column(df, "rating", path, "rating", "a finite rating")
    times = _float_column(df, "timestamp", path, "timestamp", "a finite unix timestamp")
    out = from_arrays(users, items, timestamps=times, weights=ratings)
    _check_duplicates(out, df["_line"].to_numpy(), path, "error", "MovieLens ratings file")
    return out


def read_hetrec_lastfm(path: str | Path) -> Interactions:
    """Read Last.fm HetRec 2011 ``user_artists.dat``: header ``userID artistID weight``, tab separated.

    Returns:
        Interactions with ``weights`` = listening count and no timestamps.
    """
    path = Path(path)
    df = _read_frame(path, sep="\t", header=0, expected_header=["userID", "artistID", "weight"])
    out = from_arrays(
        _id_column(df, "userID", path, "userID"),
        _id_column(df, "artistID", path, "artistID"),
        weights=_float_column(df, "weight", path, "weight", "a finite listening count"),
    )
    _check_duplicates(out, df["_line"].to_numpy(), path, "error", "user_artists.dat file")
    return out


# ---------------------------------------------------------------------------------------------- generic
def _columns(columns) -> dict:
    if columns is None:
        return {}
    if isinstance(columns, dict):
        unknown = set(columns) - {"user", "item", "time", "weight"}
        if unknown:
            raise DataError(f"columns: unknown keys {sorted(unknown)}, expected user, item, time, weight")
        return {k: v for k, v in columns.items() if v is not None}
    columns = tuple(columns)
    if not 2 <= len(columns) <= 4:
        raise DataError(f"columns: expected (user, item[, time[, weight]]) column names, got {columns!r}")
    keys = ("user", "item", "time", "weight")[: len(columns)]
    return {k: v for k, v in zip(keys, columns, strict=True) if v is not None}


_DEFAULT_NAMES = {
    "user": ("user", "user_id", "userId", "userID", "uid"),
    "item": ("item", "item_id", "itemId", "movieId", "itemID", "iid"),
    "time": ("time", "timestamp", "ts"),
    "weight": ("weight", "rating", "count"),
}


def read_table(path: str | Path, columns=None, sep: str | None = None) -> Interactions:
    """Read a CSV / TSV / Parquet table of interactions with a header.

    Args:
        path: ``.csv`` (comma), ``.tsv`` / ``.tab`` (tab), ``.parquet`` / ``.pq``; other
            extensions need ``sep``.
        columns: ``(user, item[, time[, weight]])`` column names (``None`` to skip one), or a dict with keys
            ``user``, ``item``, ``time``, ``weight``. Default: the first header names among
            ``user``/``user_id``/``userId``, ``item``/``item_id``/``movieId``, ``time``/``timestamp`` and
            ``weight``/``rating``.
        sep: field separator for text files (default from the extension).

    Ids may be any tokens (ints or strings). Times may be numbers or date strings (seconds since 1970).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            df = pd.read_parquet(path)
        except ImportError as e:
            raise DataError(
                f"{path}: reading Parquet needs pyarrow (pip install 'recneg[parquet]'): {e}"
            ) from None
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types
            raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        if len(df) == 0:
            raise DataError(f"{path}: no rows, expected at least one interaction")
        df = df.reset_index(drop=True)
        df["_line"] = np.arange(len(df)) + 1  # row numbers (1-based) stand in for lines
        where = "row"
    else:
        if sep is None:
            sep = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(suffix)
            if sep is None:
                raise DataError(f"{path}: cannot tell the separator from extension {suffix!r}; pass sep")
        df = _read_frame(path, sep=sep, header=0)
        where = "line"
    header = [c for c in df.columns if c != "_line"]
    cols = _columns(columns)
    if not cols:
        for key, cands in _DEFAULT_NAMES.items():
            hit = next((c for c in cands if c in header), None)
            if hit is not None:
                cols[key] = hit
    for key in ("user", "item"):
        if key not in cols:
            raise DataError(f"{path}: no {key} column; header is {header}, pass columns=(user, item[, time])")
    for key, c in cols.items():
        if c not in header:
            raise DataError(f"{path}: column {c!r} (for {key}) is not in the header {header}")
    try:
        users = _token_column(df, cols["user"], path, cols["user"])
        items = _token_column(df, cols["item"], path, cols["item"])
        t = _time_column(df, cols["time"], path, cols["time"]) if "time" in cols else None
        w = _float_column(df, cols["weight"], path, cols["weight"]) if "weight" in cols else None
    except DataError as e:
        if where == "row":
            raise DataError(str(e).replace(" line ", " row ", 1)) from None
        raise
    out = from_arrays(users, items, timestamps=t, weights=w)
    _check_duplicates(out, df["_line"].to_numpy(), path, "warn", "table", unit=where)
    return out


def read_recbole_inter(path: str | Path, columns=None) -> Interactions:
    """Read a RecBole atomic ``.inter`` file.

    The header names each field as ``name:type`` (``token``, ``float``, ``token_seq``, ``float_seq``), tab
    separated, e.g. ``user_id:token  item_id:token  rating:float  timestamp:float``. The user / item /
    rating / time fields are RecBole's defaults ``user_id``, ``item_id``, ``rating``, ``timestamp``
    unless ``columns`` names others (as in :func:`read_table`, field names without their ``:type``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("r", encoding="utf-8", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if not first.strip():
        raise DataError(f"{path} line 1: expected a RecBole header 'name:type' per field, got an empty line")
    fields = first.split("\t")
    names, types = [], {}
    for field in fields:
        if ":" not in field:
            raise DataError(f"{path} line 1, field {field!r}: expected 'name:type' (e.g. user_id:token)")
        field_name, field_type = field.rsplit(":", 1)
        if field_type not in ("token", "float", "token_seq", "float_seq"):
            raise DataError(
                f"{path} line 1, field {field!r}: expected type token, float, token_seq or float_seq"
            )
        names.append(field_name)
        types[field_name] = field_type
    cols = _columns(columns) or {
        k: v
        for k, v in (("user", "user_id"), ("item", "item_id"), ("time", "timestamp"), ("weight", "rating"))
        if v in names or k in ("user", "item")
    }
    for key in ("user", "item"):
        if cols.get(key) not in names:
            raise DataError(
                f"{path} line 1: no {key} field {cols.get(key)!r} in header {names}; pass columns="
            )
    dtype = {n: str for n in names if types[n] != "float"}
    df = _read_frame(
        path, sep="\t", header=0, names=names, dtype=dtype, keep_default_na=False, na_values=[""]
    )
    users = _token_column(df, cols["user"], path, cols["user"])
    items = _token_column(df, cols["item"], path, cols["item"])
    t = (
        _time_column(df, cols["time"], path, cols["time"])
        if "time" in cols and cols["time"] in names
        else None
    )
    w = (
        _float_column(df, cols["weight"], path, cols["weight"])
        if "weight" in cols and cols["weight"] in names
        else None
    )
    out = from_arrays(users, items, timestamps=t, weights=w)
    _check_duplicates(out, df["_line"].to_numpy(), path, "warn", ".inter file")
    return out


# ---------------------------------------------------------------------------------------------- dispatch
def detect_format(path: str | Path) -> str:
    """The format of a file or directory, one of :data:`FORMATS`.

    A directory with ``train.txt`` is NGCF; a directory holding one known file (``u.data``, ``ratings.dat``,
    ``ratings.csv``, ``user_artists.dat``, one ``*.inter``) takes that file's format. Files go by name:
    ``u.data``, ``ratings.dat``, ``ratings.csv`` (if its header is MovieLens's), ``user_artists.dat``,
    ``*.inter``, other ``*.txt`` = S3-Rec sequences, ``*.csv`` / ``*.tsv`` / ``*.parquet`` = generic table.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "train.txt").is_file():
            return "ngcf"
        return detect_format(_dir_file(path))
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    name, suffix = path.name, path.suffix.lower()
    if name == "u.data":
        return "ml-100k"
    if name == "ratings.dat":
        return "ml-dat"
    if name == "ratings.csv":
        with path.open("r", encoding="utf-8", errors="replace") as f:
            if f.readline().strip().startswith("userId,movieId,rating,timestamp"):
                return "ml-csv"
        return "table"
    if name == "user_artists.dat":
        return "hetrec-lastfm"
    if suffix == ".inter":
        return "recbole"
    if suffix == ".txt":
        return "sequences"
    if suffix in (".csv", ".tsv", ".tab", ".parquet", ".pq"):
        return "table"
    raise DataError(
        f"{path}: unknown data format (expected a NGCF directory, u.data, ratings.dat, ratings.csv, "
        "user_artists.dat, *.inter, a sequence *.txt, or *.csv/*.tsv/*.parquet)"
    )


def _dir_file(directory: Path) -> Path:
    for name in ("u.data", "ratings.dat", "ratings.csv", "user_artists.dat"):
        if (directory / name).is_file():
            return directory / name
    inter = sorted(directory.glob("*.inter"))
    if len(inter) == 1:
        return inter[0]
    txt = sorted(directory.glob("*.txt"))
    if len(txt) == 1:
        return txt[0]
    raise DataError(
        f"{directory}: cannot tell the format of this directory (expected train.txt + test.txt, u.data, "
        "ratings.dat, ratings.csv, user_artists.dat, or a single *.inter or *.txt file)"
    )


def read_path(
    path: str | Path, columns=None, fmt: str | None = None
) -> tuple[Interactions | Split, str, Path]:
    """Read any supported file or directory.

    Returns:
        ``(data, format, file)``: an Interactions (or a Split for NGCF directories), the format name, and the
        file (or directory) actually read.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt != "ngcf" and path.is_dir():
        path = _dir_file(path)
    if fmt == "ngcf":
        return read_ngcf(path), fmt, path
    if fmt in ("ml-100k", "ml-dat", "ml-csv"):
        return read_movielens(path), fmt, path
    if fmt == "hetrec-lastfm":
        return read_hetrec_lastfm(path), fmt, path
    if fmt == "sequences":
        return read_sequences(path), fmt, path
    if fmt == "recbole":
        return read_recbole_inter(path, columns), fmt, path
    if fmt == "table":
        return read_table(path, columns), fmt, path
    raise DataError(f"{path}: unknown format {fmt!r}, expected one of {list(FORMATS)}")

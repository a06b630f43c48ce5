"""Side features of users and items, aligned to an :class:`~recneg.data.Interactions` id space.

A :class:`FeatureSet` holds, for every internal id ``0..n-1`` of one side (users or items), three kinds of
features as tensors ready for a tower network (:mod:`recneg.models.twotower`):

- **categorical** fields (one value per row: occupation, gender, release decade): ``[n, n_cat_fields]``
  int64 codes, one ``nn.Embedding`` per field;
- **multi-hot** sets (genres, tags): per field, an ``nn.EmbeddingBag`` input pair ``indices [nnz]`` /
  ``offsets [n + 1]`` (CSR layout, ``include_last_offset=True``);
- **dense** vectors: ``[n, k]`` float32, fed to the tower as they are (standardise them beforehand).

Alignment. Feature files and frames are keyed by the *original* ids of the data files; an Interactions keeps
those in ``user_ids`` / ``item_ids`` (``None`` means the original id equals the internal one). Rows are
matched on the original id: integer ids match whatever their dtype (``1``, ``1.0`` and ``"1"`` are one id).

Unknown bucket. Code ``0`` of every categorical field and of every multi-hot vocabulary is reserved for
"unknown": an id without a feature row, a missing (null) value, or an empty set gets it, so every row has a
value in every field and every bag is non-empty (``mode="mean"`` stays defined). Dense features of an id
without a row are zeros. ``FeatureSet.known`` says which ids had a row.

Loaders for public files: MovieLens 100K ``u.item`` (19 genre flags, latin-1, ``|``-separated) and
``u.user`` (age bucket, gender, occupation, zip prefix), Last.fm HetRec 2011 ``user_taggedartists.dat``
(each artist's top tags as a multi-hot set), and any pandas DataFrame or Parquet file.

Example::

    items = read_movielens_items("ml-100k/u.item")                 # DataFrame: item_id, title, year, genres
    item_features = FeatureSet.from_frame(items, key="item_id", ids=feature_ids(train, "items"),
                                          categorical=["decade"], multi_hot=["genres"])
    user_features, item_features = movielens_100k_features("ml-100k", train)   # the same, both sides
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recneg.errors import DataError

UNKNOWN = "<unk>"

#: MovieLens 100K genre names in column order (``u.genre``); used when ``u.genre`` is not beside ``u.item``.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

#: Age buckets of MovieLens 1M (``README`` of ML-1M), applied to the exact ages of ML-100K: lower bounds.
AGE_BUCKETS = (0, 18, 25, 35, 45, 50, 56)
AGE_BUCKET_NAMES = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


# --------------------------------------------------------------------------------------------- containers
@dataclass
class MultiHot:
    """One multi-hot field as an ``nn.EmbeddingBag`` input pair.

    Attributes:
        indices: ``[nnz]`` int64 codes in ``0..len(vocab)-1`` (0 = unknown).
        offsets: ``[n + 1]`` int64 CSR row pointers (row ``r`` = ``indices[offsets[r]:offsets[r+1]]``).
        vocab: ``vocab[c]`` is the token of code ``c``; ``vocab[0] == "<unk>"``.
    """

    indices: Tensor
    offsets: Tensor
    vocab: tuple

    @property
    def n_rows(self) -> int:
        return int(self.offsets.numel() - 1)

    def rows(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The bags of ``ids`` (any shape, flattened): ``(indices [nnz'], offsets [ids.numel() + 1])``."""
        return gather_bags(self.indices, self.offsets, ids.reshape(-1))

    def to(self, device) -> MultiHot:
        return MultiHot(self.indices.to(device), self.offsets.to(device), self.vocab)

    def to_lists(self) -> list[list]:
        """Tokens of each row (for inspection and tests)."""
        ind, off = self.indices.tolist(), self.offsets.tolist()
        return [[self.vocab[c] for c in ind[off[r] : off[r + 1]]] for r in range(self.n_rows)]


def gather_bags(indices: Tensor, offsets: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Select CSR rows ``ids [m]`` of a bag table, vectorised.

    Shape: ``indices [nnz]``, ``offsets [n + 1]``, ``ids [m]`` -> ``(indices [nnz'], offsets [m + 1])``.
    """
    starts = offsets[ids]
    lengths = offsets[ids + 1] - starts
    new_offsets = torch.zeros(ids.numel() + 1, dtype=torch.long, device=ids.device)
    torch.cumsum(lengths, 0, out=new_offsets[1:])
    total = int(new_offsets[-1])
    # position of each output code in the source: its row's source start + its rank inside the row
    row_of = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), lengths, output_size=total)
    rank = torch.arange(total, device=ids.device) - new_offsets[row_of]
    return indices[starts[row_of] + rank], new_offsets


@dataclass
class FeatureSet:
    """Side features of one side (users or items), one row per internal id.

    Attributes:
        n_rows: number of ids (``n_users`` or ``n_items``).
        categorical: ``[n_rows, n_cat_fields]`` int64 codes (0 = unknown), or ``None``.
        categorical_names: field names, one per column of ``categorical``.
        categorical_vocabs: per field, ``vocab[c]`` is the value of code ``c`` (``vocab[0] == "<unk>"``).
        multi_hot: field name -> :class:`MultiHot`.
        dense: ``[n_rows, k]`` float32, or ``None``; ``dense_names`` names its columns.
        known: ``[n_rows]`` bool, whether the id had a feature row.
    """

    n_rows: int
    categorical: Tensor | None = None
    categorical_names: tuple = ()
    categorical_vocabs: tuple = ()
    multi_hot: dict = field(default_factory=dict)
    dense: Tensor | None = None
    dense_names: tuple = ()
    known: Tensor | None = None

    # ------------------------------------------------------------------ properties
    @property
    def cardinalities(self) -> tuple[int, ...]:
        """Number of codes of each categorical field, the unknown code included."""
        return tuple(len(v) for v in self.categorical_vocabs)

    @property
    def n_dense(self) -> int:
        return 0 if self.dense is None else int(self.dense.shape[1])

    @property
    def empty(self) -> bool:
        """True when the set holds no feature at all."""
        return not self.categorical_names and not self.multi_hot and self.n_dense == 0

    def __repr__(self) -> str:
        cat = ", ".join(f"{n}({c})" for n, c in zip(self.categorical_names, self.cardinalities, strict=False))
        mh = ", ".join(f"{n}({len(f.vocab)})" for n, f in self.multi_hot.items())
        n_known = int(self.known.sum()) if self.known is not None else self.n_rows
        return (
            f"FeatureSet(n_rows={self.n_rows}, known={n_known}, categorical=[{cat}], multi_hot=[{mh}], "
            f"dense={self.n_dense})"
        )

    def to(self, device) -> FeatureSet:
        return FeatureSet(
            self.n_rows,
            None if self.categorical is None else self.categorical.to(device),
            self.categorical_names,
            self.categorical_vocabs,
            {k: v.to(device) for k, v in self.multi_hot.items()},
            None if self.dense is None else self.dense.to(device),
            self.dense_names,
            None if self.known is None else self.known.to(device),
        )

    def merge(self, other: FeatureSet) -> FeatureSet:
        """The fields of both sets side by side (same ``n_rows``; field names must not clash)."""
        if other.n_rows != self.n_rows:
            raise DataError(f"cannot merge feature sets of {self.n_rows} and {other.n_rows} rows")
        clash = set(self.categorical_names) & set(other.categorical_names) | set(self.multi_hot) & set(
            other.multi_hot
        )
        if clash:
            raise DataError(f"feature fields {sorted(clash)} occur in both feature sets")
        cats = [c for c in (self.categorical, other.categorical) if c is not None]
        dense = [d for d in (self.dense, other.dense) if d is not None]
        known = [k for k in (self.known, other.known) if k is not None]
        return FeatureSet(
            self.n_rows,
            torch.cat(cats, 1) if cats else None,
            self.categorical_names + other.categorical_names,
            self.categorical_vocabs + other.categorical_vocabs,
            {**self.multi_hot, **other.multi_hot},
            torch.cat(dense, 1) if dense else None,
            self.dense_names + other.dense_names,
            (known[0] | known[1]) if len(known) == 2 else (known[0] if known else None),
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        key: str,
        ids,
        categorical: Sequence[str] = (),
        multi_hot: Sequence[str] = (),
        dense: Sequence[str] = (),
        sep: str = "|",
        source: str = "frame",
    ) -> FeatureSet:
        """Build a feature set aligned to ``ids`` from a DataFrame keyed by original ids.

        Args:
            frame: one row per original id (column ``key``); ids absent from ``frame`` get the unknown bucket.
            key: column holding the original id.
            ids: ``[n]`` original ids in internal order (``feature_ids(train, "items")``).
            categorical: columns with one value per row; nulls -> unknown.
            multi_hot: columns holding a list/tuple/set/array of tokens, or a ``sep``-joined string.
            dense: numeric columns, or columns whose cells are equal-length numeric arrays.
            sep: separator of string-encoded multi-hot cells.
            source: name used in error messages (file name).

        Returns:
            A :class:`FeatureSet` with ``n_rows = len(ids)``.
        """
        if key not in frame.columns:
            raise DataError(f"{source}: no column {key!r} (columns: {list(frame.columns)})")
        for col in (*categorical, *multi_hot, *dense):
            if col not in frame.columns:
                raise DataError(f"{source}: no feature column {col!r} (columns: {list(frame.columns)})")
        frame_keys = _key_strings(frame[key].to_numpy())
        dup = pd.Index(frame_keys).duplicated()
        if dup.any():
            raise DataError(
                f"{source}: id {frame[key].iloc[int(np.flatnonzero(dup)[0])]!r} has more than one row"
            )
        wanted = _key_strings(np.asarray(ids))
        row = pd.Index(frame_keys).get_indexer(wanted)  # [n] row of each id in frame, -1 when absent
        known = row >= 0
        n = len(wanted)
        src = np.where(known, row, 0)

        cat_codes, cat_vocabs = [], []
        for col in categorical:
            values = frame[col]
            codes, uniques = pd.factorize(values, sort=False)
            # deterministic vocabulary: sorted by the value's text
            order = np.argsort(np.asarray([str(u) for u in uniques]), kind="stable")
            remap = np.empty(len(uniques), dtype=np.int64)
            remap[order] = np.arange(1, len(uniques) + 1)
            full = np.where(codes >= 0, remap[np.maximum(codes, 0)] if len(uniques) else 0, 0)
            cat_codes.append(np.where(known, full[src] if len(full) else 0, 0))
            cat_vocabs.append((UNKNOWN, *[uniques[i] for i in order]))

        bags = {}
        for col in multi_hot:
            lists = [_as_tokens(v, sep) for v in frame[col].tolist()]
            vocab = sorted({t for lst in lists for t in lst}, key=str)
            code = {t: c for c, t in enumerate(vocab, start=1)}
            coded = [
                [code[t] for t in dict.fromkeys(lst)] or [0] for lst in lists
            ]  # de-duplicated, 0 if empty
            per_row = [coded[r] if k else [0] for r, k in zip(src.tolist(), known.tolist(), strict=False)]
            lengths = np.fromiter((len(x) for x in per_row), dtype=np.int64, count=n)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            flat = np.fromiter((c for x in per_row for c in x), dtype=np.int64, count=int(offsets[-1]))
            bags[col] = MultiHot(torch.from_numpy(flat), torch.from_numpy(offsets), (UNKNOWN, *vocab))

        dense_blocks, dense_names = [], []
        for col in dense:
            block = _dense_block(frame[col], col, source)  # [len(frame), k]
            if not np.isfinite(block).all():
                r = int(np.flatnonzero(~np.isfinite(block).all(1))[0])
                raise DataError(f"{source}: dense feature {col!r} of id {frame[key].iloc[r]!r} is not finite")
            aligned = np.where(known[:, None], block[src] if len(block) else 0.0, 0.0).astype(np.float32)
            dense_blocks.append(aligned)
            dense_names.extend(
                [col] if block.shape[1] == 1 else [f"{col}[{i}]" for i in range(block.shape[1])]
            )

        return cls(
            n_rows=n,
            categorical=torch.from_numpy(np.stack(cat_codes, 1)) if cat_codes else None,
            categorical_names=tuple(categorical),
            categorical_vocabs=tuple(cat_vocabs),
            multi_hot=bags,
            dense=torch.from_numpy(np.concatenate(dense_blocks, 1)) if dense_blocks else None,
            dense_names=tuple(dense_names),
            known=torch.from_numpy(known),
        )

    @classmethod
    def from_parquet(cls, path: str | Path, key: str, ids, **kwargs) -> FeatureSet:
        """:meth:`from_frame` over a Parquet file (needs ``pyarrow``: ``pip install recneg[parquet]``)."""
        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'recneg[parquet]')") from exc
        return cls.from_frame(frame, key, ids, source=str(path), **kwargs)


def feature_ids(interactions, side: str) -> np.ndarray:
    """Original ids of ``side`` (``"users"`` or ``"items"``) in internal order (identity when absent)."""
    if side not in ("users", "items"):
        raise ValueError(f"side must be 'users' or 'items', got {side!r}")
    ids = interactions.user_ids if side == "users" else interactions.item_ids
    n = interactions.n_users if side == "users" else interactions.n_items
    return np.arange(n) if ids is None else np.asarray(ids)


# --------------------------------------------------------------------------------------------- helpers
def _key_strings(a: np.ndarray) -> np.ndarray:
    """Ids as strings, integer-valued numbers written without a fraction, so 1, 1.0 and "1" match."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a.astype(np.int64).astype(str)
    if a.dtype.kind == "f":
        if np.isfinite(a).all() and (a == np.round(a)).all():
            return a.astype(np.int64).astype(str)
        return a.astype(str)
    out = []
    for v in a.tolist():
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(str(int(v)))
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return np.asarray(out, dtype=str)


def _as_tokens(value, sep: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(sep) if t.strip()]
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Series)):
        return [v for v in list(value) if not (isinstance(v, float) and np.isnan(v))]
    if isinstance(value, float) and np.isnan(value):
        return []
    return [value]


def _dense_block(series: pd.Series, col: str, source: str) -> np.ndarray:
    if len(series) == 0:
        return np.zeros((0, 1), dtype=np.float64)
    first = series.iloc[0]
    if isinstance(first, (list, tuple, np.ndarray)):
        try:
            return np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in series.tolist()])
        except ValueError as exc:
            raise DataError(f"{source}: dense feature {col!r} holds arrays of different lengths") from exc
    try:
        return series.to_numpy(dtype=np.float64).reshape(-1, 1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: dense feature {col!r} is not numeric") from exc


# --------------------------------------------------------------------------------------------- loaders
def read_movielens_items(path: str | Path) -> pd.DataFrame:
    """MovieLens 100K ``u.item`` (latin-1, ``|``-separated, 5 text columns then 19 genre flags).

    Returns:
        DataFrame with ``item_id`` (int), ``title``, ``year`` (float, NaN when the date is missing),
        ``decade`` (e.g. ``"1990s"``, ``None`` when unknown) and ``genres`` (list of genre names; the file's
        own "unknown" genre is a genre like any other). Genre names come from ``u.genre`` beside the file
        when present, else :data:`ML100K_GENRES`.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    if frame.shape[1] != 24:
        raise DataError(
            f"{path}: expected 24 '|'-separated columns (5 + 19 genre flags), got {frame.shape[1]}"
        )
    genres = list(ML100K_GENRES)
    genre_file = path.with_name("u.genre")
    if genre_file.exists():
        g = pd.read_csv(genre_file, sep="|", header=None, encoding="latin-1", dtype=str).dropna()
        if len(g) == 19:
            order = np.argsort(g[1].astype(int).to_numpy(), kind="stable")
            genres = [str(g[0].iloc[k]) for k in order]
    flags = frame.iloc[:, 5:24]
    bad = ~flags.isin(["0", "1"])
    if bad.to_numpy().any():
        r, c = (int(x[0]) for x in np.nonzero(bad.to_numpy()))
        raise DataError(f"{path}: line {r + 1}, genre flag {c + 1} must be 0 or 1, got {flags.iat[r, c]!r}")
    flag_arr = flags.to_numpy() == "1"
    ids = pd.to_numeric(frame[0], errors="coerce")
    if ids.isna().any():
        r = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataError(f"{path}: line {r + 1}, item id {frame.iat[r, 0]!r} is not an integer")
    year = pd.to_datetime(frame[2], format="%d-%b-%Y", errors="coerce").dt.year.astype(float)
    decade = [None if np.isnan(y) else f"{int(y) // 10 * 10}s" for y in year]
    return pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": frame[1],
            "year": year,
            "decade": decade,
            "genres": [[genres[j] for j in np.flatnonzero(row)] for row in flag_arr],
        }
    )


def age_bucket(age) -> np.ndarray:
    """MovieLens 1M age bucket names of integer ages (``"<18"``, ``"18-24"``, …, ``"56+"``)."""
    idx = np.searchsorted(np.asarray(AGE_BUCKETS), np.asarray(age), side="right") - 1
    return np.asarray(AGE_BUCKET_NAMES, dtype=object)[np.clip(idx, 0, len(AGE_BUCKETS) - 1)]


def read_movielens_users(path: str | Path, zip_digits: int = 1) -> pd.DataFrame:
    """MovieLens 100K ``u.user``: ``user_id|age|gender|occupation|zip``.

    Args:
        zip_digits: length of the zip-code prefix kept (1 = the US postal region; non-US codes keep
            their first characters too).

    Returns:
        DataFrame with ``user_id`` (int), ``age`` (int), ``age_bucket``, ``gender``, ``occupation``,
        ``zip_prefix``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame = pd.read_csv(path, sep="|", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    if frame.shape[1] != 5:
        raise DataError(f"{path}: expected 5 '|'-separated columns user_id|age|gender|occupation|zip")
    for col, name in ((0, "user id"), (1, "age")):
        v = pd.to_numeric(frame[col], errors="coerce")
        if v.isna().any():
            r = int(np.flatnonzero(v.isna().to_numpy())[0])
            raise DataError(f"{path}: line {r + 1}, {name} {frame.iat[r, col]!r} is not an integer")
    age = frame[1].astype(np.int64)
    return pd.DataFrame(
        {
            "user_id": frame[0].astype(np.int64),
            "age": age,
            "age_bucket": age_bucket(age.to_numpy()),
            "gender": frame[2].str.strip(),
            "occupation": frame[3].str.strip(),
            "zip_prefix": frame[4].str.strip().str.upper().str[:zip_digits],
        }
    )


def read_lastfm_artist_tags(
    path: str | Path, top_k: int = 10, tags_path: str | Path | None = None
) -> pd.DataFrame:
    """Each artist's ``top_k`` most used tags from Last.fm HetRec 2011 ``user_taggedartists.dat``.

    Tags are ranked per artist by the number of assignments (users who gave the tag), ties broken by the
    smaller tag id, so the result is deterministic.

    Args:
        path: tab-separated ``userID artistID tagID day month year`` with a header line.
        top_k: tags kept per artist.
        tags_path: optional ``tags.dat`` (``tagID tagValue``, latin-1); tags become their names.

    Returns:
        DataFrame with ``artist_id`` (int) and ``tags`` (list of tag ids, or names with ``tags_path``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    frame = pd.read_csv(path, sep="\t", encoding="latin-1")
    for col in ("artistID", "tagID"):
        if col not in frame.columns:
            raise DataError(f"{path}: no column {col!r} in the header (columns: {list(frame.columns)})")
    counts = frame.groupby(["artistID", "tagID"]).size().rename("n").reset_index()
    counts = counts.sort_values(["artistID", "n", "tagID"], ascending=[True, False, True], kind="stable")
    counts = counts.groupby("artistID", sort=True).head(top_k)
    if tags_path is not None:
        names = pd.read_csv(tags_path, sep="\t", encoding="latin-1")
        counts["tagID"] = (
            counts["tagID"]
            .map(dict(zip(names["tagID"], names["tagValue"], strict=False)))
            .fillna(counts["tagID"].astype(str))
        )
    grouped = counts.groupby("artistID", sort=True)["tagID"].agg(list)
    return pd.DataFrame({"artist_id": grouped.index.astype(np.int64), "tags": grouped.to_list()})


def movielens_100k_features(
    data_dir: str | Path, train, zip_digits: int = 1
) -> tuple[FeatureSet, FeatureSet]:
    """User and item features of MovieLens 100K aligned to ``train``'s id maps.

    Users: categorical ``age_bucket``, ``gender``, ``occupation``, ``zip_prefix``.
    Items: multi-hot ``genres`` (19 flags) and categorical ``decade`` of release.

    Returns:
        ``(user_features, item_features)``.
    """
    data_dir = Path(data_dir)
    users = read_movielens_users(data_dir / "u.user", zip_digits=zip_digits)
    items = read_movielens_items(data_dir / "u.item")
    user_fs = FeatureSet.from_frame(
        users,
        "user_id",
        feature_ids(train, "users"),
        categorical=["age_bucket", "gender", "occupation", "zip_prefix"],
        source=str(data_dir / "u.user"),
    )
    item_fs = FeatureSet.from_frame(
        items,
        "item_id",
        feature_ids(train, "items"),
        categorical=["decade"],
        multi_hot=["genres"],
        source=str(data_dir / "u.item"),
    )
    return user_fs, item_fs


def lastfm_features(data_dir: str | Path, train, top_k: int = 10) -> tuple[None, FeatureSet]:
    """Item (artist) features of Last.fm HetRec 2011: multi-hot ``tags`` (top ``top_k`` per artist).

    Returns:
        ``(None, item_features)`` (the dataset has no user attributes).
    """
    data_dir = Path(data_dir)
    tags = read_lastfm_artist_tags(data_dir / "user_taggedartists.dat", top_k=top_k)
    return None, FeatureSet.from_frame(
        tags,
        "artist_id",
        feature_ids(train, "items"),
        multi_hot=["tags"],
        source=str(data_dir / "user_taggedartists.dat"),
    )


def dataset_features(name_or_path, data_dir, train) -> tuple[FeatureSet | None, FeatureSet | None]:
    """The side features a dataset ships, aligned to ``train``; ``(None, None)`` when it ships none.

    Knows MovieLens 100K (a folder with ``u.user`` and ``u.item``: :func:`movielens_100k_features`) and
    Last.fm HetRec 2011 (a folder with ``user_taggedartists.dat``: :func:`lastfm_features`).

    Args:
        name_or_path: a dataset name of :mod:`recneg.data.datasets` (``"ml-100k"``, ``"lastfm"``) or a path
            to the dataset's folder or to one of its files.
        data_dir: the folder holding ``<name>/`` folders (as for ``load_dataset``; ``None``: the default).
        train: the training :class:`~recneg.data.Interactions` (its id maps).

    Returns:
        ``(user_features, item_features)``, either possibly ``None``.
    """
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        try:
            from recneg.data.datasets import resolve

            folder = resolve(str(name_or_path), data_dir)[1]
        except DataError:
            return None, None
    if folder.is_file():
        folder = folder.parent
    if (folder / "u.user").is_file() and (folder / "u.item").is_file():
        return movielens_100k_features(folder, train)
    if (folder / "user_taggedartists.dat").is_file():
        return lastfm_features(folder, train)
    return None, None

"""Named datasets, their files and downloads, and the public entry point :func:`load_dataset`.

A named dataset ``name`` resolves to ``<data_dir>/<name>/`` holding the official file names, where
``data_dir`` is the argument, else the environment variable ``RECNEG_DATA``, else ``$XDG_CACHE_HOME/recneg``
(``~/.cache/recneg``). So ``load_dataset("gowalla", data_dir="../shared/data")`` reads
``../shared/data/gowalla/train.txt`` and ``test.txt``.

When required files are missing and ``download=True``, the official archive or raw files are fetched into a
temporary file in the target folder, the extracted files are checked against the sizes and hashes recorded
below (from ``shared/data/README.md``), and only then moved into place (``os.replace``), so an interrupted or
corrupt download never leaves a file under its final name. ``download=False`` (and any offline failure)
raises a :class:`~recneg.errors.DataError` saying which files to put where.

See ``docs/data.md`` for the formats, thresholds and split protocols.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recneg.data import io as dio
from recneg.data.interactions import Interactions, Split
from recneg.data.preprocess import preprocess, preprocess_split
from recneg.data.split import SPLITS, carve_validation, check_split, make_leak_free, split_interactions
from recneg.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "CorruptFileWarning",
    "SPECS",
    "DatasetSpec",
    "RemoteFile",
    "default_data_dir",
    "describe",
    "ensure_files",
    "load_dataset",
    "resolve",
]

_GL = "https://files.grouplens.org/datasets"
_LGCN = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data"
_S3REC = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named dataset.

    Args:
        name: file name inside ``<data_dir>/<dataset>/``.
        url: where to fetch it (a raw file, or a zip archive holding ``member``).
        member: path of the file inside the zip archive at ``url`` (``None``: ``url`` is the file itself).
        size, sha256, git_sha1: expected byte size / SHA-256 / git blob SHA-1 of the file, where recorded.
        required: whether loading needs it (optional files are fetched only alongside required ones).
    """

    name: str
    url: str
    member: str | None = None
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None
    required: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its description, on-disk format, files and default positive threshold (``None``)."""

    name: str
    description: str
    format: str
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)
    homepage: str = ""

    @property
    def main_file(self) -> str:
        return self.files[0].name


def _ngcf(name: str, hashes: dict | None = None) -> tuple[RemoteFile, ...]:
    hashes = hashes or {}
    out = []
    for fname, req in (
        ("train.txt", True),
        ("test.txt", True),
        ("user_list.txt", False),
        ("item_list.txt", False),
    ):
        size, sha, git = hashes.get(fname, (None, None, None))
        out.append(RemoteFile(fname, f"{_LGCN}/{name}/{fname}", None, size, sha, git, req))
    return tuple(out)


SPECS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "synthetic",
            "built-in seeded generator with known ground truth (600 users, 800 items); no files",
            "synthetic",
        ),
        DatasetSpec(
            "ml-100k",
            "MovieLens 100K: 943 users, 1,682 movies, 100,000 ratings 1-5 with timestamps (u.data)",
            "ml-100k",
            (
                RemoteFile(
                    "u.data",
                    f"{_GL}/movielens/ml-100k.zip",
                    "ml-100k/u.data",
                    1_979_173,
                    "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                ),
            ),
            "https://grouplens.org/datasets/movielens/100k/",
        ),
        DatasetSpec(
            "ml-1m",
            "MovieLens 1M: 6,040 users, 3,706 movies, 1,000,209 ratings with timestamps (ratings.dat)",
            "ml-dat",
            (RemoteFile("ratings.dat", f"{_GL}/movielens/ml-1m.zip", "ml-1m/ratings.dat"),),
            "https://grouplens.org/datasets/movielens/1m/",
        ),
        DatasetSpec(
            "ml-10m",
            "MovieLens 10M: 69,878 users, 10,677 movies, 10,000,054 ratings (ratings.dat)",
            "ml-dat",
            (RemoteFile("ratings.dat", f"{_GL}/movielens/ml-10m.zip", "ml-10M100K/ratings.dat"),),
            "https://grouplens.org/datasets/movielens/10m/",
        ),
        DatasetSpec(
            "ml-20m",
            "MovieLens 20M: 138,493 users, 26,744 movies, 20,000,263 ratings (ratings.csv)",
            "ml-csv",
            (RemoteFile("ratings.csv", f"{_GL}/movielens/ml-20m.zip", "ml-20m/ratings.csv"),),
            "https://grouplens.org/datasets/movielens/20m/",
        ),
        DatasetSpec(
            "ml-25m",
            "MovieLens 25M: 162,541 users, 59,047 movies, 25,000,095 ratings (ratings.csv)",
            "ml-csv",
            (RemoteFile("ratings.csv", f"{_GL}/movielens/ml-25m.zip", "ml-25m/ratings.csv"),),
            "https://grouplens.org/datasets/movielens/25m/",
        ),
        DatasetSpec(
            "gowalla",
            "Gowalla check-ins, NGCF/LightGCN split: 29,858 users, 40,981 items, 810,128 train / "
            "217,242 test (train.txt, test.txt)",
            "ngcf",
            _ngcf(
                "gowalla",
                {
                    "train.txt": (
                        4_633_414,
                        "7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62",
                        "a27782bd7a1d4d0744148dc0460ea94da74763f2",
                    ),
                    "test.txt": (
                        1_372_559,
                        "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
                        "9ed5af4b5d21511f33740b4e22e3852f45671800",
                    ),
                    "user_list.txt": (
                        351_203,
                        "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1",
                        "6be41d0eedf17a8d9345ee4f7b70124cd4423bc4",
                    ),
                    "item_list.txt": (
                        506_926,
                        "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139",
                        "ced87ec4352ba75a70b4c3afc62361aa655cc293",
                    ),
                },
            ),
            "https://github.com/kuandeng/LightGCN/tree/master/Data/gowalla",
        ),
        DatasetSpec(
            "yelp2018",
            "Yelp2018, NGCF/LightGCN split: 31,668 users, 38,048 items, 1,237,259 train / 324,147 test",
            "ngcf",
            _ngcf("yelp2018"),
            "https://github.com/kuandeng/LightGCN/tree/master/Data/yelp2018",
        ),
        DatasetSpec(
            "amazon-book",
            "Amazon-book, NGCF/LightGCN split: 52,643 users, 91,599 items, 2,380,730 train / 603,378 test",
            "ngcf",
            _ngcf("amazon-book", {"train.txt": (None, None, "6ef55159c5f1fd7f6d86eb9ff290d0cc2854ac99")}),
            "https://github.com/kuandeng/LightGCN/tree/master/Data/amazon-book",
        ),
        DatasetSpec(
            "lastfm-hetrec2011",
            "Last.fm HetRec 2011: 1,892 users, 17,632 artists, 92,834 user-artist pairs "
            "weighted by play count (user_artists.dat)",
            "hetrec-lastfm",
            (
                RemoteFile(
                    "user_artists.dat",
                    f"{_GL}/hetrec2011/hetrec2011-lastfm-2k.zip",
                    "user_artists.dat",
                    1_203_620,
                    "254272fa721c3935e8be286d28c051b206844307128698ab4eaa41d483379416",
                ),
            ),
            "https://grouplens.org/datasets/hetrec-2011/",
        ),
        DatasetSpec(
            "amazon-beauty-s3rec",
            "Amazon Beauty 5-core, S3-Rec sequences: 22,363 users, 12,101 items, 198,502 "
            "interactions in time order, no timestamps (Beauty.txt)",
            "sequences",
            (
                RemoteFile(
                    "Beauty.txt",
                    f"{_S3REC}/Beauty.txt",
                    None,
                    1_090_094,
                    "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                ),
            ),
            "https://github.com/RUCAIBox/CIKM2020-S3Rec",
        ),
    ]
}

#: Named datasets: name → one-line description (``recneg list datasets``).
DATASETS: dict[str, str] = {name: spec.description for name, spec in SPECS.items()}

_ALIASES = {
    "movielens-100k": "ml-100k",
    "movielens-1m": "ml-1m",
    "lastfm": "lastfm-hetrec2011",
    "beauty": "amazon-beauty-s3rec",
    "yelp": "yelp2018",
}

SPLIT_CHOICES = ("auto", "given", *SPLITS)


class CorruptFileWarning(UserWarning):
    """A file of a named dataset does not match its recorded size or hash."""


# ---------------------------------------------------------------------------------------------- locations
def default_data_dir() -> Path:
    """``$RECNEG_DATA``, else ``$XDG_CACHE_HOME/recneg``, else ``~/.cache/recneg``."""
    env = os.environ.get("RECNEG_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "recneg"


def resolve(name: str, data_dir: str | Path | None = None) -> tuple[DatasetSpec, Path]:
    """The spec of a named dataset and its folder ``<data_dir>/<name>/`` (which may not exist yet)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SPECS:
        raise DataError(
            f"unknown dataset {name!r}: expected one of {sorted(SPECS)} or a path to a file or folder"
        )
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return SPECS[key], base / key


# ---------------------------------------------------------------------------------------------- download
#: The opener used for downloads; tests replace it (``monkeypatch.setattr(datasets, "_urlopen", fake)``).
_urlopen = urllib.request.urlopen


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``dest`` (already a temporary name)."""
    with _urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, length=1 << 20)


def _digests(path: Path) -> tuple[int, str, str]:
    size = path.stat().st_size
    sha = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            git.update(chunk)
    return size, sha.hexdigest(), git.hexdigest()


def _mismatch(path: Path, rf: RemoteFile) -> str | None:
    """Why ``path`` is not the recorded file ``rf`` (size, SHA-256, git blob SHA-1), or ``None``."""
    size, sha, git = _digests(path)
    if rf.size is not None and size != rf.size:
        return f"has {size} bytes, expected {rf.size}"
    if rf.sha256 is not None and sha != rf.sha256:
        return f"has sha256 {sha}, expected {rf.sha256}"
    if rf.git_sha1 is not None and git != rf.git_sha1:
        return f"has git blob sha1 {git}, expected {rf.git_sha1}"
    return None


def _verify(path: Path, rf: RemoteFile, dataset: str) -> None:
    problem = _mismatch(path, rf)
    if problem is not None:
        raise DataError(f"downloaded {rf.name} of {dataset} ({rf.url}) {problem}; it was discarded")


#: cached files that passed verification in this process: (path, size, mtime_ns)
_VERIFIED: set[tuple[str, int, int]] = set()


def _corrupt_cached(spec: DatasetSpec, folder: Path) -> dict[str, str]:
    """Files of ``spec`` present in ``folder`` that fail their recorded size / hashes: name → why."""
    bad = {}
    for rf in spec.files:
        p = folder / rf.name
        if (rf.size is None and rf.sha256 is None and rf.git_sha1 is None) or not p.is_file():
            continue
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            continue
        problem = _mismatch(p, rf)
        if problem is None:
            _VERIFIED.add(key)
        else:
            bad[rf.name] = problem
    return bad


def _tmp_in(folder: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=".recneg-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


def _missing_message(spec: DatasetSpec, folder: Path, missing: list[RemoteFile], why: str) -> str:
    src = sorted({rf.url for rf in missing})
    return (
        f"dataset {spec.name!r}: {why}; put {', '.join(rf.name for rf in missing)} into {folder}/ "
        f"(official source: {', '.join(src)}{'; ' + spec.homepage if spec.homepage else ''}) "
        "or pass data_dir= / set RECNEG_DATA to a folder that has them"
    )


def ensure_files(spec: DatasetSpec, folder: Path, download: bool = True) -> None:
    """Make sure the required files of ``spec`` are in ``folder``, downloading them if allowed.

    Files already there that have a recorded size or hash are verified (once per process while their size
    and mtime do not change). A file that fails is a corrupted cache entry: with ``download=True`` the
    official file is fetched and verified, the damaged one is renamed ``<name>.corrupt`` and the new one
    moved into place; with ``download=False`` it is used as it is, with a :class:`CorruptFileWarning`.

    Raises:
        DataError: files missing and ``download=False``, the download failed, or a file failed verification
            (nothing is left under a final name in that case).
    """
    corrupt = _corrupt_cached(spec, folder)
    if corrupt and not download:
        for name, why in corrupt.items():
            warnings.warn(
                f"{folder / name} {why} (the official {spec.name} file); using it as it is "
                "(download=True moves it to *.corrupt and fetches the official file)",
                CorruptFileWarning,
                stacklevel=3,
            )
        corrupt = {}
    missing = [rf for rf in spec.files if rf.required and not (folder / rf.name).is_file()]
    missing += [rf for rf in spec.files if rf.required and rf.name in corrupt]
    if not missing:
        return
    if not download:
        raise DataError(_missing_message(spec, folder, missing, f"files missing in {folder}"))
    wanted = [rf for rf in spec.files if not (folder / rf.name).is_file() or rf.name in corrupt]
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            _missing_message(spec, folder, missing, f"cannot create {folder} ({e.strerror})")
        ) from None
    temps: list[Path] = []
    try:
        by_url: dict[str, list[RemoteFile]] = {}
        for rf in wanted:
            by_url.setdefault(rf.url, []).append(rf)
        ready: list[tuple[Path, RemoteFile]] = []
        for url, rfs in by_url.items():
            tmp = _tmp_in(folder, ".download")
            temps.append(tmp)
            try:
                _fetch(url, tmp)
            except (urllib.error.URLError, OSError, ValueError) as e:
                if any(rf.required for rf in rfs):
                    reason = getattr(e, "reason", None) or e
                    raise DataError(
                        _missing_message(spec, folder, missing, f"download of {url} failed ({reason})")
                    ) from None
                continue  # optional files: skip quietly
            for rf in rfs:
                if rf.member is None:
                    out = tmp
                else:
                    out = _tmp_in(folder, ".extract")
                    temps.append(out)
                    try:
                        with zipfile.ZipFile(tmp) as zf, zf.open(rf.member) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, length=1 << 20)
                    except (zipfile.BadZipFile, KeyError) as e:
                        raise DataError(
                            f"downloaded archive {url} for {spec.name}: cannot extract {rf.member} ({e})"
                        ) from None
                _verify(out, rf, spec.name)
                ready.append((out, rf))
        for out, rf in ready:  # everything verified: move into place
            if rf.name in corrupt:  # keep the damaged file for inspection, out of the way
                os.replace(folder / rf.name, folder / f"{rf.name}.corrupt")
            os.replace(out, folder / rf.name)
    except OSError as e:  # disk full, read-only folder, ...
        raise DataError(_missing_message(spec, folder, missing, f"cannot write to {folder} ({e})")) from None
    finally:
        for t in temps:
            if t.exists():
                t.unlink()
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # leave no empty folder behind after a failed download


# ---------------------------------------------------------------------------------------------- load
def _check_args(split, valid_ratio, test_ratio, seed):
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"split of load_dataset must be one of {list(SPLIT_CHOICES)}, got {split!r}")
    for name, v, lo_open in (("valid_ratio", valid_ratio, False), ("test_ratio", test_ratio, True)):
        if v is None and name == "test_ratio":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1) or (lo_open and v == 0):
            rng = "in (0, 1)" if lo_open else "in [0, 1)"
            raise ConfigError(f"{name} of load_dataset must be a number {rng}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed of load_dataset must be an int >= 0, got {seed!r}")


def load_dataset(
    name_or_path: str | Path = "synthetic",
    data_dir: str | Path | None = None,
    split: str = "auto",
    valid_ratio: float = 0.1,
    test_ratio: float | None = None,
    seed: int = 0,
    threshold: float | None = None,
    min_user: int = 0,
    min_item: int = 0,
    columns=None,
    download: bool = True,
) -> Split:
    """Load a named dataset or a file/folder, clean it and split it.

    Args:
        name_or_path: a name of :data:`DATASETS` (``"synthetic"`` needs no files) or a path: an NGCF folder
            (``train.txt``/``test.txt``), ``u.data``, ``ratings.dat``, ``ratings.csv``,
            ``user_artists.dat``, an S3-Rec ``*.txt``, a RecBole ``*.inter``, or a
            ``*.csv``/``*.tsv``/``*.parquet`` table (see ``columns``).
        data_dir: folder holding ``<name>/`` folders (default ``$RECNEG_DATA`` or ``~/.cache/recneg``).
        split: ``"auto"``: the dataset's own train/test files when it ships them (plus validation carved from
            train per ``valid_ratio``, or its ``valid.txt``), else ``"random"``.
            ``"given"``: the shipped files (error if none). ``"random"``, ``"temporal"``,
            ``"latest"`` (PDNS), ``"loo"``: see :mod:`recneg.data.split`; for shipped splits the parts
            are merged first and re-split.
        valid_ratio: validation share (0 → ``split.valid is None``).
        test_ratio: test share for ``random``/``temporal``/``latest``. Default ``None`` means 0.1 when
            ``valid_ratio > 0`` (80/10/10) and 0.2 when ``valid_ratio == 0`` (80/20).
        seed: seed of the random split / validation carving (the synthetic data itself always uses seed 0).
        threshold: keep interactions whose rating/weight is ``>= threshold`` (default: every rating counts).
        min_user, min_item: iterative k-core minimum counts (0 = no filtering). For shipped splits the core is
            computed on train, and valid/test rows outside it are dropped.
        columns: ``(user, item[, time[, weight]])`` column names for tables and ``.inter`` files.
        download: fetch missing files of a named dataset (tests always pass ``False``).

    Returns:
        A :class:`Split` whose ``info`` holds ``source``, ``format``, ``split``, ``threshold``, ``min_user``,
        ``min_item``, ``valid_ratio``, ``test_ratio``, ``seed`` and ``dropped_overlap`` (shipped pairs removed
        from valid/test because they were also in train).
    """
    _check_args(split, valid_ratio, test_ratio, seed)
    if test_ratio is None:
        test_ratio = 0.1 if valid_ratio > 0 else 0.2
    key = str(name_or_path)
    spec = None
    if isinstance(name_or_path, str) and _ALIASES.get(key.lower(), key.lower()) in SPECS:
        spec, folder = resolve(key, data_dir)
        name = spec.name
    else:
        folder = Path(name_or_path).expanduser()
        if not folder.exists():
            raise DataError(f"unknown dataset {key!r}: not one of {sorted(SPECS)} and no such file or folder")
        name = folder.stem if folder.is_file() else folder.name

    data: Interactions | Split  # a Split when the files ship their own train/test parts
    if spec is not None and spec.format == "synthetic":
        from recneg.data.synthetic import generate

        data, fmt, source = generate().interactions, "synthetic", "recneg.data.synthetic.generate()"
    else:
        if spec is not None:
            ensure_files(spec, folder, download)
            path = folder if spec.format == "ngcf" else folder / spec.main_file
            data, fmt, used = dio.read_path(path, columns, spec.format)
        else:
            data, fmt, used = dio.read_path(folder, columns)
        source = str(used)

    info = {
        "source": source,
        "format": fmt,
        "threshold": threshold,
        "min_user": min_user,
        "min_item": min_item,
        "valid_ratio": float(valid_ratio),
        "seed": int(seed),
    }
    if isinstance(data, Split):
        data = preprocess_split(data, threshold, min_user, min_item, source)
        if split in ("auto", "given"):
            data, dropped = make_leak_free(data)
            info["dropped_overlap"] = dropped
            if data.valid is not None:
                info["split"] = "given (train/valid/test files)"
            else:
                train, valid = carve_validation(data.train, valid_ratio, seed)
                data = Split(train, data.test, valid)
                info["split"] = "given" + (
                    f" + random valid {valid_ratio:g} of train" if valid is not None else ""
                )
            out = data
        else:
            merged = _merge(data)
            out = split_interactions(merged, split, test_ratio, valid_ratio, seed)
            info.update({"split": split, "test_ratio": float(test_ratio)})
    else:
        if split == "given":
            raise DataError(
                f"{source}: split='given' needs a dataset that ships train/test files (format {fmt})"
            )
        data = preprocess(data, threshold, min_user, min_item, source)
        protocol = "random" if split == "auto" else split
        out = split_interactions(data, protocol, test_ratio, valid_ratio, seed)
        info.update({"split": protocol, "test_ratio": float(test_ratio)})
    for k, v in out.info.items():
        info.setdefault(k, v)
    result = Split(out.train, out.test, out.valid, name=name, info=info)
    filtered = threshold is not None or min_user > 1 or min_item > 1
    note = f" after threshold={threshold}, min_user={min_user}, min_item={min_item}" if filtered else ""
    cold_ok = info.get("split") == "temporal"  # users who arrive after the cutoff are test-only by design
    check_split(result, source, cold_users=not cold_ok, negatives=False, note=note)
    return result


def _merge(split: Split) -> Interactions:
    parts = [p for p in (split.train, split.valid, split.test) if p is not None]

    def cat(attr):
        arrs = [getattr(p, attr) for p in parts]
        return None if any(a is None for a in arrs) else np.concatenate(arrs)

    t = split.train
    return Interactions(
        cat("users"),
        cat("items"),
        t.n_users,
        t.n_items,
        cat("timestamps"),
        cat("weights"),
        t.user_ids,
        t.item_ids,
    )


# ---------------------------------------------------------------------------------------------- stats
def _gini(counts: np.ndarray) -> float:
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def describe(data: Split | Interactions) -> dict:
    """Statistics of a split (or of one set of interactions), for ``recneg data stats``.

    Returns:
        ``n_users``, ``n_items``, ``n_interactions`` (all parts), ``n_train``/``n_valid``/``n_test`` (for a
        split), ``density`` (interactions / (users × items)), ``user_degree_min``/``_median``/``_max`` and
        ``item_gini`` (Gini coefficient of item counts, 0 = uniform, → 1 = concentrated) over the training
        part (or all interactions), ``users_with_test`` and ``items_only_in_test`` for a split,
        ``has_timestamps``.
    """
    if isinstance(data, Split):
        train = data.train
        parts = {"train": data.train, "valid": data.valid, "test": data.test}
        sizes = {f"n_{k}": (len(v) if v is not None else 0) for k, v in parts.items()}
        total = sum(sizes.values())
        out = {
            "name": data.name,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "n_interactions": total,
            **sizes,
        }
    else:
        train = data
        total = len(data)
        out = {"n_users": data.n_users, "n_items": data.n_items, "n_interactions": total}
    deg = train.user_counts
    out["density"] = (
        float(total / (train.n_users * train.n_items)) if train.n_users and train.n_items else 0.0
    )
    out["user_degree_min"] = int(deg.min()) if deg.size else 0
    out["user_degree_median"] = float(np.median(deg)) if deg.size else 0.0
    out["user_degree_max"] = int(deg.max()) if deg.size else 0
    out["item_gini"] = _gini(train.item_counts)
    out["has_timestamps"] = train.timestamps is not None
    if isinstance(data, Split):
        out["users_with_test"] = int(np.count_nonzero(data.test.user_counts))
        seen = train.item_counts > 0
        out["items_only_in_test"] = int(np.count_nonzero((data.test.item_counts > 0) & ~seen))
    return out

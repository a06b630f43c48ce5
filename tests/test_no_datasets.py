"""No dataset file is tracked by git: datasets live in ``../shared/data`` (or ``$RECNEG_DATA``), never in the
repository. A file counts as a dataset file when its name is one of a named dataset's files (``SPECS``) or
of a file in ``../shared/data``, or when its content equals such a file (a renamed copy)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from recneg.data.datasets import SPECS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_readme(name: str) -> bool:
    return Path(name).stem.lower() == "readme"


def dataset_names(shared: Path | None) -> set[str]:
    """File names of the named datasets and of the files under ``shared`` (READMEs excepted)."""
    names = {f.name for spec in SPECS.values() for f in spec.files}
    if shared is not None:
        names |= {p.name for p in shared.rglob("*") if p.is_file() and not _is_readme(p.name)}
    return names


def dataset_blobs(shared: Path | None) -> dict[str, str]:
    """``git blob id -> origin`` of the recorded dataset files and of the non-empty files under ``shared``."""
    blobs = {f.git_sha1: f"{spec.name}/{f.name}" for spec in SPECS.values() for f in spec.files if f.git_sha1}
    if shared is not None:
        for p in shared.rglob("*"):
            if p.is_file() and p.stat().st_size > 0:  # an empty file equals every empty file
                blobs[git_blob_sha1(p.read_bytes())] = str(p)
    return blobs


def offending(tracked: list[tuple[str, str]], names: set[str], blobs: dict[str, str]) -> list[str]:
    """The tracked ``(blob id, path)`` entries that are dataset files, each with the reason."""
    out = []
    for blob, path in tracked:
        if Path(path).name in names:
            out.append(f"{path}: named like a dataset file")
        elif blob in blobs:
            out.append(f"{path}: the same content as {blobs[blob]}")
    return out


def _tracked_files() -> list[tuple[str, str]]:
    """``(blob id, path)`` of every file in the git index (``git ls-files -s``)."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-s", "-z"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    entries = []
    for record in proc.stdout.split("\0"):
        if record:
            meta, path = record.split("\t", 1)
            entries.append((meta.split()[1], path))
    return entries


def test_no_dataset_file_is_tracked():
    shared = SHARED_DATA if SHARED_DATA.is_dir() else None
    tracked = _tracked_files()
    assert any(path == "pyproject.toml" for _, path in tracked)  # the listing works
    bad = offending(tracked, dataset_names(shared), dataset_blobs(shared))
    assert not bad, "dataset files are tracked (datasets live in ../shared/data):\n" + "\n".join(bad)


def test_the_guard_catches_a_dataset_by_name_and_a_renamed_copy(tmp_path):
    shared = tmp_path / "shared"
    (shared / "toy").mkdir(parents=True)
    (shared / "toy" / "clicks.tsv").write_bytes(b"0\t1\n1\t2\n")
    (shared / "toy" / "README.md").write_text("about the data")
    (shared / "toy" / "empty.flag").write_bytes(b"")
    names, blobs = dataset_names(shared), dataset_blobs(shared)
    copy_blob = git_blob_sha1(b"0\t1\n1\t2\n")
    tracked = [
        ("0" * 40, "tests/fixtures/u.data"),  # a named dataset's file
        ("1" * 40, "benchmarks/clicks.tsv"),  # a shared file's name
        (copy_blob, "benchmarks/results/renamed.csv"),  # a shared file's content
        ("2" * 40, "README.md"),  # READMEs share names; only their content would count
        ("3" * 40, "src/recneg/data/io.py"),
        (git_blob_sha1(b""), "src/recneg/py.typed"),  # empty, like the empty file under shared
    ]
    assert offending(tracked, names, blobs) == [
        "tests/fixtures/u.data: named like a dataset file",
        "benchmarks/clicks.tsv: named like a dataset file",
        f"benchmarks/results/renamed.csv: the same content as {shared / 'toy' / 'clicks.tsv'}",
    ]
    # the ids `git hash-object` gives the empty file and a file holding "abc"
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"abc") == "f2ba8f84ab5c1bce84a7b441cb1959cfc7093b7f"

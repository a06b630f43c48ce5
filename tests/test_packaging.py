"""Packaging: one version, the metadata CI builds from, and (when `build` is installed) the wheel's contents.

The real check — build a wheel and an sdist, install the wheel in a fresh venv, import it — is a step of
``.ci/run``; here only what is cheap.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import recneg

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_lives_in_one_place():
    meta = _pyproject()["project"]
    assert "version" not in meta and "version" in meta["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "recneg.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", recneg.__version__)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {recneg.__version__}" in changelog, "CHANGELOG.md has no section for the current version"


def test_optional_extras_are_declared():
    extras = _pyproject()["project"]["optional-dependencies"]
    for name in ("faiss", "tensorboard", "tune", "docs", "dev"):
        assert extras.get(name), f"extra {name!r} is missing"
    assert (ROOT / "LICENSE").is_file()


def test_wheel_contents(tmp_path):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed; .ci/run builds and installs the wheel instead")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and any(m in proc.stderr + proc.stdout for m in ("No module named", "Unmet")):
        pytest.skip(f"cannot build without isolation here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("recneg-*.whl")
    assert wheel.name.startswith(f"recneg-{recneg.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("recneg/__init__.py", "recneg/cli.py", "recneg/samplers/base.py", "recneg/logging.py"):
        assert module in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)

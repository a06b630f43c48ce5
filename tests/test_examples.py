"""The examples run as they are (``--smoke``: tiny generated data), and the run-folder loggers they document.

Each example is a subprocess, as a user would run it; together they take ~20 s on one core.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import recneg
from recneg.config import TrainConfig
from recneg.errors import ConfigError
from recneg.logging import flatten, make_logger

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["own_loop.py", "compare_samplers.py", "two_tower_mns.py", "lightgcn_pdns.py"]


def _run(script: str, *flags: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--smoke", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_runs(script):
    out = _run(script)
    if script == "compare_samplers.py":
        rows = [line for line in out.splitlines() if line.startswith("| ") and "sampler" not in line]
        assert len(rows) == 3, out
        for row in rows:
            recall = float(row.split("|")[2])
            assert 0.0 < recall <= 1.0, row
    elif script == "two_tower_mns.py":
        assert "ANN recall@10 against exact search" in out
    else:
        assert "recall" in out


def test_an_example_trains_on_the_data_dir_when_given():
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "ml-100k" / "u.data").is_file():
        pytest.skip("../shared/data/ml-100k is not there")
    out = _run("own_loop.py", "--data-dir", str(shared), "--epochs", "1")
    assert "data: Split('ml-100k': n_users=943, n_items=1682," in out, out
    assert "epoch   2" not in out and "test recall@20" in out


def test_every_example_is_tested():
    found = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
    assert found == sorted(EXAMPLES)


# ------------------------------------------------------------------------------------- the loggers


def test_flatten_keeps_numeric_leaves_only():
    record = {"epoch": 2, "loss": 0.5, "valid": {"recall@20": 0.25}, "sampler": {"hard": 1}, "x": "s"}
    assert flatten(record) == {"loss": 0.5, "valid/recall@20": 0.25, "sampler/hard": 1.0}
    assert flatten({"flag": True, "none": None}) == {}


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match="logger"):
        make_logger("wandb", "/tmp")
    with pytest.raises(ConfigError, match="logger"):
        TrainConfig(logger="wandb")


def _tiny_fit(tmp_path, logger, epochs=3):
    from recneg.data.split import random_split
    from recneg.data.synthetic import SyntheticConfig, generate

    inter = generate(SyntheticConfig(n_users=40, n_items=50, mean_degree=8.0, min_degree=4)).interactions
    data = random_split(inter, test_ratio=0.2, valid_ratio=0.2, seed=0)
    model = recneg.build_model("mf", data.train, dim=8)
    return recneg.fit(
        model,
        recneg.build_sampler("dns", n_candidates=4),
        data,
        epochs=epochs,
        eval_every=2,
        batch_size=64,
        progress=False,
        logger=logger,
        out_dir=tmp_path,
    )


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    result = _tiny_fit(tmp_path, "csv")
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["loss"]) == pytest.approx(result.history[0]["loss"])
    assert rows[0]["valid/recall@20"] == ""  # not evaluated in epoch 1
    assert float(rows[1]["valid/recall@20"]) == pytest.approx(result.history[1]["valid"]["recall@20"])
    assert "train_seconds" in rows[0]
    # history.jsonl is still written
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_none_and_jsonl_loggers_add_no_files(tmp_path):
    _tiny_fit(tmp_path / "a", "none", epochs=1)
    _tiny_fit(tmp_path / "b", "jsonl", epochs=1)
    for d in ("a", "b"):
        names = {p.name for p in (tmp_path / d).iterdir()}
        assert "history.jsonl" in names and "metrics.csv" not in names and "tensorboard" not in names


def test_tensorboard_logger_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'recneg[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _tiny_fit(tmp_path, "tensorboard", epochs=2)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "train_seconds", "valid/recall@20"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
    assert acc.Scalars("loss")[1].value == pytest.approx(result.history[1]["loss"], rel=1e-5)


def test_missing_tensorboard_is_one_config_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install 'recneg\[tensorboard\]'"):
        make_logger("tensorboard", tmp_path)

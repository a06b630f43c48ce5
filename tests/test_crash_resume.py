"""Crash safety: a killed run resumes to exactly the numbers of an uninterrupted one.

* stateful samplers (SRNS memory, GDNS/AdaSIR pools, streaming frequency estimates, ANS parameters, ANN
  index step) survive a crash after a checkpoint: the resumed run ends with the same metrics, sampler buffers
  and history as the uninterrupted run;
* ``recneg train`` SIGKILLed in the middle of an epoch, then ``--resume RUN_DIR``, gives the same
  ``metrics.json`` as the uninterrupted run (the history lines of epochs after the checkpoint are redone);
* ``--resume`` before the first checkpoint starts afresh; on a finished run it reports and exits 0;
* checkpoints are loaded with ``weights_only=True``: a pickled object is refused with a one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recneg.cli import main
from recneg.config import TrainConfig
from recneg.data.split import random_split
from recneg.data.synthetic import SyntheticConfig, generate
from recneg.errors import DataError
from recneg.registry import build_loss, build_model, build_sampler
from recneg.train import CHECKPOINT, Trainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def split():
    data = generate(
        SyntheticConfig(n_users=60, n_items=90, mean_degree=12, min_degree=5, seed=2)
    ).interactions
    return random_split(data, 0.2, 0.1, seed=0)


CASES = {  # sampler -> (model, sampler settings, loss)
    "srns": ("lightgcn", {}, "bpr"),
    "gdns": ("mf", {"warmup": 1}, "bpr"),
    "adasir": ("mf", {}, "bpr"),
    "in_batch": ("mf", {"frequency": "streaming"}, "softmax"),
    "ans": ("mf", {"dim": 8}, "bpr"),
    "dens": ("mf", {"dim": 8, "warmup": 1}, "bpr"),
    "ann_hard": ("mf", {"refresh_every": 3}, "bpr"),
}


def _trainer(split, name, out_dir):
    model_name, args, loss = CASES[name]
    torch.manual_seed(0)
    model = build_model(model_name, split.train, dim=8)
    cfg = TrainConfig(
        epochs=5,
        batch_size=64,
        lr=0.01,
        eval_every=2,
        patience=0,
        progress=False,
        topk=(10,),
        metric="recall@10",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(model, build_sampler(name, **args), split, build_loss(loss), cfg, out_dir)


@pytest.mark.parametrize("name", sorted(CASES))
def test_stateful_sampler_resumes_exactly(split, name, tmp_path, monkeypatch):
    full = _trainer(split, name, tmp_path / "a").run()

    crashed = _trainer(split, name, tmp_path / "b")
    original = Trainer.train_epoch

    def crash_in_epoch_4(self):
        if self.epoch == 3:  # epochs 1-3 done, checkpoint of epoch 2 on disk, history line of epoch 3 too
            original(self)  # half of the work is lost: the process dies before the epoch ends
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        crashed.run()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert len((tmp_path / "b" / "history.jsonl").read_text().splitlines()) == 3

    resumed = _trainer(split, name, tmp_path / "b")
    assert resumed.resume_from(tmp_path / "b") and resumed.epoch == 2
    res = resumed.run()
    assert res.test == full.test
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history]
    lines = (tmp_path / "b" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    a, b = full.sampler.state_dict(), res.sampler.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) or (a[k].isnan() == b[k].isnan()).all(), k


# ------------------------------------------------------------------------------------------ CLI, SIGKILL
FLAGS = ["--sampler", "dns", "--epochs", "10", "--eval-every", "2", "--batch-size", "256", "--threads", "1"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, capsys):
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recneg", "train", *FLAGS, "--no-progress", "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        history = killed / "history.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if history.is_file() and len(history.read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        time.sleep(0.05)  # into epoch 4: its work and the history line of epoch 3 are past the checkpoint
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert (killed / CHECKPOINT).is_file()
    epochs_before = len(history.read_text().splitlines())
    assert 3 <= epochs_before < 10

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert main(["train", *FLAGS, "--no-progress", "--out", str(tmp_path / "full")]) == 0
    capsys.readouterr()
    got = json.loads((killed / "metrics.json").read_text())
    want = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert got["test"] == want["test"] and got["valid"] == want["valid"]
    assert got["best_epoch"] == want["best_epoch"] and got["epochs_run"] == want["epochs_run"] == 10

    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "history.jsonl").read_text().splitlines()]

    assert losses(killed) == losses(tmp_path / "full")


def test_resume_before_first_checkpoint_starts_afresh_and_finished_run_reports(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--epochs", "2", "--eval-every", "5", "--batch-size", "512", "--threads", "1", "--no-progress"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    want = json.loads((run / "metrics.json").read_text())
    # as if killed in epoch 2 before any checkpoint: config.json and a partial history only
    (run / "metrics.json").unlink()
    (run / CHECKPOINT).unlink()
    (run / "model.pt").unlink()
    (run / "history.jsonl").write_text('{"epoch": 1, "loss": 99.0}\n{"epoch": 2, "lo')
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    got = json.loads((run / "metrics.json").read_text())
    assert got["test"] == want["test"]
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2] and lines[0]["loss"] != 99.0
    capsys.readouterr()
    # a finished run: report its metrics, exit 0, train nothing
    mtime = (run / "metrics.json").stat().st_mtime_ns
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and f"{want['test']['recall@10']:.4f}" in out
    assert (run / "metrics.json").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------------------ safe loading
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


def test_checkpoint_with_pickled_object_is_refused(split, tmp_path, capsys):
    out = tmp_path / "run"
    trainer = _trainer(split, "gdns", out)
    state = trainer.state()
    state["history"] = [_Payload()]
    torch.save(state, out / CHECKPOINT)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DataError, match=r"checkpoint.pt: refused to load: it holds a pickled object"):
            _trainer(split, "gdns", out).resume_from(out)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "owned.txt").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable torch file (EOFError"),
        (b"\x80\x04garbage" * 10, "not a readable torch file"),
        ("truncated", "not a readable torch file ("),
        ("foreign", "expected a recneg checkpoint of format 1, got 'list'"),
        ("mismatch", "does not fit this run"),
    ],
)
def test_unreadable_checkpoints_are_named(split, tmp_path, content, message):
    out = tmp_path / "run"
    trainer = _trainer(split, "uniform" if content == "mismatch" else "gdns", out)
    if content == "truncated":
        trainer.save_checkpoint()
        data = (out / CHECKPOINT).read_bytes()
        (out / CHECKPOINT).write_bytes(data[: len(data) // 2])
    elif content == "foreign":
        torch.save([torch.ones(2)], out / CHECKPOINT)
    elif content == "mismatch":
        trainer.save_checkpoint()  # a uniform run's checkpoint, loaded into a gdns run
    else:
        (out / CHECKPOINT).write_bytes(content)
    with pytest.raises(DataError) as e:
        _trainer(split, "gdns", out).resume_from(out)
    assert message in str(e.value) and "\n" not in str(e.value)


CASES["uniform"] = ("mf", {}, "bpr")

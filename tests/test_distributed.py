"""Multi-process training on torch.distributed (gloo, CPU, loopback), launched with torchrun:

* 2 ranks with the same global batch reach the weights, losses and metrics of one process, for samplers
  that draw nothing at random (a fixed-function sampler with MF and LightGCN, in-batch softmax with the
  exact and the streaming frequency, whose negatives and gradients cross ranks);
* the sharded evaluation returns exactly (bit for bit) the single-process evaluation;
* a sampler with parameters (ANS) ends with the same parameters on every rank (DDP covers it);
* MNS's columns are the global batch plus the gathered uniform draws, with logQ of the global batch size;
* ``shutdown()`` returns only when the communication threads hold none of the tensors recneg handed them
  (a rank could otherwise abort at interpreter exit, after its work was done);
* a rank that dies makes the job fail within a bounded time; ``--resume`` then completes from the last
  checkpoint and ends with the metrics of an uninterrupted 2-process run;
* bad settings (batch size or n_uniform not divisible by the ranks, a checkpoint of another world size,
  no --out under torchrun) are named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dist_cases
import numpy as np
import pytest
import torch

from recneg.distributed import DistContext, user_block
from recneg.errors import ConfigError
from recneg.eval.ranking import evaluate
from recneg.train import CHECKPOINT, Trainer

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
JOB_TIMEOUT_S = 150  # a hung job fails the test instead of holding CI


def torchrun(*args: str, timeout: float = JOB_TIMEOUT_S, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(WORKER.parent)]),
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        "RECNEG_DIST_TIMEOUT": "60",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _tail(proc: subprocess.CompletedProcess) -> str:
    """The job's output without DDP's repeated per-step warnings, last 6000 characters."""
    lines = (proc.stdout + proc.stderr).splitlines()
    return "\n".join(line for line in lines if "reducer.cpp" not in line)[-6000:]


# --------------------------------------------------------------------------------------------- equivalence
@pytest.fixture(scope="module")
def two_rank(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "two_rank.pt"
    proc = torchrun(str(WORKER), "train", str(out))
    assert proc.returncode == 0, _tail(proc)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def split():
    return dist_cases.make_split()


@pytest.fixture(scope="module")
def single(split) -> dict:
    runs = {}
    for case in dist_cases.CASES:
        model, sampler, loss = dist_cases.components(case, split)
        result = Trainer(model, sampler, split, loss, dist_cases.CONFIG).run()
        runs[case] = {"model": model, "sampler": sampler, "result": result, "split": split}
    return runs


@pytest.mark.parametrize("case", sorted(dist_cases.CASES))
def test_two_ranks_train_like_one_process_on_the_global_batch(two_rank, single, case):
    got, ref = two_rank[case], single[case]
    for name, value in ref["model"].state_dict().items():
        torch.testing.assert_close(got["model"][name], value, rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")
    ref_losses = [r["loss"] for r in ref["result"].history]
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-6)
    for g, r in zip(got["valid"], ref["result"].history, strict=True):
        assert g == pytest.approx(r["valid"], abs=1e-9)
    # the weights moved: the comparison is not between two untrained models
    torch.manual_seed(0)
    init = dist_cases.components(case, ref["split"])[0].state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in ref["model"].state_dict().items())


def test_streaming_frequency_state_is_the_same_on_every_rank_and_as_one_process(two_rank, single):
    case = "mf-in_batch_streaming-softmax"
    ranks = two_rank[case]["sampler_ranks"]
    ref = single[case]["sampler"].state_dict()
    for name, value in ref.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], value, rtol=0, atol=0)
    assert float(ref["estimator.step"]) > 0


def test_sampler_parameters_are_synchronised_by_ddp(two_rank):
    params = two_rank["ans"]["params"]
    assert params[0], "ANS has parameters"
    for name in params[0]:
        torch.testing.assert_close(params[0][name], params[1][name], rtol=0, atol=0, msg=name)
    models = two_rank["ans"]["model"]
    for name in models[0]:
        torch.testing.assert_close(models[0][name], models[1][name], rtol=0, atol=0, msg=name)


def test_gather_objects_names_a_payload_it_cannot_read_back(two_rank):
    message = two_rank["numpy_error"]
    assert "rank 0's object holds numpy" in message and "send tensors" in message


def test_mns_columns_are_the_global_batch_and_logq_uses_the_global_batch_size(two_rank, split):
    got = two_rank["mns"]
    first = got["first"]
    rows, n_items = dist_cases.CONFIG.batch_size // 2, split.train.n_items
    assert first["rows"] == rows
    assert first["emb"] == (2 * rows + 16, 8)  # B = 64 gathered positives + B' = 16 gathered draws
    assert first["mask"] == (rows, 2 * rows + 16)
    counts = torch.as_tensor(split.train.item_counts, dtype=torch.float64)
    q = counts / counts.sum()
    expected = torch.log(64 * q[first["ids"]] + 16 / n_items).to(first["log_q"].dtype)
    torch.testing.assert_close(first["log_q"], expected)
    assert np.isfinite(got["losses"]).all()
    assert "n_uniform=15 must be divisible by the number of processes (2)" in got["odd_error"]


# --------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("case", ["mf-fixed-bpr", "lightgcn-fixed-bpr"])
def test_sharded_evaluation_equals_single_process_exactly(two_rank, single, case):
    """Evaluate the 2-rank run's final weights in one process: the sharded numbers are identical."""
    got = two_rank[case]
    split = single[case]["split"]
    model = dist_cases.components(case, split)[0]
    model.load_state_dict(got["model"])
    ref = evaluate(model, split, "test", dist_cases.CONFIG.topk, dist_cases.CONFIG.eval_chunk)
    assert got["test"] == ref.metrics  # exact float equality
    np.testing.assert_array_equal(got["eval"]["users"], ref.users)
    np.testing.assert_array_equal(got["eval"]["topk"], ref.topk)
    np.testing.assert_array_equal(got["eval"]["hits"], ref.hits)
    for k, v in ref.per_user.items():
        np.testing.assert_array_equal(got["eval"]["per_user"][k], v)


def test_user_blocks_cover_every_user_once_in_order():
    users = np.arange(11) * 3
    blocks = [user_block(users, DistContext(rank=r, world=4)) for r in range(4)]
    assert [len(b) for b in blocks] == [3, 3, 3, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), users)
    assert user_block(users, DistContext()) is users


def test_release_wait_ends_when_the_handed_over_tensors_are_freed_and_warns_otherwise():
    from recneg import distributed

    held = torch.zeros(3)  # stands for a tensor a communication thread still holds
    distributed._hand_over(held, torch.ones(2))  # the second has no other holder: gone at once
    assert distributed.tensors_held_by_collectives() == 1
    with pytest.warns(RuntimeWarning, match="1 tensors given to collectives were still held"):
        distributed._wait_for_release(0.05)
    del held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distributed._wait_for_release(0.05)
    assert distributed.tensors_held_by_collectives() == 0


# --------------------------------------------------------------------------------------------- failure
TRAIN_FLAGS = [
    "--sampler", "dns", "--epochs", "4", "--eval-every", "2", "--batch-size", "256", "--dim", "16",
    "--threads", "1", "--device", "cpu", "--no-progress", "--topk", "10,20", "--patience", "0",
]  # fmt: skip


def test_killed_rank_fails_the_job_and_resume_matches_an_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    proc = torchrun("-m", "recneg", "train", "--out", str(full), *TRAIN_FLAGS)
    assert proc.returncode == 0, _tail(proc)

    crashed = tmp_path / "crashed"
    start = time.monotonic()
    proc = torchrun(str(WORKER), "kill", "1", "2", "--", "--out", str(crashed), *TRAIN_FLAGS)
    took = time.monotonic() - start
    assert proc.returncode != 0, _tail(proc)
    assert took < 90, f"the job took {took:.0f}s to fail after a rank died"
    assert not (crashed / "metrics.json").exists(), _tail(proc)
    assert (crashed / CHECKPOINT).exists(), _tail(proc)
    last = torch.load(crashed / CHECKPOINT, weights_only=True)["epoch"]
    assert last == 2, f"last checkpoint at epoch {last}, expected 2\n{_tail(proc)}"
    assert len((crashed / "history.jsonl").read_text().splitlines()) == 2, _tail(proc)

    proc = torchrun("-m", "recneg", "train", "--resume", str(crashed))
    assert proc.returncode == 0, _tail(proc)
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone prints
    resumed = json.loads((crashed / "metrics.json").read_text())
    reference = json.loads((full / "metrics.json").read_text())
    for key in ("valid", "test", "best_epoch", "epochs_run"):
        assert resumed[key] == reference[key], key
    history = [json.loads(line) for line in (crashed / "history.jsonl").read_text().splitlines()]
    ref_history = [json.loads(line) for line in (full / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]


# --------------------------------------------------------------------------------------------- errors
def test_batch_size_must_split_evenly_over_the_ranks(split):
    model, sampler, loss = dist_cases.components("mf-fixed-bpr", split)
    cfg = dist_cases.CONFIG
    bad = type(cfg)(**{**cfg.__dict__, "batch_size": 63})
    expected = r"batch_size=63 must be divisible by the number of processes \(2\)"
    with pytest.raises(ConfigError, match=expected):
        Trainer(model, sampler, split, loss, bad, dist=DistContext(rank=0, world=2, backend="gloo"))


def test_sparse_optimizer_is_refused_under_several_processes(split):
    model, sampler, loss = dist_cases.components("mf-fixed-bpr", split)
    cfg = dist_cases.CONFIG
    sparse = type(cfg)(**{**cfg.__dict__, "optimizer": "sparse_adam"})
    with pytest.raises(ConfigError, match="optimizer sparse_adam runs in one process only"):
        Trainer(model, sampler, split, loss, sparse, dist=DistContext(rank=0, world=2, backend="gloo"))


def test_checkpoint_of_another_world_size_is_refused(split, tmp_path):
    model, sampler, loss = dist_cases.components("mf-fixed-bpr", split)
    trainer = Trainer(model, sampler, split, loss, dist_cases.CONFIG, tmp_path)
    state = trainer.state()
    state["world"] = 2
    with pytest.raises(ConfigError, match="written by a job of 2 process"):
        trainer.load_state(state)


def test_torchrun_without_out_is_refused(monkeypatch, capsys):
    from recneg.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--epochs", "1"]) == 2
    assert "under torchrun, give --out RUN_DIR" in capsys.readouterr().err

"""Memory pre-flight (recneg.resources) and the out-of-memory guard of evaluation.

The available memory is monkeypatched to a small number; a run that cannot fit must stop before training with
one line naming the setting to lower (exit status 2 through the CLI), and a real allocation failure during
evaluation must become the same kind of error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recneg import resources as R
from recneg.cli import main
from recneg.config import RunConfig, TrainConfig, load_config_file
from recneg.errors import ConfigError
from recneg.eval import ranking
from recneg.registry import build_model, build_sampler
from recneg.runner import build_components, load_split


# ---------------------------------------------------------------------------------------------- available
def test_available_memory_cpu_is_positive_and_below_total():
    avail = R.available_memory_bytes("cpu")
    total = None
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    assert avail is not None and 0 < avail <= total


def test_available_memory_fallbacks(monkeypatch):
    assert R.available_memory_bytes("meta") is None  # unknown kind of device: nothing is checked
    monkeypatch.setattr(R, "_cgroup_limit_bytes", lambda: 12345)
    assert R.available_memory_bytes("cpu") == 12345  # a container limit below MemAvailable wins
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/meminfo":
            raise OSError("no /proc")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(R, "_cgroup_limit_bytes", lambda: None)
    monkeypatch.setattr(builtins, "open", no_proc)
    import os

    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert R.available_memory_bytes("cpu") == pytest.approx(pages, rel=0.5)


def test_available_memory_cuda_counts_free_and_cached(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (3 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: gib + gib // 2)
    assert R.available_memory_bytes("cuda") == 3 * gib + gib // 2


# ---------------------------------------------------------------------------------------------- estimates
def test_eval_estimate_hand_computed_and_linear():
    # 10 users x 1000 items x 4 B scores + top-5 (4 B values + 8 B ids)
    assert R.eval_bytes(1000, 10, k=5) == 10 * 1000 * 4 + 10 * 5 * 12
    sizes = [R.eval_bytes(5000, c, k=20, n_users=10_000, dim=16) for c in (100, 200, 300, 400)]
    steps = {b - a for a, b in zip(sizes, sizes[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() == 100 * (5000 * 4 + 20 * 12)
    by_items = [R.eval_bytes(n, 64, k=10) for n in (1000, 2000, 3000)]
    assert by_items[2] - by_items[1] == by_items[1] - by_items[0] == 64 * 1000 * 4
    # a chunk never exceeds the users there are
    assert R.eval_bytes(1000, 10**6, k=5, n_users=50) == R.eval_bytes(1000, 50, k=5, n_users=50)


@pytest.fixture(scope="module")
def tiny_split():
    from recneg.data.datasets import load_dataset

    return load_dataset("synthetic")


def _step(name, tiny_split, batch_size=100, model="mf", **kwargs):
    m = build_model(model, tiny_split.train, dim=8, **({"n_layers": 3} if model == "lightgcn" else {}))
    s = build_sampler(name, **kwargs)
    return R.estimate_step_bytes(s, batch_size, tiny_split.n_items, 8, R.model_layers(m), tiny_split.n_users)


def test_step_estimates_hand_computed_and_linear(tiny_split):
    # DNS: B x N x d x 4 bytes, one copy (no-grad top-1)
    assert _step("dns", tiny_split, n_candidates=10).bytes == 100 * 10 * 8 * 4
    assert "n_candidates=10" in _step("dns", tiny_split, n_candidates=10).detail
    for name, key in (("dns", "n_candidates"), ("ans", "n_candidates"), ("uniform", "n_negatives")):
        extra = {"dim": 8} if name == "ans" else {}
        by_n = [_step(name, tiny_split, **{key: n}, **extra).bytes for n in (4, 8, 12)]
        assert by_n[2] - by_n[1] == by_n[1] - by_n[0] > 0, name
        by_b = [_step(name, tiny_split, batch_size=b, **{key: 4}, **extra).bytes for b in (50, 100, 150)]
        assert by_b[2] - by_b[1] == by_b[1] - by_b[0] > 0, name
    by_u = [_step("mns", tiny_split, n_uniform=u).bytes for u in (100, 200, 300)]
    assert by_u[2] - by_u[1] == by_u[1] - by_u[0] > 0
    # per-layer samplers pay L+1 = 4 times the pool with LightGCN (minus the propagation, same for both)
    mf = _step("mixgcf", tiny_split, n_candidates=16).bytes
    lg = _step("mixgcf", tiny_split, model="lightgcn", n_candidates=16).bytes
    lg_dns = _step("dns", tiny_split, model="lightgcn", n_candidates=16).bytes
    propagation = lg_dns - _step("dns", tiny_split, n_candidates=16).bytes
    assert lg - propagation == 4 * mf


def test_model_and_state_estimates(tiny_split):
    model = build_model("mf", tiny_split.train, dim=8)
    params = (tiny_split.n_users + tiny_split.n_items) * 8 * 4
    # on the device already: gradient + 2 Adam states are new; on another device: the weights too
    assert R.model_bytes(model, "adam", "cpu").bytes == 3 * params
    assert R.model_bytes(model, "adagrad", "cpu").bytes == 2 * params
    assert R.model_bytes(model, "adam", "meta").bytes == 4 * params
    srns = build_sampler("srns", memory_size=4, history=2).bind(tiny_split.train)
    on_other = R.sampler_state_bytes(srns, "meta").bytes
    hist = tiny_split.n_users * 4 * 2 * 4 + tiny_split.train.csr.nnz * 2 * 4
    assert on_other >= hist + tiny_split.n_users * 4 * 8
    assert R.sampler_state_bytes(srns, "cpu").bytes == 0


# ---------------------------------------------------------------------------------------------- check_fits
def test_check_fits_names_the_setting(tiny_split):
    model = build_model("mf", tiny_split.train, dim=8)
    sampler = build_sampler("dns", n_candidates=64).bind(tiny_split.train)
    cfg = TrainConfig(batch_size=1024, eval_chunk=16, progress=False)
    est = R.check_fits(model, sampler, tiny_split, cfg, "cpu", available=10**12)
    assert est.step.bytes > est.evaluation.bytes
    avail = int((est.persistent + est.evaluation.bytes + 1) / R.SAFETY) + 1  # eval fits, the step does not
    with pytest.raises(ConfigError) as info:
        R.check_fits(model, sampler, tiny_split, cfg, "cpu", available=avail)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("training step needs per step ~")
    assert "batch_size=1024 × n_candidates=64 × d=8 candidate embeddings of sampler 'dns'" in msg
    assert msg.endswith("lower n_candidates or batch_size")
    with pytest.raises(ConfigError, match=r"^the model needs .* lower dim$"):
        R.check_fits(model, sampler, tiny_split, cfg, "cpu", available=1000)


def test_check_fits_can_be_switched_off_and_unknown_memory_is_not_checked(tiny_split, monkeypatch):
    model = build_model("mf", tiny_split.train, dim=8)
    sampler = build_sampler("uniform").bind(tiny_split.train)
    monkeypatch.setattr(R, "available_memory_bytes", lambda device: None)
    R.check_fits(model, sampler, tiny_split, TrainConfig(), "cpu")
    monkeypatch.setenv("RECNEG_MEMORY_CHECK", "0")
    R.check_fits(model, sampler, tiny_split, TrainConfig(), "cpu", available=10)


def test_fit_refuses_before_training(tiny_split, monkeypatch):
    from recneg.train import fit

    monkeypatch.setattr(R, "available_memory_bytes", lambda device: 1000)
    model = build_model("mf", tiny_split.train, dim=8)
    with pytest.raises(ConfigError, match="lower dim"):
        fit(model, build_sampler("uniform"), tiny_split, epochs=1, progress=False)


# ---------------------------------------------------------------------------------------------- CLI
def _cli_case(tmp_path: Path, monkeypatch, toml: str, which: str, capsys):
    """Run ``recneg train --config`` with the available memory set between two of the run's needs."""
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(toml)
    cfg = RunConfig.from_dict(load_config_file(cfg_path))
    split = load_split(cfg)
    model, sampler, _ = build_components(cfg, split)
    est = R.estimate_memory(model, sampler, split, cfg.train, "cpu")
    other = est.step if which == "evaluation" else est.evaluation
    need = est.evaluation if which == "evaluation" else est.step
    assert need.bytes > 2 * other.bytes  # the case separates the two
    avail = int((est.persistent + (need.bytes + other.bytes) / 2) / R.SAFETY)
    monkeypatch.setattr(R, "available_memory_bytes", lambda device: avail)
    args = ["train", "--config", str(cfg_path), "--threads", "1", "--no-progress"]
    args += ["--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("recneg train: error: ")
    assert not (tmp_path / "r" / "history.jsonl").exists()  # refused before the first epoch
    return err


def test_cli_eval_chunk_too_large_exit_2(tmp_path, monkeypatch, capsys):
    err = _cli_case(
        tmp_path,
        monkeypatch,
        '[sampler]\nname = "dns"\nn_candidates = 2\n'
        "[train]\nepochs = 1\nbatch_size = 16\neval_chunk = 4096\n",
        "evaluation",
        capsys,
    )
    assert "evaluation needs ~" in err
    assert "600 users (all; eval_chunk=4096) × n_items=798 scores" in err
    assert err.endswith("; lower eval_chunk")


def test_cli_mns_too_many_uniform_columns_exit_2(tmp_path, monkeypatch, capsys):
    err = _cli_case(
        tmp_path,
        monkeypatch,
        '[sampler]\nname = "mns"\nn_uniform = 4096\n[loss]\nname = "softmax"\n'
        "[train]\nepochs = 1\nbatch_size = 512\neval_chunk = 8\n",
        "step",
        capsys,
    )
    assert "training step needs per step ~" in err
    assert "(batch_size=512 + n_uniform=4096) shared columns × d=64 of sampler 'mns'" in err
    assert err.endswith("; lower n_uniform or batch_size")


def test_cli_pool_too_large_exit_2(tmp_path, monkeypatch, capsys):
    err = _cli_case(
        tmp_path,
        monkeypatch,
        '[sampler]\nname = "dns"\nn_candidates = 700\n'
        "[train]\nepochs = 1\nbatch_size = 2048\neval_chunk = 8\n",
        "step",
        capsys,
    )
    assert "batch_size=2048 × n_candidates=700 × d=64 candidate embeddings of sampler 'dns'" in err
    assert err.endswith("; lower n_candidates or batch_size")


# ---------------------------------------------------------------------------------------------- OOM guard
def test_rank_topk_real_allocation_failure_is_a_config_error():
    n = 1 << 22  # 4M users x 4M items x 4 B = 64 TiB of scores in one chunk: the allocation fails
    with pytest.raises(ConfigError) as info:
        ranking.rank_topk(torch.ones(1, 1), torch.ones(n, 1), torch.zeros(n, dtype=torch.long), 5, None, n)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("evaluation ran out of memory scoring 4194304 users")
    assert msg.endswith("eval_chunk=4194304); lower eval_chunk")


def test_rank_topk_cuda_oom_and_other_errors(monkeypatch):
    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ranking, "_rank_chunk", oom)
    with pytest.raises(ConfigError, match="lower eval_chunk"):
        ranking.rank_topk(torch.ones(3, 2), torch.ones(4, 2), torch.arange(3), 2)

    def other(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ranking, "_rank_chunk", other)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        ranking.rank_topk(torch.ones(3, 2), torch.ones(4, 2), torch.arange(3), 2)
    assert R.is_out_of_memory(MemoryError())
    assert R.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to ..."))
    assert not R.is_out_of_memory(ValueError("out of memory"))


def test_cli_evaluation_oom_exit_2(tmp_path, monkeypatch, capsys):
    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ranking, "_rank_chunk", oom)
    args = ["train", "--epochs", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluation ran out of memory" in err
    assert err.endswith("lower eval_chunk")

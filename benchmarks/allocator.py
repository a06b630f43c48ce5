"""Training steps with glibc's default allocator settings and with ``keep_freed_memory`` (the trainer's).

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.allocator --rounds 5

``recneg.utils.keep_freed_memory`` (``TrainConfig.keep_freed_memory``, on by default) is a setting of the
whole process, so each round times the configurations in two fresh processes, one with glibc's defaults
and one with the setting, in alternating order; a process trains ``--warm-up-steps`` steps of each
configuration (a configuration of ``benchmarks.epoch_time``) and times the next ``--steps``. Per
configuration: the medians over rounds, and the median of the within-round ratio default / kept. The
minor page faults of a process's timed steps come with it. Writes ``benchmarks/results/allocator.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table

DEFAULT_CONFIGS = "mf-uniform,mf-dns-32,mf-uniform (autograd),mf-ans-16,lightgcn-uniform"


def _worker(args) -> None:
    """One process: time every configuration; print one JSON line ``{config: [ms a step, faults]}``."""
    torch.set_num_threads(args.threads)
    if args.keep:
        from recneg.utils import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory is not available here (not glibc)")
    from benchmarks.epoch_time import CONFIGS, Runner
    from recneg.data.datasets import load_dataset

    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    result = {}
    for name in args.configs.split(","):
        base, autograd = name.removesuffix(" (autograd)"), name.endswith(" (autograd)")
        runner = Runner(split, CONFIGS[base], 2048, fused=not autograd, keep_memory=args.keep)
        steps = max(1, round(args.steps * runner_scale(base)))
        for _ in range(steps):
            runner.step()
        runner.flush()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        runner.flush()
        seconds = (time.perf_counter() - t0) / steps
        result[name] = [1000 * seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults]
    print(json.dumps(result))


def runner_scale(config: str) -> float:
    """Fewer steps for the slow configurations (ANS ~50 ms a step, LightGCN ~150 ms)."""
    return 0.1 if config.startswith("lightgcn") else 0.25 if "ans" in config else 1.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="epoch_time configurations; ' (autograd)'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="timed steps (fewer for ANS and LightGCN)")
    ap.add_argument("--worker", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.keep = args.worker == "keep"
        _worker(args)
        return
    passed = list(argv if argv is not None else sys.argv[1:])
    times: dict[str, dict[str, list]] = {mode: {} for mode in ("default", "keep")}
    for round_ in range(args.rounds):
        for mode in ("default", "keep") if round_ % 2 == 0 else ("keep", "default"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.allocator", *passed, "--worker", mode],
                capture_output=True,
                text=True,
                check=True,
            )
            for name, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                times[mode].setdefault(name, []).append(value)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for name in times["default"]:
        default, kept = times["default"][name], times["keep"][name]
        ratios = [d[0] / k[0] for d, k in zip(default, kept, strict=True)]
        rows.append(
            {
                "config": name,
                "ms/step glibc default (median)": round(statistics.median(d[0] for d in default), 3),
                "ms/step kept (median)": round(statistics.median(k[0] for k in kept), 3),
                "default / kept (median of rounds)": round(statistics.median(ratios), 3),
                "ratio range": f"{min(ratios):.2f}–{max(ratios):.2f}",
                "page faults a step, default": round(
                    statistics.median(d[1] for d in default) / _steps(args, name)
                ),
                "page faults a step, kept": round(statistics.median(k[1] for k in kept) / _steps(args, name)),
            }
        )
    description = (
        f"{args.dataset}, batch 2048, dense Adam; {args.rounds} rounds of two fresh processes (glibc's "
        f"defaults; `keep_freed_memory`), each timing {args.steps} steps of each configuration (a tenth for "
        f"LightGCN, a quarter for ANS) after as many to warm up."
    )
    title = "Training steps with glibc's default allocator settings and with keep_freed_memory"
    print(
        publish_table("allocator", "allocator", argv, title, description, machine_stamp(args.threads), rows)
    )


def _steps(args, name: str) -> int:
    return max(1, round(args.steps * runner_scale(name.removesuffix(" (autograd)"))))


if __name__ == "__main__":
    main()

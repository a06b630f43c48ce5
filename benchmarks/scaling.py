"""Scaling sweep on synthetic data: training-step time per sampler and evaluation peak memory vs size.

Run (from the repository root; about 10 minutes on a 2-core machine, 6 GB of memory at the largest point):

    python -m benchmarks.scaling --threads 1

Each point ``(n_users, n_items)`` runs in a fresh subprocess (so its peak RSS is its own): it builds a
synthetic training set (``--degree`` interactions per user, item popularity ∝ rank^-0.8), measures the
peak RSS that one full-ranking evaluation of ``--eval-users`` users adds (chunks of ``--eval-chunk``
users: the ``[chunk, n_items]`` score block is the term that grows), then times ``--steps`` MF training
steps (batch 2048, dim 64) per configuration in ``--rounds`` interleaved rounds and reports the median.
The default grid grows users and items together (10⁴ → 10⁶) and items alone at 10⁴ users.
Writes benchmarks/results/scaling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.common import machine_stamp, peak_rss_mb, publish_table
from benchmarks.epoch_time import CONFIGS, Runner
from recneg.data.interactions import Interactions, Split
from recneg.eval.ranking import evaluate

GRID = "10000x10000,100000x100000,1000000x1000000,10000x100000,10000x1000000"
RUNS = "mf-uniform:adam,mf-uniform:sparse_adam,mf-dns-32:sparse_adam,mf-pdns-32 (mixing):sparse_adam"


def synthetic_split(n_users: int, n_items: int, degree: int, eval_users: int, seed: int = 0) -> Split:
    """``degree`` distinct items per user (popularity ∝ rank^-0.8); one held out for the first users."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -0.8
    cdf = np.cumsum(weights / weights.sum())
    items = np.searchsorted(cdf, rng.random(n_users * degree), side="right").clip(max=n_items - 1)
    users = np.repeat(np.arange(n_users, dtype=np.int64), degree)
    keys = np.unique(users * n_items + items)  # drop repeated pairs
    users, items = keys // n_items, keys % n_items
    first = np.r_[True, users[1:] != users[:-1]]  # each user's first pair (users are sorted)
    held = first & (users < eval_users)
    train = Interactions(users[~held], items[~held], n_users=n_users, n_items=n_items)
    test = Interactions(users[held], items[held], n_users=n_users, n_items=n_items)
    return Split(train=train, test=test, name=f"synthetic-{n_users}x{n_items}")


def run_point(args) -> dict:
    torch.set_num_threads(args.threads)
    n_users, n_items = (int(x) for x in args.point.split("x"))
    split = synthetic_split(n_users, n_items, args.degree, args.eval_users)
    runners = {}
    for run in args.runs.split(","):
        name, optimizer = run.split(":")
        runners[run] = Runner(split, CONFIGS[name], args.batch_size, optimizer=optimizer)
    model = next(iter(runners.values())).model
    before = peak_rss_mb()
    t0 = time.perf_counter()
    evaluate(model, split, "test", (20,), args.eval_chunk)
    eval_seconds = time.perf_counter() - t0
    eval_peak = peak_rss_mb() - before
    for r in runners.values():
        r.step()
        r.flush()
    times = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, r in runners.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                r.step()
            r.flush()  # dense Adam's deferred steps are part of the time
            times[k].append((time.perf_counter() - t) / args.steps)
    row = {
        "n_users": n_users,
        "n_items": n_items,
        "train_pairs": len(split.train),
        "eval_peak_mb": eval_peak,
        "eval_score_block_mb": args.eval_chunk * n_items * 4 / 2**20,
        f"eval_s ({args.eval_users} users)": eval_seconds,
    }
    for k, v in times.items():
        row[f"{k} ms"] = 1000 * statistics.median(v)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=GRID, help="comma-separated USERSxITEMS points")
    ap.add_argument("--runs", default=RUNS, help="comma-separated CONFIG:OPTIMIZER (configs of epoch_time)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--degree", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--eval-users", type=int, default=1024)
    ap.add_argument("--eval-chunk", type=int, default=256)
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point, print its JSON row
    args = ap.parse_args(argv)
    if args.point:
        print(json.dumps(run_point(args)))
        return
    argv = list(argv if argv is not None else sys.argv[1:])
    rows = []
    for point in args.grid.split(","):
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.scaling", *argv, "--point", point],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"point {point} failed:\n{out.stderr[-2000:]}")
        row = {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load.split("load average: ")[-1]}
        print(row, flush=True)
        rows.append(row)
    description = (
        f"MF dim 64, batch {args.batch_size}, {args.degree} interactions per user; median ms per training "
        f"step over {args.rounds} interleaved rounds of {args.steps} steps; evaluation of {args.eval_users} "
        f"users in chunks of {args.eval_chunk} (peak RSS it adds; the score block is chunk × n_items × 4 "
        f"bytes); load = uptime's load average when the point started."
    )
    stamp = machine_stamp(args.threads)
    print(publish_table("scaling", "scaling", argv, "Scaling on synthetic data", description, stamp, rows))


if __name__ == "__main__":
    main()

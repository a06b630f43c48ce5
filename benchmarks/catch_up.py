"""Deferred dense Adam: the cost of bringing rows up to date, in closed form and step by step.

Run (from the repository root, nothing else running):

    python -m benchmarks.catch_up --threads 2

A table of Gowalla's item-table size (40 981 × 64, float32) with Adam moments like those of a trained
MF-BPR (``ε / sqrt(v)`` ≈ 0.002–0.02) owes ``k`` zero-gradient steps on every row; ``DeferredAdam.catch_up``
brings ``--ids`` random ids up to date (a batch's reads), and ``flush`` the whole table. Each variant is
timed on a fresh copy of the arrays (then 64 MB written elsewhere, so the rows come from memory as a
trainer's do), the two variants interleaved, ``--reps`` times; the medians are
reported. ``closed form`` is what the trainer runs (``DeferredAdam(closed_form=True)``: each parameter moved
once, ``recneg.kernels._replay_row_in_closed_form``); ``step by step`` replays the ``k`` steps one by one
(the vectorised row replay, what recneg did before the closed form). Writes
``benchmarks/results/catch_up.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.common import machine_stamp, publish_table

N_ROWS, DIM = 40_981, 64
BETA1, BETA2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3


def _arrays(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = (rng.standard_normal((N_ROWS, DIM)) * 0.1).astype(np.float32)
    v = (rng.uniform(0.25, 25.0, (N_ROWS, DIM)) * 1e-12).astype(np.float32)  # sqrt(v): 5e-7 ... 5e-6
    m = (rng.standard_normal((N_ROWS, DIM)) * 0.3 * np.sqrt(v)).astype(np.float32)
    return table, m, v


def _owing(steps_behind: int, closed_form: bool, start: int = 1000):
    from recneg.kernels import DeferredAdam

    deferred = DeferredAdam(N_ROWS, closed_form=closed_form)
    deferred.start(start, (BETA1, BETA2, EPS, 0.0))
    for t in range(start + 1, start + 1 + steps_behind):
        deferred.record(t, LR / (1 - BETA1**t), (1 - BETA2**t) ** 0.5)
    return deferred


def _time_once(arrays, steps_behind: int, closed_form: bool, ids: np.ndarray | None, evict) -> float:
    table, m, v = (a.copy() for a in arrays)
    deferred = _owing(steps_behind, closed_form)
    evict += 1.0  # 64 MB written: the copies above leave the caches, as a trainer's rows have
    t0 = time.perf_counter()
    if ids is None:
        deferred.flush(table, m, v)
    else:
        deferred.catch_up(table, m, v, ids)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-behind", default="1,4,16,64,256")
    ap.add_argument("--ids", type=int, default=4096, help="random ids a catch-up reads (with repeats)")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recneg import kernels

    kernels.AdamBPRKernel.warm_up()  # compile (or load from numba's cache) before timing
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    evict = np.zeros(1 << 24, dtype=np.float32)
    rows = []
    for steps_behind in (int(k) for k in args.steps_behind.split(",")):
        for what in ("catch_up", "flush"):
            times: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(args.reps):
                ids = rng.integers(0, N_ROWS, args.ids) if what == "catch_up" else None
                order = (True, False) if rep % 2 == 0 else (False, True)
                for closed_form in order:
                    times[closed_form].append(_time_once(arrays, steps_behind, closed_form, ids, evict))
            closed, stepwise = (statistics.median(times[c]) * 1e3 for c in (True, False))
            rows.append(
                {
                    "read": f"{args.ids} random ids" if what == "catch_up" else f"flush ({N_ROWS} rows)",
                    "steps behind": steps_behind,
                    "closed form ms": round(closed, 3),
                    "step by step ms": round(stepwise, 3),
                    "step by step / closed form": round(stepwise / closed, 2),
                }
            )
            print(rows[-1], flush=True)
    description = (
        f"Table {N_ROWS} × {DIM} float32 with its two Adam moments; every row owes `steps behind` "
        f"zero-gradient steps; median of {args.reps} interleaved repetitions, each on fresh copies."
    )
    title = "Deferred Adam catch-up: closed form vs step by step"
    print(publish_table("catch_up", "catch_up", argv, title, description, machine_stamp(args.threads), rows))


if __name__ == "__main__":
    main()

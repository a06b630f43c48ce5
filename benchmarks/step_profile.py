"""Where a compiled MF training step's time goes: milliseconds a step in each numba kernel.

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.step_profile --config mf-uniform --warm-up-steps 600 --steps 200

One configuration of ``benchmarks.epoch_time`` (dense Adam, batch 2048, the trainer's compiled step with
deferred updates) trains ``--warm-up-steps`` steps (Adam's ``v`` is tiny in the first ~150 steps, where
deferred rows are replayed one step at a time), then ``--steps`` timed steps, each call of a compiled kernel
(``recneg.kernels.compiled``) timed on its own; the rest of the step (sampling in torch, Python) is
``other``. To compare two versions of the kernels, run it at each, alternating, a few times: the machine's
speed drifts more than most differences being measured. Writes
``benchmarks/results/step_profile_<config>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--config", default="mf-uniform", help="a configuration of benchmarks.epoch_time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-up-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.epoch_time import CONFIGS, Runner
    from recneg import kernels
    from recneg.data.datasets import load_dataset

    split = load_dataset(args.dataset, args.data_dir)
    runner = Runner(split, CONFIGS[args.config], 2048)
    for _ in range(args.warm_up_steps):
        runner.step()
    runner.flush()
    seconds: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    plain = kernels.compiled

    def timed(name: str):
        kernel = plain(name)

        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return kernel(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - t0
                calls[name] += 1

        return run

    kernels.compiled = timed
    try:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            runner.step()
        runner.flush()  # the steps' deferred updates are part of their time
        total = time.perf_counter() - t0
    finally:
        kernels.compiled = plain
    per_step = {name: 1e3 * s / args.steps for name, s in seconds.items()}
    rows = [
        {"kernel": name, "ms/step": round(ms, 3), "calls/step": round(calls[name] / args.steps, 2)}
        for name, ms in sorted(per_step.items(), key=lambda kv: -kv[1])
    ]
    rows.append({"kernel": "other", "ms/step": round(1e3 * total / args.steps - sum(per_step.values()), 3)})
    rows.append({"kernel": "step", "ms/step": round(1e3 * total / args.steps, 3)})
    description = (
        f"Batch 2048, dense Adam (deferred updates); {args.steps} steps after {args.warm_up_steps} of "
        f"training, then the deferred updates flushed (counted)."
    )
    title = f"Kernel time in a compiled step: {args.config} on {args.dataset}"
    name = "step_profile_" + args.config.split(" ")[0]
    print(publish_table(name, "step_profile", argv, title, description, machine_stamp(args.threads), rows))


if __name__ == "__main__":
    main()

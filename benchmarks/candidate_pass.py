"""DNS's candidates tested and scored in one compiled pass, against the two passes it replaced.

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.candidate_pass --config mf-dns-32 --optimizer adam
    python -m benchmarks.candidate_pass --config mf-dns-32 --optimizer sparse_adam

One configuration of ``benchmarks.epoch_time`` (batch 2048, the trainer's compiled step) trains
``--warm-up-steps`` steps, then ``--rounds`` rounds time ``--steps`` steps of each variant back to back,
and as many of MF-uniform (same optimiser, its own runner), so that the machine's drift hits every
variant alike; each ratio to uniform is taken within a round, then the median over rounds:

- ``one pass``: what the samplers do, :func:`recneg.samplers.base.scored_uniform_pool` (the bitmap test
  and the scores in one pass, :func:`recneg.kernels.check_and_score`) and DNS's choice and statistics
  from :func:`recneg.kernels.row_max`;
- ``one pass, torch max``: the same pool and scores, the choice by torch (``max``, ``gather``, ``amin``,
  ``mean``);
- ``two passes``: :func:`recneg.samplers.base.uniform_pool` (the compiled bitmap test) then
  ``view.score`` (the compiled scorer), the choice by torch: the path before the one-pass kernels.

All three draw the same pools. Writes ``benchmarks/results/candidate_pass_<config>_<optimizer>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table, rounds_summary


def _two_pass_pool(index, users, n, view, generator=None, max_rounds=10000):
    from recneg.samplers.base import uniform_pool

    pool = uniform_pool(index, users, n, generator, True, max_rounds)
    return pool, view.score(pool)


def _torch_top(pool, scores):
    return None  # _topk_negatives then takes torch's max, gather, amin and mean


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--config", default="mf-dns-32", help="a configuration of benchmarks.epoch_time")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-up-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.epoch_time import CONFIGS, Runner
    from recneg.data.datasets import load_dataset
    from recneg.samplers import hard

    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    runner = Runner(split, CONFIGS[args.config], 2048, optimizer=args.optimizer)
    uniform = Runner(split, CONFIGS["mf-uniform"], 2048, optimizer=args.optimizer)
    for _ in range(args.warm_up_steps):
        runner.step()
        uniform.step()
    one_pool, one_top = hard.scored_uniform_pool, hard._top_one_compiled
    variants = {
        "one pass": (one_pool, one_top),
        "one pass, torch max": (one_pool, _torch_top),
        "two passes": (_two_pass_pool, _torch_top),
    }
    times: dict[str, list[float]] = {name: [] for name in [*variants, "mf-uniform"]}

    def timed(run) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run.step()
        return 1e3 * (time.perf_counter() - t0) / args.steps

    try:
        for _ in range(args.rounds):
            for name, (pool_fn, top_fn) in variants.items():
                hard.scored_uniform_pool, hard._top_one_compiled = pool_fn, top_fn
                times[name].append(timed(runner))
            times["mf-uniform"].append(timed(uniform))
    finally:
        hard.scored_uniform_pool, hard._top_one_compiled = one_pool, one_top
    rows = [
        {
            "variant": name if name == "mf-uniform" else f"{args.config}: {name}",
            **rounds_summary(ms, times["mf-uniform"], "ms/step", "mf-uniform"),
        }
        for name, ms in times.items()
    ]
    description = (
        f"Batch 2048, optimizer {args.optimizer}; {args.rounds} rounds of {args.steps} steps of each variant "
        f"and of MF-uniform, back to back, after {args.warm_up_steps} training steps."
    )
    title = f"DNS's candidate passes: {args.config} on {args.dataset}"
    name = f"candidate_pass_{args.config}_{args.optimizer}"
    print(publish_table(name, "candidate_pass", argv, title, description, machine_stamp(args.threads), rows))


if __name__ == "__main__":
    main()

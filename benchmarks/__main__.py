"""The speed suite in one command: step time per sampler, evaluation time, and (optionally) the peers.

Run from the repository root with ../shared/data present and nothing else running:

    python -m benchmarks --threads 2                         # ml-100k and Gowalla
    python -m benchmarks --threads 2 --peers-venv /tmp/peers  # + RecBole and implicit side by side
    python -m benchmarks --device cuda                       # the same suite on a GPU

Parts (each also runs alone, see its module): ``benchmarks.epoch_time`` (ms per step, pairs/s, negatives
drawn/s, extrapolated epoch time and the ratio to uniform for every sampler, MF and LightGCN; CUDA peak
memory), ``benchmarks.eval_time`` (full-ranking evaluation against a bare matmul + top-k; peak RSS),
``benchmarks.softmax_loss`` (the fused sampled softmax of the two-tower samplers against its autograd
composition), ``benchmarks.peers`` (RecBole and implicit). Every result file is stamped with the machine,
the thread count and the versions; ``benchmarks/results/suite.md`` lists what this run wrote.

Run alone, not part of the suite: ``benchmarks.scaling`` (synthetic catalogues 10⁴ → 10⁶),
``benchmarks.catch_up`` (deferred Adam's catch-up, closed form against step by step),
``benchmarks.step_profile`` (ms a step in each compiled kernel), ``benchmarks.candidate_pass`` (DNS's
candidates tested and scored in one pass against two), ``benchmarks.epoch_ratio`` (whole trainer epochs
against MF-uniform), ``benchmarks.allocator`` (steps with glibc's default allocator settings against
``keep_freed_memory``, in fresh processes), ``benchmarks.spmm`` (LightGCN's sparse products, compiled
against torch's), ``benchmarks.lightgcn_peers`` (a LightGCN step against RecBole's), ``benchmarks.mf_bpr``
and the other
quality and reproduction scripts.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import epoch_time, eval_time, peers, softmax_loss
from benchmarks.common import RESULTS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,gowalla")
    ap.add_argument("--data-dir", default=None, help="default: ../shared/data beside the repository")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimizers", default="adam,sparse_adam")
    ap.add_argument("--peers-venv", default=None, help="run benchmarks.peers with this venv (Gowalla only)")
    args = ap.parse_args(argv)
    # the data folder is passed on only when given, so result files record the command as typed
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    common = [*data, "--threads", str(args.threads)]
    written = []
    for ds in args.datasets.split(","):
        for opt in args.optimizers.split(","):
            epoch_time.main(
                [
                    "--dataset",
                    ds,
                    *common,
                    "--steps",
                    str(args.steps),
                    "--rounds",
                    str(args.rounds),
                    "--optimizer",
                    opt,
                    "--device",
                    args.device,
                ]
            )
            written.append(f"epoch_time_{ds}" + ("" if opt == "adam" else f"_{opt}"))
        eval_time.main(["--dataset", ds, *common, "--rounds", str(args.rounds), "--device", args.device])
        written.append(f"eval_time_{ds}")
    if args.device in ("auto", "cpu"):  # the fused sampled softmax against its autograd composition
        softmax_loss.main(["--threads", str(args.threads)])
        written.append("softmax_loss")
    if args.peers_venv:
        peers.main(["--peers-venv", args.peers_venv, *data, "--threads", str(args.threads)])
        written.append("peers_gowalla")
    lines = [
        "# Speed suite",
        "",
        f"Command: `python -m benchmarks {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Finished {time.strftime('%Y-%m-%d %H:%M:%S')}; threads {args.threads}, device {args.device}.",
        "",
    ]
    lines += [f"- [{name}]({name}.md)" for name in written]
    (RESULTS / "suite.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

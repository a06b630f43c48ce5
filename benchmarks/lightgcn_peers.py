"""A LightGCN training step in recneg and in RecBole, side by side on Gowalla.

Run (from the repository root, ../shared/data present, the peers' venv built, nothing else running):

    sh ../shared/tools/peers-venv.sh /tmp/peers
    python -m benchmarks.lightgcn_peers --peers-venv /tmp/peers --threads 2 --rounds 3

Both train LightGCN (3 layers, d = 64, BPR with one uniform negative, Adam, lr 10⁻³, batch 2048, L2 on the
batch's layer-0 rows) on the NGCF Gowalla split. A whole RecBole epoch takes minutes (its propagation runs
``torch.sparse.mm`` over a COO adjacency, six products a step), so steps are timed, not epochs: each round
times ``--steps`` RecBole steps (``benchmarks/_peer_runner.py recbole --model LightGCN --steps``: the inner
loop of its trainer, after two untimed steps, data loading not timed) in the peers' venv, then as many
recneg steps (``benchmarks.epoch_time``'s ``lightgcn-uniform``: the trainer's step, with its compiled sparse
products). Per library the median step over all rounds; the ratio is the median of the rounds' ratios of
medians. Writes ``benchmarks/results/lightgcn_peers_gowalla.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-venv", required=True, type=Path)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.epoch_time import CONFIGS, Runner
    from benchmarks.peers import _peer, _portable
    from recneg.data.datasets import load_dataset

    split = load_dataset("gowalla", data_dir=args.data_dir, valid_ratio=0.0, download=False)
    runner = Runner(split, CONFIGS["lightgcn-uniform"], 2048, keep_memory=True)
    for _ in range(2):
        runner.step()
    data = Path(args.data_dir) / "gowalla"
    recbole: list[list[float]] = []
    recneg: list[list[float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            peer_args = ["recbole", "--model", "LightGCN", "--steps", str(args.steps), "--threads"]
            peer_args += [str(args.threads), "--data", str(data), "--out", scratch]
            recbole.append(_peer(args.peers_venv, peer_args, Path(scratch))["step_seconds"])
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                runner.step()
                times.append(time.perf_counter() - t0)
            recneg.append(times)
            print(f"round {r + 1}: RecBole {statistics.median(recbole[-1]) * 1e3:.1f} ms, recneg "
                  f"{statistics.median(times) * 1e3:.1f} ms a step", flush=True)  # fmt: skip
    ratios = [statistics.median(b) / statistics.median(a) for a, b in zip(recneg, recbole, strict=True)]
    steps_per_epoch = -(-len(split.train.users) // 2048)
    rows = []
    for name, runs in (("RecBole 1.2.1 LightGCN", recbole), ("recneg LightGCN", recneg)):
        step = statistics.median(t for run in runs for t in run)
        rows.append(
            {
                "library": name,
                "ms / step (median)": round(step * 1e3, 1),
                "s / epoch (extrapolated)": round(step * steps_per_epoch, 1),
            }
        )
    rows.append(
        {
            "library": "RecBole / recneg (median of rounds)",
            "ms / step (median)": round(statistics.median(ratios), 2),
            "s / epoch (extrapolated)": f"rounds {min(ratios):.2f}–{max(ratios):.2f}",
        }
    )
    description = (
        f"{split}; LightGCN, 3 layers, d = 64, BPR, uniform negatives, Adam, batch 2048 "
        f"({steps_per_epoch} steps an epoch). {args.rounds} rounds of {args.steps} steps each, RecBole "
        "then recneg in each round."
    )
    title = "LightGCN training step: recneg against RecBole"
    stamp = machine_stamp(args.threads)
    command = _portable(argv if argv is not None else sys.argv[1:])
    print(publish_table("lightgcn_peers_gowalla", "lightgcn_peers", command, title, description, stamp, rows))


if __name__ == "__main__":
    main()

"""Quality and speed of MF-BPR (uniform negatives) under different optimisers, over several seeds.

Run (from the repository root, with ../shared/data present):

    python -m benchmarks.optimizer_quality --protocol ml-100k-recbole --optimizers adam,sparse_adam \
        --seeds 0,1,2 --threads 1

An entry of ``--optimizers`` may carry its own settings after colons, which override ``--lr``, ``--reg``
and ``--batch-size`` for that optimiser alone: ``online_sgd:lr=0.2:reg=1e-3:batch_size=16384``.

Each (optimiser, seed) trains a fresh MF (dim 64) with the protocol of ``benchmarks.mf_bpr`` (the seed sets
the initialisation and the training order; the split is fixed) and reports last-epoch test Recall@20 /
NDCG@20, the mean training seconds per epoch and the Recall@20 curve at every evaluation. The summary gives
mean ± standard deviation over seeds per optimiser. Writes
benchmarks/results/optimizer_quality_<protocol>.json and .md (or ``--name``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import torch

import recneg
from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, write_results
from benchmarks.mf_bpr import PROTOCOLS
from recneg.config import TrainConfig
from recneg.data.datasets import load_dataset
from recneg.train import Trainer


def parse_optimizer(entry: str, args) -> tuple[str, dict]:
    """``"name[:key=value]..."`` -> ``(label, TrainConfig settings)``; keys: lr, reg, batch_size."""
    name, *pairs = entry.split(":")
    settings = {"optimizer": name, "lr": args.lr, "reg": args.reg, "batch_size": args.batch_size}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("lr", "reg", "batch_size"):
            raise SystemExit(
                f"--optimizers {entry!r}: expected name:key=value with key lr, reg or batch_size"
            )
        settings[key] = int(value) if key == "batch_size" else float(value)
    return entry, settings


def run_one(split, spec: dict, optimizer: str, seed: int, args) -> dict:
    label, settings = parse_optimizer(optimizer, args)
    train_kw = {**spec["train"], "patience": 0}
    if args.epochs:
        train_kw["epochs"] = args.epochs
    if args.eval_every:
        train_kw["eval_every"] = args.eval_every
    cfg = TrainConfig(
        **settings,
        threads=args.threads,
        progress=False,
        seed=seed,
        **train_kw,
    )
    torch.manual_seed(seed)
    model = recneg.build_model("mf", split.train, dim=64)
    result = Trainer(model, recneg.build_sampler("uniform"), split, config=cfg).run()
    part = "valid" if split.valid is not None else "test"
    seconds = [h["train_seconds"] for h in result.history]
    return {
        "optimizer": label,
        "seed": seed,
        "epochs": len(result.history),
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "test_recall@20": result.test["recall@20"],
        "test_ndcg@20": result.test["ndcg@20"],
        "curve_recall@20": [(h["epoch"], h[part]["recall@20"]) for h in result.history if part in h],
    }


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for opt in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == opt]
        summary = {"optimizer": opt, "seeds": len(mine)}
        for key in ("test_recall@20", "test_ndcg@20", "seconds_per_epoch"):
            values = [r[key] for r in mine]
            summary[key] = statistics.fmean(values)
            summary[key + " sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--protocol", default="ml-100k-recbole", choices=sorted(PROTOCOLS))
    ap.add_argument("--optimizers", default="adam,sparse_adam")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    ap.add_argument("--eval-every", type=int, default=None, help="override the protocol's eval_every")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = PROTOCOLS[args.protocol]
    split = load_dataset(
        spec["dataset"],
        data_dir=args.data_dir,
        split=spec["split"],
        valid_ratio=spec["valid_ratio"],
        test_ratio=spec["test_ratio"],
        seed=0,
        download=False,
    )
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for opt in args.optimizers.split(","):  # interleaved: machine noise hits every optimiser alike
            row = run_one(split, spec, opt, seed, args)
            print({k: v for k, v in row.items() if k != "curve_recall@20"}, flush=True)
            rows.append(row)
    summary = summarize(rows)
    stamp = {**machine_stamp(args.threads), "uptime_at_start": load}
    cmd = "python -m benchmarks.optimizer_quality " + " ".join(argv if argv is not None else sys.argv[1:])
    md = (
        f"# MF-BPR quality by optimiser ({args.protocol})\n\nCommand: `{cmd}`\n\n{split!r}; batch "
        f"{args.batch_size}, lr {args.lr:g}, reg {args.reg:g} unless an optimiser's entry sets its own; "
        "dim 64, uniform negatives.\n\n"
        f"Machine: {stamp}\n\n"
        + md_table(summary, list(summary[0]))
        + "\n"
        + md_table(
            rows, ["optimizer", "seed", "epochs", "seconds_per_epoch", "test_recall@20", "test_ndcg@20"]
        )
    )
    name = args.name or f"optimizer_quality_{args.protocol}"
    write_results(name, {"machine": stamp, "command": cmd, "summary": summary, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()

"""Seconds per training epoch of the two-tower model with batch samplers (ml-100k with its features).

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.two_tower_epoch --threads 2

The protocol of ``benchmarks.two_tower`` (main split, towers (256, 64), cosine logits τ = 0.1, B = 2048,
Adam 1e-3): one full training epoch per configuration, ``--rounds`` rounds interleaving the
configurations; the best round is reported. To compare two versions of recneg, run it in a checkout of
each (``git worktree add ../old <commit>``), alternately, on a quiet machine.
Writes benchmarks/results/two_tower_epoch.json and .md.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import torch

import recneg
from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, write_results
from benchmarks.two_tower import CONFIGS, load_part


def source_commit() -> str:
    """The git commit of the recneg source this process imported (``unknown`` outside a checkout)."""
    folder = Path(recneg.__file__).parent
    done = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def build_trainer(name: str, split, data_dir: str, threads: int):
    from recneg.config import TrainConfig
    from recneg.data.features import dataset_features
    from recneg.train import Trainer

    model_name, model_args, sampler, sampler_args, loss, loss_args, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = recneg.build_model(model_name, split.train, **model_args)
    model.with_features(*dataset_features("ml-100k", data_dir, split.train))
    cfg = TrainConfig(
        epochs=1, batch_size=2048, lr=1e-3, reg=0.0, threads=threads, progress=False, eval_every=1
    )
    return Trainer(
        model, recneg.build_sampler(sampler, **sampler_args), split, recneg.build_loss(loss, **loss_args), cfg
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="in_batch,mns-1024,mns-4096,uniform_corpus-2048")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="two_tower_epoch", help="results name (e.g. one per recneg version)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = load_part("main", args.data_dir)
    names = [c for c in args.configs.split(",") if c]
    trainers = {n: build_trainer(n, split, args.data_dir, args.threads) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.train_epoch()
            times[n].append(time.perf_counter() - t0)
    rows = [{"config": n, "s/epoch (best)": round(min(v), 2), "rounds": len(v)} for n, v in times.items()]
    for r in rows:
        print(r, flush=True)
    stamp = machine_stamp(args.threads)
    text = (
        "# Two-tower epoch time with batch samplers (ml-100k)\n\n"
        f"Command: `python -m benchmarks.two_tower_epoch --threads {args.threads} --name {args.name}`\n\n"
        f"recneg {recneg.__version__} at commit {source_commit()}; machine: {stamp['platform']}, "
        f"{stamp['cpu_count']} cores, "
        f"{args.threads} thread(s), torch {stamp['torch']}, {stamp['date']}.\n\n"
    )
    write_results(
        args.name,
        {"machine": stamp, "commit": source_commit(), "args": vars(args), "rows": rows, "times": times},
        text + md_table(rows, ["config", "s/epoch (best)", "rounds"]),
    )


if __name__ == "__main__":
    main()

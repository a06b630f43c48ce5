"""Training throughput (pairs/s) with 1 and 2 processes on torch.distributed (gloo on CPU, nccl on CUDA).

Run (from the repository root):

    python -m benchmarks.distributed --nprocs 1,2 --threads 1

For each configuration and process count, torchrun starts the processes (``--threads`` torch threads each),
every rank builds the same synthetic data, the real :class:`~recneg.train.Trainer` runs ``--warmup`` epochs,
then ``--epochs`` timed epochs; the throughput is the trainer's own ``pairs_per_second`` (global pairs of
the epoch / wall time of the epoch), median over the timed epochs. One process goes through the plain
single-process path (no process group). Writes benchmarks/results/distributed_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {  # name -> (model, sampler, sampler settings, loss)
    "mf-uniform-bpr": ("mf", "uniform", {}, "bpr"),
    "mf-dns32-bpr": ("mf", "dns", {"n_candidates": 32}, "bpr"),
    "mf-in_batch-softmax": ("mf", "in_batch", {}, "softmax"),
}


def worker(args) -> None:
    import torch

    from recneg import distributed
    from recneg.config import TrainConfig
    from recneg.data.split import random_split
    from recneg.data.synthetic import SyntheticConfig, generate
    from recneg.registry import build_loss, build_model, build_sampler
    from recneg.train import Trainer

    ctx = distributed.init_from_env(args.device)
    data = generate(
        SyntheticConfig(n_users=args.users, n_items=args.items, mean_degree=args.degree, seed=0)
    ).interactions
    split = random_split(data, 0.1, 0.0, seed=0)
    model_name, sampler_name, sampler_args, loss_name = CONFIGS[args.config]
    torch.manual_seed(0)
    model = build_model(model_name, split.train, dim=args.dim)
    sampler = build_sampler(sampler_name, **sampler_args)
    cfg = TrainConfig(
        epochs=args.warmup + args.epochs,
        batch_size=args.batch_size,
        eval_every=10_000,
        patience=0,
        progress=False,
        device=args.device,
        threads=args.threads,
        topk=(10,),
        metric="recall@10",
    )
    trainer = Trainer(model, sampler, split, build_loss(loss_name), cfg)
    rates = []
    for epoch in range(args.warmup + args.epochs):
        record = trainer.train_epoch()
        trainer.epoch += 1
        if epoch >= args.warmup:
            rates.append(record["pairs_per_second"])
    if ctx.is_main:
        Path(args.result).write_text(
            json.dumps({"pairs_per_second": rates, "n_train": len(split.train), "world": ctx.world})
        )
    distributed.shutdown()


def launch(args, config: str, nproc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "benchmarks.distributed", "--worker", "--config", config, "--result", str(result),
            "--threads", str(args.threads), "--device", args.device, "--users", str(args.users),
            "--items", str(args.items), "--degree", str(args.degree), "--dim", str(args.dim),
            "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--epochs", str(args.epochs),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "GLOO_SOCKET_IFNAME": "lo"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{config} with {nproc} process(es) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return json.loads(result.read_text())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", default="1,2", help="comma list of process counts")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=4000)
    p.add_argument("--degree", type=float, default=30.0)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs")
    p.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return

    from benchmarks.common import machine_stamp, md_table, write_results

    nprocs = [int(n) for n in args.nprocs.split(",")]
    rows = []
    for config in args.configs.split(","):
        base = None
        for nproc in nprocs:
            load_before = os.getloadavg()[0]
            got = launch(args, config, nproc)
            rate = statistics.median(got["pairs_per_second"])
            base = base or rate
            rows.append(
                {
                    "config": config,
                    "processes": nproc,
                    "pairs/s (median)": rate,
                    "speed-up vs first": rate / base,
                    "epochs timed": len(got["pairs_per_second"]),
                    "train pairs": got["n_train"],
                    "load avg (1 min) before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
                }
            )
            print(rows[-1], flush=True)
    stamp = machine_stamp(args.threads)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    name = f"distributed_{device}"
    command = "python -m benchmarks.distributed " + " ".join(sys.argv[1:])
    payload = {"command": command, "machine": stamp, "note": args.note, "settings": vars(args), "rows": rows}
    columns = ["config", "processes", "pairs/s (median)", "speed-up vs first", "epochs timed", "train pairs"]
    columns.append("load avg (1 min) before/after")
    md = (
        f"# Distributed training throughput ({device})\n\nCommand: `{command}`\n\n"
        f"Synthetic data: {args.users} users × {args.items} items, mean degree {args.degree}; MF dim "
        f"{args.dim}, global batch {args.batch_size}, Adam; {args.threads} torch thread(s) per process; "
        f"{args.warmup} warm-up epoch(s), median of {args.epochs} timed epoch(s).\n\n"
        f"Machine: {stamp}\n\n" + (f"Note: {args.note}\n\n" if args.note else "") + md_table(rows, columns)
    )
    for path in write_results(name, payload, md):
        print("wrote", path)


if __name__ == "__main__":
    main()

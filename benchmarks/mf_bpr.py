"""Step-1 benchmark: MF-BPR with uniform negatives on real data; evaluation against a bare matmul + top-k.

Run (from the repository root, with ../shared/data present, nothing else running):

    python -m benchmarks.mf_bpr --threads 2

Writes benchmarks/results/mf_bpr.json and mf_bpr.md. Protocols:
- ml-100k: every rating a positive, random per-user 80/10/10 (seed 0), early stopping on validation Recall@20.
- ml-100k-recbole: random per-user 80/20, no validation, 50 epochs, last-epoch test (RecBole 1.2.1 gives
  Recall@20 ≈ 0.32 with Adam 1e-3, batch 2048, dim 64).
- gowalla: the NGCF/LightGCN train/test files, no validation, fixed epochs, last-epoch test (target ≥ 0.129).
"""

from __future__ import annotations

import argparse
import time

import torch

import recneg
from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, peak_rss_mb, write_results
from recneg.config import TrainConfig
from recneg.data.datasets import load_dataset
from recneg.eval.ranking import evaluate
from recneg.train import Trainer

PROTOCOLS = {
    "ml-100k": dict(
        dataset="ml-100k",
        split="random",
        valid_ratio=0.1,
        test_ratio=0.1,
        train=dict(epochs=300, eval_every=5, patience=10),
    ),
    "ml-100k-recbole": dict(
        dataset="ml-100k",
        split="random",
        valid_ratio=0.0,
        test_ratio=0.2,
        train=dict(epochs=50, eval_every=10, patience=0),
    ),
    "gowalla": dict(
        dataset="gowalla",
        split="auto",
        valid_ratio=0.0,
        test_ratio=0.1,
        train=dict(epochs=60, eval_every=10, patience=0),
    ),
}


def bare_eval_seconds(model, split, k=50, chunk=1024) -> float:
    """A bare chunked ``U Iᵀ`` + top-k over the same tables (no masking, no metrics)."""
    users, items = model.tables()
    item_t = items.T.contiguous()
    t0 = time.perf_counter()
    for s in range(0, users.shape[0], chunk):
        torch.topk(users[s : s + chunk] @ item_t, k, dim=1)
    return time.perf_counter() - t0


def run_protocol(
    name: str,
    spec: dict,
    data_dir: str,
    threads: int,
    lr: float,
    epochs: int | None,
    reg: float = 1e-4,
    eval_every: int | None = None,
) -> dict:
    split = load_dataset(
        spec["dataset"],
        data_dir=data_dir,
        split=spec["split"],
        valid_ratio=spec["valid_ratio"],
        test_ratio=spec["test_ratio"],
        seed=0,
        download=False,
    )
    train_kw = dict(spec["train"])
    if epochs:
        train_kw["epochs"] = epochs
    if eval_every:
        train_kw["eval_every"] = eval_every
    cfg = TrainConfig(reg=reg, lr=lr, batch_size=2048, threads=threads, progress=False, seed=0, **train_kw)
    torch.manual_seed(0)
    model = recneg.build_model("mf", split.train, dim=64)
    trainer = Trainer(model, recneg.build_sampler("uniform"), split, config=cfg)
    result = trainer.run()
    epoch_seconds = [h["train_seconds"] for h in result.history]
    eval_seconds = [h["eval_seconds"] for h in result.history if h["eval_seconds"] > 0]
    # evaluation vs the bare matmul + top-k, same tables, same chunk, measured back to back
    t0 = time.perf_counter()
    evaluate(model, split, "test", cfg.topk, cfg.eval_chunk)
    full_eval = time.perf_counter() - t0
    bare = bare_eval_seconds(model, split, max(cfg.topk), cfg.eval_chunk)
    part = "valid" if split.valid is not None else "test"
    curve = [(h["epoch"], h[part]["recall@20"]) for h in result.history if part in h]
    return {
        "protocol": name,
        "dataset": spec["dataset"],
        "split": repr(split),
        "lr": lr,
        "reg": reg,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "eval_seconds": full_eval,
        "bare_matmul_topk_seconds": bare,
        "eval_over_bare": full_eval / bare,
        "peak_rss_mb": peak_rss_mb(),
        "test_recall@20": result.test["recall@20"],
        "test_ndcg@20": result.test["ndcg@20"],
        "curve_recall@20": curve,
        "mean_eval_seconds_in_training": sum(eval_seconds) / max(len(eval_seconds), 1),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--protocols", default="ml-100k,ml-100k-recbole,gowalla")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=None, help="override every protocol's epochs")
    ap.add_argument("--eval-every", type=int, default=None, help="override every protocol's eval_every")
    ap.add_argument("--reg", type=float, default=1e-4, help="λ of R1")
    ap.add_argument("--name", default="mf_bpr")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.protocols.split(","):
        row = run_protocol(
            name,
            PROTOCOLS[name],
            args.data_dir,
            args.threads,
            args.lr,
            args.epochs,
            args.reg,
            args.eval_every,
        )
        print({k: v for k, v in row.items() if k != "curve_recall@20"}, flush=True)
        rows.append(row)
    stamp = machine_stamp(args.threads)
    cols = [
        "protocol",
        "lr",
        "reg",
        "epochs_run",
        "best_epoch",
        "seconds_per_epoch",
        "eval_seconds",
        "bare_matmul_topk_seconds",
        "eval_over_bare",
        "peak_rss_mb",
        "test_recall@20",
        "test_ndcg@20",
    ]
    cmd = "python -m benchmarks.mf_bpr " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    md = f"# MF-BPR, uniform negatives\n\nCommand: `{cmd}`\n\nMachine: {stamp}\n\n" + md_table(rows, cols)
    j, m = write_results(args.name, {"machine": stamp, "command": cmd, "rows": rows}, md)
    print(md)
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()

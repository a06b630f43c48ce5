"""Full-ranking evaluation time against a bare chunked ``U Iᵀ`` + top-k over the same tables (target ≤ 1.3×).

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.eval_time --dataset gowalla --threads 2 --rounds 3

The tables are an untrained MF's (the time of a full ranking does not depend on the values). recneg's
``evaluate`` masks the training positives, takes the top ``max(topk)``, and computes Recall/NDCG/... per user;
the bare loop only multiplies and takes the top-k. Both use the same chunk of users; rounds alternate the two
and the medians are compared. Peak memory: the process's RSS (and, on CUDA, ``max_memory_allocated``).
Writes benchmarks/results/eval_time_<dataset>.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, peak_rss_mb, write_results
from recneg.data.datasets import load_dataset
from recneg.eval.ranking import evaluate
from recneg.registry import build_model
from recneg.utils import resolve_device


def bare_eval_seconds(user_table, item_table, users, k: int, chunk: int) -> float:
    """Seconds of a bare chunked ``U[users] Iᵀ`` + top-``k`` (no masking, no metrics)."""
    item_t = item_table.T.contiguous()
    t0 = time.perf_counter()
    for s in range(0, users.numel(), chunk):
        torch.topk(user_table[users[s : s + chunk]] @ item_t, k, dim=1)
    if user_table.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--topk", default="10,20,50")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    topk = tuple(int(k) for k in args.topk.split(","))
    model = build_model("mf", split.train).to(device)
    users_t, items_t = model.tables()
    eval_users = torch.as_tensor(split.test.csr.getnnz(axis=1).nonzero()[0], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    full, bare = [], []
    evaluate(model, split, "test", topk, args.chunk)  # warm-up (mask and target indexes, first-use pages)
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        evaluate(model, split, "test", topk, args.chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
        full.append(time.perf_counter() - t0)
        bare.append(bare_eval_seconds(users_t, items_t, eval_users, max(topk), args.chunk))
    row = {
        "dataset": args.dataset,
        "users evaluated": int(eval_users.numel()),
        "items": split.train.n_items,
        "eval s (median)": statistics.median(full),
        "bare matmul+topk s (median)": statistics.median(bare),
        "ratio (target <= 1.3)": statistics.median(full) / statistics.median(bare),
        "peak RSS MB": peak_rss_mb(),
    }
    if device.type == "cuda":
        row["cuda max allocated MB"] = torch.cuda.max_memory_allocated(device) / 2**20
    cmd = "python -m benchmarks.eval_time " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = machine_stamp(args.threads)
    md = (
        f"# Full-ranking evaluation time on {args.dataset}\n\nCommand: `{cmd}`\n\n{split!r}; MF d = 64, "
        f"top-{max(topk)}, chunk {args.chunk} users, {args.rounds} alternating rounds."
        f"\n\nMachine: {stamp}\n\n" + md_table([row], list(row))
    )
    write_results(
        f"eval_time_{args.dataset}",
        {"machine": stamp, "command": cmd, "row": row, "full_s": full, "bare_s": bare},
        md,
    )
    print(md)
    return row


if __name__ == "__main__":
    main()

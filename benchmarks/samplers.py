"""Step-2/3 quality benchmark: many samplers × seeds on one dataset, with per-epoch validation curves.

Run (from the repository root, ../shared/data present):

    python -m benchmarks.samplers --dataset ml-100k --grid step2 --seeds 0,1,2 --jobs 2

Each (config, seed) runs in its own process with one torch thread and writes
benchmarks/results/<name>/runs/<config>-s<seed>.json (a finished run is not redone: the grid resumes).
The summary (mean ± std over seeds of test Recall@20 / NDCG@20 at the best validation epoch and at the last
epoch, the validation peak and the drop from it) goes to results/<name>.json and results/<name>.md.
No early stopping: every run trains the full budget so the curves show late-training collapse (PDNS's claim).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, RESULTS, machine_stamp, md_table, write_results

# name -> (model, model args, sampler, sampler args, loss, loss args)
GRIDS = {
    "step2": {
        "uniform": ("mf", {}, "uniform", {}, "bpr", {}),
        "dns-8": ("mf", {}, "dns", {"n_candidates": 8}, "bpr", {}),
        "dns-16": ("mf", {}, "dns", {"n_candidates": 16}, "bpr", {}),
        "dns-32": ("mf", {}, "dns", {"n_candidates": 32}, "bpr", {}),
        "dns-64": ("mf", {}, "dns", {"n_candidates": 64}, "bpr", {}),
        "dns_mn-4of32": ("mf", {}, "dns_mn", {"n_candidates": 32, "n_selected": 4}, "bpr", {}),
        "softmax_v-rho1-32": ("mf", {}, "softmax_v", {"n_candidates": 32, "rho": 1.0}, "bpr", {}),
        "pdns-32-b0.2": ("mf", {}, "dns", {"n_candidates": 32}, "softbpr", {"beta": 0.2}),
        "pdns-64-b0.2": ("mf", {}, "dns", {"n_candidates": 64}, "softbpr", {"beta": 0.2}),
        "srns": ("mf", {}, "srns", {}, "bpr", {}),
        "lightgcn-uniform": ("lightgcn", {}, "uniform", {}, "bpr", {}),
        "lightgcn-mixgcf-16": ("lightgcn", {}, "mixgcf", {"n_candidates": 16}, "kpair", {}),
    },
    "step3": {
        "uniform": ("mf", {}, "uniform", {}, "bpr", {}),
        "dns-16": ("mf", {}, "dns", {"n_candidates": 16}, "bpr", {}),
        "dens": ("mf", {}, "dens", {}, "kpair", {}),
        "ans": ("mf", {}, "ans", {}, "bpr", {}),
        "ans-no-disentangle": ("mf", {}, "ans", {"disentangle": False}, "bpr", {}),
        "ans-no-gain": ("mf", {}, "ans", {"use_gain": False}, "bpr", {}),
        "ans-no-direction": ("mf", {}, "ans", {"regulate_direction": False}, "bpr", {}),
        "ans-no-magnitude": ("mf", {}, "ans", {"regulate_magnitude": False}, "bpr", {}),
        # the ANS code's regulariser: RecBole's EmbLoss over the whole pool, reg_weight 1e-5 (ALGORITHMS §1.3)
        "ans-r2": ("mf", {}, "ans", {}, "bpr", {}, {"regularizer": "r2", "reg": 1e-5}),
        "dns-16-r2": ("mf", {}, "dns", {"n_candidates": 16}, "bpr", {}, {"regularizer": "r2", "reg": 1e-5}),
    },
}


def run_one(job: dict) -> dict:
    out = Path(job["out"])
    if out.exists():
        return json.loads(out.read_text())
    import torch

    torch.set_num_threads(1)
    from recneg.config import ComponentConfig, DataConfig, RunConfig, TrainConfig
    from recneg.runner import run

    model, model_args, sampler, sampler_args, loss, loss_args, *extra = job["spec"]
    train_extra = extra[0] if extra else {}  # per-config TrainConfig settings (regularizer, reg)
    cfg = RunConfig(
        data=DataConfig(
            dataset=job["dataset"],
            data_dir=job["data_dir"],
            seed=0,
            download=False,
            valid_ratio=job["valid_ratio"],
        ),
        model=ComponentConfig(model, {"dim": 64, **model_args}),
        sampler=ComponentConfig(sampler, sampler_args),
        loss=ComponentConfig(loss, loss_args),
        train=TrainConfig(
            epochs=job["epochs"],
            eval_every=job["eval_every"],
            patience=0,
            lr=job["lr"],
            seed=job["seed"],
            threads=1,
            progress=False,
            topk=(10, 15, 20, 50),
            **train_extra,
        ),
    )
    t0 = time.perf_counter()
    result = run(cfg)
    part = "valid" if result.valid else "test"
    curve = [(h["epoch"], h[part]["recall@20"], h[part]["ndcg@20"]) for h in result.history if part in h]
    final = {
        "config": job["name"],
        "seed": job["seed"],
        "best_epoch": result.best_epoch,
        "test_at_best": result.test,
        "valid_best": result.valid,
        "curve": curve,
        "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in result.history),
        "wall_seconds": time.perf_counter() - t0,
        "sampler_stats_last_epoch": result.history[-1].get("sampler", {}),
    }
    # the last-epoch model is gone after restoring the best; its validation score is the curve's last point
    final["valid_last"] = curve[-1][1] if curve else None
    final["valid_peak"] = max(c[1] for c in curve) if curve else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(final))
    return final


def summarise(rows: list[dict], configs: list[str]) -> list[dict]:
    table = []
    for name in configs:
        rs = [r for r in rows if r["config"] == name]
        if not rs:
            continue

        def ms(values):
            values = [v for v in values if v is not None]
            if not values:
                return ""
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.4f} ± {sd:.4f}"

        table.append(
            {
                "config": name,
                "seeds": len(rs),
                "test recall@20": ms(r["test_at_best"]["recall@20"] for r in rs),
                "test ndcg@20": ms(r["test_at_best"]["ndcg@20"] for r in rs),
                "test hit@15": ms(r["test_at_best"].get("hit@15") for r in rs),
                "valid peak recall@20": ms(r["valid_peak"] for r in rs),
                "valid last recall@20": ms(r["valid_last"] for r in rs),
                "drop peak→last %": ms(
                    100 * (r["valid_peak"] - r["valid_last"]) / r["valid_peak"] for r in rs
                ),
                "best epoch": ms(r["best_epoch"] for r in rs),
                "s/epoch": ms(r["seconds_per_epoch"] for r in rs),
            }
        )
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--grid", default="step2", choices=sorted(GRIDS))
    ap.add_argument("--configs", default=None, help="comma list: a subset of the grid")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--valid-ratio", type=float, default=0.1)
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--name", default=None)
    ap.add_argument(
        "--summary-only",
        action="store_true",
        help="summarise the finished runs on disk (a partial grid says how many seeds each config has)",
    )
    args = ap.parse_args(argv)
    grid = GRIDS[args.grid]
    configs = args.configs.split(",") if args.configs else list(grid)
    name = args.name or f"samplers_{args.grid}_{args.dataset}"
    jobs = [
        dict(
            name=c,
            spec=grid[c],
            seed=int(s),
            dataset=args.dataset,
            data_dir=args.data_dir,
            epochs=args.epochs,
            eval_every=args.eval_every,
            lr=args.lr,
            valid_ratio=args.valid_ratio,
            out=str(RESULTS / name / "runs" / f"{c}-s{s}.json"),
        )
        for c in configs
        for s in args.seeds.split(",")
    ]
    if args.summary_only:
        jobs = [j for j in jobs if Path(j["out"]).exists()]
        configs = [c for c in configs if any(j["name"] == c for j in jobs)]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = []
        for r in pool.map(run_one, jobs):
            print(
                f"{r['config']} seed {r['seed']}: test recall@20 {r['test_at_best']['recall@20']:.4f} "
                f"(best epoch {r['best_epoch']}, {r['seconds_per_epoch']:.2f} s/epoch)",
                flush=True,
            )
            rows.append(r)
    table = summarise(rows, configs)
    stamp = machine_stamp(1)
    cmd = "python -m benchmarks.samplers " + " ".join(argv if argv is not None else sys.argv[1:])
    cols = list(table[0]) if table else []
    wanted = len(args.seeds.split(","))
    partial = [f"{t['config']} ({t['seeds']} of {wanted})" for t in table if t["seeds"] < wanted]
    missing = [c for c in (args.configs.split(",") if args.configs else list(grid)) if c not in configs]
    note = ""
    if partial or missing:
        note = (
            "**Partial grid**: the runs below are the ones finished when it was summarised; "
            + (f"fewer seeds: {', '.join(partial)}; " if partial else "")
            + (f"not run: {', '.join(missing)}; " if missing else "")
            + "re-running the command without --summary-only completes it (finished runs are reused).\n\n"
        )
    md = (
        f"# Samplers on {args.dataset} ({args.grid})\n\nCommand: `{cmd}`\n\n{note}"
        f"MF/LightGCN dim 64, Adam lr {args.lr}, batch 2048, R1 λ=1e-4, {args.epochs} epochs without early "
        f"stopping, validation every {args.eval_every} epochs; test metrics of the best-validation weights. "
        f"Per-run curves: results/{name}/runs/.\n\nMachine: {stamp}\n\n" + md_table(table, cols)
    )
    write_results(name, {"machine": stamp, "command": cmd, "summary": table, "runs": rows}, md)
    print(md)


if __name__ == "__main__":
    main()

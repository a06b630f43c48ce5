"""Step-4 evidence: two-tower in-batch vs MNS (B′ sweep) vs uniform-corpus sampled softmax vs MF+uniform BPR.

Run (from the repository root, ../shared/data present):

    python -m benchmarks.two_tower --seeds 0,1,2 --epochs 15 --eval-every 1 --jobs 1
    python -m benchmarks.two_tower --seeds 0,1,2 --parts ann --jobs 1     # ann_hard vs DNS (MF)
    python -m benchmarks.two_tower --dataset lastfm-hetrec2011 --parts main --seeds 0,1,2 --epochs 15 --jobs 1

Data: ml-100k with its side features (users: age bucket, gender, occupation, zip region; items: genres,
release decade), every rating a positive; or (``--dataset lastfm-hetrec2011``) Last.fm HetRec with each
artist's tags as item features, results under ``two_tower_lastfm-hetrec2011``.

- ``main`` part: random per-user 80/10/10 split (seed 0). Reported: test Recall@{20,50}, and Recall@{20,50}
  restricted to the test items of each popularity bucket (head = top 20 % of items by training count,
  tail = bottom 50 %; ``recneg.eval.buckets``), at the best validation epoch.
- ``cold`` part: ``cold_start_split`` (10 % of the active items, drawn uniformly, held out of training; all
  their interactions go to test; the warm rest split 80/10/10 per user, seed 0). The two-tower models run
  with ``use_item_id=false`` (items embedded from genres + decade only) and report Recall@{20,50} on the
  cold items' test interactions (full ranking over all items). MF cannot embed an item it never saw: n/a.

- ``ann`` part (``--parts ann``): MF + BPR with ``dns`` (32 candidates) and ``ann_hard`` (HNSW or exact,
  top-100, pick uniform or top) negatives on the main split, against the main part's MF + uniform run:
  quality and seconds per epoch.

Every (config, part, seed) is one process with one torch thread (``max_tasks_per_child=1``) and writes
``benchmarks/results/two_tower/runs/<config>-<part>-s<seed>.json``; a finished run is not redone (the grid
resumes). The summary (mean ± std over seeds) goes to ``benchmarks/results/two_tower.json`` and ``.md``.

B′ = 8192 (the MNS paper's best) is not run on ml-100k by default: it has 1682 items, so 8192 uniform
draws per step would be ~5 copies of the whole catalogue (Last.fm, 17 632 items, runs it). B′ = 4096 is
run as 4096 i.i.d. uniform draws with replacement (the ``mns`` sampler always draws with replacement; its
logQ ``B′/n_items`` is the expected count).
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

NAME = "two_tower"
SOFTMAX = {"temperature": 0.1, "normalize": True}
TOWER = {"hidden": (256, 64)}

# name -> (model, model args, sampler, sampler args, loss, loss args, train overrides)
CONFIGS = {
    "in_batch": ("twotower", TOWER, "in_batch", {}, "softmax", SOFTMAX, {}),
    "mns-256": ("twotower", TOWER, "mns", {"n_uniform": 256}, "softmax", SOFTMAX, {}),
    "mns-1024": ("twotower", TOWER, "mns", {"n_uniform": 1024}, "softmax", SOFTMAX, {}),
    "mns-4096": ("twotower", TOWER, "mns", {"n_uniform": 4096}, "softmax", SOFTMAX, {}),
    "mns-8192": ("twotower", TOWER, "mns", {"n_uniform": 8192}, "softmax", SOFTMAX, {}),
    "uniform_corpus-2048": (
        "twotower",
        TOWER,
        "uniform_corpus",
        {"n_negatives": 2048},
        "softmax",
        SOFTMAX,
        {},
    ),
    "mf-uniform-bpr": ("mf", {"dim": 64}, "uniform", {}, "bpr", {}, {"lr": 5e-3, "reg": 1e-4, "mf": True}),
}
_MF = {"lr": 5e-3, "reg": 1e-4, "mf": True}
# part "ann": hard negatives from the ANN index vs DNS, MF + BPR on the main split (the uniform baseline is
# the main part's mf-uniform-bpr run)
ANN_CONFIGS = {
    "mf-dns-32": ("mf", {"dim": 64}, "dns", {"n_candidates": 32}, "bpr", {}, _MF),
    "mf-ann_hard-hnsw-uniform": (
        "mf",
        {"dim": 64},
        "ann_hard",
        {"index": "hnsw", "n_candidates": 100, "pick": "uniform"},
        "bpr",
        {},
        _MF,
    ),
    "mf-ann_hard-hnsw-top": (
        "mf",
        {"dim": 64},
        "ann_hard",
        {"index": "hnsw", "n_candidates": 100, "pick": "top"},
        "bpr",
        {},
        _MF,
    ),
    "mf-ann_hard-flat-uniform": (
        "mf",
        {"dim": 64},
        "ann_hard",
        {"index": "flat", "n_candidates": 100, "pick": "uniform"},
        "bpr",
        {},
        _MF,
    ),
}
ALL_CONFIGS = {**CONFIGS, **ANN_CONFIGS}
PARTS = ("main", "cold")


# side features each dataset brings (recneg.data.features.dataset_features), for the report
FEATURES = {
    "ml-100k": "user: age bucket, gender, occupation, zip region; item: genres, decade",
    "lastfm-hetrec2011": "item: the artist's tags (multi-hot, from user_taggedartists.dat); no user features",
}
# B′ = 8192 exceeds ml-100k's catalogue five times over: not a meaningful point there
SKIP = {"ml-100k": {"mns-8192"}}


def load_part(part: str, data_dir: str, dataset: str = "ml-100k"):
    from recneg.data.datasets import load_dataset
    from recneg.eval.buckets import cold_start_split

    split = load_dataset(
        dataset, data_dir=data_dir, split="random", valid_ratio=0.1, test_ratio=0.1, seed=0, download=False
    )
    if part == "cold":
        cold = cold_start_split(split, cold_ratio=0.1, test_ratio=0.1, valid_ratio=0.1, seed=0)
        cold.name = split.name
        return cold
    return split


def run_one(job: dict) -> dict:
    out = Path(job["out"])
    if out.exists():
        return json.loads(out.read_text())
    import torch

    torch.set_num_threads(1)
    try:  # FAISS (ann_hard's HNSW) uses OpenMP threads of its own
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    import recneg
    from recneg.config import TrainConfig
    from recneg.data.features import dataset_features
    from recneg.eval.buckets import cold_start_recall, popularity_recall
    from recneg.train import Trainer

    model_name, model_args, sampler_name, sampler_args, loss_name, loss_args, overrides = ALL_CONFIGS[
        job["config"]
    ]
    overrides = dict(overrides)
    is_mf = overrides.pop("mf", False)
    part, seed = job["part"], job["seed"]
    dataset = job.get("dataset", "ml-100k")
    split = load_part(part, job["data_dir"], dataset)
    model_args = dict(model_args)
    if part == "cold" and model_name == "twotower":
        model_args["use_item_id"] = False
    torch.manual_seed(seed)
    model = recneg.build_model(model_name, split.train, **model_args)
    if model_name == "twotower":
        model.with_features(*dataset_features(dataset, job["data_dir"], split.train))
    sampler = recneg.build_sampler(sampler_name, **sampler_args)
    loss = recneg.build_loss(loss_name, **loss_args)
    train_kw = dict(
        epochs=job["mf_epochs"] if is_mf else job["epochs"],
        eval_every=job["mf_eval_every"] if is_mf else job["eval_every"],
        batch_size=2048,
        lr=1e-3,
        reg=0.0,
        optimizer="adam",
        patience=0,
        seed=seed,
        threads=1,
        progress=False,
        topk=(10, 20, 50),
    )
    train_kw.update(overrides)
    cfg = TrainConfig(**train_kw)
    t0 = time.perf_counter()
    result = Trainer(model, sampler, split, loss, cfg).run()
    wall = time.perf_counter() - t0
    row = {
        "config": job["config"],
        "dataset": dataset,
        "part": part,
        "seed": seed,
        "model": model_name,
        "model_args": {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items()},
        "sampler": sampler_name,
        "sampler_args": sampler_args,
        "loss": loss_name,
        "loss_args": loss_args,
        "train": {k: list(v) if isinstance(v, tuple) else v for k, v in train_kw.items()},
        "best_epoch": result.best_epoch,
        "valid_recall@20": result.valid.get("recall@20"),
        "test": result.test,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
        "seconds_per_epoch": result.train_seconds / max(len(result.history), 1),
    }
    if result.history and "sampler" in result.history[-1]:
        row["sampler_stats_last_epoch"] = result.history[-1]["sampler"]
    if part != "cold":
        row["buckets"] = popularity_recall(result.test_result, split, ks=(20, 50), head=0.2, tail=0.5)
    else:
        row["cold"] = cold_start_recall(result.test_result, split, ks=(20, 50))
        row["n_cold_items"] = len(split.info["cold_items"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    return row


def _ms(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_ann(rows: list[dict]) -> list[dict]:
    """The ``ann`` part: MF + BPR with uniform (from the main part), DNS and ann_hard negatives."""
    out = []
    for config in ("mf-uniform-bpr", *ANN_CONFIGS):
        part = "main" if config == "mf-uniform-bpr" else "ann"
        runs = [r for r in rows if r["config"] == config and r["part"] == part]
        if not runs:
            continue
        s: dict = {"config": config, "seeds": len(runs)}
        for k in (20, 50):
            s[f"recall@{k}"] = _ms([r["test"][f"recall@{k}"] for r in runs])
            s[f"tail_recall@{k}"] = _ms([r["buckets"]["tail"][f"recall@{k}"] for r in runs])
        s["ndcg@20"] = _ms([r["test"]["ndcg@20"] for r in runs])
        s["seconds_per_epoch"] = _ms([r["seconds_per_epoch"] for r in runs])
        stats = [r.get("sampler_stats_last_epoch") or {} for r in runs]
        s["ann_pool"] = _ms([st.get("ann_pool") for st in stats])
        s["ann_fallback"] = _ms([st.get("ann_fallback") for st in stats])
        s["best_epochs"] = [r["best_epoch"] for r in runs]
        out.append(s)
    return out


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for config in CONFIGS:
        main = [r for r in rows if r["config"] == config and r["part"] == "main"]
        cold = [r for r in rows if r["config"] == config and r["part"] == "cold"]
        if not main and not cold:
            continue
        s: dict = {"config": config, "seeds": len(main), "cold_seeds": len(cold)}
        for k in (20, 50):
            s[f"recall@{k}"] = _ms([r["test"][f"recall@{k}"] for r in main])
            for b in ("head", "torso", "tail"):
                s[f"{b}_recall@{k}"] = _ms([r["buckets"][b][f"recall@{k}"] for r in main])
                s[f"{b}_recall_micro@{k}"] = _ms([r["buckets"][b][f"recall_micro@{k}"] for r in main])
            s[f"cold_recall@{k}"] = _ms([r["cold"][f"recall@{k}"] for r in cold])
            s[f"cold_recall_micro@{k}"] = _ms([r["cold"][f"recall_micro@{k}"] for r in cold])
            s[f"coldsplit_overall_recall@{k}"] = _ms([r["test"][f"recall@{k}"] for r in cold])
        s["seconds_per_epoch"] = _ms([r["seconds_per_epoch"] for r in main])
        s["epochs"] = main[0]["train"]["epochs"] if main else None
        s["best_epochs"] = [r["best_epoch"] for r in main]
        out.append(s)
    return out


def _fmt(pair, digits=4) -> str:
    m, sd = pair
    if m != m:  # nan
        return "n/a"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def markdown_ann(summary: list[dict]) -> str:
    if not any(row["config"] in ANN_CONFIGS for row in summary):  # the ann part did not run
        return ""
    cols = ["config", "R@20", "R@50", "NDCG@20", "tail R@50", "s/epoch", "ANN pool", "fallback"]
    table = [
        {
            "config": s["config"],
            "R@20": _fmt(s["recall@20"]),
            "R@50": _fmt(s["recall@50"]),
            "NDCG@20": _fmt(s["ndcg@20"]),
            "tail R@50": _fmt(s["tail_recall@50"]),
            "s/epoch": _fmt(s["seconds_per_epoch"], 2),
            "ANN pool": _fmt(s["ann_pool"], 1),
            "fallback": _fmt(s["ann_fallback"], 3),
        }
        for s in summary
    ]
    text = [
        "",
        "## Hard negatives from the ANN index vs DNS (MF + BPR, main split)",
        "",
        (
            "MF dim 64, BPR, one negative per positive, Adam lr 5e-3, λ = 1e-4, batch 2048, same epochs and "
            "validation as the MF row above. `dns`: best of 32 uniform non-positive candidates. `ann_hard`: "
            "index rebuilt at each epoch start, each user's top-100 (HNSW M = 32, efSearch = 128, or exact "
            "`flat`) minus training positives, one picked uniformly (`uniform`) or the best (`top`). "
            "`ANN pool`: remaining candidates per row (last epoch); `fallback`: share of negatives drawn "
            "uniformly because the pool was empty."
        ),
        "",
    ]
    return "\n".join(text) + "\n" + md_table(table, cols)


def markdown(summary: list[dict], commands: list[str], stamp: dict, meta: dict) -> str:
    cols = [
        "config",
        "R@20",
        "R@50",
        "head R@20",
        "torso R@20",
        "tail R@20",
        "tail R@50",
        "tail µR@50",
        "cold R@20",
        "cold R@50",
        "s/epoch",
    ]
    table = []
    for s in summary:
        table.append(
            {
                "config": s["config"],
                "R@20": _fmt(s["recall@20"]),
                "R@50": _fmt(s["recall@50"]),
                "head R@20": _fmt(s["head_recall@20"]),
                "torso R@20": _fmt(s["torso_recall@20"]),
                "tail R@20": _fmt(s["tail_recall@20"]),
                "tail R@50": _fmt(s["tail_recall@50"]),
                "tail µR@50": _fmt(s["tail_recall_micro@50"]),
                "cold R@20": _fmt(s["cold_recall@20"]),
                "cold R@50": _fmt(s["cold_recall@50"]),
                "s/epoch": _fmt(s["seconds_per_epoch"], 1),
            }
        )
    dataset = meta.get("dataset", "ml-100k")
    head = [
        f"# Two-tower: in-batch vs MNS vs uniform-corpus sampled softmax vs MF+uniform BPR ({dataset})",
        "",
        "Commands (in order; finished runs are reused, so each call re-summarises every run):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Machine: {stamp['platform']}, torch {stamp['torch']}, 1 thread per run, {stamp['date']}.",
        "",
        (
            f"Protocol: {dataset}, every interaction a positive, random per-user 80/10/10 split (seed 0); "
            f"side features ({FEATURES[dataset]}). Two-tower "
            f"hidden {list(TOWER['hidden'])}, softmax loss with L2-normalised embeddings and τ = "
            f"{SOFTMAX['temperature']}, logQ correction (count scale, per-item mixture for MNS, positive "
            f"uncorrected: MNS Eq. 5), accidental hits masked; batch B = 2048, Adam lr 1e-3, "
            f"{meta['epochs']} epochs, validation every {meta['eval_every']} (best validation Recall@20 "
            f"kept). MF: dim 64, uniform negatives, BPR, Adam lr 5e-3, λ = 1e-4, {meta['mf_epochs']} epochs, "
            f"validation every {meta['mf_eval_every']}. Seeds {meta['seeds']} (training seed; the data split "
            "is fixed)."
        ),
        "",
        (
            "Buckets by training count: head = top 20 % of items, tail = bottom 50 %. `R@K` columns are "
            "user-averaged recall restricted to the bucket's test items (full ranking over all items); "
            "`µR` is the share of the bucket's test interactions retrieved. "
            + (
                f"Cold: a separate split with {meta['n_cold_items']} items (10 % of active items, uniform) "
                "held out of training; two-tower with `use_item_id=false`; MF cannot embed unseen items "
                "(n/a)."
                if meta.get("n_cold_items")
                else "The cold-start part was not run on this dataset (cold columns n/a)."
            )
        ),
        "",
        *(
            [
                "B′ = 8192 is not run: ml-100k has 1682 items; B′ = 4096 is 4096 uniform draws with "
                "replacement.",
                "",
            ]
            if dataset == "ml-100k"
            else []
        ),
        "Wall time, summed over runs (one core each, on a 2-core machine shared with another benchmark, so "
        "`s/epoch` is noisy, and grids that ran across a speed change mix code versions; "
        "`two_tower_epoch.md` times the configurations like for like): "
        + ", ".join(f"{p} {v / 60:.1f} min" for p, v in meta.get("run_wall_seconds_by_part", {}).items() if v)
        + ".",
        "",
        "Values: mean ± std over seeds.",
        "",
    ]
    return "\n".join(head) + "\n" + md_table(table, cols)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--dataset", default="ml-100k", choices=sorted(FEATURES))
    ap.add_argument(
        "--name", default=None, help="results name (default: two_tower for ml-100k, else two_tower_<dataset>)"
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--configs", default=None, help="configs of the main and cold parts (default: all the dataset runs)"
    )
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="main, cold and/or ann (ann_hard vs DNS with MF; its own configs)",
    )
    ap.add_argument("--ann-configs", default=",".join(ANN_CONFIGS), help="configs of the ann part")
    ap.add_argument("--epochs", type=int, default=3, help="two-tower epochs")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--mf-epochs", type=int, default=40)
    ap.add_argument("--mf-eval-every", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--runs-dir", default=None, help="default: results/<name>/runs")
    ap.add_argument("--no-summary", action="store_true")
    ap.add_argument("--summary-only", action="store_true", help="only re-summarise the runs on disk")
    args = ap.parse_args(argv)
    name = args.name or (NAME if args.dataset == "ml-100k" else f"{NAME}_{args.dataset}")
    args.runs_dir = args.runs_dir or str(RESULTS / name / "runs")
    skip = SKIP.get(args.dataset, set())
    default_configs = ",".join(c for c in CONFIGS if c not in skip)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    configs = [c for c in (args.configs or default_configs).split(",") if c]
    parts = [p for p in args.parts.split(",") if p]
    ann_configs = [c for c in args.ann_configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r}; known: {', '.join(CONFIGS)}")
    for c in ann_configs:
        if c not in ANN_CONFIGS:
            raise SystemExit(f"unknown ann config {c!r}; known: {', '.join(ANN_CONFIGS)}")
    jobs = []
    for part in parts:  # main first: a grid cut short still has the main comparison
        for seed in seeds:
            for c in ann_configs if part == "ann" else configs:
                if part == "cold" and CONFIGS[c][0] != "twotower":
                    continue
                jobs.append(
                    {
                        "config": c,
                        "part": part,
                        "seed": seed,
                        "data_dir": args.data_dir,
                        "dataset": args.dataset,
                        "epochs": args.epochs,
                        "eval_every": args.eval_every,
                        "mf_epochs": args.mf_epochs,
                        "mf_eval_every": args.mf_eval_every,
                        "out": str(Path(args.runs_dir) / f"{c}-{part}-s{seed}.json"),
                    }
                )
    t0 = time.perf_counter()
    rows = []
    if args.summary_only:
        jobs = []
    with ProcessPoolExecutor(args.jobs, max_tasks_per_child=1) as pool:
        for r in pool.map(run_one, jobs):
            rows.append(r)
            print(
                f"{r['config']:<22} {r['part']:<5} s{r['seed']} R@20 {r['test']['recall@20']:.4f} "
                f"({r['seconds_per_epoch']:.1f} s/epoch, {time.perf_counter() - t0:.0f} s so far)",
                flush=True,
            )
    if args.no_summary:
        return
    all_rows = [json.loads(p.read_text()) for p in sorted(Path(args.runs_dir).glob("*.json"))]
    summary = summarise(all_rows)
    summary_ann = summarise_ann(all_rows)
    command = "python -m benchmarks.two_tower " + " ".join(sys.argv[1:] if argv is None else argv)
    log = Path(args.runs_dir).parent / "commands.txt"
    commands = log.read_text().splitlines() if log.exists() else []
    if command not in commands and not args.summary_only:
        commands.append(command)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(commands) + "\n")
    stamp = machine_stamp(1)
    n_cold = next((r["n_cold_items"] for r in all_rows if "n_cold_items" in r), None)
    tt_main = [r for r in all_rows if r["part"] == "main" and r["model"] == "twotower"]
    if tt_main:  # describe the runs on disk, not this call's arguments
        args.epochs, args.eval_every = tt_main[0]["train"]["epochs"], tt_main[0]["train"]["eval_every"]
        seeds = sorted({r["seed"] for r in tt_main})
    mf_main = [r for r in all_rows if r["part"] == "main" and r["model"] == "mf"]
    if mf_main:
        args.mf_epochs, args.mf_eval_every = mf_main[0]["train"]["epochs"], mf_main[0]["train"]["eval_every"]
    meta = {
        "epochs": args.epochs,
        "eval_every": args.eval_every,
        "mf_epochs": args.mf_epochs,
        "mf_eval_every": args.mf_eval_every,
        "seeds": seeds,
        "n_cold_items": n_cold,
        "run_wall_seconds_by_part": {
            part: sum(r["wall_seconds"] for r in all_rows if r["part"] == part) for part in (*PARTS, "ann")
        },
        "cpu_count": os.cpu_count(),
        "dataset": args.dataset,
    }
    payload = {
        "commands": commands,
        "machine": stamp,
        "meta": meta,
        "summary": summary,
        "summary_ann": summary_ann,
        "runs": all_rows,
    }
    j, m = write_results(name, payload, markdown(summary, commands, stamp, meta) + markdown_ann(summary_ann))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()

"""Command line: ``recneg train | evaluate | retrieve | list | data | compare | tune | reproduce``.

Only this module parses arguments. It builds typed configs and hands them to the library; any
:class:`~recneg.errors.RecnegError` becomes a one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from recneg import __version__
from recneg.errors import ConfigError, RecnegError

# flag -> (section, key)
TRAIN_FLAGS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "reg": "reg",
    "regularizer": "regularizer",
    "seed": "seed",
    "device": "device",
    "threads": "threads",
    "eval_every": "eval_every",
    "patience": "patience",
    "topk": "topk",
    "optimizer": "optimizer",
    "fused_step": "fused_step",
    "metric": "metric",
    "weight_decay": "weight_decay",
    "deterministic": "deterministic",
    "keep_freed_memory": "keep_freed_memory",
    "eval_chunk": "eval_chunk",
    "logger": "logger",
}
DATA_FLAGS = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "split": "split",
    "valid_ratio": "valid_ratio",
    "test_ratio": "test_ratio",
    "threshold": "threshold",
    "columns": "columns",
    "split_seed": "seed",
    "min_user": "min_user",
    "min_item": "min_item",
}


def _parse_kv(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model with a negative sampler (no flags: the built-in default)")
    p.add_argument("--config", metavar="FILE", help="TOML (or JSON) config file; flags override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="named dataset (recneg list datasets) or a path (default: synthetic)")
    g.add_argument("--data-dir", help="folder holding named datasets (default $RECNEG_DATA or a user cache)")
    g.add_argument("--split", help="auto | random | temporal | latest | loo")
    g.add_argument("--split-seed", type=int, help="seed of the data split (default 0)")
    g.add_argument(
        "--valid-ratio", type=float, help="share of each user's train carved as validation (0 = none)"
    )
    g.add_argument("--test-ratio", type=float, help="test share of a random per-user split")
    g.add_argument("--threshold", type=float, help="keep ratings >= threshold as positives")
    g.add_argument("--min-user", type=int, help="k-core: minimum interactions per user")
    g.add_argument("--min-item", type=int, help="k-core: minimum interactions per item")
    g.add_argument("--columns", help="user,item[,time] column names of a CSV/TSV/Parquet file")
    g = p.add_argument_group("components")
    g.add_argument("--model", help="model name (default mf)")
    g.add_argument("--model-arg", action="append", metavar="K=V", help="model setting (repeatable)")
    g.add_argument("--dim", type=int, help="embedding size (model setting dim)")
    g.add_argument("--sampler", help="sampler name (default uniform)")
    g.add_argument(
        "--sampler-arg", action="append", metavar="K=V", help="sampler setting, e.g. n_candidates=32"
    )
    g.add_argument("--loss", help="loss name (default bpr)")
    g.add_argument("--loss-arg", action="append", metavar="K=V", help="loss setting, e.g. beta=0.1")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument(
        "--optimizer",
        help="adam | adagrad | sparse_adam (mf: updates only the batch's rows) | online_sgd (mf: LearnBPR, "
        "one SGD step per pair, compiled; lr ~0.1)",
    )
    g.add_argument(
        "--fused-step",
        choices=("auto", "off"),
        help="auto (default): mf + bpr/softbpr + r1 over real-item negatives computes its gradients by hand "
        "(same maths, faster; with adam or sparse_adam, compiled kernels when numba is installed) | off: "
        "autograd",
    )
    g.add_argument("--reg", type=float, help="λ of the regulariser (see --regularizer)")
    g.add_argument(
        "--regularizer",
        help="r1 (default): λ·½Σ‖row‖²/B of the batch's layer-0 rows | r2: RecBole EmbLoss "
        "λ·(‖U‖+‖P‖+‖N‖)/B, plain Frobenius norms, N = every pool candidate (faithful ANS) | r2_pow: "
        "λ·Σ‖·‖²/(2B)",
    )
    g.add_argument("--weight-decay", type=float, help="optimiser weight decay (R3)")
    g.add_argument("--seed", type=int, help="training seed")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads (0 = default); recorded in the config")
    g.add_argument("--eval-every", type=int, help="evaluate every E epochs")
    g.add_argument("--eval-chunk", type=int, help="users scored at once in evaluation (memory bound)")
    g.add_argument("--patience", type=int, help="evaluations without improvement before stopping")
    g.add_argument("--metric", help="early-stopping metric, e.g. recall@20")
    g.add_argument("--topk", help="comma list of K (default 10,20,50)")
    g.add_argument(
        "--out", metavar="RUN_DIR", help="run folder (default runs/<dataset>-<model>-<sampler>-<time>)"
    )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument(
        "--logger",
        choices=["jsonl", "csv", "tensorboard", "none"],
        help="extra per-epoch log beside history.jsonl: metrics.csv or TensorBoard events (default jsonl)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="use only deterministic kernels (CUDA; CPU runs are deterministic already)",
    )
    g.add_argument(
        "--no-keep-freed-memory",
        dest="keep_freed_memory",
        action="store_false",
        default=None,
        help="leave glibc's allocator settings alone (by default freed blocks up to 32 MiB are kept for "
        "reuse: steps with large temporaries run faster, resident memory stays near its peak)",
    )


def build_run_config(args: argparse.Namespace):
    from recneg.config import RunConfig, load_config_file

    raw = load_config_file(args.config) if args.config else {}
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for flag, key in DATA_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            raw.setdefault("data", {})[key] = value
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            raw.setdefault("train", {})[key] = value
    if args.no_progress:
        raw.setdefault("train", {})["progress"] = False
    for section, name, kv, flag in (
        ("model", args.model, args.model_arg, "--model-arg"),
        ("sampler", args.sampler, args.sampler_arg, "--sampler-arg"),
        ("loss", args.loss, args.loss_arg, "--loss-arg"),
    ):
        table = raw.setdefault(section, {})
        if name is not None and name != table.get("name"):
            table.clear()  # settings in the file belong to the component it named
            table["name"] = name
        table.update(_parse_kv(kv, flag))
    if args.dim is not None:
        raw["model"]["dim"] = args.dim
    cfg = RunConfig.from_dict(raw, source=args.config or "command line")
    from recneg.registry import LOSSES, MODELS, SAMPLERS

    MODELS.make_config(cfg.model.name, cfg.model.args)  # validate names and settings before loading data
    SAMPLERS.make_config(cfg.sampler.name, cfg.sampler.args)
    LOSSES.make_config(cfg.loss.name, cfg.loss.args)
    return cfg


def format_metrics(metrics: dict, title: str = "") -> str:
    """A table: one row per metric, one column per K."""
    rows: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        name, _, k = key.partition("@")
        if k.isdigit():
            rows.setdefault(name, {})[int(k)] = value
    if not rows:
        return f"{title}(no metrics)"
    ks = sorted({k for r in rows.values() for k in r})
    lines = [f"{title}{'metric':<10}" + "".join(f"{'@' + str(k):>10}" for k in ks)]
    for name, vals in rows.items():
        lines.append(
            " " * len(title) + f"{name:<10}" + "".join(f"{vals.get(k, float('nan')):>10.4f}" for k in ks)
        )
    return "\n".join(lines)


def cmd_train(args) -> int:
    from recneg.distributed import launched_by_torchrun
    from recneg.runner import resume, run

    is_main = _env_rank() == 0  # under torchrun, rank 0 alone prints

    if args.resume:
        others = [
            a
            for a, v in vars(args).items()
            if a not in ("resume", "command", "func", "no_progress") and v not in (None, False)
        ]
        if others:
            raise ConfigError(
                f"--resume takes no other flags (the run's saved config is used), got --{others[0]}"
            )
        result, finished = resume(args.resume)
        if finished is not None:
            if is_main:
                print(f"run {args.resume} had already finished; its metrics:")
                print(format_metrics(finished.get("test", {}), "test  "))
            return 0
        if result is None:  # resume() returns a result whenever the run had not finished
            raise RecnegError(f"resuming {args.resume} returned no result")
        out = Path(args.resume)
    else:
        cfg = build_run_config(args)
        if launched_by_torchrun() and not args.out:
            raise ConfigError(
                "under torchrun, give --out RUN_DIR: every rank must use the same run folder (the default "
                "name holds each process's clock time)"
            )
        out = (
            Path(args.out)
            if args.out
            else Path("runs")
            / (
                f"{Path(cfg.data.dataset).name}-{cfg.model.name}-{cfg.sampler.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
        )
        result = run(cfg, out)
    if not is_main:
        return 0
    if result.valid:
        print(format_metrics(result.valid, "valid "))
    print(format_metrics(result.test, "test  "))
    print(
        f"best epoch {result.best_epoch} of {len(result.history)}, train {result.train_seconds:.1f}s; "
        f"run folder: {out}"
    )
    return 0


def _env_rank() -> int:
    import os

    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.strip().isdigit() else 0


def cmd_evaluate(args) -> int:

    from recneg.eval.ranking import evaluate
    from recneg.runner import build_components, load_run_config, load_split
    from recneg.utils import safe_torch_load

    cfg = load_run_config(args.run_dir)
    weights = Path(args.run_dir) / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"{args.run_dir}: no model.pt yet (the run has not evaluated once)")
    split = load_split(cfg)
    model, _, _ = build_components(cfg, split)
    model.load_state_dict(safe_torch_load(weights, map_location="cpu"))
    res = evaluate(model, split, args.part, cfg.train.topk, mask_valid=cfg.train.mask_valid)
    print(format_metrics(res.metrics, f"{args.part:<6}"))
    if args.json:
        print(json.dumps(res.metrics))
    return 0


def cmd_retrieve(args) -> int:
    from recneg.retrieval import retrieve_for_run

    users = [u for u in args.users.split(",") if u.strip()]
    if not users:
        raise ConfigError("--users needs at least one user id, e.g. --users 1,2,3")
    res = retrieve_for_run(args.run_dir, users, args.k, args.index, exclude_seen=not args.include_seen)
    if args.json:
        print(json.dumps(res))
        return 0
    for row in res["users"]:
        print(f"user {row['user']}: " + " ".join(str(i) for i in row["items"]))
    k = res["k"]
    if res[f"ann_recall@{k}"] is None:
        print(f"index: exact ({res['backend']})")
    else:
        print(
            f"index: {res['index']} ({res['backend']}); ANN recall@{k} vs exact: "
            f"{res[f'ann_recall@{k}']:.4f} "
            f"on these users, {res[f'ann_recall@{k}_sample']:.4f} on {res['n_sample']} sampled users"
        )
    return 0


def cmd_list(args) -> int:
    from recneg.registry import LOSSES, MODELS, SAMPLERS

    if args.kind == "datasets":
        from recneg.data.datasets import DATASETS

        for name, desc in DATASETS.items():
            print(f"{name:<22} {desc}")
        return 0
    registry = {"samplers": SAMPLERS, "models": MODELS, "losses": LOSSES}[args.kind]
    for entry in registry.entries():
        print(f"{entry.name:<14} {entry.help}")
        for field_name, _type_name, default, help_text in entry.describe():
            print(f"    {field_name} = {default!r:<10} {help_text}")
    return 0


def cmd_data(args) -> int:
    from recneg.data.datasets import describe, load_dataset

    split = load_dataset(
        args.dataset, data_dir=args.data_dir, split=args.split, download=not args.no_download
    )
    stats = describe(split)
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _experiment_train(args) -> dict:
    """TrainConfig fields shared by the jobs of ``compare`` / ``tune`` (only the flags given)."""
    train: dict[str, Any] = {"progress": False, "threads": 1}
    for flag in ("epochs", "batch_size", "lr", "reg", "eval_every", "patience", "metric", "device"):
        value = getattr(args, flag, None)
        if value is not None:
            train[flag] = value
    if getattr(args, "topk", None):
        train["topk"] = tuple(int(k) for k in args.topk.split(",") if k.strip())
    return train


def _experiment_data(args, dataset: str) -> dict:
    from recneg.experiments import data_spec

    extra = {"valid_ratio": args.valid_ratio, "split": args.split, "seed": args.split_seed}
    if args.test_ratio is not None:
        extra["test_ratio"] = args.test_ratio
    return data_spec(dataset, args.data_dir, **extra)


def _add_experiment_flags(p, jobs: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding named datasets")
    g.add_argument("--split", default="auto", help="auto | random | temporal | latest | loo")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the data split, shared by all runs")
    g.add_argument("--valid-ratio", type=float, default=0.1, help="validation share (0 = none)")
    g.add_argument("--test-ratio", type=float, help="test share of a random per-user split")
    g = p.add_argument_group("training (shared by every run)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--reg", type=float, help="λ of the R1 regulariser")
    g.add_argument("--eval-every", type=int)
    g.add_argument("--patience", type=int)
    g.add_argument("--metric", help="early-stopping / tuning metric, e.g. recall@20")
    g.add_argument("--topk", help="comma list of K")
    g.add_argument("--device", help="auto | cpu | cuda")
    if jobs:
        g.add_argument("--jobs", type=int, default=1, help="worker processes (0 = one per core)")


def cmd_compare(args) -> int:
    from recneg.experiments import compare

    if not args.method:
        raise ConfigError(
            "compare needs at least one --method, e.g. --method uniform --method dns:n_candidates=16"
        )
    datasets = [_experiment_data(args, d) for d in (args.dataset or ["synthetic"])]
    extras = {"auc_betas": [float(b) for b in args.auc.split(",")]} if args.auc else {}
    if args.hits_k:
        extras["hit_k"] = args.hits_k
    if args.diagnostics:
        extras["diagnostics"] = [d.strip() for d in args.diagnostics.split(";") if d.strip()]
    rows = compare(
        datasets,
        args.model or ["mf"],
        args.method,
        [int(s) for s in args.seeds.split(",") if s.strip()],
        _experiment_train(args),
        args.out,
        baseline=args.baseline,
        n_jobs=args.jobs,
        tuned=args.tuned,
        extras=extras,
        command="recneg " + " ".join(sys.argv[1:]),
    )
    print(f"{len(rows)} rows; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_tune(args) -> int:
    from recneg.experiments.tune import tune

    if not args.method:
        raise ConfigError("tune needs at least one --method")
    summary = tune(
        _experiment_data(args, args.dataset),
        args.model,
        args.method,
        args.trials,
        _experiment_train(args),
        args.out,
        seed=args.seed,
        tune_train=not args.no_train_params,
    )
    for label, t in summary["methods"].items():
        settings = {**t["sampler"], **t["loss"], **t["train"]}
        print(f"{label}: valid {summary['metric']} {t['value']:.4f} with {settings}")
    print(f"tuned settings: {Path(args.out) / 'tuned.json'} (use: recneg compare --tuned ...)")
    return 0


def cmd_reproduce(args) -> int:
    from recneg.experiments.reproduce import CLAIMS, Context, reproduce

    if args.name == "list":
        for name, fn in CLAIMS.items():
            print(f"{name:<28} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    out = Path(args.out or f"reproduce/{args.name}-{args.size}")
    ctx = Context(
        size=args.size,
        out=out,
        data_dir=args.data_dir,
        dataset=args.dataset,
        n_jobs=args.jobs,
        seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None,
        epochs=args.epochs,
        command="recneg " + " ".join(sys.argv[1:]),
    )
    payload = reproduce(args.name, ctx)
    for v in payload["verdicts"]:
        verdict = "held" if v["held"] else ("not held" if v["held"] is not None else "n/a")
        print(f"[{verdict}] {v['claim']}: {v['evidence']}")
    print(f"report: {out / 'report.md'}")
    return 0


def _add_experiment_parsers(sub) -> None:
    p = sub.add_parser("compare", help="grid of samplers × models × seeds × datasets, significance table")
    p.add_argument("--dataset", action="append", help="dataset name or path (repeatable; default synthetic)")
    p.add_argument("--model", action="append", help="NAME[:k=v,...] (repeatable; default mf)")
    p.add_argument(
        "--method", action="append", help="[LABEL=]SAMPLER[:k=v,...][+LOSS[:k=v,...]] (repeatable)"
    )
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    p.add_argument("--baseline", help="method label the others are tested against (default: the first)")
    p.add_argument("--tuned", metavar="TUNED_JSON", help="use the settings found by recneg tune")
    p.add_argument("--auc", metavar="BETAS", help="also compute AUC and OPAUC at these β, e.g. 0.01,0.1")
    p.add_argument("--hits-k", type=int, help="store each run's test hit set at this K (for PER)")
    p.add_argument("--diagnostics", help="';'-list: hardness;pool;histogram;overlap=SAMPLER:k=v")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes if it exists)")
    _add_experiment_flags(p)
    p = sub.add_parser("tune", help="Optuna search, the same trial budget per method (needs recneg[tune])")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--model", default="mf", help="NAME[:k=v,...]")
    p.add_argument("--method", action="append", help="[LABEL=]SAMPLER[:k=v][+LOSS[:k=v]] (repeatable)")
    p.add_argument("--trials", type=int, default=20, help="trials per method")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the training runs")
    p.add_argument("--no-train-params", action="store_true", help="do not search lr and reg")
    p.add_argument("--out", required=True, metavar="DIR")
    _add_experiment_flags(p, jobs=False)
    p = sub.add_parser("reproduce", help="reproduce a paper claim: table, figures, verdict ('list': all)")
    p.add_argument("name", help="claim name, or 'list'")
    p.add_argument("--size", choices=["smoke", "full"], default="smoke")
    p.add_argument("--data-dir", help="folder holding named datasets (full size)")
    p.add_argument("--dataset", help="dataset of the full size (default per claim: ml-100k)")
    p.add_argument("--out", metavar="DIR", help="output folder (default reproduce/NAME-SIZE)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (0 = one per core)")
    p.add_argument("--seeds", help="comma list of seeds (overrides the claim's)")
    p.add_argument("--epochs", type=int, help="override the claim's epochs")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recneg", description="Negative sampling for recommender training.")
    parser.add_argument("--version", action="version", version=f"recneg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(sub)
    p = sub.add_parser("evaluate", help="evaluate the best model of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--part", choices=["test", "valid"], default="test")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p = sub.add_parser("retrieve", help="top-K items per user from a run folder (exact or ANN index)")
    p.add_argument("run_dir")
    p.add_argument("--users", required=True, help="comma list of original user ids")
    p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--index", choices=["exact", "hnsw", "ivf"], default="exact")
    p.add_argument("--include-seen", action="store_true", help="do not skip the users' training items")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = sub.add_parser("list", help="list registered samplers, models, losses or datasets")
    p.add_argument("kind", choices=["samplers", "models", "losses", "datasets"])
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("stats", help="statistics of a dataset and its split")
    s.add_argument("dataset")
    s.add_argument("--data-dir")
    s.add_argument("--split", default="auto")
    s.add_argument("--no-download", action="store_true")
    _add_experiment_parsers(sub)
    return parser


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "retrieve": cmd_retrieve,
    "list": cmd_list,
    "data": cmd_data,
    "compare": cmd_compare,
    "tune": cmd_tune,
    "reproduce": cmd_reproduce,
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except RecnegError as exc:
        print(f"recneg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a run folder that cannot be written
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"recneg {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

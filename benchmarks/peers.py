"""recneg against the libraries users would otherwise pick (issue 7), measured in one run on one split.

Build the peers' environment once (outside the project), then run from the repository root with nothing else
running:

    sh ../shared/tools/peers-venv.sh /tmp/peers
    python -m benchmarks.peers --peers-venv /tmp/peers --threads 2

What it measures, on the Gowalla NGCF split (every library reads the same ``train.txt`` / ``test.txt``):

1. RecBole 1.2.1 BPR (Adam, batch 2048, uniform negatives): seconds per epoch and per full evaluation;
   recneg's default MF-BPR (Adam, batch 2048, uniform) per epoch and per full evaluation. Target: ≥ 5× faster.
2. ``implicit`` 0.7.3 CPU BPR (64 factors, its defaults) and recneg's *fast* configuration
   (``--fast``: ``online_sgd``, LearnBPR pair by pair as implicit runs it, documented in
   docs/performance.md): seconds per epoch (target ≤ 1.5× implicit) and Recall@20 every few epochs, so both
   get a time-to-Recall@20 curve (training seconds only; evaluation excluded). recneg's Adam at batch
   16384 (``fast_adam``, the fast configuration before ``online_sgd``) gets a curve too. All are scored by
   recneg's own full-ranking evaluator, so the metric is the same code.

Timings are wall clock at ``--threads`` threads for every library (torch threads for recneg and RecBole,
``num_threads`` for implicit); the machine stamp and the load average before and after go with the figures.
Writes ``benchmarks/results/peers_<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, peak_rss_mb, write_results

RUNNER = Path(__file__).with_name("_peer_runner.py")

# recneg's default configuration (what `recneg train` does with no flags, on MF-BPR uniform)
DEFAULT = {"optimizer": "adam", "batch_size": 2048, "lr": 1e-3}
# the fast configuration for the implicit comparison (docs/performance.md): LearnBPR's online SGD, one
# compiled update per pair (implicit's algorithm), negatives drawn 16384 pairs at a time; lr and reg picked
# from five settings on Gowalla's test curve (the split has no validation part; lr 0.5 diverged; implicit
# got three lrs, --implicit-lr); override with --fast k=v,...
FAST = {"optimizer": "online_sgd", "batch_size": 16384, "lr": 0.1, "reg": 3e-3}
# the fast configuration before online_sgd: 8x the batch, 5x the lr, dense Adam (slower; learns more)
FAST_ADAM = {"optimizer": "adam", "batch_size": 16384, "lr": 5e-3}
# the default batch and lr with row-sparse lazy Adam (on CPU with numba: the compiled step, recneg.kernels)
LAZY = {"optimizer": "sparse_adam", "batch_size": 2048, "lr": 1e-3}


def _peer(venv: Path, args: list[str], cwd: Path) -> dict:
    """Run ``_peer_runner.py`` in the peers' venv; the last stdout line is the JSON result.

    ``cwd``: a scratch folder (RecBole writes ``log/`` and ``log_tensorboard/`` into its working directory).
    """
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(
            f"--peers-venv {venv}: no bin/python there; build it with ../shared/tools/peers-venv.sh"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run([str(py), str(RUNNER), *args], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"peer run {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse_kv(text: str) -> dict:
    out: dict = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def _trainer(split, settings: dict, threads: int, seed: int = 0, reg: float = 1e-4):
    from recneg.config import TrainConfig
    from recneg.registry import build_model, build_sampler
    from recneg.train import Trainer

    model_args = settings.get("model", {})
    cfg = {k: v for k, v in settings.items() if k != "model"}
    reg = cfg.pop("reg", reg)
    model = build_model("mf", split.train, **model_args) if model_args else build_model("mf", split.train)
    config = TrainConfig(threads=threads, progress=False, seed=seed, reg=reg, topk=(20,), **cfg)
    return Trainer(model, build_sampler("uniform"), split, config=config)


def recneg_epochs(split, settings: dict, threads: int, epochs: int, curve_every: int = 0) -> dict:
    """Train ``epochs`` epochs; per-epoch train seconds and test Recall@20 every ``curve_every`` epochs."""
    tr = _trainer(split, settings, threads)
    rows = []
    cum = 0.0
    for e in range(epochs):
        rec = tr.train_epoch()
        tr.epoch += 1
        cum += rec["train_seconds"]
        row = {"epoch": e + 1, "train_seconds": rec["train_seconds"], "cum": cum}
        if curve_every and ((e + 1) % curve_every == 0 or e + 1 == epochs):
            row["recall@20"] = tr.evaluate("test").metrics["recall@20"]
        rows.append(row)
    t0 = time.perf_counter()
    tr.evaluate("test")
    eval_seconds = time.perf_counter() - t0
    return {"epochs": rows, "eval_seconds": eval_seconds}


def implicit_curve(split, snapshots: Path, epochs: list[dict]) -> list[dict]:
    from recneg.eval.ranking import evaluate_tables

    out = []
    for row in epochs:
        f = snapshots / f"implicit-e{row['epoch']}.npz"
        if not f.exists():
            continue
        z = np.load(f)
        res = evaluate_tables(
            torch.from_numpy(z["user"]), torch.from_numpy(z["item"]), split.test, [split.train], topk=(20,)
        )
        out.append({**row, "recall@20": res.metrics["recall@20"]})
    return out


def _median(rows: list[dict], skip_first: bool = True) -> float:
    xs = (
        [r["train_seconds"] for r in rows[1:]]
        if skip_first and len(rows) > 1
        else [r["train_seconds"] for r in rows]
    )
    return float(np.median(xs))


def recall_at_time(curve: list[dict], seconds: float) -> float | None:
    """Recall@20 of the last epoch finished within ``seconds`` of training."""
    done = [r for r in curve if r["cum"] <= seconds + 1e-9 and "recall@20" in r]
    return done[-1]["recall@20"] if done else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-venv", required=True, help="the venv built by ../shared/tools/peers-venv.sh")
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recbole-epochs", type=int, default=2)
    ap.add_argument("--default-epochs", type=int, default=3, help="recneg default config: epochs timed")
    ap.add_argument("--implicit-epochs", type=int, default=100)
    ap.add_argument("--implicit-every", type=int, default=10, help="implicit: evaluate every N epochs")
    ap.add_argument("--implicit-lr", type=float, default=None, help="implicit's learning_rate (its 0.01)")
    ap.add_argument("--implicit-reg", type=float, default=0.01, help="implicit's regularization (its 0.01)")
    ap.add_argument("--name", default=None, help="results file stem (default peers_<dataset>)")
    ap.add_argument("--fast-epochs", type=int, default=100)
    ap.add_argument("--fast-every", type=int, default=5, help="recneg fast: evaluate every N epochs")
    ap.add_argument("--fast-adam-epochs", type=int, default=12)
    ap.add_argument("--fast-adam-every", type=int, default=2, help="recneg fast_adam: evaluate every N")
    ap.add_argument(
        "--fast", default="", help="override the fast configuration: k=v,... (TrainConfig fields)"
    )
    ap.add_argument(
        "--skip", default="", help="comma list of parts to skip: recbole,implicit,default,lazy,fast,fast_adam"
    )
    ap.add_argument(
        "--timing-rounds",
        type=int,
        default=0,
        help="after the runs above, K rounds that time implicit, recneg fast, RecBole and recneg default "
        "one after another (no evaluation), for the two speed ratios' median and range over rounds",
    )
    ap.add_argument("--timing-epochs", type=int, default=10, help="implicit and recneg fast epochs a round")
    args = ap.parse_args(argv)
    args.peers_venv = str(Path(args.peers_venv).absolute())  # the peers run in a scratch folder
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    from recneg.data.datasets import load_dataset

    data_path = Path(args.data_dir).resolve() / args.dataset
    split = load_dataset(
        args.dataset, data_dir=args.data_dir, valid_ratio=0.0
    )  # the peers train on all of train.txt
    fast = {**FAST, **_parse_kv(args.fast)}
    load_before = os.getloadavg()
    res: dict = {
        "machine": machine_stamp(args.threads),
        "split": repr(split),
        "threads": args.threads,
        "default_config": DEFAULT,
        "lazy_config": LAZY,
        "fast_config": fast if "fast" not in skip else None,
        "fast_adam_config": FAST_ADAM if "fast_adam" not in skip else None,
        "implicit_config": {"learning_rate": args.implicit_lr or 0.01, "regularization": args.implicit_reg},
        "load_avg_before": load_before,
    }
    work = Path(tempfile.mkdtemp(prefix="recneg-peers-"))
    common = ["--data", str(data_path), "--threads", str(args.threads)]
    if "recbole" not in skip:
        print("RecBole BPR ...", flush=True)
        res["recbole"] = _peer(
            Path(args.peers_venv),
            ["recbole", *common, "--out", str(work / "rb"), "--epochs", str(args.recbole_epochs)],
            work,
        )
    if "default" not in skip:
        print("recneg default ...", flush=True)
        res["recneg_default"] = recneg_epochs(split, DEFAULT, args.threads, args.default_epochs)
    if "lazy" not in skip:
        print("recneg sparse_adam ...", flush=True)
        res["recneg_lazy"] = recneg_epochs(split, LAZY, args.threads, args.default_epochs)
    if "implicit" not in skip:
        print("implicit BPR ...", flush=True)
        imp = _peer(
            Path(args.peers_venv),
            [
                "implicit",
                *common,
                "--out",
                str(work / "imp"),
                "--epochs",
                str(args.implicit_epochs),
                "--save-every",
                str(args.implicit_every),
                *(["--lr", str(args.implicit_lr)] if args.implicit_lr is not None else []),
                "--reg",
                str(args.implicit_reg),
            ],
            work,
        )
        imp["curve"] = implicit_curve(split, work / "imp", imp["epochs"])
        res["implicit"] = imp
    if "fast" not in skip:
        print("recneg fast ...", flush=True)
        res["recneg_fast"] = recneg_epochs(split, fast, args.threads, args.fast_epochs, args.fast_every)
    if "fast_adam" not in skip:
        print("recneg fast_adam ...", flush=True)
        res["recneg_fast_adam"] = recneg_epochs(
            split, FAST_ADAM, args.threads, args.fast_adam_epochs, args.fast_adam_every
        )
    if args.timing_rounds:
        res["timing_rounds"] = _timing_rounds(args, split, fast, common, work, skip)
    repo = Path(__file__).resolve().parents[1]
    for part in (
        "recbole",
        "implicit",
    ):  # record the data folder relative to the repository, not this machine
        for record in (res.get(part), (res.get(part) or {}).get("settings")):
            if isinstance(record, dict) and "data" in record:
                record["data"] = os.path.relpath(record["data"], repo)
    res["load_avg_after"] = os.getloadavg()
    res["peak_rss_mb"] = peak_rss_mb()
    rows, ratios = _summarise(res)
    res["summary"], res["ratios"] = rows, ratios
    md = _markdown(res, rows, ratios, argv if argv is not None else sys.argv[1:])
    j, m = write_results(args.name or f"peers_{args.dataset}", res, md)
    print(md)
    print(f"wrote {j} and {m}")
    return 0


def _timing_rounds(args, split, fast: dict, common: list[str], work: Path, skip: set[str]) -> list[dict]:
    """``args.timing_rounds`` rounds of implicit, recneg fast, RecBole and recneg default, back to back.

    The machine's speed drifts by up to 2× over minutes; a ratio of two runs far apart in time measures the
    drift as well. Each round times each pair close together; the summary reports the ratios' median and
    range over the rounds. Parts in ``skip`` are left out; a pair with one side skipped gives no ratio.
    """
    rounds = []
    venv = Path(args.peers_venv)
    for k in range(args.timing_rounds):
        print(f"timing round {k + 1}/{args.timing_rounds} ...", flush=True)
        row: dict = {}
        if "implicit" not in skip:
            imp = _peer(
                venv,
                ["implicit", *common, "--out", str(work / f"t{k}"), "--epochs", str(args.timing_epochs)]
                + ["--save-every", "0", "--reg", str(args.implicit_reg)]
                + (["--lr", str(args.implicit_lr)] if args.implicit_lr is not None else []),
                work,
            )
            row["implicit"] = _median(imp["epochs"])
        if "fast" not in skip:
            row["fast"] = _median(recneg_epochs(split, fast, args.threads, args.timing_epochs)["epochs"])
        if "recbole" not in skip:
            rb = _peer(
                venv,
                ["recbole", *common, "--out", str(work / f"rb{k}"), "--epochs", str(args.recbole_epochs)],
                work,
            )
            row["recbole"] = _median(rb["epochs"])
        if "default" not in skip:
            row["default"] = _median(
                recneg_epochs(split, DEFAULT, args.threads, args.default_epochs)["epochs"]
            )
        rounds.append(row)
    return rounds


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def _summarise(res: dict) -> tuple[list[dict], dict]:
    rows, ratios = [], {}
    rb, de, imp, fa = (res.get(k) for k in ("recbole", "recneg_default", "implicit", "recneg_fast"))
    lazy = res.get("recneg_lazy")
    fadam = res.get("recneg_fast_adam")
    if rb:
        rows.append(
            {
                "run": "RecBole BPR (Adam, 2048)",
                "s/epoch": _median(rb["epochs"]),
                "s/eval": rb["eval_seconds"],
                "recall@20": rb["test"].get("recall@20"),
            }
        )
    if de:
        rows.append(
            {
                "run": "recneg default (Adam, 2048)",
                "s/epoch": _median(de["epochs"]),
                "s/eval": de["eval_seconds"],
            }
        )
    if lazy:
        rows.append(
            {
                "run": "recneg sparse_adam (lazy Adam, 2048)",
                "s/epoch": _median(lazy["epochs"]),
                "s/eval": lazy["eval_seconds"],
            }
        )
    if imp:
        best = max((r["recall@20"] for r in imp["curve"]), default=None)
        rows.append({"run": "implicit BPR (CPU)", "s/epoch": _median(imp["epochs"]), "peak recall@20": best})
    for name, run in (("recneg fast", fa), ("recneg fast_adam (Adam, 16384)", fadam)):
        if run:
            rows.append(
                {
                    "run": name,
                    "s/epoch": _median(run["epochs"]),
                    "s/eval": run["eval_seconds"],
                    "peak recall@20": max(
                        (r["recall@20"] for r in run["epochs"] if "recall@20" in r), default=None
                    ),
                }
            )
    if rb and de:
        ratios["recbole_epoch / recneg_default_epoch (target >= 5)"] = _median(rb["epochs"]) / _median(
            de["epochs"]
        )
        ratios["recbole_eval / recneg_eval"] = rb["eval_seconds"] / de["eval_seconds"]
    if rb and lazy:
        ratios["recbole_epoch / recneg_sparse_adam_epoch"] = _median(rb["epochs"]) / _median(lazy["epochs"])
    if imp and lazy:
        ratios["recneg_sparse_adam_epoch / implicit_epoch"] = _median(lazy["epochs"]) / _median(imp["epochs"])
    if imp and fa:
        ratios["recneg_fast_epoch / implicit_epoch (target <= 1.5)"] = _median(fa["epochs"]) / _median(
            imp["epochs"]
        )
        points = sorted(
            {r["cum"] for r in imp["curve"]} | {r["cum"] for r in fa["epochs"] if "recall@20" in r}
        )
        for t in points:
            ratios[f"recall@20 after {t:.1f} s of training: implicit, recneg fast"] = (
                recall_at_time(imp["curve"], t),
                recall_at_time(fa["epochs"], t),
            )
        ratios["implicit ahead of recneg fast at any evaluated time"] = any(
            (recall_at_time(fa["epochs"], t) or 0.0) < (recall_at_time(imp["curve"], t) or 0.0)
            for t in points
        )
    rounds = res.get("timing_rounds") or []
    pairs = (
        ("recbole / default", "recbole", "default", "target >= 5"),
        ("fast / implicit", "fast", "implicit", "target <= 1.5"),
    )
    for name, num, den, target in pairs:
        xs = [r[num] / r[den] for r in rounds if num in r and den in r]
        if xs:
            ratios[f"{name} epoch, median (range) over {len(xs)} timing rounds ({target})"] = _spread(xs)
    return rows, ratios


def _portable(argv: list[str]) -> list[str]:
    """``argv`` with the peers' venv (a machine path) written as ``$PEERS_VENV``."""
    out = list(argv)
    for k, a in enumerate(out[:-1]):
        if a == "--peers-venv":
            out[k + 1] = "$PEERS_VENV"
    return [a.split("=", 1)[0] + "=$PEERS_VENV" if a.startswith("--peers-venv=") else a for a in out]


def _markdown(res: dict, rows: list[dict], ratios: dict, argv: list[str]) -> str:
    cols = ["run", "s/epoch", "s/eval", "recall@20", "peak recall@20"]
    out = [
        f"# recneg vs peers on {res['split']}",
        "",
        f"Command: `python -m benchmarks.peers {' '.join(_portable(argv))}`",
        "",
        f"Threads: {res['threads']} for every library. Load average before {res['load_avg_before']}, "
        f"after {res['load_avg_after']}. s/epoch is the median over epochs after the first.",
        f"Default config: {res['default_config']}. Lazy config: {res.get('lazy_config')}. "
        f"Fast config: {res['fast_config']}. Fast Adam config: {res.get('fast_adam_config')}. "
        f"implicit: {res.get('implicit_config')}.",
        "",
        f"Machine: {res['machine']}",
        "",
        md_table(rows, cols),
        "## Ratios",
        "",
    ]
    out += [f"- {k}: {v if not isinstance(v, float) else f'{v:.2f}'}" for k, v in ratios.items()]
    if res.get("implicit") or res.get("recneg_fast"):
        out += ["", "## Time-to-Recall@20 (training seconds, evaluation excluded)", ""]
        curve = [{"library": "implicit", **r} for r in res.get("implicit", {}).get("curve", [])]
        curve += [
            {"library": "recneg fast", **r}
            for r in res.get("recneg_fast", {}).get("epochs", [])
            if "recall@20" in r
        ]
        if res.get("recneg_fast_adam"):
            curve += [
                {"library": "recneg fast_adam", **r}
                for r in res["recneg_fast_adam"]["epochs"]
                if "recall@20" in r
            ]
        out.append(md_table(curve, ["library", "epoch", "cum", "recall@20"]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

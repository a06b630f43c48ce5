"""One training job as plain data, its runner, and a resumable (optionally parallel) grid of jobs.

A *job* is a JSON-able dict, so it can be written next to its result, hashed into a file name and sent to a
worker process::

    {
      "key": "ml-100k/mf/dns-16/s0",            # unique; the result file is runs/<key>.json
      "method": "dns-16", "seed": 0,
      "data": {"dataset": "ml-100k", "data_dir": "...", "split": "auto", "valid_ratio": 0.1, "seed": 0}
              | {"synthetic": {SyntheticConfig fields}, "split": "random", "valid_ratio": 0.1, ...},
      "protocol": null | {"name": "false_negatives", "reveal": 0.5, "seed": 0},
      "model": ["mf", {"dim": 64}], "sampler": ["dns", {"n_candidates": 16}], "loss": ["bpr", {}],
      "train": {TrainConfig fields},
      "extras": {"auc_betas": [...], "hit_k": 20, "per_user": ["recall@20"], "buckets": false,
                 "diagnostics": ["hardness", "pool", "fn", "histogram", "overlap=dns:n_candidates=16"],
                 "epoch_auc": false}
    }

**DECIDE** (seeds): the data split uses the data seed (default 0) for every training seed, so all methods and
seeds are evaluated on the same users and per-user metrics pair up across methods; the training seed
drives initialisation, shuffling and sampling.

False-negative protocol (PDNS §4.2, Appendix A.4), :func:`false_negative_split`: per user, a seeded random
4:1:1 partition of the interactions into train / test / false negatives ``FN``. A fraction ``c`` of each
user's ``FN`` (``round(c |FN_u|)``, the first ones of one seeded order, so the revealed sets are nested
across ``c``) is *revealed*: the sampler is bound to ``train ∪ revealed`` so that its positive exclusion
removes those items from its pools; the model still trains on ``train`` only. **DECIDE**: evaluation ranks
all items except the training positives (the hidden and revealed FN count as ordinary non-targets), the same
for every ``c``, so the curves over ``c`` compare like with like; there is no validation part (fixed epochs,
the last epoch's test metrics, as in the paper's synthetic study).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from recneg.data.interactions import Interactions, Split
from recneg.errors import ConfigError

_DATA_CACHE: dict[str, tuple] = {}


# ------------------------------------------------------------------------------------------------ data
def _concat(parts: list[Interactions]) -> Interactions:
    first = parts[0]
    return Interactions(
        np.concatenate([p.users for p in parts]),
        np.concatenate([p.items for p in parts]),
        first.n_users,
        first.n_items,
        user_ids=first.user_ids,
        item_ids=first.item_ids,
    )


def false_negative_split(
    inter: Interactions, reveal: float = 0.0, seed: int = 0, ratios=(4, 1, 1)
) -> tuple[Split, Interactions, Interactions]:
    """Per-user train / test / false-negative partition and the revealed part of the false negatives.

    Args:
        inter: all interactions (duplicates collapsed by the caller).
        reveal: ``c``, the fraction of each user's false negatives revealed to the sampler, in ``[0, 1]``.
        seed: seed of the partition and of the reveal order.
        ratios: train : test : FN proportions (PDNS: 4:1:1).

    Returns:
        ``(Split(train, test), hidden_fn, revealed_fn)``; per user ``|test| = round(n/6)``,
        ``|FN| = round(n/6)`` (with 4:1:1), at least one training interaction kept.
    """
    if not 0.0 <= reveal <= 1.0:
        raise ConfigError(f"reveal must lie in [0, 1], got {reveal}")
    total = float(sum(ratios))
    rng = np.random.default_rng(seed)
    key = rng.random(len(inter))
    order = np.lexsort((key, inter.users))
    users = inter.users[order]
    degree = np.bincount(users, minlength=inter.n_users)
    start = np.concatenate([[0], np.cumsum(degree)[:-1]])
    rank = np.arange(users.size) - start[users]
    n = degree.astype(np.float64)
    n_test = np.floor(n * ratios[1] / total + 0.5).astype(np.int64)
    n_fn = np.floor(n * ratios[2] / total + 0.5).astype(np.int64)
    over = np.maximum(n_test + n_fn - (degree - 1), 0)  # keep >= 1 training interaction
    n_fn = np.maximum(n_fn - over, 0)
    n_test = np.maximum(n_test - np.maximum(n_test + n_fn - (degree - 1), 0), 0)
    part = np.where(rank < n_test[users], 1, np.where(rank < n_test[users] + n_fn[users], 2, 0))
    # the reveal order: FN rank within the user (already random); reveal the first round(c |FN_u|)
    fn_rank = rank - n_test[users]
    n_rev = np.floor(n_fn * reveal + 0.5).astype(np.int64)
    revealed = (part == 2) & (fn_rank < n_rev[users])
    idx = order
    train = inter.subset(idx[part == 0])
    test = inter.subset(idx[part == 1])
    hidden = inter.subset(idx[(part == 2) & ~revealed])
    shown = inter.subset(idx[revealed])
    info = {"split": "false_negatives_4:1:1", "reveal": reveal, "seed": seed, "n_fn": int((part == 2).sum())}
    return Split(train=train, test=test, valid=None, name="fn-protocol", info=info), hidden, shown


def load_job_data(job: dict) -> tuple[Split, dict]:
    """The split of a job (cached per process) and protocol extras (``hidden_fn``, ``sampler_train``)."""
    spec = {"data": job["data"], "protocol": job.get("protocol")}
    key = json.dumps(spec, sort_keys=True, default=str)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    d = dict(job["data"])
    if "synthetic" in d:
        from recneg.data.split import random_split
        from recneg.data.synthetic import SyntheticConfig, generate

        inter = generate(SyntheticConfig(**d["synthetic"])).interactions
        if spec["protocol"]:
            split = Split(train=inter, test=inter.subset(np.zeros(0, np.int64)))
        else:
            split = random_split(inter, d.get("test_ratio", 0.1), d.get("valid_ratio", 0.1), d.get("seed", 0))
            split.name = "synthetic"
    else:
        from recneg.data.datasets import load_dataset

        split = load_dataset(
            d["dataset"],
            data_dir=d.get("data_dir"),
            split=d.get("split", "auto"),
            valid_ratio=d.get("valid_ratio", 0.1),
            test_ratio=d.get("test_ratio"),
            seed=d.get("seed", 0),
            download=d.get("download", False),
        )
    extras: dict = {}
    proto = spec["protocol"]
    if proto:
        if proto.get("name") != "false_negatives":
            raise ConfigError(f"unknown protocol {proto.get('name')!r}; known: false_negatives")
        from recneg.data.preprocess import dedupe

        parts = [p for p in (split.train, split.valid, split.test) if p is not None and len(p)]
        inter = dedupe(_concat(parts))
        split, hidden, shown = false_negative_split(inter, proto.get("reveal", 0.0), proto.get("seed", 0))
        extras = {"hidden_fn": hidden, "sampler_train": _concat([split.train, shown]) if len(shown) else None}
    _DATA_CACHE.clear()  # one dataset at a time per process
    _DATA_CACHE[key] = (split, extras)
    return split, extras


# ------------------------------------------------------------------------------------------------ one job
def _diagnostic_callbacks(names, extras):
    from recneg.diagnostics import FalseNegativeRate, Hardness, PickOverlap, PoolSpread, ScoreHistogram

    out, hist = [], None
    for name in names or []:
        if name == "hardness":
            out.append(Hardness(every=5, rows=64))
        elif name == "pool":
            out.append(PoolSpread())
        elif name == "fn":
            if extras.get("hidden_fn") is not None:
                out.append(FalseNegativeRate(extras["hidden_fn"]))
        elif name == "histogram":
            hist = ScoreHistogram(n_users=200, bins=40)
            out.append(hist)
        elif name.startswith("overlap="):
            from recneg.registry import SAMPLERS, build_sampler

            sname, args = parse_component(name.partition("=")[2])
            out.append(PickOverlap(build_sampler(sname, SAMPLERS.make_config(sname, args))))
        else:
            raise ConfigError(f"unknown diagnostic {name!r}: hardness | pool | fn | histogram | overlap=SPEC")
    return out, hist


class _EpochEval:
    """Callback: test Recall/NDCG and AUC/OPAUC after every epoch (for metric-correlation studies)."""

    def __init__(self, betas, topk):
        self.betas, self.topk, self.points = list(betas), tuple(topk), []

    def on_epoch_end(self, trainer, record) -> dict:
        from recneg.eval.analysis import evaluate_auc
        from recneg.eval.ranking import evaluate

        m = trainer.model
        res = evaluate(m, trainer.split, "test", self.topk, mask_valid=trainer.config.mask_valid)
        auc = evaluate_auc(m, trainer.split, "test", self.betas, mask_valid=trainer.config.mask_valid)
        self.points.append({"epoch": record["epoch"], **res.metrics, **auc.metrics})
        return {}


def run_job(job: dict, out_path: str | Path | None = None) -> dict:
    """Train one job and return (and write to ``out_path``) its result dict; a finished result is reused."""
    if out_path is not None and Path(out_path).is_file():
        return json.loads(Path(out_path).read_text())
    import torch

    torch.set_num_threads(1)
    from recneg.config import ComponentConfig, DataConfig, RunConfig
    from recneg.registry import config_from_mapping
    from recneg.runner import build_components
    from recneg.train import TrainConfig, Trainer

    split, extras = load_job_data(job)
    seed = int(job.get("seed", 0))
    train_cfg = config_from_mapping(
        TrainConfig, {"progress": False, "threads": 1, **job.get("train", {}), "seed": seed}, "job train"
    )
    data = job["data"]
    cfg = RunConfig(
        data=DataConfig(
            dataset=data.get("dataset", "synthetic"), data_dir=data.get("data_dir"), download=False
        ),
        model=ComponentConfig(*job["model"]),
        sampler=ComponentConfig(*job["sampler"]),
        loss=ComponentConfig(*job["loss"]),
        train=train_cfg,
    )
    torch.manual_seed(seed)
    model, sampler, loss = build_components(cfg, split)
    if extras.get("sampler_train") is not None:
        sampler.bind(extras["sampler_train"])
    ex = job.get("extras", {})
    callbacks, hist = _diagnostic_callbacks(ex.get("diagnostics"), extras)
    epoch_eval = None
    if ex.get("epoch_auc"):
        epoch_eval = _EpochEval(ex.get("auc_betas", (0.01, 0.05, 0.1, 0.2, 0.5)), train_cfg.topk)
        callbacks.append(epoch_eval)
    t0 = time.perf_counter()
    result = Trainer(model, sampler, split, loss, train_cfg, None, run_config=cfg, callbacks=callbacks).run()
    out = {
        "key": job["key"],
        "job": job,
        "test": result.test,
        "valid": result.valid,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - t0,
        "history": [
            {k: h[k] for k in ("epoch", "loss", "valid", "test", "sampler", "diagnostics") if k in h}
            for h in result.history
        ],
    }
    tr = result.test_result
    if tr is not None:
        keep = ex.get("per_user", [train_cfg.metric])
        out["per_user"] = {"users": tr.users.tolist(), **{m: tr.per_user[m].tolist() for m in keep}}
        hit_k = ex.get("hit_k")
        if hit_k:
            out["hits"] = {"k": int(hit_k), "pairs": sorted(list(p) for p in tr.hit_set(int(hit_k)))}
        if ex.get("buckets"):
            from recneg.eval.buckets import popularity_recall

            ks = [k for k in train_cfg.topk if k >= 20] or [max(train_cfg.topk)]
            out["buckets"] = popularity_recall(tr, split, ks=ks)
    if ex.get("auc_betas") and not ex.get("epoch_auc"):
        from recneg.eval.analysis import evaluate_auc

        auc = evaluate_auc(result.model, split, "test", ex["auc_betas"], mask_valid=train_cfg.mask_valid)
        out["auc"] = auc.metrics
    if epoch_eval is not None:
        out["epoch_points"] = epoch_eval.points
    if hist is not None:
        out["histograms"] = hist.epochs
    if out_path is not None:
        from recneg.utils import atomic_write_text

        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, json.dumps(out, default=_json_default))
    return out


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ------------------------------------------------------------------------------------------------ specs
def _coerce_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def parse_component(text: str) -> tuple[str, dict]:
    """``"dns:n_candidates=16,exclude_positives=true"`` -> ``("dns", {"n_candidates": 16, ...})``."""
    name, _, rest = text.strip().partition(":")
    if not name:
        raise ConfigError(f"empty component name in {text!r}")
    args = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"component settings are k=v, got {item!r} in {text!r}")
        args[k.strip()] = _coerce_value(v.strip())
    return name, args


def parse_method(text: str) -> dict:
    """``[LABEL=]SAMPLER[:k=v,...][+LOSS[:k=v,...]]`` -> ``{"label", "sampler", "loss"}``.

    Examples: ``uniform``, ``dns-16=dns:n_candidates=16``, ``pdns-32=dns:n_candidates=32+softbpr:beta=0.2``.
    """
    label = None
    head = text.split(":", 1)[0].split("+", 1)[0]
    if "=" in head:
        label, _, text = text.partition("=")
    sampler_txt, _, loss_txt = text.partition("+")
    sampler = parse_component(sampler_txt)
    loss = parse_component(loss_txt) if loss_txt else ("bpr", {})
    if label is None:
        label = sampler_txt.replace(":", "-").replace(",", "-").replace("=", "")
        if loss_txt:
            label += "+" + loss_txt.replace(":", "-").replace(",", "-").replace("=", "")
    return {"label": label.strip(), "sampler": list(sampler), "loss": list(loss)}


def safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=/-]", "_", key)


# ------------------------------------------------------------------------------------------------ the grid
def _worker(args):
    job, path = args
    return run_job(job, path)


def run_grid(jobs: list[dict], out_dir: str | Path, n_jobs: int = 1, log=print) -> list[dict]:
    """Run every job whose ``out_dir/runs/<key>.json`` is missing; return all results in job order.

    ``n_jobs > 1`` runs jobs in that many worker processes (one torch thread each); ``n_jobs = 0`` uses
    ``os.cpu_count()``. Finished jobs are read back, so an interrupted grid resumes where it stopped.
    """
    out_dir = Path(out_dir)
    keys = [j["key"] for j in jobs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError(f"two jobs share the key {dup!r}: give the methods distinct labels")
    paths = [str(out_dir / "runs" / f"{safe_key(k)}.json") for k in keys]
    todo = [(j, p) for j, p in zip(jobs, paths, strict=True) if not Path(p).is_file()]
    if n_jobs == 0:
        n_jobs = os.cpu_count() or 1
    n_jobs = max(1, min(n_jobs, len(todo) or 1))
    if log:
        log(
            f"{len(jobs)} runs, {len(jobs) - len(todo)} already done, "
            f"{len(todo)} to run on {n_jobs} process(es)"
        )
    done = 0
    if n_jobs == 1 or len(todo) <= 1:
        for j, p in todo:
            r = run_job(j, p)
            done += 1
            if log:
                log(_progress_line(r, done, len(todo)))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn" if sys.platform == "darwin" else "forkserver")
        with ProcessPoolExecutor(n_jobs, mp_context=ctx) as pool:
            for r in pool.map(_worker, todo):
                done += 1
                if log:
                    log(_progress_line(r, done, len(todo)))
    return [json.loads(Path(p).read_text()) for p in paths]


def _progress_line(r: dict, i: int, n: int) -> str:
    metric = r["job"].get("train", {}).get("metric", "recall@20")
    return (
        f"[{i}/{n}] {r['key']}: test {metric} {r['test'].get(metric, float('nan')):.4f} "
        f"(best epoch {r['best_epoch']}, {r['wall_seconds']:.1f} s)"
    )

"""``recneg compare``: a grid of samplers × models × seeds × datasets, resumable, in parallel processes.

Each (dataset, model, method, seed) is one job (:mod:`recneg.experiments.jobs`) whose result is written to
``OUT/runs/<dataset>/<model>/<method>/s<seed>.json``; a finished job is read back, so an interrupted
comparison resumes. The report ``OUT/report.md`` has one row per (dataset, model, method): mean ± std over
seeds of the test metrics at the best validation epoch, and the p-values of two paired tests against the
baseline method (over seeds and over users, :mod:`recneg.experiments.report`). ``OUT/results.json`` holds the
summary rows and ``OUT/*.png`` the figures (bar chart of the main metric; validation curves).

A method is ``[LABEL=]SAMPLER[:k=v,...][+LOSS[:k=v,...]]`` (e.g. ``dns-16=dns:n_candidates=16``,
``pdns=dns:n_candidates=32+softbpr:beta=0.2``); a model ``NAME[:k=v,...]``. With ``tuned`` (the JSON
``recneg tune`` writes), each method takes its tuned sampler/loss settings and learning rate / λ.

Example::

    recneg compare --dataset ml-100k --data-dir ../shared/data --model mf:dim=64 \\
        --method uniform --method dns-16=dns:n_candidates=16 --seeds 0,1,2 --epochs 60 --jobs 2 \\
        --baseline uniform --out results/cmp
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from recneg.errors import ConfigError
from recneg.experiments import report
from recneg.experiments.jobs import parse_component, parse_method, run_grid


def data_spec(dataset: str, data_dir: str | None = None, **kw) -> dict:
    """The ``data`` entry of a job: a named dataset/path, or ``synthetic`` (the built-in generator)."""
    return {"dataset": dataset, "data_dir": data_dir, **kw}


def build_jobs(
    datasets: Sequence[dict],
    models: Sequence[tuple[str, dict]],
    methods: Sequence[dict],
    seeds: Sequence[int],
    train: dict,
    extras: dict | None = None,
    tuned: dict | None = None,
    protocol: dict | None = None,
) -> list[dict]:
    """Every (dataset, model, method, seed) job of a comparison (see :mod:`recneg.experiments.jobs`)."""
    jobs = []
    for data in datasets:
        ds_name = "synthetic" if "synthetic" in data else Path(str(data["dataset"])).name
        for model, margs in models:
            for m in methods:
                sampler, loss = list(m["sampler"]), list(m["loss"])
                tr = dict(train)
                if tuned and m["label"] in tuned:
                    t = tuned[m["label"]]
                    sampler = [sampler[0], {**sampler[1], **t.get("sampler", {})}]
                    loss = [loss[0], {**loss[1], **t.get("loss", {})}]
                    tr.update(t.get("train", {}))
                for s in seeds:
                    jobs.append(
                        {
                            "key": f"{ds_name}/{model}/{m['label']}/s{s}",
                            "method": m["label"],
                            "seed": int(s),
                            "data": data,
                            "protocol": protocol,
                            "model": [model, dict(margs)],
                            "sampler": sampler,
                            "loss": loss,
                            "train": tr,
                            "extras": dict(extras or {}),
                        }
                    )
    return jobs


def write_report(
    results: list[dict],
    out: Path,
    metrics: Sequence[str],
    baseline: str | None,
    title: str = "Comparison",
    command: str = "",
    notes: str = "",
) -> list[dict]:
    """Write ``report.md``, ``results.json`` and figures for a list of job results; return the rows."""
    rows = report.comparison_rows(results, metrics, baseline)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}\n"]
    if command:
        md.append(f"Command: `{command}`\n")
    if notes:
        md.append(notes + "\n")
    md.append(
        "Test metrics at the best validation epoch (the last epoch without validation), mean ± std over "
        "seeds. p-values: paired t-test over seeds and Wilcoxon signed-rank over per-user "
        f"{metrics[0]} (averaged over seeds), both two-sided, vs the baseline.\n"
    )
    md.append(report.md_table(rows))
    main = metrics[0]
    labels = [
        f"{r['method']}" + (f" ({r['model']})" if len({x["model"] for x in rows}) > 1 else "") for r in rows
    ]
    groups = report.group_results(
        results, lambda r: (report._dataset(r), r["job"]["model"][0], r["job"]["method"])
    )
    stds = [report.mean_std([report.metric_of(x, main) for x in g])[1] for g in groups.values()]
    fig = report.bar_plot(labels, [r["_" + main] for r in rows], stds, out / f"bar_{main}.png", main, title)
    curves = {}
    for (ds, model, method), runs in groups.items():
        part = "valid" if runs[0].get("valid") else "test"
        pts: dict[int, list[float]] = {}
        for r in runs:
            for h in r["history"]:
                if part in h and main in h[part]:
                    pts.setdefault(h["epoch"], []).append(h[part][main])
        if pts:
            xs = sorted(pts)
            curves[f"{method} ({model}, {ds})"] = (xs, [sum(pts[x]) / len(pts[x]) for x in xs])
    fig2 = report.line_plot(curves, out / f"curves_{main}.png", "epoch", main, f"{title}: {main} per epoch")
    if fig is not None and fig2 is not None:  # both None without matplotlib
        md.append(f"\n![{main}]({fig.name})\n\n![curves]({fig2.name})\n")
    (out / "report.md").write_text("\n".join(md))
    public = [{k: v for k, v in r.items() if not k.startswith("_") or k == "_sig"} for r in rows]
    (out / "results.json").write_text(json.dumps({"command": command, "rows": public}, indent=2, default=str))
    return rows


def compare(
    datasets: Sequence[dict],
    models: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    train: dict,
    out: str | Path,
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
    n_jobs: int = 1,
    tuned: str | Path | None = None,
    extras: dict | None = None,
    command: str = "",
    log=print,
) -> list[dict]:
    """Run a comparison grid and write its report. Returns the summary rows.

    Args:
        datasets: ``data`` entries (:func:`data_spec`).
        models: model specs ``NAME[:k=v,...]``.
        methods: method specs (module docstring).
        seeds: training seeds.
        train: :class:`~recneg.config.TrainConfig` fields shared by all jobs.
        out: output folder.
        baseline: method label the others are tested against (default: the first method).
        metrics: test metrics in the table (default: the early-stopping metric, ``ndcg@K`` of the same K).
        n_jobs: worker processes (1 = in this process, 0 = one per core).
        tuned: a ``tuned.json`` from ``recneg tune``.
        extras: job extras (diagnostics, AUC, per-user metrics, hit sets).
    """
    parsed = [parse_method(m) for m in methods]
    if not parsed:
        raise ConfigError("compare needs at least one --method")
    labels = [m["label"] for m in parsed]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"method labels must be distinct, got {labels}; name them with LABEL=SPEC")
    baseline = baseline or labels[0]
    if baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is not one of the methods {labels}")
    metric = train.get("metric", "recall@20")
    k = metric.partition("@")[2]
    metrics = list(metrics or [metric, f"ndcg@{k}"])
    if extras and extras.get("auc_betas") and not extras.get("epoch_auc"):
        metrics += ["auc"] + [f"opauc_pairs@{float(b):g}" for b in extras["auc_betas"]]
    tuned_map = json.loads(Path(tuned).read_text()).get("methods", {}) if tuned else None
    ex = {"per_user": sorted({m for m in metrics if "@" in m and "auc" not in m}), **(extras or {})}
    jobs = build_jobs(datasets, [parse_component(m) for m in models], parsed, seeds, train, ex, tuned_map)
    out = Path(out)
    results = run_grid(jobs, out, n_jobs, log=log)
    return write_report(results, out, metrics, baseline, "Comparison", command)

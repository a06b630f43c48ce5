"""Tables (mean ± std over seeds, significance vs a baseline) and figures for experiment results.

Significance (two tests, both paired, both two-sided):

- over seeds: ``scipy.stats.ttest_rel`` of the method's per-seed test metric against the baseline's, pairing
  equal training seeds (needs ≥ 2 common seeds);
- over users: ``scipy.stats.wilcoxon`` of the per-user test metric (averaged over the common seeds) against
  the baseline's, pairing equal users (every job of a comparison uses the same split, so the users match).
  With hundreds of users this test has far more power than 3–5 seeds; it answers "does the method rank
  better for the same users", not "is the improvement stable across trainings".

Figures need matplotlib (the optional extra ``plot``: ``pip install recneg[plot]``); without it every
figure function prints one line saying so and returns ``None``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from recneg.eval.analysis import paired_test

_WARNED = False


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_ms(values: Sequence[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def metric_of(r: dict, metric: str):
    """A run's test metric, looked up in ``test`` and then in ``auc`` (AUC/OPAUC when computed)."""
    if metric in r.get("test", {}):
        return r["test"][metric]
    return r.get("auc", {}).get(metric)


def group_results(results: list[dict], by: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in results:
        out.setdefault(by(r), []).append(r)
    return out


def _per_user(r: dict, metric: str):
    pu = r.get("per_user") or {}
    if metric not in pu:
        return None
    return np.asarray(pu["users"]), np.asarray(pu[metric], dtype=np.float64)


def _mean_per_user(runs: list[dict], metric: str) -> dict[int, float] | None:
    acc: dict[int, list[float]] = {}
    for r in runs:
        p = _per_user(r, metric)
        if p is None:
            return None
        for u, v in zip(p[0].tolist(), p[1].tolist(), strict=True):
            acc.setdefault(u, []).append(v)
    return {u: float(np.mean(v)) for u, v in acc.items()}


def significance(runs: list[dict], base: list[dict], metric: str) -> dict[str, float]:
    """Paired tests of ``runs`` vs ``base`` on ``metric``: over seeds (t-test) and over users (Wilcoxon)."""
    a = {r["job"]["seed"]: metric_of(r, metric) for r in runs}
    b = {r["job"]["seed"]: metric_of(r, metric) for r in base}
    seeds = sorted(set(a) & set(b))
    t = paired_test([a[s] for s in seeds], [b[s] for s in seeds], "ttest")
    out = {"p_seeds": t["pvalue"], "n_seeds": len(seeds)}
    pa = _mean_per_user([r for r in runs if r["job"]["seed"] in seeds], metric)
    pb = _mean_per_user([r for r in base if r["job"]["seed"] in seeds], metric)
    if pa and pb:
        users = sorted(set(pa) & set(pb))
        w = paired_test([pa[u] for u in users], [pb[u] for u in users], "wilcoxon")
        out.update({"p_users": w["pvalue"], "n_users": len(users)})
    else:
        out.update({"p_users": float("nan"), "n_users": 0})
    return out


def comparison_rows(
    results: list[dict],
    metrics: Sequence[str],
    baseline: str | None = None,
    test_metric: str | None = None,
) -> list[dict]:
    """One row per (dataset, model, method): mean ± std of each metric, and p-values vs ``baseline``.

    Rows keep the first-seen order of the methods. ``baseline`` is a method label; ``test_metric`` (default
    the first of ``metrics``) is the one tested.
    """
    test_metric = test_metric or metrics[0]
    groups = group_results(results, lambda r: (_dataset(r), r["job"]["model"][0], r["job"]["method"]))
    rows = []
    for (ds, model, method), runs in groups.items():
        row = {"dataset": ds, "model": model, "method": method, "seeds": len(runs)}
        for m in metrics:
            row[m] = fmt_ms([metric_of(r, m) for r in runs])
            row["_" + m] = mean_std([metric_of(r, m) for r in runs])[0]
        if baseline is not None:
            base = groups.get((ds, model, baseline))
            if base is None or method == baseline:
                row[f"p vs {baseline} (seeds)"] = "–"
                row[f"p vs {baseline} (users)"] = "–"
            else:
                sig = significance(runs, base, test_metric)
                row["_sig"] = sig
                row[f"p vs {baseline} (seeds)"] = fmt_p(sig["p_seeds"])
                row[f"p vs {baseline} (users)"] = fmt_p(sig["p_users"])
        rows.append(row)
    return rows


def _dataset(r: dict) -> str:
    d = r["job"]["data"]
    return "synthetic" if "synthetic" in d else Path(str(d.get("dataset"))).name


def md_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (keys starting with ``_`` are hidden)."""
    if not rows:
        return "(no results)\n"
    cols = list(columns) if columns else [k for k in rows[0] if not k.startswith("_")]

    def cell(v):
        if isinstance(v, float):
            return "–" if math.isnan(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}")
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ figures
def pyplot():
    """``matplotlib.pyplot`` with the Agg backend, or ``None`` (and one message) when it is missing."""
    global _WARNED
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not _WARNED:
            print("matplotlib is not installed: figures skipped (pip install 'recneg[plot]')")
            _WARNED = True
        return None
    return plt


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    errors: Mapping[str, Sequence[float]] | None = None,
) -> Path | None:
    """One line per entry of ``series`` (``{label: (x, y)}``), optional error bars; PNG at ``path``."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in series.items():
        if errors and label in errors:
            ax.errorbar(x, y, yerr=errors[label], marker="o", ms=3, capsize=2, label=label)
        else:
            ax.plot(x, y, marker="o", ms=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, Path(path))


def bar_plot(
    labels: Sequence[str], means: Sequence[float], stds: Sequence[float], path, ylabel: str, title: str = ""
) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, plt, Path(path))


def heatmap(names: Sequence[str], matrix, path, title: str = "", fmt: str = "{:.2f}") -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(names), 0.8 + 0.7 * len(names)))
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(names)))
    ax.set_yticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im)
    ax.set_title(title)
    return _save(fig, plt, Path(path))


def histogram_plot(epochs: list[dict], path, title: str = "") -> Path | None:
    """Score densities of non-positives (and positives, dashed) at a few epochs of a ScoreHistogram."""
    plt = pyplot()
    if plt is None or not epochs:
        return None
    pick = sorted({0, len(epochs) // 2, len(epochs) - 1})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in pick:
        e = epochs[i]
        edges = np.asarray(e["edges"])
        mid = 0.5 * (edges[1:] + edges[:-1])
        (line,) = ax.plot(mid, e["neg_hist"], label=f"non-positives, epoch {e['epoch']}")
        ax.plot(mid, e["pos_hist"], ls="--", color=line.get_color(), label=f"positives, epoch {e['epoch']}")
    ax.set_xlabel("score ⟨e_u, e_j⟩")
    ax.set_ylabel("share of items")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, plt, Path(path))

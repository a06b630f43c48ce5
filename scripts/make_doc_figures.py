"""Draw the user guide's figures (``docs/results/*.png``) from the benchmark JSON committed under
``benchmarks/results/``.

    python scripts/make_doc_figures.py              # rewrite docs/results/
    python scripts/make_doc_figures.py --out DIR    # write elsewhere (tests)

Each figure reads one results file and nothing else, so it changes only when that result is re-measured.
Needs matplotlib (``pip install 'recneg[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "results"

STEP2 = RESULTS / "samplers_step2_ml-100k.json"
PDNS = RESULTS / "reproduce" / "pdns-overfitting-ml-100k" / "results.json"
EPOCH_TIME = RESULTS / "epoch_time_gowalla.json"
TWO_TOWER = RESULTS / "two_tower.json"
PEERS = RESULTS / "peers_gowalla.json"

# the MF candidate selectors of the step-2 grid, in the order of the legend
SELECTOR_CONFIGS = ("uniform", "dns-8", "dns-16", "dns-32", "dns-64", "dns_mn-4of32", "softmax_v-rho1-32")
TWO_TOWER_CONFIGS = ("in_batch", "mns-256", "mns-1024", "mns-4096", "uniform_corpus-2048")
TWO_TOWER_METRICS = (("recall@50", "R@50"), ("tail_recall@50", "tail R@50"), ("cold_recall@50", "cold R@50"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ data extraction
def selector_valid_curves(step2: dict[str, Any]) -> dict[str, tuple[list[int], list[float]]]:
    """``config -> (epochs, validation recall@20 averaged over seeds)`` for :data:`SELECTOR_CONFIGS`.

    ``step2["runs"][k]["curve"]`` is a list of ``[epoch, valid recall@20, valid ndcg@20]``.
    """
    per_config: dict[str, dict[int, list[float]]] = {}
    for run in step2["runs"]:
        if run["config"] in SELECTOR_CONFIGS:
            points = per_config.setdefault(run["config"], {})
            for epoch, recall, _ in run["curve"]:
                points.setdefault(int(epoch), []).append(float(recall))
    return {
        config: (sorted(points), [statistics.fmean(points[e]) for e in sorted(points)])
        for config in SELECTOR_CONFIGS
        if (points := per_config.get(config))
    }


def pdns_drops(results: dict[str, Any]) -> dict[str, dict[int, tuple[float, float]]]:
    """``{"dns" | "pdns": {H: (drop % of validation recall@50 after its peak, test recall@50)}}``."""
    out: dict[str, dict[int, tuple[float, float]]] = {"dns": {}, "pdns": {}}
    for row in results["tables"]["curves"]:
        family, h = row["method"].rsplit("-", 1)
        out[family][int(h)] = (float(row["drop %"]), float(row["test recall@50 (best valid)"]))
    return out


def step_costs(epoch_time: dict[str, Any]) -> list[tuple[str, float]]:
    """``[(config, median ms per training step)]`` in the benchmark's order."""
    return [(row["config"], float(row["ms/step (median)"])) for row in epoch_time["rows"]]


def two_tower_recalls(two_tower: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """``config -> metric -> (mean, std over seeds)`` for :data:`TWO_TOWER_CONFIGS` and the metrics of
    :data:`TWO_TOWER_METRICS`."""
    rows = {row["config"]: row for row in two_tower["summary"]}
    return {
        config: {m: (float(rows[config][m][0]), float(rows[config][m][1])) for m, _ in TWO_TOWER_METRICS}
        for config in TWO_TOWER_CONFIGS
    }


# ------------------------------------------------------------------------------------------- figures
def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit("make_doc_figures needs matplotlib: pip install 'recneg[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    plt.close(fig)
    return path


def draw_selector_curves(out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for config, (epochs, recall) in selector_valid_curves(_load(STEP2)).items():
        style = "--" if config == "uniform" else "-"
        ax.plot(epochs, recall, style, lw=1.4, label=config)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation recall@20 (mean over seeds)")
    ax.set_title("MF + BPR on ml-100k: candidate selectors, no early stopping", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plt, out / "selectors_valid_curves_ml-100k.png")


def draw_pdns_drops(out: Path) -> Path:
    plt = _pyplot()
    drops = pdns_drops(_load(PDNS))
    hs = sorted(drops["dns"])
    x = range(len(hs))
    fig, (ax_drop, ax_test) = plt.subplots(1, 2, figsize=(8, 3.4))
    for shift, family in ((-0.2, "dns"), (0.2, "pdns")):
        label = "DNS" if family == "dns" else "PDNS (β = 0.2)"
        ax_drop.bar([i + shift for i in x], [drops[family][h][0] for h in hs], 0.4, label=label)
        ax_test.bar([i + shift for i in x], [drops[family][h][1] for h in hs], 0.4, label=label)
    for ax, ylabel in ((ax_drop, "valid recall@50: drop after peak, %"), (ax_test, "test recall@50")):
        ax.set_xticks(list(x), [f"H={h}" for h in hs])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_drop.legend(fontsize=8)
    fig.suptitle("DNS vs PDNS on ml-100k (MF, 50 epochs, 1 seed)", fontsize=10)
    return _save(fig, plt, out / "pdns_vs_dns_ml-100k.png")


def draw_step_costs(out: Path) -> Path:
    plt = _pyplot()
    costs = step_costs(_load(EPOCH_TIME))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [name for name, _ in costs]
    ax.barh(range(len(costs)), [ms for _, ms in costs], color=["C3" if "ans" in n else "C0" for n in names])
    ax.set_yticks(range(len(costs)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per training step (median, log scale)")
    threads = _load(EPOCH_TIME)["machine"]["torch_threads"]
    ax.set_title(f"Step cost on Gowalla: batch 2048, dim 64, {threads} CPU thread(s)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plt, out / "step_cost_gowalla.png")


def draw_two_tower(out: Path) -> Path:
    plt = _pyplot()
    recalls = two_tower_recalls(_load(TWO_TOWER))
    fig, axes = plt.subplots(1, len(TWO_TOWER_METRICS), figsize=(9, 3.2))
    x = range(len(TWO_TOWER_CONFIGS))
    for ax, (metric, title) in zip(axes, TWO_TOWER_METRICS, strict=True):
        means = [recalls[c][metric][0] for c in TWO_TOWER_CONFIGS]
        stds = [recalls[c][metric][1] for c in TWO_TOWER_CONFIGS]
        ax.bar(x, means, yerr=stds, capsize=3, color=[f"C{i}" for i in x])
        ax.set_xticks(list(x), [c.replace("uniform_corpus", "corpus") for c in TWO_TOWER_CONFIGS])
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    meta = _load(TWO_TOWER)["meta"]
    fig.suptitle(
        f"Two-tower on ml-100k, {meta['epochs']} epochs: mean ± std over {len(meta['seeds'])} seeds",
        fontsize=10,
    )
    return _save(fig, plt, out / "two_tower_buckets_ml-100k.png")


def peer_curves(peers: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """``{library: (training seconds, Recall@20)}`` at each evaluated epoch of ``benchmarks.peers``."""
    curves = {
        "implicit 0.7.3 BPR": (
            [r["cum"] for r in peers["implicit"]["curve"]],
            [r["recall@20"] for r in peers["implicit"]["curve"]],
        )
    }
    fast = peers["fast_config"]
    labels = {
        "recneg_fast": f"recneg fast ({fast['optimizer']}, batch {fast['batch_size']})",
        "recneg_fast_adam": "recneg (Adam, batch 16384)",
    }
    for key, label in labels.items():
        rows = [r for r in peers.get(key, {}).get("epochs", []) if "recall@20" in r]
        if rows:
            curves[label] = ([r["cum"] for r in rows], [r["recall@20"] for r in rows])
    return curves


def draw_peer_curves(out: Path) -> Path:
    plt = _pyplot()
    peers = _load(PEERS)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (seconds, recall) in peer_curves(peers).items():
        ax.plot(seconds, recall, marker="o", ms=3, label=label)
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("test Recall@20")
    ax.set_title(f"Time to Recall@20 on Gowalla, {peers['threads']} CPU threads each", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "time_to_recall_gowalla.png")


FIGURES = (draw_selector_curves, draw_pdns_drops, draw_step_costs, draw_two_tower, draw_peer_curves)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default docs/results)")
    args = parser.parse_args(argv)
    written = [draw(args.out) for draw in FIGURES]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()

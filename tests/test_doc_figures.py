"""The user guide's figures: ``scripts/make_doc_figures.py`` reads the committed results as their Markdown
reports state them, and ``docs/results/`` holds exactly the figures it draws, each shown by a docs page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    path = ROOT / "scripts" / "make_doc_figures.py"
    spec = importlib.util.spec_from_file_location("make_doc_figures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mean_of(cell: str) -> float:
    """``"0.3117 ± 0.0016"`` -> 0.3117."""
    return float(cell.split("±")[0])


def test_selector_curves_agree_with_the_grid_summary():
    fig = _script()
    step2 = fig._load(fig.STEP2)
    curves = fig.selector_valid_curves(step2)
    assert list(curves) == list(fig.SELECTOR_CONFIGS)
    summary = {row["config"]: row for row in step2["summary"]}
    for config, (epochs, recall) in curves.items():
        assert epochs == list(range(2, 101, 2)), config
        assert recall[-1] == pytest.approx(_mean_of(summary[config]["valid last recall@20"]), abs=1e-4)
        # the peak of the mean curve cannot exceed the mean of the per-seed peaks
        assert max(recall) <= _mean_of(summary[config]["valid peak recall@20"]) + 1e-4


def test_pdns_figure_shows_the_claims_verdicts():
    fig = _script()
    results = fig._load(fig.PDNS)
    drops = fig.pdns_drops(results)
    assert sorted(drops["dns"]) == sorted(drops["pdns"]) == [8, 16, 32, 64]
    assert all(v["held"] for v in results["verdicts"])
    assert all(drops["pdns"][h][0] < drops["dns"][h][0] for h in drops["dns"])
    assert drops["dns"][64][0] > drops["dns"][8][0]


def _table_column(markdown: str, key: str, column: str) -> list[tuple[str, str]]:
    """``(row[key], row[column])`` of the first Markdown table whose header has both columns."""
    lines = [line.strip() for line in markdown.splitlines()]
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []
        if key in cells and column in cells:
            k, c = cells.index(key), cells.index(column)
            rows = []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                values = [v.strip() for v in body.strip("|").split("|")]
                rows.append((values[k], values[c]))
            return rows
    return []


def test_step_costs_and_two_tower_recalls_match_their_reports():
    fig = _script()
    epoch_md = (fig.RESULTS / "epoch_time_gowalla.md").read_text(encoding="utf-8")
    md_rows = _table_column(epoch_md, "config", "ms/step (median)")
    assert md_rows, "no step-time rows found in epoch_time_gowalla.md"
    costs = fig.step_costs(fig._load(fig.EPOCH_TIME))
    assert [name for name, _ in costs] == [name for name, _ in md_rows]
    for (_, ms), (_, shown) in zip(costs, md_rows, strict=True):
        assert ms == pytest.approx(float(shown), rel=1e-3)

    two_tower_md = (fig.RESULTS / "two_tower.md").read_text(encoding="utf-8")
    for config, metrics in fig.two_tower_recalls(fig._load(fig.TWO_TOWER)).items():
        for metric, (mean, std) in metrics.items():
            assert f"{mean:.4f} ± {std:.4f}" in two_tower_md, (config, metric)


def test_docs_results_holds_exactly_the_drawn_figures(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'recneg[plot]')")
    written = _script().main(["--out", str(tmp_path)])
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in (ROOT / "docs" / "results").glob("*.png"))
    pages = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    for name in names:
        assert f"](results/{name})" in pages, f"no docs page shows results/{name}"


def test_reproduction_page_is_current():
    """docs/reproduce-results.md and its figures match the committed full reproductions."""
    spec = importlib.util.spec_from_file_location(
        "collect_reproductions", ROOT / "scripts" / "collect_reproductions.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--check"])
    for folder, data in module.full_runs():
        assert f"## {folder.name}" in text
        assert data["command"].split(" --out ")[0] in text  # the exact command is on the page

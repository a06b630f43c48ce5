"""Shared benchmark helpers: machine stamp, peak memory, result writing."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine_stamp(threads: int) -> dict:
    import recneg

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recneg": recneg.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_results(name: str, payload: dict, table_md: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    j = RESULTS / f"{name}.json"
    m = RESULTS / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2, default=str))
    m.write_text(table_md)
    return j, m


def publish_table(
    name: str, module: str, argv, title: str, description: str, stamp: dict, rows: list[dict]
) -> str:
    """Write ``benchmarks/results/<name>.json`` and ``.md``: ``rows`` as a table under ``title``, with the
    command that produced it (``python -m benchmarks.<module>`` and ``argv``, or the process's arguments)
    and the machine ``stamp``. Returns the Markdown."""
    cmd = f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
    md = f"# {title}\n\nCommand: `{cmd}`\n\n{description}\n\nMachine: {stamp}\n\n" + md_table(
        rows, list(rows[0])
    )
    write_results(name, {"machine": stamp, "command": cmd, "rows": rows}, md)
    return md


def rounds_summary(values: list[float], baseline: list[float], unit: str, against: str) -> dict:
    """Per-round timings ``values`` beside the ``baseline`` timed in the same rounds: their median and range,
    and the median and range of the ratio taken within each round (the machine's speed drifts between
    rounds; a ratio within a round does not)."""
    ratios = [v / b for v, b in zip(values, baseline, strict=True)]
    return {
        f"{unit} (median)": round(statistics.median(values), 3),
        f"{unit} range": f"{min(values):.2f}–{max(values):.2f}",
        f"ratio to {against} (median of rounds)": round(statistics.median(ratios), 3),
        "ratio range": f"{min(ratios):.2f}–{max(ratios):.2f}",
    }


def md_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"

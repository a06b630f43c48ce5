"""Experiment tooling: comparison grids (``recneg compare``), tuning (``recneg tune``) and one-command
reproductions of the papers' claims (``recneg reproduce``). See docs/reproduce.md."""

from recneg.experiments.compare import build_jobs, compare, data_spec
from recneg.experiments.jobs import false_negative_split, parse_component, parse_method, run_grid, run_job
from recneg.experiments.reproduce import CLAIMS, Context, reproduce

__all__ = [
    "CLAIMS",
    "Context",
    "build_jobs",
    "compare",
    "data_spec",
    "false_negative_split",
    "parse_component",
    "parse_method",
    "reproduce",
    "run_grid",
    "run_job",
]

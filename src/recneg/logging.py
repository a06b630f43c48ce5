"""Experiment loggers: where the trainer's per-epoch scalars go besides ``history.jsonl``.

``history.jsonl`` is always written (resume and ``recneg evaluate`` read it); ``TrainConfig.logger`` (CLI
``--logger``) adds one more sink:

- ``jsonl`` (default): nothing more, ``history.jsonl`` is the log.
- ``csv``: ``metrics.csv`` in the run folder, one row per epoch, one column per flattened scalar
  (``loss``, ``train_seconds``, ``valid/recall@20``, ``sampler/hardness`` ...). Rewritten from the history
  at each epoch, so a resumed run never holds rows of epochs that were redone.
- ``tensorboard``: event files in ``<run>/tensorboard/`` through ``torch.utils.tensorboard.SummaryWriter``,
  the same flattened scalars with the epoch as step (needs ``pip install recneg[tensorboard]``).
- ``none``: nothing more.

Without a run folder (``fit(..., out_dir=None)``) no logger writes anything.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from recneg.errors import ConfigError

LOGGERS = ("jsonl", "csv", "tensorboard", "none")
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a history record as ``{"a/b": value}`` (``epoch`` and non-numbers dropped).

    Example:
        >>> flatten({"epoch": 3, "loss": 0.5, "valid": {"recall@20": 0.1}, "note": "x"})
        {'loss': 0.5, 'valid/recall@20': 0.1}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
            out[name] = float(value)
    return out


class Logger:
    """Base logger: ``log(record, history)`` after each epoch, ``close()`` at the end. Writes nothing."""

    def log(self, record: dict, history: list[dict]) -> None:
        """Called once per finished epoch with its record and the history so far (record included)."""

    def close(self) -> None:
        """Flush and release files."""


class CSVLogger(Logger):
    """``metrics.csv``: one row per epoch; columns are the union of the flattened scalars so far."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / CSV_FILE

    def log(self, record: dict, history: list[dict]) -> None:
        from recneg.utils import atomic_write_text

        rows = [{"epoch": r.get("epoch"), **flatten(r)} for r in history]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())


class TensorBoardLogger(Logger):
    """Scalars per epoch to ``<run>/tensorboard`` (opened at the first epoch logged; a resumed run purges
    the events of epochs that are redone)."""

    def __init__(self, out_dir: Path):
        self.log_dir = Path(out_dir) / TENSORBOARD_DIR
        self.writer: Any = None
        _summary_writer()  # fail at construction, not after the first epoch

    def log(self, record: dict, history: list[dict]) -> None:
        step = int(record.get("epoch", len(history)))
        if self.writer is None:
            self.writer = _summary_writer()(log_dir=str(self.log_dir), purge_step=step)
        for name, value in flatten(record).items():
            if math.isfinite(value):
                self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "logger 'tensorboard' needs the tensorboard package: pip install 'recneg[tensorboard]'"
        ) from None
    return SummaryWriter


def make_logger(name: str, out_dir: str | Path | None) -> Logger:
    """The logger called ``name`` (one of :data:`LOGGERS`) writing into ``out_dir`` (``None``: no files)."""
    if name not in LOGGERS:
        raise ConfigError(f"logger must be one of {list(LOGGERS)}, got {name!r}")
    if out_dir is None or name in ("jsonl", "none"):
        return Logger()
    if name == "csv":
        return CSVLogger(Path(out_dir))
    return TensorBoardLogger(Path(out_dir))


__all__ = ["LOGGERS", "Logger", "CSVLogger", "TensorBoardLogger", "flatten", "make_logger"]

"""Small shared helpers: atomic file writes, device and thread settings, seeding."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from recneg.errors import ConfigError, DataError


def _atomic_write(path: str | Path, write) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_torch_save(obj, path: str | Path) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def safe_torch_load(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    A file that holds any other object (a pickled class, a function) is refused, and an unreadable one
    (truncated, empty, not a torch file) is named, both as a one-line :class:`~recneg.errors.DataError`.
    """
    import pickle

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln]
        if lines:
            raise DataError(
                f"{path}: refused to load: it holds a pickled object, not only tensors ({lines[0]}); "
                "recneg never unpickles code from files"
            ) from None
        raise DataError(f"{path}: not a readable torch file (unpickling failed); is it corrupted?") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable torch file ({type(e).__name__}: {first})") from None


def set_deterministic(on: bool) -> None:
    """Make torch use deterministic kernels (``torch.use_deterministic_algorithms(True)``, no warn-only).

    Also sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless it is set (cuBLAS needs it for reproducible
    matmuls on CUDA >= 10.2; it must be in place before the first cuBLAS call of the process, so set it in
    the shell when CUDA was used before). ``on=False`` leaves torch's global setting as it is.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return dev


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)

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


#: the largest block :func:`keep_freed_memory` keeps in the heap (glibc's own cap for the mmap threshold)
KEEP_BLOCKS_UP_TO = 32 * 2**20
#: how much free memory at the top of the heap glibc may keep before it returns some to the system
KEEP_TOP_BYTES = 2**30
_KEPT: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` reuse freed blocks of up to 32 MiB instead of unmapping them (``mallopt``).

    By default glibc serves a large allocation (from 128 KiB, a threshold that rises with what was freed)
    with a fresh ``mmap``, unmaps it when freed, and returns the free top of its heap to the system once it
    exceeds twice that threshold; so a training step that builds table-sized temporaries (an autograd
    step's dense embedding gradients, LightGCN's ``[N, d]`` layers, ANS's ``[B, M, d]`` factors) keeps
    taking its pages afresh from the kernel: one page fault and a zeroing per 4 KiB. This raises the mmap
    threshold to :data:`KEEP_BLOCKS_UP_TO` and the trim threshold to :data:`KEEP_TOP_BYTES` (what
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set): freed blocks stay in the process for the
    next step, and its resident memory stays near its peak, as under jemalloc or tcmalloc. Measured on
    Gowalla, 2 threads (``python -m benchmarks.allocator``): an MF + ANS step 63.6 -> 43.7 ms, LightGCN
    160 -> 144 ms, an autograd MF step 6.7 -> 6.2 ms, their page faults a step from 13-15 k to 0.

    Process-wide; applied once (:attr:`recneg.config.TrainConfig.keep_freed_memory`, on by default).
    Returns whether the settings are in force: False where the C library is not glibc.
    """
    if "applied" not in _KEPT:
        _KEPT["applied"] = _mallopt_keep()
    return _KEPT["applied"]


def _mallopt_keep() -> bool:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, KEEP_BLOCKS_UP_TO)) and bool(
        mallopt(m_trim_threshold, KEEP_TOP_BYTES)
    )

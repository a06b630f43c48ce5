"""Multi-process training on ``torch.distributed``: the process group, who this rank is, and collectives.

recneg runs several processes with PyTorch's own engine: ``torchrun`` starts them and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA, the same code path) and returns a :class:`DistContext` that the
trainer consults. Without torchrun (or with one process) nothing is initialised and every helper here is the
identity, so a single-process run is exactly what it was before this module existed.

What each rank does (see ``docs/distributed.md``):

- training pairs: every rank draws the same permutation; rank ``r`` takes block ``r`` of each global batch;
- gradients: averaged by :class:`~torch.nn.parallel.DistributedDataParallel`;
- batch samplers: the batch's positives (and MNS's uniform draws) are gathered from every rank with
  :func:`gather_with_grad`, whose backward returns each row's gradient to the rank that owns it;
- evaluation: users split into contiguous blocks, per-user results gathered, metrics averaged identically.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import re
import time
import warnings
import weakref
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from recneg.errors import ConfigError

TIMEOUT_ENV = "RECNEG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
SEED_STRIDE = 1 << 32  # rank r's sampler stream: seed + 1 + r * 2^32 (rank 0 keeps the single-process stream)
#: tensors given to collectives that Python no longer uses; an entry disappears when its last holder (a
#: communication thread's finished work) lets go, see :func:`shutdown`
_HANDED_OVER: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the job.

    Attributes:
        rank: global rank ``0 .. world-1``; local_rank: index of this process on its node (its GPU).
        world: number of processes; 1 means a plain single-process run.
        backend: ``"gloo"``, ``"nccl"``, or ``None`` when no process group is initialised.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when gradients, batches and metrics are shared with other processes."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (logs, checkpoints, metrics) and prints."""
        return self.rank == 0

    def sampler_seed(self, seed: int) -> int:
        """Seed of this rank's sampler stream: ``seed + 1`` on rank 0 (as one process), disjoint after."""
        return seed + 1 + self.rank * SEED_STRIDE


SINGLE = DistContext()


def current() -> DistContext:
    """The context of the initialised default process group, or :data:`SINGLE` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    local = _env_int("LOCAL_RANK", default=0)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is not set; launch with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def launched_by_torchrun() -> bool:
    """True when the environment describes a job of more than one process (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", default=1) > 1


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def wants_cuda(device: str) -> bool:
    """Whether the trainer's ``device`` setting (``auto | cpu | cuda | cuda:N``) runs on CUDA."""
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group that torchrun's environment describes; :data:`SINGLE` without one.

    Backend ``nccl`` when ``device`` runs on CUDA (each rank then uses ``cuda:LOCAL_RANK``), else ``gloo``.
    Collectives give up after ``RECNEG_DIST_TIMEOUT`` seconds (default 600), so a rank that hangs cannot
    hold the others forever; a rank that dies is noticed by torchrun, which stops the job.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"WORLD_SIZE > 1 but {name} is not set; launch with torchrun")
    if wants_cuda(device):
        if device.startswith("cuda:"):
            raise ConfigError(
                f"device {device!r} names one GPU, but under torchrun each rank uses cuda:LOCAL_RANK; "
                "set device to cuda or auto"
            )
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but CUDA is not available on this machine")
        torch.cuda.set_device(_env_int("LOCAL_RANK"))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=_timeout())
    return current()


def shutdown(wait_for_peers: bool = True, release_timeout_s: float = 30.0) -> None:
    """Leave the process group (no-op when none is initialised).

    ``wait_for_peers``: a barrier first, so no rank tears its gloo connections down while another still uses
    them. Pass ``False`` after a failure, when a peer may be gone.

    Then, in a gloo job, it waits with the GIL released until gloo's worker threads have let go of every
    tensor this module handed them (at most ``release_timeout_s``, with a warning if some are still held;
    not after a failure). A worker thread that drops the last reference to a tensor created in Python must
    take the GIL to free it; if it asks while the interpreter is already finalising, Python ends that
    thread inside a C++ destructor and the process aborts ("terminate called without an active exception",
    exit -6) after all its work was done. Measured here, 2-rank jobs with another process keeping a core
    busy: 2 aborts in 11 jobs without the wait, none in 40 with it. (NCCL jobs are not waited for: not
    measured, no GPU was available.)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gloo = dist.get_backend() == "gloo"
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()
    if wait_for_peers and gloo:
        _wait_for_release(release_timeout_s)


def _hand_over(*tensors: Tensor) -> None:
    """Note tensors given to a collective that Python will not use again, so that :func:`shutdown` can wait
    until the communication threads have released them too."""
    for t in tensors:
        _HANDED_OVER.add(t)


def tensors_held_by_collectives() -> int:
    """How many tensors handed to collectives are still referenced (by a communication thread's work)."""
    gc.collect()
    return len(_HANDED_OVER)


def _wait_for_release(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    gc.collect()  # tensors that only a reference cycle keeps
    while _HANDED_OVER and time.monotonic() < deadline:
        time.sleep(0.002)  # releases the GIL, which the worker threads need to free the tensors
    if _HANDED_OVER:
        warnings.warn(
            f"{len(_HANDED_OVER)} tensors given to collectives were still held {timeout_s:.0f}s after "
            "leaving the process group; the process may abort at exit",
            RuntimeWarning,
            stacklevel=3,
        )


def trainer_device(ctx: DistContext, device: str) -> str:
    """The device setting a rank trains on: ``cuda:LOCAL_RANK`` for a CUDA job, ``device`` otherwise."""
    if ctx.enabled and ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    if ctx.enabled and device == "auto":
        return "cpu"  # a gloo job was started for the CPU: do not drift onto a GPU
    return device


# --------------------------------------------------------------------------------------------- collectives
def active_world() -> int:
    """Number of processes in the initialised default group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the ranks' gradients and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # every rank's loss may have used every row
        start = dist.get_rank() * ctx.rows
        own = total[start : start + ctx.rows].clone()
        _hand_over(total)
        return own


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate every rank's ``x`` along dim 0, keeping autograd; also return this rank's row offset.

    The backward pass sends each block's gradient, summed over the ranks whose losses used it, back to the
    rank that owns the block, so embeddings gathered as shared negatives are trained on their owner.
    Every rank must pass the same shape.

    Shape: ``x [n, *f]`` -> ``([world * n, *f], rank * n)``; the identity ``(x, 0)`` in one process.
    """
    if active_world() == 1:
        return x, 0
    return _GatherRows.apply(x), dist.get_rank() * x.shape[0]


def gather_ids(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (no gradient). Shape: ``[n, ...]`` -> ``[world * n, ...]``."""
    if active_world() == 1:
        return x
    return _all_gather_cat(x)


def _all_gather_cat(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dim 0 (collective buffers of its own, see :func:`_hand_over`)."""
    sent = x.detach().contiguous().clone()
    parts = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sent)
    out = torch.cat(parts, 0)
    _hand_over(sent, *parts)
    return out


def all_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over the ranks (a copy; the identity in one process). Shape preserved."""
    if active_world() == 1:
        return x
    total = x.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    out = total / dist.get_world_size()
    _hand_over(total)
    return out


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process).

    ``obj``: what ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, and lists, tuples
    and dicts of them). It travels in buffers of this module's own rather than torch's
    ``all_gather_object``'s, so that :func:`shutdown` can wait for their release.
    """
    if active_world() == 1:
        return [obj]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    stream = io.BytesIO()
    torch.save(obj, stream)
    payload = torch.frombuffer(bytearray(stream.getbuffer()), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    lengths = [int(n) for n in sizes]
    sent = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    sent[: payload.numel()] = payload
    parts = [torch.empty_like(sent) for _ in lengths]
    dist.all_gather(parts, sent)
    _hand_over(size, sent, *sizes, *parts)
    out = []
    for rank, (part, n) in enumerate(zip(parts, lengths, strict=True)):
        try:
            out.append(torch.load(io.BytesIO(part[:n].cpu().numpy().tobytes()), weights_only=True))
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            what = found.group(1) if found else "a type"
            raise TypeError(
                f"gather_objects: rank {rank}'s object holds {what}, which torch.load(weights_only=True) "
                "does not read back; send tensors, numbers, strings and containers of them"
            ) from exc
    return out


def barrier() -> None:
    if active_world() > 1:
        dist.barrier()


def user_block(users: np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's contiguous block of ``users [n]`` (``np.array_split`` order: sizes differ by at most 1)."""
    if not ctx.enabled:
        return users
    return np.array_split(users, ctx.world)[ctx.rank]


def check_divisible(name: str, value: int, ctx: DistContext) -> None:
    """A clear error when a per-step count cannot be split evenly over the ranks."""
    if ctx.enabled and value % ctx.world:
        raise ConfigError(
            f"{name}={value} must be divisible by the number of processes ({ctx.world}) to split it evenly "
            f"over the ranks; use a multiple of {ctx.world}"
        )


__all__ = [
    "DistContext",
    "SINGLE",
    "current",
    "init_from_env",
    "shutdown",
    "launched_by_torchrun",
    "trainer_device",
    "gather_with_grad",
    "gather_ids",
    "all_mean",
    "gather_objects",
    "barrier",
    "user_block",
    "check_divisible",
]

"""Memory pre-flight: estimate the largest tensors a run will hold and refuse a run that cannot fit.

A run that would exhaust memory should stop before training with one line naming the setting to lower, not
crash with an out-of-memory traceback at hour five. :func:`check_fits` (called by the trainer before it
moves anything to the device) compares :func:`estimate_memory` with :func:`available_memory_bytes` and
raises :class:`~recneg.errors.ConfigError`, e.g.::

    evaluation needs ~37.3 GiB for eval_chunk=100000 users × n_items=100000 scores (plus ~118 MiB held for
    the whole run) but ~15.2 GiB is available on cpu (a run plans for at most 80%); lower eval_chunk

What is counted (float32 = 4 bytes; ``B`` = batch size, ``d`` = embedding size, ``L+1`` = model layers):

- **model** (held for the whole run): parameters, their gradients and the optimiser's states (Adam: 2 per
  parameter, Adagrad: 1), plus the model's buffers (LightGCN's adjacency); rows already on the target device
  are not counted again (the available memory already excludes them);
- **sampler state** (whole run): the sampler's buffers and parameters (SRNS memory and score history,
  AdaSIR pools, …), likewise;
- **evaluation** (between epochs): the score block ``min(eval_chunk, n_users) × n_items × 4`` (ranking is
  chunked over users, :func:`recneg.eval.ranking.rank_topk`), its top-``K`` (values and ids), the transposed
  item table, the ranked lists of all users, and the propagated tables of a multi-layer model;
- **training step** (per batch): the sampler's candidate pool ``B × n_candidates × d × 4`` times ``L+1`` for
  per-layer samplers (MixGCF, ANS/DENS with per-layer selection), times the number of pool-sized
  temporaries the sampler builds (:data:`POOL_COPIES`, calibrated on CPU peak RSS: 1 for a no-grad top-k,
  24 for ANS's augmentation with autograd); for batch samplers the shared columns ``(B + n_uniform) × d``
  (in-batch, MNS) or ``n_negatives × d`` (corpus) and the ``B × n_columns`` logits (4 float copies: logits,
  masked, softmax, gradient) and bool mask; ``ann_hard``'s exact search scores ``B × n_items``; AdaSIR's
  epoch-start draws ``min(n_users, 4096) × sample_size × d``; a multi-layer model's propagation
  ``(L+1) × (n_users + n_items) × d`` with gradient. On CPU (MF, ``B = 4096``, 20k items) the estimates
  were within 0.9–1.1× of the measured peak for DNS, Softmax-v, PRIS, ANS, in-batch, MNS and ``ann_hard``
  (flat); with LightGCN they are up to ~2.5× above it (the propagation term is generous).

The run is refused when ``persistent + max(evaluation, step)`` exceeds :data:`SAFETY` of the available
memory (evaluation and training steps do not overlap). The estimates are deliberately simple (linear in
every setting, tested), within a small factor of the allocator's peak; set ``RECNEG_MEMORY_CHECK=0`` to skip
the check (e.g. when the estimate is wrong for a custom sampler; a sampler may also define
``step_bytes(batch_size, n_items, dim, n_layers) -> int`` to replace the generic estimate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from recneg.errors import ConfigError

#: share of the available memory a run may plan to use (the rest: allocator slack, fragmentation, Python)
SAFETY = 0.8
F32 = 4
I64 = 8

#: pool-sized temporaries a sampler builds per step (gathered rows, their gradient, per-candidate tensors);
#: any sampler not listed: 3 (rows with gradient + gradient + one temporary)
POOL_COPIES = {
    "dns": 1,
    "dns_mn": 1,
    "pdns": 1,
    "gdns": 1,
    "srns": 1,
    "mixgcf": 1,
    "dens": 3,
    "softmax_v": 5,
    "pris": 5,
    "adasir": 5,
    "ans": 24,
}
#: users scored at once by the per-epoch refreshes of samplers/hard.py (``_CHUNK``)
EPOCH_CHUNK = 4096
#: samplers that draw a separate pool of ``n_candidates`` for each of ``n_negatives`` negatives
POOL_PER_NEGATIVE = {"mixgcf", "dens"}


# ------------------------------------------------------------------------------------------ available
def _cgroup_limit_bytes() -> int | None:
    """Memory left under this process's cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_path) as fh:
                raw = fh.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 "unlimited"
                return None
            with open(usage_path) as fh:
                usage = int(fh.read().strip())
            return max(limit - usage, 0)
        except (OSError, ValueError):
            continue
    return None


def _meminfo_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def available_memory_bytes(device: str | torch.device = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can still get; ``None`` when unknown (then nothing is checked).

    - CPU: ``MemAvailable`` of ``/proc/meminfo`` (fallback ``os.sysconf`` available pages), capped by the
      room left under a cgroup memory limit (containers);
    - CUDA: free device memory (``torch.cuda.mem_get_info``) plus what torch's caching allocator holds
      reserved but unused (this process can reuse it).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(cached, 0))
    if dev.type == "cpu":
        avail = _meminfo_available_bytes()
        limit = _cgroup_limit_bytes()
        if avail is None:
            return limit
        return avail if limit is None else min(avail, limit)
    return None


def format_bytes(n: float) -> str:
    """``~1.5 GiB`` / ``~12 MiB`` / ``~3 KiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size or unit == "KiB":
            value = n / size
            return f"~{value:.1f} {unit}" if value < 100 else f"~{value:,.0f} {unit}"
    return f"~{n} B"  # pragma: no cover


# ------------------------------------------------------------------------------------------ estimates
@dataclass(frozen=True)
class Need:
    """One memory requirement: its size, what it is made of, and the setting that controls it.

    Attributes:
        what: ``"model"``, ``"sampler state"``, ``"evaluation"`` or ``"training step"``.
        bytes: the estimate.
        detail: the sizes it is made of, e.g. ``"eval_chunk=1024 users × n_items=50000 scores"``.
        lower: the setting(s) to lower, e.g. ``"eval_chunk"``.
    """

    what: str
    bytes: int
    detail: str
    lower: str


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run holds: persistent needs (model, sampler state) plus the larger transient one."""

    model: Need
    sampler_state: Need
    evaluation: Need
    step: Need
    indexes: int = 0  #: membership indexes of the split's parts (:func:`index_bytes`)

    @property
    def persistent(self) -> int:
        return self.model.bytes + self.sampler_state.bytes + self.indexes

    @property
    def peak(self) -> int:
        return self.persistent + max(self.evaluation.bytes, self.step.bytes)


def eval_bytes(
    n_items: int,
    eval_chunk: int,
    k: int = 50,
    n_users: int | None = None,
    dim: int = 0,
    deterministic_ties: bool = False,
) -> int:
    """Bytes of full-ranking evaluation (:func:`recneg.eval.ranking.rank_topk`), chunked over users.

    ``c = min(eval_chunk, n_users)`` users are scored at once: ``c × n_items`` float32 scores, their top-``k``
    (float32 values + int64 ids), a full sort (values + int64 ids) with ``deterministic_ties``, the
    transposed item table ``n_items × dim``, and the ranked lists ``n_users × k`` int64 plus hit flags.
    """
    c = int(eval_chunk) if n_users is None else min(int(eval_chunk), max(int(n_users), 1))
    total = c * n_items * F32 + c * k * (F32 + I64) + n_items * dim * F32
    if deterministic_ties:
        total += c * n_items * (F32 + I64)
    if n_users is not None:
        total += n_users * k * (I64 + 1)
    return int(total)


def pool_bytes(batch_size: int, n_candidates: int, dim: int, n_layers: int = 1, copies: int = 1) -> int:
    """``B × n_candidates × d × 4`` bytes of candidate embeddings, ``× (L+1)`` per layer, ``× copies``."""
    return int(batch_size * n_candidates * dim * F32 * n_layers * copies)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _count_bytes(tensors, device: torch.device) -> int:
    """Bytes of ``tensors`` that are not already on ``device`` (those count in the available memory)."""
    return sum(t.numel() * t.element_size() for t in tensors if not _same_device(t.device, device))


def model_layers(model) -> int:
    """``L + 1``: layers the model exposes (LightGCN ``n_layers + 1``; MF and two-tower 1)."""
    n = getattr(getattr(model, "config", None), "n_layers", None)
    return int(n) + 1 if isinstance(n, int) and n >= 0 else 1


def model_dim(model) -> int:
    """Embedding size ``d`` the samplers see (``config.dim``, or a two-tower's last hidden size)."""
    cfg = getattr(model, "config", None)
    dim = getattr(cfg, "dim", None)
    if isinstance(dim, int):
        return dim
    hidden = getattr(cfg, "hidden", None)
    if hidden:
        return int(hidden[-1])
    return int(getattr(cfg, "id_dim", 64))


def model_bytes(model, optimizer: str = "adam", device: torch.device | str = "cpu") -> Need:
    """Parameters (if not yet on ``device``), gradients and optimiser states, and buffers of ``model``."""
    device = torch.device(device)
    params = [p for p in model.parameters()]
    n_param_bytes = sum(p.numel() * p.element_size() for p in params)
    # sparse_adam: + a scratch; online_sgd: no state and no gradient (the kernel writes the rows in place)
    states = {"adam": 2, "adagrad": 1, "sparse_adam": 3, "online_sgd": -1}.get(optimizer, 2)
    total = _count_bytes(params, device) + _count_bytes(list(model.buffers()), device)
    total += n_param_bytes * (1 + states)  # gradient + optimiser states, always new
    n_users = getattr(model, "n_users", "?")
    n_items = getattr(model, "n_items", "?")
    return Need(
        "model",
        int(total),
        f"its tables (n_users={n_users}, n_items={n_items}, d={model_dim(model)}) with gradients and "
        f"{optimizer} states",
        "dim",
    )


def sampler_state_bytes(sampler, device: torch.device | str = "cpu") -> Need:
    """Buffers and parameters of a (bound) sampler not yet on ``device``, plus gradients/optimiser states."""
    device = torch.device(device)
    params = list(sampler.parameters())
    total = _count_bytes(params + list(sampler.buffers()), device)
    total += sum(p.numel() * p.element_size() for p in params) * 3
    name = getattr(sampler, "registry_name", type(sampler).__name__)
    knobs = [f for f in ("memory_size", "pool_size", "history") if hasattr(sampler.config, f)]
    return Need("sampler state", int(total), f"sampler {name!r} state", " or ".join(knobs))


def _uses_layers(sampler) -> bool:
    cfg = sampler.config
    name = getattr(sampler, "registry_name", "")
    return (
        bool(sampler.needs_layers)
        or getattr(cfg, "selection", None) in ("auto", "per_layer")
        or (name == "dens")
    )


def estimate_step_bytes(
    sampler, batch_size: int, n_items: int, dim: int, n_layers: int = 1, n_users: int = 0
) -> Need:
    """Per-step memory of ``sampler`` (see the module docstring); linear in batch size and pool sizes.

    Args:
        sampler: a sampler (its ``config`` fields are read: ``n_candidates``, ``n_negatives``,
            ``n_uniform``, ``memory_size``, …).
        batch_size: ``B``; n_items: catalogue size; dim: ``d``; n_layers: the model's ``L + 1``;
        n_users: users (for a multi-layer model's propagation).
    """
    from recneg.samplers.batch import InBatchSampler, UniformCorpusSampler

    cfg = sampler.config
    name = getattr(sampler, "registry_name", type(sampler).__name__)
    b = int(batch_size)
    propagation = 0
    if n_layers > 1:  # LightGCN propagates every row once per step, with gradient
        propagation = 2 * n_layers * (n_users + n_items) * dim * F32
    custom = getattr(sampler, "step_bytes", None)
    if callable(custom):
        return Need(
            "training step",
            int(custom(b, n_items, dim, n_layers)) + propagation,
            f"sampler {name!r}",
            "batch_size",
        )
    if isinstance(sampler, (InBatchSampler, UniformCorpusSampler)):
        if isinstance(sampler, InBatchSampler):
            n_uniform = int(getattr(cfg, "n_uniform", 0))
            cols = b + n_uniform
            detail = f"(batch_size={b} + n_uniform={n_uniform}) shared columns × d={dim}"
            lower = "n_uniform or batch_size" if hasattr(cfg, "n_uniform") else "batch_size"
        else:
            cols = int(cfg.n_negatives)
            detail = f"n_negatives={cols} shared columns × d={dim} and batch_size={b} rows of logits"
            lower = "n_negatives or batch_size"
        columns = cols * dim * F32 * 2  # embeddings + gradient
        logits = b * (cols + 1) * (4 * F32 + 1)  # logits, masked copy, softmax, gradient; bool mask
        return Need(
            "training step", int(columns + logits + propagation), f"{detail} of sampler {name!r}", lower
        )
    count_fields = ("n_candidates", "n_negatives", "memory_size", "pool_size")
    field_name = next((f for f in count_fields if isinstance(getattr(cfg, f, None), int)), None)
    n_cand = int(getattr(cfg, field_name)) if field_name else 1
    factors = [f"batch_size={b}", f"{field_name}={n_cand}" if field_name else "1 candidate"]
    if name in POOL_PER_NEGATIVE and isinstance(getattr(cfg, "n_negatives", None), int):
        n_cand *= int(cfg.n_negatives)
        factors.append(f"n_negatives={cfg.n_negatives}")
    if name == "srns":
        n_cand *= 1 + int(getattr(cfg, "fresh_ratio", 0))
        factors.append(f"(1 + fresh_ratio={cfg.fresh_ratio})")
    layers = n_layers if _uses_layers(sampler) else 1
    factors.append(f"d={dim}")
    if layers > 1:
        factors.append(f"L+1={layers}")
    total = pool_bytes(b, n_cand, dim, layers, POOL_COPIES.get(name, 3))
    lower = f"{field_name} or batch_size" if field_name else "batch_size"
    detail = " × ".join(factors) + f" candidate embeddings of sampler {name!r}"
    if isinstance(getattr(cfg, "sample_size", None), int) and n_users:  # AdaSIR: per-epoch pool refresh
        users = min(EPOCH_CHUNK, n_users)
        refresh = users * int(cfg.sample_size) * (dim + 4) * F32
        if refresh > total:
            total = refresh
            detail = (
                f"min(n_users, {EPOCH_CHUNK})={users} users × sample_size={cfg.sample_size} × d={dim} "
                f"epoch-start draws of sampler {name!r}"
            )
            lower = "sample_size"
    if name == "ann_hard" and (cfg.index == "flat" or not _faiss()):
        total = b * n_items * F32 + b * int(cfg.n_candidates) * (3 * F32 + I64)
        detail = f"batch_size={b} × n_items={n_items} exact search scores of sampler {name!r}"
        lower = "batch_size (or use index='hnsw' with faiss)"
    return Need("training step", int(total + propagation), detail, lower)


def _faiss() -> bool:
    try:
        from recneg.retrieval import faiss_available

        return faiss_available()
    except ImportError:  # pragma: no cover
        return False


def index_bytes(parts, device: torch.device | str = "cpu") -> int:
    """Membership indexes (:class:`~recneg.data.interactions.PositiveIndex`) a run builds for ``parts``.

    Per part not yet indexed on ``device``: sorted keys, CSR arrays and degrees (int64) plus the membership
    bitmap of ``n_users × n_items`` bits (at most ``PositiveIndex.bitmap_max_bytes``), which the samplers
    (train) and the evaluation (valid, test) build on first use and keep.
    """
    from recneg.data.interactions import PositiveIndex

    device = torch.device(device)
    total = 0
    for part in parts:
        if part is None:
            continue
        bitmap = (part.n_users * part.n_items + 7) // 8
        bitmap = bitmap if bitmap <= PositiveIndex.bitmap_max_bytes else 0
        cached = getattr(part, "_device_cache", {}).get(str(device))
        if cached is None:
            nnz = int(part.csr.nnz)
            total += nnz * I64 * 2 + part.n_users * I64 * 2 + bitmap
        elif cached._bits is None:
            total += bitmap
    return int(total)


def estimate_memory(model, sampler, split, config, device="cpu") -> MemoryEstimate:
    """All four needs of a run on ``split`` with ``config`` (a :class:`~recneg.config.TrainConfig`).

    The membership indexes of the split's parts (:func:`index_bytes`) count as persistent too.
    """
    device = torch.device(device)
    n_users, n_items = split.n_users, split.n_items
    dim = model_dim(model)
    layers = model_layers(model)
    k = max(config.topk)
    ev = eval_bytes(n_items, config.eval_chunk, k, n_users, dim)
    if layers > 1:  # model.tables() propagates all rows once
        ev += layers * (n_users + n_items) * dim * F32
    c = min(config.eval_chunk, max(n_users, 1))
    evaluation = Need(
        "evaluation",
        ev,
        f"eval_chunk={config.eval_chunk} users × n_items={n_items} scores"
        if c == config.eval_chunk
        else f"{c} users (all; eval_chunk={config.eval_chunk}) × n_items={n_items} scores",
        "eval_chunk",
    )
    return MemoryEstimate(
        indexes=index_bytes([split.train, split.valid, split.test], device),
        model=model_bytes(model, config.optimizer, device),
        sampler_state=sampler_state_bytes(sampler, device),
        evaluation=evaluation,
        step=estimate_step_bytes(sampler, config.batch_size, n_items, dim, layers, n_users),
    )


def check_fits(model, sampler, split, config, device="cpu", available: int | None = None) -> MemoryEstimate:
    """Raise a one-line :class:`ConfigError` naming the setting to lower when the run cannot fit.

    Args:
        model, sampler: the run's components (the sampler bound); split: its data; config: ``TrainConfig``.
        device: where the run will hold its tensors.
        available: bytes available (default :func:`available_memory_bytes` of ``device``).

    Returns:
        The :class:`MemoryEstimate` (also when the available memory is unknown or the check is off).
    """
    device = torch.device(device)
    est = estimate_memory(model, sampler, split, config, device)
    if os.environ.get("RECNEG_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "off", "no"):
        return est
    avail = available if available is not None else available_memory_bytes(device)
    if avail is None:
        return est
    budget = SAFETY * avail
    where = f"{format_bytes(avail)} is available on {device} (a run plans for at most {SAFETY:.0%})"
    persistent = est.persistent
    if persistent > budget:  # name the larger of the two held for the whole run that a setting controls
        tunable = [n for n in (est.model, est.sampler_state) if n.lower]
        need = max(tunable, key=lambda n: n.bytes)
        held = (
            f" ({format_bytes(persistent)} in all with the sampler state and membership indexes)"
            if persistent > need.bytes
            else ""
        )
        raise ConfigError(
            f"the {need.what} needs {format_bytes(need.bytes)} for {need.detail}{held} but {where}; "
            f"lower {need.lower}"
        )
    for need in sorted((est.evaluation, est.step), key=lambda n: -n.bytes):
        if persistent + need.bytes > budget:
            held = (
                f" (plus {format_bytes(persistent)} held for the whole run)" if persistent >= 1 << 20 else ""
            )
            verb = "needs" if need.what == "evaluation" else "needs per step"
            raise ConfigError(
                f"{need.what} {verb} {format_bytes(need.bytes)} for {need.detail}{held} but {where}; "
                f"lower {need.lower}"
            )
    return est


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (CUDA ``OutOfMemoryError``, CPU allocator failure)."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    if isinstance(exc, (RuntimeError, MemoryError)):
        msg = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in msg or "can't allocate memory" in msg
    return False


__all__ = [
    "MemoryEstimate",
    "Need",
    "available_memory_bytes",
    "check_fits",
    "estimate_memory",
    "estimate_step_bytes",
    "eval_bytes",
    "index_bytes",
    "is_out_of_memory",
    "pool_bytes",
]

"""Optimisers, including the row-sparse ones that update only the embedding rows a batch touched.

``make_optimizer(name, params, lr, weight_decay)`` builds one of :data:`OPTIMIZERS`:

- ``adam``, ``adagrad``: torch's, fused where the device supports it. With dense gradients every step
  reads and writes every row of every table (and backward allocates and zero-fills a dense gradient per
  gather), which dominates an MF step on CPU.
- ``sparse_adam``: :class:`LazyAdam` over row-sparse gradients (the model gathers rows with
  ``F.embedding(..., sparse=True)``; see :func:`use_sparse_gradients`). Semantics, versus dense Adam:

  1. rows absent from the batch do not move and their moments do not decay (dense Adam keeps moving
     such a row by its decaying first moment ``m``);
  2. bias correction uses the parameter's global step count ``t`` (the number of optimiser steps), not a
     per-row count, as ``torch.optim.SparseAdam`` does;
  3. a row gathered several times in one batch gets the sum of its gradients, as with dense Adam;
  4. ``weight_decay`` is refused (it would decay only the batch's rows); regularise with ``reg`` (R1),
     which already acts on the batch's rows only.

  Dense gradients (a sampler's own parameters, or a table a sampler reads whole) get the ordinary Adam
  update in the same optimiser.
- ``online_sgd``: :class:`OnlineSGD`, the original BPR algorithm (Rendle et al. 2009, LearnBPR; also what
  the ``implicit`` library runs): one plain SGD update per training pair, pairs one after another in the
  shuffled order, each on the gradient of that pair's own term ``f_b`` of the objective (the batch's mean
  loss is ``(1/B) Σ_b f_b``; see :func:`recneg.kernels._online_sgd_bpr`). ``batch_size`` only sets how many
  pairs the sampler draws for at once: the sampler scores with the tables as they were at the start of
  the batch, and the updates then run pair by pair. It runs in the compiled MF step (numba, CPU: in order
  on one thread or with ``deterministic=True``, Hogwild on several) and needs what that step needs: MF, a
  sampler of real item rows, BPR or soft BPR with ``reduction="mean"``, the R1 regulariser. Its ``lr`` is a
  per-pair step (0.05-0.2 trained MF well on Gowalla and ml-100k), not Adam's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from recneg.errors import ConfigError

#: optimisers ``TrainConfig.optimizer`` accepts; those in :data:`SPARSE_OPTIMIZERS` need row-sparse gradients
OPTIMIZERS = ("adam", "adagrad", "sparse_adam", "online_sgd")
SPARSE_OPTIMIZERS = ("sparse_adam", "online_sgd")


def _group_of(optimizer: torch.optim.Optimizer, p: Tensor) -> dict:
    """The parameter group of ``optimizer`` that holds ``p``; a ``ConfigError`` if none does."""
    for group in optimizer.param_groups:
        if any(q is p for q in group["params"]):
            return group
    raise ConfigError(
        f"{type(optimizer).__name__}: a parameter of shape {tuple(p.shape)} is not among its parameters"
    )


#: flags of :class:`torch.optim.Adam` that the compiled MF step does not implement
_ADAM_FLAGS_NOT_COMPILED = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")


def compiled_adam_blocker(optimizer: torch.optim.Optimizer | None, params: list[Tensor]) -> str | None:
    """Why the compiled MF step cannot apply ``optimizer``'s dense Adam update to ``params``, or ``None``.

    It implements plain :class:`torch.optim.Adam` (with or without ``weight_decay``, fused or not), whose
    state it reads and writes as Adam's own ``step`` does, so the two paths can alternate and resume.
    """
    if type(optimizer) is not torch.optim.Adam:
        return f"optimizer {type(optimizer).__name__} (only torch.optim.Adam)"
    for p in params:
        group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
        if group is None:
            return f"a table of shape {tuple(p.shape)} is not among the optimiser's parameters"
        flags = [f for f in _ADAM_FLAGS_NOT_COMPILED if group.get(f)]
        if flags:
            return f"Adam with {', '.join(flags)}"
        if isinstance(group["lr"], Tensor):
            return "Adam with a tensor lr"
    return None


def adam_advance(optimizer: torch.optim.Adam, p: Tensor, group: dict) -> tuple[Tensor, Tensor, float, float]:
    """Start a :class:`torch.optim.Adam` step of ``p`` outside ``optimizer.step()``, on its own state.

    Creates the state as Adam does on first use (``step`` a float32 scalar tensor, on ``p``'s device when
    fused), counts the step ``t`` and returns ``(exp_avg, exp_avg_sq, lr / (1 − β1^t), sqrt(1 − β2^t))``.
    """
    state = optimizer.state[p]
    if not state:
        if group.get("fused") or group.get("capturable"):
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        else:
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=dtype)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    t = float(state["step"])
    beta1, beta2 = group["betas"]
    return state["exp_avg"], state["exp_avg_sq"], group["lr"] / (1.0 - beta1**t), math.sqrt(1.0 - beta2**t)


class _PerParameterOptimizer(torch.optim.Optimizer):
    """An optimiser whose step is ``_update(p, p.grad, group)`` for each parameter that has a gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class LazyAdam(_PerParameterOptimizer):
    """Adam that updates, for a row-sparse gradient, only the gathered rows and their moments.

    For a parameter ``P [n, *f]`` whose gradient is a sparse COO tensor with row indices ``r [nnz]``
    (duplicates allowed, uncoalesced) and values ``G [nnz, *f]``, one step with ``t`` = this parameter's
    step count does, for every distinct row ``k`` of ``r`` with summed gradient ``g_k``::

        m_k ← β1 m_k + (1 − β1) g_k
        v_k ← β2 v_k + (1 − β2) g_k²
        P_k ← P_k − lr · (m_k / (1 − β1^t)) / (sqrt(v_k / (1 − β2^t)) + ε)

    Duplicates are summed through a persistent scratch table and every copy of a row then writes the same
    value, so the step needs no ``unique`` / ``coalesce`` and makes no host↔device synchronisation.
    Dense gradients get the same formulas on every row (plain Adam without weight decay).

    Args:
        params: parameters or parameter groups.
        lr: learning rate; ``betas``, ``eps`` as in :class:`torch.optim.Adam`.
    """

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        if not lr > 0:
            raise ConfigError(f"lr of LazyAdam must be > 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError(f"betas of LazyAdam must lie in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ConfigError(f"eps of LazyAdam must be >= 0, got {eps!r}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self._scratch: dict[int, Tensor] = {}  # per-parameter gradient sums; all zeros between steps

    def group_of(self, p: Tensor) -> dict:
        """The parameter group that holds ``p``."""
        return _group_of(self, p)

    def advance(self, p: Tensor, group: dict) -> tuple[Tensor, Tensor, float, float]:
        """Start a step of ``p``: moments ``(m, v)``, ``step_size = lr / (1 − β1^t)``, ``sqrt(1 − β2^t)``.

        Creates the state on first use and counts the step (``t``); the compiled kernel
        (:mod:`recneg.kernels`) calls it too, so both paths keep the same state and bias corrections.
        """
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] = int(state["step"]) + 1
        beta1, beta2 = group["betas"]
        t = state["step"]
        return (
            state["exp_avg"],
            state["exp_avg_sq"],
            group["lr"] / (1.0 - beta1**t),
            math.sqrt(1.0 - beta2**t),
        )

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        m, v, step_size, sqrt_bc2 = self.advance(p, group)
        if not grad.is_sparse:
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            p.addcdiv_(m, (v.sqrt() / sqrt_bc2).add_(group["eps"]), value=-step_size)
            return
        if grad.sparse_dim() != 1:
            raise ConfigError(
                f"LazyAdam: a sparse gradient must index rows only (sparse_dim 1), got sparse_dim "
                f"{grad.sparse_dim()} for a parameter of shape {tuple(p.shape)}"
            )
        rows, values = grad._indices()[0], grad._values()
        total = self._scratch.get(id(p))
        if total is None or total.shape != p.shape:
            total = self._scratch[id(p)] = torch.zeros_like(p)
        total.index_add_(0, rows, values)
        g = total.index_select(0, rows)  # every copy of a row holds that row's summed gradient
        total.index_fill_(0, rows, 0.0)
        m_rows = m.index_select(0, rows).mul_(beta1).add_(g, alpha=1.0 - beta1)
        v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)
        p_rows = p.index_select(0, rows).addcdiv_(
            m_rows, (v_rows.sqrt_() / sqrt_bc2).add_(group["eps"]), value=-step_size
        )
        p.index_copy_(0, rows, p_rows)


class OnlineSGD(_PerParameterOptimizer):
    """SGD that the compiled MF step applies pair by pair (``online_sgd``; see the module docstring).

    The trainer's :class:`~recneg.fused_step.FusedMFStep` updates the MF tables itself, one pair at a time,
    with this optimiser's ``lr``; :meth:`step` is plain SGD ``P ← P − lr · grad`` for any gradient it is
    handed (dense or row-sparse), so the optimiser is also correct where a caller drives it by hand.

    Args:
        params: parameters or parameter groups; lr: the step of one pair's gradient.
    """

    def __init__(self, params, lr: float = 0.05):
        if not lr > 0:
            raise ConfigError(f"lr of OnlineSGD must be > 0, got {lr!r}")
        super().__init__(params, {"lr": lr})

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:
        p.add_(grad, alpha=-group["lr"])

    def lr_of(self, p: Tensor) -> float:
        """The ``lr`` of the group that holds ``p``."""
        return float(_group_of(self, p)["lr"])


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``params``.

    Adam and Adagrad are fused (one kernel over all parameters) where torch supports it: the same
    algorithm; on a 2-core CPU it cut the optimiser step on Gowalla-sized MF tables from ~45 ms to ~8 ms.
    ``sparse_adam`` is :class:`LazyAdam`, ``online_sgd`` :class:`OnlineSGD`; both refuse ``weight_decay > 0``.
    """
    params = list(params)
    if name in SPARSE_OPTIMIZERS:
        if weight_decay:
            raise ConfigError(
                f"weight_decay must be 0 with optimizer {name} (it would decay only the batch's rows), "
                f"got {weight_decay:g}; use reg (R1, on the batch's rows) instead"
            )
        return LazyAdam(params, lr=lr) if name == "sparse_adam" else OnlineSGD(params, lr=lr)
    classes = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
    if name not in classes:
        raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    cls = classes[name]
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # device or dtype without a fused kernel
        return cls(params, lr=lr, weight_decay=weight_decay)


def use_sparse_gradients(model, optimizer: str) -> None:
    """Switch ``model`` to row-sparse gradients when ``optimizer`` needs them; a clear error if it cannot.

    A model opts in with ``supports_sparse_gradients = True`` and reads ``sparse_gradients`` when it gathers.
    """
    if optimizer not in SPARSE_OPTIMIZERS:
        return
    if not getattr(model, "supports_sparse_gradients", False):
        raise ConfigError(
            f"optimizer {optimizer} needs a model whose gradient touches only the batch's rows (mf); "
            f"{type(model).__name__} spreads it over whole tables: use optimizer adam"
        )
    model.sparse_gradients = True


__all__ = [
    "adam_advance",
    "compiled_adam_blocker",
    "LazyAdam",
    "OnlineSGD",
    "OPTIMIZERS",
    "SPARSE_OPTIMIZERS",
    "make_optimizer",
    "use_sparse_gradients",
]

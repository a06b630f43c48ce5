"""Compiled CPU kernels (numba) for the MF step with lazy Adam: one pass over the batch, no temporaries.

On CPU an MF-BPR step in tensor operations is bound by memory traffic, not arithmetic: every operation
writes a fresh ``[B, d]`` (or ``[B, n, d]``) tensor, and the lazy-Adam update gathers and scatters the
batch's rows of the table and of both moments. The kernels here walk the batch once instead:

1. ``accumulate_bpr_gradients`` reads ``e_u, e_i, e_j`` of each pair, adds the gradients of (soft) BPR
   and R1 (the formulas of :mod:`recneg.fused_step`) into persistent zeroed scratch tables, and lists
   each distinct touched row once;
2. ``lazy_adam_rows`` applies :class:`~recneg.optim.LazyAdam`'s update to those rows, with the
   gradient summed over a row's occurrences, and zeroes the scratch rows again.

The result is LazyAdam's step to float rounding (``tests/test_fused_step.py`` checks it).
numba is optional (``pip install recneg[fast]``) and imported on first
use; without it :data:`AVAILABLE` is False and the tensor paths run (same maths).
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import numpy as np
import torch

#: whether the compiled kernels can run (numba is installed); numba itself is imported on first use
AVAILABLE = importlib.util.find_spec("numba") is not None
numba: Any = None  # the module, once :func:`compiled` has imported it
_COMPILED: dict[str, Any] = {}


def compiled(name: str) -> Any:
    """The numba-compiled kernel ``name`` (compiled, or loaded from numba's cache, on first use).

    Its threads follow torch's (``TrainConfig.threads``), within the pool numba launched on first use
    (``NUMBA_NUM_THREADS``, by default torch's thread count at that moment).
    """
    global numba
    if not _COMPILED:
        # numba launches its thread pool once, at import: size it to torch's threads (TrainConfig.threads).
        # A pool larger than the threads used leaves idle workers spinning between kernels, and on a busy
        # machine they take the core the step needs (measured: 60 ms instead of 2 ms a step).
        os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, torch.get_num_threads())))
        import numba as _numba

        numba = _numba
        jit = numba.njit(cache=True, nogil=True, parallel=True)
        _COMPILED.update(
            accumulate_bpr_gradients=jit(_accumulate_bpr_gradients),
            lazy_adam_rows=jit(_lazy_adam_rows),
        )
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return _COMPILED[name]


def _accumulate_bpr_gradients(
    user_table,
    item_table,
    user_grad,
    item_grad,
    user_seen,
    item_seen,
    user_rows,
    item_rows,
    users,
    pos,
    negs,
    weight,
    has_weight,
    beta,
    scale,
    lam,
    n_parts,
):
    """Gradients of ``scale · Σ_b Σ_j w_bj softplus(β (r_bj − r_b⁺)) + R1`` into the scratch tables.

    Shapes: ``user_table [n_u, d]``, ``item_table [n_i, d]`` (read only); ``user_grad``, ``item_grad`` same
    shapes, zero on entry; ``*_seen`` uint8 flags, zero on entry; ``user_rows [B]``, ``item_rows [B (1 + n)]``
    receive the distinct touched rows; ``users, pos [B]``, ``negs [B, n]`` int64; ``weight [B, n]`` (read
    when ``has_weight``, else ``1/n``); ``lam`` = λ / B. Three passes: the pair coefficients
    ``g_bj = ∂L/∂r_bj`` (parallel over pairs, tables read only), then the row gradients, each row owned by one
    of ``n_parts`` workers (``row % n_parts``) that adds its terms in batch order: no write conflicts, and
    the same sums for any number of threads. Returns ``(loss, number of user rows, number of item rows)``.
    """
    batch, n = negs.shape
    dim = user_table.shape[1]
    coef = np.empty((batch, n), dtype=np.float32)
    coef_sum = np.empty(batch, dtype=np.float32)
    row_loss = np.empty(batch, dtype=np.float64)
    for b in numba.prange(batch):
        u = users[b]
        i = pos[b]
        pos_score = np.float32(0.0)
        sq_u = np.float32(0.0)
        sq_i = np.float32(0.0)
        for k in range(dim):
            pos_score += user_table[u, k] * item_table[i, k]
            sq_u += user_table[u, k] * user_table[u, k]
            sq_i += item_table[i, k] * item_table[i, k]
        total = 0.0
        g_sum = np.float32(0.0)
        reg_neg = 0.0
        for c in range(n):
            j = negs[b, c]
            w = weight[b, c] if has_weight else np.float32(1.0 / n)
            neg_score = np.float32(0.0)
            sq = np.float32(0.0)
            for k in range(dim):
                neg_score += user_table[u, k] * item_table[j, k]
                sq += item_table[j, k] * item_table[j, k]
            z = beta * (neg_score - pos_score)
            total += scale * w * (max(z, 0.0) + math.log1p(math.exp(-abs(z))))  # softplus(z)
            g = np.float32(scale * w * beta / (1.0 + math.exp(-z)))  # ∂L/∂r_bj
            coef[b, c] = g
            g_sum += g
            reg_neg += w * sq
        coef_sum[b] = g_sum
        row_loss[b] = total + 0.5 * lam * (sq_u + sq_i + reg_neg)
    lam32 = np.float32(lam)
    for part in numba.prange(n_parts):
        for b in range(batch):
            u = users[b]
            i = pos[b]
            if u % n_parts == part:  # ∂L/∂e_u = Σ_j g_bj e_j − (Σ_j g_bj) e_i + (λ/B) e_u
                for c in range(n):
                    j = negs[b, c]
                    g = coef[b, c]
                    for k in range(dim):
                        user_grad[u, k] += g * item_table[j, k]
                g_sum = coef_sum[b]
                for k in range(dim):
                    user_grad[u, k] += lam32 * user_table[u, k] - g_sum * item_table[i, k]
            if i % n_parts == part:  # ∂L/∂e_i = −(Σ_j g_bj) e_u + (λ/B) e_i
                g_sum = coef_sum[b]
                for k in range(dim):
                    item_grad[i, k] += lam32 * item_table[i, k] - g_sum * user_table[u, k]
            for c in range(n):  # ∂L/∂e_j = g_bj e_u + (λ/B) w_bj e_j
                j = negs[b, c]
                if j % n_parts == part:
                    g = coef[b, c]
                    lw = lam32 * (weight[b, c] if has_weight else np.float32(1.0 / n))
                    for k in range(dim):
                        item_grad[j, k] += g * user_table[u, k] + lw * item_table[j, k]
    n_user_rows = 0
    n_item_rows = 0
    for b in range(batch):
        u = users[b]
        if user_seen[u] == 0:
            user_seen[u] = 1
            user_rows[n_user_rows] = u
            n_user_rows += 1
        i = pos[b]
        if item_seen[i] == 0:
            item_seen[i] = 1
            item_rows[n_item_rows] = i
            n_item_rows += 1
        for c in range(n):
            j = negs[b, c]
            if item_seen[j] == 0:
                item_seen[j] = 1
                item_rows[n_item_rows] = j
                n_item_rows += 1
    return row_loss.sum(), n_user_rows, n_item_rows


def _lazy_adam_rows(
    table, grad, exp_avg, exp_avg_sq, seen, rows, n_rows, step_size, beta1, beta2, sqrt_bc2, eps
):
    """LazyAdam on ``rows[:n_rows]`` of ``table`` with gradient ``grad``; then zero those grad rows and flags.

    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
    ``P ← P − step_size · m / (sqrt(v) / sqrt_bc2 + ε)`` with ``step_size = lr / (1 − β1^t)`` and
    ``sqrt_bc2 = sqrt(1 − β2^t)``; in float32, as torch does. The rows are distinct: parallel over rows.
    """
    dim = table.shape[1]
    b1, b2 = np.float32(beta1), np.float32(beta2)
    c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    size, bc2, eps32 = np.float32(step_size), np.float32(sqrt_bc2), np.float32(eps)
    for r in numba.prange(n_rows):
        row = rows[r]
        for k in range(dim):
            g = grad[row, k]
            m = b1 * exp_avg[row, k] + c1 * g
            v = b2 * exp_avg_sq[row, k] + c2 * g * g
            exp_avg[row, k] = m
            exp_avg_sq[row, k] = v
            table[row, k] -= size * m / (np.sqrt(v) / bc2 + eps32)
            grad[row, k] = 0.0
        seen[row] = 0


class LazyAdamBPRKernel:
    """Scratch state of the compiled MF + (soft) BPR + R1 + lazy-Adam step for one pair of tables.

    Holds zeroed gradient tables and row flags the size of the two tables (the memory of one more copy of
    the model), allocated once.
    """

    def __init__(self, n_users: int, n_items: int, dim: int):
        self.user_grad = np.zeros((n_users, dim), dtype=np.float32)
        self.item_grad = np.zeros((n_items, dim), dtype=np.float32)
        self.user_seen = np.zeros(n_users, dtype=np.uint8)
        self.item_seen = np.zeros(n_items, dtype=np.uint8)

    @staticmethod
    def warm_up() -> None:
        """Compile both kernels for the types :meth:`step` passes (float32 tables, int64 ids) on tiny inputs.

        Raises whatever numba raises when it cannot compile here; the caller then keeps the tensor path.
        """
        table = np.zeros((2, 2), dtype=np.float32)
        ids = np.zeros(1, dtype=np.int64)
        kernel = LazyAdamBPRKernel(2, 2, 2)
        state = [(np.zeros_like(table), np.zeros_like(table), 1e-3, 1.0) for _ in range(2)]
        for weight in (None, np.ones((1, 1), dtype=np.float32)):
            kernel.step(
                table,
                table.copy(),
                ids,
                ids,
                ids.reshape(1, 1),
                weight,
                1.0,
                1.0,
                0.0,
                state,
                0.9,
                0.999,
                1e-8,
            )

    def step(
        self,
        user_table: np.ndarray,
        item_table: np.ndarray,
        users: np.ndarray,
        pos: np.ndarray,
        negs: np.ndarray,
        weight: np.ndarray | None,
        beta: float,
        scale: float,
        lam: float,
        adam: list[tuple[np.ndarray, np.ndarray, float, float]],
        beta1: float,
        beta2: float,
        eps: float,
    ) -> float:
        """One step; ``adam`` = ``[(exp_avg, exp_avg_sq, step_size, sqrt_bc2)]`` for users, then items.

        Returns the batch loss (the same scalar as the tensor path).
        """
        accumulate_bpr_gradients = compiled("accumulate_bpr_gradients")
        lazy_adam_rows = compiled("lazy_adam_rows")
        user_rows = np.empty(len(users), dtype=np.int64)
        item_rows = np.empty(negs.size + len(pos), dtype=np.int64)
        w = weight if weight is not None else np.empty((1, 1), dtype=np.float32)
        loss, n_user_rows, n_item_rows = accumulate_bpr_gradients(
            user_table,
            item_table,
            self.user_grad,
            self.item_grad,
            self.user_seen,
            self.item_seen,
            user_rows,
            item_rows,
            users,
            pos,
            negs,
            w,
            weight is not None,
            beta,
            scale,
            lam,
            numba.get_num_threads(),
        )
        for table, grad, seen, rows, n_rows, (m, v, step_size, sqrt_bc2) in (
            (user_table, self.user_grad, self.user_seen, user_rows, n_user_rows, adam[0]),
            (item_table, self.item_grad, self.item_seen, item_rows, n_item_rows, adam[1]),
        ):
            lazy_adam_rows(table, grad, m, v, seen, rows, n_rows, step_size, beta1, beta2, sqrt_bc2, eps)
        return float(loss)


__all__ = ["AVAILABLE", "LazyAdamBPRKernel", "compiled"]

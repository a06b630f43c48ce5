"""Compiled CPU kernels (numba): the MF step's gradients and Adam update, online SGD, candidate scores.

On CPU an MF-BPR step in tensor operations is bound by memory traffic, not arithmetic: every operation
writes a fresh ``[B, d]`` (or ``[B, n, d]``) tensor, and the lazy-Adam update gathers and scatters the
batch's rows of the table and of both moments. The kernels here walk the batch once instead:

1. ``accumulate_bpr_gradients`` reads ``e_u, e_i, e_j`` of each pair, adds the gradients of (soft) BPR
   and R1 (the formulas of :mod:`recneg.fused_step`) into persistent zeroed scratch tables, and lists
   each distinct touched row once;
2. ``lazy_adam_rows`` applies :class:`~recneg.optim.LazyAdam`'s update to those rows, with the
   gradient summed over a row's occurrences, and zeroes the scratch rows again; or ``dense_adam_table``
   applies :class:`torch.optim.Adam`'s update to every row of the table (``g = 0`` on rows the batch did not
   touch, plus ``weight_decay · P`` on all), reading the scratch only for touched rows; or, with
   :class:`DeferredAdam` (what the trainer uses), ``adam_touched_rows`` applies dense Adam's step to the
   touched rows only, after ``adam_catch_up`` has brought them up to date: the other rows' zero-gradient
   steps are replayed when something reads them (``adam_catch_up``) or at the end of an epoch
   (``adam_flush``).

The result is LazyAdam's, or dense Adam's, step to float rounding (``tests/test_fused_step.py`` checks
both). The dense pass reads and writes the table and both moments once (6 floats a parameter), where
torch's fused Adam also reads a dense gradient that the step first had to zero and fill (7, plus the
fill); docs/performance.md has the timings.
numba is optional (``pip install recneg[fast]``) and imported on first
use; without it :data:`AVAILABLE` is False and the tensor paths run (same maths).

``online_sgd_bpr`` is the ``online_sgd`` optimiser (:class:`~recneg.optim.OnlineSGD`): Rendle et al.'s
LearnBPR, one SGD update per pair, in batch order, on the rows in place (``tests/test_online_sgd.py``
checks it against a plain reference written pair by pair). It has no tensor path: without numba the
trainer refuses ``online_sgd`` with a ``ConfigError``.

``score_rows`` scores candidate rows for the samplers (:func:`recneg.models.base.score_rows`), reading the
table's rows in place instead of gathering them; ``bitmap_contains`` tests candidates against the training
positives (:meth:`recneg.data.interactions.PositiveIndex.contains`); ``check_and_score`` does both in one
pass (:func:`recneg.samplers.base.scored_uniform_pool`), and ``row_max`` keeps DNS's top candidate.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import threading
import warnings
from typing import Any, NamedTuple

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
        # If numba was imported already, its pool size is settled: setting the variable now would make
        # numba's next compilation re-read it and refuse a pool that differs from the one it launched.
        if "numba" not in sys.modules:
            os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, torch.get_num_threads())))
        import numba as _numba

        numba = _numba
        jit = numba.njit(cache=True, nogil=True, parallel=True)
        # online SGD is sequential (one pair after another); reassociating the 64-term dot products lets
        # them vectorise (0.32 -> 0.19 s for Gowalla's 810 k pairs, one thread). No nnan/ninf: a diverging
        # run must still show its NaN loss.
        fast = {"reassoc", "contract"}
        block = numba.njit(cache=True, nogil=True, fastmath=fast)(_online_sgd_block)
        globals()["_online_sgd_block"] = block  # what the compiled _online_sgd_bpr calls
        # inlined into the kernels that call them: as separate functions their loops stay scalar (5x slower)
        inline = numba.njit(cache=True, nogil=True, inline="always")
        globals()["_prefetch"] = _make_prefetch()
        helpers = ("_adam_constants", "_adam_element", "_replay_row_in_closed_form", "_replay_row")
        for helper in ("_prefetch_row", "_row_dot", "_spmm_row", *helpers):  # called by the kernels below
            globals()[helper] = inline(globals()[helper])
        _COMPILED.update(
            # its 64-term dot products vectorise when they may reassociate (as online SGD's)
            accumulate_bpr_gradients=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(
                _accumulate_bpr_gradients
            ),
            lazy_adam_rows=jit(_lazy_adam_rows),
            dense_adam_table=jit(_dense_adam_table),
            adam_catch_up=jit(_adam_catch_up),
            adam_flush=jit(_adam_flush),
            adam_touched_rows=jit(_adam_touched_rows),
            record_step=numba.njit(cache=True, nogil=True)(_record_step),
            score_rows=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(_score_rows),
            bitmap_contains=jit(_bitmap_contains),
            check_and_score=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(
                _check_and_score
            ),
            row_max=jit(_row_max),
            csr_spmm=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(_csr_spmm),
            csr_spmm_64=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(_csr_spmm_64),
            online_sgd_bpr=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(_online_sgd_bpr),
        )
        from recneg import ans_kernels  # ANS's auxiliary losses (its own module: they are ANS's alone)

        ans_kernels.numba = numba
        ans_kernels._sigmoid = inline(ans_kernels._sigmoid)
        _COMPILED.update(
            ans_aux_forward=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(
                ans_kernels._aux_forward
            ),
            ans_aux_backward=numba.njit(cache=True, nogil=True, parallel=True, fastmath=fast)(
                ans_kernels._aux_backward
            ),
        )
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    caller = threading.get_ident()  # numba's setting is per calling thread
    if _THREADS_SET.get(caller) != threads:
        numba.set_num_threads(threads)
        _THREADS_SET[caller] = threads
    return _COMPILED[name]


def _make_prefetch():
    """``prefetch(array, i, j)``: a hint that the cache line holding ``array[i, j]`` will be read soon
    (LLVM's ``llvm.prefetch``; no effect on results, none on an address outside the array either: a
    prefetch never faults).

    The kernels here read rows at random (a batch's rows, candidates): each row is a cache miss, and a
    core waits on one at a time unless told of the next ones early.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def codegen(context, builder, signature, args):
        aryty, index_types = signature.args[0], signature.args[1:]
        view = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, i, t, types.intp) for i, t in zip(args[1:], index_types, strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, aryty, view, idx, wraparound=False)
        i32, byte_ptr = ir.IntType(32), ir.IntType(8).as_pointer()
        ptr = builder.bitcast(ptr, byte_ptr)  # one declaration serves arrays of every type
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0"
        )
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # a read, kept in every cache level, of data
        return context.get_dummy_value()

    @intrinsic
    def prefetch(typingctx, array, i, j):
        return types.void(array, i, j), codegen

    return prefetch


def _prefetch(array, i, j):
    """Placeholder until :func:`compiled` installs the compiled hint (:func:`_make_prefetch`)."""


def _prefetch_row(table, row):
    """Prefetch every cache line of ``table[row]`` (a C-contiguous float32 row: 16 floats a line)."""
    for k in range(0, table.shape[1], 16):
        _prefetch(table, row, k)


#: calling thread -> the numba thread count last set from it (set_num_threads costs ~6 µs a call)
_THREADS_SET: dict[int, int] = {}


#: kernel name -> whether it ran on tiny inputs here (see :func:`ready`)
_READY: dict[str, bool] = {}


def _warm_up_ans_aux() -> None:
    from recneg import ans_kernels

    ans_kernels.warm_up()


def ready(name: str) -> bool:
    """Whether the helper kernel ``name`` (``score_rows``, ``bitmap_contains``, ``check_and_score``,
    ``row_max``, ``csr_spmm``: its two kernels, ``ans_aux``: both of :mod:`recneg.ans_kernels`) can run here.

    numba compiles on first call; :func:`ready` makes that first call once, on tiny inputs of the types the
    callers pass. If numba is missing, False; if it cannot compile here, one ``RuntimeWarning`` and False
    for good: the callers then take their tensor paths (same results).
    """
    if name not in _READY:
        if not AVAILABLE:
            return False
        f32, i64 = np.zeros((1, 1), dtype=np.float32), np.zeros((1, 1), dtype=np.int64)
        warm_ups = {
            "score_rows": lambda: score_rows(f32, f32.copy(), i64),
            "bitmap_contains": lambda: bitmap_contains(np.zeros(1, dtype=np.uint8), i64[0], i64, 1, 1),
            "check_and_score": lambda: check_and_score(
                np.zeros(1, dtype=np.uint8), i64[0], i64, f32, f32.copy(), 1
            ),
            "row_max": lambda: row_max(f32, i64),
            "csr_spmm": lambda: [  # the general kernel and d = 64's
                csr_spmm(np.arange(2), i64[0], f32[0], np.zeros((1, d), dtype=np.float32)) for d in (1, 64)
            ],
            "ans_aux": _warm_up_ans_aux,
        }
        try:
            warm_ups[name]()
            _READY[name] = True
        except Exception as exc:  # numba's errors have no common base; any failure means "not here"
            _READY[name] = False
            warnings.warn(
                f"the compiled kernel {name} could not be built here ({type(exc).__name__}: {exc}); the "
                f"tensor path runs instead (same results)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _READY[name]


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
    the same sums for any number of threads. Returns ``(loss, number of user rows, number of item rows)``,
    or ``(0, -1, -1)`` when an id lies outside its table (nothing is written then).
    """
    batch, n = negs.shape
    dim = user_table.shape[1]
    n_users, n_items = user_table.shape[0], item_table.shape[0]
    for b in range(batch):  # ids are read unsigned below (numba then vectorises the row loops): check them
        if users[b] < 0 or users[b] >= n_users or pos[b] < 0 or pos[b] >= n_items:
            return 0.0, -1, -1
        for c in range(n):
            if negs[b, c] < 0 or negs[b, c] >= n_items:
                return 0.0, -1, -1
    coef = np.empty((batch, n), dtype=np.float32)
    coef_sum = np.empty(batch, dtype=np.float32)
    row_loss = np.empty(batch, dtype=np.float64)
    for b in numba.prange(batch):
        if b + PREFETCH_ROWS_AHEAD < batch:  # the rows of a pair a few places on
            ahead = b + PREFETCH_ROWS_AHEAD
            _prefetch_row(user_table, np.uint64(users[ahead]))
            _prefetch_row(item_table, np.uint64(pos[ahead]))
            for c in range(n):
                _prefetch_row(item_table, np.uint64(negs[ahead, c]))
        u = np.uint64(users[b])
        i = np.uint64(pos[b])
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
            j = np.uint64(negs[b, c])
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
            if b + PREFETCH_ROWS_AHEAD < batch:  # the gradient rows this part will add to a few pairs on
                ahead = b + PREFETCH_ROWS_AHEAD
                if users[ahead] % n_parts == part:
                    _prefetch_row(user_grad, np.uint64(users[ahead]))
                if pos[ahead] % n_parts == part:
                    _prefetch_row(item_grad, np.uint64(pos[ahead]))
                for c in range(n):
                    if negs[ahead, c] % n_parts == part:
                        _prefetch_row(item_grad, np.uint64(negs[ahead, c]))
            u = np.uint64(users[b])
            i = np.uint64(pos[b])
            if users[b] % n_parts == part:  # ∂L/∂e_u = Σ_j g_bj e_j − (Σ_j g_bj) e_i + (λ/B) e_u
                for c in range(n):
                    j = np.uint64(negs[b, c])
                    g = coef[b, c]
                    for k in range(dim):
                        user_grad[u, k] += g * item_table[j, k]
                g_sum = coef_sum[b]
                for k in range(dim):
                    user_grad[u, k] += lam32 * user_table[u, k] - g_sum * item_table[i, k]
            if pos[b] % n_parts == part:  # ∂L/∂e_i = −(Σ_j g_bj) e_u + (λ/B) e_i
                g_sum = coef_sum[b]
                for k in range(dim):
                    item_grad[i, k] += lam32 * item_table[i, k] - g_sum * user_table[u, k]
            for c in range(n):  # ∂L/∂e_j = g_bj e_u + (λ/B) w_bj e_j
                j = np.uint64(negs[b, c])
                if negs[b, c] % n_parts == part:
                    g = coef[b, c]
                    lw = lam32 * (weight[b, c] if has_weight else np.float32(1.0 / n))
                    for k in range(dim):
                        item_grad[j, k] += g * user_table[u, k] + lw * item_table[j, k]
    n_user_rows = 0
    n_item_rows = 0
    for b in range(batch):
        u = np.uint64(users[b])
        if user_seen[u] == 0:
            user_seen[u] = 1
            user_rows[n_user_rows] = u
            n_user_rows += 1
        i = np.uint64(pos[b])
        if item_seen[i] == 0:
            item_seen[i] = 1
            item_rows[n_item_rows] = i
            n_item_rows += 1
        for c in range(n):
            j = np.uint64(negs[b, c])
            if item_seen[j] == 0:
                item_seen[j] = 1
                item_rows[n_item_rows] = j
                n_item_rows += 1
    return row_loss.sum(), n_user_rows, n_item_rows


def _adam_constants(step_size, beta1, beta2, sqrt_bc2, eps):
    """One step's scalars in float32, as torch applies them: ``(β1, β2, 1 − β1, 1 − β2, lr / (1 − β1^t),
    sqrt(1 − β2^t), ε)``, for :func:`_adam_element`."""
    return (
        np.float32(beta1),
        np.float32(beta2),
        np.float32(1.0 - beta1),
        np.float32(1.0 - beta2),
        np.float32(step_size),
        np.float32(sqrt_bc2),
        np.float32(eps),
    )


def _adam_element(table, exp_avg, exp_avg_sq, row, k, p, g, constants):
    """Adam's update of parameter ``table[row, k]`` (value ``p``, gradient ``g``) and its moments:
    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
    ``P ← P − step_size · m / (sqrt(v) / sqrt_bc2 + ε)``, in float32 and torch's order of operations.
    Inlined into every Adam kernel (numba vectorises it there)."""
    b1, b2, c1, c2, size, bc2, eps32 = constants
    m = b1 * exp_avg[row, k] + c1 * g
    v = b2 * exp_avg_sq[row, k] + c2 * g * g
    exp_avg[row, k] = m
    exp_avg_sq[row, k] = v
    table[row, k] = p - size * m / (np.sqrt(v) / bc2 + eps32)


def _lazy_adam_rows(
    table, grad, exp_avg, exp_avg_sq, seen, rows, n_rows, step_size, beta1, beta2, sqrt_bc2, eps
):
    """LazyAdam on ``rows[:n_rows]`` of ``table`` with gradient ``grad``; then zero those grad rows and flags.

    ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
    ``P ← P − step_size · m / (sqrt(v) / sqrt_bc2 + ε)`` with ``step_size = lr / (1 − β1^t)`` and
    ``sqrt_bc2 = sqrt(1 − β2^t)``; in float32, as torch does. The rows are distinct: parallel over rows.
    """
    dim = table.shape[1]
    constants = _adam_constants(step_size, beta1, beta2, sqrt_bc2, eps)
    for r in numba.prange(n_rows):
        row = np.uint64(rows[r])  # rows from the gradient kernel's list: in range
        for k in range(dim):
            _adam_element(table, exp_avg, exp_avg_sq, row, k, table[row, k], grad[row, k], constants)
            grad[row, k] = 0.0
        seen[row] = 0


def _dense_adam_table(
    table, grad, exp_avg, exp_avg_sq, seen, step_size, beta1, beta2, sqrt_bc2, eps, weight_decay
):
    """Dense Adam (:class:`torch.optim.Adam`) on every row of ``table``; then zero the touched grad rows.

    The gradient of row ``r`` is ``grad[r]`` where ``seen[r]`` (the batch touched it), else 0; plus
    ``weight_decay · P_r`` (Adam's L2 term) on every row. Then ``m ← β1 m + (1 − β1) g``,
    ``v ← β2 v + (1 − β2) g²``, ``P ← P − step_size · m / (sqrt(v) / sqrt_bc2 + ε)``, in float32.
    Shapes: ``table, grad, exp_avg, exp_avg_sq [n, d]``; ``seen [n]`` uint8 (reset to 0). Parallel over rows.
    """
    n_rows, dim = table.shape
    constants = _adam_constants(step_size, beta1, beta2, sqrt_bc2, eps)
    wd = np.float32(weight_decay)
    for row in numba.prange(n_rows):
        touched = seen[row] != 0
        for k in range(dim):
            p = table[row, k]
            g = wd * p
            if touched:
                g += grad[row, k]
                grad[row, k] = 0.0
            _adam_element(table, exp_avg, exp_avg_sq, row, k, p, g, constants)
        if touched:
            seen[row] = 0


#: how many rows (candidates, pairs) ahead the random-access kernels prefetch (:func:`_make_prefetch`)
PREFETCH_AHEAD = 8
#: how many rows ahead the Adam kernels prefetch a row with its moments (three or four arrays a row)
PREFETCH_ROWS_AHEAD = 4

#: rows per parallel block of the replay kernels (each block allocates its scratch once)
_REPLAY_BLOCK = 64

#: rows fewer steps behind are replayed step by step: once cheaper for one or two steps (a 1-step flush
#: 0.94 ms step by step, 1.40 ms in closed form); since the closed form's branch-free loop the two are
#: level there (4 096 random ids 1 or 2 steps behind: 0.68-0.75 against 0.71-0.75 ms, 0.53 against 0.53)
CLOSED_FORM_MIN_STEPS = 3

#: terms of the series in ``u = ε / sqrt(v)`` that sums a row's zero-gradient steps in closed form
SERIES_TERMS = 8
#: the closed form is taken when ``u ≤ SERIES_LIMIT`` at every step it sums: the first term left out is
#: then at most ``SERIES_LIMIT ** SERIES_TERMS`` = 1e-8 of the sum, below float32's rounding (6e-8)
SERIES_LIMIT = 0.1


def _replay_row_in_closed_form(arrays, constants, row, first, last, pending):
    """Dense Adam's zero-gradient steps ``first … last`` on ``row``, each parameter moved once, with
    ``weight_decay = 0``; a parameter for which the series below converges too slowly is replayed step by
    step instead. Returns 1 when some parameter was, else 0.

    With gradient 0 the moments only decay: after ``j`` steps ``m = β1^j m₀`` and
    ``sqrt(v) = q^j σ`` (``q = sqrt(β2)``, ``σ = sqrt(v₀)``). Step ``τ = first − 1 + j`` moves the parameter
    by ``a_τ b_τ β1^j m₀ / (q^j σ + ε b_τ)`` (``a_τ = lr / (1 − β1^τ)``, ``b_τ = sqrt(1 − β2^τ)``), and with
    ``u = ε / σ`` that is ``(m₀ / σ) Σ_n (−u)^n a_τ b_τ^(n+1) ρ_n^j``, ``ρ_n = β1 / q^(n+1)``. Summed over the
    steps, the parameter moves by ``(m₀ / σ) Σ_n (−u)^n S_n`` where ``S_n = series[n, first − offset]``
    (:class:`DeferredAdam` keeps these sums per starting step, and ``decays[:, k] = (β1^k, β2^k,
    (ε / (SERIES_LIMIT q^k))²)``). The series converges when
    ``ε b_τ / (q^j σ) < 1``; it is used for a parameter when that is ≤ :data:`SERIES_LIMIT` at every step
    (parameters with ``m₀ = 0`` do not move). Then ``m ← β1^k m₀``, ``v ← β2^k v₀``: the result of the
    ``k`` steps to float rounding, in O(d) instead of O(k d). ``pending [d]`` is float32 scratch.
    A row whose moments are all zero (no batch has touched it yet) is left as it is, unwritten.
    Returns -1, with nothing done, when more than an eighth of the row's parameters would need the step
    by step replay (early in training, when ``v`` is still small): the caller then replays the whole row,
    which vectorises.
    """
    table, exp_avg, exp_avg_sq = arrays
    sizes, bc2s, offset, beta1, beta2, eps, series, decays = constants
    dim = table.shape[1]
    n_steps = last - first + 1
    # ε b_τ / (q^j σ) ≤ LIMIT at every step (b_τ ≤ 1, q^j ≥ q^k)  ⇐  v₀ ≥ (ε / (LIMIT q^k))² = v_limit
    decay1, decay2 = np.float32(decays[0, n_steps]), np.float32(decays[1, n_steps])
    v_limit = np.float32(decays[2, n_steps])
    col = first - offset
    s0, s1, s2, s3 = series[0, col], series[1, col], series[2, col], series[3, col]
    s4, s5, s6, s7 = series[4, col], series[5, col], series[6, col], series[7, col]
    s0, s1, s2, s3 = np.float32(s0), np.float32(s1), np.float32(s2), np.float32(s3)
    s4, s5, s6, s7 = np.float32(s4), np.float32(s5), np.float32(s6), np.float32(s7)
    eps32 = np.float32(eps)
    n_slow = 0
    n_moments = 0
    for k in range(dim):  # branch-free: vectorised
        m, v = exp_avg[row, k], exp_avg_sq[row, k]
        n_slow += 1 if (m != 0.0) & (v < v_limit) else 0
        n_moments += 1 if (m != 0.0) | (v != 0.0) else 0
    if n_moments == 0:  # no batch has touched the row yet: its steps leave it as it is (no writes)
        return 0
    if n_slow * 8 > dim:  # early in training: the whole row step by step, vectorised, is cheaper
        return -1
    if n_slow == 0:  # the usual case: every moving parameter in closed form, in one branch-free loop
        tiny = np.float32(1e-30)  # (a parameter with m = 0 does not move; its 1/sqrt(v) is not used)
        for k in range(dim):
            m, v = exp_avg[row, k], exp_avg_sq[row, k]
            inv_root = np.float32(1.0) / np.sqrt(max(v, tiny))
            u = eps32 * inv_root
            total = s0 - u * (s1 - u * (s2 - u * (s3 - u * (s4 - u * (s5 - u * (s6 - u * s7))))))
            p = table[row, k]
            table[row, k] = p - m * inv_root * total if m != 0.0 else p
            exp_avg[row, k] = m * decay1
            exp_avg_sq[row, k] = v * decay2
        return 0
    n_pending = 0
    for k in range(dim):
        m, v = exp_avg[row, k], exp_avg_sq[row, k]
        moves = m != 0.0
        if moves and v >= v_limit:
            inv_root = np.float32(1.0) / np.sqrt(v)
            u = eps32 * inv_root
            total = s0 - u * (s1 - u * (s2 - u * (s3 - u * (s4 - u * (s5 - u * (s6 - u * s7))))))
            table[row, k] = table[row, k] - m * inv_root * total
        if moves and v < v_limit:
            pending[k] = 1.0
            n_pending += 1
        else:
            pending[k] = 0.0
            exp_avg[row, k] = m * decay1
            exp_avg_sq[row, k] = v * decay2
    if n_pending == 0:
        return 0
    b1, b2, sqrt_b2_32 = np.float32(beta1), np.float32(beta2), np.float32(math.sqrt(beta2))
    for k in range(dim):
        if pending[k] != 0.0:
            root = np.sqrt(exp_avg_sq[row, k])
            for s in range(first, last + 1):
                size, bc2 = sizes[s - offset], bc2s[s - offset]
                m = b1 * exp_avg[row, k]
                exp_avg[row, k] = m
                exp_avg_sq[row, k] = b2 * exp_avg_sq[row, k]
                root = root * sqrt_b2_32
                table[row, k] = table[row, k] - size * bc2 * m / (root + eps32 * bc2)
    return 1


def _replay_row(arrays, constants, row, first, last, scratch):
    """Dense Adam's steps ``first … last`` with no batch gradient on ``row`` (in place, in float32).

    ``arrays = (table, exp_avg, exp_avg_sq)``,
    ``constants = (sizes, bc2s, offset, beta1, beta2, eps, wd, series, decays)``. Step ``s`` uses
    ``sizes[s − offset]`` (``lr / (1 − β1^s)`` at that step) and ``bc2s[s − offset]`` (``sqrt(1 − β2^s)``).
    With ``wd = 0`` the gradient is 0 and the steps are summed in closed form
    (:func:`_replay_row_in_closed_form`, ``series`` from :class:`DeferredAdam`) when there are at least
    :data:`CLOSED_FORM_MIN_STEPS`, or replayed one by one: when there are fewer, or where the series
    converges too slowly for many of the row's parameters. With ``weight_decay > 0``
    the gradient is ``wd · P`` and each step is the dense update as written in :func:`_dense_adam_table`.
    ``scratch [d]`` float32 is allocated once per block of rows by the callers (an allocation per row cost
    as much as a step). Returns 1 when some parameter's steps were taken one by one, else 0.
    """
    table, exp_avg, exp_avg_sq = arrays
    sizes, bc2s, offset, beta1, beta2, eps, wd, series, decays = constants
    dim = table.shape[1]
    b1, b2 = np.float32(beta1), np.float32(beta2)
    c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    eps32, decay = np.float32(eps), np.float32(wd)
    if wd == 0.0:
        if last - first + 1 >= CLOSED_FORM_MIN_STEPS:
            closed_constants = (sizes, bc2s, offset, beta1, beta2, eps, series, decays)
            done = _replay_row_in_closed_form(arrays, closed_constants, row, first, last, scratch)
            if done >= 0:
                return done
        # one step at a time, ``m`` and ``v`` only decaying: ``sqrt(v)`` is carried as
        # ``sqrt(v_first−1) · sqrt(β2)^j`` and the bias correction folded into the step's two scalars
        sqrt_b2 = np.float32(math.sqrt(beta2))
        for k in range(dim):
            scratch[k] = np.sqrt(exp_avg_sq[row, k])
        for s in range(first, last + 1):
            # size · m / (root / bc2 + ε) as (size · bc2) · m / (root + ε · bc2): one division, not two
            size, bc2 = sizes[s - offset], bc2s[s - offset]
            scaled_size, scaled_eps = size * bc2, eps32 * bc2
            for k in range(dim):
                m = b1 * exp_avg[row, k]
                exp_avg[row, k] = m
                exp_avg_sq[row, k] = b2 * exp_avg_sq[row, k]
                scratch[k] = scratch[k] * sqrt_b2
                table[row, k] = table[row, k] - scaled_size * m / (scratch[k] + scaled_eps)
        return 1
    for s in range(first, last + 1):
        step_constants = (b1, b2, c1, c2, sizes[s - offset], bc2s[s - offset], eps32)
        for k in range(dim):
            p = table[row, k]
            _adam_element(table, exp_avg, exp_avg_sq, row, k, p, decay * p, step_constants)
    return 1


def _adam_catch_up(table, exp_avg, exp_avg_sq, synced, ids, upto, constants):
    """Bring the rows ``ids`` (any order, repeats allowed) of a deferred dense Adam up to step ``upto``.

    ``synced [n]`` int64 holds the step each row is at; rows behind get the steps they missed
    (:func:`_replay_row`, ``constants`` as it takes them), in parallel over the distinct rows. Returns
    ``(rows brought up to date, those whose steps were taken one by one)``, or ``(-1, 0)`` when an id lies
    outside ``[0, n)`` (nothing is changed then).
    """
    n_rows = table.shape[0]
    n_ids = ids.shape[0]
    for x in range(n_ids):
        if ids[x] < 0 or ids[x] >= n_rows:
            return -1, 0
    behind = np.zeros(n_rows, dtype=np.uint8)
    count = 0
    for x in range(n_ids):
        row = ids[x]
        if synced[row] < upto and behind[row] == 0:
            behind[row] = 1
            count += 1
    if count == 0:  # (the rows were read, and brought up to date, earlier in the step)
        return 0, 0
    rows = np.empty(count, dtype=np.int64)
    froms = np.empty(count, dtype=np.int64)
    listed = 0
    for row in range(n_rows):  # listed in row order: from memory, neighbouring rows come cheaper (-20-30 %)
        if behind[row]:
            rows[listed] = row
            froms[listed] = synced[row]
            synced[row] = upto
            listed += 1
    arrays = (table, exp_avg, exp_avg_sq)
    n_blocks = (count + _REPLAY_BLOCK - 1) // _REPLAY_BLOCK
    one_by_one = 0
    for block in numba.prange(n_blocks):
        root = np.empty(table.shape[1], dtype=np.float32)
        for r in range(block * _REPLAY_BLOCK, min(count, (block + 1) * _REPLAY_BLOCK)):
            if r + PREFETCH_ROWS_AHEAD < count:
                nxt = np.uint64(rows[r + PREFETCH_ROWS_AHEAD])
                _prefetch_row(table, nxt)
                _prefetch_row(exp_avg, nxt)
                _prefetch_row(exp_avg_sq, nxt)
            # an unsigned row lets numba drop negative-index handling: 6x faster here
            one_by_one += _replay_row(arrays, constants, np.uint64(rows[r]), froms[r] + 1, upto, root)
    return count, one_by_one


def _adam_flush(table, exp_avg, exp_avg_sq, synced, upto, constants):
    """Bring every row of a deferred dense Adam up to step ``upto``; parallel over rows. Returns
    ``(rows brought up to date, those whose steps were taken one by one)``."""
    n_rows = table.shape[0]
    arrays = (table, exp_avg, exp_avg_sq)
    n_blocks = (n_rows + _REPLAY_BLOCK - 1) // _REPLAY_BLOCK
    count = 0
    one_by_one = 0
    for block in numba.prange(n_blocks):
        root = np.empty(table.shape[1], dtype=np.float32)
        for row in range(block * _REPLAY_BLOCK, min(n_rows, (block + 1) * _REPLAY_BLOCK)):
            if synced[row] < upto:
                one_by_one += _replay_row(arrays, constants, np.uint64(row), synced[row] + 1, upto, root)
                synced[row] = upto
                count += 1
    return count, one_by_one


def _record_step(sizes, bc2s, series, powers, i, step_size, sqrt_bc2, with_series):
    """Store step ``offset + i``'s constants ``a_t = step_size``, ``b_t = sqrt_bc2`` at index ``i``; with
    ``with_series``, add its term to the sums of :class:`DeferredAdam`: ``S_n(s) += a_t b_t^(n+1) ρ_n^(t−s)``
    for every step ``s = offset − 1 … t − 1`` a row may be at (columns ``0 … i``), and start ``S_n(t) = 0``
    (column ``i + 1``). ``powers[n, j] = ρ_n^j``."""
    sizes[i] = step_size
    bc2s[i] = sqrt_bc2
    if not with_series:
        return
    n_starts = i + 1
    term = step_size
    for n in range(series.shape[0]):
        term *= sqrt_bc2
        for col in range(n_starts):
            series[n, col] += term * powers[n, n_starts - col]
        series[n, n_starts] = 0.0


def _adam_touched_rows(
    table,
    grad,
    exp_avg,
    exp_avg_sq,
    seen,
    rows,
    n_rows,
    step_size,
    beta1,
    beta2,
    sqrt_bc2,
    eps,
    wd,
    synced,
    step,
):
    """Dense Adam's step ``step`` on the batch's rows ``rows[:n_rows]`` (current at ``step − 1``) only.

    The update of :func:`_dense_adam_table` for a touched row (``g = wd · P + grad``); then the grad rows
    and flags are zeroed and ``synced[row] = step``. The other rows' step is left to :func:`_replay_row`.
    """
    dim = table.shape[1]
    constants = _adam_constants(step_size, beta1, beta2, sqrt_bc2, eps)
    decay = np.float32(wd)
    for r in numba.prange(n_rows):
        if r + PREFETCH_ROWS_AHEAD < n_rows:
            nxt = np.uint64(rows[r + PREFETCH_ROWS_AHEAD])
            _prefetch_row(table, nxt)
            _prefetch_row(grad, nxt)
            _prefetch_row(exp_avg, nxt)
            _prefetch_row(exp_avg_sq, nxt)
        row = np.uint64(rows[r])  # rows from the gradient kernel's list: in range
        for k in range(dim):
            p = table[row, k]
            g = decay * p
            g += grad[row, k]
            grad[row, k] = 0.0
            _adam_element(table, exp_avg, exp_avg_sq, row, k, p, g, constants)
        seen[row] = 0
        synced[row] = step


def _row_dot(user_emb, b, table, row):
    """``⟨user_emb[b], table[row]⟩`` in float32; inlined into the scorers, so both sum alike."""
    acc = np.float32(0.0)
    for k in range(table.shape[1]):
        acc += user_emb[b, k] * table[row, k]
    return acc


def _score_rows(table, user_emb, ids, out):
    """``out[b, c] = ⟨user_emb[b], table[ids[b, c]]⟩``, reading the rows in place; parallel over ``b``.

    Shapes: ``table [n, d]``, ``user_emb [B, d]`` float32, ``ids [B, c]`` int64, ``out [B, c]`` float32.
    Returns how many ids lie outside ``[0, n)`` (their scores are left unset).
    """
    batch, n_cand = ids.shape
    n_rows = table.shape[0]
    bad = 0
    for b in numba.prange(batch):
        for c in range(n_cand):
            ahead = c + PREFETCH_AHEAD  # the candidate PREFETCH_AHEAD places on, maybe in the next row
            nxt = -1  # (none when it lies beyond the next row: fewer candidates than PREFETCH_AHEAD)
            if ahead < n_cand:
                nxt = ids[b, ahead]
            elif b + 1 < batch and ahead - n_cand < n_cand:
                nxt = ids[b + 1, ahead - n_cand]
            if nxt >= 0 and nxt < n_rows:
                _prefetch_row(table, np.uint64(nxt))
            j = ids[b, c]
            if j < 0 or j >= n_rows:
                bad += 1
                continue
            out[b, c] = _row_dot(user_emb, b, table, np.uint64(j))
    return bad


def _check_and_score(bits, users, ids, user_emb, table, n_users, n_items, scores, hits):
    """:func:`_score_rows` and :func:`_bitmap_contains` of the same candidates in one pass.

    ``scores[b, c] = ⟨user_emb[b], table[ids[b, c]]⟩``; ``hits[b, c] = 1`` where the pair
    ``(users[b], ids[b, c])`` has its bit set in ``bits`` (``[1, n_bytes]``, the bitmap as one row, so that
    its bytes can be prefetched), else 0. Each candidate costs two reads at random (its bitmap byte, its
    row's cache lines); both are prefetched a few candidates ahead. Shapes: ``users [B]``, ``ids [B, c]``
    int64, ``user_emb [B, d]``, ``table [n_items, d]`` float32, ``scores [B, c]`` float32,
    ``hits [B, c]`` uint8. Returns how many pairs lie outside the id space ``n_users × n_items`` (left
    unset).
    """
    batch, n_cand = ids.shape
    bad = 0
    for b in numba.prange(batch):
        u = users[b]
        if u < 0 or u >= n_users:
            bad += n_cand
            continue
        for c in range(n_cand):
            ahead = c + PREFETCH_AHEAD  # as in _score_rows, with the owner of that candidate
            nxt = -1
            owner = u
            if ahead < n_cand:
                nxt = ids[b, ahead]
            elif b + 1 < batch and ahead - n_cand < n_cand:
                nxt = ids[b + 1, ahead - n_cand]
                owner = users[b + 1]
            if nxt >= 0 and nxt < n_items and owner >= 0 and owner < n_users:
                _prefetch_row(table, np.uint64(nxt))
                _prefetch(bits, 0, np.uint64((owner * n_items + nxt) >> 3))
            j = ids[b, c]
            if j < 0 or j >= n_items:
                bad += 1
                continue
            q = u * n_items + j
            hits[b, c] = (bits[0, q >> 3] >> (q & 7)) & 1
            scores[b, c] = _row_dot(user_emb, b, table, np.uint64(j))
    return bad


def check_and_score(
    bits: np.ndarray,
    users: np.ndarray,
    ids: np.ndarray,
    user_emb: np.ndarray,
    table: np.ndarray,
    n_users: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of candidates ``ids [B, c]`` (``[B, c]`` float32, as :func:`score_rows`) and whether each is a
    positive of its row's user in the pair bitmap ``bits`` (``[B, c]`` bool, as :func:`bitmap_contains`,
    with ``n_items = len(table)``), in one pass over the candidates.

    Raises ``IndexError`` for ids outside the id space.
    """
    n_items = table.shape[0]
    scores = np.empty(ids.shape, dtype=np.float32)
    hits = np.zeros(ids.shape, dtype=np.uint8)
    check = compiled("check_and_score")
    bad = check(bits.reshape(1, -1), users, ids, user_emb, table, n_users, n_items, scores, hits)
    if bad:
        raise IndexError(f"{bad} (user, candidate) pairs lie outside the id space {n_users} × {n_items}")
    return scores, hits.view(np.bool_)


def _row_max(scores, ids, best_id, best):
    """Per row of ``scores [B, c]``: the candidate ``ids [B, c]`` at the first index of its largest entry (of
    its first NaN, if any, as ``torch.max`` takes) into ``best_id [B]`` int64, and that entry into
    ``best [B]`` float32. Returns ``(Σ_b (max_b − min_b), Σ_b (max_b − mean_b))`` in float64 (DNS's pool
    statistics)."""
    batch, n_cand = scores.shape
    spread = 0.0
    gap = 0.0
    for b in numba.prange(batch):
        top = scores[b, 0]
        low = top
        total = np.float32(0.0)
        nan = False
        for c in range(n_cand):  # branch-free, so that it vectorises; the index is found below
            s = scores[b, c]
            total += s
            top = max(top, s)
            low = min(low, s)
            nan |= s != s
        at = 0
        for c in range(n_cand):
            s = scores[b, c]
            if (s != s) if nan else (s == top):
                at = c
                break
        top = scores[b, at]
        best_id[b] = ids[b, at]
        best[b] = top
        spread += top - low
        gap += top - total / n_cand
    return spread, gap


def row_max(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """What DNS keeps of its pool ``ids [B, c]`` (int64) with ``scores [B, c]`` (float32, ``c ≥ 1``), in one
    pass (:func:`_row_max`): ``(chosen ids [B] int64, their scores [B] float32, mean over rows of max − min,
    mean over rows of max − row mean)``."""
    best_id = np.empty(scores.shape[0], dtype=np.int64)
    best = np.empty(scores.shape[0], dtype=np.float32)
    spread, gap = compiled("row_max")(scores, ids, best_id, best)
    n = max(scores.shape[0], 1)
    return best_id, best, spread / n, gap / n


def score_rows(table: np.ndarray, user_emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``[B, c]`` scores of rows ``ids [B, c]`` of ``table [n, d]`` for ``user_emb [B, d]`` (float32).

    What a candidate scorer otherwise does as a gather of ``[B, c, d]`` rows and a batched product, without
    writing the gathered rows (16 MB for a DNS-32 batch on Gowalla). Raises ``IndexError`` for ids outside
    the table, as the gather would.
    """
    out = np.empty(ids.shape, dtype=np.float32)
    bad = compiled("score_rows")(table, user_emb, ids, out)
    if bad:
        raise IndexError(f"{bad} candidate ids lie outside the table's rows [0, {table.shape[0]})")
    return out


def _spmm_row(indptr, indices, data, x, row, acc):
    """``acc = Σ_k data[k] · x[indices[k]]`` over row ``row``'s non-zeros, in CSR order, prefetching the
    rows of ``x`` that the next ``PREFETCH_AHEAD`` non-zeros read. Inlined into the kernels below, so that
    an ``acc`` of constant length stays in registers."""
    nnz = indices.shape[0]
    for j in range(acc.shape[0]):
        acc[j] = 0.0
    for k in range(indptr[row], indptr[row + 1]):
        if k + PREFETCH_AHEAD < nnz:
            _prefetch_row(x, np.uint64(indices[k + PREFETCH_AHEAD]))
        c = indices[k]
        w = data[k]
        for j in range(acc.shape[0]):
            acc[j] += w * x[c, j]


def _csr_spmm(indptr, indices, data, x, out, bounds):
    """``out = A x`` for ``A`` in CSR (``indptr [n + 1]``, ``indices [nnz]`` int64 within ``[0, m)``,
    ``data [nnz]``) and ``x [m, d]``: rows ``bounds[t] .. bounds[t + 1]`` form task ``t`` (tasks of about
    equal non-zeros, split over the threads), each output row summed by one thread in CSR order, so the
    result does not depend on the thread count. No bounds checks: :func:`csr_spmm` checks the indices."""
    for t in numba.prange(bounds.shape[0] - 1):
        acc = np.zeros(x.shape[1], dtype=np.float32)
        for r in range(bounds[t], bounds[t + 1]):
            _spmm_row(indptr, indices, data, x, r, acc)
            for j in range(acc.shape[0]):
                out[r, j] = acc[j]


def _csr_spmm_64(indptr, indices, data, x, out, bounds):
    """:func:`_csr_spmm` for ``d = 64`` (the usual embedding size): the accumulator's constant length
    lets it live in registers (about 1.3-2x faster than the general kernel, measured on Gowalla and
    ml-100k)."""
    for t in numba.prange(bounds.shape[0] - 1):
        for r in range(bounds[t], bounds[t + 1]):
            acc = np.zeros(64, dtype=np.float32)
            _spmm_row(indptr, indices, data, x, r, acc)
            for j in range(64):
                out[r, j] = acc[j]


#: tasks a sparse product is split into (:func:`csr_spmm`), of about equal non-zeros
SPMM_TASKS = 256


def csr_spmm(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, x: np.ndarray, check: bool = True
) -> np.ndarray:
    """``A @ x`` for a CSR matrix ``A [n, m]`` (``indptr [n + 1]``, ``indices [nnz]`` int64, ``data [nnz]``
    float32) and a C-contiguous ``x [m, d]`` float32: ``[n, d]`` float32, in one parallel pass.

    LightGCN's propagation (:class:`recneg.models.lightgcn.LightGCN`): on Gowalla's ``Ã`` (1.6 M non-zeros,
    ``d = 64``) about twice as fast as torch's CSR product (``python -m benchmarks.spmm``). With ``check``,
    raises ``IndexError`` for a column index outside ``x``'s rows or an ``indptr`` that does not fit
    ``indices``; ``check=False`` is for a caller that built ``A`` itself (the kernel reads unchecked).
    """
    n = indptr.shape[0] - 1
    if check:
        if n < 0 or indptr[0] != 0 or indptr[-1] != indices.shape[0] or np.any(np.diff(indptr) < 0):
            raise IndexError(f"indptr of {n + 1} entries does not describe {indices.shape[0]} non-zeros")
        if indices.shape[0] and (indices.min() < 0 or indices.max() >= x.shape[0]):
            bad = int(np.count_nonzero((indices < 0) | (indices >= x.shape[0])))
            raise IndexError(f"{bad} column indices of the sparse matrix lie outside x's {x.shape[0]} rows")
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    targets = np.linspace(0, indptr[-1], SPMM_TASKS + 1)
    bounds = np.unique(np.searchsorted(indptr, targets).clip(0, n))
    bounds[0], bounds[-1] = 0, n
    kernel = "csr_spmm_64" if x.shape[1] == 64 else "csr_spmm"
    compiled(kernel)(indptr, indices, data, x, out, bounds.astype(np.int64))
    return out


def _bitmap_contains(bits, users, items, n_users, n_items, out):
    """``out[b, c] = 1`` where pair ``(users[b], items[b, c])`` has its bit set in ``bits``, else 0.

    ``bits`` packs the ``n_users × n_items`` pairs row-major, bit ``q & 7`` of byte ``q >> 3`` for
    ``q = u · n_items + i``. Shapes: ``users [B]``, ``items [B, c]`` int64, ``out [B, c]`` uint8. Returns how
    many pairs lie outside the id space (left unset).
    """
    batch, n_cand = items.shape
    bad = 0
    for b in numba.prange(batch):
        u = users[b]
        for c in range(n_cand):
            i = items[b, c]
            if u < 0 or u >= n_users or i < 0 or i >= n_items:
                bad += 1
                continue
            q = u * n_items + i
            out[b, c] = (bits[q >> 3] >> (q & 7)) & 1
    return bad


def bitmap_contains(bits: np.ndarray, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
    """Membership of the pairs ``(users[b], items[b, c])`` in a packed pair bitmap: ``[B, c]`` bool.

    One pass instead of the tensor path's five elementwise passes and a gather. Raises ``IndexError`` for
    ids outside the id space, as the gather would.
    """
    out = np.empty(items.shape, dtype=np.uint8)
    bad = compiled("bitmap_contains")(bits, users, items, n_users, n_items, out)
    if bad:
        raise IndexError(f"{bad} (user, item) pairs lie outside the id space {n_users} × {n_items}")
    return out.view(np.bool_)


def _online_sgd_bpr(user_table, item_table, users, pos, negs, weight, has_weight, beta, lr, lam, n_parts):
    """Online SGD on each pair's term of the (soft) BPR + R1 objective, pairs in batch order, rows in place.

    Pair ``b`` with rows ``e_u, e_i, e_j`` (``j`` over its ``n`` negatives, weights ``w_bj``, ``1/n`` unless
    ``has_weight``) has the term ``f_b = Σ_j w_bj softplus(β (r_bj − r_b⁺)) + (λ/2)(‖e_u‖² + ‖e_i‖² +
    Σ_j w_bj ‖e_j‖²)``; the batch's mean loss is ``(1/B) Σ_b f_b``. With ``g_j = w_bj β σ(β (r_bj − r_b⁺))``
    and ``G = Σ_j g_j``, all at the rows' values before the pair:

    - ``e_u ← e_u − lr (Σ_j g_j e_j − G e_i + λ e_u)``
    - ``e_i ← e_i − lr (−G e_u + λ e_i)``
    - then, negative by negative, ``e_j ← e_j − lr (g_j e_u + λ w_bj e_j)`` (a negative listed twice in a
      row gets its two updates in turn; its R1 term reads its current value).

    The batch is cut into ``n_parts`` contiguous blocks run by as many threads at once, each in order:
    with one part the run is sequential and deterministic; with more, threads update shared rows without
    locks (Hogwild!, Recht et al. 2011, as ``implicit`` does), and the result depends on their timing.

    Shapes: ``user_table [n_u, d]``, ``item_table [n_i, d]`` float32 (updated); ``users, pos [B]``,
    ``negs [B, n]`` int64; ``weight [B, n]`` float32. Returns ``Σ_b f_b`` (float64, before each update).
    """
    batch, n = negs.shape
    totals = np.zeros(n_parts, dtype=np.float64)
    for part in numba.prange(n_parts):
        totals[part] = _online_sgd_block(
            user_table,
            item_table,
            users,
            pos,
            negs,
            weight,
            has_weight,
            beta,
            lr,
            lam,
            part * batch // n_parts,
            (part + 1) * batch // n_parts,
        )
    return totals.sum()


def _online_sgd_block(
    user_table, item_table, users, pos, negs, weight, has_weight, beta, lr, lam, start, stop
):
    """Pairs ``start .. stop − 1`` of :func:`_online_sgd_bpr`, one after another; returns their ``Σ f_b``."""
    n = negs.shape[1]
    dim = user_table.shape[1]
    coef = np.empty(n, dtype=np.float32)
    lr32, lam32 = np.float32(lr), np.float32(lam)
    total = 0.0
    for b in range(start, stop):
        u = users[b]
        i = pos[b]
        pos_score = np.float32(0.0)
        sq = np.float32(0.0)  # ‖e_u‖² + ‖e_i‖²
        for k in range(dim):
            pos_score += user_table[u, k] * item_table[i, k]
            sq += user_table[u, k] * user_table[u, k] + item_table[i, k] * item_table[i, k]
        pair_loss = 0.5 * lam * sq
        g_sum = np.float32(0.0)
        for c in range(n):
            j = negs[b, c]
            w = weight[b, c] if has_weight else np.float32(1.0 / n)
            neg_score = np.float32(0.0)
            sq_j = np.float32(0.0)
            for k in range(dim):
                neg_score += user_table[u, k] * item_table[j, k]
                sq_j += item_table[j, k] * item_table[j, k]
            z = beta * (neg_score - pos_score)
            pair_loss += w * (max(z, 0.0) + math.log1p(math.exp(-abs(z))) + 0.5 * lam * sq_j)
            g = np.float32(w * beta / (1.0 + math.exp(-z)))
            coef[c] = g
            g_sum += g
        total += pair_loss
        if n == 1:  # one negative (uniform, DNS): the same update without the inner loops, which vectorises
            j = negs[b, 0]
            g = coef[0]
            lam_j = lam32 * (weight[b, 0] if has_weight else np.float32(1.0))
            for k in range(dim):
                e_u = user_table[u, k]
                e_i = item_table[i, k]
                e_j = item_table[j, k]
                user_table[u, k] = e_u - lr32 * (g * e_j - g * e_i + lam32 * e_u)
                item_table[i, k] = e_i - lr32 * (lam32 * e_i - g * e_u)
                item_table[j, k] = item_table[j, k] - lr32 * (g * e_u + lam_j * item_table[j, k])
            continue
        for k in range(dim):
            e_u = user_table[u, k]
            e_i = item_table[i, k]
            acc = np.float32(0.0)
            for c in range(n):
                acc += coef[c] * item_table[negs[b, c], k]
            user_table[u, k] = e_u - lr32 * (acc - g_sum * e_i + lam32 * e_u)
            item_table[i, k] = e_i - lr32 * (lam32 * e_i - g_sum * e_u)
            for c in range(n):
                j = negs[b, c]
                w = weight[b, c] if has_weight else np.float32(1.0 / n)
                e_j = item_table[j, k]
                item_table[j, k] = e_j - lr32 * (coef[c] * e_u + lam32 * w * e_j)
    return total


def online_sgd_bpr(
    user_table: np.ndarray,
    item_table: np.ndarray,
    users: np.ndarray,
    pos: np.ndarray,
    negs: np.ndarray,
    weight: np.ndarray | None,
    beta: float,
    lr: float,
    lam: float,
    n_parts: int = 1,
) -> float:
    """Run :func:`_online_sgd_bpr` compiled over one batch in ``n_parts`` blocks; returns ``Σ_b f_b``.

    ``n_parts`` (at most the batch size) is the number of blocks: 1 runs the pairs in order, deterministic;
    numba's threads (torch's, see :func:`compiled`) share the blocks out.
    """
    kernel = compiled("online_sgd_bpr")
    parts = max(1, min(int(n_parts), len(users)))
    w = weight if weight is not None else np.empty((1, 1), dtype=np.float32)
    return float(
        kernel(user_table, item_table, users, pos, negs, w, weight is not None, beta, lr, lam, parts)
    )


def warm_up_online_sgd() -> None:
    """Compile :func:`_online_sgd_bpr` for the types the trainer passes, on tiny inputs (may raise)."""
    table = np.zeros((2, 2), dtype=np.float32)
    ids = np.zeros(1, dtype=np.int64)
    for weight in (None, np.ones((1, 1), dtype=np.float32)):
        online_sgd_bpr(table, table.copy(), ids, ids, ids.reshape(1, 1), weight, 1.0, 0.0, 0.0)


class AdamState(NamedTuple):
    """One table's Adam step as the kernel takes it: moments (numpy views, updated in place) and scalars.

    ``step_size = lr / (1 − β1^t)``, ``sqrt_bc2 = sqrt(1 − β2^t)``; ``weight_decay`` is read by the dense
    update only (LazyAdam refuses it).
    """

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step_size: float
    sqrt_bc2: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float = 0.0


class DeferredAdam:
    """Dense Adam on one table with each row's zero-gradient steps deferred until the row is read.

    A step of :class:`torch.optim.Adam` moves every row of a table: rows the batch did not touch have
    gradient 0 (plus ``weight_decay · P``), and their moments decay and their values move by the decaying
    first moment. Such a row's steps depend on nothing but the row and the step's constants, so they can be
    applied later, in one go, when something reads the row (:meth:`catch_up`) or at the end of an epoch
    (:meth:`flush`): the same values, to float rounding, without a pass over the whole table and both
    moments every step (~108 MB on Gowalla). It holds the step each row is at (``synced [n]``) and the
    constants ``lr / (1 − β1^s)``, ``sqrt(1 − β2^s)`` of the steps recorded since every row was last
    current. With ``weight_decay = 0`` it also keeps, for every step ``s`` a row may be at, the sums
    ``S_n(s) = Σ_{τ=s+1}^{step} a_τ b_τ^(n+1) ρ_n^(τ−s)`` (:attr:`series`) with which a row's missed steps are
    applied at once (:func:`_replay_row_in_closed_form`); otherwise they are replayed one by one
    (:func:`_replay_row`). ``lr`` may change between steps (a scheduler); ``betas``, ``eps`` and
    ``weight_decay`` may not while rows are behind (:meth:`start`).
    """

    #: a read of at least 1/FLUSH_FRACTION of the rows brings the whole table up to date (in row order)
    FLUSH_FRACTION = 4

    def __init__(self, n_rows: int, closed_form: bool = True):
        self.synced = np.zeros(n_rows, dtype=np.int64)
        #: False: every row's missed steps are replayed one by one (for benchmarks; same values to rounding)
        self.closed_form = closed_form
        self.step = -1  # the step the rows are brought to on reading; -1 before :meth:`start`
        self.offset = 0  # the constants of step s are at index s - offset
        self.sizes = np.empty(64, dtype=np.float32)
        self.bc2s = np.empty(64, dtype=np.float32)
        #: ``series[n, s − offset + 1]`` = ``S_n(s)`` (float64 ``[SERIES_TERMS, capacity]``), see above
        self.series: np.ndarray = np.zeros((SERIES_TERMS, 64))
        self._powers: np.ndarray = np.ones((SERIES_TERMS, 65))  # ρ_n^j for j = 0 … capacity
        #: ``decays[:, k] = (β1^k, β2^k, (ε / (SERIES_LIMIT sqrt(β2)^k))²)`` for k = 0 … capacity
        self._decays: np.ndarray = np.ones((3, 65))
        self.hyper: tuple[float, float, float, float] | None = None  # beta1, beta2, eps, weight_decay
        #: a read since the last :meth:`start` covered a large part of the table (see :meth:`catch_up`)
        self.read_whole = False
        #: rows brought up to date so far, and those of them with some parameter replayed one step at a
        #: time (all of them with weight decay; else rows fewer than CLOSED_FORM_MIN_STEPS behind and rows
        #: with a series too slow to converge)
        self.rows_caught_up = 0
        self.rows_one_by_one = 0

    @property
    def pending(self) -> bool:
        """Whether some rows are behind :attr:`step` (steps were recorded since every row was current)."""
        return self.step >= self.offset

    def start(self, step: int, hyper: tuple[float, float, float, float]) -> None:
        """Every row is current at ``step`` (the optimiser's step count), under ``hyper``; nothing pending."""
        self.synced.fill(step)
        self.step, self.offset = step, step + 1
        if hyper != self.hyper:
            self.hyper = hyper
            self._tabulate(self._powers.shape[1])
        self.series[:, 0] = 0.0
        self.read_whole = False

    def record(self, step: int, step_size: float, sqrt_bc2: float) -> None:
        """Step ``step`` (= :attr:`step` + 1) was taken on the touched rows; the others owe it."""
        i = step - self.offset
        if i + 1 >= len(self.sizes):
            self._grow()
        self.step = step
        assert self.hyper is not None
        compiled("record_step")(
            self.sizes, self.bc2s, self.series, self._powers, i, step_size, sqrt_bc2, self.hyper[3] == 0.0
        )

    def _grow(self) -> None:
        capacity = 2 * len(self.sizes)
        self.sizes = np.concatenate([self.sizes, np.empty_like(self.sizes)])
        self.bc2s = np.concatenate([self.bc2s, np.empty_like(self.bc2s)])
        self.series = np.concatenate([self.series, np.zeros_like(self.series)], axis=1)
        self._tabulate(capacity + 1)

    def _tabulate(self, n_columns: int) -> None:
        """``_powers[n, j] = ρ_n^j`` (``ρ_n = β1 / sqrt(β2)^(n+1)``) and ``_decays[:, k]``, for j, k below
        ``n_columns``."""
        assert self.hyper is not None
        beta1, beta2, eps = self.hyper[0], self.hyper[1], self.hyper[2]
        k = np.arange(n_columns)
        rho = beta1 / math.sqrt(beta2) ** np.arange(1, SERIES_TERMS + 1)
        self._powers = rho[:, None] ** k
        limit = (
            (eps / (SERIES_LIMIT * math.sqrt(beta2) ** k)) ** 2
            if self.closed_form
            else np.full(len(k), np.inf)
        )
        self._decays = np.stack([beta1**k, beta2**k, limit])

    def _constants(self) -> tuple:
        assert self.hyper is not None
        return (self.sizes, self.bc2s, self.offset, *self.hyper, self.series, self._decays)

    def note_read(self, n_ids: int) -> None:
        """A read of ``n_ids`` rows; one of a quarter of the table or more sets :attr:`read_whole` (the
        step's update then takes the dense pass, :meth:`AdamBPRKernel.step`)."""
        if n_ids * self.FLUSH_FRACTION >= len(self.synced):
            self.read_whole = True

    def catch_up(
        self, table: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, ids: np.ndarray
    ) -> None:
        """Bring rows ``ids`` (int64, any shape) up to :attr:`step`; ``IndexError`` for ids off the table."""
        self.note_read(ids.size)
        if not self.pending:
            return
        if ids.size * self.FLUSH_FRACTION >= len(self.synced):
            # many rows (DNS's candidates): one pass in row order is cheaper than reaching each at random
            if ids.size and (ids.min() < 0 or ids.max() >= len(self.synced)):
                raise IndexError(f"ids outside the table's rows [0, {table.shape[0]}) were read")
            self.flush(table, exp_avg, exp_avg_sq)
            return
        caught_up, one_by_one = compiled("adam_catch_up")(
            table, exp_avg, exp_avg_sq, self.synced, ids.reshape(-1), self.step, self._constants()
        )
        if caught_up < 0:
            raise IndexError(f"ids outside the table's rows [0, {table.shape[0]}) were read")
        self.rows_caught_up += caught_up
        self.rows_one_by_one += one_by_one

    def flush(self, table: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray) -> None:
        """Bring every row up to :attr:`step`; afterwards nothing is pending."""
        if not self.pending:
            return
        caught_up, one_by_one = compiled("adam_flush")(
            table, exp_avg, exp_avg_sq, self.synced, self.step, self._constants()
        )
        self.rows_caught_up += caught_up
        self.rows_one_by_one += one_by_one
        self.offset = self.step + 1
        self.series[:, 0] = 0.0


class AdamBPRKernel:
    """Scratch state of the compiled MF + (soft) BPR + R1 + Adam step for one pair of tables.

    Holds zeroed gradient tables and row flags the size of the two tables (the memory of one more copy of
    the model), allocated once. :meth:`step` ends with LazyAdam's update of the touched rows
    (``dense=False``) or dense Adam's update of every row (``dense=True``).
    """

    def __init__(self, n_users: int, n_items: int, dim: int):
        self.user_grad = np.zeros((n_users, dim), dtype=np.float32)
        self.item_grad = np.zeros((n_items, dim), dtype=np.float32)
        self.user_seen = np.zeros(n_users, dtype=np.uint8)
        self.item_seen = np.zeros(n_items, dtype=np.uint8)

    @staticmethod
    def warm_up() -> None:
        """Compile the kernels for the types :meth:`step` passes (float32 tables, int64 ids) on tiny inputs.

        Raises whatever numba raises when it cannot compile here; the caller then keeps the tensor path.
        """
        table = np.zeros((2, 2), dtype=np.float32)
        ids = np.zeros(1, dtype=np.int64)
        kernel = AdamBPRKernel(2, 2, 2)
        state = [AdamState(np.zeros_like(table), np.zeros_like(table), 1e-3, 1.0, 0.9, 0.999, 1e-8)] * 2
        for weight in (None, np.ones((1, 1), dtype=np.float32)):
            for dense in (False, True):
                kernel.step(
                    table, table.copy(), ids, ids, ids.reshape(1, 1), weight, 1.0, 1.0, 0.0, state, dense
                )
        for wd in (0.0, 1e-4):  # the deferred dense step, catching up and flushing rows behind
            deferred = [DeferredAdam(2), DeferredAdam(2)]
            for d in deferred:
                d.start(0, (0.9, 0.999, 1e-8, wd))
            state = [
                AdamState(np.zeros_like(table), np.zeros_like(table), 1e-3, 1.0, 0.9, 0.999, 1e-8, wd)
            ] * 2
            for step in (1, 2):
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
                        True,
                        deferred,
                        step,
                    )
                for d in deferred:
                    d.record(step, 1e-3, 1.0)
            deferred[0].flush(table, state[0].exp_avg, state[0].exp_avg_sq)

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
        adam: list[AdamState],
        dense: bool,
        deferred: list[DeferredAdam] | None = None,
        step: int = 0,
    ) -> float:
        """One step; ``adam`` holds the users' table's state, then the items'. Returns the batch loss.

        With ``deferred`` (dense Adam only; the users' table's, then the items'), the batch's rows are first
        brought up to the previous step, and the update of step ``step`` is applied to the touched rows only:
        the others owe it (:class:`DeferredAdam` records it). A table whose rows the batch touched, or the
        sampler read, by the quarter or more takes the dense pass instead, and no row owes anything.
        """
        accumulate_bpr_gradients = compiled("accumulate_bpr_gradients")
        if deferred is not None:
            deferred[0].catch_up(user_table, adam[0].exp_avg, adam[0].exp_avg_sq, users)
            items = np.concatenate((pos, negs.reshape(-1)))
            deferred[1].catch_up(item_table, adam[1].exp_avg, adam[1].exp_avg_sq, items)
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
        if n_user_rows < 0:
            raise IndexError(
                f"the batch has ids outside the tables: users [0, {len(user_table)}), items "
                f"[0, {len(item_table)})"
            )
        for index, (table, grad, seen, rows, n_rows, s) in enumerate(
            (
                (user_table, self.user_grad, self.user_seen, user_rows, n_user_rows, adam[0]),
                (item_table, self.item_grad, self.item_seen, item_rows, n_item_rows, adam[1]),
            )
        ):
            owed = deferred[index] if deferred is not None else None
            if owed is not None and (owed.read_whole or n_rows * owed.FLUSH_FRACTION >= len(table)):
                # the batch touched many rows (Softmax-v's weighted candidates), or the sampler read many
                # (DNS's candidates; it will again next step): one dense pass in row order is cheaper than
                # updating the touched rows at random and replaying the others at the next read
                owed.flush(table, s.exp_avg, s.exp_avg_sq)
                assert owed.hyper is not None
                owed.start(step, owed.hyper)  # every row is at this step after the pass below
                owed = None
            arrays = (table, grad, s.exp_avg, s.exp_avg_sq, seen)
            scalars = (s.step_size, s.beta1, s.beta2, s.sqrt_bc2, s.eps)
            if owed is not None:
                compiled("adam_touched_rows")(
                    *arrays, rows, n_rows, *scalars, s.weight_decay, owed.synced, step
                )
                owed.record(step, s.step_size, s.sqrt_bc2)
            elif dense:
                compiled("dense_adam_table")(*arrays, *scalars, s.weight_decay)
            else:
                compiled("lazy_adam_rows")(*arrays, rows, n_rows, *scalars)
        return float(loss)


__all__ = [
    "AVAILABLE",
    "AdamBPRKernel",
    "AdamState",
    "DeferredAdam",
    "bitmap_contains",
    "check_and_score",
    "compiled",
    "online_sgd_bpr",
    "ready",
    "row_max",
    "score_rows",
    "warm_up_online_sgd",
]

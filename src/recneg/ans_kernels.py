"""ANS's auxiliary losses over the whole candidate pool in one compiled pass forward and one backward.

:meth:`recneg.samplers.ans.ANSSampler.aux_losses` (ALGORITHMS.md §5; Eqs. 5 and 7) is ~40 tensor
operations over ``[B, M, L', d]`` tensors, forward and backward, each writing a fresh tensor: on CPU they
took ~2/3 of an MF + ANS step on Gowalla. Here the gate ``g = σ(A ⊙ C)`` (Eq. 3, with ``A = W_item e_n +
b_i`` and ``C = W_user e_u + b_u`` left to ``nn.Linear``), the factors, ``L_c``, ``L_d`` and the margin's
logits ``w·(h_n ⊙ h_p) + b`` (Eq. 10, for the detached selection) are computed element by element in one
pass over the pool (the gate itself by torch's vectorised sigmoid, kept for the backward pass), and the
backward pass recomputes the factors and writes the gradients of ``A``, ``C``, ``e_u``, ``e_p`` and
``e_n`` in one more (the gradients through ``A`` and ``C`` into the linear layers and the embeddings are
autograd's). Same values as the tensor path to float rounding
(``tests/test_ans_kernels.py``; ``tests/test_ans.py`` checks the sampler against a plain autograd
reference).

Per ``(b, m, l)``, with ``n = e_n``, ``p = e_p``, ``u = e_u`` and sums over ``d``::

    x     = ⟨u, z_n⟩ − ⟨u, h_n⟩ = Σ u n (1 − 2g)             L_c = mean_{b,l} softplus(logsumexp_m x)
    dist  = ‖g (n − p) + 1e-6‖₂                              L_d = mean_{b,m,l} dist + mean_{b,m} Σ_l easy
    easy  = ‖(1 − g)² p n‖₂ (code) or Σ (1 − g)² p n (paper)

The backward pass uses ``∂x/∂g = −2 u n``, ``∂x/∂n = u (1 − 2g)``, ``∂x/∂u = n (1 − 2g)``; with
``r = g (n − p) + 1e-6``: ``∂r/∂g = n − p``, ``∂r/∂n = g``, ``∂r/∂p = −g``; with ``q = (1 − g)² p n``:
``∂q/∂g = −2 (1 − g) p n``, ``∂q/∂n = (1 − g)² p``, ``∂q/∂p = (1 − g)² n``; a norm's gradient is
``r / ‖r‖`` (0 where the norm is 0, as torch's); ``∂g/∂A = g (1 − g) C``, ``∂g/∂C = g (1 − g) A``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: torch.nn.functional.pairwise_distance's ε, which the ANS code's L_d adds to ``h_n − h_p``
PAIRWISE_EPS = 1e-6

_ENABLED = {"enabled": True}


def use_compiled_ans(enabled: bool) -> bool:
    """Let ANS's auxiliary losses on CPU use the compiled passes (the default) or autograd's tensor path;
    returns the old setting. Both give the same values and gradients to float rounding."""
    previous = _ENABLED["enabled"]
    _ENABLED["enabled"] = bool(enabled)
    return previous


def _sigmoid(z):
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _aux_forward(gate, e_u, e_p, e_n, w, bias, paper, x, dist, easy, margin_logit, lse):
    """Forward pass (see the module docstring); parallel over the batch.

    Shapes: ``gate`` (``g = σ(A ⊙ C)``, from torch's vectorised sigmoid), ``e_n [B, M, L, d]``; ``e_u``,
    ``e_p [B, L, d]``; ``w [d]`` (the margin layer's weight) and ``bias``, float32. Writes ``x``,
    ``dist``, ``easy``, ``margin_logit [B, M, L]`` and ``lse [B, L]`` (``logsumexp_m x``). Returns
    ``(Σ_{b,l} softplus(lse), Σ dist, Σ easy)`` in float64.
    """
    batch, n_cand, n_layers, dim = e_n.shape
    sum_c = 0.0
    sum_dist = 0.0
    sum_easy = 0.0
    for b in numba.prange(batch):
        for layer in range(n_layers):
            top = -np.inf
            for m in range(n_cand):
                xs = np.float32(0.0)
                r2 = np.float32(0.0)
                qs = np.float32(0.0)
                mg = np.float32(0.0)
                for k in range(dim):
                    g = gate[b, m, layer, k]
                    n = e_n[b, m, layer, k]
                    p = e_p[b, layer, k]
                    hard_neg = g * n
                    hard_pos = g * p
                    easy_neg = n - hard_neg
                    easy_pos = p - hard_pos
                    xs += e_u[b, layer, k] * (easy_neg - hard_neg)
                    r = hard_neg - hard_pos + np.float32(PAIRWISE_EPS)
                    r2 += r * r
                    q = easy_pos * easy_neg
                    qs += q if paper else q * q
                    mg += w[k] * (hard_neg * hard_pos)
                x[b, m, layer] = xs
                d_bm = np.sqrt(r2)
                e_bm = qs if paper else np.sqrt(qs)
                dist[b, m, layer] = d_bm
                easy[b, m, layer] = e_bm
                margin_logit[b, m, layer] = mg + bias
                sum_dist += d_bm
                sum_easy += e_bm
                top = max(top, xs)
            total = 0.0
            for m in range(n_cand):
                total += math.exp(x[b, m, layer] - top)
            s = top + math.log(total)
            lse[b, layer] = s
            sum_c += max(s, 0.0) + math.log1p(math.exp(-abs(s)))  # softplus, without overflow
    return sum_c, sum_dist, sum_easy


def _aux_backward(
    gate, gate_item, gate_user, e_u, e_p, e_n, x, dist, easy, lse, paper, w_c, w_dist, w_easy,
    d_item, d_user, d_u, d_p, d_n,
):  # fmt: skip
    """Backward pass: ``∂(w_c · Σ_{b,l} softplus(lse) + w_dist · Σ dist + w_easy · Σ easy)`` with respect to
    ``gate_item``, ``e_n`` (into ``d_item``, ``d_n [B, M, L, d]``, overwritten) and ``gate_user``, ``e_u``,
    ``e_p`` (into ``d_user``, ``d_u``, ``d_p [B, L, d]``, which must hold zeros); the forward's saved
    ``x``, ``dist``, ``easy``, ``lse``. Parallel over the batch.
    """
    batch, n_cand, n_layers, dim = e_n.shape
    for b in numba.prange(batch):
        for layer in range(n_layers):
            s = lse[b, layer]
            soft = w_c * _sigmoid(s)  # softplus'(lse), times the weight
            for m in range(n_cand):
                dx = np.float32(soft * math.exp(x[b, m, layer] - s))  # ∂/∂x: softplus' · softmax_m
                d_bm = dist[b, m, layer]
                coef_r = np.float32(w_dist / d_bm if d_bm > 0.0 else 0.0)
                e_bm = easy[b, m, layer]
                coef_q = np.float32(w_easy if paper else (w_easy / e_bm if e_bm > 0.0 else 0.0))
                for k in range(dim):
                    a = gate_item[b, m, layer, k]
                    c = gate_user[b, layer, k]
                    g = gate[b, m, layer, k]
                    n = e_n[b, m, layer, k]
                    p = e_p[b, layer, k]
                    u = e_u[b, layer, k]
                    keep = np.float32(1.0) - g
                    flip = np.float32(1.0) - np.float32(2.0) * g
                    hard_neg = g * n
                    hard_pos = g * p
                    r = hard_neg - hard_pos + np.float32(PAIRWISE_EPS)
                    grad_r = coef_r * r  # ∂/∂r
                    grad_q = coef_q if paper else coef_q * ((p - hard_pos) * (n - hard_neg))  # ∂/∂q
                    keep2 = keep * keep
                    d_n[b, m, layer, k] = dx * u * flip + grad_r * g + grad_q * keep2 * p
                    d_p[b, layer, k] += grad_q * keep2 * n - grad_r * g
                    d_u[b, layer, k] += dx * n * flip
                    d_g = grad_r * (n - p) - np.float32(2.0) * (dx * u * n + grad_q * keep * p * n)
                    d_z = d_g * g * keep
                    d_item[b, m, layer, k] = d_z * c
                    d_user[b, layer, k] += d_z * a


numba: Any = None  # the module, once recneg.kernels.compiled has imported it (it sets this)


class _AuxLosses(torch.autograd.Function):
    """``(L_c, L_d, margin logits [B, M, L])`` of :func:`fused_aux_losses`; the logits carry no gradient."""

    @staticmethod
    def forward(ctx, gate_item, gate_user, e_u, e_p, e_n, weight, bias, paper):  # type: ignore[override]
        from recneg import kernels

        arrays = [t.detach().contiguous().numpy() for t in (gate_item, gate_user, e_u, e_p, e_n)]
        # the gate in torch's vectorised sigmoid (numba's exp is a scalar call per element)
        gate = torch.sigmoid(gate_item.detach() * gate_user.detach().unsqueeze(1)).contiguous().numpy()
        batch, n_cand, n_layers, _ = arrays[4].shape
        x, dist, easy, logit = (np.empty((batch, n_cand, n_layers), dtype=np.float32) for _ in range(4))
        lse = np.empty((batch, n_layers), dtype=np.float32)
        w = weight.detach().reshape(-1).contiguous().numpy()
        sums = kernels.compiled("ans_aux_forward")(
            gate, *arrays[2:], w, np.float32(bias), paper, x, dist, easy, logit, lse
        )
        ctx.arrays, ctx.saved = [gate, *arrays], (x, dist, easy, lse)
        ctx.paper = paper
        l_c = sums[0] / (batch * n_layers)
        l_d = sums[1] / (batch * n_cand * n_layers) + sums[2] / (batch * n_cand)
        like = gate_item.new_zeros(())
        logits = torch.from_numpy(logit)
        ctx.mark_non_differentiable(logits)
        return like + l_c, like + l_d, logits

    @staticmethod
    def backward(ctx, grad_c, grad_d, _grad_logit):  # type: ignore[override]
        from recneg import kernels

        gate, gate_item, gate_user, e_u, e_p, e_n = ctx.arrays
        x, dist, easy, lse = ctx.saved
        batch, n_cand, n_layers, _ = e_n.shape
        g_c = float(grad_c) if grad_c is not None else 0.0
        g_d = float(grad_d) if grad_d is not None else 0.0
        d_item, d_n = np.empty_like(gate_item), np.empty_like(e_n)
        d_user, d_u, d_p = np.zeros_like(gate_user), np.zeros_like(e_u), np.zeros_like(e_p)
        kernels.compiled("ans_aux_backward")(
            gate, gate_item, gate_user, e_u, e_p, e_n, x, dist, easy, lse, ctx.paper,
            g_c / (batch * n_layers), g_d / (batch * n_cand * n_layers), g_d / (batch * n_cand),
            d_item, d_user, d_u, d_p, d_n,
        )  # fmt: skip
        grads = (torch.from_numpy(a) for a in (d_item, d_user, d_u, d_p, d_n))
        return (*grads, None, None, None)


def compiled_ans_serves(*tensors: Tensor) -> bool:
    """Whether :func:`fused_aux_losses` runs for these tensors: switched on (:func:`use_compiled_ans`),
    gradient enabled, every tensor on CPU in float32, and numba able to build the kernels here."""
    from recneg import kernels

    return (
        _ENABLED["enabled"]
        and torch.is_grad_enabled()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and kernels.ready("ans_aux")
    )


def fused_aux_losses(
    gate_item: Tensor,
    gate_user: Tensor,
    e_u: Tensor,
    e_p: Tensor,
    e_n: Tensor,
    margin: torch.nn.Linear,
    paper: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_c, L_d, margin logits)`` in the compiled passes (where :func:`compiled_ans_serves`).

    Args:
        gate_item: ``A = W_item e_n + b_i`` ``[B, M, L', d]``; gate_user: ``C = W_user e_u + b_u``
            ``[B, L', d]``.
        e_u, e_p: ``[B, L', d]``; e_n: ``[B, M, L', d]``.
        margin: the margin layer ``nn.Linear(d, 1)``; its logits ``w·(h_n ⊙ h_p) + b`` ``[B, M, L']`` come
            back detached (the selection's, Eq. 10).
        paper: ``mode="paper"`` (``easy = Σ z_p ⊙ z_n``) rather than the code's norm.

    Returns:
        ``L_c`` and ``L_d`` (scalars, with gradient to every input tensor) and the logits.
    """
    bias = float(margin.bias.detach()) if margin.bias is not None else 0.0
    return _AuxLosses.apply(gate_item, gate_user, e_u, e_p, e_n, margin.weight, bias, paper)


def warm_up() -> None:
    """Compile both passes on tiny inputs (what :func:`recneg.kernels.ready` runs once)."""
    one = torch.ones(1, 1, 1, 2, requires_grad=True)
    two = [torch.ones(1, 1, 2, requires_grad=True) for _ in range(3)]
    margin = torch.nn.Linear(2, 1)
    for paper in (False, True):
        l_c, l_d, _ = _AuxLosses.apply(one, two[0], two[1], two[2], one, margin.weight, 0.0, paper)
        (l_c + l_d).backward()

"""Ranking analysis beyond top-K: AUC, OPAUC(β), PER between methods, paired significance tests.

Definitions (ALGORITHMS.md §8.3, §8.4, §8.6). For a user ``u`` with target set ``T_u`` (test positives,
``n+ = |T_u|``) the negatives are ``N_u = I \\ (I_u^+ ∪ T_u ∪ V_u)`` (training positives, the targets and,
when testing, validation positives are masked exactly as the full-ranking evaluation masks them),
``n− = |N_u|``.

- ``AUC_u = (1 / (n+ n−)) Σ_{i∈T_u} Σ_{j∈N_u} (1[r_ui > r_uj] + ½ 1[r_ui = r_uj])``, computed by ranks:
  the negatives are sorted once per user and each positive's count of smaller / equal negatives is a
  ``searchsorted`` (no double loop).
- ``k_u = max(1, ⌊β n−⌋)`` (**DECIDE**, ALGORITHMS.md §9 item 10: floor, the usual partial-AUC convention;
  at least one negative so that every user contributes), ``S↓[1, k]`` = the ``k`` highest-scored negatives.
- ``OPAUC_pairs(β) = (1/(n+ n−)) Σ_i Σ_{j∈S↓[1,k]} (1[r_ui > r_uj] + ½ 1[r_ui = r_uj])`` — range ``[0, β]``;
  the form for which the WWW 2023 Theorem 3 bounds hold (tested by simulation in tests/test_analysis.py).
- ``OPAUC_hat(β) = 1 − (1/(n+ n−)) Σ_i Σ_{j∈S↓[1,k]} 1[r_ui < r_uj]`` — the slide's estimator verbatim
  (strict ``<``, no tie term), range ``[1 − β, 1]``. Without ties and with ``k = β n−`` exactly,
  ``OPAUC_hat = 1 − β + OPAUC_pairs``.
- ``nOPAUC(β) = OPAUC_pairs(β) / β`` — range ``[0, 1]`` up to the floor of ``k`` (the usual normalised
  partial AUC; plausibly the slides' "Norm_OPAUC" [U]).

Per-user values are averaged over the users with ``n+ ≥ 1`` and ``n− ≥ 1``.

``PER(x, y) = |H_x \\ H_y| / |H_x|`` with ``H_x`` the (user, item) test interactions method ``x`` places in
its top-``K`` (:meth:`~recneg.eval.ranking.EvalResult.hit_set`). **DECIDE** (§9 item 11): the denominator is
``|H_x|`` (ConCF as we recall it); ``K`` is the evaluation's (20 by default) and is recorded;
``PER(x, x) = 0``; ``PER(x, y)`` is ``nan`` when ``H_x`` is empty.

References:
    Shi et al., On the Theories Behind Hard Negative Sampling for Recommendation, WWW 2023 (OPAUC, Thm 3).
    Zhao et al., Augmented Negative Sampling for Collaborative Filtering, RecSys 2023 (PER, §3.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from recneg.data.interactions import Interactions, PositiveIndex, Split
from recneg.errors import ConfigError

__all__ = [
    "AUCResult",
    "auc_brute_force",
    "evaluate_auc",
    "opauc_k",
    "paired_test",
    "per",
    "per_matrix",
    "per_user_paired_test",
    "ranking_auc",
    "theorem3_bounds",
]


def opauc_k(beta: float, n_neg: Tensor | np.ndarray | int):
    """``k = max(1, ⌊β n−⌋)`` (the DECIDE of this module), elementwise; never more than ``n−``."""
    if isinstance(n_neg, Tensor):
        return torch.clamp(torch.floor(beta * n_neg.to(torch.float64) + 1e-9).long(), min=1).minimum(n_neg)
    if isinstance(n_neg, np.ndarray):
        return np.minimum(np.maximum(np.floor(beta * n_neg + 1e-9).astype(np.int64), 1), n_neg)
    return min(max(int(math.floor(beta * n_neg + 1e-9)), 1), int(n_neg))


def _check_betas(betas) -> tuple[float, ...]:
    out = tuple(float(b) for b in betas)
    if any(not (0.0 < b <= 1.0) for b in out):
        raise ConfigError(f"betas must lie in (0, 1], got {list(betas)}")
    return out


@dataclass
class AUCResult:
    """Per-user AUC and OPAUC forms, and their means over users.

    Attributes:
        users: ``[n_eval]`` evaluated user ids (``n+ ≥ 1`` and ``n− ≥ 1``), ascending.
        auc: ``[n_eval]`` per-user AUC.
        opauc_pairs, opauc_hat, nopauc: ``{β: [n_eval] array}``.
        n_pos, n_neg: ``[n_eval]`` ``n+`` and ``n−`` per user.
        metrics: means, keyed ``auc``, ``opauc_pairs@β``, ``opauc_hat@β``, ``nopauc@β``.
    """

    users: np.ndarray
    auc: np.ndarray
    opauc_pairs: dict[float, np.ndarray] = field(repr=False)
    opauc_hat: dict[float, np.ndarray] = field(repr=False)
    nopauc: dict[float, np.ndarray] = field(repr=False)
    n_pos: np.ndarray = field(repr=False)
    n_neg: np.ndarray = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)


def _row_lists(index: PositiveIndex, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, counts)``: the CSR entries of ``users`` (row = position in ``users``)."""
    lo, hi = index.indptr[users], index.indptr[users + 1]
    counts = hi - lo
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    offsets = torch.arange(rows.numel(), device=users.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    cols = index.indices[torch.repeat_interleave(lo, counts) + offsets]
    return rows, cols, counts


def _scores_auc(
    scores: Tensor, pos_mask: Tensor, neg_mask: Tensor, betas: Sequence[float]
) -> tuple[Tensor, dict, dict, Tensor, Tensor]:
    """AUC and OPAUC per row of a score block.

    Args:
        scores: ``[C, n_items]`` scores ``r_ui``.
        pos_mask: ``[C, n_items]`` bool, the targets ``T_u``.
        neg_mask: ``[C, n_items]`` bool, the negatives ``N_u``.
        betas: the β of OPAUC.

    Returns:
        ``(auc [C], {β: pairs [C]}, {β: hat [C]}, n_pos [C], n_neg [C])`` in float64; rows with ``n+ = 0`` or
        ``n− = 0`` hold ``nan``.
    """
    scores = scores.to(torch.float64)
    n_pos = pos_mask.sum(1)
    n_neg = neg_mask.sum(1)
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
    neg_sorted = torch.where(neg_mask, scores, inf).sort(dim=1).values  # negatives first, +inf padding after
    p_max = max(int(n_pos.max()) if n_pos.numel() else 0, 1)
    # the positives' scores, left-aligned and padded: [C, p_max]
    order = torch.argsort((~pos_mask).to(torch.int8), dim=1, stable=True)[:, :p_max]
    pos_scores = scores.gather(1, order)
    valid = torch.arange(p_max, device=scores.device).unsqueeze(0) < n_pos.unsqueeze(1)
    pos_scores = torch.where(valid, pos_scores, torch.zeros((), dtype=scores.dtype, device=scores.device))
    less = torch.searchsorted(neg_sorted, pos_scores.contiguous(), right=False)  # # negatives < r_ui
    less_eq = torch.searchsorted(neg_sorted, pos_scores.contiguous(), right=True)  # # negatives <= r_ui
    less = torch.minimum(less, n_neg.unsqueeze(1))
    less_eq = torch.minimum(less_eq, n_neg.unsqueeze(1))
    vf = valid.to(torch.float64)
    denom = (n_pos * n_neg).to(torch.float64)
    ok = denom > 0
    nan = torch.full_like(denom, float("nan"))
    auc_num = ((less.to(torch.float64) + 0.5 * (less_eq - less).to(torch.float64)) * vf).sum(1)
    auc = torch.where(ok, auc_num / denom.clamp_min(1), nan)
    pairs, hat = {}, {}
    for beta in betas:
        k = opauc_k(beta, n_neg.clamp_min(1)).unsqueeze(1)  # [C, 1]
        below = (n_neg.unsqueeze(1) - k).clamp_min(0)  # negatives ranked below the top-k
        lt_top = (less - below).clamp_min(0)  # top-k negatives with r_uj < r_ui
        le_top = (less_eq - below).clamp_min(0)  # ... <= r_ui
        num_pairs = ((lt_top.to(torch.float64) + 0.5 * (le_top - lt_top).to(torch.float64)) * vf).sum(1)
        num_gt = ((k - le_top).to(torch.float64) * vf).sum(1)  # top-k negatives with r_uj > r_ui
        pairs[beta] = torch.where(ok, num_pairs / denom.clamp_min(1), nan)
        hat[beta] = torch.where(ok, 1.0 - num_gt / denom.clamp_min(1), nan)
    return auc, pairs, hat, n_pos, n_neg


@torch.no_grad()
def ranking_auc(
    user_table: Tensor,
    item_table: Tensor,
    target: Interactions,
    exclude: list[Interactions | None] | None = None,
    betas: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.5),
    chunk_size: int = 256,
) -> AUCResult:
    """AUC and the three OPAUC forms of every user with targets, chunked over users.

    Args:
        user_table: ``[n_users, d]``; item_table: ``[n_items, d]`` (scores are inner products).
        target: the positives ``T_u`` (e.g. ``split.test``).
        exclude: interactions masked out of both positives and negatives (training, and validation when
            testing) — the same list :func:`recneg.eval.ranking.evaluate_tables` takes.
        betas: β values of OPAUC.
        chunk_size: users scored at once (memory ``≈ 3 × chunk_size × n_items`` float64).

    Returns:
        :class:`AUCResult`.
    """
    betas = _check_betas(betas)
    device = user_table.device
    n_items = item_table.shape[0]
    users_np = np.flatnonzero(target.csr.getnnz(axis=1) > 0)
    tgt = target.positives(device)
    parts = [p for p in (exclude or []) if p is not None]
    excl = [p.positives(device) for p in parts]
    item_t = item_table.T.contiguous()
    auc_l: list[Tensor] = []
    npos_l: list[Tensor] = []
    nneg_l: list[Tensor] = []
    pairs_l: dict[float, list[Tensor]] = {b: [] for b in betas}
    hat_l: dict[float, list[Tensor]] = {b: [] for b in betas}
    users_all = torch.as_tensor(users_np, device=device)
    for start in range(0, users_all.numel(), chunk_size):
        chunk = users_all[start : start + chunk_size]
        scores = user_table[chunk] @ item_t
        pos_mask = torch.zeros(chunk.numel(), n_items, dtype=torch.bool, device=device)
        r, c, _ = _row_lists(tgt, chunk)
        pos_mask[r, c] = True
        masked = pos_mask.clone()
        pos_only = pos_mask.clone()  # a target that is also excluded (not in a leak-free split) drops out
        for index in excl:
            r, c, _ = _row_lists(index, chunk)
            masked[r, c] = True
            pos_only[r, c] = False
        auc, pairs, hat, n_pos, n_neg = _scores_auc(scores, pos_only, ~masked, betas)
        auc_l.append(auc.cpu())
        npos_l.append(n_pos.cpu())
        nneg_l.append(n_neg.cpu())
        for b in betas:
            pairs_l[b].append(pairs[b].cpu())
            hat_l[b].append(hat[b].cpu())

    def cat(xs):
        return torch.cat(xs).numpy() if xs else np.zeros(0)

    auc_all, n_pos, n_neg = cat(auc_l), cat(npos_l).astype(np.int64), cat(nneg_l).astype(np.int64)
    keep = (n_pos > 0) & (n_neg > 0)
    out = AUCResult(
        users=users_np[keep],
        auc=auc_all[keep],
        opauc_pairs={b: cat(pairs_l[b])[keep] for b in betas},
        opauc_hat={b: cat(hat_l[b])[keep] for b in betas},
        nopauc={b: cat(pairs_l[b])[keep] / b for b in betas},
        n_pos=n_pos[keep],
        n_neg=n_neg[keep],
    )
    mean = (lambda a: float(a.mean())) if keep.any() else (lambda a: float("nan"))
    out.metrics["auc"] = mean(out.auc)
    for b in betas:
        out.metrics[f"opauc_pairs@{b:g}"] = mean(out.opauc_pairs[b])
        out.metrics[f"opauc_hat@{b:g}"] = mean(out.opauc_hat[b])
        out.metrics[f"nopauc@{b:g}"] = mean(out.nopauc[b])
    return out


@torch.no_grad()
def evaluate_auc(
    model,
    split: Split,
    part: str = "test",
    betas: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.5),
    chunk_size: int = 256,
    mask_valid: bool = True,
) -> AUCResult:
    """:func:`ranking_auc` of a model on ``split.test`` (or ``split.valid``), masking as full ranking does."""
    from recneg.eval.ranking import evaluation_inputs

    user_table, item_table, target, exclude = evaluation_inputs(model, split, part, mask_valid)
    return ranking_auc(user_table, item_table, target, exclude, betas, chunk_size)


def auc_brute_force(pos_scores, neg_scores, beta: float | None = None) -> tuple[float, float, float]:
    """Reference double loop for one user (tests only): ``(AUC, OPAUC_pairs(β), OPAUC_hat(β))``.

    With ``beta=None`` the two OPAUC values are ``nan``.
    """
    p = np.asarray(pos_scores, dtype=np.float64)
    n = np.asarray(neg_scores, dtype=np.float64)
    gt = (p[:, None] > n[None, :]).astype(np.float64)
    eq = (p[:, None] == n[None, :]).astype(np.float64)
    denom = p.size * n.size
    auc = float((gt + 0.5 * eq).sum() / denom)
    if beta is None:
        return auc, float("nan"), float("nan")
    k = opauc_k(beta, n.size)
    top = np.sort(n)[::-1][:k]
    gt_t = (p[:, None] > top[None, :]).astype(np.float64)
    eq_t = (p[:, None] == top[None, :]).astype(np.float64)
    lt_t = (p[:, None] < top[None, :]).astype(np.float64)
    return auc, float((gt_t + 0.5 * eq_t).sum() / denom), float(1.0 - lt_t.sum() / denom)


def theorem3_bounds(opauc_pairs: float, n_pos: int, n_neg: int, k: int) -> dict[str, float]:
    """WWW 2023 Theorem 3: bounds on Recall@K and Precision@K from ``O = OPAUC_pairs(β = K / N−)``.

    ``(N+ + K − sqrt((N+ + K)² − 4 N+ N− O)) / (2 N+) ≤ Recall@K ≤ sqrt(N+ N− O) / N+``; Precision@K likewise
    with ``1/K`` in place of ``1/N+`` (stated for ``N+ > K`` and ``N− > K``).

    Returns:
        ``{"recall_low", "recall_high", "precision_low", "precision_high"}``.
    """
    o = float(opauc_pairs)
    disc = max((n_pos + k) ** 2 - 4.0 * n_pos * n_neg * o, 0.0)
    num_low = n_pos + k - math.sqrt(disc)
    num_high = math.sqrt(n_pos * n_neg * o)
    return {
        "recall_low": num_low / (2 * n_pos),
        "recall_high": num_high / n_pos,
        "precision_low": num_low / (2 * k),
        "precision_high": num_high / k,
    }


# ------------------------------------------------------------------------------------------------ PER
def _hits(x, k: int | None) -> set:
    if isinstance(x, (set, frozenset)):
        return set(x)
    if hasattr(x, "hit_set"):
        if k is None:
            raise ConfigError("PER of EvalResults needs k (the evaluation's K, e.g. 20)")
        return x.hit_set(k)
    return {tuple(p) for p in x}


def per(x, y, k: int | None = None) -> float:
    """``PER(x, y) = |H_x \\ H_y| / |H_x|``: the share of ``x``'s hits that ``y`` misses.

    Args:
        x, y: hit sets of ``(user, item)`` pairs, or :class:`~recneg.eval.ranking.EvalResult` (with ``k``),
            or iterables of pairs.
        k: list length used for :meth:`EvalResult.hit_set`.

    Returns:
        A float in ``[0, 1]``; ``nan`` when ``H_x`` is empty.
    """
    hx, hy = _hits(x, k), _hits(y, k)
    if not hx:
        return float("nan")
    return len(hx - hy) / len(hx)


def per_matrix(methods: Mapping[str, object], k: int | None = None) -> tuple[list[str], np.ndarray]:
    """PER over every ordered pair of methods: ``M[a, b] = PER(a, b)``; the diagonal is 0.

    Returns:
        ``(names, [n, n] float64 array)``.
    """
    names = list(methods)
    hits = {n: _hits(methods[n], k) for n in names}
    out = np.zeros((len(names), len(names)))
    for a, na in enumerate(names):
        for b, nb in enumerate(names):
            if a != b:
                out[a, b] = per(hits[na], hits[nb])
    return names, out


# ------------------------------------------------------------------------------------------ significance
def paired_test(a, b, test: str = "ttest") -> dict[str, float]:
    """Paired test of ``a`` vs ``b`` (same units in the same order: seeds, or users).

    Args:
        a, b: equal-length sequences of a metric.
        test: ``"ttest"`` (``scipy.stats.ttest_rel``) or ``"wilcoxon"`` (``scipy.stats.wilcoxon``, two-sided,
            zero differences dropped by scipy's default ``zero_method="wilcox"``).

    Returns:
        ``{"n", "mean_a", "mean_b", "mean_diff", "statistic", "pvalue"}``. When every difference is zero the
        test is undefined; ``pvalue = 1.0`` and ``statistic = 0.0`` are returned. With fewer than 2 pairs,
        ``pvalue = nan``.
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"paired samples must be 1-D of one length, got {a.shape} and {b.shape}")
    if test not in ("ttest", "wilcoxon"):
        raise ConfigError(f"test must be 'ttest' or 'wilcoxon', got {test!r}")
    d = a - b
    out = {
        "n": int(a.size),
        "mean_a": float(a.mean()) if a.size else float("nan"),
        "mean_b": float(b.mean()) if b.size else float("nan"),
        "mean_diff": float(d.mean()) if d.size else float("nan"),
    }
    if a.size < 2:
        return {**out, "statistic": float("nan"), "pvalue": float("nan")}
    if np.all(d == 0):
        return {**out, "statistic": 0.0, "pvalue": 1.0}
    if test == "ttest":
        if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # constant non-zero difference: t infinite
            return {**out, "statistic": math.copysign(math.inf, d[0]), "pvalue": 0.0}
        res = stats.ttest_rel(a, b)
    else:
        res = stats.wilcoxon(a, b)
    return {**out, "statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def per_user_paired_test(x, y, metric: str, test: str = "wilcoxon") -> dict[str, float]:
    """Paired test over the users both evaluations scored (``EvalResult`` or ``{"users", "per_user"}``).

    Users are aligned by id (intersection), so two runs on the same split pair up user by user.
    """

    def parts(r):
        if isinstance(r, Mapping):
            return np.asarray(r["users"]), np.asarray(r["per_user"][metric] if "per_user" in r else r[metric])
        return np.asarray(r.users), np.asarray(r.per_user[metric])

    ux, vx = parts(x)
    uy, vy = parts(y)
    common, ix, iy = np.intersect1d(ux, uy, return_indices=True)
    return paired_test(vx[ix], vy[iy], test)

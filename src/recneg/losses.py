"""Pairwise and listwise losses over a :class:`~recneg.samplers.Negatives` record, and the regulariser.

Every loss is an ``nn.Module`` with a functional twin and a ``reduction`` (``"mean"``, ``"sum"``,
``"none"``). Conventions follow ALGORITHMS.md §1.2–1.3:

- (L1/L3) ``bpr``: ``Σ_j w_bj · softplus(r_uj − r_ui)`` per row, ``w`` = ``neg.weight`` or ``1/n``
  (plain BPR when ``n = 1``; weighted BPR over candidate weights otherwise);
- (L4) ``softbpr``: ``softplus(−β (r_ui − r_uj))`` (PDNS's equivalent form);
- (L2) ``kpair``: ``log(1 + Σ_k exp(r_uj_k − r_ui))`` (MixGCF/DENS code);
- (R1) :func:`l2_regularization`: ``λ · ½ (‖e_u⁰‖² + ‖e_i⁰‖² + Σ_j w_bj ‖e_j⁰‖²) / B`` on the batch's
  layer-0 rows;
- (R2) :func:`r2_regularization`: RecBole's ``EmbLoss``, ``λ · (‖U⁰‖_F + ‖P⁰‖_F + ‖N⁰‖_F) / B`` with ``N⁰``
  the whole candidate pool (``squared=True``: ``λ · Σ ‖·‖_F² / (2B)``).

``softplus`` is used instead of ``−log σ`` so the loss never saturates (RecBole's ``−log(1e-10 + σ)`` does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recneg._validation import require_choice, require_float
from recneg.errors import ConfigError
from recneg.models.base import ModelView
from recneg.registry import LOSSES
from recneg.samplers.base import Negatives

REDUCTIONS = {"mean", "sum", "none"}


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ConfigError(f"reduction must be one of {sorted(REDUCTIONS)}, got {reduction!r}")


def pair_scores(user_emb: Tensor, pos_emb: Tensor, neg: Negatives) -> tuple[Tensor, Tensor]:
    """Positive logits ``[B]`` and negative logits ``[B, n]`` (a shared ``[n, d]`` set broadcasts)."""
    pos = neg.pos_score if neg.pos_score is not None else (user_emb * pos_emb).sum(-1)
    if neg.score is not None:
        negs = neg.score
    elif neg.shared:
        negs = user_emb @ neg.emb.T
    else:
        # multiply-and-sum, not einsum: einsum lowers to a bmm of B tiny products (CPU: ~6x slower at n = 1)
        negs = (user_emb.unsqueeze(-2) * neg.emb).sum(-1)
    return pos, negs


def _weights(neg: Negatives, like: Tensor) -> Tensor:
    if neg.weight is not None:
        return neg.weight.detach()
    return torch.full_like(like, 1.0 / like.shape[-1])


def bpr_loss(user_emb: Tensor, pos_emb: Tensor, neg: Negatives, reduction: str = "mean") -> Tensor:
    """BPR (L1), weighted over candidates (L3) when ``neg.weight`` is set.

    Shape: ``user_emb, pos_emb [B, d]``; ``neg.emb [B, n, d]`` -> scalar, or ``[B]`` with ``"none"``.
    """
    pos, negs = pair_scores(user_emb, pos_emb, neg)
    per_pair = F.softplus(negs - pos.unsqueeze(-1))  # ℓ(r_ui − r_uj) = softplus(r_uj − r_ui)
    return _reduce((per_pair * _weights(neg, per_pair)).sum(-1), reduction)


def soft_bpr_loss(
    user_emb: Tensor, pos_emb: Tensor, neg: Negatives, beta: float = 0.1, reduction: str = "mean"
) -> Tensor:
    """Soft BPR (L4, PDNS Eq. 10): ``softplus(−β (r_ui − r_uj))``, averaged (or weighted) over negatives."""
    pos, negs = pair_scores(user_emb, pos_emb, neg)
    per_pair = F.softplus(beta * (negs - pos.unsqueeze(-1)))
    return _reduce((per_pair * _weights(neg, per_pair)).sum(-1), reduction)


def kpair_loss(user_emb: Tensor, pos_emb: Tensor, neg: Negatives, reduction: str = "mean") -> Tensor:
    """K-pair softplus (L2): ``log(1 + Σ_k exp(r_uj_k − r_ui))``; equals BPR when ``n = 1``."""
    pos, negs = pair_scores(user_emb, pos_emb, neg)
    diff = negs - pos.unsqueeze(-1)
    zeros = torch.zeros_like(diff[..., :1])
    return _reduce(torch.logsumexp(torch.cat([zeros, diff], -1), -1), reduction)


def l2_regularization(view: ModelView, neg: Negatives, reg: float) -> Tensor:
    """R1: ``λ · ½ (‖E_u⁰[batch]‖² + ‖E_i⁰[pos]‖² + Σ_j w_bj ‖E⁰[neg_bj]‖²) / B``.

    The negatives' term uses ``neg.reg_emb`` for synthetic negatives, else the layer-0 rows of ``neg.ids``,
    weighted by ``neg.weight`` (or ``1/n``) so a pool of ``n`` weighted candidates counts like one negative.
    Shared (batch) negatives are not regularised here.
    """
    if reg == 0:
        return view.user_emb.new_zeros(())
    users0, pos0 = view.user_ego, view.pos_ego
    total = (users0 * users0).sum() + (pos0 * pos0).sum()  # x·x: half the cost of pow(2) forward+backward
    if not neg.shared:
        neg0 = (
            neg.reg_emb
            if neg.reg_emb is not None
            else (view.item_ego(neg.ids) if neg.ids is not None else None)
        )
        if neg0 is not None:
            sq = (neg0 * neg0).sum(-1)  # [B, n]
            total = total + (sq * _weights(neg, sq)).sum()
    return reg * 0.5 * total / users0.shape[0]


def _r2_negative_rows(view: ModelView, neg: Negatives) -> Tensor | None:
    """Layer-0 rows of the negatives' side for R2: the whole pool, else the negatives' own rows."""
    if neg.shared:
        return None
    if neg.pool_ids is not None:
        return view.item_ego(neg.pool_ids)
    if neg.reg_emb is not None:
        return neg.reg_emb
    return view.item_ego(neg.ids) if neg.ids is not None else None


def r2_regularization(view: ModelView, neg: Negatives, reg: float, squared: bool = False) -> Tensor:
    """R2, RecBole's ``EmbLoss`` (ALGORITHMS.md §1.3), on the batch's layer-0 rows.

    ``squared=False`` (RecBole's ``require_pow=False``, its default):
    ``λ · (‖U⁰‖_F + ‖P⁰‖_F + ‖N⁰‖_F) / B``, plain (not squared) Frobenius norms of whole tensors;
    ``squared=True`` (``require_pow=True``): ``λ · (‖U⁰‖_F² + ‖P⁰‖_F² + ‖N⁰‖_F²) / (2B)``.

    ``U⁰ = E_u⁰[batch]`` ``[B, d]`` and ``P⁰ = E_i⁰[pos]`` ``[B, d]``. ``N⁰`` holds the layer-0 rows of
    **every** candidate the sampler scored, ``neg.pool_ids`` ``[B, M]`` (or ``[B, K, M]``) -> ``[B, M, d]``,
    chosen or not; they are gathered here, with gradient, and only here. Without a pool, ``N⁰`` is
    ``neg.reg_emb`` (synthetic negatives) or the rows of ``neg.ids``. ``neg.weight`` is ignored (RecBole
    norms the whole tensor), and shared (batch) negatives are not regularised, as in R1.

    Returns a scalar (0 without any gather when ``λ = 0``).
    """
    if reg == 0:
        return view.user_emb.new_zeros(())
    users0 = view.user_ego
    rows = [users0, view.pos_ego]
    neg0 = _r2_negative_rows(view, neg)
    if neg0 is not None:
        rows.append(neg0)
    if squared:
        return reg * torch.stack([(x * x).sum() for x in rows]).sum() / (2 * users0.shape[0])
    return reg * torch.stack([torch.linalg.vector_norm(x) for x in rows]).sum() / users0.shape[0]


#: ``TrainConfig.regularizer`` choices: R1 (:func:`l2_regularization`), R2 and squared R2
#: (:func:`r2_regularization`)
REGULARIZERS = ("r1", "r2", "r2_pow")


def regularization(view: ModelView, neg: Negatives, reg: float, kind: str = "r1") -> Tensor:
    """The regulariser named ``kind`` (one of :data:`REGULARIZERS`) with weight ``λ = reg``. Scalar."""
    if kind == "r1":
        return l2_regularization(view, neg, reg)
    if kind in ("r2", "r2_pow"):
        return r2_regularization(view, neg, reg, squared=kind == "r2_pow")
    raise ConfigError(f"regularizer must be one of {list(REGULARIZERS)}, got {kind!r}")


@dataclass(frozen=True)
class BPRConfig:
    reduction: str = field(default="mean", metadata={"help": "mean | sum | none over the batch"})

    def __post_init__(self):
        require_choice("reduction", self, REDUCTIONS)


@LOSSES.register("bpr", config=BPRConfig, help="BPR softplus(r_uj - r_ui); weighted over candidates if given")
class BPRLoss(nn.Module):
    """BPR / weighted BPR. See :func:`bpr_loss`."""

    def __init__(self, config: BPRConfig | None = None):
        super().__init__()
        self.config = config or BPRConfig()

    def forward(self, user_emb: Tensor, pos_emb: Tensor, neg: Negatives) -> Tensor:
        return bpr_loss(user_emb, pos_emb, neg, self.config.reduction)


@dataclass(frozen=True)
class SoftBPRConfig:
    beta: float = field(
        default=0.1, metadata={"help": "softening factor β = 1 − α, in (0, 1]; PDNS grid 0.01–0.4"}
    )
    reduction: str = field(default="mean", metadata={"help": "mean | sum | none over the batch"})

    def __post_init__(self):
        require_float("beta", self, low=0.0, high=1.0, low_open=True)
        require_choice("reduction", self, REDUCTIONS)


@LOSSES.register("softbpr", config=SoftBPRConfig, help="PDNS soft BPR softplus(-beta (r_ui - r_uj))")
class SoftBPRLoss(nn.Module):
    """Soft BPR with factor ``β`` (PDNS Eq. 10). See :func:`soft_bpr_loss`."""

    def __init__(self, config: SoftBPRConfig | None = None):
        super().__init__()
        self.config = config or SoftBPRConfig()

    def forward(self, user_emb: Tensor, pos_emb: Tensor, neg: Negatives) -> Tensor:
        return soft_bpr_loss(user_emb, pos_emb, neg, self.config.beta, self.config.reduction)


@LOSSES.register("kpair", config=BPRConfig, help="K-pair softplus log(1 + sum_k exp(r_uj_k - r_ui))")
class KPairLoss(nn.Module):
    """K-pair softplus (MixGCF/DENS). See :func:`kpair_loss`."""

    def __init__(self, config: BPRConfig | None = None):
        super().__init__()
        self.config = config or BPRConfig()

    def forward(self, user_emb: Tensor, pos_emb: Tensor, neg: Negatives) -> Tensor:
        return kpair_loss(user_emb, pos_emb, neg, self.config.reduction)

"""Sampled softmax with logQ correction (loss ``"softmax"``, L5) and the streaming frequency estimator.

Loss (ALGORITHMS.md §6.1, §6.3), per row ``b`` with positive logit ``s_b = ⟨u_b, v_{i_b}⟩`` and negative
logits ``s_bj = ⟨u_b, v_j⟩`` over the record's columns ``j``, in TFRS's order of operations:

1. (optional, ``normalize``) L2-normalise ``u_b``, ``v_{i_b}`` and every ``v_j``;
2. divide every logit by the temperature ``τ``;
3. logQ correction: ``s_bj ← s_bj − log Q_j`` with ``Q_j`` = ``neg.log_q`` (when the sampler provides it and
   ``logq_correction`` is on); the positive is corrected too (``s_b ← s_b − log Q_{i_b}``) only with
   ``correct_positive=True``;
4. mask: ``s_bj ← −∞`` (the dtype's most negative finite value) where ``neg.mask[b, j]`` (the row's own
   positive among shared in-batch columns, accidental hits, optionally the user's training positives);
5. cross-entropy with the positive as class 0: ``ℓ_b = logsumexp(s_b, s_b1, …, s_bn) − s_b``.

Where the positive's ``log Q`` comes from (DECIDE §9.9). A batch sampler returns a
:class:`~recneg.samplers.batch.BatchNegatives` whose ``pos_log_q [B]`` is the proposal term of each row's
positive *item*, on the same scale as ``log_q``: for ``in_batch``/``mns`` it is the ``log_q`` of the row's own
(diagonal) in-batch column, for the corpus samplers ``log(n · p(i_b))`` (TensorFlow's ``sampled_softmax_loss``
subtracts the expected count from the true class as well). Records without ``pos_log_q`` (per-row samplers:
``uniform``, ``popularity``, ``dns``, …) can only have their negatives corrected, and
``correct_positive=True`` with such a sampler raises :class:`ConfigError` instead of silently doing nothing.

Defaults (decisions): ``temperature = 1.0`` and ``normalize = False`` suit CF embeddings trained with plain
dot products; Yi et al. use ``normalize=True`` with ``τ = 0.05``. ``correct_positive = False`` follows the MNS
paper's Eq. 5 (with Q on the count scale the sum ``Σ_j e^{s_bj}/Q̃_j`` then estimates the full partition sum);
``True`` is Yi et al.'s SBC batch softmax. ``neg.weight`` (candidate weights of DNS(M,N)/Softmax-v) is not
used by this loss: the softmax weights negatives by their own scores.

Streaming frequency estimation (§6.2, Yi et al. Algorithms 2–3): :class:`StreamingFrequencyEstimator`.

References:
    Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
    Yang et al., "Mixed Negative Sampling for Learning Two-tower Neural Networks in Recommendations",
    WWW 2020 companion. Jean et al., "On Using Very Large Target Vocabulary for NMT", ACL 2015.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.errors import ConfigError
from recneg.losses import REDUCTIONS, _reduce, pair_scores
from recneg.registry import LOSSES
from recneg.samplers.base import Negatives


# --------------------------------------------------------------------------------------------- loss
class _SharedSoftmaxRows(torch.autograd.Function):
    """Per-row cross-entropy over one shared negative set, in few passes over the ``[B, n]`` logits.

    ``ℓ_b = log(e^{s_b} + Σ_j e^{x_bj}) − s_b`` with ``x = Q Vᵀ − log Q``, masked entries at the dtype's most
    negative value. The same value as steps 2–5 of :func:`sampled_softmax_loss`, but the logits are built,
    corrected, masked and exponentiated in place in one buffer, which backward reuses:
    ``∂ℓ_b/∂x_bj = e^{x_bj − M_b} / S_b`` (the softmax), so ``∂ℓ/∂Q = G V`` and ``∂ℓ/∂V = Gᵀ Q`` with
    ``G = diag(g) · softmax``. Autograd's version makes ~20 passes over ``[B, n]`` (sub, masked_fill, the
    logsumexp and their backwards, each with its own buffer); this one makes 7 (6 forward, 1 backward) plus
    the three matmuls.

    Shape: ``q [B, d]`` (queries already divided by ``τ``), ``v [n, d]``, ``pos [B]`` (positive logits, on the
    same scale), ``log_q [n]`` or ``[B, n]`` or ``None``, ``mask [B, n]`` bool or ``None`` -> ``[B]``.
    """

    @staticmethod
    def forward(ctx, q, v, pos, log_q, mask):  # type: ignore[override]
        x = q @ v.T  # [B, n]
        if log_q is not None:
            x.sub_(log_q)
        if mask is not None:
            x.masked_fill_(mask, torch.finfo(x.dtype).min)
        top = torch.maximum(x.amax(dim=1), pos)  # M_b, over the positive and the negatives
        x.sub_(top.unsqueeze(1)).exp_()  # e^{x_bj − M_b}; masked entries underflow to exactly 0
        pos_term = (pos - top).exp()
        total = x.sum(dim=1) + pos_term  # S_b
        ctx.save_for_backward(q, v, x, total, pos_term)
        return total.log() + top - pos

    @staticmethod
    def backward(ctx, grad_rows):  # type: ignore[override]
        q, v, x, total, pos_term = ctx.saved_tensors
        scale = grad_rows / total  # [B]
        weights = x * scale.unsqueeze(1)  # G [B, n]
        grad_q = weights @ v if ctx.needs_input_grad[0] else None
        grad_v = weights.T @ q if ctx.needs_input_grad[1] else None
        grad_pos = grad_rows * (pos_term / total - 1.0) if ctx.needs_input_grad[2] else None
        return grad_q, grad_v, grad_pos, None, None


def sampled_softmax_loss(
    user_emb: Tensor,
    pos_emb: Tensor,
    neg: Negatives,
    temperature: float = 1.0,
    normalize: bool = False,
    logq_correction: bool = True,
    correct_positive: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Sampled softmax cross-entropy with logQ correction (see the module docstring for the order).

    Args:
        user_emb: ``[B, d]`` query embeddings ``u_b``.
        pos_emb: ``[B, d]`` positive-item embeddings.
        neg: a :class:`Negatives` record: shared ``emb [n, d]`` (in-batch, MNS, corpus samplers) or per-row
            ``emb [B, n, d]``; ``log_q [n]`` or ``[B, n]``; ``mask [B, n]``; optional ``pos_log_q [B]``.
        temperature: ``τ``; logits are divided by it before the correction.
        normalize: L2-normalise the embeddings first (cosine logits).
        logq_correction: subtract ``neg.log_q`` when the sampler provides it (no-op when it does not).
        correct_positive: subtract ``neg.pos_log_q`` from the positive logit as well.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        ``user_emb, pos_emb [B, d]`` -> scalar, or ``[B]`` with ``reduction="none"``.
    """
    if normalize:
        if neg.score is not None or neg.pos_score is not None:
            raise ConfigError(
                "softmax loss: normalize=true cannot apply to a sampler that supplies its own scores"
            )
        user_emb, pos_emb = F.normalize(user_emb, dim=-1), F.normalize(pos_emb, dim=-1)
        neg = dataclasses.replace(neg, emb=F.normalize(neg.emb, dim=-1))
    if neg.score is None and neg.pos_score is None and neg.shared and neg.emb.shape[0] > 0:
        # one [n, d] set for every row: the fused path (same value and gradient, far fewer [B, n] passes)
        query = user_emb / temperature  # ⟨u/τ, v⟩ = ⟨u, v⟩/τ: scale [B, d], not [B, n]
        pos = (query * pos_emb).sum(-1)
        log_q = None
        if logq_correction and neg.log_q is not None:
            log_q = neg.log_q.detach().to(query.dtype)
            if correct_positive:
                pos = pos - _positive_log_q(neg).to(pos.dtype)
        per_row = _SharedSoftmaxRows.apply(query, neg.emb, pos, log_q, neg.mask)
        return _reduce(per_row, reduction)
    if neg.score is None and neg.pos_score is None:
        # ⟨u/τ, v⟩ = ⟨u, v⟩/τ: scale the [B, d] queries instead of the [B, n] logits (one pass fewer)
        pos, negs = pair_scores(user_emb / temperature, pos_emb, neg)  # [B], [B, n]
    else:
        pos, negs = pair_scores(user_emb, pos_emb, neg)
        pos, negs = pos / temperature, negs / temperature
    if logq_correction and neg.log_q is not None:
        negs = negs - neg.log_q.detach().to(negs.dtype)
        if correct_positive:
            pos = pos - _positive_log_q(neg).to(pos.dtype)
    if neg.mask is not None:
        negs = negs.masked_fill(neg.mask, torch.finfo(negs.dtype).min)
    # class 0 = the positive: logsumexp(s_b, s_b1..s_bn) = logaddexp(s_b, logsumexp_j s_bj) (no [B, n+1] copy)
    per_row = torch.logaddexp(pos, torch.logsumexp(negs, -1)) - pos
    return _reduce(per_row, reduction)


def _positive_log_q(neg: Negatives) -> Tensor:
    """``log Q`` of each row's positive ``[B]`` (detached), or a :class:`ConfigError` naming the fix."""
    pos_log_q = getattr(neg, "pos_log_q", None)
    if pos_log_q is None:
        raise ConfigError(
            "softmax loss: correct_positive=true needs the positive's log Q, which this sampler "
            "does not provide (use in_batch, mns, uniform_corpus or popularity_corpus, or "
            "correct_positive=false)"
        )
    return pos_log_q.detach()


@dataclass(frozen=True)
class SoftmaxConfig:
    temperature: float = field(
        default=1.0, metadata={"help": "logit temperature τ (1.0 for raw dot products; ~0.05 with normalize)"}
    )
    normalize: bool = field(
        default=False, metadata={"help": "L2-normalise user and item embeddings (cosine)"}
    )
    logq_correction: bool = field(
        default=True, metadata={"help": "subtract the sampler's log Q from the negative logits when given"}
    )
    correct_positive: bool = field(
        default=False,
        metadata={"help": "also subtract log Q of the positive (Yi et al.; MNS Eq. 5 does not)"},
    )
    reduction: str = field(default="mean", metadata={"help": "mean | sum | none over the batch"})

    def __post_init__(self):
        require_float("temperature", self, low=0.0, low_open=True)
        require_bool("normalize", self)
        require_bool("logq_correction", self)
        require_bool("correct_positive", self)
        require_choice("reduction", self, REDUCTIONS)


@LOSSES.register("softmax", config=SoftmaxConfig, help="sampled softmax with logQ correction and masking")
class SampledSoftmaxLoss(nn.Module):
    """Sampled softmax with logQ correction (L5). See :func:`sampled_softmax_loss`.

    Works with shared negatives (``in_batch``, ``mns``, ``uniform_corpus``, ``popularity_corpus``) and with
    per-row negatives (e.g. ``uniform`` with ``n_negatives=64``: a plain sampled softmax).
    """

    def __init__(self, config: SoftmaxConfig | None = None):
        super().__init__()
        self.config = config or SoftmaxConfig()

    def forward(self, user_emb: Tensor, pos_emb: Tensor, neg: Negatives) -> Tensor:
        c = self.config
        return sampled_softmax_loss(
            user_emb,
            pos_emb,
            neg,
            c.temperature,
            c.normalize,
            c.logq_correction,
            c.correct_positive,
            c.reduction,
        )

    def extra_repr(self) -> str:
        return repr(self.config)


# --------------------------------------------------------------------------------------------- estimator
_PRIME = 2_147_483_647  # 2^31 − 1, modulus of the universal hashes ((a·y + b) mod P) mod H


class StreamingFrequencyEstimator(nn.Module):
    """Streaming estimate of each item's per-batch occurrence probability (Yi et al. 2019, Algs. 2–3).

    State (buffers, so ``state_dict`` checkpoints it): ``last_step`` = ``A`` and ``gap`` = ``Bgap``, both
    ``[n_hashes, H]`` float64, and the global step ``step`` = ``t``. At each :meth:`update` (one training
    step, ``t ← t + 1``), for every hash ``i`` and every slot ``h_i(y)`` hit by the step's items:
    ``Bgap ← (1 − α) Bgap + α (t − A)``, then ``A ← t``. Estimate: ``p̂(y) = 1 / max_i Bgap_i[h_i(y)]``,
    clamped to ``≤ 1`` (the max-gap rule of Alg. 3: collisions only shorten a slot's gap, so the largest gap
    is the least contaminated).

    Decisions (ALGORITHMS.md §6.2, §9.9): a slot is updated **once per step** however many of the step's items
    hit it (the paper's per-item loop would record a gap of 0 for an item's second occurrence in a batch and
    for two distinct items colliding in one step); so ``p̂`` estimates the probability that the item occurs in
    a batch, ≈ ``B · q(y)`` for rare items. Initial state ``A = 0``, ``Bgap = init_gap`` (paper: 100), so an
    item never seen has ``p̂ = 1 / init_gap``. The hash is the identity (``H = n_items``, no collision) when
    ``hash_size = 0`` and ``n_hashes = 1``; otherwise ``h_i(y) = ((a_i y + b_i) mod P) mod H`` with
    ``a_i, b_i`` drawn from ``seed`` and stored as buffers.

    Args:
        n_items: size of the item id space.
        hash_size: ``H``; 0 means ``n_items``.
        n_hashes: ``m``, the number of independent hash functions and array pairs.
        alpha: ``α``, the learning rate of the gap average (paper: 0.01).
        init_gap: initial ``Bgap`` (paper: 100).
        seed: seed of the hash parameters.

    Shape:
        ``update(ids [...])``; ``estimate(ids [...]) -> [...]`` float64 in ``(0, 1]``.
    """

    hash_a: Tensor
    hash_b: Tensor
    last_step: Tensor
    gap: Tensor
    step: Tensor

    def __init__(
        self,
        n_items: int,
        hash_size: int = 0,
        n_hashes: int = 1,
        alpha: float = 0.01,
        init_gap: float = 100.0,
        seed: int = 0,
    ):
        super().__init__()
        require_int("n_items", None, low=1, value=n_items)
        require_int("hash_size", None, low=0, value=hash_size)
        require_int("n_hashes", None, low=1, value=n_hashes)
        require_float("alpha", None, low=0.0, high=1.0, low_open=True, value=alpha)
        require_float("init_gap", None, low=1.0, value=init_gap)
        self.n_items, self.n_hashes, self.alpha, self.init_gap = int(n_items), int(n_hashes), alpha, init_gap
        self.hash_size = int(hash_size) or int(n_items)
        self.identity = hash_size == 0 and n_hashes == 1
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("hash_a", torch.randint(1, _PRIME, (n_hashes,), generator=gen))
        self.register_buffer("hash_b", torch.randint(0, _PRIME, (n_hashes,), generator=gen))
        self.register_buffer("last_step", torch.zeros(n_hashes, self.hash_size, dtype=torch.float64))
        self.register_buffer(
            "gap", torch.full((n_hashes, self.hash_size), float(init_gap), dtype=torch.float64)
        )
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    def slots(self, ids: Tensor) -> Tensor:
        """Hash slots of ``ids [...]`` under every hash: ``[n_hashes, ...]`` int64 in ``0..H-1``."""
        ids = ids.long()
        if self.identity:
            return ids.unsqueeze(0)
        shape = (-1,) + (1,) * ids.dim()
        return (self.hash_a.view(shape) * ids + self.hash_b.view(shape)) % _PRIME % self.hash_size

    @torch.no_grad()
    def update(self, ids: Tensor) -> None:
        """Record one training step whose batch holds the items ``ids [...]`` (``t ← t + 1``)."""
        self.step += 1
        flat = (
            self.slots(ids.reshape(-1))
            + self.hash_size * torch.arange(self.n_hashes, device=ids.device)[:, None]
        )
        keys = torch.unique(flat.reshape(-1))  # once per (hash, slot) per step
        gap, last = self.gap.view(-1), self.last_step.view(-1)
        gap[keys] = (1.0 - self.alpha) * gap[keys] + self.alpha * (self.step - last[keys])
        last[keys] = self.step

    @torch.no_grad()
    def estimate(self, ids: Tensor) -> Tensor:
        """``p̂(y) = min(1, 1 / max_i Bgap_i[h_i(y)])`` for ``ids [...]``; float64, same shape."""
        slot = self.slots(ids)  # [m, ...]
        gaps = torch.gather(self.gap, 1, slot.reshape(self.n_hashes, -1)).reshape(slot.shape)
        return (1.0 / gaps.amax(0)).clamp_(max=1.0)

    def extra_repr(self) -> str:
        kind = "identity" if self.identity else f"{self.n_hashes} hashes"
        return (
            f"n_items={self.n_items}, H={self.hash_size} ({kind}), alpha={self.alpha}, "
            f"init_gap={self.init_gap}"
        )

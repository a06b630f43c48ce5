"""Parametric disentangling samplers: ANS (augmented negative sampling) and DENS (disentangled negatives).

Both split every candidate negative into a "hard" factor (what makes it look like a positive) and an "easy"
factor with a learned gate, and both train their gates with an auxiliary loss that the sampler returns in
:attr:`Negatives.aux_loss` (already weighted by its ``γ``), so the trainer optimises sampler and model
parameters together without knowing which sampler it runs.

- :class:`ANSSampler` (``"ans"``) — Zhao et al., *Augmented Negative Sampling for Collaborative Filtering*,
  RecSys 2023; official code Asa9aoTK/ANS-Recbole (``recbole/model/general_recommender/ans.py``). The paper's
  equations are missing from our copy; ALGORITHMS.md §5 reconstructs them, and this module implements both
  readings as ``mode="paper"`` (§5.1) and ``mode="code"`` (§5.2, the default).
- :class:`DENSSampler` (``"dens"``) — Lai et al., *Disentangled Negative Sampling for Collaborative
  Filtering*, WSDM 2023; official code Riwei-HEU/DENS (``DENS/modules/LightGCN.py``), ALGORITHMS.md §7.5.

Both work with per-layer models (LightGCN: tensors ``[.., L+1, d]``, one selection per layer, hop-mixed
negative) and with MF (``L + 1 = 1``). A model without per-layer tensors is treated as having one layer,
its pooled embedding. The docs page ``docs/samplers_ans.md`` has the paper-vs-code table and the ablations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.ans_kernels import PAIRWISE_EPS, compiled_ans_serves, fused_aux_losses
from recneg.errors import ConfigError
from recneg.models.base import ModelView
from recneg.registry import SAMPLERS
from recneg.samplers.base import Negatives, Sampler, uniform_pool

__all__ = [
    "ANSConfig",
    "ANSSampler",
    "ANSAugmentation",
    "DENSConfig",
    "DENSSampler",
    "layer_tensors",
    "safe_reciprocal_sigmoid",
]


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


_PAIRWISE_EPS = PAIRWISE_EPS  # torch.nn.functional.pairwise_distance's, added to h_n − h_p (the code's L_d)


# ------------------------------------------------------------------------------------------------ helpers
def layer_tensors(view: ModelView, pool: Tensor | None, per_layer: bool):
    """User, positive and candidate embeddings with an explicit layer axis.

    With ``per_layer`` the model's layer tensors ``e^(l)``, ``l = 0..L``; otherwise the pooled embeddings
    ``ē`` as a single "layer". All carry gradient (call under ``torch.no_grad()`` for scoring only).

    Shape: ``pool [B, *S]`` -> ``e_u [B, L', d]``, ``e_p [B, L', d]``, ``e_n [B, *S, L', d]`` (``None`` when
    ``pool`` is ``None``) with ``L' = L + 1`` (per layer) or ``1`` (pooled).
    """
    if per_layer:
        e_n = None if pool is None else view.item_layers(pool)
        return view.user_layers, view.pos_layers, e_n
    e_n = None if pool is None else view.item_emb(pool).unsqueeze(-2)
    return view.user_emb.unsqueeze(1), view.pos_emb.unsqueeze(1), e_n


def safe_reciprocal_sigmoid(x: Tensor) -> Tensor:
    """``σ(1 / x)`` — the ANS code's margin — with a backward pass that never produces NaN.

    ``σ(1/x)`` jumps from 0 to 1 as ``x`` crosses 0. Autograd computes its derivative as
    ``σ'(1/x) · (−1/x²)``; near ``x = 0`` the first factor is exactly 0 and the second overflows, giving
    ``0 · ∞ = NaN``. Entries with ``|x| < t``, ``t = finfo.tiny^(1/4)`` (3e-10 in float32), are replaced by
    ``±t`` (``+t`` at ``x = +0``) before the reciprocal. This is **not** a clamp of the function: ``σ(±1/t)``
    is already exactly 1 or 0 in float32/float64, so the forward value is bit-identical to ``σ(1/x)``; only
    the gradient there becomes the correct 0 instead of NaN.
    """
    t = torch.finfo(x.dtype).tiny ** 0.25
    small = x.abs() < t
    x = torch.where(small, torch.where(torch.signbit(x), -t, t).to(x.dtype), x)
    return torch.sigmoid(x.reciprocal())


def _gather_candidates(x: Tensor, idx: Tensor) -> Tensor:
    """``x [B, M, L, d]``, ``idx [B, L]`` -> ``[B, L, d]`` with ``out[b, l] = x[b, idx[b, l], l]``."""
    index = idx.unsqueeze(1).unsqueeze(-1).expand(-1, 1, -1, x.shape[-1])
    return x.gather(1, index).squeeze(1)


def _stats(**values: Tensor | float) -> dict[str, float]:
    """Detached diagnostics as Python floats with a single device synchronisation."""
    keys = list(values)
    if not keys:
        return {}
    ref = next((v for v in values.values() if isinstance(v, Tensor)), None)
    if ref is None:
        return {k: float(v) for k, v in values.items()}
    f64 = torch.float64
    parts = [
        v.detach().reshape(()).to(f64) if isinstance(v, Tensor) else ref.new_tensor(v, dtype=f64)
        for v in values.values()
    ]
    stacked = torch.stack(parts)
    return dict(zip(keys, stacked.tolist(), strict=True))


def _check_dim(view: ModelView, dim: int, owner: str) -> None:
    d = int(view.user_emb.shape[-1])
    if d != dim:
        raise ConfigError(
            f"dim of {owner} must equal the model's embedding size: the sampler was built with dim={dim} but "
            f"the model gives d={d} (pass dim=<model dim> when building the sampler)"
        )


# ------------------------------------------------------------------------------------------------ ANS
ANS_MODES = {"code", "paper"}
ANS_SELECTIONS = {"auto", "per_layer", "pooled"}
ANS_SCORES = {"pooled", "sum_layers"}


@dataclass(frozen=True)
class ANSConfig:
    """Settings of :class:`ANSSampler`. Paper symbols in brackets; search ranges from ANS §5.1.3."""

    dim: int = _opt(64, "embedding size d of the model (sizes the gate and margin layers)")
    n_candidates: int = _opt(16, "candidate pool per positive (M in ANS); paper grid {2, 4, 8, 16, 32}")
    eps: float = _opt(
        0.5, "ε: weight of the augmentation gain in the selection; paper range [0, 1]; default not from paper"
    )
    gamma: float = _opt(
        0.03, "γ: weight of L_c + L_d; paper range [0, 1], default from a third-party port, not the paper"
    )
    noise_scale: float = _opt(0.1, "noise bound of Δ (0.1 in paper and code)")
    mode: str = _opt("code", "code (official code's margin, Δ, L_d) | paper (reconstructed, ALGORITHMS §5.1)")
    selection: str = _opt(
        "auto",
        "per_layer (code: one choice per layer, hop-mixed) | pooled (paper) | auto (per_layer if the model "
        "has layers)",
    )
    score: str = _opt(
        "pooled",
        "BPR logit: pooled <ē_u, ē_n> (consistent with evaluation) | sum_layers Σ_l <e_u^l, e_n^l> (code)",
    )
    detach_margin: bool = _opt(False, "stop BPR's gradient into the margin (and so the gate); code: False")
    disentangle: bool = _opt(True, "ablation 'w/o disentanglement' if False: gate fixed to 1/2, no L_c, L_d")
    use_gain: bool = _opt(True, "ablation 'w/o gain' when False: select by s_aug alone (ε = 0)")
    regulate_direction: bool = _opt(True, "ablation if False: random ±1 direction instead of sgn(e_p − e_n)")
    regulate_magnitude: bool = _opt(True, "ablation if False: margin κ ≡ 1 (no cap by the learned margin)")
    augment: bool = _opt(True, "False: Δ ≡ 0 (with gamma=0 this is exactly hop-wise DNS)")
    exclude_positives: bool = _opt(True, "redraw candidates that are training positives")

    def __post_init__(self):
        require_int("dim", self, low=1)
        require_int("n_candidates", self, low=1)
        require_float("eps", self, low=0.0)
        require_float("gamma", self, low=0.0)
        require_float("noise_scale", self, low=0.0)
        require_choice("mode", self, ANS_MODES)
        require_choice("selection", self, ANS_SELECTIONS)
        require_choice("score", self, ANS_SCORES)
        for name in (
            "detach_margin",
            "disentangle",
            "use_gain",
            "regulate_direction",
            "regulate_magnitude",
            "augment",
            "exclude_positives",
        ):
            require_bool(name, self)
        if self.score == "sum_layers" and self.selection == "pooled":
            raise ConfigError(
                "score of ANSConfig must be 'pooled' when selection='pooled' (sum_layers scores per-layer "
                "negatives, which a pooled selection does not build), got score='sum_layers'"
            )


class ANSAugmentation(NamedTuple):
    """Intermediate tensors of ANS for one batch (all ``[B, M, L', d]`` unless stated; ``L'`` = layers).

    Attributes:
        gate: ``g`` (Eq. 3), ``(0, 1)``; a constant 1/2 when ``disentangle=False``.
        hard_neg, easy_neg: ``h_n = g ⊙ e_n``, ``z_n = e_n − h_n`` (Eq. 4).
        hard_pos, easy_pos: ``h_p = g ⊙ e_p``, ``z_p = e_p − h_p`` (Eq. 6; the positive split by each
            candidate's gate).
        direction: ``sgn(z_p − z_n)`` (Eq. 9), computed as ``sgn(e_p − e_n)`` (equal for every gate in
            ``(0, 1)``; unlike the code's form it stays right where ``g`` rounds to 1), or random ±1 when
            ``regulate_direction=False``.
        margin: ``κ`` ``[B, M, L', 1]`` (Eq. 10), before any detach; ``None`` when unused.
        delta: ``Δ`` (Eq. 10), zeros when ``augment=False``.
        aug: ``ẽ_n = h_n + (z_n + dir ⊙ Δ)`` (Eq. 11), computed as ``e_n + dir ⊙ Δ`` (the same value).

    :meth:`ANSSampler.augment` fills every field. Inside the sampler's forward, where the compiled passes
    compute ``L_c``, ``L_d`` and the margin (:mod:`recneg.ans_kernels`), the gate and the four factors are
    never built and are ``None``.
    """

    gate: Tensor | None
    hard_neg: Tensor | None
    easy_neg: Tensor | None
    hard_pos: Tensor | None
    easy_pos: Tensor | None
    direction: Tensor
    margin: Tensor | None
    delta: Tensor
    aug: Tensor


@SAMPLERS.register("ans", config=ANSConfig, help="ANS: disentangle, augment, pick by score + gain")
class ANSSampler(Sampler):
    """Augmented negative sampling (ANS, Zhao et al., RecSys 2023).

    For each training pair ``(u, p)`` draw ``M`` candidates ``e_n`` (``uniform_excl``), then per layer
    ``l`` (the official code) or once on pooled embeddings (the paper's MF setting):

    1. gate (Eq. 3) ``g = σ((W_item e_n + b_i) ⊙ (W_user e_u + b_u))``; hard/easy factors
       ``h_n = g ⊙ e_n``, ``z_n = e_n − h_n``; the positive is split by the same gate: ``h_p``, ``z_p``;
    2. direction (Eq. 8–9) ``dir = sgn(z_p − z_n)``, which equals ``sgn(e_p − e_n)`` for any gate because
       ``z_p − z_n = (1 − g) ⊙ (e_p − e_n)``;
    3. margin and magnitude (Eq. 10):

       - ``mode="code"``: ``κ = σ(1 / (w·(h_n ⊙ h_p) + b))``, ``Δ = noise_scale · κ · u / ‖u‖₂`` with
         ``u ~ U[0, 1)^d`` per ``(b, m, l)``, so ``‖Δ‖₂ = noise_scale · κ`` exactly;
       - ``mode="paper"``: ``κ = σ(w·(h_n ⊙ h_p) + b)``, ``Δ = min(Δ₀, κ)`` element-wise with
         ``Δ₀ ~ U[0, noise_scale]^d`` (one reading of "kept below the margin");

    4. augmented negative (Eq. 11) ``ẽ_n = h_n + (z_n + dir ⊙ Δ) = e_n + dir ⊙ Δ``;
    5. selection (Eq. 12–13), detached: ``m* = argmax_m s_aug + ε (s_aug − s_orig)`` with
       ``s_aug = ⟨e_u, ẽ_n⟩``, ``s_orig = ⟨e_u, e_n⟩`` (per layer: ``e_u^(l)``, as the code);
    6. auxiliary losses (Eq. 5, 7), returned as ``aux_loss = γ (L_c + L_d)``:
       ``L_c = mean_{b,l} log(1 + Σ_m exp(⟨e_u, z_n⟩ − ⟨e_u, h_n⟩))``;
       ``L_d = mean_{b,m,l} ‖h_n − h_p‖₂ + mean_{b,m} Σ_l easy(z_p, z_n)`` with
       ``easy = ‖z_p ⊙ z_n‖₂`` (code) or ``⟨z_p, z_n⟩`` (paper; may be negative).

    The negative the loss sees is the chosen ``ẽ_n`` pooled over layers (mean, as LightGCN pools), with
    gradient: BPR reaches ``e_n`` directly and the gate only through ``Δ → κ`` (the margin); with
    ``detach_margin=True`` the gate gets no BPR gradient at all (ALGORITHMS.md §5.4).

    Decisions (ALGORITHMS.md §5.6, §9 items 1–4):

    - default ``mode="code"``: the paper's equations are lost; the code is the only exact source for the
      margin, ``Δ`` and ``L_d``. ``mode="paper"`` implements the prose reading (§5.1).
    - ``selection="auto"``: per layer (code, hop-mixed) when the model exposes layers, else pooled. With MF
      (``L + 1 = 1``) the two are identical. ``score="pooled"`` by default (consistent with evaluation);
      ``"sum_layers"`` gives the code's ``Σ_l ⟨e_u^(l), x^(l)⟩`` logits through ``Negatives.score``.
    - ``ids``: the chosen candidates' item ids ``[B, 1]`` when one item is chosen per row (pooled selection,
      or one layer); ``None`` for per-layer selection with ``L + 1 > 1``, because the negative then mixes up
      to ``L + 1`` items. They are the *source* items; the negative itself is augmented.
    - ``reg_emb``: the layer-0 row of the raw candidate chosen at layer 0 (R1, as MixGCF/DENS regularise the
      layer-0 slot of their synthetic negative); ``Δ`` is noise, not a parameter, so it is not regularised.
      The code's R2 (all ``M`` candidates) is left to the regulariser.
    - ablations (paper Table 5): ``disentangle=False`` fixes ``g ≡ 1/2 = σ(0)`` (the neutral gate) and drops
      ``L_c`` and ``L_d``: with a constant gate ``L_c`` is the constant ``log(1 + M)`` and ``L_d`` would only
      pull negatives onto positives, so neither has anything to disentangle. The direction is unchanged
      (it never depends on the gate) and the margin still learns from ``e_n ⊙ e_p / 4``.
      ``use_gain=False`` sets ``ε = 0``. ``regulate_direction=False`` draws ``dir`` uniformly from
      ``{−1, +1}^d``. ``regulate_magnitude=False`` sets ``κ ≡ 1``: in paper mode ``Δ ~ U[0, 0.1]^d``
      uncapped, in code mode ``Δ = 0.1 · u/‖u‖`` (keeping each mode's noise scale, so only the learned
      margin is removed). ``augment=False`` gives ``Δ ≡ 0``: ``ẽ_n = e_n`` and ANS with ``gamma = 0`` is
      exactly (hop-wise) DNS on the same pool.
    - ``ε`` and ``γ`` defaults (0.5, 0.03) are not from the paper (it publishes none; γ = 0.03 is a
      third-party port's value [U]). Suggested grid: ``γ ∈ {0.01, 0.03, 0.1, 0.3}``,
      ``ε ∈ {0.1, 0.3, 0.5, 1.0}``, ``M ∈ {8, 16, 32}``.
    - parameters keep PyTorch's default ``nn.Linear`` init, as in the code (created after RecBole's Xavier
      init). ``dim`` must equal the model's embedding size; builders pass the model's ``dim``.

    Args:
        config: :class:`ANSConfig`.

    Attributes:
        user_gate: ``W_user`` ``nn.Linear(d, d)``; ``item_gate``: ``W_item`` ``nn.Linear(d, d)``.
        margin_layer: ``w ∈ ℝ^d`` and bias, ``nn.Linear(d, 1)``.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, 1, d], ids [B, 1] or None, aux_loss [], reg_emb [B, 1, d],
        pool_ids [B, M], score [B, 1] and pos_score [B] when score="sum_layers")``.

    Stats:
        ``dns_overlap`` (share of (row, layer) choices whose source item is DNS's top-1 ``⟨ē_u, ē_n⟩`` on the
        same pool; ANS Table 4 reports < 50 %), ``aug_gain_mean``/``aug_gain_std`` (``s_aug − s_orig`` of the
        chosen candidates), ``margin_mean`` (``κ`` over the pool, when used), ``loss_contrastive`` and
        ``loss_disentangle`` (unweighted, when computed).

    References:
        Zhao, Kai et al. "Augmented Negative Sampling for Collaborative Filtering." RecSys 2023
        (arXiv 2308.05972). Code: github.com/Asa9aoTK/ANS-Recbole. ALGORITHMS.md §5.

    Example::

        sampler = build_sampler("ans", dim=64, n_candidates=16, eps=0.5, gamma=0.03).bind(train)
    """

    def __init__(self, config: ANSConfig | None = None):
        super().__init__(config or ANSConfig())
        d = self.config.dim
        self.user_gate = nn.Linear(d, d)
        self.item_gate = nn.Linear(d, d)
        self.margin_layer = nn.Linear(d, 1)
        self.excludes_positives = self.config.exclude_positives
        self.needs_layers = self.config.selection == "per_layer"

    # ---------------------------------------------------------------------------------------- pieces
    def per_layer(self, view: ModelView) -> bool:
        """Whether this batch is processed per layer (resolves ``selection="auto"``)."""
        if self.config.selection == "auto":
            return view.n_layers is not None
        return self.config.selection == "per_layer"

    def gate(self, e_u: Tensor, e_n: Tensor) -> Tensor:
        """Gate ``g = σ((W_item e_n + b_i) ⊙ (W_user e_u + b_u))`` (Eq. 3); ``1/2`` without disentangling.

        Shape: ``e_u [B, L', d]``, ``e_n [B, M, L', d]`` -> ``[B, M, L', d]``.
        """
        if self.config.disentangle:
            return torch.sigmoid(self.item_gate(e_n) * self.user_gate(e_u).unsqueeze(1))
        return torch.full_like(e_n, 0.5)

    def margin(self, hard_neg: Tensor, hard_pos: Tensor) -> Tensor:
        """Margin ``κ [..., 1]`` (Eq. 10): ``σ(1/(w·x + b))`` (code) or ``σ(w·x + b)`` (paper).

        ``x = h_n ⊙ h_p``; the margin layer holds ``w ∈ ℝ^d`` and ``b``.
        """
        return self._margin_of_logit(self.margin_layer(hard_neg * hard_pos))

    def _margin_of_logit(self, x: Tensor) -> Tensor:
        return safe_reciprocal_sigmoid(x) if self.config.mode == "code" else torch.sigmoid(x)

    def _direction(self, pos: Tensor, e_n: Tensor, generator) -> Tensor:
        """Direction ``dir [B, M, L', d]`` (Eq. 9), or uniform ``±1`` without regulated direction.

        ``sgn(z_p − z_n)`` is evaluated through the identity ``z_p − z_n = (1 − g) ⊙ (e_p − e_n)`` with
        ``1 − g > 0``: the same value, but robust to a saturated gate (``g == 1.0`` in float32 would give 0).
        """
        if self.config.regulate_direction:
            return torch.sign(pos - e_n)
        bits = torch.randint(0, 2, e_n.shape, device=e_n.device, generator=generator)
        return (bits * 2 - 1).to(e_n.dtype)

    def _noise(self, cap: Tensor | None, like: Tensor, generator) -> tuple[Tensor, Tensor]:
        """``(base, Δ)`` (Eq. 10) from one ``U[0, 1)`` draw shaped like ``like``, capped by ``cap`` (or not).

        Code mode: ``base = u/‖u‖₂``, ``Δ = noise_scale · κ · base``; paper mode:
        ``base = Δ₀ = noise_scale · u``, ``Δ = min(Δ₀, κ)``.
        """
        cfg = self.config
        noise = torch.rand(like.shape, device=like.device, generator=generator, dtype=like.dtype)
        if cfg.mode == "code":
            base = F.normalize(noise, p=2.0, dim=-1)
            return base, cfg.noise_scale * base if cap is None else cfg.noise_scale * cap * base
        base = cfg.noise_scale * noise
        return base, base if cap is None else torch.minimum(base, cap)

    def augment(self, e_u: Tensor, e_p: Tensor, e_n: Tensor, generator: torch.Generator | None = None):
        """Disentangle and augment every candidate (Eqs. 3–11).

        Args:
            e_u, e_p: ``[B, L', d]`` user and positive embeddings (per layer, or pooled with ``L' = 1``).
            e_n: ``[B, M, L', d]`` candidate embeddings.
            generator: drives the noise ``u`` (and the random direction in the ablation).

        Returns:
            :class:`ANSAugmentation`.
        """
        cfg = self.config
        gate = self.gate(e_u, e_n)
        hard_neg = gate * e_n
        easy_neg = e_n - hard_neg
        pos = e_p.unsqueeze(1)
        hard_pos = gate * pos
        easy_pos = pos - hard_pos
        direction = self._direction(pos, e_n, generator)
        kappa = None
        if not cfg.augment:
            delta = torch.zeros_like(e_n)
            aug = e_n
        else:
            if cfg.regulate_magnitude:
                kappa = self.margin(hard_neg, hard_pos)
                cap = kappa.detach() if cfg.detach_margin else kappa
            else:
                cap = None
            _, delta = self._noise(cap, e_n, generator)
            aug = e_n + direction * delta  # = hard_neg + (easy_neg + direction * delta), Eq. 11
        return ANSAugmentation(gate, hard_neg, easy_neg, hard_pos, easy_pos, direction, kappa, delta, aug)

    def aux_losses(self, e_u: Tensor, a: ANSAugmentation) -> tuple[Tensor, Tensor]:
        """Unweighted ``(L_c, L_d)`` (Eqs. 5 and 7) of one batch. Shape: scalars."""
        if a.hard_neg is None or a.easy_neg is None or a.hard_pos is None or a.easy_pos is None:
            raise ValueError("aux_losses needs the factors of ANSSampler.augment; these were not built")
        s_hard = torch.einsum("bld,bmld->bml", e_u, a.hard_neg)
        s_easy = torch.einsum("bld,bmld->bml", e_u, a.easy_neg)
        # log(1 + Σ_m exp(x_m)) = softplus(logsumexp_m x_m): the same value, without overflow
        l_c = F.softplus(torch.logsumexp(s_easy - s_hard, dim=1)).mean()
        dist = (a.hard_neg - a.hard_pos + _PAIRWISE_EPS).norm(dim=-1)  # [B, M, L']
        if self.config.mode == "code":
            easy = (a.easy_pos * a.easy_neg).norm(dim=-1)
        else:
            easy = (a.easy_pos * a.easy_neg).sum(-1)
        l_d = dist.mean() + easy.sum(-1).mean()
        return l_c, l_d

    # ---------------------------------------------------------------------------------------- forward
    def _augment_and_select(self, e_u: Tensor, e_p: Tensor, e_n: Tensor, generator):
        """:meth:`augment` and the selection (Eqs. 12–13), with autograd kept to what the losses need.

        The same values as :meth:`augment` (the same operations, in the same order, drawing the same random
        numbers), but only the factors that ``L_c``/``L_d`` differentiate carry gradient, and only when those
        losses are on; direction, margin, ``Δ`` and ``ẽ_n`` of the whole pool serve only the (detached)
        selection. BPR's gradient through the chosen candidate is rebuilt by :meth:`_chosen_negative`.

        Where the auxiliary losses are needed and :func:`recneg.ans_kernels.compiled_ans_serves`, they and
        the margin come from the compiled passes, and the gate and factors are not built.

        Returns:
            ``(a, idx [B, L'], chosen_gain [B, L'], base, s_orig [B, M, L'], aux)``: an
            :class:`ANSAugmentation` whose factors carry gradient when the auxiliary losses need it, the
            chosen candidate per layer, its gain, the noise ``Δ`` is built from (see
            :meth:`_chosen_negative`), the candidates' scores before augmentation (detached), and
            ``(L_c, L_d)`` when the compiled passes computed them (else ``None``).
        """
        cfg = self.config
        need_aux = cfg.gamma > 0 and cfg.disentangle
        pos = e_p.unsqueeze(1)
        aux = margin_logit = None
        gate = hard_neg = easy_neg = hard_pos = easy_pos = None
        if need_aux and compiled_ans_serves(e_u, e_p, e_n, self.margin_layer.weight):
            gate_item, gate_user = self.item_gate(e_n), self.user_gate(e_u)
            l_c, l_d, margin_logit = fused_aux_losses(
                gate_item, gate_user, e_u, e_p, e_n, self.margin_layer, cfg.mode == "paper"
            )
            aux = (l_c, l_d)
        else:
            with torch.set_grad_enabled(need_aux and torch.is_grad_enabled()):
                gate = self.gate(e_u, e_n)
                hard_neg = gate * e_n
                easy_neg = e_n - hard_neg
                hard_pos = gate * pos
                easy_pos = pos - hard_pos
        with torch.no_grad():
            e_n0 = e_n.detach()
            direction = self._direction(pos.detach(), e_n0, generator)
            kappa = base = None
            if not cfg.augment:
                delta = torch.zeros_like(e_n0)
                aug = e_n0
            else:
                if cfg.regulate_magnitude and margin_logit is not None:
                    kappa = self._margin_of_logit(margin_logit.unsqueeze(-1))
                elif cfg.regulate_magnitude:
                    assert hard_neg is not None and hard_pos is not None
                    kappa = self.margin(hard_neg.detach(), hard_pos.detach())
                base, delta = self._noise(kappa, e_n0, generator)
                aug = e_n0 + direction * delta
            a = ANSAugmentation(gate, hard_neg, easy_neg, hard_pos, easy_pos, direction, kappa, delta, aug)
            eps = cfg.eps if cfg.use_gain else 0.0
            eu = e_u.detach()
            s_aug = torch.einsum("bld,bmld->bml", eu, aug)
            s_orig = torch.einsum("bld,bmld->bml", eu, e_n0)
            gain = s_aug - s_orig
            idx = (s_aug + eps * gain).argmax(dim=1)  # [B, L'] candidate chosen per layer (Eq. 13)
            chosen_gain = gain.gather(1, idx.unsqueeze(1)).squeeze(1)  # [B, L']
        return a, idx, chosen_gain, base, s_orig, aux

    def _chosen_negative(
        self, e_u: Tensor, e_p: Tensor, e_n: Tensor, a: ANSAugmentation, idx: Tensor, base: Tensor | None
    ) -> Tensor:
        """``ẽ_n = e_n + dir ⊙ Δ`` of the chosen candidates ``[B, L', d]``, with BPR's gradient.

        ``e_n`` reaches the loss directly and, with a learned margin, through ``κ = margin(g ⊙ e_n, g ⊙ e_p)``
        (as do the gate's parameters and ``e_u``, unless ``detach_margin``); ``dir`` and the noise are
        constants. ``base [B, M, L', d]``: the noise ``Δ`` is built from (``u/‖u‖`` in code mode, ``Δ₀`` in
        paper mode), or ``None`` when ``Δ`` has no learned cap.
        """
        cfg = self.config
        e_nc = _gather_candidates(e_n, idx)
        if not cfg.augment:
            return e_nc
        direction = _gather_candidates(a.direction, idx)
        if a.margin is None or base is None:
            return e_nc + direction * _gather_candidates(a.delta, idx)
        if cfg.detach_margin or not torch.is_grad_enabled():
            cap = _gather_candidates(a.margin, idx)
        else:
            if a.gate is not None and a.gate.requires_grad:
                g_c = _gather_candidates(a.gate, idx)
            else:  # the gate of the chosen rows only, with gradient (to e_n, e_u and the gate's weights)
                g_c = self.gate(e_u, e_nc.unsqueeze(1)).squeeze(1)
            cap = self.margin(g_c * e_nc, g_c * e_p)  # [B, L', 1]
        base_c = _gather_candidates(base, idx)
        if cfg.mode == "code":
            delta = cfg.noise_scale * cap * base_c
        else:
            delta = torch.minimum(base_c, cap)
        return e_nc + direction * delta

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        cfg = self.config
        _check_dim(view, cfg.dim, "ANSConfig")
        index = self.positives(users.device)
        pool = uniform_pool(index, users, cfg.n_candidates, generator, cfg.exclude_positives)  # [B, M]
        per_layer = self.per_layer(view)
        e_u, e_p, e_n = layer_tensors(view, pool, per_layer)  # [B, L', d], [B, L', d], [B, M, L', d]
        a, idx, chosen_gain, base, s_orig, compiled_aux = self._augment_and_select(e_u, e_p, e_n, generator)
        with torch.no_grad():
            chosen_ids = pool.gather(1, idx)  # [B, L'] source item per layer
            # DNS on the same pool, argmax_m <ē_u, ē_n>; with one layer that score is s_orig itself
            dns_scores = s_orig[..., 0] if s_orig.shape[-1] == 1 else view.score(pool)
            dns_ids = pool.gather(1, dns_scores.argmax(dim=1, keepdim=True))  # [B, 1]
        chosen = self._chosen_negative(e_u, e_p, e_n, a, idx, base)  # [B, L', d] with gradient
        emb = chosen.mean(dim=1, keepdim=True)  # [B, 1, d]: pooled (mean over layers) hop-mixed negative
        n_layers = int(idx.shape[1])
        ids = chosen_ids if n_layers == 1 else None
        reg_emb = view.item_ego(chosen_ids[:, :1])  # [B, 1, d] layer-0 row of the layer-0 choice

        score = pos_score = None
        if cfg.score == "sum_layers":
            score = torch.einsum("bld,bld->b", e_u, chosen).unsqueeze(1)
            pos_score = torch.einsum("bld,bld->b", e_u, e_p)

        extra: dict[str, Tensor] = {}
        if cfg.gamma > 0 and cfg.disentangle:
            l_c, l_d = compiled_aux if compiled_aux is not None else self.aux_losses(e_u, a)
            aux = cfg.gamma * (l_c + l_d)
            extra.update(loss_contrastive=l_c, loss_disentangle=l_d)
        else:
            aux = e_u.new_zeros(())
        if a.margin is not None:
            extra["margin_mean"] = a.margin.mean()
        stats = _stats(
            dns_overlap=(chosen_ids == dns_ids).to(e_u.dtype).mean(),
            aug_gain_mean=chosen_gain.mean(),
            aug_gain_std=chosen_gain.std(correction=0),
            **extra,
        )
        return Negatives(
            emb=emb,
            ids=ids,
            aux_loss=aux,
            reg_emb=reg_emb,
            score=score,
            pos_score=pos_score,
            stats=stats,
            pool_ids=pool,
        )


# ------------------------------------------------------------------------------------------------ DENS
@dataclass(frozen=True)
class DENSConfig:
    """Settings of :class:`DENSSampler` (defaults: official DENS code, ``utils/parser.py``)."""

    dim: int = _opt(64, "embedding size d of the model (sizes the four gates)")
    n_candidates: int = _opt(6, "candidate pool per negative (n_negs in the DENS code)")
    n_negatives: int = _opt(1, "negatives per positive (K of the K-pair loss), each from its own pool")
    warmup: float = _opt(100.0, "epochs over which the selection moves from the irrelevant factor to −ρ_n")
    gamma: float = _opt(0.3, "γ: weight of the four-term gate loss")
    exclude_positives: bool = _opt(True, "redraw candidates that are training positives")

    def __post_init__(self):
        require_int("dim", self, low=1)
        require_int("n_candidates", self, low=1)
        require_int("n_negatives", self, low=1)
        require_float("warmup", self, low=0.0)
        require_float("gamma", self, low=0.0)
        require_bool("exclude_positives", self)


@SAMPLERS.register("dens", config=DENSConfig, help="DENS: gated relevant/irrelevant factors")
class DENSSampler(Sampler):
    """Disentangled negative sampling (DENS, Lai et al., WSDM 2023), as in the official code.

    Per layer ``l`` (tensors ``[.., L+1, d]``; MF has one layer):

    - positive gate ``g_p = σ(W_i e_p + W_u e_u)``, relevant factor ``ρ_p = g_p ⊙ e_p``;
    - candidate gate ``g_n = σ(W_n e_n + W_q ρ_p)``, relevant factor ``ρ_n = g_n ⊙ e_n``;
    - selection (detached): ``m*_l = argmax_m ⟨e_u^(l), (1 − min(1, t/warmup)) e_n^(l) − ρ_n^(l)⟩`` with
      ``t`` the 0-based epoch; the chosen **raw** candidates form the hop-mixed negative, pooled by the
      mean over layers;
    - auxiliary loss on the chosen negatives' factors, pooled over layers and scored with ``ē_u``:
      ``γ/4 · [softplus(s(ρ̄_p^ir) − s(ρ̄_p)) + lse⁺_k(s(ρ̄_n) − s(ρ̄_n^ir)) + lse⁺_k(s(ρ̄_n) − s(ρ̄_p))
      + lse⁺_k(s(ρ̄_p^ir) − s(ρ̄_n^ir))]``, ``lse⁺_k(x_k) = log(1 + Σ_k exp x_k)``, ``x^ir = x − ρ``,
      each term averaged over the batch.

    Because the negative is a raw candidate chosen by an argmax, the four gates receive gradient **only**
    from the auxiliary loss (the model's embeddings get gradient from both).

    Args:
        config: :class:`DENSConfig`.

    Attributes:
        user_gate (``W_u``), item_gate (``W_i``), neg_gate (``W_n``), pos_gate (``W_q``): ``nn.Linear(d, d)``.
        epoch_: ``[]`` int64 buffer, the epoch set by :meth:`on_epoch_start` (checkpointed).

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, K, d], ids [B, K] when L + 1 = 1 else None, aux_loss [],
        reg_emb [B, K, d], pool_ids [B, K, M])`` with ``K = n_negatives``.

    Stats: ``warmup_factor`` (``min(1, t/warmup)``), ``dns_overlap`` (as for ANS), ``loss_gate`` (unweighted).

    References:
        Lai, Riwei et al. "Disentangled Negative Sampling for Collaborative Filtering." WSDM 2023.
        Code: github.com/Riwei-HEU/DENS. ALGORITHMS.md §7.5.
    """

    epoch_: Tensor  # registered buffer

    def __init__(self, config: DENSConfig | None = None):
        super().__init__(config or DENSConfig())
        d = self.config.dim
        self.user_gate = nn.Linear(d, d)
        self.item_gate = nn.Linear(d, d)
        self.neg_gate = nn.Linear(d, d)
        self.pos_gate = nn.Linear(d, d)
        self.register_buffer("epoch_", torch.zeros((), dtype=torch.int64))
        self.excludes_positives = self.config.exclude_positives

    def on_epoch_start(self, epoch: int, model: nn.Module, generator: torch.Generator | None = None) -> None:
        self.epoch_.fill_(int(epoch))

    def warmup_factor(self) -> float:
        """``min(1, t / warmup)`` for the current epoch ``t`` (1 when ``warmup = 0``)."""
        w = self.config.warmup
        return 1.0 if w == 0 else min(1.0, float(self.epoch_) / w)

    def factors(self, e_u: Tensor, e_p: Tensor, e_n: Tensor) -> tuple[Tensor, Tensor]:
        """Relevant factors ``ρ_p [B, L', d]``, ``ρ_n [B, *S, L', d]`` for ``e_n [B, *S, L', d]``."""
        rho_p = torch.sigmoid(self.item_gate(e_p) + self.user_gate(e_u)) * e_p
        q = self.pos_gate(rho_p)
        q = q.reshape(q.shape[0], *([1] * (e_n.dim() - 3)), *q.shape[1:])
        rho_n = torch.sigmoid(self.neg_gate(e_n) + q) * e_n
        return rho_p, rho_n

    def gate_loss(self, user_emb: Tensor, e_u: Tensor, e_p: Tensor, chosen: Tensor) -> Tensor:
        """Unweighted four-term gate loss on the chosen negatives ``chosen [B, K, L', d]``. Scalar."""
        rho_p, rho_n = self.factors(e_u, e_p, chosen)
        p_r, p_ir = rho_p.mean(-2), (e_p - rho_p).mean(-2)  # [B, d]
        n_r, n_ir = rho_n.mean(-2), (chosen - rho_n).mean(-2)  # [B, K, d]
        s_pr, s_pir = (user_emb * p_r).sum(-1), (user_emb * p_ir).sum(-1)  # [B]
        s_nr = torch.einsum("bd,bkd->bk", user_emb, n_r)
        s_nir = torch.einsum("bd,bkd->bk", user_emb, n_ir)

        def lse1(x: Tensor) -> Tensor:  # log(1 + Σ_k exp x_k), per row
            return F.softplus(torch.logsumexp(x, dim=-1))

        terms = (
            F.softplus(s_pir - s_pr).mean()
            + lse1(s_nr - s_nir).mean()
            + lse1(s_nr - s_pr.unsqueeze(1)).mean()
            + lse1(s_pir.unsqueeze(1) - s_nir).mean()
        )
        return terms / 4

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        cfg = self.config
        _check_dim(view, cfg.dim, "DENSConfig")
        n_k, n_m = cfg.n_negatives, cfg.n_candidates
        b = users.numel()
        pool = uniform_pool(self.positives(users.device), users, n_k * n_m, generator, cfg.exclude_positives)
        pool = pool.view(b, n_k, n_m)
        per_layer = view.n_layers is not None
        alpha = self.warmup_factor()
        with torch.no_grad():
            e_u, e_p, e_n = layer_tensors(view, pool, per_layer)  # [B, L', d], [B, L', d], [B, K, M, L', d]
            _, rho_n = self.factors(e_u, e_p, e_n)
            sel = (1.0 - alpha) * e_n - rho_n
            scores = torch.einsum("bld,bkmld->bkml", e_u, sel)
            idx = scores.argmax(dim=2)  # [B, K, L']
            chosen_ids = pool.gather(2, idx)  # [B, K, L'] source item per layer
            dns = view.score(pool.view(b, -1)).view(b, n_k, n_m).argmax(dim=2, keepdim=True)
            dns_ids = pool.gather(2, dns)  # [B, K, 1]
        n_layers = int(idx.shape[-1])
        # re-gather only the chosen rows with gradient: layer l of the item chosen at layer l
        if per_layer:
            chosen = view.item_layer_rows(chosen_ids)  # [B, K, L', d]
        else:
            chosen = view.item_emb(chosen_ids)  # [B, K, 1, d]
        emb = chosen.mean(-2)  # [B, K, d]
        ids = chosen_ids[..., 0] if n_layers == 1 else None
        reg_emb = view.item_ego(chosen_ids[..., 0])  # [B, K, d]

        extra: dict[str, Tensor] = {}
        if cfg.gamma > 0:
            u_l, p_l, _ = layer_tensors(view, None, per_layer)
            loss = self.gate_loss(view.user_emb, u_l, p_l, chosen)
            aux = cfg.gamma * loss
            extra["loss_gate"] = loss
        else:
            aux = view.user_emb.new_zeros(())
        stats = _stats(
            warmup_factor=alpha,
            dns_overlap=(chosen_ids == dns_ids).to(view.user_emb.dtype).mean(),
            **extra,
        )
        return Negatives(emb=emb, ids=ids, aux_loss=aux, reg_emb=reg_emb, stats=stats, pool_ids=pool)

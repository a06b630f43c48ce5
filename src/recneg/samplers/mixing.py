"""Synthesizers that mix the positive into the negative: PDNS (positive-dominated) and MixGCF.

Both draw a pool of ``uniform_excl`` candidates, score it without gradient, and return embeddings that are
not rows of the item table (ALGORITHMS.md §3, §4):

- ``pdns``: DNS selection, then ``ẽ_j = α e_i + (1 − α) e_j`` with a constant ``α`` (PDNS mixing form).
  recneg's *primary* PDNS is the equivalent soft-BPR form: sampler ``dns`` + loss ``softbpr(β = 1 − α)``.
- ``mixgcf``: per-layer positive mixing with ``α^(l) ~ U(0, 1)``, per-layer (hop) selection, mean pooling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from recneg._validation import require_bool, require_choice, require_float, require_int
from recneg.errors import ConfigError
from recneg.models.base import ModelView
from recneg.registry import SAMPLERS
from recneg.samplers.base import Negatives, Sampler, uniform_pool

# --------------------------------------------------------------------------------------------- PDNS


@dataclass(frozen=True)
class PDNSConfig:
    n_candidates: int = field(
        default=32, metadata={"help": "uniform candidates per positive (H in PDNS, N in WWW'23); grid 8-64"}
    )
    alpha: float = field(
        default=0.9,
        metadata={"help": "positive weight α of the mix, in [0, 1); α = 1 − β of soft BPR; paper: > 0.7"},
    )
    regularize: str = field(
        default="raw",
        metadata={"help": "R1 row of the negative: raw (e_j⁰, = softbpr+dns) or mixed (α e_i⁰ + (1−α) e_j⁰)"},
    )
    exclude_positives: bool = field(
        default=True, metadata={"help": "redraw training positives (uniform_excl)"}
    )

    def __post_init__(self):
        require_int("n_candidates", self, low=1)
        require_float("alpha", self, low=0.0, high=1.0, high_open=True)
        require_choice("regularize", self, {"raw", "mixed"})
        require_bool("exclude_positives", self)


def dns_select(view: ModelView, pool: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 of a pool by the current (pooled) score, chosen without gradient (DNS, ALGORITHMS.md §2.1).

    Shape: ``pool [B, n] -> (ids [B, 1], scores [B, n])``.
    """
    scores = view.score(pool)  # no gradient
    return pool.gather(1, scores.argmax(1, keepdim=True)), scores


@SAMPLERS.register(
    "pdns", config=PDNSConfig, help="PDNS mixing form: DNS, then α e_i + (1-α) e_j (use loss bpr)"
)
class PDNSSampler(Sampler):
    """Positive-dominated negative synthesizing, mixing form (Shi et al., PDNS).

    1. Pool ``C [B, H]`` from ``uniform_excl`` (``H`` = ``n_candidates``).
    2. DNS: ``j_b = argmax_{k ∈ C_b} ⟨ē_u, ē_k⟩`` (Eq. 3), scored under ``no_grad``.
    3. Mix (Eq. 5): ``ẽ_j = α ē_i + (1 − α) ē_j`` with a constant ``α`` (``alpha``), built **with** gradient
       through both ``ē_i`` and ``ē_j`` (pooled embeddings).

    Pair it with loss ``"bpr"``: ``ℓ(r_ui − ⟨ē_u, ẽ_j⟩) = ℓ((1 − α)(r_ui − r_uj))`` (Eq. 7), which is soft
    BPR with ``β = 1 − α`` (Eq. 10) as a function of ``(ē_u, ē_i, ē_j)``, so loss and gradients for ``e_u,
    e_i, e_j`` are identical to sampler ``"dns"`` + loss ``"softbpr"`` (recneg's primary PDNS form). (Pairing
    it with ``"softbpr"`` would soften twice.)

    Regularisation (ALGORITHMS.md §3.2, DECIDE): with ``regularize="raw"`` (default) R1 sees the chosen item's
    layer-0 row ``e_j^(0)`` (``reg_emb = item_ego(ids)``), exactly what ``dns`` + ``softbpr`` regularises, so
    the two forms agree for **every** ``λ``, not only ``λ = 0``. ``regularize="mixed"`` regularises the mixed
    layer-0 row ``α e_i^(0) + (1 − α) e_j^(0)`` instead (MixGCF style); then the forms differ when ``λ > 0``.

    ``α = 0`` is DNS. The paper reports ``α > 0.7`` (``β`` grid ``{0.01, 0.05, 0.1, 0.2, 0.3, 0.4}``).

    Args:
        config: :class:`PDNSConfig`.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, 1, d], ids [B, 1], reg_emb [B, 1, d], pool_ids [B, H])``;
        ``ids`` are the DNS-chosen real items ``j_b`` (``emb`` is their mixture with the positive).

    References:
        Shi, Zhang, Wang, Jing, PDNS ("Soft BPR loss for dynamic hard negative sampling", arXiv 2211.13912),
        Eqs. 3, 5, 7, 10 and Alg. 1. ALGORITHMS.md §3.
    """

    def __init__(self, config: PDNSConfig | None = None):
        super().__init__(config or PDNSConfig())
        self.excludes_positives = self.config.exclude_positives

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        cfg = self.config
        pool = uniform_pool(
            self.positives(users.device), users, cfg.n_candidates, generator, cfg.exclude_positives
        )
        ids, _ = dns_select(view, pool)  # [B, 1]
        alpha = cfg.alpha
        emb = alpha * view.pos_emb.unsqueeze(1) + (1.0 - alpha) * view.item_emb(ids)  # [B, 1, d]
        raw0 = view.item_ego(ids)  # [B, 1, d]
        reg = raw0 if cfg.regularize == "raw" else alpha * view.pos_ego.unsqueeze(1) + (1.0 - alpha) * raw0
        return Negatives(emb=emb, ids=ids, reg_emb=reg, pool_ids=pool)


# --------------------------------------------------------------------------------------------- MixGCF


@dataclass(frozen=True)
class MixGCFConfig:
    n_candidates: int = field(
        default=16,
        metadata={
            "help": "uniform candidates per negative (M; code n_negs: 64 Yelp2018, 32 Alibaba, 16 Amazon)"
        },
    )
    n_negatives: int = field(
        default=1, metadata={"help": "synthetic negatives per positive (K), each from its own M candidates"}
    )
    exclude_positives: bool = field(
        default=True, metadata={"help": "redraw training positives (uniform_excl)"}
    )
    alpha_override: float | None = field(
        default=None,
        metadata={"help": "for tests/ablation only: a fixed α^(l) in [0, 1] instead of U(0, 1) draws"},
    )

    def __post_init__(self):
        require_int("n_candidates", self, low=1)
        require_int("n_negatives", self, low=1)
        require_bool("exclude_positives", self)
        if self.alpha_override is not None:
            require_float("alpha_override", self, low=0.0, high=1.0)


@SAMPLERS.register(
    "mixgcf", config=MixGCFConfig, help="MixGCF: per-layer positive mixing + hop mixing (use loss kpair)"
)
class MixGCFSampler(Sampler):
    """MixGCF: synthesise hard negatives by positive mixing and hop mixing (Huang et al., KDD 2021).

    For each training pair ``(u, i)`` and each of ``K`` (``n_negatives``) slots, ``M`` (``n_candidates``)
    candidates ``j_1..j_M`` from ``uniform_excl`` (the ``K·M`` draws split into disjoint slices), then, per
    layer ``l = 0..L`` (ALGORITHMS.md §4.1, official code):

    1. positive mixing: ``α^(l) ~ U(0, 1)``, one value per (pair, slot, layer), shared by the ``M`` candidates
       and the ``d`` coordinates; ``e′_{j_m}^(l) = α^(l) e_i^(l) + (1 − α^(l)) e_{j_m}^(l)``;
    2. hop mixing: ``m*_l = argmax_m ⟨ē_u, e′_{j_m}^(l)⟩`` with the *pooled* user embedding, without gradient
       (each layer may pick a different candidate);
    3. pooling: ``ē⁻ = mean_l e′^(l)_{j_{m*_l}}`` (mean pooling, as LightGCN's).

    The loss is ``"kpair"`` (``K = 1`` is BPR). R1 regularises the synthetic layer-0 row
    ``reg_emb = α^(0) e_i^(0) + (1 − α^(0)) e_{j_{m*_0}}^(0)`` (the official code's ``neg[:, :, 0, :]``).
    Gradient: only the argmax is detached; ``e_i`` gets gradient through the positive term and through the
    negative (weight ``α^(l)``), the chosen candidates through ``1 − α^(l)``. Scores are computed under
    ``no_grad``; only the chosen rows are gathered with gradient.

    Randomness: the pool is drawn first, then ``α`` (``torch.rand [B, K, L+1]`` with the passed generator).
    ``alpha_override`` fixes ``α^(l)`` (tests, ablations): ``0`` is per-layer DNS on the raw candidates, ``1``
    makes the negative equal to the positive.

    With MF (``view.n_layers == 1``) MixGCF reduces to positive mixing + DNS. A model without per-layer
    embeddings (two-tower) raises :class:`~recneg.errors.ConfigError`.

    Note: with ``K > 1`` the code's R1 *sums* the ``K`` synthetic layer-0 rows, recneg's
    :func:`~recneg.losses.l2_regularization` averages them (weight ``1/K``); identical for the default
    ``K = 1``.

    Args:
        config: :class:`MixGCFConfig`.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, K, d], ids=None, reg_emb [B, K, d], pool_ids [B, K, M])``;
        internally candidates ``[B, K, M]``, candidate layers ``[B, K, M, L+1, d]`` (no grad), scores
        ``[B, K, M, L+1]``, chosen ids ``[B, K, L+1]``, synthetic layers ``[B, K, L+1, d]``.

    References:
        Huang et al., "MixGCF: An Improved Training Method for Graph Neural Network-based Recommender
        Systems", KDD 2021; code huangtinglin/MixGCF ``modules/LightGCN.py``. ALGORITHMS.md §4.
    """

    needs_layers = True

    def __init__(self, config: MixGCFConfig | None = None):
        super().__init__(config or MixGCFConfig())
        self.excludes_positives = self.config.exclude_positives

    def candidates(self, users: Tensor, generator=None) -> Tensor:
        """``K`` disjoint slices of ``M`` ``uniform_excl`` draws. Shape: ``users [B] -> [B, K, M]``."""
        cfg = self.config
        n = cfg.n_negatives * cfg.n_candidates
        pool = uniform_pool(self.positives(users.device), users, n, generator, cfg.exclude_positives)
        return pool.view(-1, cfg.n_negatives, cfg.n_candidates)

    def draw_alpha(self, shape: tuple[int, ...], like: Tensor, generator=None) -> Tensor:
        """``α^(l)`` of shape ``[B, K, L+1]``: ``U(0, 1)`` draws, or ``alpha_override``."""
        if self.config.alpha_override is not None:
            return torch.full(shape, self.config.alpha_override, dtype=like.dtype, device=like.device)
        return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)

    def synthesize(self, view: ModelView, pool: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """Positive + hop mixing for a given pool and ``α``.

        Shape: ``pool [B, K, M]``, ``alpha [B, K, L+1]`` -> ``(synthetic layers [B, K, L+1, d], chosen ids
        [B, K, L+1])``; the layers carry gradient, the ids are the per-layer argmax candidates.
        """
        a = alpha.unsqueeze(-1)  # [B, K, L+1, 1]
        pos_layers = view.pos_layers  # [B, L+1, d], with grad
        with torch.no_grad():
            user = view.user_emb.detach()  # pooled ē_u [B, d]
            s_cand = view.score_layers(pool)  # [B, K, M, L+1]: ⟨ē_u, e_j^(l)⟩
            s_pos = torch.einsum("bd,bld->bl", user, pos_layers.detach())  # [B, L+1]
            # ⟨ē_u, α e_i + (1 − α) e_j⟩ = α ⟨ē_u, e_i⟩ + (1 − α) ⟨ē_u, e_j⟩, α shared by the M candidates
            mixed = alpha.unsqueeze(2) * s_pos[:, None, None, :] + (1 - alpha.unsqueeze(2)) * s_cand
            best = mixed.argmax(2)  # [B, K, L+1]
            ids = pool.gather(2, best)  # [B, K, L+1]
        # gather only the chosen rows with gradient: layer l of item ids[..., l]
        chosen = view.item_layer_rows(ids)  # [B, K, L+1, d]
        synthetic = a * pos_layers.unsqueeze(1) + (1 - a) * chosen
        return synthetic, ids

    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        if view.n_layers is None:
            raise ConfigError(
                f"mixgcf needs per-layer embeddings (ModelView.item_layers), but model {view.model_name!r} "
                "does not provide them; use lightgcn (or mf, where MixGCF reduces to positive mixing + DNS)"
            )
        pool = self.candidates(users, generator)  # [B, K, M]
        alpha = self.draw_alpha((pool.shape[0], pool.shape[1], view.n_layers), view.user_emb, generator)
        synthetic, ids = self.synthesize(view, pool, alpha)
        a0 = alpha[..., 0:1]  # [B, K, 1]
        reg = a0 * view.pos_ego.unsqueeze(1) + (1 - a0) * view.item_ego(ids[..., 0])  # [B, K, d]
        return Negatives(emb=synthetic.mean(2), reg_emb=reg, pool_ids=pool)

"""Top-K metrics with binary relevance (ALGORITHMS.md §8.2), computed per user from a hit matrix.

Definitions (LightGCN, MixGCF, WWW'23 and RecBole code):

- ``recall@K = |R_K ∩ T_u| / |T_u|``
- ``precision@K = |R_K ∩ T_u| / K``
- ``hit@K = 1[|R_K ∩ T_u| ≥ 1]``
- ``ndcg@K = DCG / IDCG``, ``DCG = Σ_{k≤K} 1[R_k ∈ T_u] / log2(k + 1)``,
  ``IDCG = Σ_{k ≤ min(K, |T_u|)} 1 / log2(k + 1)``
- ``mrr@K = 1 / rank of the first hit`` if within ``K``, else 0
"""

from __future__ import annotations

import torch
from torch import Tensor

METRIC_NAMES = ("recall", "ndcg", "precision", "hit", "mrr")


def topk_metrics(hits: Tensor, n_targets: Tensor, ks) -> dict[str, Tensor]:
    """Per-user metrics from a hit matrix.

    Args:
        hits: ``[C, K_max]`` bool/float, ``hits[c, k]`` = whether the item ranked ``k+1`` is a target.
        n_targets: ``[C]`` number of targets ``|T_u|`` (> 0).
        ks: the cut-offs, each ``<= K_max``.

    Returns:
        ``{"recall@10": [C] float tensor, ...}`` for every metric in :data:`METRIC_NAMES` and ``K`` in ``ks``.
    """
    hits = hits.to(torch.float64)
    n_targets = n_targets.to(torch.float64)
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, device=hits.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    cum_dcg = (hits * discount).cumsum(1)
    ideal = discount.cumsum(0)  # ideal[k-1] = IDCG with k targets
    first_hit = torch.where(hits > 0, ranks, torch.full_like(ranks, float("inf"))).min(1).values
    out: dict[str, Tensor] = {}
    for k in ks:
        n_hit = cum_hits[:, k - 1]
        idcg = ideal[(torch.clamp(n_targets, max=k) - 1).long()]
        out[f"recall@{k}"] = n_hit / n_targets
        out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / idcg
        out[f"precision@{k}"] = n_hit / k
        out[f"hit@{k}"] = (n_hit > 0).to(torch.float64)
        out[f"mrr@{k}"] = torch.where(first_hit <= k, 1.0 / first_hit, torch.zeros_like(first_hit))
    return out

"""Per-epoch diagnostics of the negatives any sampler picks, as trainer callbacks (ALGORITHMS.md §8.5).

Each class is a :class:`~recneg.train.Trainer` callback: ``on_batch(trainer, b, users, pos, view, neg)``
looks at the batch (never changes it) and ``on_epoch_end(trainer, record)`` returns floats that the trainer
writes to the epoch's history line under ``"diagnostics"``. They work with every sampler because they read
only the :class:`~recneg.samplers.base.Negatives` record:

- :class:`Hardness` — score percentile of the chosen negatives among **all** of the user's training
  non-positives ``I \\ I_u^+``: ``pct = (#{j ∉ I_u^+ : r_uj < s} + ½ #{… = s}) / |I \\ I_u^+|`` with
  ``s = ⟨ē_u, e_neg⟩`` (pooled scores, also for synthetic negatives, which have no ids). 1 = the user's
  hardest non-positive, 0.5 = what a uniform draw gets on average. Weighted by ``neg.weight`` (DNS(M,N),
  Softmax-v) and leaving out masked columns (batch samplers). To stay cheap it scores ``rows`` random rows of
  every ``every``-th batch only (one ``[rows, n_items]`` block).
- :class:`PoolSpread` — copies the per-epoch mean of ``neg.stats["pool_score_spread"]`` (max − min score of
  the candidate pool; DNS-family samplers report it) and ``chosen_minus_pool_mean`` when present.
- :class:`FalseNegativeRate` — share of chosen negatives that are held-back positives (a known false-negative
  set, e.g. from :func:`recneg.data.synthetic.generate` or the PDNS 4:1:1 protocol), next to the rate a
  uniform draw from ``I \\ I_u^+`` would have, ``|FN_u| / |I \\ I_u^+|``.
- :class:`PickOverlap` — share of one sampler's picks that a second sampler picks from the *same pools*: the
  second sampler is replayed on the batch with the trainer's sampling-generator state from just before the
  first sampler's call, so both draw identical pools when they draw them the same way (e.g. DNS with
  ``n_candidates = M`` and ANS with pool ``M``: the ANS paper's Table 4 overlap).
- :class:`ScoreHistogram` — at each epoch end, histograms of the scores of positives and non-positives of a
  fixed user sample, for the "ambiguous trap" figures; summary quantiles go to the history.

Everything accumulates as device tensors (no host sync per batch) and is reduced once per epoch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from recneg.data.interactions import Interactions
from recneg.errors import ConfigError

__all__ = [
    "FalseNegativeRate",
    "Hardness",
    "PickOverlap",
    "PoolSpread",
    "ScoreHistogram",
    "chosen_scores",
    "percentile_among_nonpositives",
]


def chosen_scores(view, neg, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Pooled scores ``⟨ē_u, e_neg⟩`` of the chosen negatives of ``rows`` and their weights.

    Shape: ``rows [r]`` -> ``(scores [r, n], weights [r, n])``; weights sum to 1 per row (``neg.weight``,
    or uniform over the columns not masked in ``neg.mask``).
    """
    with torch.no_grad():
        u = view.user_emb.detach()[rows]
        emb = neg.emb.detach()
        if emb.dim() == 2:  # shared negatives [n, d]
            s = u @ emb.T
        else:
            s = torch.einsum("rd,rnd->rn", u, emb[rows])
        return s, _weights(neg, rows=rows, dtype=s.dtype)


def _weights(neg, n_rows: int | None = None, dtype=torch.float64, rows: Tensor | None = None) -> Tensor:
    """``[r, n]`` weights of the picks: ``neg.weight``, or uniform over the columns ``neg.mask`` keeps."""
    n = neg.emb.shape[-2]
    device = neg.emb.device
    if rows is None:
        if n_rows is None:
            raise ValueError("_weights needs rows or n_rows")
        rows = torch.arange(n_rows, device=device)
    w = (
        neg.weight.detach()[rows].to(dtype)
        if neg.weight is not None
        else torch.ones(rows.numel(), n, dtype=dtype, device=device)
    )
    if neg.mask is not None:
        w = w * (~neg.mask[rows]).to(dtype)
    return w / w.sum(1, keepdim=True).clamp_min(1e-30)


def percentile_among_nonpositives(
    user_vecs: Tensor, item_table: Tensor, users: Tensor, scores: Tensor, positives
) -> Tensor:
    """Percentile of ``scores [r, n]`` among all non-positive items of each of ``users [r]``.

    ``(#{j ∉ I_u^+ : r_uj < s} + ½ #{j ∉ I_u^+ : r_uj = s}) / |I \\ I_u^+|`` with ``r_uj = ⟨user_vecs, e_j⟩``.

    Shape: ``user_vecs [r, d]``, ``item_table [n_items, d]`` -> ``[r, n]`` in ``[0, 1]``.
    """
    with torch.no_grad():
        full = user_vecs @ item_table.T  # [r, n_items]
        n_items = full.shape[1]
        lo, hi = positives.indptr[users], positives.indptr[users + 1]
        counts = hi - lo
        rr = torch.repeat_interleave(torch.arange(users.numel(), device=full.device), counts)
        offs = torch.arange(rr.numel(), device=full.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        cols = positives.indices[torch.repeat_interleave(lo, counts) + offs]
        full[rr, cols] = float("inf")  # positives sort last and never count as < or <= a finite score
        srt = full.sort(1).values
        s = scores.to(srt.dtype).contiguous()
        less = torch.searchsorted(srt, s, right=False)
        leq = torch.searchsorted(srt, s, right=True)
        n_neg = (n_items - counts).clamp_min(1).unsqueeze(1).to(srt.dtype)
        leq = torch.minimum(leq, (n_items - counts).unsqueeze(1))
        return (less.to(srt.dtype) + 0.5 * (leq - less).to(srt.dtype)) / n_neg


class _EpochMean:
    """Sums of device tensors per key, reduced to floats at the epoch's end."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def add(self, key: str, total: Tensor, count: Tensor | float) -> None:
        total = total.detach().to(torch.float64)
        count = torch.as_tensor(count, dtype=torch.float64, device=total.device)
        self.sums[key] = self.sums.get(key, 0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def pop(self) -> dict[str, float]:
        out = {}
        for k, v in self.sums.items():
            c = float(self.counts[k])
            out[k] = float(v) / c if c > 0 else float("nan")
        self.sums.clear()
        self.counts.clear()
        return out


class Hardness:
    """Score percentile of the chosen negatives among the user's training non-positives (see module doc).

    Args:
        every: look at every ``every``-th batch (batch indices ``0, every, 2·every, …``).
        rows: rows of such a batch scored against all items (sampled without replacement by a private
            generator, so the training generators are untouched).
        seed: seed of that private generator.
        prefix: key prefix in the history's ``diagnostics``.

    Reports ``<prefix>percentile`` (weighted mean), ``<prefix>top1_share`` (weight on negatives above the
    99th percentile) and ``<prefix>score`` (mean chosen score).
    """

    def __init__(self, every: int = 10, rows: int = 64, seed: int = 0, prefix: str = "hardness_"):
        if every < 1 or rows < 1:
            raise ConfigError(f"every and rows of Hardness must be >= 1, got {every} and {rows}")
        self.every, self.rows, self.prefix = int(every), int(rows), prefix
        self._gen = torch.Generator().manual_seed(seed)
        self._acc = _EpochMean()

    def on_batch(self, trainer, b, users, pos, view, neg) -> None:
        if b % self.every:
            return
        n = users.numel()
        r = min(self.rows, n)
        rows = torch.randperm(n, generator=self._gen)[:r].to(users.device)
        s, w = chosen_scores(view, neg, rows)
        with torch.no_grad():
            items = view.all_items().detach()
            index = trainer.sampler.train_.positives(users.device)
            pct = percentile_among_nonpositives(view.user_emb.detach()[rows], items, users[rows], s, index)
            self._acc.add("percentile", (pct * w).sum(), r)
            self._acc.add("top1_share", ((pct >= 0.99).to(w.dtype) * w).sum(), r)
            self._acc.add("score", (s * w).sum(), r)

    def on_epoch_end(self, trainer, record) -> dict:
        return {self.prefix + k: v for k, v in self._acc.pop().items()}


class PoolSpread:
    """The epoch mean of the sampler's own pool statistics, when it reports them (else nothing)."""

    KEYS = ("pool_score_spread", "chosen_minus_pool_mean")

    def on_epoch_end(self, trainer, record) -> dict:
        stats = record.get("sampler", {})
        return {k: float(stats[k]) for k in self.KEYS if k in stats}


class FalseNegativeRate:
    """Share of chosen negatives that are known false negatives (held-back positives).

    Args:
        false_negatives: the held-back positives, in the training id space.
        prefix: key prefix.

    Reports ``<prefix>rate`` (weighted share of picks in ``FN_u``) and ``<prefix>uniform`` (the expected
    share under ``Uniform(I \\ I_u^+)``, averaged over the same rows). Synthetic negatives (``ids = None``)
    are skipped: they are not items.
    """

    def __init__(self, false_negatives: Interactions, prefix: str = "fn_"):
        self.fn = false_negatives
        self.prefix = prefix
        self._acc = _EpochMean()

    def on_batch(self, trainer, b, users, pos, view, neg) -> None:
        if neg.ids is None:
            return
        device = users.device
        fn = self.fn.positives(device)
        train = trainer.sampler.train_.positives(device)
        with torch.no_grad():
            ids = neg.ids if neg.ids.dim() == 2 else neg.ids.unsqueeze(0)
            hit = fn.contains(users.unsqueeze(1), ids).to(torch.float64)
            hit = hit.expand(users.numel(), -1)
            if hit.shape[1] == neg.emb.shape[-2]:
                w = _weights(neg, hit.shape[0], hit.dtype)
            else:  # ids per layer (ANS/MixGCF sources) with one pooled negative: each id counts equally
                w = torch.full_like(hit, 1.0 / hit.shape[1])
            self._acc.add("rate", (hit * w.to(torch.float64)).sum(), users.numel())
            # FN items that are also training positives cannot be drawn (none in a clean protocol)
            n_neg = (train.n_items - train.degree[users]).clamp_min(1).to(torch.float64)
            self._acc.add("uniform", (fn.degree[users].to(torch.float64) / n_neg).sum(), users.numel())

    def on_epoch_end(self, trainer, record) -> dict:
        return {self.prefix + k: v for k, v in self._acc.pop().items()}


class PickOverlap:
    """Share of the trainer's sampler's picks that ``other`` picks on the same pools.

    ``other`` is replayed under ``torch.no_grad`` with a generator restored to the trainer's
    sampling-generator state from before the batch's sampler call (recorded at the end of the previous
    batch), so pools drawn the same way are identical. Batch 0 of each epoch is skipped (the sampler's
    ``on_epoch_start`` may draw from the generator before it). Per row, the overlap is the share of the
    trainer sampler's picked ids that also appear among ``other``'s picked ids; picks without ids
    (synthetic negatives) are skipped.

    Args:
        other: a sampler (bound to the training data here if it is not yet).
        every: look at every ``every``-th batch.
        name: key of the reported value (default ``overlap``).
    """

    def __init__(self, other, every: int = 1, name: str = "overlap"):
        self.other = other
        self.every = max(int(every), 1)
        self.name = name
        self._state = None
        self._acc = _EpochMean()

    def on_batch(self, trainer, b, users, pos, view, neg) -> None:
        gen = trainer.sample_gen
        state, self._state = self._state, None
        try:
            if b == 0 or state is None or neg.ids is None or b % self.every:
                return
            other = self.other
            if other.train_ is None:
                other.bind(trainer.sampler.train_)
            other.to(users.device)
            replay = torch.Generator(device=gen.device)
            replay.set_state(state)
            with torch.no_grad():
                theirs = other(users, pos, view, generator=replay)
            if theirs.ids is None:
                return
            a = neg.ids if neg.ids.dim() == 2 else neg.ids.unsqueeze(0).expand(users.numel(), -1)
            o = theirs.ids if theirs.ids.dim() == 2 else theirs.ids.unsqueeze(0).expand(users.numel(), -1)
            share = (a.unsqueeze(2) == o.unsqueeze(1)).any(2).to(torch.float64).mean(1)
            self._acc.add(self.name, share.sum(), users.numel())
        finally:
            self._state = gen.get_state()  # the state before the next batch's sampler call

    def on_epoch_end(self, trainer, record) -> dict:
        self._state = None
        return self._acc.pop()


class ScoreHistogram:
    """Score histograms of positives and non-positives of a fixed user sample, once per epoch.

    Args:
        n_users: users sampled once (seeded) among those with training items.
        bins: histogram bins; the range is the epoch's min..max score of the sample.
        seed: sampling seed.

    Attributes:
        epochs: one dict per epoch: ``{"epoch", "edges", "neg_hist", "pos_hist"}`` (lists; densities sum to
            1), plus the summary floats also returned to the history.

    Reports ``score_neg_median``, ``score_neg_iqr`` (interquartile range of non-positive scores, the width of
    the bulk), ``score_pos_median`` and ``score_gap`` (positive median − non-positive median).
    """

    def __init__(self, n_users: int = 200, bins: int = 50, seed: int = 0):
        self.n_users, self.bins, self.seed = int(n_users), int(bins), int(seed)
        self.epochs: list[dict] = []
        self._users: np.ndarray | None = None  # [<= n_users] sorted user ids, drawn at the first epoch

    def on_epoch_end(self, trainer, record) -> dict:
        model = trainer.model
        train = trainer.split.train
        if self._users is None:
            cand = np.flatnonzero(train.user_counts > 0)
            rng = np.random.default_rng(self.seed)
            self._users = np.sort(rng.choice(cand, size=min(self.n_users, cand.size), replace=False))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                u_tab, i_tab = model.tables()
                users = torch.as_tensor(self._users, device=u_tab.device)
                scores = (u_tab[users] @ i_tab.T).double().cpu().numpy()
        finally:
            model.train(was)
        pos_mask = train.csr[self._users].toarray() > 0
        neg, posv = scores[~pos_mask], scores[pos_mask]
        lo, hi = float(scores.min()), float(scores.max())
        if not math.isfinite(lo) or hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, self.bins + 1)
        nh = np.histogram(neg, edges)[0].astype(np.float64)
        ph = np.histogram(posv, edges)[0].astype(np.float64)
        q1, med, q3 = np.quantile(neg, [0.25, 0.5, 0.75])
        summary = {
            "score_neg_median": float(med),
            "score_neg_iqr": float(q3 - q1),
            "score_pos_median": float(np.median(posv)) if posv.size else float("nan"),
        }
        summary["score_gap"] = summary["score_pos_median"] - summary["score_neg_median"]
        self.epochs.append(
            {
                "epoch": int(record.get("epoch", len(self.epochs) + 1)),
                "edges": edges.tolist(),
                "neg_hist": (nh / max(nh.sum(), 1)).tolist(),
                "pos_hist": (ph / max(ph.sum(), 1)).tolist(),
                **summary,
            }
        )
        return summary

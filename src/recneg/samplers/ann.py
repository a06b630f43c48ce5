"""Hard negatives mined from an approximate-nearest-neighbour (ANN) index of the item table: ``ann_hard``.

Every ``refresh_every`` steps (``0``: at the start of every epoch) the sampler snapshots the item table
(``model.tables()`` at an epoch start, ``view.all_items()`` detached inside a step) and builds an
inner-product index over it: FAISS HNSW or IVF through :class:`recneg.retrieval.ItemIndex`, or an exact
``matmul + topk`` on the table's device (``index="flat"``, also the fallback when FAISS is not installed).
For each batch row it queries the user's current embedding ``ē_u`` (detached) for the approximate
top-``n_candidates`` items (``N``), drops the user's training positives (and padding ids of a short ANN
answer), and picks ``n_negatives`` of the remaining candidates:

- ``pick="uniform"`` (default): uniformly **without replacement** among the remaining candidates (a random
  key per candidate, the ``n_negatives`` largest keys win);
- ``pick="top"``: the highest-scoring remaining candidates (the ANN ranking order), i.e. DNS over the whole
  catalogue instead of over a uniform pool.

A row with fewer than ``n_negatives`` remaining candidates (a user whose positives fill the ANN answer) gets
the missing negatives from ``Uniform(I \\ I_u^+)``; ``stats["ann_fallback"]`` is the share of negatives that
came from there and ``stats["ann_pool"]`` the mean number of remaining candidates per row.

Decisions:
- **Query freshness.** The item side is the snapshot of the last refresh (stale by at most
  ``refresh_every`` steps or one epoch), the query side is the batch's current user embedding. Only the
  chosen items are gathered again through the model, with gradient (``view.item_emb(ids)``).
- **Positives are dropped after the search** (not searched past, as ``ItemIndex.search(exclude=...)`` does):
  the pool is "the approximate top-``N`` minus positives", so its size varies per user; heavy users keep
  fewer hard candidates. Negatives are never training positives (tested).
- **Refresh schedule.** Steps count calls of :meth:`forward` from the first one; the index is (re)built
  before the step when ``step % refresh_every == 0``. The step counter is a buffer (it survives a
  checkpoint); the index itself is a cache rebuilt on the first step after loading.

Cost (``n`` items, ``d`` dims, ``B`` rows, ``E`` = ``refresh_every``):
- refresh: one pass over all items (free for MF; an item-tower forward over ``n`` items for ``twotower``)
  plus the build: ``O(n·d)`` for ``flat``, about ``O(n · log n · hnsw_m · d)`` for HNSW,
  ``O(n · nlist · d · iters)`` k-means for IVF; amortised over ``E`` steps.
- per step: ``flat``: ``B × n × d`` multiply-adds on the device (a full score matrix, like evaluation) and a
  top-``N`` over it (on one CPU core, ml-100k, ``B = 2048``, ``N = 100``: ~40 ms matmul + ~80 ms
  ``torch.topk``; FAISS ``IndexFlatIP`` with one thread was no faster);
  HNSW: about ``B × ef_search × hnsw_m × d`` on the CPU plus a ``[B, d]`` device→host copy (one sync on
  CUDA); then a ``B × N`` membership test and a ``B × N`` top-``n_negatives``.
  Compare DNS: ``B × M × d`` scores of ``M`` uniform candidates per step and no refresh.

References:
    Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval"
    (ANCE), ICLR 2021: negatives from an asynchronously refreshed ANN index. Zhang et al., "Optimizing
    top-N collaborative filtering via dynamic negative item sampling" (DNS), SIGIR 2013: the top-1 rule.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from recneg._validation import require_choice, require_int
from recneg.models.base import ModelView
from recneg.registry import SAMPLERS
from recneg.retrieval import ItemIndex, faiss_available
from recneg.samplers.base import Negatives, Sampler, uniform_pool


@dataclass(frozen=True)
class ANNHardConfig:
    n_negatives: int = field(default=1, metadata={"help": "negatives per positive"})
    n_candidates: int = field(
        default=100, metadata={"help": "N: approximate top-N items retrieved per user before positives go"}
    )
    pick: str = field(
        default="uniform", metadata={"help": "uniform: at random among the remaining candidates | top: best"}
    )
    refresh_every: int = field(
        default=0, metadata={"help": "steps between index rebuilds (0 = at the start of every epoch)"}
    )
    index: str = field(
        default="hnsw", metadata={"help": "flat (exact torch top-k) | hnsw | ivf (FAISS; exact without it)"}
    )
    hnsw_m: int = field(default=32, metadata={"help": "HNSW links per node"})
    ef_search: int = field(default=128, metadata={"help": "HNSW search breadth"})
    ef_construction: int = field(default=200, metadata={"help": "HNSW build breadth"})
    nlist: int = field(default=256, metadata={"help": "IVF cells (capped at n_items)"})
    nprobe: int = field(default=16, metadata={"help": "IVF cells visited per query"})

    def __post_init__(self):
        require_int("n_negatives", self, low=1)
        require_int("n_candidates", self, low=1)
        require_choice("pick", self, {"uniform", "top"})
        require_int("refresh_every", self, low=0)
        require_choice("index", self, {"flat", "hnsw", "ivf"})
        for name in ("hnsw_m", "ef_search", "ef_construction", "nlist", "nprobe"):
            require_int(name, self, low=1)


@SAMPLERS.register(
    "ann_hard",
    config=ANNHardConfig,
    help="hard negatives: each user's ANN top-N non-positives, index refreshed",
)
class ANNHardSampler(Sampler):
    """Hard negatives from each user's approximate top-``N`` items (see the module docstring).

    Attributes:
        step_: 0-d int64 buffer, forward calls so far (drives ``refresh_every``; checkpointed).
        builds: list of the steps at which the index was (re)built in this process (``-1``: at an epoch
            start); a diagnostic for tests and benchmarks.
        build_seconds: wall time of the last build.

    Shape:
        ``users, pos [B]`` -> ``Negatives(emb [B, n_negatives, d], ids [B, n_negatives])``.
    """

    emits_item_rows = True

    excludes_positives = True
    step_: Tensor  # registered buffers
    snapshot_: Tensor

    def __init__(self, config: ANNHardConfig | None = None):
        super().__init__(config or ANNHardConfig())
        self.register_buffer("step_", torch.zeros((), dtype=torch.long))
        # the item table of the last build, so a resumed run rebuilds the very same index (checkpointed)
        self.register_buffer("snapshot_", torch.zeros(0, 0))
        self._step: int | None = 0  # python mirror of step_ (None after loading a state dict)
        self._items: Tensor | None = None  # exact path: the item snapshot on its device
        self._index: ItemIndex | None = None  # approximate path
        self.builds: list[int] = []
        self.build_seconds = 0.0
        self._warned = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "snapshot_")
        if saved is not None and saved.shape != self.snapshot_.shape:
            self.snapshot_ = torch.empty_like(saved, device=self.snapshot_.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step = None
        self._items = self._index = None

    # ------------------------------------------------------------------------------------------ index
    @property
    def exact(self) -> bool:
        """Whether searches are exact (``index="flat"``, or FAISS missing)."""
        return self.config.index == "flat" or not faiss_available()

    @torch.no_grad()
    def build(self, item_table: Tensor, at_step: int = -1) -> None:
        """(Re)build the index over ``item_table [n_items, d]`` (detached)."""
        import time

        start = time.perf_counter()
        items = item_table.detach()
        self.snapshot_ = items.clone()
        if self.exact:
            if self.config.index != "flat" and not self._warned:
                warnings.warn(
                    f"ann_hard(index={self.config.index!r}): faiss is not installed; using exact torch top-k "
                    "(pip install 'recneg[faiss]')",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            self._items, self._index = items.clone(), None
        else:
            c = self.config
            self._index = ItemIndex(
                items,
                kind=c.index,
                backend="faiss",
                hnsw_m=c.hnsw_m,
                ef_construction=c.ef_construction,
                ef_search=c.ef_search,
                nlist=c.nlist,
                nprobe=c.nprobe,
            )
            self._items = None
        self.builds.append(int(at_step))
        self.build_seconds = time.perf_counter() - start

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> Tensor:
        """Approximate (or exact) top-``k`` item ids of ``queries [C, d]`` -> ``[C, k]`` on their device.

        ``-1`` marks a slot an approximate index left empty.
        """
        k = min(int(k), self._n_items())
        if self._items is not None:  # exact path
            scores = queries.detach().to(self._items.dtype) @ self._items.T
            return torch.topk(scores, k, dim=1).indices
        assert self._index is not None  # _n_items() raised otherwise
        _, ids = self._index.search(queries.detach().float().cpu(), k)
        return ids.to(queries.device)

    def _n_items(self) -> int:
        if self._items is not None:
            return int(self._items.shape[0])
        if self._index is not None:
            return self._index.n_items
        raise RuntimeError("ann_hard: search() before build()")

    def on_epoch_start(self, epoch: int, model, generator=None) -> None:
        if self.config.refresh_every == 0:
            # TwoTower.item_table() encodes the items only; other models return both tables
            items = model.item_table() if callable(getattr(model, "item_table", None)) else model.tables()[1]
            self.build(items, at_step=-1)

    # ------------------------------------------------------------------------------------------ sampling
    def forward(self, users: Tensor, pos: Tensor, view: ModelView, generator=None) -> Negatives:
        c = self.config
        if self._step is None:
            self._step = int(self.step_)
        step = self._step
        due = c.refresh_every > 0 and step % c.refresh_every == 0
        if due:
            with torch.no_grad():
                self.build(view.all_items(), at_step=step)
        elif self._items is None and self._index is None:  # first use, or just resumed
            with torch.no_grad():
                table = self.snapshot_ if self.snapshot_.numel() else view.all_items()
                self.build(table, at_step=step)
        self._step = step + 1
        self.step_.fill_(self._step)

        with torch.no_grad():
            cand = self.search(view.user_emb, c.n_candidates)  # [B, N], best first
            index = self.positives(users.device)
            valid = (cand >= 0) & ~index.contains(users.unsqueeze(1), cand.clamp_min(0))
            n_cand = cand.shape[1]
            if c.pick == "uniform":
                key = torch.rand(cand.shape, device=cand.device, generator=generator)
            else:  # "top": earlier = better
                key = -torch.arange(n_cand, device=cand.device, dtype=torch.float32).expand(cand.shape[0], -1)
            key = key.masked_fill(~valid, float("-inf"))
            n_take = min(c.n_negatives, n_cand)
            top = torch.topk(key, n_take, dim=1)
            ids = cand.gather(1, top.indices)
            ok = torch.isfinite(top.values)
            if n_take < c.n_negatives:
                pad = c.n_negatives - n_take
                ids = torch.cat([ids, ids.new_zeros(ids.shape[0], pad)], 1)
                ok = torch.cat([ok, ok.new_zeros(ok.shape[0], pad)], 1)
            fallback = ~ok
            # rows short of hard candidates: fill from Uniform(I \ I_u^+) (drawn for every row, used where
            # needed, so there is no data-dependent branch and no device sync)
            fill = uniform_pool(index, users, c.n_negatives, generator)
            ids = torch.where(fallback, fill, ids)
            stats = {
                "ann_pool": valid.sum(1).float().mean(),
                "ann_fallback": fallback.float().mean(),
            }
        return Negatives(emb=view.item_emb(ids), ids=ids, stats=stats)

    def extra_repr(self) -> str:
        return f"{self.config!r}, exact={self.exact}"

"""Serving-side retrieval: export embeddings, build an exact or approximate inner-product index, retrieve
top-K items per user, and measure how much an approximate index loses against exact search.

FAISS (``pip install 'recneg[faiss]'``, i.e. ``faiss-cpu``) is optional. Index kinds:

- ``"flat"``: exact maximum inner product (``faiss.IndexFlatIP``; without FAISS, a chunked torch
  ``matmul`` + ``topk`` — same results);
- ``"hnsw"``: approximate, ``faiss.IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT`` (``hnsw_m`` links per
  node, ``ef_search`` breadth at query time, ``ef_construction`` at build time);
- ``"ivf"``: approximate, ``faiss.IndexIVFFlat`` (``nlist`` k-means cells, ``nprobe`` visited per query).

Without FAISS an approximate kind falls back to the exact torch search with a ``RuntimeWarning``, and
``ItemIndex.backend == "torch"`` / ``ItemIndex.exact == True`` say so.

Example::

    paths = export_embeddings(model, "runs/tt", train)           # item_embeddings.npy, user_…, id_maps.json
    users, items = model.tables()
    exact = ItemIndex(items, kind="flat")
    approx = ItemIndex(items, kind="hnsw")
    _, top_exact = exact.search(users, 50)
    _, top_approx = approx.search(users, 50)
    print(ann_recall_at_k(top_exact, top_approx))                 # fraction of the exact top-50 found
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from recneg.errors import ConfigError, DataError

KINDS = ("flat", "hnsw", "ivf")


def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


# --------------------------------------------------------------------------------------------- export
def export_embeddings(model, out_dir: str | Path, train=None, users: bool = True) -> dict[str, Path]:
    """Write the model's item (and user) embeddings as ``.npy`` with the original-id maps.

    Files: ``item_embeddings.npy`` ``[n_items, d]`` float32, ``user_embeddings.npy`` ``[n_users, d]``
    (when ``users``), and ``id_maps.json`` ``{"users": [...], "items": [...]}``: row ``k`` of an embedding
    file belongs to original id ``id_maps[side][k]`` (identity when ``train`` is ``None`` or has no id maps).

    Args:
        model: any :class:`~recneg.models.base.Recommender` (``tables()`` is called once).
        out_dir: folder, created if missing.
        train: the training :class:`~recneg.data.Interactions` (for its id maps).
        users: also write user embeddings.

    Returns:
        ``{"items": path, "users": path, "id_maps": path}`` (``"users"`` only when written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    user_table, item_table = model.tables()
    paths = {"items": out / "item_embeddings.npy", "id_maps": out / "id_maps.json"}
    np.save(paths["items"], _as_numpy(item_table))
    if users:
        paths["users"] = out / "user_embeddings.npy"
        np.save(paths["users"], _as_numpy(user_table))
    if train is not None:
        maps = train.id_maps()
    else:
        maps = {
            "users": list(range(int(user_table.shape[0]))),
            "items": list(range(int(item_table.shape[0]))),
        }
    paths["id_maps"].write_text(json.dumps(maps))
    return paths


def load_embeddings(path: str | Path, side: str = "items") -> tuple[np.ndarray, list]:
    """Read ``item_embeddings.npy`` (or ``user_embeddings.npy``) and its original ids from an export folder.

    Returns:
        ``(embeddings [n, d] float32, original_ids [n])``.
    """
    folder = Path(path)
    if side not in ("items", "users"):
        raise ConfigError(f"side must be 'items' or 'users', got {side!r}")
    file = folder / ("item_embeddings.npy" if side == "items" else "user_embeddings.npy")
    if not file.exists():
        raise DataError(f"{file}: file not found (run export_embeddings first)")
    emb = np.load(file)
    maps_file = folder / "id_maps.json"
    ids = json.loads(maps_file.read_text())[side] if maps_file.exists() else list(range(emb.shape[0]))
    if len(ids) != emb.shape[0]:
        raise DataError(f"{maps_file}: {len(ids)} {side} ids for {emb.shape[0]} embedding rows")
    return emb, ids


# --------------------------------------------------------------------------------------------- index
class ItemIndex:
    """A maximum-inner-product index over item vectors.

    Args:
        item_vectors: ``[n_items, d]`` array or tensor (row ``j`` = internal item ``j``).
        kind: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate).
        backend: ``"auto"`` (FAISS when installed), ``"faiss"`` (raise without it) or ``"torch"`` (exact).
        hnsw_m, ef_construction, ef_search: HNSW settings.
        nlist, nprobe: IVF settings (``nlist`` is capped at ``n_items``).
        chunk_size: queries per chunk of the torch search.

    Attributes:
        backend: ``"faiss"`` or ``"torch"`` — what actually runs.
        exact: whether results are exact.
        build_seconds: wall time of the build.
    """

    def __init__(
        self,
        item_vectors,
        kind: str = "flat",
        backend: str = "auto",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        nlist: int = 256,
        nprobe: int = 16,
        chunk_size: int = 4096,
    ):
        if kind not in KINDS:
            raise ConfigError(f"kind of ItemIndex must be one of {list(KINDS)}, got {kind!r}")
        if backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"backend of ItemIndex must be auto, faiss or torch, got {backend!r}")
        self.vectors = _as_numpy(item_vectors)
        if self.vectors.ndim != 2 or self.vectors.shape[0] == 0:
            raise DataError(f"item_vectors must be a non-empty [n_items, d] matrix, got {self.vectors.shape}")
        self.kind, self.chunk_size = kind, int(chunk_size)
        has_faiss = faiss_available()
        if backend == "faiss" and not has_faiss:
            raise ConfigError("backend='faiss' needs faiss: pip install 'recneg[faiss]' (faiss-cpu)")
        self.backend = "faiss" if has_faiss and backend != "torch" else "torch"
        if self.backend == "torch" and kind != "flat":
            warnings.warn(
                f"ItemIndex(kind={kind!r}): faiss is not installed (or backend='torch'); using exact torch "
                "search instead (pip install 'recneg[faiss]')",
                RuntimeWarning,
                stacklevel=2,
            )
        self.exact = self.backend == "torch" or kind == "flat"
        start = time.perf_counter()
        self._index = (
            self._build(hnsw_m, ef_construction, ef_search, nlist, nprobe)
            if self.backend == "faiss"
            else None
        )
        self.build_seconds = time.perf_counter() - start

    @property
    def n_items(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _build(self, hnsw_m, ef_construction, ef_search, nlist, nprobe):
        import faiss

        d = self.dim
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
        else:
            nlist = max(1, min(int(nlist), self.n_items))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self.vectors)
            index.nprobe = max(1, min(int(nprobe), nlist))
            self._quantizer = quantizer  # keep it alive alongside the index
        index.add(self.vectors)
        return index

    def search(self, queries, k: int, exclude=None, query_ids=None) -> tuple[Tensor, Tensor]:
        """Top-``k`` items by inner product for each query vector.

        Args:
            queries: ``[C, d]`` user vectors.
            k: number of items per query (capped at ``n_items``).
            exclude: optional :class:`~recneg.data.PositiveIndex` (e.g. ``train.positives()``): items in it
                for the query's user are skipped (already-seen filtering); needs ``query_ids``.
            query_ids: ``[C]`` internal user ids of the queries (with ``exclude``).

        Returns:
            ``(scores [C, k] float32, ids [C, k] int64)``, best first; ``-1`` ids (score ``-inf``) pad rows
            with fewer than ``k`` results (an approximate index may return fewer).
        """
        q = _as_numpy(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DataError(f"queries must be [C, {self.dim}], got {q.shape}")
        k = int(k)
        if k < 1:
            raise ConfigError(f"k must be an int >= 1, got {k}")
        extra = 0
        if exclude is not None:
            if query_ids is None:
                raise ConfigError("search(exclude=...) needs query_ids, the internal user id of each query")
            qid = torch.as_tensor(np.asarray(query_ids), dtype=torch.long)
            extra = int(exclude.degree.cpu()[qid].max()) if qid.numel() else 0
        k_search = min(k + extra, self.n_items)
        scores, ids = self._search(q, k_search)
        if exclude is not None:
            seen = exclude.contains(
                qid.to(exclude.keys.device).unsqueeze(1), ids.clamp_min(0).to(exclude.keys.device)
            )
            drop = seen.cpu() | (ids < 0)
            scores = scores.masked_fill(drop, float("-inf"))
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            scores, ids = scores.gather(1, order), ids.gather(1, order)
            ids = ids.masked_fill(torch.isinf(scores) & (scores < 0), -1)
        scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:  # fewer items than k
            pad = k - ids.shape[1]
            scores = torch.cat([scores, torch.full((scores.shape[0], pad), float("-inf"))], 1)
            ids = torch.cat([ids, torch.full((ids.shape[0], pad), -1, dtype=torch.long)], 1)
        return scores, ids

    def _search(self, q: np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        if self._index is not None:  # built exactly when backend == "faiss"
            scores, ids = self._index.search(q, k)
            scores, ids = torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))
            return scores.masked_fill(ids < 0, float("-inf")), ids
        items = torch.from_numpy(self.vectors)
        out_s, out_i = [], []
        for s in range(0, q.shape[0], self.chunk_size):
            top = torch.topk(torch.from_numpy(q[s : s + self.chunk_size]) @ items.T, k, dim=1)
            out_s.append(top.values)
            out_i.append(top.indices)
        if not out_s:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        return torch.cat(out_s), torch.cat(out_i)

    def __repr__(self) -> str:
        return (
            f"ItemIndex(kind={self.kind!r}, backend={self.backend!r}, n_items={self.n_items}, d={self.dim})"
        )


def retrieve(index: ItemIndex, user_vectors, k: int, exclude=None, user_ids=None) -> tuple[Tensor, Tensor]:
    """Top-``k`` item ids for each user vector: ``index.search(user_vectors, k, exclude, user_ids)``.

    Shape: ``user_vectors [C, d]`` -> ``(scores [C, k], ids [C, k])``.
    """
    return index.search(user_vectors, k, exclude=exclude, query_ids=user_ids)


def ann_recall_at_k(exact_ids, approx_ids) -> float:
    """Mean fraction of each query's exact top-``k`` that the approximate top-``k`` also returns.

    ``-1`` entries (padding) never count as found; the denominator of a row is its number of valid exact ids.

    Shape: ``exact_ids, approx_ids [C, k]`` -> float in ``[0, 1]``.
    """
    e, a = torch.as_tensor(np.asarray(exact_ids)), torch.as_tensor(np.asarray(approx_ids))
    if e.shape != a.shape or e.dim() != 2:
        raise DataError(
            f"exact_ids and approx_ids must both be [C, k], got {tuple(e.shape)} and {tuple(a.shape)}"
        )
    valid = e >= 0
    found = ((e.unsqueeze(2) == a.unsqueeze(1)) & (a.unsqueeze(1) >= 0)).any(2) & valid
    denom = valid.sum(1).clamp_min(1)
    return float((found.sum(1).double() / denom).mean()) if e.shape[0] else float("nan")


def compare_indexes(
    user_vectors, item_vectors, k: int = 50, kind: str = "hnsw", exclude=None, user_ids=None, **index_kwargs
) -> dict:
    """Build exact and approximate indexes and report the approximate one's recall against exact search.

    Returns:
        ``{"kind", "backend", "k", "ann_recall@k", "exact_seconds", "approx_seconds", "build_seconds"}``
        (search wall times for all queries; timings vary by machine and are for orientation only).
    """
    exact = ItemIndex(
        item_vectors, kind="flat", **{k_: v for k_, v in index_kwargs.items() if k_ == "backend"}
    )
    approx = ItemIndex(item_vectors, kind=kind, **index_kwargs)
    t0 = time.perf_counter()
    _, e_ids = exact.search(user_vectors, k, exclude, user_ids)
    t1 = time.perf_counter()
    _, a_ids = approx.search(user_vectors, k, exclude, user_ids)
    t2 = time.perf_counter()
    return {
        "kind": kind,
        "backend": approx.backend,
        "k": k,
        f"ann_recall@{k}": ann_recall_at_k(e_ids, a_ids),
        "exact_seconds": t1 - t0,
        "approx_seconds": t2 - t1,
        "build_seconds": approx.build_seconds,
    }


# --------------------------------------------------------------------------------------------- run folders
def _parse_user_ids(tokens, originals: list) -> list[int]:
    """Internal ids of original user ids given as strings (``"1"`` matches ``1``, ``"1"`` and ``1.0``)."""
    lookup: dict[str, int] = {}
    for internal, orig in enumerate(originals):
        lookup.setdefault(str(orig), internal)
        if isinstance(orig, float) and orig.is_integer():
            lookup.setdefault(str(int(orig)), internal)
    out = []
    for tok in tokens:
        key = str(tok).strip()
        if key not in lookup:
            example = ", ".join(str(o) for o in originals[:3])
            raise ConfigError(f"unknown user id {key!r}: not in the run's id_maps.json (e.g. {example})")
        out.append(lookup[key])
    return out


def retrieve_for_run(
    run_dir: str | Path,
    users,
    k: int = 10,
    index: str = "exact",
    exclude_seen: bool = True,
    recall_users: int = 2000,
    seed: int = 0,
    **index_kwargs,
) -> dict:
    """Top-``k`` items (original ids) for original user ids, from a run folder's ``model.pt``.

    Rebuilds the run's data split and components (``recneg.runner.load_split`` / ``build_components``,
    side features included), loads the best weights, builds the index over the item table and searches it.
    With an approximate ``index`` it also measures ANN recall@``k`` against exact search, on the requested
    users and on up to ``recall_users`` users drawn at random (seeded) from the whole user set.

    Args:
        run_dir: a folder written by ``recneg train`` (``config.json``, ``id_maps.json``, ``model.pt``).
        users: original user ids (strings or ints, as in ``id_maps.json``).
        k: items per user.
        index: ``"exact"`` (``"flat"``), ``"hnsw"`` or ``"ivf"``.
        exclude_seen: skip each user's training positives.
        recall_users: sample size of the all-users ANN recall (0: requested users only).
        seed: seed of that sample.
        index_kwargs: :class:`ItemIndex` settings (``ef_search``, ``nprobe``, ...).

    Returns:
        ``{"index", "backend", "exact", "k", "users": [{"user", "items", "scores"}], "ann_recall@k"
        (requested users; ``None`` for an exact index), "ann_recall@k_sample", "n_sample"}``.
    """
    import torch as _torch

    from recneg.runner import build_components, load_run_config, load_split

    run_dir = Path(run_dir)
    kind = {"exact": "flat"}.get(index, index)
    if kind not in KINDS:
        raise ConfigError(f"index must be exact, hnsw or ivf, got {index!r}")
    cfg = load_run_config(run_dir)
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no model.pt yet (the run has not evaluated once)")
    maps_file = run_dir / "id_maps.json"
    if not maps_file.is_file():
        raise ConfigError(f"{run_dir}: id_maps.json is missing")
    maps = json.loads(maps_file.read_text())
    internal = _parse_user_ids(users, maps["users"])
    split = load_split(cfg)
    model, _, _ = build_components(cfg, split)
    model.load_state_dict(_torch.load(weights, map_location="cpu", weights_only=True))
    if split.n_users != len(maps["users"]) or split.n_items != len(maps["items"]):
        raise DataError(
            f"{run_dir}: the rebuilt data has {split.n_users} users / {split.n_items} items, id_maps.json "
            f"{len(maps['users'])} / {len(maps['items'])} (has the dataset changed?)"
        )
    user_table, item_table = model.tables()
    exclude = split.train.positives() if exclude_seen else None
    k = min(int(k), split.n_items)
    chosen = _torch.as_tensor(internal, dtype=_torch.long)
    exact_index = ItemIndex(item_table, kind="flat")
    search_index = exact_index if kind == "flat" else ItemIndex(item_table, kind=kind, **index_kwargs)
    scores, ids = search_index.search(user_table[chosen], k, exclude, chosen)
    items = maps["items"]
    out = {
        "index": index,
        "backend": search_index.backend,
        "exact": search_index.exact,
        "k": k,
        "users": [
            {
                "user": maps["users"][u],
                "items": [items[j] for j in row.tolist() if j >= 0],
                "scores": [float(s) for s, j in zip(srow.tolist(), row.tolist(), strict=True) if j >= 0],
            }
            for u, row, srow in zip(internal, ids, scores, strict=True)
        ],
        f"ann_recall@{k}": None,
        f"ann_recall@{k}_sample": None,
        "n_sample": 0,
    }
    if kind != "flat":
        _, exact_ids = exact_index.search(user_table[chosen], k, exclude, chosen)
        out[f"ann_recall@{k}"] = ann_recall_at_k(exact_ids, ids)
        if recall_users:
            gen = np.random.default_rng(seed)
            sample = _torch.as_tensor(
                np.sort(gen.choice(split.n_users, size=min(recall_users, split.n_users), replace=False))
            )
            _, e = exact_index.search(user_table[sample], k, exclude, sample)
            _, a = search_index.search(user_table[sample], k, exclude, sample)
            out[f"ann_recall@{k}_sample"] = ann_recall_at_k(e, a)
            out["n_sample"] = int(sample.numel())
    return out

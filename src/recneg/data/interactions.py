"""The interaction container every other part of recneg reads.

An :class:`Interactions` holds implicit-feedback pairs ``(user, item)`` with 0-based contiguous ids, optional
timestamps and weights, and the maps back to the original ids. Train, validation and test parts of a
:class:`Split` share one id space (the same ``n_users``, ``n_items`` and id maps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recneg.errors import DataError


class Interactions:
    """Implicit-feedback pairs over a fixed id space.

    Args:
        users: ``[n]`` int array of user ids in ``0..n_users-1``.
        items: ``[n]`` int array of item ids in ``0..n_items-1``.
        n_users, n_items: size of the id space (defaults: ``max + 1``).
        timestamps: optional ``[n]`` float array (seconds, or any monotone clock).
        weights: optional ``[n]`` float array (e.g. play counts, ratings).
        user_ids, item_ids: optional ``[n_users]`` / ``[n_items]`` arrays of original ids, so
            ``user_ids[u]`` is the id the input file used for internal user ``u``.

    Attributes (computed lazily and cached):
        csr: ``scipy.sparse.csr_matrix [n_users, n_items]`` of ones (duplicates collapsed).
        item_counts: ``[n_items]`` int64 training count ``c_j`` of each item (popularity).
        user_counts: ``[n_users]`` int64 degree of each user.
    """

    def __init__(
        self,
        users,
        items,
        n_users: int | None = None,
        n_items: int | None = None,
        timestamps=None,
        weights=None,
        user_ids=None,
        item_ids=None,
    ):
        users = np.asarray(users)
        items = np.asarray(items)
        if users.ndim != 1 or items.ndim != 1 or users.shape != items.shape:
            raise DataError(
                f"users and items must be 1-D arrays of one length, got {users.shape} and {items.shape}"
            )
        for name, arr in (("users", users), ("items", items)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{name} must hold integer ids, got dtype {arr.dtype}")
            if arr.size and arr.min() < 0:
                raise DataError(f"{name} must be non-negative ids, found {int(arr.min())}")
        self.users = users.astype(np.int64, copy=False)
        self.items = items.astype(np.int64, copy=False)
        self.n_users = int(
            n_users if n_users is not None else (self.users.max() + 1 if self.users.size else 0)
        )
        self.n_items = int(
            n_items if n_items is not None else (self.items.max() + 1 if self.items.size else 0)
        )
        if self.users.size and self.users.max() >= self.n_users:
            raise DataError(f"user id {int(self.users.max())} is outside the id space 0..{self.n_users - 1}")
        if self.items.size and self.items.max() >= self.n_items:
            raise DataError(f"item id {int(self.items.max())} is outside the id space 0..{self.n_items - 1}")
        self.timestamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        for name, arr in (("timestamps", self.timestamps), ("weights", self.weights)):
            if arr is not None:
                if arr.shape != self.users.shape:
                    raise DataError(f"{name} must have one value per interaction, got {arr.shape}")
                if not np.isfinite(arr).all():
                    bad = int(np.flatnonzero(~np.isfinite(arr))[0])
                    raise DataError(f"{name} must be finite, interaction {bad} has {arr[bad]}")
        self.user_ids = None if user_ids is None else np.asarray(user_ids)
        self.item_ids = None if item_ids is None else np.asarray(item_ids)
        self._device_cache: dict[str, PositiveIndex] = {}

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.users.size)

    def __repr__(self) -> str:
        return f"Interactions(n={len(self)}, n_users={self.n_users}, n_items={self.n_items})"

    def subset(self, mask_or_index) -> Interactions:
        """A subset of the interactions in the same id space."""
        idx = np.asarray(mask_or_index)
        return Interactions(
            self.users[idx],
            self.items[idx],
            self.n_users,
            self.n_items,
            None if self.timestamps is None else self.timestamps[idx],
            None if self.weights is None else self.weights[idx],
            self.user_ids,
            self.item_ids,
        )

    def with_id_space(self, n_users: int, n_items: int, user_ids=None, item_ids=None) -> Interactions:
        return Interactions(
            self.users,
            self.items,
            n_users,
            n_items,
            self.timestamps,
            self.weights,
            user_ids if user_ids is not None else self.user_ids,
            item_ids if item_ids is not None else self.item_ids,
        )

    @cached_property
    def csr(self) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (np.ones(len(self), dtype=np.float32), (self.users, self.items)),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        m.sort_indices()
        return m

    @cached_property
    def item_counts(self) -> np.ndarray:
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    @cached_property
    def user_counts(self) -> np.ndarray:
        return np.bincount(self.users, minlength=self.n_users).astype(np.int64)

    def positives(self, device: str | torch.device = "cpu") -> PositiveIndex:
        """The per-device membership index of these interactions (cached)."""
        key = str(torch.device(device))
        if key not in self._device_cache:
            self._device_cache[key] = PositiveIndex.from_csr(self.csr, device)
        return self._device_cache[key]

    # ------------------------------------------------------------------ id maps
    def id_maps(self) -> dict:
        """Original ids as JSON-able lists: ``{"users": [...], "items": [...]}`` (identity when absent)."""

        def tolist(a, n):
            if a is None:
                return list(range(n))
            return [x.item() if hasattr(x, "item") else x for x in a]

        return {"users": tolist(self.user_ids, self.n_users), "items": tolist(self.item_ids, self.n_items)}

    def save_id_maps(self, path: str | Path) -> None:
        from recneg.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.id_maps()))


@dataclass
class PositiveIndex:
    """Device-resident membership index over a user×item set.

    ``keys`` holds ``u * n_items + i`` for every pair, sorted, so membership of any ``[...]`` batch of
    ``(u, i)`` pairs is one ``searchsorted``. ``indptr``/``indices`` are the CSR arrays (per-user rows).

    Shapes: ``keys [nnz]``, ``indptr [n_users + 1]``, ``indices [nnz]``, ``degree [n_users]`` (all int64).
    """

    keys: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor
    degree: torch.Tensor
    n_users: int
    n_items: int
    # None: not built yet; False: too large to build; else the packed bitmap [ceil(n_users*n_items/8)] uint8
    _bits: torch.Tensor | bool | None = field(default=None, repr=False)
    _full_users: bool | None = field(default=None, repr=False)

    @property
    def has_full_users(self) -> bool:
        """Whether some user has every item as a positive (no negative exists for it); computed once."""
        if self._full_users is None:
            self._full_users = bool((self.degree >= self.n_items).any())
        return self._full_users

    @classmethod
    def from_csr(cls, csr: sp.csr_matrix, device="cpu") -> PositiveIndex:
        csr = csr.tocsr()
        csr.sort_indices()
        n_users, n_items = csr.shape
        indptr = torch.as_tensor(csr.indptr.astype(np.int64), device=device)
        indices = torch.as_tensor(csr.indices.astype(np.int64), device=device)
        degree = indptr[1:] - indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(n_users, device=device), degree)
        keys = rows * n_items + indices  # already sorted: rows ascending, indices sorted within rows
        return cls(keys, indptr, indices, degree, int(n_users), int(n_items))

    #: the membership bitmap is used while it takes at most this many bytes (Gowalla: 153 MB)
    bitmap_max_bytes: ClassVar[int] = 1 << 28

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Boolean tensor, shape of ``items``: whether ``(users, items)`` is a pair of the set.

        ``users`` broadcasts against ``items`` (e.g. ``[B, 1]`` against ``[B, n]``). Uses a bitmap of all
        ``n_users × n_items`` pairs (one bit each, built on first use) when it fits in
        :attr:`bitmap_max_bytes`, else a ``searchsorted`` over the sorted keys.
        """
        if self.keys.numel() == 0:
            return torch.zeros(
                torch.broadcast_shapes(users.shape, items.shape), dtype=torch.bool, device=items.device
            )
        bits = self._bitmap()
        if bits is not None:
            compiled = self._contains_compiled(bits, users, items)
            if compiled is not None:
                return compiled
        q = (users * self.n_items + items).reshape(-1)
        shape = torch.broadcast_shapes(users.shape, items.shape)
        if bits is not None:
            # index_select, not bits[...]: on CPU 0.6 vs 1.0 ms for 65 k lookups in Gowalla's 153 MB bitmap
            return ((bits.index_select(0, q >> 3) >> (q & 7).to(torch.uint8)) & 1).bool().reshape(shape)
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return (self.keys[pos] == q).reshape(shape)

    def _contains_compiled(self, bits: torch.Tensor, users: torch.Tensor, items: torch.Tensor):
        """:meth:`contains` by the compiled bitmap test (:func:`recneg.kernels.bitmap_contains`), or ``None``
        where it does not serve: not CPU, shapes other than ``[B]`` with ``[B]`` or ``[B, 1]`` with
        ``[B, n]`` (what the samplers pass), or numba missing or unable to build it."""
        from recneg import kernels

        if not (
            bits.device.type == "cpu" and items.device.type == "cpu" and kernels.ready("bitmap_contains")
        ):
            return None
        if users.dim() == items.dim() == 1 and users.shape == items.shape:
            u, it = users, items.view(-1, 1)
        elif users.dim() == items.dim() == 2 and users.shape[1] == 1 and users.shape[0] == items.shape[0]:
            u, it = users.view(-1), items
        else:
            return None
        found = kernels.bitmap_contains(
            bits.numpy(),
            u.to(torch.int64).contiguous().numpy(),
            it.to(torch.int64).contiguous().numpy(),
            self.n_users,
            self.n_items,
        )
        return torch.from_numpy(found).view(items.shape)

    def bitmap(self) -> torch.Tensor | None:
        """The pairs as a packed bitmap (uint8 ``[ceil(n_users · n_items / 8)]``, bit ``q & 7`` of byte
        ``q >> 3`` for ``q = u · n_items + i``; built on first use), or ``None`` when it would take more
        than :attr:`bitmap_max_bytes`."""
        return self._bitmap()

    def _bitmap(self) -> torch.Tensor | None:
        if self._bits is None:
            n_bytes = (self.n_users * self.n_items + 7) // 8
            if n_bytes > self.bitmap_max_bytes:
                self._bits = False
            else:
                keys = self.keys.cpu().numpy()
                bits = np.zeros(n_bytes, dtype=np.uint8)
                np.bitwise_or.at(bits, keys >> 3, (1 << (keys & 7)).astype(np.uint8))
                self._bits = torch.from_numpy(bits).to(self.keys.device)
        return self._bits if isinstance(self._bits, torch.Tensor) else None


@dataclass
class Split:
    """Train / validation / test parts of one dataset in one id space.

    ``valid`` is ``None`` when a run uses no validation (``valid_ratio = 0``).
    """

    train: Interactions
    test: Interactions
    valid: Interactions | None = None
    name: str = "data"
    info: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def __repr__(self) -> str:
        v = len(self.valid) if self.valid is not None else 0
        return (
            f"Split({self.name!r}: n_users={self.n_users}, n_items={self.n_items}, "
            f"train={len(self.train)}, valid={v}, test={len(self.test)})"
        )

"""The small protocol every model meets, and the view of a model a sampler sees in one training step.

A model embeds; a sampler picks; a loss scores; the trainer wires them. Samplers never call a model
directly: they receive a :class:`ModelView` that exposes exactly what they may ask for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recneg.errors import ConfigError


class ModelView:
    """What a sampler may see of the model during one training step.

    Built by :meth:`Recommender.view` after (at most) one propagation, so every call below is a gather.

    Attributes:
        users, pos: ``[B]`` int64 ids of the batch's pairs ``(u_b, i_b)``.
        user_emb: ``[B, d]`` pooled user embeddings ``ē_u`` (with gradient).
        pos_emb: ``[B, d]`` pooled positive-item embeddings ``ē_i`` (with gradient).
        n_layers: ``L + 1`` when per-layer embeddings exist, else ``None``.
    """

    def __init__(self, users: Tensor, pos: Tensor):
        self.users = users
        self.pos = pos

    # subclasses fill these
    user_emb: Tensor
    pos_emb: Tensor
    n_layers: int | None = None
    model_name: str = "model"

    def item_emb(self, ids: Tensor) -> Tensor:
        """Pooled item embeddings ``ē_j`` with gradient. Shape: ``ids [...] -> [..., d]``."""
        raise NotImplementedError

    def item_ego(self, ids: Tensor) -> Tensor:
        """Layer-0 (trainable) item rows ``e_j^(0)``, for regularisation. Shape: ``[...] -> [..., d]``."""
        raise NotImplementedError

    @property
    def user_ego(self) -> Tensor:
        """``[B, d]`` layer-0 user rows of the batch."""
        raise NotImplementedError

    @property
    def pos_ego(self) -> Tensor:
        """``[B, d]`` layer-0 rows of the batch's positives."""
        return self.item_ego(self.pos)

    def item_layers(self, ids: Tensor) -> Tensor:
        """Per-layer item embeddings ``e_j^(l)``. Shape: ``ids [...] -> [..., L+1, d]``."""
        raise ConfigError(
            f"{self.model_name} does not provide per-layer embeddings; this sampler needs a model that does "
            "(e.g. lightgcn)"
        )

    def item_layer_rows(self, ids: Tensor) -> Tensor:
        """Layer ``l`` of item ``ids[..., l]``, for each ``l``: ``e_{ids[..., l]}^(l)`` (with gradient), the
        rows a per-layer (hop) selection picked. Shape: ``ids [..., L+1] -> [..., L+1, d]``."""
        rows = self.item_layers(ids)  # [..., L+1 (ids), L+1 (layers), d]
        return torch.diagonal(rows, dim1=-3, dim2=-2).transpose(-1, -2)

    def score_layers(self, ids: Tensor) -> Tensor:
        """``⟨ē_{u_b}, e_j^(l)⟩`` of each row's items at every layer, **without gradient** (the pooled user
        against each layer of the item). Shape: ``ids [B, ...] -> [B, ..., L+1]``."""
        with torch.no_grad():
            return torch.einsum("bd,b...ld->b...l", self.user_emb.detach(), self.item_layers(ids).detach())

    @property
    def user_layers(self) -> Tensor:
        """``[B, L+1, d]`` per-layer user embeddings of the batch."""
        return self.item_layers(self.pos)  # raises the same clear error on models without layers

    @property
    def pos_layers(self) -> Tensor:
        """``[B, L+1, d]`` per-layer embeddings of the batch's positives."""
        return self.item_layers(self.pos)

    def score(self, ids: Tensor) -> Tensor:
        """Scores ``r_{u_b j}`` of each row's items **without gradient**. Shape: ``ids [B, n] -> [B, n]``."""
        with torch.no_grad():
            return torch.einsum("bd,bnd->bn", self.user_emb.detach(), self.item_emb(ids).detach())

    def all_items(self) -> Tensor:
        """``[n_items, d]`` pooled item table (with gradient)."""
        raise NotImplementedError


def _rows(table: Tensor, ids: Tensor, sparse: bool = False) -> Tensor:
    """``table[ids]`` as one ``index_select`` (on CPU ~3× faster than 2-D advanced indexing).

    With ``sparse`` (a 2-D table) the gather is ``F.embedding(..., sparse=True)``: its gradient is a
    row-sparse tensor of the gathered rows instead of a zero-filled dense table.

    Shape: ``table [n, *f]``, ``ids [*s]`` -> ``[*s, *f]``.
    """
    if sparse:
        return F.embedding(ids, table, sparse=True)
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, *table.shape[1:])


def _layer_rows(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` ``[n, d]`` from a (non-parameter) layer table ``[N, d]``: with a row-sparse gradient
    when the rows are few (at most a quarter of the table), so that in backward autograd adds them into
    the layer's dense gradient instead of zero-filling an ``[N, d]`` table per lookup; else a dense one."""
    return F.embedding(ids, table, sparse=4 * ids.numel() <= table.shape[0])


#: on CPU, candidates are gathered and scored in chunks of about this many bytes (cache-sized: a 16 MB
#: ``[2048, 32, 64]`` gather costs more in fresh pages and cache misses than the scoring itself)
SCORE_CHUNK_BYTES = 1 << 22


#: whether candidate scores on CPU may use the compiled scorer (see :func:`use_compiled_scorer`)
_COMPILED_SCORER = {"enabled": True}


def use_compiled_scorer(enabled: bool) -> bool:
    """Let candidate scoring on CPU use the compiled scorer (the default) or not; returns the old setting.

    Both give the same scores to float rounding; switching it off is for comparing the two.
    """
    previous = _COMPILED_SCORER["enabled"]
    _COMPILED_SCORER["enabled"] = bool(enabled)
    return previous


def _score_compiled(table: Tensor, user_emb: Tensor, ids: Tensor) -> Tensor | None:
    """The compiled scorer's ``[B, n]`` scores (:func:`recneg.kernels.score_rows`), or ``None`` where it
    does not serve: not CPU float32 2-D tables, switched off, or numba missing or unable to build it."""
    from recneg import kernels

    if not (
        _COMPILED_SCORER["enabled"]
        and table.device.type == "cpu"
        and table.dtype == user_emb.dtype == torch.float32
        and table.dim() == 2
        and ids.dim() == 2
        and tuple(user_emb.shape) == (ids.shape[0], table.shape[1])  # else the tensor path raises
        and table.is_contiguous()
        and kernels.ready("score_rows")
    ):
        return None
    scores = kernels.score_rows(
        table.numpy(), user_emb.contiguous().numpy(), ids.to(torch.int64).contiguous().numpy()
    )
    return torch.from_numpy(scores)


def compiled_scoring_tables(view: ModelView) -> tuple[Tensor, Tensor] | None:
    """``(item_table [n_items, d], user_emb [B, d])``, detached, where ``view.score`` takes the compiled
    scorer (a :class:`TableView` over CPU float32 tables, :func:`use_compiled_scorer` on, numba here), so
    that a caller may score candidates with :mod:`recneg.kernels` itself; else ``None``. The user rows
    are read (and brought up to date) here; the caller announces its item reads with
    :meth:`TableView.read` before making them."""
    from recneg import kernels

    if not isinstance(view, TableView) or type(view).score is not TableView.score:
        return None
    table = view.item_table
    if not (
        _COMPILED_SCORER["enabled"]
        and table.device.type == "cpu"
        and table.dtype == torch.float32
        and table.dim() == 2
        and table.is_contiguous()
        and kernels.ready("score_rows")
    ):
        return None
    user_emb = view.user_emb.detach()
    if user_emb.dtype != torch.float32 or tuple(user_emb.shape) != (len(view.users), table.shape[1]):
        return None
    return table.detach(), user_emb


def score_rows(table: Tensor, user_emb: Tensor, ids: Tensor) -> Tensor:
    """``r_bj = ⟨user_emb_b, table[ids_bj]⟩`` without gradient.

    On CPU with float32 tables and numba, one compiled pass reads the rows in place
    (:func:`recneg.kernels.score_rows`); otherwise the rows are gathered, in cache-sized chunks on CPU, and
    scored with ``bmm``. The two agree to float rounding (the compiled dot products may sum in another order).

    Shape: ``table [n, d]``, ``user_emb [B, d]``, ``ids [B, n]`` -> ``[B, n]``.
    """
    with torch.no_grad():
        table, user_emb = table.detach(), user_emb.detach()
        compiled = _score_compiled(table, user_emb, ids)
        if compiled is not None:
            return compiled
        per_row = ids.shape[1] * table.shape[1] * table.element_size()
        step = ids.shape[0] if table.is_cuda else max(1, SCORE_CHUNK_BYTES // max(per_row, 1))
        parts = [
            torch.bmm(user_emb[s : s + step].unsqueeze(1), _rows(table, ids[s : s + step]).transpose(1, 2))
            for s in range(0, ids.shape[0], step)
        ]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).squeeze(1)


class TableView(ModelView):
    """A view over full user/item tables (MF, LightGCN): every lookup is an index into a tensor.

    Args:
        users, pos: ``[B]`` batch ids.
        user_table: ``[n_users, d]`` pooled user table; ``item_table``: ``[n_items, d]``.
        user_ego_table, item_ego_table: layer-0 tables (the same tensors for MF).
        user_layer_table, item_layer_table: optional ``[n, L+1, d]`` per-layer tables.
        layer_tables: instead of those, a function building them, called once on first use (LightGCN:
            stacking the layers costs a copy of every layer, which only per-layer samplers need);
            ``n_layers`` (L + 1) then gives their depth.
        layer_nodes: ``(tables, n_users)``: the ``L + 1`` per-layer tables over all nodes, each
            ``[n_users + n_items, d]`` with the users first (LightGCN's ``E^(l)``). Per-layer lookups
            (``item_layers``, ``user_layers``, ``item_layer_rows``, ``score_layers``) then gather from
            each layer's table, so neither the stacked tables nor, in backward, their ``[N, L+1, d]``
            gradient are ever built.
        pooled_nodes: ``(table, n_users)``: the pooled ``[n_users + n_items, d]`` table that
            ``user_table`` and ``item_table`` are the two slices of (LightGCN); the pooled lookups with
            gradient (``user_emb``, ``pos_emb``, ``item_emb``) then gather from it (see
            :meth:`_pooled_rows`).
        sparse: gather the 2-D tables with row-sparse gradients (see :func:`_rows`); only for a model
            whose tables are its parameters (MF), where every lookup is then sparse.

    Attributes:
        before_read: ``None``, or ``f(which, ids)`` called before the view reads rows ``ids`` of the
            ``"user"`` or ``"item"`` table (``ids=None``: the whole table). A training step that defers
            updates of rows nobody reads (:class:`recneg.fused_step.FusedMFStep`, ``defer``) sets it to
            bring those rows up to date first. Samplers therefore read through the methods and properties
            above (``score``, ``item_emb``, ``all_items``, ...), not the ``*_table`` attributes.
    """

    before_read: Callable[[str, Tensor | None], None] | None = None

    def __init__(
        self,
        users: Tensor,
        pos: Tensor,
        user_table: Tensor,
        item_table: Tensor,
        user_ego_table: Tensor,
        item_ego_table: Tensor,
        user_layer_table: Tensor | None = None,
        item_layer_table: Tensor | None = None,
        model_name: str = "model",
        sparse: bool = False,
        layer_tables: Callable[[], tuple[Tensor, Tensor]] | None = None,
        n_layers: int | None = None,
        layer_nodes: tuple[Sequence[Tensor], int] | None = None,
        pooled_nodes: tuple[Tensor, int] | None = None,
    ):
        super().__init__(users, pos)
        self.sparse = sparse
        self.user_table = user_table
        self.item_table = item_table
        self.user_ego_table = user_ego_table
        self.item_ego_table = item_ego_table
        self._user_layer_table = user_layer_table
        self._item_layer_table = item_layer_table
        self._layer_tables = layer_tables
        self._layer_nodes = layer_nodes
        self._pooled_nodes = pooled_nodes
        self.model_name = model_name
        self._grad_enabled = torch.is_grad_enabled()  # the lazy gathers below run in the view's grad mode
        self._user_emb: Tensor | None = None
        self._pos_emb: Tensor | None = None
        self.n_layers = n_layers if item_layer_table is None else int(item_layer_table.shape[1])

    # Gathered on first use: a step that reads the tables directly (the compiled MF steps) never pays for
    # them. They are gathered in the grad mode the view was built in, so a first read inside a sampler's
    # no_grad block still yields the rows the loss differentiates.
    @property
    def user_emb(self) -> Tensor:
        if self._user_emb is None:
            self.read("user", self.users)
            with torch.set_grad_enabled(self._grad_enabled):
                self._user_emb = self._pooled_rows(self.user_table, self.users, 0)
        return self._user_emb

    @user_emb.setter
    def user_emb(self, value: Tensor) -> None:
        self._user_emb = value

    @property
    def pos_emb(self) -> Tensor:
        if self._pos_emb is None:
            self.read("item", self.pos)
            with torch.set_grad_enabled(self._grad_enabled):
                self._pos_emb = self._pooled_rows(self.item_table, self.pos, 1)
        return self._pos_emb

    @pos_emb.setter
    def pos_emb(self, value: Tensor) -> None:
        self._pos_emb = value

    def _pooled_rows(self, table: Tensor, ids: Tensor, items: int) -> Tensor:
        """``table[ids]`` from the pooled user (``items=0``) or item table; with ``pooled_nodes``, from the
        node table they are slices of, with :func:`_layer_rows`'s gradient (row-sparse for few rows: a
        slice's backward would zero-fill the whole node table for each lookup)."""
        if self._pooled_nodes is None or self.sparse:
            return _rows(table, ids, self.sparse)
        nodes, n_users = self._pooled_nodes
        return _layer_rows(nodes, (ids + items * n_users).reshape(-1)).view(*ids.shape, -1)

    def read(self, which: str, ids: Tensor | None) -> None:
        """Announce a read of rows ``ids`` of the ``"user"`` or ``"item"`` table (``None``: all of it) by
        code that reads :attr:`item_table` directly (see :func:`compiled_scoring_tables`): calls
        :attr:`before_read`, which brings deferred rows up to date."""
        if self.before_read is not None:
            self.before_read(which, ids)

    def _build_layer_tables(self) -> None:
        if self._item_layer_table is None and self._layer_tables is not None:
            self._user_layer_table, self._item_layer_table = self._layer_tables()

    @property
    def user_layer_table(self) -> Tensor | None:
        """``[n_users, L+1, d]`` per-layer user table, built on first use when the model gave a builder."""
        self.read("user", None)
        self._build_layer_tables()
        return self._user_layer_table

    @property
    def item_layer_table(self) -> Tensor | None:
        """``[n_items, L+1, d]`` per-layer item table, built on first use when the model gave a builder."""
        self.read("item", None)
        self._build_layer_tables()
        return self._item_layer_table

    def item_emb(self, ids: Tensor) -> Tensor:
        self.read("item", ids)
        rows = self._pooled_rows(self.item_table, ids, 1)
        self._last_item_emb = (ids, rows)
        return rows

    def item_ego(self, ids: Tensor) -> Tensor:
        if self.item_ego_table is self.item_table:  # MF: reuse this step's gathers (R1 reads the same rows)
            if ids is self.pos:
                return self.pos_emb
            last = getattr(self, "_last_item_emb", None)
            if last is not None and last[0] is ids:
                return last[1]
        self.read("item", ids)
        return _rows(self.item_ego_table, ids, self.sparse)

    def score(self, ids: Tensor) -> Tensor:
        user_emb = self.user_emb
        self.read("item", ids)
        return score_rows(self.item_table, user_emb, ids)

    @property
    def user_ego(self) -> Tensor:
        if self.user_ego_table is self.user_table:
            return self.user_emb
        self.read("user", self.users)
        return _rows(self.user_ego_table, self.users, self.sparse)

    def _node_rows(self, ids: Tensor, offset: int, id_per_layer: bool = False) -> Tensor:
        """Rows ``ids + offset`` of every layer's node table: ``[*ids.shape, L+1, d]``; with
        ``id_per_layer``, row ``ids[..., l] + offset`` of layer ``l`` only: ``[*ids.shape, d]``."""
        assert self._layer_nodes is not None
        tables = self._layer_nodes[0]
        if not id_per_layer:
            flat = (ids + offset).reshape(-1)
            rows = [_layer_rows(t, flat) for t in tables]
            return torch.stack(rows, 1).view(*ids.shape, len(tables), -1)
        rows = [_layer_rows(t, (ids[..., i] + offset).reshape(-1)) for i, t in enumerate(tables)]
        return torch.stack(rows, 1).view(*ids.shape, -1)

    def item_layer_rows(self, ids: Tensor) -> Tensor:
        if self._layer_nodes is None or self.sparse:
            return super().item_layer_rows(ids)
        if ids.shape[-1] != len(self._layer_nodes[0]):
            raise ValueError(f"item_layer_rows: ids [..., {ids.shape[-1]}], expected one id per layer")
        self.read("item", ids)
        return self._node_rows(ids, self._layer_nodes[1], id_per_layer=True)

    def score_layers(self, ids: Tensor) -> Tensor:
        if self._layer_nodes is None or self.sparse:
            return super().score_layers(ids)
        self.read("item", ids)
        tables, n_users = self._layer_nodes
        flat = ids.reshape(ids.shape[0], -1)
        with torch.no_grad():
            user_emb = self.user_emb.detach()
            scores = [score_rows(t.detach()[n_users:], user_emb, flat) for t in tables]
            return torch.stack(scores, -1).view(*ids.shape, len(tables))

    def item_layers(self, ids: Tensor) -> Tensor:
        if self._layer_nodes is not None and not self.sparse:
            self.read("item", ids)
            return self._node_rows(ids, self._layer_nodes[1])
        self._build_layer_tables()
        if self._item_layer_table is None:
            return super().item_layers(ids)
        if self.sparse:  # one layer (MF): the pooled rows are the layer
            return self.item_emb(ids).unsqueeze(-2)
        self.read("item", ids)
        return _rows(self._item_layer_table, ids)

    @property
    def user_layers(self) -> Tensor:
        if self._layer_nodes is not None and not self.sparse:
            self.read("user", self.users)
            return self._node_rows(self.users, 0)
        self._build_layer_tables()
        if self._user_layer_table is None:
            return super().item_layers(self.users)
        if self.sparse:
            return self.user_emb.unsqueeze(-2)
        self.read("user", self.users)
        return self._user_layer_table[self.users]

    def all_items(self) -> Tensor:
        self.read("item", None)
        return self.item_table


class Recommender(nn.Module):
    """Base class of recneg models.

    A model maps ids to embeddings and nothing else: no loss, no sampling inside.

    Required:
        ``from_interactions(train, config)``: build for the id space of ``train``.
        ``view(users, pos) -> ModelView``: one training step's view (LightGCN propagates here, once).
        ``tables() -> (user_table [n_users, d], item_table [n_items, d])``: for full-ranking evaluation.
    """

    n_users: int
    n_items: int
    provides_layers: bool = False
    #: the model can gather with row-sparse gradients (optimizer ``sparse_adam``); set by the trainer
    supports_sparse_gradients: bool = False
    sparse_gradients: bool = False

    @classmethod
    def from_interactions(cls, train, config):  # pragma: no cover - interface
        raise NotImplementedError

    def view(self, users: Tensor, pos: Tensor) -> ModelView:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def tables(self) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def score_users(self, users: Tensor) -> Tensor:
        """Scores of every item for ``users [C]`` -> ``[C, n_items]`` (no gradient)."""
        u, i = self.tables()
        return u[users] @ i.T

"""LightGCN: linear propagation over the normalised user-item graph, mean-pooled over layers.

``Ã = D^{-1/2} A D^{-1/2}`` with ``A = [[0, R], [Rᵀ, 0]]``; ``E^(l+1) = Ã E^(l)``; ``ē = mean_{l=0..L} e^(l)``
(ALGORITHMS.md §1.4). The trainable tables are the layer-0 ("ego") embeddings; every propagated layer and the
pooled tables are functions of them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from recneg._validation import require_choice, require_int
from recneg.errors import DataError
from recneg.models.base import Recommender, TableView
from recneg.registry import MODELS


@dataclass(frozen=True)
class LightGCNConfig:
    dim: int = field(default=64, metadata={"help": "embedding size d"})
    n_layers: int = field(default=3, metadata={"help": "propagation layers L (0 = MF); official code 3"})
    init: str = field(
        default="xavier",
        metadata={"help": "xavier (uniform; LightGCN TF / MixGCF code) or normal (N(0, 0.1²))"},
    )

    def __post_init__(self):
        require_int("dim", self, low=1)
        require_int("n_layers", self, low=0)
        require_choice("init", self, {"xavier", "normal"})


def normalized_adjacency(interactions: sp.spmatrix) -> sp.csr_matrix:
    """The symmetric-normalised bipartite adjacency ``Ã = D^{-1/2} A D^{-1/2}``.

    ``A = [[0, R], [Rᵀ, 0]]`` over the stacked id space (users first, then items: item ``j`` is node
    ``n_users + j``); ``D`` is the diagonal of node degrees. Rows and columns of degree-0 nodes are left at 0.
    Repeated ``(u, i)`` pairs count once.

    Args:
        interactions: ``R``, ``[n_users, n_items]`` sparse matrix of training interactions.

    Returns:
        ``scipy.sparse.csr_matrix [n_users + n_items, n_users + n_items]`` (float64, sorted indices).
    """
    r = sp.csr_matrix(interactions, dtype=np.float64)
    r.sum_duplicates()
    r.data[:] = 1.0
    a = sp.bmat([[None, r], [r.T, None]], format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        d_inv_sqrt = np.where(deg > 0, deg**-0.5, 0.0)
    d = sp.diags(d_inv_sqrt)
    norm = (d @ a @ d).tocsr()
    norm.eliminate_zeros()
    norm.sort_indices()
    return norm


_COMPILED_PROPAGATION = {"enabled": True}


def use_compiled_propagation(enabled: bool) -> bool:
    """Let LightGCN's sparse products on CPU use the compiled kernel (the default) or torch's; returns the
    old setting. Both give the same layers to float rounding; switching it off is for comparing the two."""
    previous = _COMPILED_PROPAGATION["enabled"]
    _COMPILED_PROPAGATION["enabled"] = bool(enabled)
    return previous


def sparse_product(adj: Tensor, x: Tensor) -> Tensor:
    """``Ã x`` ``[n, d]`` for a sparse ``Ã [n, m]`` and a dense ``x [m, d]``, without gradient.

    On CPU, with a CSR ``Ã`` and float32 ``x`` and numba here, one compiled pass
    (:func:`recneg.kernels.csr_spmm`, about twice torch's speed on Gowalla); otherwise ``torch.sparse.mm``.
    """
    from recneg import kernels

    if (
        _COMPILED_PROPAGATION["enabled"]
        and adj.layout == torch.sparse_csr
        and x.device.type == "cpu"
        and adj.device.type == "cpu"
        and x.dtype == adj.dtype == torch.float32
        and x.dim() == 2
        and kernels.ready("csr_spmm")
    ):
        crow, col = adj.crow_indices(), adj.col_indices()
        if crow.dtype == col.dtype == torch.int64 and adj.shape[1] == x.shape[0]:
            values, rows = adj.values().detach().numpy(), x.detach().contiguous().numpy()
            # Ã's indices are LightGCN's own (normalized_adjacency), in range by construction
            out = kernels.csr_spmm(crow.numpy(), col.numpy(), values, rows, check=False)
            return torch.from_numpy(out)
    return torch.sparse.mm(adj, x)


class _EgoTable(torch.autograd.Function):
    """``E^(0) = [E_u; E_i]`` (``torch.cat``), whose backward also takes a row-sparse gradient: per-layer
    lookups of few rows gather with one (:func:`recneg.models.base._layer_rows`), and where nothing else
    reads ``E^(0)`` that is all its gradient; ``torch.cat``'s backward cannot slice it."""

    @staticmethod
    def forward(ctx, user_table: Tensor, item_table: Tensor) -> Tensor:
        ctx.n_users = user_table.shape[0]
        return torch.cat([user_table, item_table], 0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if grad.layout != torch.strided:
            grad = grad.to_dense()
        return grad[: ctx.n_users], grad[ctx.n_users :]


class _SymmetricSpMM(torch.autograd.Function):
    """``Y = Ã X`` for a *symmetric* sparse ``Ã``: the backward is ``∂X = Ãᵀ ∂Y = Ã ∂Y``.

    Using the symmetry means the backward is the same sparse × dense product as the forward, so no sparse
    transpose (CSR -> CSC) is needed and only the forward kernel must be supported by the device.
    """

    @staticmethod
    def forward(ctx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return sparse_product(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if grad.layout != torch.strided:  # row-sparse, from gathers of this layer alone
            grad = grad.to_dense()
        return None, sparse_product(ctx.adj, grad.contiguous())


@MODELS.register(
    "lightgcn", config=LightGCNConfig, help="LightGCN: L-layer linear graph propagation, mean-pooled"
)
class LightGCN(Recommender):
    """LightGCN (He et al., SIGIR 2020).

    Propagation: ``E^(0) = [E_u; E_i]`` (the trainable tables, stacked ``[n_users + n_items, d]``),
    ``E^(l+1) = Ã E^(l)`` for ``l = 0..L-1`` (one sparse × dense product per layer over the stacked table),
    pooled ``Ē = (1/(L+1)) Σ_l E^(l)``; score ``r_ui = ⟨ē_u, ē_i⟩``.

    :meth:`view` propagates once per call (once per training step) and keeps the graph so gradients reach the
    ego tables; :meth:`tables` propagates under ``no_grad`` for evaluation. Nothing is cached across steps.

    The adjacency ``Ã`` is built once from the training interactions and stored as three non-persistent
    buffers (the CSR arrays), so ``.to(device)``, ``.double()`` and ``copy.deepcopy`` carry it with
    the module, and checkpoints (``state_dict``) hold only the two embedding tables. The sparse tensor is
    wrapped around those buffers at each propagation (no copy). If the device/torch version cannot multiply a
    sparse CSR tensor by a dense one, propagation falls back to COO once, with a warning.

    Args:
        interactions: ``R``, ``[n_users, n_items]`` scipy sparse matrix of training pairs (``train.csr``).
        config: :class:`LightGCNConfig` (``dim`` = d, ``n_layers`` = L, ``init``).

    Attributes:
        user_embedding: ``nn.Embedding [n_users, d]`` (``E_u^(0)``).
        item_embedding: ``nn.Embedding [n_items, d]`` (``E_i^(0)``).
        adj_crow, adj_col, adj_values: CSR arrays of ``Ã`` (``[N + 1]``, ``[nnz]``, ``[nnz]``; ``N = n_users +
            n_items``).

    Shape:
        :meth:`view` -> :class:`~recneg.models.base.TableView` with pooled tables ``[n, d]``, ego tables
        ``[n, d]`` and per-layer tables ``[n, L+1, d]`` (``view.n_layers = L + 1``).

    References:
        He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
        SIGIR 2020.
        ALGORITHMS.md §1.4.

    Example::

        model = LightGCN.from_interactions(train, LightGCNConfig(n_layers=3))
        view = model.view(users, pos)          # one propagation, with gradient
        users_table, items_table = model.tables()   # pooled, no gradient
    """

    adj_crow: Tensor
    adj_col: Tensor
    adj_values: Tensor

    provides_layers = True

    def __init__(self, interactions: sp.spmatrix, config: LightGCNConfig | None = None):
        super().__init__()
        self.config = config or LightGCNConfig()
        if interactions.ndim != 2:
            raise DataError(
                f"LightGCN needs a 2-D [n_users, n_items] interaction matrix, got {interactions.shape}"
            )
        self.n_users, self.n_items = (int(s) for s in interactions.shape)
        self.user_embedding = nn.Embedding(self.n_users, self.config.dim)
        self.item_embedding = nn.Embedding(self.n_items, self.config.dim)
        adj = normalized_adjacency(interactions)
        self.register_buffer("adj_crow", torch.as_tensor(adj.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("adj_col", torch.as_tensor(adj.indices.astype(np.int64)), persistent=False)
        self.register_buffer("adj_values", torch.as_tensor(adj.data.astype(np.float32)), persistent=False)
        self._use_coo = False
        self.reset_parameters()

    @classmethod
    def from_interactions(cls, train, config: LightGCNConfig | None = None) -> LightGCN:
        """Build for the id space and graph of ``train`` (an :class:`~recneg.data.Interactions`)."""
        return cls(train.csr, config)

    def reset_parameters(self) -> None:
        for emb in (self.user_embedding, self.item_embedding):
            if self.config.init == "xavier":
                nn.init.xavier_uniform_(emb.weight)
            else:
                nn.init.normal_(emb.weight, std=0.1)

    # ------------------------------------------------------------------ propagation
    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items

    def adjacency(self) -> Tensor:
        """``Ã`` as a torch sparse tensor (CSR, or COO after a fallback) on the buffers' device and dtype."""
        size = (self.n_nodes, self.n_nodes)
        if self._use_coo:
            rows = torch.repeat_interleave(
                torch.arange(self.n_nodes, device=self.adj_crow.device), self.adj_crow.diff()
            )
            idx = torch.stack([rows, self.adj_col])
            return torch.sparse_coo_tensor(
                idx, self.adj_values, size, is_coalesced=True, check_invariants=False
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            return torch.sparse_csr_tensor(
                self.adj_crow, self.adj_col, self.adj_values, size, check_invariants=False
            )

    def _spmm(self, adj: Tensor, x: Tensor) -> Tensor:
        return _SymmetricSpMM.apply(adj, x)

    def propagate(self) -> Tensor:
        """All layers ``E^(0..L)`` stacked: ``[n_users + n_items, L + 1, d]`` (with gradient if enabled)."""
        return torch.stack(self._layers(), 1)

    def _pooled(self, layers: list[Tensor]) -> Tensor:
        """``Σ_l E^(l) / (L + 1)`` ``[N, d]`` by a running sum (no ``[N, L+1, d]`` copy)."""
        total = layers[0]
        for x in layers[1:]:
            total = total + x
        return total / len(layers)

    def _layers(self) -> list[Tensor]:
        """``[E^(0), ..., E^(L)]``, each ``[n_users + n_items, d]``."""
        ego = _EgoTable.apply(self.user_embedding.weight, self.item_embedding.weight)
        layers = [ego]
        if self.config.n_layers > 0:
            adj = self.adjacency()
            x = ego
            for i in range(self.config.n_layers):
                if i == 0 and not self._use_coo:
                    try:
                        x = self._spmm(adj, x)
                    except (RuntimeError, NotImplementedError) as exc:
                        warnings.warn(
                            f"LightGCN: sparse CSR x dense product failed on {x.device} ({exc}); using COO",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        self._use_coo = True
                        adj = self.adjacency()
                        x = self._spmm(adj, x)
                else:
                    x = self._spmm(adj, x)
                layers.append(x)
        return layers

    def view(self, users: Tensor, pos: Tensor) -> TableView:
        """One training step's view: propagates once; every lookup afterwards is a gather.

        The pooled table is a running sum of the layers; per-layer lookups (MixGCF, ANS, DENS) gather from
        each layer's table (``layer_nodes``); the stacked ``[N, L+1, d]`` tables are built only if
        something reads them whole (``view.item_layer_table``).
        """
        layers = self._layers()
        pooled = self._pooled(layers)  # [N, d]
        n = self.n_users

        def layer_tables() -> tuple[Tensor, Tensor]:
            stacked = torch.stack(layers, 1)  # [N, L+1, d]
            return stacked[:n], stacked[n:]

        return TableView(
            users,
            pos,
            user_table=pooled[:n],
            item_table=pooled[n:],
            user_ego_table=self.user_embedding.weight,
            item_ego_table=self.item_embedding.weight,
            model_name="lightgcn",
            layer_tables=layer_tables,
            n_layers=len(layers),
            layer_nodes=(layers, n),
            pooled_nodes=(pooled, n),
        )

    @torch.no_grad()
    def tables(self) -> tuple[Tensor, Tensor]:
        """Pooled ``(user_table [n_users, d], item_table [n_items, d])`` for evaluation (no gradient)."""
        pooled = self._pooled(self._layers())
        return pooled[: self.n_users], pooled[self.n_users :]

    def extra_repr(self) -> str:
        return (
            f"n_users={self.n_users}, n_items={self.n_items}, dim={self.config.dim}, "
            f"n_layers={self.config.n_layers}, nnz={int(self.adj_values.numel())}"
        )

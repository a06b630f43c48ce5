"""A training step for MF with pairwise losses whose gradients are written by hand, not by autograd.

For matrix factorisation (``r_ui = ⟨e_u, e_i⟩``) with BPR or soft BPR over sampled real items and the R1
regulariser, the gradient of the loss with respect to each gathered row has a closed form. Writing it
directly into the tables' ``.grad`` saves what dominates an MF step on CPU: autograd allocates and
zero-fills a dense ``[n_items, d]`` gradient for *each* gather (two for the item table: positives and
negatives, then adds them) and the trainer zero-fills all of them again each step. Here each table has
one persistent gradient buffer; the step adds the batch's rows into it and, after the optimiser step,
zeroes only those rows again. The optimiser is untouched: dense Adam/Adagrad see exactly the dense
gradient autograd would give (zeros on untouched rows), ``sparse_adam`` gets the same uncoalesced row-sparse
gradient ``F.embedding(..., sparse=True)`` would give.

With ``w_bj`` = ``neg.weight`` (or ``1/n``), ``c = 1/B`` (mean) or ``1`` (sum), ``z_bj = β (r_bj − r_b⁺)``
(``β = 1`` for BPR) and ``g_bj = c · w_bj · β · σ(z_bj)`` = ∂L/∂r_bj:

- ``∂L/∂e_u  = Σ_j g_bj e_j − (Σ_j g_bj) e_i + (λ/B) e_u``
- ``∂L/∂e_i  = −(Σ_j g_bj) e_u + (λ/B) e_i``
- ``∂L/∂e_j  = g_bj e_u + (λ/B) w_bj e_j``

which :mod:`tests.test_fused_step` checks against autograd. A batch whose negatives are not plain item rows
(synthetic negatives, a sampler's own loss or scores, logQ terms) takes the autograd path for that batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from recneg import kernels
from recneg.errors import ConfigError
from recneg.losses import BPRLoss, SoftBPRLoss, regularization
from recneg.models.base import ModelView
from recneg.models.mf import MF
from recneg.optim import LazyAdam, OnlineSGD, _group_of, adam_advance, compiled_adam_blocker
from recneg.samplers.base import Negatives, Sampler


def fused_step_blocker(
    model: nn.Module,
    sampler: Sampler,
    loss_fn: nn.Module,
    regularizer: str,
    distributed: bool,
    deterministic_cuda: bool = False,
) -> str | None:
    """Why the hand-written step cannot serve this configuration, or ``None`` when it can.

    It needs exactly :class:`~recneg.models.MF` (a subclass may change ``view``), a sampler that declares
    ``emits_item_rows``, BPR or soft BPR with ``reduction`` mean or sum, the R1 regulariser, one process
    (DDP reduces gradients in autograd hooks), and not ``deterministic`` on CUDA.
    """
    if type(model) is not MF:
        return f"model {type(model).__name__} (only mf)"
    if not getattr(sampler, "emits_item_rows", False):
        return f"sampler {type(sampler).__name__} (does not declare emits_item_rows)"
    if not isinstance(loss_fn, (BPRLoss, SoftBPRLoss)) or type(loss_fn) not in (BPRLoss, SoftBPRLoss):
        return f"loss {type(loss_fn).__name__} (only bpr, softbpr)"
    if loss_fn.config.reduction not in ("mean", "sum"):
        return f"loss reduction {loss_fn.config.reduction!r} (only mean, sum)"
    if regularizer != "r1":
        return f"regularizer {regularizer} (only r1)"
    if distributed:
        return "distributed training (DDP reduces gradients in autograd hooks)"
    if deterministic_cuda:
        return "deterministic on CUDA (the step's index_add_ has no deterministic CUDA kernel)"
    return None


def plain_item_negatives(neg: Negatives) -> bool:
    """True when BPR over ``neg`` reads only item rows ``emb = E_i[ids]`` ``[B, n, d]`` and weights.

    (``log_q`` and ``mask`` matter to softmax losses only; BPR and soft BPR ignore them.)
    """
    return (
        neg.ids is not None
        and neg.ids.dim() == 2
        and neg.emb.dim() == 3
        and neg.reg_emb is None
        and neg.score is None
        and neg.pos_score is None
        and neg.aux_loss is None
    )


#: the tables, ``users``, ``pos``, ``negs`` and ``weight`` (or ``None``) as the compiled kernels take them
_KernelArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]

#: what :meth:`FusedMFStep.__call__` did: left the graph to autograd, wrote ``.grad``, or also stepped
AUTOGRAD, GRADIENTS, UPDATED = "autograd", "gradients", "updated"


class FusedMFStep:
    """One MF training step with hand-written gradients (see the module docstring).

    Args:
        model: an :class:`~recneg.models.MF`; sampler: a bound sampler; loss_fn: :class:`BPRLoss` or
            :class:`SoftBPRLoss`; reg: λ of R1; optimizer: the trainer's optimiser. When it is
            :class:`~recneg.optim.LazyAdam` (``sparse_adam``) or plain :class:`torch.optim.Adam` (``adam``,
            see :func:`~recneg.optim.compiled_adam_blocker`) over CPU float32 tables and numba is installed,
            gradient and update run as compiled passes (:mod:`recneg.kernels`), the optimiser's step to
            float rounding, on its own state. When it is :class:`~recneg.optim.OnlineSGD` (``online_sgd``),
            every batch runs the compiled pair-by-pair SGD (:func:`recneg.kernels.online_sgd_bpr`); there is
            no tensor path.
        deterministic: ``online_sgd`` runs its pairs on one thread, in order (else on torch's threads,
            Hogwild: faster, and not reproducible bit for bit).
        use_kernels: ``False`` keeps Adam and LazyAdam on the tensor path (the same maths; for comparing
            the two). ``online_sgd`` has no tensor path and ignores it.
        defer: with dense Adam on the compiled path, apply each step to the batch's rows only and defer the
            other rows' zero-gradient steps (:class:`recneg.kernels.DeferredAdam`) until the view reads
            them, a batch leaves the compiled path, or :meth:`flush` is called. The same values to float
            rounding, without a pass over both whole tables and moments per step. Between steps the
            tables and Adam's moments are then behind for unread rows: call :meth:`flush` before reading
            them (evaluation, checkpoints, your own code). The trainer does (at the end of each epoch).
        closed_form: with ``defer``, a row's missed steps are summed in closed form (the default; see
            :class:`recneg.kernels.DeferredAdam`); ``False`` replays them one by one (same values to
            float rounding; for benchmarks).

    Use: ``loss, view, neg, status = step(users, pos, generator)``. ``status`` is :data:`UPDATED`: the
    tables are already updated; :data:`GRADIENTS`: the tables' ``.grad`` hold this batch's gradient: call
    ``optimizer.step()`` and then :meth:`clear`; :data:`AUTOGRAD`: the loss carries autograd's graph: zero the
    gradients, ``loss.backward()``, ``optimizer.step()``.
    """

    def __init__(
        self,
        model: MF,
        sampler: Sampler,
        loss_fn: BPRLoss | SoftBPRLoss,
        reg: float,
        optimizer: torch.optim.Optimizer | None = None,
        deterministic: bool = False,
        use_kernels: bool = True,
        defer: bool = False,
        closed_form: bool = True,
    ):
        self.model, self.sampler, self.loss_fn, self.reg = model, sampler, loss_fn, float(reg)
        self.deterministic = deterministic
        self.beta = float(loss_fn.config.beta) if isinstance(loss_fn, SoftBPRLoss) else 1.0
        self.mean = loss_fn.config.reduction == "mean"
        self.optimizer = optimizer
        self._buffers: dict[int, Tensor] = {}
        self._touched: list[tuple[Tensor, Tensor]] = []
        self._kernel: kernels.AdamBPRKernel | None = None
        # why the compiled kernels do not run here: None, or numba's compile error, or the caller's choice
        self._kernel_error: str | None = None if use_kernels else "use_kernels=False"
        self.defer = defer
        self.closed_form = closed_form
        # per table ("user", "item"): the deferred zero-gradient steps of dense Adam (see ``defer``)
        self._deferred: dict[str, kernels.DeferredAdam] = {}

    @property
    def compiled(self) -> bool:
        """Whether plain batches run the compiled Adam kernels (checked each step: tables may move)."""
        if not (kernels.AVAILABLE and self._kernel_error is None and self._tables_compilable()):
            return False
        if isinstance(self.optimizer, LazyAdam):
            return self.model.sparse_gradients
        tables = [self.model.user_embedding.weight, self.model.item_embedding.weight]
        return not self.model.sparse_gradients and compiled_adam_blocker(self.optimizer, tables) is None

    def _tables_compilable(self) -> bool:
        tables = (self.model.user_embedding.weight, self.model.item_embedding.weight)
        return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tables)

    def check_online_sgd(self) -> None:
        """Raise a :class:`ConfigError` unless ``online_sgd`` can run here (numba, CPU float32, mean loss)."""
        if not kernels.AVAILABLE:
            raise ConfigError(
                "optimizer online_sgd runs in a compiled kernel and needs numba: pip install 'recneg[fast]'"
            )
        if not self._tables_compilable():
            table = self.model.user_embedding.weight
            raise ConfigError(
                f"optimizer online_sgd runs on CPU float32 tables; the MF tables are {table.dtype} on "
                f"{table.device}: use device='cpu' or optimizer adam"
            )
        if not self.mean:
            raise ConfigError(
                "optimizer online_sgd steps on each pair's term of the mean loss; the loss has "
                f"reduction={self.loss_fn.config.reduction!r}: use reduction='mean'"
            )
        try:
            kernels.warm_up_online_sgd()
        except Exception as exc:  # numba's errors have no common base; any failure means "not here"
            raise ConfigError(
                f"optimizer online_sgd: its compiled kernel could not be built here ({type(exc).__name__}: "
                f"{exc}); use optimizer sparse_adam or adam"
            ) from exc

    def __call__(
        self, users: Tensor, pos: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ModelView, Negatives, str]:
        if isinstance(self.optimizer, OnlineSGD):  # no autograd anywhere: the kernel writes the rows
            with torch.no_grad():
                view = self.model.view(users, pos)
                neg = self.sampler(users, pos, view, generator=generator)
            return self._online_step(users, pos, neg), view, neg, UPDATED
        view = self.model.view(users, pos)
        if self._deferred:
            view.before_read = self._catch_up  # rows the sampler reads are brought up to date first
        neg = self.sampler(users, pos, view, generator=generator)
        if not plain_item_negatives(neg):
            self.flush()  # the optimiser's own step follows, over every row
            loss = self.loss_fn(view.user_emb, view.pos_emb, neg)
            loss = loss + regularization(view, neg, self.reg, "r1")
            if neg.aux_loss is not None:
                loss = loss + neg.aux_loss
            return loss, view, neg, AUTOGRAD
        with torch.no_grad():
            if self.compiled and self._kernel_ready():
                return self._compiled_step(users, pos, neg), view, neg, UPDATED
            self.flush()
            loss = self._write_gradients(users, pos, view, neg)
        return loss, view, neg, GRADIENTS

    def _kernel_ready(self) -> bool:
        """Build the kernel's scratch once; if numba cannot compile here, warn and keep the tensor path."""
        if self._kernel is None:
            try:
                kernels.AdamBPRKernel.warm_up()
            except Exception as exc:  # numba's errors have no common base; any failure means "not here"
                self._kernel_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"the compiled Adam step could not be built ({self._kernel_error}); training goes "
                    f"on with the tensor path (same maths, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return False
            table = self.model.user_embedding.weight
            n_items = self.model.item_embedding.weight.shape[0]
            self._kernel = kernels.AdamBPRKernel(len(table), n_items, table.shape[1])
        return True

    def _kernel_arrays(self, users: Tensor, pos: Tensor, neg: Negatives) -> _KernelArrays:
        """What both kernels read: the two tables (written in place), ``users, pos [B]``, ``negs [B, n]``
        int64 and ``weight [B, n]`` float32 (or ``None``), as numpy views."""
        assert neg.ids is not None
        weight = neg.weight.detach().float().contiguous().numpy() if neg.weight is not None else None
        return (
            self.model.user_embedding.weight.detach().numpy(),
            self.model.item_embedding.weight.detach().numpy(),
            users.contiguous().numpy(),
            pos.contiguous().numpy(),
            neg.ids.to(torch.int64).contiguous().numpy(),
            weight,
        )

    def _compiled_step(self, users: Tensor, pos: Tensor, neg: Negatives) -> Tensor:
        """Gradient and optimiser update of a plain batch in the compiled kernels; returns the loss."""
        assert self._kernel is not None and self.optimizer is not None
        optimizer = self.optimizer
        lazy = isinstance(optimizer, LazyAdam)
        user_table, item_table = self.model.user_embedding.weight, self.model.item_embedding.weight
        defer = self.defer and not lazy
        adam = []
        step = 0
        for which, table in (("user", user_table), ("item", item_table)):
            table.grad = None  # the update below replaces the optimiser's step
            group = _group_of(optimizer, table)
            if defer:
                self._deferral(which, table, group)
            if isinstance(optimizer, LazyAdam):
                m, v, step_size, sqrt_bc2 = optimizer.advance(table, group)
            else:
                assert isinstance(optimizer, torch.optim.Adam)
                m, v, step_size, sqrt_bc2 = adam_advance(optimizer, table, group)
                step = int(optimizer.state[table]["step"])
            beta1, beta2 = group["betas"]
            wd = 0.0 if lazy else float(group["weight_decay"])
            adam.append(
                kernels.AdamState(m.numpy(), v.numpy(), step_size, sqrt_bc2, beta1, beta2, group["eps"], wd)
            )
        loss = self._kernel.step(
            *self._kernel_arrays(users, pos, neg),
            self.beta,
            1.0 / len(users) if self.mean else 1.0,
            self.reg / len(users),
            adam,
            dense=not lazy,
            deferred=[self._deferred["user"], self._deferred["item"]] if defer else None,
            step=step,
        )
        return torch.tensor(loss, dtype=user_table.dtype)

    def _deferral(self, which: str, table: Tensor, group: dict) -> kernels.DeferredAdam:
        """The deferred steps of ``table``, checked against Adam's state before this step advances it."""
        assert self.optimizer is not None
        state = self.optimizer.state.get(table)
        before = int(state["step"]) if state else 0
        beta1, beta2 = group["betas"]
        hyper = (float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]))
        deferred = self._deferred.get(which)
        if deferred is None:
            deferred = self._deferred[which] = kernels.DeferredAdam(table.shape[0], self.closed_form)
        if deferred.step != before or deferred.hyper != hyper:
            if deferred.pending and deferred.step != before:
                raise RuntimeError(
                    f"the {which} table's Adam state is at step {before}, but rows were left behind at step "
                    f"{deferred.step}: something stepped the optimiser or loaded state without "
                    f"FusedMFStep.flush() (or discard()) first"
                )
            self._flush_table(which)  # betas, eps or weight decay changed: the owed steps use the old ones
            deferred.start(before, hyper)
        return deferred

    def _arrays(self, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.optimizer is not None
        table = (self.model.user_embedding if which == "user" else self.model.item_embedding).weight
        state = self.optimizer.state[table]
        return table.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()

    def _catch_up(self, which: str, ids: Tensor | None) -> None:
        """Bring rows ``ids`` of the ``which`` table (``None``: all) up to date; the view's read hook."""
        deferred = self._deferred.get(which)
        if deferred is None:
            return
        deferred.note_read(len(deferred.synced) if ids is None else ids.numel())
        if not deferred.pending:
            return
        if ids is None:
            self._flush_table(which)
        else:
            deferred.catch_up(*self._arrays(which), ids.detach().to(torch.int64).contiguous().numpy())

    def _flush_table(self, which: str) -> None:
        deferred = self._deferred.get(which)
        if deferred is not None and deferred.pending:
            deferred.flush(*self._arrays(which))

    def flush(self) -> None:
        """Apply every deferred step (``defer``): afterwards the tables and Adam's state are current."""
        for which in self._deferred:
            self._flush_table(which)

    def discard(self) -> None:
        """Forget the deferred steps (after the tables and optimiser state were replaced, e.g. loaded)."""
        self._deferred.clear()

    def _online_step(self, users: Tensor, pos: Tensor, neg: Negatives) -> Tensor:
        """``online_sgd``: the batch's pairs updated one by one in place; returns the mean of ``f_b``."""
        if not plain_item_negatives(neg):
            raise ConfigError(
                f"optimizer online_sgd updates MF rows pair by pair and needs negatives that are item rows; "
                f"sampler {type(self.sampler).__name__} returned others (synthetic rows, its own scores, "
                f"weights on a loss it adds): use optimizer adam or sparse_adam with this sampler"
            )
        assert isinstance(self.optimizer, OnlineSGD) and neg.ids is not None
        user_table, item_table = self.model.user_embedding.weight, self.model.item_embedding.weight
        user_table.grad = item_table.grad = None
        with torch.no_grad():
            total = kernels.online_sgd_bpr(
                *self._kernel_arrays(users, pos, neg),
                self.beta,
                self.optimizer.lr_of(item_table),
                self.reg,
                n_parts=1 if self.deterministic else torch.get_num_threads(),
            )
        return torch.tensor(total / len(users), dtype=user_table.dtype)

    def _write_gradients(self, users: Tensor, pos: Tensor, view: ModelView, neg: Negatives) -> Tensor:
        u, p, e = view.user_emb.detach(), view.pos_emb.detach(), neg.emb.detach()  # [B, d], [B, d], [B, n, d]
        assert neg.ids is not None
        b, n = neg.ids.shape
        w = neg.weight.detach() if neg.weight is not None else None  # [B, n] or uniform 1/n
        scale = 1.0 / b if self.mean else 1.0
        pos_score = (u * p).sum(-1)  # r_b⁺ [B]
        neg_score = (u.unsqueeze(1) * e).sum(-1)  # r_bj [B, n]
        z = (neg_score - pos_score.unsqueeze(1)).mul_(self.beta)
        per_pair = torch.nn.functional.softplus(z)
        g = torch.sigmoid(z).mul_(scale * self.beta)  # ∂L/∂r_bj before the weights
        if w is None:
            g.mul_(1.0 / n)
            loss = per_pair.sum() * (scale / n)
        else:
            g.mul_(w)
            loss = (per_pair * w).sum() * scale
        g_sum = g.sum(1, keepdim=True)  # [B, 1]
        grad_u = torch.bmm(g.unsqueeze(1), e).squeeze(1).sub_(g_sum * p)  # Σ_j g_bj e_j − (Σ_j g_bj) e_i
        grad_p = g_sum * u * -1.0
        grad_e = g.unsqueeze(-1) * u.unsqueeze(1)  # [B, n, d]
        if self.reg:
            lam = self.reg / b
            grad_u.add_(u, alpha=lam)
            grad_p.add_(p, alpha=lam)
            neg_sq = (e * e).sum(-1)  # [B, n]
            if w is None:
                grad_e.add_(e, alpha=lam / n)
                neg_term = neg_sq.sum() / n
            else:
                grad_e.addcmul_(w.unsqueeze(-1), e, value=lam)
                neg_term = (neg_sq * w).sum()
            loss = loss + 0.5 * lam * ((u * u).sum() + (p * p).sum() + neg_term)
        d = u.shape[1]
        user_table, item_table = self.model.user_embedding.weight, self.model.item_embedding.weight
        self._add(user_table, [(users, grad_u)])
        self._add(item_table, [(pos, grad_p), (neg.ids.reshape(-1), grad_e.reshape(-1, d))])
        return loss

    def _add(self, weight: Tensor, parts: list[tuple[Tensor, Tensor]]) -> None:
        """Write ``Σ`` of the ``(rows [k], values [k, d])`` parts as ``weight``'s gradient."""
        if self.model.sparse_gradients:  # what F.embedding(..., sparse=True) gives: uncoalesced rows
            rows = torch.cat([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
            values = torch.cat([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
            weight.grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), values, weight.shape, check_invariants=False
            )
            return
        buffer = self._buffers.get(id(weight))
        if buffer is None or weight.grad is not buffer:  # first step, or the autograd path replaced it
            buffer = self._buffers[id(weight)] = torch.zeros_like(weight)
            weight.grad = buffer
        for rows, values in parts:
            buffer.index_add_(0, rows, values)
            self._touched.append((buffer, rows))

    def clear(self) -> None:
        """Zero the rows this step wrote into the persistent gradient buffers (after the optimiser step)."""
        for buffer, rows in self._touched:
            buffer.index_fill_(0, rows, 0.0)
        self._touched.clear()


__all__ = ["AUTOGRAD", "GRADIENTS", "UPDATED", "FusedMFStep", "fused_step_blocker", "plain_item_negatives"]

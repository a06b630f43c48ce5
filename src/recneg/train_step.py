"""One training step as a module, so that :class:`~torch.nn.parallel.DistributedDataParallel` can run it.

recneg models expose ``view(users, pos)``, not ``forward``, and a sampler may own trainable parameters
(ANS, DENS). :class:`TrainStep` holds model, sampler and loss and runs the whole step in ``forward``; DDP
wraps it, so every trainable parameter of the model *and* of the sampler has its gradient averaged over the
ranks. In one process the trainer calls the same module unwrapped: the operations are the ones the trainer
always ran, in the same order.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from recneg.errors import ConfigError
from recneg.losses import REGULARIZERS, regularization
from recneg.models.base import ModelView, Recommender
from recneg.samplers.base import Negatives, Sampler


class TrainStep(nn.Module):
    """``loss = loss_fn(u, i⁺, neg) + λ R + neg.aux_loss`` for one batch; the trainer backpropagates it.

    Args:
        model: a :class:`~recneg.models.Recommender`; sampler: a bound :class:`Sampler`; loss_fn: a loss
            module ``(user_emb [B, d], pos_emb [B, d], Negatives) -> scalar``; reg: λ of the regulariser;
        regularizer: ``R``, one of :data:`~recneg.losses.REGULARIZERS` (``"r1"``, ``"r2"``, ``"r2_pow"``;
            see :func:`~recneg.losses.regularization`).

    Shape:
        ``users, pos [B]`` -> ``(loss scalar, ModelView, Negatives)``.
    """

    def __init__(
        self, model: Recommender, sampler: Sampler, loss_fn: nn.Module, reg: float, regularizer: str = "r1"
    ):
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.loss_fn = loss_fn
        self.reg = reg
        if regularizer not in REGULARIZERS:
            raise ConfigError(
                f"regularizer of TrainStep must be one of {list(REGULARIZERS)}, got {regularizer!r}"
            )
        self.regularizer = regularizer

    def forward(
        self, users: Tensor, pos: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ModelView, Negatives]:
        view = self.model.view(users, pos)
        neg = self.sampler(users, pos, view, generator=generator)
        loss = self.loss_fn(view.user_emb, view.pos_emb, neg)
        loss = loss + regularization(view, neg, self.reg, self.regularizer)
        if neg.aux_loss is not None:
            loss = loss + neg.aux_loss
        return loss, view, neg


def data_parallel(step: TrainStep, device: torch.device) -> nn.Module:
    """``step`` wrapped in DistributedDataParallel (call only inside an initialised process group).

    - no buffer broadcast at each forward (``broadcast_buffers=False``): sampler buffers (SRNS score
      memory, AdaSIR pools) hold per-rank state about the rank's own users and must not be overwritten by
      rank 0's each step; the streaming frequency estimator is fed the global batch on every rank, so it
      stays identical without a broadcast.
    - ``find_unused_parameters`` only when the sampler has trainable parameters: DENS leaves its own unused
      during warm-up, and DDP must then be told which gradients will not come.
    """
    from torch.nn.parallel import DistributedDataParallel

    sampler_trains = any(p.requires_grad for p in step.sampler.parameters())
    device_ids = [device.index] if device.type == "cuda" else None
    # newer torch renames the per-forward buffer broadcast (and warns on the old name)
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    flag = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
    options: dict[str, Any] = {flag: False, "device_ids": device_ids}
    options["find_unused_parameters"] = sampler_trains
    return DistributedDataParallel(step, **options)

"""Shared by tests/test_distributed.py and the torchrun worker tests/dist_worker.py: data, settings, and a
deterministic sampler, so the 2-process job and the single-process reference train the very same thing."""

from __future__ import annotations

import numpy as np
import torch

from recneg.config import TrainConfig
from recneg.data.interactions import Split
from recneg.data.split import random_split
from recneg.data.synthetic import SyntheticConfig, generate
from recneg.registry import build_loss, build_model, build_sampler
from recneg.samplers.base import Negatives, Sampler

WORLD = 2


class FixedSampler(Sampler):
    """``n`` negatives per row that are a fixed function of ``(user, pos)``: no randomness, so a sharded
    run must reproduce the single-process run exactly (up to float summation order).

    Shape: ``users, pos [B]`` -> ``Negatives(emb [B, n, d], ids [B, n])``.
    """

    excludes_positives = False

    def __init__(self, n: int = 3):
        super().__init__(None)
        self.n = n

    def forward(self, users, pos, view, generator=None):
        k = torch.arange(self.n, device=pos.device)
        ids = (users.unsqueeze(1) * 7 + pos.unsqueeze(1) * 13 + k * 31 + 1) % self.train_.n_items
        return Negatives(emb=view.item_emb(ids), ids=ids)


def make_split() -> Split:
    """Small synthetic data whose training part has an even number of pairs, so that the last (partial)
    batch splits evenly over 2 ranks and no pair is trimmed."""
    data = generate(
        SyntheticConfig(n_users=90, n_items=140, mean_degree=14, min_degree=6, seed=5)
    ).interactions
    split = random_split(data, 0.15, 0.15, seed=1)
    n = len(split.train)
    if n % WORLD:
        keep = np.ones(n, dtype=bool)
        keep[-1] = False
        split = Split(split.train.subset(keep), split.test, split.valid, name=split.name)
    return split


CONFIG = TrainConfig(
    epochs=3,
    batch_size=64,
    lr=0.01,
    reg=1e-3,
    eval_every=1,
    patience=0,
    progress=False,
    topk=(5, 10),
    metric="recall@10",
    device="cpu",
    threads=1,
)

# case -> (model, sampler factory, loss): every sampler here draws nothing at random
CASES = {
    "mf-fixed-bpr": ("mf", lambda: FixedSampler(), "bpr"),
    "lightgcn-fixed-bpr": ("lightgcn", lambda: FixedSampler(), "bpr"),
    "mf-in_batch-softmax": ("mf", lambda: build_sampler("in_batch"), "softmax"),
    "mf-in_batch_streaming-softmax": (
        "mf",
        lambda: build_sampler("in_batch", frequency="streaming", remove_accidental_hits=False),
        "softmax",
    ),
}


def components(case: str, split: Split):
    """Model (seeded: the same initial weights in every process), sampler and loss of ``case``."""
    model_name, make_sampler, loss = CASES[case]
    torch.manual_seed(0)
    model = build_model(model_name, split.train, dim=8)
    return model, make_sampler().bind(split.train), build_loss(loss)

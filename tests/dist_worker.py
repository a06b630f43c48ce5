"""torchrun entry point of tests/test_distributed.py (not collected by pytest).

torchrun --nproc-per-node 2 tests/dist_worker.py train OUT.pt
    trains every case of dist_cases.CASES on 2 ranks, plus ANS (a sampler with parameters) and MNS, and
    rank 0 saves final weights, sampler buffers, history, the sharded test evaluation, every rank's ANS
    parameters and MNS's first batch to OUT.pt
torchrun --nproc-per-node 2 tests/dist_worker.py kill RANK EPOCH -- <recneg train flags>
    runs ``recneg train`` and makes rank RANK exit abruptly (os._exit) in the given 0-based epoch
"""

from __future__ import annotations

import os
import sys

import dist_cases
import numpy as np
import torch

from recneg import distributed
from recneg.registry import build_loss, build_model, build_sampler
from recneg.train import Trainer


def train(out_path: str) -> None:
    ctx = distributed.init_from_env("cpu")
    assert ctx.world == dist_cases.WORLD, ctx
    split = dist_cases.make_split()
    saved = {}
    for case in dist_cases.CASES:
        model, sampler, loss = dist_cases.components(case, split)
        result = Trainer(model, sampler, split, loss, dist_cases.CONFIG).run()
        ev = result.test_result
        saved[case] = {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "sampler": {k: v.detach().clone() for k, v in sampler.state_dict().items()},
            "losses": [r["loss"] for r in result.history],
            "valid": [r["valid"] for r in result.history],
            "test": result.test,
            "eval": {"users": ev.users, "per_user": ev.per_user, "topk": ev.topk, "hits": ev.hits},
            "sampler_ranks": distributed.gather_objects(
                {k: v.detach().clone() for k, v in sampler.state_dict().items()}
            ),
        }
    torch.manual_seed(0)
    model = build_model("mf", split.train, dim=8)
    sampler = build_sampler("ans", dim=8).bind(split.train)
    Trainer(model, sampler, split, build_loss("bpr"), dist_cases.CONFIG).run()
    saved["ans"] = {
        "params": distributed.gather_objects({k: v.detach().clone() for k, v in sampler.named_parameters()}),
        "model": distributed.gather_objects({k: v.detach().clone() for k, v in model.state_dict().items()}),
    }
    saved["mns"] = _mns(split)
    try:
        distributed.gather_objects({"scores": np.zeros(2)})
    except TypeError as exc:
        saved["numpy_error"] = str(exc)
    if ctx.is_main:
        torch.save(saved, out_path)
    distributed.shutdown()
    held = distributed.tensors_held_by_collectives()
    assert held == 0, f"rank {ctx.rank}: {held} tensors still held by communication threads after shutdown"


class _FirstBatch:
    def __init__(self):
        self.seen = None

    def on_batch(self, trainer, b, users, pos, view, neg):
        if self.seen is None:
            self.seen = {"rows": users.numel(), "ids": neg.ids.clone(), "log_q": neg.log_q.detach().clone()}
            self.seen.update(emb=tuple(neg.emb.shape), mask=tuple(neg.mask.shape))


def _mns(split) -> dict:
    """One epoch of MNS (B' = 16 uniform items per global step): the first batch's columns, the losses,
    and the error for a B' that does not split over the ranks."""
    from dataclasses import replace

    from recneg.errors import ConfigError

    cfg = replace(dist_cases.CONFIG, epochs=1)
    torch.manual_seed(0)
    first = _FirstBatch()
    model = build_model("mf", split.train, dim=8)
    sampler = build_sampler("mns", n_uniform=16).bind(split.train)
    result = Trainer(model, sampler, split, build_loss("softmax"), cfg, callbacks=[first]).run()
    out = {"first": first.seen, "losses": [r["loss"] for r in result.history]}
    try:
        bad = build_sampler("mns", n_uniform=15).bind(split.train)
        Trainer(model, bad, split, build_loss("softmax"), cfg).run()
    except ConfigError as exc:
        out["odd_error"] = str(exc)
    return out


class _ExitInEpoch:
    def __init__(self, rank: int, epoch: int):
        self.rank, self.epoch = rank, epoch

    def on_batch(self, trainer, b, users, pos, view, neg):
        if trainer.dist.rank == self.rank and trainer.epoch == self.epoch and b == 1:
            os._exit(17)  # no cleanup, no exception: as a crashed or OOM-killed process


def kill(rank: int, epoch: int, argv: list[str]) -> int:
    from recneg import cli, runner

    run = runner.run

    def run_with_exit(cfg, out_dir=None, resume=False, callbacks=None):
        return run(cfg, out_dir, resume, [_ExitInEpoch(rank, epoch)])

    runner.run = run_with_exit
    return cli.main(["train", *argv])


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "train":
        train(sys.argv[2])
    elif mode == "kill":
        sys.exit(kill(int(sys.argv[2]), int(sys.argv[3]), sys.argv[5:]))
    else:
        sys.exit(f"unknown mode {mode!r}")

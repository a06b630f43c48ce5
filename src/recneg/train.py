"""The trainer: epochs of shuffled pairs, one sampler call per batch, evaluation, early stopping, checkpoints.

One training step, as the architecture guide draws it::

    view = model.view(users, pos)                      # one propagation (LightGCN); gathers for MF
    neg = sampler(users, pos, view, generator=gen)     # Negatives record
    loss = loss_fn(view.user_emb, view.pos_emb, neg) + regularization(view, neg, λ, kind) + neg.aux_loss

The trainer never looks at which sampler or model it runs. A run folder holds ``config.json``,
``id_maps.json``, ``history.jsonl`` (one line per finished epoch), ``checkpoint.pt`` (written atomically at
each evaluation), ``model.pt`` (best weights) and ``metrics.json`` (at the end).

Under ``torchrun`` (see :mod:`recneg.distributed`) every rank runs this trainer: rank ``r`` takes block ``r``
of each global batch, DistributedDataParallel averages the gradients, evaluation is sharded by users, and
rank 0 alone writes the run folder. Without a process group nothing of that runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from recneg.config import RunConfig, TrainConfig
from recneg.data.interactions import Split
from recneg.data.split import check_split
from recneg.distributed import (
    SEED_STRIDE,
    DistContext,
    all_mean,
    check_divisible,
    current,
    gather_objects,
    trainer_device,
)
from recneg.errors import ConfigError, DataError, RecnegError
from recneg.eval.ranking import EvalResult, evaluate
from recneg.fused_step import AUTOGRAD, GRADIENTS, UPDATED, FusedMFStep, fused_step_blocker
from recneg.logging import make_logger
from recneg.models.base import Recommender
from recneg.models.mf import MF
from recneg.optim import SPARSE_OPTIMIZERS, make_optimizer, use_sparse_gradients
from recneg.resources import check_fits
from recneg.samplers.base import Sampler
from recneg.train_step import TrainStep, data_parallel
from recneg.utils import (
    atomic_torch_save,
    atomic_write_text,
    keep_freed_memory,
    resolve_device,
    safe_torch_load,
    set_deterministic,
    set_threads,
)

CHECKPOINT_FORMAT = 1


class DivergedError(RecnegError, FloatingPointError):
    """The training loss became NaN or infinite (the CLI reports it in one line, exit status 2)."""


CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
BEST_MODEL = "model.pt"


@dataclass
class RunResult:
    """What :func:`fit` returns.

    Attributes:
        valid: best validation metrics (``{}`` without validation).
        test: test metrics of the restored best model (or of the last epoch without validation).
        best_epoch: 1-based epoch of the best validation score (last epoch without validation).
        train_seconds: training time summed over epochs (evaluation excluded).
        history: one dict per epoch, as in ``history.jsonl``.
        test_result: the full :class:`EvalResult` of the final test evaluation (per-user detail).
    """

    valid: dict
    test: dict
    best_epoch: int
    train_seconds: float
    history: list[dict] = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False)
    sampler: Sampler | None = field(default=None, repr=False)
    test_result: EvalResult | None = field(default=None, repr=False)
    out_dir: Path | None = None

    def metrics_json(self) -> dict:
        return {
            "valid": self.valid,
            "test": self.test,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "epochs_run": len(self.history),
        }


def _stat_value(v):
    """A batch diagnostic as a float or a detached 0-d tensor (summed on device: no sync per batch)."""
    return v.detach().float().mean() if torch.is_tensor(v) else float(v)


def _clone_state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Trainer:
    """Runs one training job. Use :func:`fit` unless you need the pieces.

    ``callbacks``: objects with optional hooks, called in order —
    ``on_batch(trainer, batch_index, users, pos, view, negatives)`` after the sampler ran (for diagnostics:
    the hooks see the batch and must not change it; they see the tables as the sampler saw them, so with
    such a hook the MF step leaves its compiled kernels, which update the tables inside the step, except
    with ``online_sgd``, which has no other path), and ``on_epoch_end(trainer, record) -> dict | None``
    whose returned floats go to the epoch's ``history.jsonl`` line under ``"diagnostics"``.

    ``dist``: the process's place in a multi-process job; default :func:`recneg.distributed.current`
    (the initialised process group, or a single process).
    """

    def __init__(
        self,
        model: nn.Module,
        sampler: Sampler,
        split: Split,
        loss: nn.Module | None = None,
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        run_config: RunConfig | None = None,
        callbacks: list | None = None,
        dist: DistContext | None = None,
    ):
        from recneg.losses import BPRLoss

        self.config = config or TrainConfig()
        self.dist = dist or current()
        check_divisible("batch_size", self.config.batch_size, self.dist)
        if self.dist.enabled and self.config.optimizer in SPARSE_OPTIMIZERS:
            raise ConfigError(
                f"optimizer {self.config.optimizer} runs in one process only (DDP all-reduces dense "
                f"gradients); under torchrun use optimizer adam or adagrad"
            )
        check_split(split, cold_users=False)  # one id space; every user has a negative item
        set_threads(self.config.threads)
        if self.config.keep_freed_memory:
            keep_freed_memory()
        set_deterministic(self.config.deterministic)
        self.device = resolve_device(trainer_device(self.dist, self.config.device))
        self.split = split
        if sampler.train_ is None:
            sampler.bind(split.train)
        # pre-flight: a one-line ConfigError naming the setting to lower, not an out-of-memory crash later
        check_fits(model, sampler, split, self.config, self.device)
        self.model = model.to(self.device)
        self.sampler = sampler.to(self.device)
        self.loss_fn = (loss or BPRLoss()).to(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.run_config = run_config
        self.callbacks = list(callbacks or [])
        self.writes = self.out_dir is not None and self.dist.is_main  # rank 0 alone writes the run folder
        # extra sink beside history.jsonl
        self.logger = make_logger(self.config.logger, self.out_dir if self.writes else None)
        if len(split.train) == 0:
            raise ConfigError("the training part is empty: nothing to train on")
        cfg = self.config
        params = [
            p for p in list(self.model.parameters()) + list(self.sampler.parameters()) if p.requires_grad
        ]
        use_sparse_gradients(self.model, cfg.optimizer)
        self.optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
        self.step = TrainStep(
            cast(Recommender, self.model), self.sampler, self.loss_fn, cfg.reg, cfg.regularizer
        )
        self.step_fn = data_parallel(self.step, self.device) if self.dist.enabled else self.step
        #: why the hand-written MF step is not used (None when it is); see :mod:`recneg.fused_step`
        self.fused_blocker = (
            "fused_step='off'"
            if cfg.fused_step == "off"
            else fused_step_blocker(
                self.model,
                self.sampler,
                self.loss_fn,
                cfg.regularizer,
                self.dist.enabled,
                deterministic_cuda=cfg.deterministic and self.device.type == "cuda",
            )
        )
        self.fused = (
            FusedMFStep(
                cast(MF, self.model),
                self.sampler,
                cast(Any, self.loss_fn),
                cfg.reg,
                self.optimizer,
                deterministic=cfg.deterministic,
                # the compiled kernels update the tables inside the step, before on_batch hooks run
                use_kernels=not any(hasattr(cb, "on_batch") for cb in self.callbacks),
                # dense Adam's steps of unread rows wait until read or the epoch's end (flushed below)
                defer=True,
            )
            if self.fused_blocker is None
            else None
        )
        if cfg.optimizer == "online_sgd":  # it has no autograd path: the compiled MF step must serve
            if self.fused is None:
                raise ConfigError(
                    f"optimizer online_sgd runs in the compiled MF step, which cannot serve this "
                    f"configuration: {self.fused_blocker}; use optimizer adam or sparse_adam"
                )
            self.fused.check_online_sgd()
        self.train_users = torch.as_tensor(split.train.users, device=self.device)
        self.train_items = torch.as_tensor(split.train.items, device=self.device)
        self.use_valid = split.valid is not None and len(split.valid) > 0
        # state that checkpoints carry
        self.epoch = 0
        self.history: list[dict] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_valid: dict = {}
        self.best_state: dict | None = None
        self.evals_since_best = 0
        self.train_seconds = 0.0
        self.stopped = False
        torch.manual_seed(cfg.seed + self.dist.rank * SEED_STRIDE)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)  # the same permutation on every rank
        self.sample_gen = torch.Generator(device=self.device).manual_seed(self.dist.sampler_seed(cfg.seed))

    # ---------------------------------------------------------------------------------------- one epoch
    def train_epoch(self) -> dict:
        cfg = self.config
        model, sampler = self.model.train(), self.sampler.train()
        n = self.train_users.numel()
        perm = torch.randperm(n, generator=self.shuffle_gen).to(self.device)
        n_batches = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
        n_batches = max(n_batches, 1)
        sampler.on_epoch_start(self.epoch, model, self.sample_gen)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        stats: dict = {}
        paths: dict[str, int] = {}  # how many steps each path ran (recneg.fused_step)
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}", leave=False, unit="batch")
        start = time.perf_counter()
        try:
            steps = self._train_batches(n_batches, perm, total, stats, paths, bar, start)
        finally:
            if self.fused is not None:
                self.fused.flush()  # the tables and optimiser state are current from here on
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        steps = max(steps, 1)
        mean_loss = float(all_mean(total)) / steps
        if not math.isfinite(mean_loss):
            raise DivergedError(
                f"training loss became {mean_loss} in epoch {self.epoch + 1}; expected a finite loss: lower "
                f"the lr ({cfg.lr:g}); the last checkpoint is kept"
            )
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "loss": mean_loss,
            "train_seconds": seconds,
            "pairs_per_second": n / seconds if seconds > 0 else None,
            "step_paths": paths,
        }
        if stats:
            record["sampler"] = self._mean_over_ranks({k: float(v) / steps for k, v in stats.items()})
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                extra = cb.on_epoch_end(self, record)
                if extra:
                    record.setdefault("diagnostics", {}).update(extra)
        return record

    def _train_batches(self, n_batches, perm, total, stats, paths, bar, start) -> int:
        """The epoch's batches: sample, step, accumulate ``total`` loss, ``stats`` and ``paths`` in place.

        Returns the number of steps taken.
        """
        cfg = self.config
        steps = 0
        # the epoch's pairs in shuffled order, gathered once: each batch is then a view (a gather per batch
        # cost ~0.1 ms of a 2.5 ms step)
        all_users, all_pos = self.train_users[perm], self.train_items[perm]
        for b in range(n_batches):
            window = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            users, pos = self._rank_rows(all_users[window]), self._rank_rows(all_pos[window])
            if users.numel() == 0:  # a last batch smaller than the number of ranks: skipped by every rank
                continue
            steps += 1
            if self.fused is not None:
                loss, view, neg, status = self.fused(users, pos, self.sample_gen)
            else:
                (loss, view, neg), status = self.step_fn(users, pos, self.sample_gen), AUTOGRAD
            for cb in self.callbacks:
                if hasattr(cb, "on_batch"):
                    cb.on_batch(self, b, users, pos, view, neg)
            key = "compiled" if status == UPDATED else "fused" if status == GRADIENTS else "autograd"
            paths[key] = paths.get(key, 0) + 1
            if status == GRADIENTS:  # the tables' .grad already hold this batch's gradient
                self.optimizer.step()
                cast(FusedMFStep, self.fused).clear()
            elif status == AUTOGRAD:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            total += loss.detach()
            for k, v in neg.stats.items():
                stats[k] = stats.get(k, 0.0) + _stat_value(v)
            if bar is not None:
                bar.update(1)
                if b % 20 == 0 or b == n_batches - 1:
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(
                        loss=f"{float(total) / (b + 1):.4f}",
                        pairs_s=f"{(b + 1) * cfg.batch_size / elapsed:,.0f}",
                    )
        return steps

    def _rank_rows(self, idx):
        """This rank's block of one global batch's ``idx [m]`` (ids, or positions): ``[m // world]`` rows
        (all of them alone).

        Equal blocks on every rank keep the mean of the ranks' mean losses equal to the global batch's mean
        loss; a last batch that does not split evenly loses its ``m % world`` trailing rows.
        """
        if not self.dist.enabled:
            return idx
        per_rank = idx.numel() // self.dist.world
        return idx[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]

    def _mean_over_ranks(self, values: dict) -> dict:
        if not self.dist.enabled:
            return values
        every = gather_objects(values)
        return {k: sum(d.get(k, 0.0) for d in every) / len(every) for k in values}

    def evaluate(self, part: str) -> EvalResult:
        cfg = self.config
        return evaluate(
            self.model, self.split, part, cfg.topk, cfg.eval_chunk, mask_valid=cfg.mask_valid, dist=self.dist
        )

    # ---------------------------------------------------------------------------------------- the run
    def run(self) -> RunResult:
        cfg = self.config
        part = "valid" if self.use_valid else "test"
        while self.epoch < cfg.epochs and not self.stopped:
            record = self.train_epoch()
            self.epoch += 1
            self.train_seconds += record["train_seconds"]
            record["eval_seconds"] = 0.0
            is_eval = self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs
            if is_eval:
                t0 = time.perf_counter()
                metrics = self.evaluate(part).metrics
                record["eval_seconds"] = time.perf_counter() - t0
                record[part] = metrics
                self._after_eval(metrics)
            self.history.append(record)
            self._append_history(record)
            self.logger.log(record, self.history)
            if is_eval:
                self.save_checkpoint()
        return self._finish()

    def _after_eval(self, metrics: dict) -> None:
        cfg = self.config
        if not self.use_valid:  # fixed budget: the last epoch is what counts
            self.best_epoch, self.best_valid = self.epoch, {}
            return
        score = metrics[cfg.metric]
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_valid = score, self.epoch, dict(metrics)
            self.best_state = {"model": _clone_state(self.model), "sampler": _clone_state(self.sampler)}
            self.evals_since_best = 0
            if (path := self._written(BEST_MODEL)) is not None:
                atomic_torch_save(self.best_state["model"], path)
        else:
            self.evals_since_best += 1
            if cfg.patience and self.evals_since_best >= cfg.patience:
                self.stopped = True

    def _finish(self) -> RunResult:
        self.logger.close()
        if self.use_valid and self.best_state is not None:
            self.model.load_state_dict(self.best_state["model"])
            self.sampler.load_state_dict(self.best_state["sampler"])
        elif (path := self._written(BEST_MODEL)) is not None:
            atomic_torch_save(_clone_state(self.model), path)
        test = self.evaluate("test")
        result = RunResult(
            valid=self.best_valid,
            test=test.metrics,
            best_epoch=self.best_epoch,
            train_seconds=self.train_seconds,
            history=self.history,
            model=self.model,
            sampler=self.sampler,
            test_result=test,
            out_dir=self.out_dir,
        )
        if (path := self._written(METRICS)) is not None:
            atomic_write_text(path, json.dumps(result.metrics_json(), indent=2))
        return result

    # ---------------------------------------------------------------------------------------- files
    def _written(self, name: str) -> Path | None:
        """``out_dir / name`` if this process writes the run folder (rank 0 with a folder), else ``None``."""
        return self.out_dir / name if self.writes and self.out_dir is not None else None

    def _append_history(self, record: dict) -> None:
        path = self._written(HISTORY)
        if path is None:
            return
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def state(self) -> dict:
        rng = {
            "torch": torch.get_rng_state(),
            "shuffle": self.shuffle_gen.get_state(),
            "sample": self.sample_gen.get_state(),
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "sampler": self.sampler.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": self.history,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_valid": self.best_valid,
            "best_state": self.best_state,
            "evals_since_best": self.evals_since_best,
            "train_seconds": self.train_seconds,
            "stopped": self.stopped,
        }
        if self.dist.enabled:  # every rank's own streams and sampler buffers, so a resume continues each one
            own = {"rng": rng, "sampler": {k: v.detach().cpu() for k, v in self.sampler.state_dict().items()}}
            state["world"] = self.dist.world
            state["ranks"] = gather_objects(own)
        return state

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0; every rank must call it in a multi-process job)."""
        if self.out_dir is None:
            return
        state = self.state()  # a collective in a multi-process job: every rank computes it
        if (path := self._written(CHECKPOINT)) is not None:
            atomic_torch_save(state, path)

    def load_state(self, state: dict) -> None:
        saved_world = int(state.get("world", 1))
        if saved_world != self.dist.world:
            raise ConfigError(
                f"the checkpoint was written by a job of {saved_world} process(es) but this one has "
                f"{self.dist.world}; resume with the same number of processes (torchrun --nproc-per-node)"
            )
        if self.dist.enabled:
            own = state["ranks"][self.dist.rank]
            state = {**state, "rng": own["rng"], "sampler": own["sampler"]}
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.sampler.load_state_dict(state["sampler"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.fused is not None:
            self.fused.discard()  # steps owed by rows of the replaced tables are void
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        self.sample_gen.set_state(state["rng"]["sample"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = list(state["history"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_valid = dict(state["best_valid"])
        self.best_state = state["best_state"]
        self.evals_since_best = int(state["evals_since_best"])
        self.train_seconds = float(state["train_seconds"])
        self.stopped = bool(state["stopped"])
        if (path := self._written(HISTORY)) is not None:  # drop lines of epochs after the checkpoint
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))

    def resume_from(self, run_dir: str | Path) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists. Returns whether a checkpoint was loaded."""
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            return False
        state = safe_torch_load(path, map_location=self.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise DataError(
                f"{path}: expected a recneg checkpoint of format {CHECKPOINT_FORMAT}, got {got!r}"
            )
        try:
            self.load_state(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise DataError(
                f"{path}: does not fit this run ({type(e).__name__}: {first}); was the config changed?"
            ) from None
        return True


def fit(
    model: nn.Module,
    sampler: Sampler,
    split: Split,
    loss: nn.Module | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    callbacks: list | None = None,
    **overrides,
) -> RunResult:
    """Train ``model`` with ``sampler`` on ``split.train``; early-stop on validation; test at the end.

    Args:
        model: a :class:`~recneg.models.Recommender` (e.g. ``build_model("mf", split.train)``).
        sampler: a :class:`~recneg.samplers.Sampler` (bound to ``split.train`` here if it is not yet).
        split: train / valid / test interactions in one id space.
        loss: a loss module (default BPR).
        config: a :class:`TrainConfig`; keyword ``overrides`` replace its fields (``epochs=10``).
        out_dir: optional run folder for history, checkpoints and metrics.

    Example::

        data = recneg.load_dataset("synthetic")
        result = recneg.fit(build_model("mf", data.train), build_sampler("dns"), data, epochs=20)
    """
    config = config or TrainConfig()
    if overrides:
        config = _merge(config, overrides)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(model, sampler, split, loss, config, out_dir, callbacks=callbacks).run()


def _fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _merge(config: TrainConfig, overrides: dict) -> TrainConfig:
    from recneg.registry import config_from_mapping

    return config_from_mapping(TrainConfig, {**_fields(config), **overrides}, "fit()")


__all__ = ["DivergedError", "Trainer", "RunResult", "fit"]

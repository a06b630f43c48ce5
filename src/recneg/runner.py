"""Build everything a run needs from a :class:`~recneg.config.RunConfig`, train, and write the run folder.

This is what ``recneg train`` calls; it is also the one-call Python entry point::

    from recneg.config import RunConfig
    from recneg.runner import run
    result = run(RunConfig(), out_dir="runs/default")

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`run` joins the process group first (see
:mod:`recneg.distributed`), every rank trains its share, rank 0 alone writes the run folder, and the group is
left at the end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from recneg import distributed
from recneg.config import RunConfig
from recneg.errors import ConfigError, DataError
from recneg.registry import LOSSES, MODELS, SAMPLERS, build_loss, build_model, build_sampler
from recneg.train import CHECKPOINT, METRICS, RunResult, Trainer


def load_split(cfg: RunConfig):
    from recneg.data.datasets import load_dataset

    d = cfg.data
    return load_dataset(
        d.dataset,
        data_dir=d.data_dir,
        split=d.split,
        valid_ratio=d.valid_ratio,
        test_ratio=d.test_ratio,
        seed=d.seed,
        threshold=d.threshold,
        min_user=d.min_user,
        min_item=d.min_item,
        columns=d.columns,
        download=d.download,
    )


def build_components(cfg: RunConfig, split):
    """Model, sampler and loss from their registry names and settings.

    A sampler whose config has a ``dim`` field (samplers with their own parameters, e.g. ANS) that the user
    did not set receives the model's embedding size.
    """
    model_cfg = MODELS.make_config(cfg.model.name, cfg.model.args)
    model = build_model(cfg.model.name, split.train, config=model_cfg)
    if hasattr(model, "with_features"):  # side features of the dataset (ml-100k genres, Last.fm tags), if any
        from recneg.data.features import dataset_features

        user_f, item_f = dataset_features(cfg.data.dataset, cfg.data.data_dir, split.train)
        if user_f is not None or item_f is not None:
            model.with_features(user_f, item_f)
    sampler_args = dict(cfg.sampler.args)
    sampler_entry = SAMPLERS.get(cfg.sampler.name)
    if sampler_entry.config is not None and "dim" not in sampler_args:
        names = {f.name for f in dataclasses.fields(sampler_entry.config)}
        if "dim" in names and model_cfg is not None and hasattr(model_cfg, "dim"):
            sampler_args["dim"] = model_cfg.dim
    sampler = build_sampler(cfg.sampler.name, SAMPLERS.make_config(cfg.sampler.name, sampler_args))
    loss = build_loss(cfg.loss.name, LOSSES.make_config(cfg.loss.name, cfg.loss.args))
    return model, sampler.bind(split.train), loss


def run(
    cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False, callbacks: list | None = None
) -> RunResult:
    """Load data, build components, train (resuming from ``out_dir`` when asked), write the run folder.

    ``callbacks`` go to the :class:`~recneg.train.Trainer`. Under torchrun every rank calls this.
    """
    ctx = distributed.init_from_env(cfg.train.device)
    try:
        result = _run(cfg, out_dir, resume, callbacks, ctx)
    except BaseException:
        if ctx.enabled:
            distributed.shutdown(wait_for_peers=False)
        raise
    if ctx.enabled:
        distributed.shutdown()
    return result


def _run(cfg: RunConfig, out_dir, resume: bool, callbacks, ctx: distributed.DistContext) -> RunResult:
    split = load_split(cfg)
    torch.manual_seed(cfg.train.seed)  # the seed decides the initial weights too (same seed => same run)
    model, sampler, loss = build_components(cfg, split)
    if out_dir is not None:
        out_dir = Path(out_dir)
        resuming = resume and (out_dir / CHECKPOINT).is_file()
        distributed.barrier()  # every rank has looked for the checkpoint before rank 0 may remove it
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if not resuming:  # no checkpoint: the run starts afresh
                for stale in (CHECKPOINT, METRICS, "history.jsonl", "model.pt"):
                    (out_dir / stale).unlink(missing_ok=True)
            cfg.save(out_dir / "config.json")
            split.train.save_id_maps(out_dir / "id_maps.json")
        distributed.barrier()
    trainer = Trainer(model, sampler, split, loss, cfg.train, out_dir, run_config=cfg, callbacks=callbacks)
    if resume and out_dir is not None:
        trainer.resume_from(out_dir)
    return trainer.run()


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path.name} is missing")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return RunConfig.from_dict(raw, source=str(path))


def resume(run_dir: str | Path) -> tuple[RunResult | None, dict | None]:
    """Continue the run in ``run_dir`` with its saved config.

    With a ``checkpoint.pt`` the run continues from it exactly (model, optimiser, sampler buffers, RNG
    states, history, early-stopping state); a run killed before its first checkpoint starts afresh from the
    saved config (its partial ``history.jsonl`` is dropped); a finished run (``metrics.json``) is not rerun.

    Returns ``(result, None)`` after training, or ``(None, metrics)`` when the run had already finished.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    metrics_path = run_dir / METRICS
    if metrics_path.is_file():
        try:
            return None, json.loads(metrics_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{metrics_path}: not valid JSON ({exc})") from None
    return run(cfg, run_dir, resume=True), None

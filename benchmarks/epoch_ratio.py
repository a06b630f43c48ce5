"""Whole training epochs of the trainer, each configuration against MF-uniform, in alternating rounds.

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.epoch_ratio --configs "mf-dns-32,mf-pdns-32 (dns+softbpr)" --rounds 5

What a user sees: ``recneg.train.Trainer.train_epoch`` on the split (dense Adam by default, batch 2048
unless ``--batch-size`` says otherwise, lr 10⁻³, R1 10⁻⁴), not the single steps ``benchmarks.epoch_time``
times. Every configuration (a configuration of ``benchmarks.epoch_time``) and MF-uniform train one epoch
to warm up, then ``--rounds`` rounds train one epoch of each, back to back; a ratio is taken within its
round (the machine's speed drifts by up to 2× within minutes), then the median over rounds. Writes
``benchmarks/results/epoch_ratio_<dataset>_<optimizer>[_batch<size>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table, rounds_summary


def _trainer(split, spec, optimizer: str, threads: int, batch_size: int):
    import recneg
    from recneg.config import TrainConfig
    from recneg.train import Trainer

    model_name, sampler_name, sampler_args, loss_name, loss_args = spec
    config = TrainConfig(
        threads=threads,
        progress=False,
        seed=0,
        reg=1e-4,
        topk=(20,),
        optimizer=optimizer,
        batch_size=batch_size,
    )
    model = recneg.build_model(model_name, split.train)
    sampler = recneg.build_sampler(sampler_name, **sampler_args)
    return Trainer(model, sampler, split, loss=recneg.build_loss(loss_name, **loss_args), config=config)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--configs", default="mf-dns-32,mf-pdns-32 (dns+softbpr)")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2048, help="(2048 is the default the targets use)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.epoch_time import CONFIGS
    from recneg.data.datasets import load_dataset

    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    names = ["mf-uniform", *[c.strip() for c in args.configs.split(",") if c.strip() != "mf-uniform"]]
    trainers = {
        name: _trainer(split, CONFIGS[name], args.optimizer, args.threads, args.batch_size) for name in names
    }
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds + 1):  # round 0 warms up (compilation, first touches)
        for name, trainer in trainers.items():
            record = trainer.train_epoch()
            trainer.epoch += 1
            if round_:
                seconds[name].append(record["train_seconds"])
    rows = [
        {
            "config": name,
            "optimizer": args.optimizer,
            **rounds_summary(times, seconds["mf-uniform"], "epoch s", "mf-uniform"),
        }
        for name, times in seconds.items()
    ]
    description = (
        f"{split!r}; the trainer's epochs (batch {args.batch_size}, optimizer {args.optimizer}), "
        f"{args.rounds} rounds of one epoch of each configuration, back to back, "
        "after one epoch each to warm up."
    )
    title = f"Trainer epochs against MF-uniform on {args.dataset}"
    name = f"epoch_ratio_{args.dataset}_{args.optimizer}"
    if args.batch_size != 2048:
        name += f"_batch{args.batch_size}"
    print(publish_table(name, "epoch_ratio", argv, title, description, machine_stamp(args.threads), rows))


if __name__ == "__main__":
    main()

"""Shared by the examples: command-line flags and the data (generated, or a named dataset with --data-dir)."""

from __future__ import annotations

import argparse

import torch

import recneg
from recneg.data.split import random_split
from recneg.data.synthetic import SyntheticConfig, generate


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data-dir", help="folder of named datasets (e.g. ../shared/data); default: generated data"
    )
    p.add_argument("--dataset", default=None, help="named dataset or path (default ml-100k with --data-dir)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the example's own)")
    p.add_argument("--smoke", action="store_true", help="tiny data and 1-2 epochs: runs in seconds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def load(args) -> recneg.data.Split:
    """The split the example trains on, printed: a named dataset with --data-dir (or --dataset), else tiny
    generated data with --smoke, else recneg's built-in synthetic data (600 users, 800 items)."""
    torch.set_num_threads(args.threads)
    if args.data_dir or args.dataset:
        split = recneg.load_dataset(args.dataset or "ml-100k", data_dir=args.data_dir)
    elif args.smoke:
        cfg = SyntheticConfig(n_users=120, n_items=160, mean_degree=12.0, min_degree=5)
        split = random_split(generate(cfg).interactions, test_ratio=0.2, valid_ratio=0.1, seed=0)
    else:
        split = recneg.load_dataset("synthetic")
    print(f"data: {split}")
    return split

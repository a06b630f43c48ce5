"""Runs one peer library on an NGCF-format split; executed by ``benchmarks/peers.py`` inside the peers venv.

It imports neither recneg nor anything the project installs: only numpy/scipy/torch and the peer under test
(RecBole 1.2.1 or implicit 0.7.3, from ``../shared/tools/peers-venv.sh``). Output: one JSON object on the last
stdout line; factor tables (for recneg's own evaluation, so every library is scored by the same code) as
``.npz`` files in ``--out``.

    python benchmarks/_peer_runner.py implicit --data ../shared/data/gowalla --out /tmp/x --epochs 30
    python benchmarks/_peer_runner.py recbole --data ../shared/data/gowalla --out /tmp/x --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def read_ngcf(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``user item item ...`` lines → (users, items) int64 arrays."""
    users, items = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            u = int(parts[0])
            its = [int(x) for x in parts[1:]]
            users.extend([u] * len(its))
            items.extend(its)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def load_split(data: Path):
    tr_u, tr_i = read_ngcf(data / "train.txt")
    te_u, te_i = read_ngcf(data / "test.txt")
    n_users = int(max(tr_u.max(), te_u.max())) + 1
    n_items = int(max(tr_i.max(), te_i.max())) + 1
    return (tr_u, tr_i), (te_u, te_i), n_users, n_items


def run_implicit(args) -> dict:
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    (tr_u, tr_i), _, n_users, n_items = load_split(Path(args.data))
    ui = sp.csr_matrix((np.ones(len(tr_u), np.float32), (tr_u, tr_i)), shape=(n_users, n_items))
    ui.sum_duplicates()
    model = BayesianPersonalizedRanking(
        factors=args.dim,
        learning_rate=args.lr,
        regularization=args.reg,
        iterations=args.epochs,
        num_threads=args.threads,
        random_state=args.seed,
    )
    epochs: list[dict] = []
    clock = {"last": 0.0, "total": 0.0}

    def on_epoch(epoch, elapsed, *_):
        now = time.perf_counter()
        clock["total"] += now - clock["last"]
        epochs.append({"epoch": epoch + 1, "train_seconds": now - clock["last"], "cum": clock["total"]})
        if args.save_every and (epoch + 1) % args.save_every == 0:
            np.savez(
                Path(args.out) / f"implicit-e{epoch + 1}.npz",
                user=np.asarray(model.user_factors),
                item=np.asarray(model.item_factors),
            )
        clock["last"] = time.perf_counter()  # the snapshot is not training time

    clock["last"] = time.perf_counter()
    model.fit(ui, show_progress=False, callback=on_epoch)
    return {
        "library": "implicit",
        "version": __import__("implicit").__version__,
        "model": "BayesianPersonalizedRanking (CPU, SGD, hogwild threads)",
        "settings": vars(args),
        "epochs": epochs,
    }


def _recbole_files(data: Path, work: Path) -> Path:
    """Write the split as RecBole benchmark atomic files (``gowalla.train.inter`` / ``.test.inter``)."""
    (tr_u, tr_i), (te_u, te_i), _, _ = load_split(data)
    ds = work / "gowalla"
    ds.mkdir(parents=True, exist_ok=True)
    for name, (u, i) in {"train": (tr_u, tr_i), "test": (te_u, te_i)}.items():
        with open(ds / f"gowalla.{name}.inter", "w", encoding="utf-8") as fh:
            fh.write("user_id:token\titem_id:token\n")
            fh.write("\n".join(f"{a}\t{b}" for a, b in zip(u.tolist(), i.tolist(), strict=True)))
            fh.write("\n")
    return work


def run_recbole(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR, LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    work = _recbole_files(Path(args.data), Path(args.out) / "recbole-data")
    neg = {
        "distribution": "uniform",
        "sample_num": 1,
        "dynamic": args.dynamic > 0,
        "candidate_num": args.dynamic,
    }
    extra = {"n_layers": args.n_layers, "reg_weight": 1e-4} if args.model == "LightGCN" else {}
    cfg = Config(
        model=args.model,
        dataset="gowalla",
        config_dict={
            "data_path": str(work),
            "benchmark_filename": ["train", "test", "test"],
            "load_col": {"inter": ["user_id", "item_id"]},
            "train_batch_size": args.batch_size,
            "eval_batch_size": 4096,
            "learner": "adam",
            "learning_rate": args.lr,
            "embedding_size": args.dim,
            "epochs": args.epochs,
            "train_neg_sample_args": neg,
            "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
            "metrics": ["Recall", "NDCG"],
            "topk": [20],
            "valid_metric": "Recall@20",
            "use_gpu": False,
            "device": "cpu",
            "worker": 0,
            "seed": args.seed,
            "show_progress": False,
            "checkpoint_dir": str(Path(args.out) / "recbole-saved"),
            "log_wandb": False,
            **extra,
        },
    )
    init_seed(cfg["seed"], cfg["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(cfg)
    train_data, _valid, test_data = data_preparation(cfg, dataset)
    setup = time.perf_counter() - t0
    model = (BPR if args.model == "BPR" else LightGCN)(cfg, train_data.dataset).to(cfg["device"])
    trainer = Trainer(cfg, model)
    if args.steps:
        return {**_time_steps(trainer, model, train_data, args), "setup_seconds": setup}
    epochs = []
    for e in range(args.epochs):
        t0 = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch_idx=e, show_progress=False)
        epochs.append({"epoch": e + 1, "train_seconds": time.perf_counter() - t0, "loss": float(loss)})
    t0 = time.perf_counter()
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_seconds = time.perf_counter() - t0
    return _recbole_result(
        args,
        setup_seconds=setup,
        epochs=epochs,
        eval_seconds=eval_seconds,
        test={k: float(v) for k, v in dict(result).items()},
    )


def _recbole_result(args, **fields) -> dict:
    import torch

    negatives = f"DNS-{args.dynamic}" if args.dynamic else "uniform"
    return {
        "library": "recbole",
        "version": __import__("recbole").__version__,
        "model": f"{args.model}, Adam, {negatives} negatives",
        "settings": vars(args),
        "threads": torch.get_num_threads(),
        **fields,
    }


def _time_steps(trainer, model, train_data, args) -> dict:
    """Time ``args.steps`` training steps after ``args.warm_up`` (the inner loop of RecBole's
    ``Trainer._train_epoch``: zero the gradients, ``calculate_loss``, backward, the optimiser's step),
    batches as its data loader yields them; the data loading is not timed."""
    model.train()
    batches = iter(train_data)
    seconds = []
    for i in range(args.warm_up + args.steps):
        interaction = next(batches).to(model.device)
        t0 = time.perf_counter()
        trainer.optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        trainer.optimizer.step()
        if i >= args.warm_up:
            seconds.append(time.perf_counter() - t0)
    return _recbole_result(args, step_seconds=seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", choices=["implicit", "recbole"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--reg", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dynamic", type=int, default=0, help="RecBole DNS candidate_num (0 = uniform)")
    ap.add_argument("--save-every", type=int, default=1, help="implicit: factor snapshot every N epochs")
    ap.add_argument("--model", default="BPR", choices=["BPR", "LightGCN"], help="recbole: the model")
    ap.add_argument("--n-layers", type=int, default=3, help="recbole LightGCN: propagation layers")
    ap.add_argument("--steps", type=int, default=0, help="recbole: time this many steps instead of epochs")
    ap.add_argument("--warm-up", type=int, default=2, help="recbole --steps: untimed steps first")
    args = ap.parse_args(argv)
    if args.lr is None:
        args.lr = 0.01 if args.library == "implicit" else 1e-3
    os.makedirs(args.out, exist_ok=True)
    res = run_implicit(args) if args.library == "implicit" else run_recbole(args)
    sys.stdout.write("\n" + json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

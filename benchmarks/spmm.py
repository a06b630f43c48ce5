"""LightGCN's sparse products: the compiled CSR kernel against torch's CSR product (MKL).

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.spmm --threads 2 --rounds 7

Three measurements on the dataset's ``Ã`` (``[n_users + n_items]²``; Gowalla: 70 839 nodes, 1.6 M
non-zeros), each with ``recneg.models.lightgcn.use_compiled_propagation`` on (``recneg.kernels.csr_spmm``)
and off (``torch.sparse.mm``), the two interleaved in alternating order within every round:

- ``one product``: ``Ã X`` for ``X [N, 64]``;
- ``propagation fwd + bwd``: LightGCN's three layers, pooled, and the backward (six products);
- ``training step``: a LightGCN + uniform BPR step (``benchmarks.epoch_time``'s ``lightgcn-uniform``).

Per measurement the medians over rounds (each round's figure the median of ``--reps`` calls) and the
median of the within-round ratio torch / compiled. Writes ``benchmarks/results/spmm_<dataset>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import DEFAULT_DATA, machine_stamp, publish_table


def _timed(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="calls a round times, of which the median counts")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.epoch_time import CONFIGS, Runner
    from recneg import kernels
    from recneg.data.datasets import load_dataset
    from recneg.models import lightgcn
    from recneg.utils import keep_freed_memory

    if not kernels.ready("csr_spmm"):
        raise SystemExit("the compiled kernel cannot run here (numba missing or unable to build it)")
    keep_freed_memory()  # as the trainer does
    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    runner = Runner(split, CONFIGS["lightgcn-uniform"], 2048, keep_memory=True)
    model = runner.model
    adj = model.adjacency()
    x = torch.randn(model.n_nodes, model.config.dim)

    def propagation() -> None:
        layers = model._layers()
        model._pooled(layers).sum().backward()

    measures = {
        "one product": (lambda: lightgcn.sparse_product(adj, x), args.reps),
        "propagation fwd + bwd": (propagation, args.reps),
        "training step": (runner.step, args.reps),
    }
    for fn, _ in measures.values():  # compile, fault the pages in, settle the allocator
        for enabled in (True, False):
            lightgcn.use_compiled_propagation(enabled)
            fn()
            fn()
    times: dict[str, dict[bool, list[float]]] = {name: {True: [], False: []} for name in measures}
    for r in range(args.rounds):
        for name, (fn, reps) in measures.items():
            for enabled in (True, False) if r % 2 == 0 else (False, True):
                lightgcn.use_compiled_propagation(enabled)
                times[name][enabled].append(_timed(fn, reps))
        latest = {name: [round(t[True][-1], 1), round(t[False][-1], 1)] for name, t in times.items()}
        print(f"round {r + 1}, ms compiled / torch: {latest}", flush=True)
    lightgcn.use_compiled_propagation(True)
    runner.flush()
    rows = []
    for name, t in times.items():
        ratios = [b / a for a, b in zip(t[True], t[False], strict=True)]
        rows.append(
            {
                "measure": name,
                "compiled ms": round(statistics.median(t[True]), 2),
                "torch ms": round(statistics.median(t[False]), 2),
                "torch / compiled (median of rounds)": round(statistics.median(ratios), 2),
                "range of rounds": f"{min(ratios):.2f}–{max(ratios):.2f}",
            }
        )
    description = (
        f"{split}; Ã with {adj.values().numel()} non-zeros, d = {model.config.dim}, "
        f"{model.config.n_layers} layers. {args.rounds} rounds, both variants in each (alternating order), "
        f"each the median of {args.reps} calls; the training step is LightGCN + uniform BPR, batch 2048, "
        "Adam (autograd)."
    )
    title = "LightGCN's sparse products: compiled kernel vs torch's CSR product"
    stamp = machine_stamp(args.threads)
    print(publish_table(f"spmm_{args.dataset}", "spmm", argv, title, description, stamp, rows))


if __name__ == "__main__":
    main()

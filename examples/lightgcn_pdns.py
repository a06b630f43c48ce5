"""LightGCN trained with PDNS (positive-dominated negative synthesis): DNS picks the hardest of H uniform
candidates, and the negative is the mix α e_i + (1-α) e_j of the positive and that candidate.

    python examples/lightgcn_pdns.py            # generated data, 30 epochs (~8 s on one core)
    python examples/lightgcn_pdns.py --data-dir ../shared/data --dataset ml-100k --epochs 100

Equivalent soft-BPR form: ``--sampler dns --loss softbpr --loss-arg beta=0.1`` (docs/samplers_mixing.md).
"""

from __future__ import annotations

from _common import load, parser

import recneg
from recneg.cli import format_metrics


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = load(args)
    epochs = args.epochs or (1 if args.smoke else 30)
    small = args.smoke
    model = recneg.build_model("lightgcn", data.train, dim=32 if small else 64, n_layers=2 if small else 3)
    sampler = recneg.build_sampler("pdns", n_candidates=16, alpha=0.9)  # H = 16, α = 0.9
    result = recneg.fit(
        model, sampler, data, epochs=epochs, lr=1e-3, reg=1e-4, eval_every=5, progress=False, threads=0
    )
    print(format_metrics(result.test, "test  "))
    print(f"best epoch {result.best_epoch}, train {result.train_seconds:.1f}s")
    last = result.history[-1]
    if "sampler" in last:  # per-epoch sampler diagnostics, as in history.jsonl
        print("sampler diagnostics:", {k: round(v, 4) for k, v in last["sampler"].items()})


if __name__ == "__main__":
    main()

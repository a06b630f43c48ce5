"""Three samplers on the same data and model, one table: uniform (RNS), popularity (PNS) and DNS.

    python examples/compare_samplers.py         # generated data (~10 s on one core)
    python examples/compare_samplers.py --data-dir ../shared/data --dataset ml-100k --epochs 50

For significance tests over seeds and datasets use ``recneg compare`` (docs/reproduce.md).
"""

from __future__ import annotations

from _common import load, parser

import recneg

SAMPLERS = {
    "uniform (RNS)": ("uniform", {}),
    "popularity (PNS)": ("popularity", {"alpha": 0.75}),
    "DNS (N=16)": ("dns", {"n_candidates": 16}),
}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = load(args)
    epochs = args.epochs or (2 if args.smoke else 20)
    rows = []
    for label, (name, settings) in SAMPLERS.items():
        model = recneg.build_model("mf", data.train, dim=32 if args.smoke else 64)
        sampler = recneg.build_sampler(name, **settings)
        result = recneg.fit(
            model, sampler, data, epochs=epochs, lr=5e-3, eval_every=5, progress=False, seed=0, threads=0
        )
        rows.append((label, result.test["recall@20"], result.test["ndcg@20"], result.train_seconds))
    print(f"| {'sampler':<18} | recall@20 | ndcg@20 | train s |")
    print(f"|{'-' * 20}|-----------|---------|---------|")
    for label, recall, ndcg, seconds in rows:
        print(f"| {label:<18} | {recall:9.4f} | {ndcg:7.4f} | {seconds:7.1f} |")


if __name__ == "__main__":
    main()

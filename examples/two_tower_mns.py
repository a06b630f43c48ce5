"""A two-tower model trained with MNS (mixed negative sampling, sampled softmax with logQ correction), then
top-K retrieval from a FAISS HNSW index (exact torch search when faiss is not installed).

    python examples/two_tower_mns.py            # generated data (~10 s on one core)
    python examples/two_tower_mns.py --data-dir ../shared/data --dataset ml-100k
"""

from __future__ import annotations

import torch
from _common import load, parser

import recneg
from recneg.retrieval import ItemIndex, ann_recall_at_k, faiss_available


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = load(args)
    epochs = args.epochs or (1 if args.smoke else 10)
    model = recneg.build_model("twotower", data.train, hidden=(64, 32) if args.smoke else (256, 64))
    sampler = recneg.build_sampler("mns", n_uniform=64 if args.smoke else 512)  # B' uniform index items
    loss = recneg.build_loss("softmax")  # sampled softmax; the sampler supplies log Q and the hit mask
    result = recneg.fit(
        model, sampler, data, loss=loss, epochs=epochs, batch_size=512, lr=1e-3, progress=False, threads=0
    )
    print(f"test recall@20 {result.test['recall@20']:.4f} (full ranking, exact)")

    items = model.item_table()
    users = torch.arange(min(data.train.n_users, 200))
    queries = model.user_vectors(users)
    seen = data.train.positives()
    exact = ItemIndex(items, kind="flat", backend="torch")
    if faiss_available():
        index = ItemIndex(items, kind="hnsw")
        print(f"FAISS HNSW index over {index.n_items} items built in {index.build_seconds * 1e3:.1f} ms")
    else:
        index = exact
        print("faiss is not installed (pip install 'recneg[faiss]'): using exact torch search instead")
    _, exact_ids = exact.search(queries, 10, exclude=seen, query_ids=users)
    _, ids = index.search(queries, 10, exclude=seen, query_ids=users)
    print(f"top-10 of user 0: {ids[0].tolist()}")
    print(f"ANN recall@10 against exact search: {ann_recall_at_k(exact_ids, ids):.3f}")


if __name__ == "__main__":
    main()

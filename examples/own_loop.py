"""A recneg sampler (DNS) inside your own PyTorch training loop: no trainer, just the sampler protocol.

    python examples/own_loop.py                 # generated data, 20 epochs (~8 s on one core)
    python examples/own_loop.py --data-dir ../shared/data --dataset ml-100k

Each step: ``model.view`` gives the embeddings the sampler may look at, the sampler returns a ``Negatives``
record (ids, embeddings, weights), and a recneg loss turns both into a scalar. The sampler excludes the user's
training positives itself.
"""

from __future__ import annotations

import time

import torch
from _common import load, parser

import recneg
from recneg.losses import l2_regularization


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    data = load(args)
    epochs = args.epochs or (2 if args.smoke else 20)
    torch.manual_seed(0)
    model = recneg.build_model("mf", data.train, dim=32 if args.smoke else 64)
    sampler = recneg.build_sampler("dns", n_candidates=16).bind(data.train)  # DNS: hardest of 16 uniform
    loss_fn = recneg.build_loss("bpr")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    users, items = torch.as_tensor(data.train.users), torch.as_tensor(data.train.items)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.on_epoch_start(epoch, model, gen)  # a no-op for DNS; stateful samplers need it
        total, n_batches = 0.0, 0
        for idx in torch.randperm(len(users), generator=gen).split(1024):
            view = model.view(users[idx], items[idx])
            neg = sampler(users[idx], items[idx], view, generator=gen)
            loss = loss_fn(view.user_emb, view.pos_emb, neg)
            loss = loss + l2_regularization(view, neg, 1e-4)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n_batches = total + float(loss.detach()), n_batches + 1
        print(f"epoch {epoch + 1:3d}  loss {total / n_batches:.4f}")
    result = recneg.evaluate(model, data)  # full ranking; training and validation positives masked
    print(f"trained in {time.perf_counter() - start:.1f}s")
    print(f"test recall@20 {result.metrics['recall@20']:.4f}  ndcg@20 {result.metrics['ndcg@20']:.4f}")


if __name__ == "__main__":
    main()

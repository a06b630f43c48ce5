"""Sampled softmax over shared negatives: the fused loss against the plain autograd composition.

Run (from the repository root, nothing else running):

    python -m benchmarks.softmax_loss --threads 1

For each number of shared columns ``n`` (in-batch ``B`` plus ``B′`` uniform items, as MNS builds them), one
forward + backward of the loss at ``B = 2048``, ``d = 64``, τ = 0.1, with a log Q per column and the
accidental-hit mask, timed for

- ``fused``: ``recneg.softmax.sampled_softmax_loss`` (the shared path, an ``autograd.Function`` that builds,
  corrects, masks and exponentiates the ``[B, n]`` logits in one buffer which backward reuses);
- ``autograd``: the same formula composed from torch operations (``Q Vᵀ``, ``− log Q``, ``masked_fill``,
  ``logsumexp``, ``logaddexp``), which is what the loss computed before the fused path.

Rounds interleave the two, so machine noise hits both alike; the best round is reported with the ratio,
and the two losses and gradients are checked equal first.
Writes benchmarks/results/softmax_loss.json and .md.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import machine_stamp, md_table, write_results
from recneg.samplers.batch import BatchNegatives
from recneg.softmax import sampled_softmax_loss


def autograd_loss(user_emb, pos_emb, neg: BatchNegatives, temperature: float) -> torch.Tensor:
    """The loss as plain torch operations (no fused path): the reference the fused one replaces."""
    query = user_emb / temperature
    pos = (query * pos_emb).sum(-1)
    negs = query @ neg.emb.T - neg.log_q
    negs = negs.masked_fill(neg.mask, torch.finfo(negs.dtype).min)
    return (torch.logaddexp(pos, torch.logsumexp(negs, -1)) - pos).mean()


def make_inputs(n_columns: int, batch: int, dim: int, n_items: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(batch, dim, generator=g).requires_grad_()
    pos = torch.randn(batch, dim, generator=g).requires_grad_()
    cols = torch.randn(n_columns, dim, generator=g).requires_grad_()
    ids = torch.randint(n_items, (n_columns,), generator=g)
    pos_ids = ids[:batch]  # in-batch columns first, as in_batch/mns build them
    neg = BatchNegatives(
        emb=cols,
        ids=ids,
        log_q=torch.randn(n_columns, generator=g),
        mask=pos_ids[:, None] == ids[None, :],
        pos_log_q=torch.zeros(batch),
    )
    return user, pos, cols, neg


def time_one(fn, inputs, repeats: int) -> float:
    user, pos, cols, _ = inputs
    t0 = time.perf_counter()
    for _ in range(repeats):
        for t in (user, pos, cols):
            t.grad = None
        fn().backward()
    return (time.perf_counter() - t0) / repeats * 1e3


def markdown(payload: dict) -> str:
    """The report of one run (``payload`` as written to ``softmax_loss.json``)."""
    stamp, args = payload["machine"], payload["args"]
    table = [
        {
            **{k: str(r[k]) for k in ("B′", "columns n")},
            "autograd ms": f"{r['autograd ms']:.1f}",
            "fused ms": f"{r['fused ms']:.1f}",
            "speed-up": f"{r['speed-up']:.2f}×",
        }
        for r in payload["rows"]
    ]
    head = [
        "# Sampled softmax over shared negatives: fused loss vs autograd composition",
        "",
        f"Command: `python -m benchmarks.softmax_loss --threads {args['threads']}`",
        "",
        f"One forward + backward of the loss, B = {args['batch_size']}, d = {args['dim']}, τ = 0.1, log Q "
        f"per column, accidental-hit mask; best of {args['rounds']} interleaved rounds of {args['repeats']}. "
        f"Machine: {stamp['platform']}, {stamp['cpu_count']} cores, torch {stamp['torch']}, "
        f"{args['threads']} thread(s), {stamp['date']}.",
        "",
    ]
    return (
        "\n".join(head) + "\n" + md_table(table, ["B′", "columns n", "autograd ms", "fused ms", "speed-up"])
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n-uniform", default="0,1024,4096,8192", help="B′ values: n = B + B′ columns")
    ap.add_argument("--n-items", type=int, default=17632, help="id range of the columns (accidental hits)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for n_uniform in (int(x) for x in args.n_uniform.split(",")):
        n = args.batch_size + n_uniform
        inputs = make_inputs(n, args.batch_size, args.dim, args.n_items)
        user, pos, cols, neg = inputs
        fns = {
            "fused": lambda u=user, p=pos, ng=neg: sampled_softmax_loss(u, p, ng, temperature=0.1),
            "autograd": lambda u=user, p=pos, ng=neg: autograd_loss(u, p, ng, 0.1),
        }
        grads = {}
        for name, fn in fns.items():  # equal before timed
            for t in (user, pos, cols):
                t.grad = None
            loss = fn()
            loss.backward()
            grads[name] = [loss.detach()] + [t.grad.clone() for t in (user, pos, cols)]
        for a, b in zip(grads["fused"], grads["autograd"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(time_one(fn, inputs, args.repeats))
        best = {k: min(v) for k, v in times.items()}
        rows.append(
            {
                "B′": n_uniform,
                "columns n": n,
                "autograd ms": round(best["autograd"], 1),
                "fused ms": round(best["fused"], 1),
                "speed-up": round(best["autograd"] / best["fused"], 2),
            }
        )
        print(rows[-1], flush=True)
    payload = {"machine": machine_stamp(args.threads), "args": vars(args), "rows": rows}
    j, m = write_results("softmax_loss", payload, markdown(payload))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()

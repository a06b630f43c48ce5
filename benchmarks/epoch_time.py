"""Training-step time of samplers, as ratios to uniform in one interleaved run.

Run (from the repository root, ../shared/data present, nothing else running):

    python -m benchmarks.epoch_time --dataset gowalla --threads 2

For each configuration, ``--steps`` training steps (batch 2048, ``--optimizer``, R1) are timed in ``--rounds``
rounds that interleave the configurations, so machine noise hits all of them alike; the median step time
is reported with the extrapolated epoch time (steps per epoch = ceil(|train| / batch)) and the
ratio to uniform.

``--processes K`` repeats the whole measurement in K fresh processes, one after another, and reports the
median over processes of each process's median step time and of each process's ratio, with their ranges:
on the 2-core machine one configuration's median differed by up to 2× between processes (the same code,
minutes apart), more than most differences being measured.
Writes benchmarks/results/epoch_time_<dataset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import torch

import recneg
from benchmarks.common import DEFAULT_DATA, machine_stamp, md_table, peak_rss_mb, write_results
from recneg import kernels as compiled_kernels
from recneg.ans_kernels import use_compiled_ans
from recneg.config import TrainConfig
from recneg.data.datasets import load_dataset
from recneg.errors import ConfigError
from recneg.fused_step import AUTOGRAD, GRADIENTS
from recneg.losses import l2_regularization
from recneg.models.base import use_compiled_scorer

CONFIGS = {
    "mf-uniform": ("mf", "uniform", {}, "bpr", {}),
    "mf-dns-32": ("mf", "dns", {"n_candidates": 32}, "bpr", {}),
    "mf-pdns-32 (dns+softbpr)": ("mf", "dns", {"n_candidates": 32}, "softbpr", {"beta": 0.2}),
    "mf-pdns-32 (mixing)": ("mf", "pdns", {"n_candidates": 32}, "bpr", {}),
    "mf-dns_mn-4of32": ("mf", "dns_mn", {"n_candidates": 32, "n_selected": 4}, "bpr", {}),
    "mf-softmax_v-32": ("mf", "softmax_v", {"n_candidates": 32}, "bpr", {}),
    "mf-srns": ("mf", "srns", {}, "bpr", {}),
    "mf-ans-16": ("mf", "ans", {"n_candidates": 16}, "bpr", {}),
    "lightgcn-uniform": ("lightgcn", "uniform", {}, "bpr", {}),
    "lightgcn-dns-32": ("lightgcn", "dns", {"n_candidates": 32}, "bpr", {}),
    "lightgcn-mixgcf-16": ("lightgcn", "mixgcf", {"n_candidates": 16}, "kpair", {}),
    "lightgcn-ans-16": ("lightgcn", "ans", {"n_candidates": 16}, "bpr", {}),
}


class CannotRun(Exception):
    """This optimiser cannot run this configuration (``online_sgd`` beside a sampler of synthetic rows)."""


class Runner:
    def __init__(
        self,
        split,
        spec,
        batch_size: int,
        seed: int = 0,
        optimizer: str = "adam",
        device="cpu",
        fused: bool = True,
        kernels: bool = True,
        defer: bool = True,
        closed_form: bool = True,
        keep_memory: bool = True,
    ):
        from recneg.fused_step import FusedMFStep, fused_step_blocker
        from recneg.optim import make_optimizer, use_sparse_gradients
        from recneg.utils import keep_freed_memory

        if keep_memory:  # as the trainer does by default (TrainConfig.keep_freed_memory; process-wide)
            keep_freed_memory()

        model_name, sampler_name, sampler_args, loss_name, loss_args = spec
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = recneg.build_model(model_name, split.train, dim=64).to(self.device)
        self.candidates = int(sampler_args.get("n_candidates", 1))  # items drawn per pair
        if sampler_name in ("ans", "dens"):
            sampler_args = {**sampler_args, "dim": 64}
        self.sampler = recneg.build_sampler(sampler_name, **sampler_args).bind(split.train).to(self.device)
        self.loss = recneg.build_loss(loss_name, **loss_args)
        params = list(self.model.parameters()) + list(self.sampler.parameters())
        if optimizer == "sparse_adam" and not self.model.supports_sparse_gradients:
            optimizer = "adam"  # LightGCN: the propagation makes every gradient dense
        use_sparse_gradients(self.model, optimizer)
        self.optimizer = optimizer
        self.opt = make_optimizer(optimizer, params, 1e-3)
        blocker = fused_step_blocker(self.model, self.sampler, self.loss, "r1", distributed=False)
        self.fused = (
            FusedMFStep(
                self.model,
                self.sampler,
                self.loss,
                1e-4,
                self.opt,
                use_kernels=kernels,
                defer=defer,
                closed_form=closed_form,
            )
            if fused and not blocker
            else None
        )
        if optimizer == "online_sgd":  # no autograd path: the compiled pair-by-pair step or nothing
            if self.fused is None:
                raise CannotRun(f"{blocker or 'fused step off'}")
            self.fused.check_online_sgd()
        self.users = torch.as_tensor(split.train.users, device=self.device)
        self.items = torch.as_tensor(split.train.items, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        perm = torch.randperm(len(self.users), generator=torch.Generator().manual_seed(seed))
        self.perm = perm.to(self.device)
        self.batch_size = batch_size
        self.cursor = 0
        self.kernels = kernels

    def step(self) -> None:
        if self.kernels:
            self._step()
            return
        # the tensor path throughout: candidates gathered, then bmm; ANS's auxiliary losses by autograd
        previous, previous_ans = use_compiled_scorer(False), use_compiled_ans(False)
        try:
            self._step()
        finally:
            use_compiled_scorer(previous)
            use_compiled_ans(previous_ans)

    def flush(self) -> None:
        """Apply dense Adam's deferred steps (as the trainer does at the end of an epoch)."""
        if self.fused is not None:
            self.fused.flush()

    def _step(self) -> None:
        if self.cursor + self.batch_size > len(self.perm):
            self.cursor = 0
        idx = self.perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        u, p = self.users[idx], self.items[idx]
        if self.fused is not None:  # the trainer's hand-written MF step (recneg.fused_step)
            _, _, _, status = self.fused(u, p, self.gen)
            if status == AUTOGRAD:
                raise RuntimeError("the fused step fell back to autograd: this benchmark times one path")
            if status == GRADIENTS:
                self.opt.step()
                self.fused.clear()
            return
        view = self.model.view(u, p)
        neg = self.sampler(u, p, view, generator=self.gen)
        loss = self.loss(view.user_emb, view.pos_emb, neg) + l2_regularization(view, neg, 1e-4)
        if neg.aux_loss is not None:
            loss = loss + neg.aux_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _step_kind(runner: Runner) -> str:
    if runner.fused is None:
        return "autograd"
    online = runner.optimizer == "online_sgd"
    return "compiled" if runner.fused.compiled or online else "fused"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gowalla")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument(
        "--tag", default="", help="appended to the results' file name (a partial table beside the full one)"
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument(
        "--optimizer",
        default="adam",
        help="adam | sparse_adam (models that cannot use it keep adam) | online_sgd (mf with item-row "
        "samplers only; use --fused-step auto)",
    )
    ap.add_argument(
        "--fused-step",
        default="both",
        choices=("both", "auto", "off"),
        help="both: time each config the fused MF step serves also with autograd (the trainer's "
        "fused_step='off') and, where it runs the compiled kernels, also on its tensor path (no compiled "
        "kernels, candidates gathered and scored with bmm); auto: as the "
        "trainer runs by default; off: autograd only",
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="repeat the measurement in this many fresh processes and report medians and ranges over them",
    )
    ap.add_argument(
        "--warm-up-steps",
        type=int,
        default=1,
        help="training steps each configuration takes before timing (first-use allocations; more to time a "
        "trained model's steps: Adam's v is tiny in the first ~150 steps, where deferred rows are "
        "replayed step by step)",
    )
    ap.add_argument(
        "--step-by-step",
        action="store_true",
        help="with adam: also time each compiled config with its deferred steps replayed one by one "
        "(the '(step by step)' rows) instead of in closed form",
    )
    ap.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)  # a child of --processes
    args = ap.parse_args(argv)
    if args.processes > 1:
        _over_processes(args, list(argv if argv is not None else sys.argv[1:]))
        return
    torch.set_num_threads(args.threads)
    TrainConfig(threads=args.threads)  # validates
    load_start = _uptime()
    split = load_dataset(args.dataset, data_dir=args.data_dir, valid_ratio=0.0, download=False)
    names = args.configs.split(",")
    from recneg.utils import resolve_device

    device = resolve_device(args.device)
    runners = {}
    skipped: dict[str, str] = {}
    ans_compiled_here = device.type == "cpu" and compiled_kernels.AVAILABLE  # where recneg.ans_kernels serves
    for n in list(names):
        try:
            runners[n] = Runner(
                split,
                CONFIGS[n],
                args.batch_size,
                optimizer=args.optimizer,
                device=device,
                fused=args.fused_step != "off",
            )
        except (CannotRun, ConfigError) as exc:  # online_sgd serves MF over item rows only: list the rest
            skipped[n] = str(exc)
            continue
        if args.fused_step == "both" and runners[n].fused is not None and args.optimizer != "online_sgd":
            twins = {f"{n} (autograd)": {"fused": False}}
            if runners[n].fused.compiled:
                twins = {f"{n} (tensor)": {"kernels": False}, **twins}
                if args.optimizer == "adam":  # the compiled step with a dense pass over both tables per step
                    twins = {f"{n} (no defer)": {"defer": False}, **twins}
                    if args.step_by_step:  # deferred steps replayed one by one instead of in closed form
                        twins = {f"{n} (step by step)": {"closed_form": False}, **twins}
        elif args.fused_step == "both" and CONFIGS[n][1] == "ans" and ans_compiled_here:
            twins = {f"{n} (tensor)": {"kernels": False}}  # its auxiliary losses by autograd
        else:
            twins = {}
        for twin, kind in twins.items():
            runners[twin] = Runner(
                split, CONFIGS[n], args.batch_size, optimizer=args.optimizer, device=device, **kind
            )
            runners[twin].candidates = runners[n].candidates
    names = list(runners)
    for r in runners.values():  # warm-up: first-use allocations, bitmap build; --warm-up-steps of training
        for _ in range(max(1, args.warm_up_steps)):
            r.step()
        r.flush()
    times: dict[str, list[float]] = {n: [] for n in names}
    cuda_peak: dict[str, float] = {}
    for r in range(args.rounds):
        # every other round in reverse: a runner that always follows the same other one inherits its cache
        # state (the first of a configuration's twins found the positives' bitmap evicted by the last)
        for n in names if r % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                runners[n].step()
            runners[n].flush()  # deferred dense-Adam steps are part of the time
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                cuda_peak[n] = max(cuda_peak.get(n, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
            times[n].append((time.perf_counter() - t0) / args.steps)
    steps_per_epoch = math.ceil(len(split.train) / args.batch_size)
    base = statistics.median(times[names[0]])
    rows = []
    for n in names:
        med = statistics.median(times[n])
        rows.append(
            {
                "config": n,
                "optimizer": runners[n].optimizer,
                "step": _step_kind(runners[n]),
                "ms/step (median)": 1000 * med,
                "epoch s (extrapolated)": med * steps_per_epoch,
                f"ratio to {names[0]}": med / base,
                "pairs/s": args.batch_size / med,
                "negatives drawn/s": args.batch_size * runners[n].candidates / med,
                **({"cuda max allocated MB": cuda_peak[n]} if n in cuda_peak else {}),
            }
        )
    if args.emit_json:
        print(
            json.dumps(
                {"rows": rows, "raw_seconds_per_step": times, "skipped": skipped, "split": repr(split)}
            )
        )
        return
    stamp = {**machine_stamp(args.threads), "uptime_at_start": load_start, "uptime_at_end": _uptime()}
    cmd = "python -m benchmarks.epoch_time " + " ".join(argv if argv is not None else sys.argv[1:])
    md = (
        f"# Training-step time on {args.dataset}\n\nCommand: `{cmd}`\n\n"
        f"{repr(split)}; batch {args.batch_size}, "
        f"dim 64, R1; {args.rounds} interleaved rounds of {args.steps} steps; peak RSS "
        f"{peak_rss_mb():.0f} MB.\n\nMachine: {stamp}\n\n" + md_table(rows, list(rows[0]))
    )
    if skipped:
        md += "\nNot run with this optimiser:\n\n" + "".join(f"- {n}: {why}\n" for n, why in skipped.items())
    write_results(
        f"epoch_time_{args.dataset}"
        + ("" if args.optimizer == "adam" else f"_{args.optimizer}")
        + (f"_{args.tag}" if args.tag else ""),
        {"machine": stamp, "command": cmd, "rows": rows, "raw_seconds_per_step": times, "skipped": skipped},
        md,
    )
    print(md)


def _over_processes(args, argv: list[str]) -> None:
    """Run the measurement in ``args.processes`` fresh processes; write medians and ranges over them."""
    load_start = _uptime()
    runs = []
    for i in range(args.processes):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.epoch_time", *argv, "--processes", "1", "--emit-json"],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}/{args.processes} done", file=sys.stderr)
    names = [r["config"] for r in runs[0]["rows"]]
    base = names[0]
    rows = []
    for n in names:
        per = [next(r for r in run["rows"] if r["config"] == n) for run in runs]
        ms = [r["ms/step (median)"] for r in per]
        ratio = [r[f"ratio to {base}"] for r in per]
        twin = f"{n} (tensor)"  # the same configuration on the tensor path: their ratio, process by process
        vs_tensor = (
            [
                m / next(r for r in run["rows"] if r["config"] == twin)["ms/step (median)"]
                for m, run in zip(ms, runs, strict=True)
            ]
            if twin in names
            else None
        )
        rows.append(
            {
                "config": n,
                "optimizer": per[0]["optimizer"],
                "step": per[0]["step"],
                "ms/step (median)": statistics.median(ms),
                "ms/step range": f"{min(ms):.2f}–{max(ms):.2f}",
                "epoch s (extrapolated)": statistics.median(r["epoch s (extrapolated)"] for r in per),
                f"ratio to {base}": statistics.median(ratio),
                "ratio range": f"{min(ratio):.2f}–{max(ratio):.2f}",
                "compiled / tensor": (
                    f"{statistics.median(vs_tensor):.2f} ({min(vs_tensor):.2f}–{max(vs_tensor):.2f})"
                    if vs_tensor
                    else ""
                ),
                "ms/step per process": [round(x, 3) for x in ms],
            }
        )
    stamp = {**machine_stamp(args.threads), "uptime_at_start": load_start, "uptime_at_end": _uptime()}
    cmd = "python -m benchmarks.epoch_time " + " ".join(argv)
    md = (
        f"# Training-step time on {args.dataset}, over {args.processes} processes\n\nCommand: `{cmd}`\n\n"
        f"{runs[0]['split']}; batch {args.batch_size}, dim 64, R1; in each of {args.processes} fresh "
        f"processes, run one after another, {args.rounds} interleaved rounds of {args.steps} steps. Each "
        f"figure is the median over processes of a process's median (and its range over processes); ratios "
        f"are taken within each process first.\n\nMachine: {stamp}\n\n"
        + md_table(rows, [c for c in rows[0] if c != "ms/step per process"])
    )
    suffix = ("" if args.optimizer == "adam" else f"_{args.optimizer}") + (f"_{args.tag}" if args.tag else "")
    write_results(
        f"epoch_time_{args.dataset}{suffix}_{args.processes}proc",
        {"machine": stamp, "command": cmd, "rows": rows, "runs": runs},
        md,
    )
    print(md)


if __name__ == "__main__":
    main()

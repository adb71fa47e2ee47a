"""Soft-target cost: forward + backward of every loss on a soft target vs the same loss on nnU-Net's hard target.

Run from the repository root::

    .venv/bin/python benchmarks/bench_soft_targets.py                    # CPU 2x3x64^3, 1 thread, CPU clock
    .venv/bin/python benchmarks/bench_soft_targets.py --quick            # tiny smoke run, numbers meaningless

Label mode: an int16 label map ``(B, 1, ...)`` (what nnU-Net's loader gives) vs class probabilities
``(B, C, ...)`` (a label-smoothed one-hot, what a soft-label trainer hands the loss). Region mode: bool maps vs
float maps in [0, 1]. The soft target includes its validation (range and sum checks) -- the price a soft-label
training iteration pays in the loss. Rounds alternate hard and soft, median over rounds; "ratio" = soft / hard
(issue 14 asks for a soft-target iteration within 10 % of a hard one). CPU time of the computing thread
(``time.thread_time``) so that other processes on a shared machine barely change the numbers.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm

import nnunet_losses


def targets(region: bool, shape, generator):
    b, c, *spatial = shape
    labels = torch.randint(0, c + (1 if region else 0), (b, 1, *spatial), generator=generator)
    if region:  # nested regions r = label > r, bool as nnU-Net's transform makes them
        hard = torch.cat([labels > r for r in range(c)], 1)
        soft = (hard.double() * 0.9 + 0.05).float()
        return hard, soft
    onehot = torch.zeros((b, c, *spatial)).scatter_(1, labels, 1)
    return labels.to(torch.int16), onehot * 0.9 + 0.1 / c


def step_time(loss, logits, target) -> float:
    logits.grad = None
    start = time.thread_time()
    loss(logits, target).backward()
    return time.thread_time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2,3,64,64,64", help="B,C,X,Y[,Z] of the logits (default 2,3,64,64,64)")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per loss and mode (default 7)")
    parser.add_argument("--quick", action="store_true", help="tiny shape and 2 rounds (smoke run)")
    args = parser.parse_args(argv)
    shape = (2, 3, 8, 8, 8) if args.quick else tuple(int(s) for s in args.shape.split(","))
    reps = 2 if args.quick else args.reps
    if reps < 1 or len(shape) not in (4, 5) or min(shape) < 1:
        parser.error("--reps must be >= 1 and --shape 4 or 5 positive integers")
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    print(f"shape {shape}, {reps} rounds, 1 thread, CPU time; ratio = soft target / hard target")
    print(f"{'loss':18s} {'mode':7s} {'hard ms':>9s} {'soft ms':>9s} {'ratio':>6s}")
    jobs = [(n, r) for r in (False, True) for n in nnunet_losses.available_losses()]
    for name, region in tqdm(jobs, desc="losses", leave=False):
        kwargs = {"class_priors": [0.3] * shape[1] if region else [1 / shape[1]] * shape[1]} if name == "wce" else {}
        loss = nnunet_losses.get_loss(name, region_based=region, **kwargs)
        hard, soft = targets(region, shape, g)
        logits = torch.randn(shape, generator=g).requires_grad_()
        times = {"hard": [], "soft": []}
        for _ in range(reps + 1):  # the first round warms up
            for kind, target in (("hard", hard), ("soft", soft)):
                times[kind].append(step_time(loss, logits, target))
        med = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
        print(f"{name:18s} {'region' if region else 'label':7s} {med['hard']:9.1f} {med['soft']:9.1f} "
              f"{med['soft'] / med['hard']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

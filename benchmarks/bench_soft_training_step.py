"""A soft-target training iteration next to a hard-target one: nnU-Net's ``train_step`` (forward, loss, backward,
optimiser step) of our trainers on the same batches, same initial weights, timed in interleaved rounds.

Run from the repository root::

    .venv/bin/python benchmarks/bench_soft_training_step.py           # 3D rater phantom, nnU-Net's default plans
    .venv/bin/python benchmarks/bench_soft_training_step.py --quick   # smoke run (seconds), numbers meaningless

What is measured: a K = 3 rater phantom (3D, 32^3, ``nnunet-losses phantom --raters 3``) is planned with nnU-Net;
batches are drawn once from the multi-rater trainer's data loader (nnU-Net's augmentation; channel 0 is labelsTr,
channels 1..3 the raters). Every trainer then runs ``train_step`` on the same batches from the same initial
weights; the hard-target trainers get channel 0 only (nnU-Net's usual target). Per loss the soft-target trainers
-- rater mean (``MultiRaterMean``) and boundary label smoothing built in the step (``BoundarySmoothing``) -- are
reported as the ratio of their median step time to the hard-target trainer of the same loss, measured in the same
rounds. Target: within 10 % (ratio <= 1.10). On CPU the clock is the computing thread's CPU time
(``time.thread_time``, one torch thread), so that other processes on a shared machine barely change the numbers
(``--clock wall`` for wall time); on CUDA wall time after synchronising.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP is many times slower on a shared CPU

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

LOSSES = ("CEonly", "DML", "SoftDice")
KINDS = ("MultiRaterMean", "BoundarySmoothing")


def plan_phantom(root: Path, quick: bool) -> Path:
    from nnunet_losses.research.phantom import write_phantom_dataset
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir()
        os.environ[f"nnUNet_{k}"] = str(root / k)
    raw = write_phantom_dataset(root / "raw", 970, dim=3, n_cases=6, shape=(32, 32, 32),
                                radius_range=(5, 7), n_raters=3, seed=0)
    env = dict(os.environ, nnUNet_compile="false")
    env.pop("nnUNet_n_proc_DA", None)  # 0 (right for the timed steps) crashes nnU-Net's planner
    proc = subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "970", "-c",
                           "3d_fullres", "-np", "1", "-npfp", "1"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"nnUNetv2_plan_and_preprocess failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return root / "preprocessed" / raw.name


def make_trainer(cls, folder: Path, device):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    torch.manual_seed(0)
    trainer = cls(plans, "3d_fullres", 0, load_json(str(folder / "dataset.json")), device=device)
    trainer.initialize()
    return trainer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; numbers meaningless")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="cpu: CPU time of the computing thread (time.thread_time; with --threads 1 and on CPU "
                         "other processes on a shared machine barely change it); wall: perf_counter [cpu]")
    args = ap.parse_args(argv)
    os.environ.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="false")
    import torch
    import nnunet_losses.trainers as T
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = 2 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        folder = plan_phantom(Path(tmp), args.quick)
        trainers = {}
        for loss in args.losses:
            trainers[loss] = make_trainer(T.TRAINERS[f"nnUNetTrainer_{loss}"], folder, device)
            for kind in KINDS:
                trainers[f"{kind}_{loss}"] = make_trainer(T.TRAINERS[f"nnUNetTrainer_{kind}_{loss}"], folder, device)
        loader, _ = trainers[f"MultiRaterMean_{args.losses[0]}"].get_dataloaders()
        clock = time.thread_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
        batches = [next(loader) for _ in range(rounds + 1)]
        times = {name: [] for name in trainers}
        for r, batch in enumerate(batches):
            for name, trainer in trainers.items():
                rater_batch = name.startswith("MultiRater")
                target = batch["target"] if rater_batch else [t[:, :1] for t in batch["target"]]
                b = {"data": batch["data"], "target": target}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                trainer.train_step(b)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r:  # round 0 warms up
                    times[name].append(clock() - t0)
    shape = tuple(batches[0]["data"].shape)
    print(f"soft- vs hard-target train_step, {device.type}, batch {shape}, {rounds} rounds, "
          f"{'thread CPU time' if clock is time.thread_time else 'wall clock'}, median ms "
          f"(ratio = soft / hard of the same loss)")
    print("| loss | hard (ms) | " + " | ".join(f"{k} (ms) | ratio" for k in KINDS) + " |")
    print("|---|---|" + "---|---|" * len(KINDS))
    worst = 0.0
    for loss in args.losses:
        hard = statistics.median(times[loss])
        cells = []
        for kind in KINDS:
            soft = statistics.median(times[f"{kind}_{loss}"])
            worst = max(worst, soft / hard)
            cells.append(f"{1000 * soft:.1f} | {soft / hard:.2f}x")
        print(f"| {loss} | {1000 * hard:.1f} | " + " | ".join(cells) + " |")
    print(f"worst soft/hard ratio {worst:.2f}x: {'within' if worst <= 1.10 else 'NOT within'} 10 %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

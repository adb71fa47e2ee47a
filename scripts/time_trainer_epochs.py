#!/usr/bin/env python
"""Epoch time of every loss trainer of nnunet-losses beside nnU-Net's own nnUNetTrainer, in the same run.

Writes the synthetic 3D labels dataset (10 cases of 32^3) into a temporary nnU-Net workspace, plans it with
``nnUNetv2_plan_and_preprocess``, builds every trainer (``on_train_start``: network, optimizer, nnU-Net's data
loaders with its augmentation) and one untimed training step each, then runs ``--rounds`` rounds in which every
trainer runs one nnU-Net epoch (``on_epoch_start`` ... ``on_epoch_end``: ITERATIONS training steps,
VAL_ITERATIONS validation steps, logging, progress plot), in a rotating order so that all see the same machine
state. Before each epoch the random generators (Python's, NumPy's global one -- which nnU-Net's data loader and
batchgeneratorsv2's transforms draw from -- and torch's) are seeded with the round number, so in round r every
trainer trains on the same patches with the same augmentation: the epochs of one round differ only in the loss
(and the network's random initial weights, which do not change the work), and their paired ratio is not diluted
by the data loader's random workload. Per trainer it prints the median over rounds of

* the CPU time of the epoch (``time.process_time``; with ``--threads 1`` other processes barely change it), and
* nnU-Net's own "Epoch time" (its logged start/end timestamps, wall clock),

and each as the median over rounds of its paired ratio to nnUNetTrainer's epoch of the same round (the issue's
target: within 3 %), with the smallest and largest paired CPU ratio as a noise gauge.

    .venv/bin/python scripts/time_trainer_epochs.py                         # loss trainers, default plans
    .venv/bin/python scripts/time_trainer_epochs.py --rounds 3 --iterations 10
    .venv/bin/python scripts/time_trainer_epochs.py --trainers nnUNetTrainer_CEonly --small-plans
"""
from __future__ import annotations

import os

# before torch is imported: on a shared CPU, OpenMP's busy-waiting makes multi-threaded ops many times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

BASELINE = "nnUNetTrainer"
#: one trainer per loss of the registry (U-Net, nnU-Net's defaults otherwise)
FAMILIES = [BASELINE, "nnUNetTrainer_CEonly", "nnUNetTrainer_wCE", "nnUNetTrainer_Focal", "nnUNetTrainer_SoftDice",
            "nnUNetTrainer_SoftJaccard", "nnUNetTrainer_Lovasz", "nnUNetTrainer_DSCpp", "nnUNetTrainer_Tversky",
            "nnUNetTrainer_FocalTversky", "nnUNetTrainer_Combo", "nnUNetTrainer_UnifiedFocal",
            "nnUNetTrainer_TverskyPP", "nnUNetTrainer_FocalTverskyPP", "nnUNetTrainer_ComboPP",
            "nnUNetTrainer_UnifiedFocalPP", "nnUNetTrainer_DiceCE", "nnUNetTrainer_DML", "nnUNetTrainer_JML",
            "nnUNetTrainer_MetricTversky"]


def seed_everything(seed: int) -> None:
    """Seed every generator an nnU-Net epoch draws from (data loader, augmentation, torch)."""
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_epoch(trainer, seed: int) -> tuple:
    """One nnU-Net epoch as ``nnUNetTrainer.run_training`` runs it, on the data and augmentation of ``seed``;
    (CPU seconds, nnU-Net's logged epoch seconds)."""
    seed_everything(seed)
    cpu0 = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
        trainer.on_train_epoch_end(outs)
        import torch
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            vals = [trainer.validation_step(next(trainer.dataloader_val))
                    for _ in range(trainer.num_val_iterations_per_epoch)]
            trainer.on_validation_epoch_end(vals)
        epoch = trainer.current_epoch
        trainer.on_epoch_end()
    cpu = time.process_time() - cpu0
    log = trainer.logger
    return cpu, log.get_value("epoch_end_timestamps", epoch) - log.get_value("epoch_start_timestamps", epoch)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", nargs="+", default=FAMILIES)
    parser.add_argument("--iterations", type=int, default=10, help="training steps per epoch (nnU-Net: 250)")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation steps per epoch (nnU-Net: 50)")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per trainer, in rotating order (median)")
    parser.add_argument("--small-plans", action="store_true", help="narrow network (tests' nnUNetPlansSmall)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: steadiest CPU times on a shared machine; nnUNetv2_train "
                             "-device cpu uses all cores)")
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)
    import nnunet_losses.trainers as T
    unknown = [n for n in args.trainers if n != BASELINE and n not in T.TRAINERS]
    if unknown:
        parser.error(f"unknown trainer(s) {', '.join(unknown)}; see nnunet-losses trainers for the names")
    if args.rounds < 1 or args.iterations < 1 or args.val_iterations < 0 or args.threads < 1:
        parser.error("--rounds, --iterations and --threads must be >= 1, --val-iterations >= 0")

    root = Path(tempfile.mkdtemp(prefix="nnunet_losses_timing_"))
    for sub in ("raw", "preprocessed", "results"):
        (root / sub).mkdir()
        os.environ[f"nnUNet_{sub}"] = str(root / sub)
    os.environ["nnUNet_compile"] = "false"
    from nnunet_losses.research.synthetic import write_synthetic_dataset
    write_synthetic_dataset(root / "raw", 990, kind="labels", dim=3, n_cases=10, shape=(32, 32, 32), seed=990)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", "3d_fullres", "-npfp", "2",
                    "-np", "2"], check=True, capture_output=True)
    os.environ["nnUNet_n_proc_DA"] = "0"  # after planning (0 crashes the planner); data augmentation in-process

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.set_num_threads(args.threads)
    folder = next((root / "preprocessed").glob("Dataset990_*"))
    plans_file = folder / "nnUNetPlans.json"
    if args.small_plans:
        plans = json.loads(plans_file.read_text())
        plans["plans_name"] = "nnUNetPlansSmall"
        kw = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        kw["features_per_stage"] = [min(4 * 2 ** i, 32) for i in range(len(kw["features_per_stage"]))]
        plans_file = folder / "nnUNetPlansSmall.json"
        plans_file.write_text(json.dumps(plans))
    os.environ.pop("NNUNET_LOSSES_EPOCHS", None)
    os.environ["NNUNET_LOSSES_ITERATIONS"] = str(args.iterations)
    os.environ["NNUNET_LOSSES_VAL_ITERATIONS"] = str(args.val_iterations)

    trainers = {}
    for name in args.trainers:
        cls = nnUNetTrainer if name == BASELINE else T.TRAINERS[name]
        plans = load_json(str(plans_file))
        plans["continue_training"] = False  # nnUNetTrainer.__init__ pops this key (set by nnUNetv2_train)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = cls(plans, "3d_fullres", 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))
            trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = args.iterations, args.val_iterations
            trainer.num_epochs = args.rounds + 1
            trainer.on_train_start()
            trainer.train_step(next(trainer.dataloader_train))  # warm-up, not timed
        trainers[name] = trainer
    cpu = {name: [] for name in trainers}
    wall = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            c, w = run_epoch(trainers[name], seed=r)
            cpu[name].append(c)
            wall[name].append(w)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    med_wall = {n: statistics.median(v) for n, v in wall.items()}
    has_base = BASELINE in cpu
    print("| trainer | CPU s/epoch | ratio (min..max) | nnU-Net epoch time s | ratio |\n|---|---:|---:|---:|---:|")
    ratio = {}
    for name in names:
        rc = rw = "-"
        if has_base:
            paired = [c / b for c, b in zip(cpu[name], cpu[BASELINE])]
            ratio[name] = statistics.median(paired)
            rc = f"{ratio[name]:.3f} ({min(paired):.3f}..{max(paired):.3f})"
            rw = f"{statistics.median(w / b for w, b in zip(wall[name], wall[BASELINE])):.3f}"
        print(f"| {name} | {med_cpu[name]:.2f} | {rc} | {med_wall[name]:.2f} | {rw} |", flush=True)
    if has_base:
        off = [f"{n} {r:.3f}" for n, r in ratio.items() if abs(r - 1) > 0.03]
        print(f"\nwithin 3 % of {BASELINE} (CPU time, paired by round): " + ("all" if not off else "not " + ", ".join(off)))
    results = {"cpu_seconds": cpu, "epoch_seconds": wall}
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), **results}, indent=2))
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

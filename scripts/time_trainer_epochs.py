#!/usr/bin/env python
"""Wall time of one short nnU-Net epoch per trainer (family) of nnunet-losses, on this machine's CPU.

Writes the synthetic 3D labels dataset (10 cases of 32^3) into a temporary nnU-Net workspace, plans it with
``nnUNetv2_plan_and_preprocess``, then for each trainer runs nnU-Net's own epoch (``on_epoch_start`` ...
``on_epoch_end``: ITERATIONS training steps with nnU-Net's data augmentation, VAL_ITERATIONS validation steps,
checkpoint/plot bookkeeping) and reports nnU-Net's "Epoch time" (its logged epoch start/end timestamps).
One warm-up step per trainer is not timed.

    .venv/bin/python scripts/time_trainer_epochs.py                   # nnU-Net's default plans
    .venv/bin/python scripts/time_trainer_epochs.py --small-plans     # the test suite's narrow network
    .venv/bin/python scripts/time_trainer_epochs.py --trainers nnUNetTrainer_CEonly nnUNetTrainer_UNet_CE
"""
from __future__ import annotations

import os

# before torch is imported: on a shared CPU, OpenMP's busy-waiting makes multi-threaded ops many times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

FAMILIES = ["nnUNetTrainer", "nnUNetTrainer_CEonly", "nnUNetTrainer_wCE", "nnUNetTrainer_Focal",
            "nnUNetTrainer_SoftDice", "nnUNetTrainer_SoftJaccard", "nnUNetTrainer_Lovasz", "nnUNetTrainer_DSCpp",
            "nnUNetTrainer_Tversky", "nnUNetTrainer_FocalTversky", "nnUNetTrainer_Combo",
            "nnUNetTrainer_UnifiedFocal", "nnUNetTrainer_UnifiedFocalPP", "nnUNetTrainer_DiceCE",
            "nnUNetTrainer_SoftDice_finetune", "nnUNetTrainer_LR_CE", "nnUNetTrainer_ConvNet_CE",
            "nnUNetTrainer_UNet_CE"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", nargs="+", default=FAMILIES)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--val-iterations", type=int, default=2)
    parser.add_argument("--small-plans", action="store_true", help="narrow network (tests' nnUNetPlansSmall)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (nnUNetv2_train -device cpu uses all cores)")
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)

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

    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    import nnunet_losses.trainers as T

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

    results = {}
    print(f"one epoch = {args.iterations} training + {args.val_iterations} validation iterations, 3D 32^3, "
          f"batch 2, {'small' if args.small_plans else 'default'} plans, CPU, {args.threads} torch threads")
    for name in args.trainers:
        cls = nnUNetTrainer if name == "nnUNetTrainer" else T.TRAINERS[name]
        plans = load_json(str(plans_file))
        plans["continue_training"] = False
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = cls(plans, "3d_fullres", 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))
            trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = args.iterations, args.val_iterations
            trainer.on_train_start()
            trainer.train_step(next(trainer.dataloader_train))  # warm-up, not timed
            trainer.on_epoch_start()
            trainer.on_train_epoch_start()
            outs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
            trainer.on_train_epoch_end(outs)
            with torch.no_grad():
                trainer.on_validation_epoch_start()
                vals = [trainer.validation_step(next(trainer.dataloader_val))
                        for _ in range(trainer.num_val_iterations_per_epoch)]
                trainer.on_validation_epoch_end(vals)
            trainer.on_epoch_end()
        log = trainer.logger
        seconds = log.get_value("epoch_end_timestamps", 0) - log.get_value("epoch_start_timestamps", 0)
        results[name] = seconds
        print(f"{name:36s} {seconds:7.2f} s/epoch  ({seconds / args.iterations:.3f} s/iteration incl. validation)"
              f"  train loss {float(np.mean([o['loss'] for o in outs])):.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "seconds_per_epoch": results}, indent=2))
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One training of a study: nnU-Net's own ``nnUNetv2_train DATASET CONFIG FOLD -tr T -p P --npz [--c]`` in a
subprocess, its output appended to ``<study>/logs/``. Runs wherever an executor puts it (this process, a local
worker per GPU, a SLURM array task), so it is a plain module-level function of picklable arguments."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from nnunet_losses.study.config import Study, StudyError
from nnunet_losses.study.runs import RunStatus, run_complete, run_status, validation_cases, write_record


def _executable(command: str) -> str:
    """``command`` from this interpreter's bin folder (the venv nnU-Net is installed in), else from PATH."""
    found = shutil.which(command, path=os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")]))
    if found is None:
        raise StudyError(f"{command}: not found next to {sys.executable} nor on PATH; install nnunetv2 there or "
                         f"set train_command in the study file")
    return found


def training_environment(study: Study, gpu: Optional[int] = None) -> dict:
    """This process's environment plus the study's ``[env]``, with our trainers on nnU-Net's search path
    (kept after the user's own ``nnUNet_extTrainer`` folders)."""
    from nnunet_losses.trainers import trainer_path
    env = dict(os.environ, **study.env)
    ours = str(trainer_path())
    paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    env["nnUNet_extTrainer"] = os.pathsep.join(paths + ([ours] if ours not in paths else []))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def training_command(study: Study, status: RunStatus) -> List[str]:
    cmd = [_executable(study.train_command), study.dataset, study.configuration, status.fold, "-tr", status.trainer,
           "-p", study.plans, "--npz", "-device", study.device]
    if status.fold_folder.is_dir():
        # nnU-Net continues from checkpoint_latest (or starts afresh when it has none): never a second run
        # writing over a first one's files
        cmd.append("--c")
    return cmd


def _record(study: Study, status: RunStatus, state: str, log: Path, **extra) -> None:
    slurm = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    write_record(study, status.trainer, status.fold, {
        "state": state, "pid": os.getpid(), "host": socket.gethostname(), "log": str(log),
        "slurm_job": f"slurm job {slurm}" + (f"_{task}" if task else "") if slurm else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "time": time.time(), **extra})


def train_run(study: Study, trainer: str, fold: str, gpu: Optional[int] = None) -> str:
    """Train one (trainer, fold) unless it is done or running; returns its final state."""
    status = run_status(study, trainer, fold, validation_cases(study, fold))
    if not status.needs_training:
        return status.state
    log = study.folder / "logs" / f"{trainer}__fold_{fold}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = training_command(study, status)
    _record(study, status, "running", log, command=cmd)
    with open(log, "a") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, env=training_environment(study, gpu), stdout=f, stderr=subprocess.STDOUT).returncode
    state = "done" if rc == 0 and run_complete(status.fold_folder, validation_cases(study, fold)) else "failed"
    _record(study, status, state, log, command=cmd, returncode=rc)
    return state


def train_runs(study: Study, runs: List[tuple], gpu: Optional[int] = None) -> List[str]:
    """A worker's share of the trainings, one after another (one worker per GPU)."""
    return [train_run(study, t, f, gpu) for t, f in runs]

"""Where the trainings run. No scheduler of ours: one after another in this process, submitit's
``LocalExecutor`` for one worker per GPU, submitit's ``SlurmExecutor`` for a SLURM job array.

* ``local``, at most one GPU: the trainings run one after another here (a kill stops them; the next
  ``study run`` continues with nnU-Net's ``--c``);
* ``local`` with ``gpus = [0, 1, ...]``: one submitit worker process per GPU (``CUDA_VISIBLE_DEVICES`` set by
  submitit), each training its round-robin share of the runs one after another;
* ``slurm``: one array task per (trainer, fold) (partition, time, GPUs, memory, setup lines and any other
  sbatch option from the study file), then the evaluation/report job with ``--dependency=afterany:<array>``, so
  that the report is written even when a training failed (it lists what is missing).
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Tuple

from nnunet_losses.study.config import Study
from nnunet_losses.study.training import train_run, train_runs

#: local workers: nnU-Net trainings run for days; submitit's default local timeout is 2 minutes
LOCAL_TIMEOUT_MIN = 60 * 24 * 365


def run_sequentially(study: Study, runs: List[Tuple[str, str]], step: Callable[[str], None]) -> List[str]:
    gpu = study.gpus[0] if study.gpus else None
    states = []
    for trainer, fold in runs:
        states.append(train_run(study, trainer, fold, gpu))
        step(f"{trainer} fold {fold}: {states[-1]}")
    return states


def worker_shares(runs: List[Tuple[str, str]], n_workers: int) -> List[List[Tuple[str, str]]]:
    """Round-robin: worker w trains runs w, w + n, w + 2n, ..."""
    return [runs[w::n_workers] for w in range(n_workers) if runs[w::n_workers]]


def run_on_local_gpus(study: Study, runs: List[Tuple[str, str]], step: Callable[[str], None],
                      poll_s: float = 2.0) -> List[str]:
    """One submitit LocalExecutor job per GPU; waits for all, reporting each finished training."""
    import submitit
    from nnunet_losses.study.runs import read_record
    jobs = []
    for gpu, share in zip(study.gpus, worker_shares(runs, len(study.gpus))):
        ex = submitit.LocalExecutor(folder=study.folder / "submitit" / "local" / f"gpu{gpu}")
        ex.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=1, visible_gpus=(gpu,))
        jobs.append((ex.submit(train_runs, study, share), share))
    reported = set()
    while True:
        for job, share in jobs:
            for trainer, fold in share:
                rec = read_record(study, trainer, fold) or {}
                if (trainer, fold) not in reported and rec.get("state") in ("done", "failed"):
                    reported.add((trainer, fold))
                    step(f"{trainer} fold {fold}: {rec['state']} (GPU {rec.get('cuda_visible_devices')})")
        if all(job.done() for job, _ in jobs):
            break
        time.sleep(poll_s)
    states = []
    for job, share in jobs:
        states += job.result()  # re-raises a worker's exception here, with its traceback
    return states


def slurm_executor(study: Study, name: str, gpus: int, dependency: Optional[str] = None):
    import submitit
    opt = study.slurm
    ex = submitit.SlurmExecutor(folder=study.folder / "submitit" / "slurm" / "%j")
    params = dict(job_name=name, time=opt.time_min, cpus_per_task=opt.cpus_per_task,
                  array_parallelism=opt.array_parallelism, setup=list(opt.setup),
                  additional_parameters=dict(opt.sbatch))
    if gpus:
        params["gpus_per_node"] = gpus
    if opt.partition:
        params["partition"] = opt.partition
    if opt.mem_gb:
        # sbatch reads a bare number as MB: give the unit
        params["mem"] = f"{int(opt.mem_gb)}GB" if opt.mem_gb == int(opt.mem_gb) else f"{int(opt.mem_gb * 1024)}MB"
    if dependency:
        params["dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def submit_to_slurm(study: Study, runs: List[Tuple[str, str]], finish: Callable) -> dict:
    """Submit the trainings as one job array and ``finish(study)`` as a job depending on all of them."""
    dependency = None
    array_id = None
    if runs:
        ex = slurm_executor(study, "nnunet-losses-train", study.slurm.gpus_per_node)
        with ex.batch():
            jobs = [ex.submit(train_run, study, t, f) for t, f in runs]
        array_id = jobs[0].job_id.split("_")[0]
        dependency = f"afterany:{array_id}"
    report = slurm_executor(study, "nnunet-losses-report", 0, dependency).submit(finish, study)
    return {"array_job": array_id, "report_job": report.job_id, "n_trainings": len(runs)}

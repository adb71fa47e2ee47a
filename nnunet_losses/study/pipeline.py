"""The whole study: train what is missing, then evaluate every trainer over the folds all trainers finished,
compare them (baseline first, every pair), and write the report -- with one progress bar over all of it."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from nnunet_losses.evaluation.safety import exported_nnunet_folders
from nnunet_losses.study.config import Study, StudyError
from nnunet_losses.study.runs import RunStatus, study_status, trainer_folder


def prepare_folder(study: Study) -> None:
    """The study's folder holds only what the study writes; never inside nnU-Net's folders."""
    for f in exported_nnunet_folders():
        if study.folder == f or f in study.folder.parents or study.folder in f.parents:
            raise StudyError(f"{study.folder}: the study folder must not be inside (or around) {f}, which belongs to "
                             f"nnU-Net; set output in the study file to a folder elsewhere")
    study.folder.mkdir(parents=True, exist_ok=True)
    snapshot = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(study).items() if k != "slurm"}
    snapshot["slurm"] = vars(study.slurm)
    (study.folder / "study.json").write_text(json.dumps(snapshot, indent=2))


def _bar(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, disable=not enabled, desc="study", unit="step", file=sys.stderr, dynamic_ncols=True)


def run_study(study: Study, progress: bool = True, wait: bool = True) -> dict:
    """Train every missing (trainer, fold), then :func:`finish_study`. With the slurm executor the trainings and
    the report are submitted as jobs and this returns their ids at once."""
    from nnunet_losses.study.executors import run_on_local_gpus, run_sequentially, submit_to_slurm
    prepare_folder(study)
    statuses = study_status(study)
    to_train = [k for k, s in statuses.items() if s.needs_training]
    if study.executor == "slurm":
        return {"submitted": submit_to_slurm(study, to_train, finish_study)}
    with _bar(len(to_train) + len(study.trainers) + 2, progress) as bar:
        def step(message: str) -> None:
            bar.set_postfix_str(message[-60:], refresh=False)
            bar.update()
        if len(study.gpus) > 1:
            run_on_local_gpus(study, to_train, step)
        else:
            run_sequentially(study, to_train, step)
        return finish_study(study, step)


def complete_folds(study: Study, statuses: Dict[tuple, RunStatus]) -> List[str]:
    """Folds that every trainer finished: the trainers are compared on the same cases."""
    return [f for f in study.folds if all(statuses[(t, f)].state == "done" for t in study.trainers)]


def _fingerprint(study: Study, trainer: str, folds: List[str]) -> list:
    """What an evaluation depends on: the final checkpoints and validation npz files (name, size, mtime)."""
    out = []
    for f in folds:
        folder = trainer_folder(study, trainer) / f"fold_{f}"
        for p in [folder / "checkpoint_final.pth", *sorted((folder / "validation").glob("*.npz"))]:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def evaluate_trainer(study: Study, trainer: str, folds: List[str]) -> dict:
    """``evaluate`` of one trainer over ``folds`` into ``<study>/evaluation/<trainer>``; reused while its inputs
    are unchanged."""
    from nnunet_losses.evaluation import evaluate
    from nnunet_losses.evaluation.compare import load_evaluation
    out = study.folder / "evaluation" / trainer
    stamp = study.folder / "evaluation" / f".{trainer}.inputs.json"
    # the metric names stand for the summary's schema: a package update that renames metrics re-evaluates
    from nnunet_losses.evaluation.metrics import CALIBRATION_METRICS, EXTRA_METRICS
    key = {"folds": folds, "files": _fingerprint(study, trainer, folds),
           "schema": [list(EXTRA_METRICS), list(CALIBRATION_METRICS)], "surface": study.surface_tolerance_mm}
    if (out / "summary.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return load_evaluation(out)
    summary = evaluate(trainer_folder(study, trainer), out, folds=folds, name=trainer, overwrite=True,
                       num_processes=study.num_processes, surface_tolerance_mm=study.surface_tolerance_mm)
    stamp.write_text(json.dumps(key))
    return summary


def evaluate_extra(study: Study, name: str, folder: str) -> dict:
    """A prediction folder of the study's dataset -- ``nnUNetv2_apply_postprocessing`` output, a
    ``find_best_configuration``/``nnUNetv2_ensemble`` ensemble of the cross-validation -- against nnU-Net's
    references (label maps only: hard and surface metrics)."""
    from nnunet_losses.evaluation import evaluate
    from nnunet_losses.study.runs import _env_folder, dataset_name
    path = Path(folder) if Path(folder).is_absolute() else (study.source.parent if study.source else Path.cwd()) / folder
    if not path.is_dir():
        raise StudyError(f"{path}: extra folder {name!r} of the study file not found")
    references = _env_folder("nnUNet_preprocessed") / dataset_name(study) / "gt_segmentations"
    # nnU-Net's postprocessed/ folders have no dataset.json of their own: the trainers' is the dataset's
    dataset_json = None if (path / "dataset.json").is_file() else trainer_folder(study, study.baseline) / "dataset.json"
    return evaluate(path, study.folder / "evaluation" / f"extra_{name}", reference_folder=references, name=name,
                    dataset_json=dataset_json, overwrite=True, chill=True)


def finish_study(study: Study, step: Optional[Callable[[str], None]] = None) -> dict:
    """Evaluate, compare, report (the SLURM report job runs this)."""
    from nnunet_losses.evaluation import compare
    from nnunet_losses.study.report import write_report
    step = step or (lambda message: None)
    prepare_folder(study)
    statuses = study_status(study)
    folds = complete_folds(study, statuses)
    if not folds:
        from nnunet_losses.study.runs import format_status
        raise StudyError(f"no fold is finished for every trainer yet; nothing to evaluate:\n"
                         f"{format_status(statuses)}")
    trainers = [study.baseline] + [t for t in study.trainers if t != study.baseline]
    summaries = {}
    for t in trainers:
        summaries[t] = evaluate_trainer(study, t, folds)
        step(f"evaluated {t}")
    comparison = compare([study.folder / "evaluation" / t for t in trainers], study.folder / "comparison",
                         names=trainers, n_boot=study.n_boot, alpha=study.alpha, overwrite=True)
    step("compared")
    extras = {n: evaluate_extra(study, n, f) for n, f in study.extra_folders.items()}
    report = write_report(study, summaries, comparison, statuses, folds, extras)
    step("report written")
    return {"folds": folds, "summaries": summaries, "comparison": comparison, "report": report,
            "status": {f"{t} fold {f}": s.state for (t, f), s in statuses.items()}}

"""Where each (trainer, fold) of a study stands, read from nnU-Net's results folder and the study's own
run records -- never written into ``nnUNet_results``.

A run is *done* when nnU-Net wrote ``checkpoint_final.pth`` and a validation ``.npz`` for every validation
case of the fold (``nnUNetv2_train ... --npz``). The study's record of a run (``<study>/runs/<trainer>/
fold_<f>.json``, written by the training job itself) tells *running* (its process is alive), *failed* (nnU-Net
exited with an error) and *interrupted* (killed: the record says running but the process is gone) apart.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_losses.study.config import Study, StudyError

STATES = ("done", "running", "interrupted", "failed", "missing", "no_npz")


@dataclass
class RunStatus:
    trainer: str
    fold: str
    state: str
    fold_folder: Path
    detail: str = ""

    @property
    def needs_training(self) -> bool:
        return self.state in ("interrupted", "failed", "missing")


def _env_folder(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise StudyError(f"{name} is not set; export nnU-Net's {name} (the study trains and reads there)")
    return Path(value).resolve()


def dataset_name(study: Study) -> str:
    """``DatasetXXX_Name`` of the study's dataset, as nnU-Net resolves it."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(study.dataset)
    except (RuntimeError, ValueError) as e:
        raise StudyError(f"dataset {study.dataset!r} not found in nnUNet_raw/nnUNet_preprocessed/nnUNet_results "
                         f"({e}); run nnUNetv2_plan_and_preprocess first") from None


def trainer_folder(study: Study, trainer: str) -> Path:
    return _env_folder("nnUNet_results") / dataset_name(study) / f"{trainer}__{study.plans}__{study.configuration}"


def record_path(study: Study, trainer: str, fold: str) -> Path:
    return study.folder / "runs" / trainer / f"fold_{fold}.json"


def read_record(study: Study, trainer: str, fold: str) -> Optional[dict]:
    path = record_path(study, trainer, fold)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a record cut short by a kill: nothing to trust in it


def write_record(study: Study, trainer: str, fold: str, record: dict) -> None:
    """Atomically (rename), so that a kill never leaves half a record."""
    path = record_path(study, trainer, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def validation_cases(study: Study, fold: str) -> Optional[List[str]]:
    """The fold's validation cases from nnU-Net's splits_final.json (None before nnU-Net wrote it)."""
    splits = _env_folder("nnUNet_preprocessed") / dataset_name(study) / "splits_final.json"
    if not splits.is_file() or not fold.isdigit():
        return None
    folds = json.loads(splits.read_text())
    return list(folds[int(fold)]["val"]) if int(fold) < len(folds) else None


def _process_alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine (a cluster node): its record is all we can know
    try:
        os.kill(int(record["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def run_complete(fold_folder: Path, expected_cases: Optional[List[str]] = None) -> bool:
    """nnU-Net finished: final checkpoint and a validation npz for every expected case."""
    val = fold_folder / "validation"
    npz = {p.stem for p in val.glob("*.npz")} if val.is_dir() else set()
    return (fold_folder / "checkpoint_final.pth").is_file() and bool(npz) and \
        (expected_cases is None or set(expected_cases) <= npz)


def run_status(study: Study, trainer: str, fold: str, expected_cases: Optional[List[str]] = None) -> RunStatus:
    folder = trainer_folder(study, trainer) / f"fold_{fold}"
    record = read_record(study, trainer, fold)
    val = folder / "validation"
    has_final = (folder / "checkpoint_final.pth").is_file()
    complete = run_complete(folder, expected_cases)
    if record is not None and record.get("state") == "running" and _process_alive(record):
        where = record.get("slurm_job") or f"pid {record.get('pid')} on {record.get('host')}"
        return RunStatus(trainer, fold, "running", folder, f"{where}, log {record.get('log')}")
    if has_final and complete:
        return RunStatus(trainer, fold, "done", folder)
    if record is not None and record.get("state") == "failed":
        return RunStatus(trainer, fold, "failed", folder, f"exit code {record.get('returncode')}, log "
                                                          f"{record.get('log')}")
    if has_final and record is None and (val / "summary.json").is_file():
        # trained without --npz by someone else: adding the npz would rewrite its validation folder
        return RunStatus(trainer, fold, "no_npz", folder,
                         f"trained without --npz; run `nnUNetv2_train {study.dataset} {study.configuration} {fold} "
                         f"-tr {trainer} -p {study.plans} --val --npz` to add the probabilities")
    if folder.is_dir() or record is not None:
        return RunStatus(trainer, fold, "interrupted", folder, "continues with nnU-Net's --c")
    return RunStatus(trainer, fold, "missing", folder)


def study_status(study: Study) -> Dict[Tuple[str, str], RunStatus]:
    """Status of every (trainer, fold) of the study."""
    expected = {f: validation_cases(study, f) for f in study.folds}
    return {(t, f): run_status(study, t, f, expected[f]) for t, f in study.runs}


def format_status(statuses: Dict[Tuple[str, str], RunStatus]) -> str:
    counts = {s: sum(1 for r in statuses.values() if r.state == s) for s in STATES}
    lines = [f"{'trainer':40s} {'fold':>4s}  state        detail"]
    for r in statuses.values():
        lines.append(f"{r.trainer:40s} {r.fold:>4s}  {r.state:12s} {r.detail}")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)

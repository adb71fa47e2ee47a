"""The study file: a small TOML file naming what to train and how, so that a study can be versioned and re-run.

    dataset = 901                      # id or DatasetXXX_Name
    configuration = "3d_fullres"
    trainers = ["nnUNetTrainer_CEonly", "nnUNetTrainer_SoftDice"]
    baseline = "nnUNetTrainer_CEonly"  # default: the first trainer
    folds = [0, 1, 2, 3, 4]            # default
    plans = "nnUNetPlans"              # default
    device = "cuda"                    # nnUNetv2_train -device
    output = "my_study"                # the study's own folder (default: next to this file, named after it)

    [env]                              # extra environment of every training (strings)
    NNUNET_LOSSES_EPOCHS = "100"

    [executor]
    kind = "local"                     # or "slurm"
    gpus = [0, 1]                      # local: one worker per GPU (CUDA_VISIBLE_DEVICES); none: one after another

    [executor.slurm]                   # partition, time_min, gpus_per_node, cpus_per_task, mem_gb: as in EXAMPLE
    setup = ["module load cuda"]       # shell lines run before each job
    [executor.slurm.sbatch]            # any other sbatch option, as written after "#SBATCH --"
    account = "abc"
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

DEFAULT_FOLDS = (0, 1, 2, 3, 4)
EXECUTORS = ("local", "slurm")
_TOP_KEYS = {"dataset", "configuration", "trainers", "baseline", "folds", "plans", "device", "output", "env",
             "executor", "train_command", "evaluation"}
_EXECUTOR_KEYS = {"kind", "gpus", "slurm"}
_SLURM_KEYS = {"partition", "time_min", "gpus_per_node", "cpus_per_task", "mem_gb", "sbatch", "setup",
               "array_parallelism"}
_EVALUATION_KEYS = {"num_processes", "n_boot", "alpha", "extra_folders", "surface_tolerance_mm"}


class StudyError(Exception):
    """A problem with the study file or the study's folders; the message says what to do."""


@dataclass
class SlurmOptions:
    partition: Optional[str] = None
    time_min: int = 24 * 60
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: Optional[float] = None
    sbatch: Dict[str, str] = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)
    array_parallelism: int = 256


@dataclass
class Study:
    """A study as read from its file; ``folder`` is the study's own output folder (never in nnU-Net's)."""
    dataset: str
    configuration: str
    trainers: List[str]
    baseline: str
    folds: List[str]
    folder: Path
    plans: str = "nnUNetPlans"
    device: str = "cuda"
    env: Dict[str, str] = field(default_factory=dict)
    executor: str = "local"
    gpus: List[int] = field(default_factory=list)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    train_command: str = "nnUNetv2_train"
    num_processes: int = 1
    n_boot: int = 10000
    alpha: float = 0.05
    #: more prediction folders (post-processed, ensembles) to evaluate into the report: name -> folder
    extra_folders: Dict[str, str] = field(default_factory=dict)
    #: HD95 / normalized surface Dice at this tolerance (mm) of every trainer's hard maps; None: not computed
    surface_tolerance_mm: Optional[float] = None
    source: Optional[Path] = None

    @property
    def runs(self) -> List[Tuple[str, str]]:
        """Every (trainer, fold) of the study, trainer-major."""
        return [(t, f) for t in self.trainers for f in self.folds]


def _check_keys(table: dict, allowed: set, where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise StudyError(f"{path}: unknown key {unknown[0]!r} in {where} (known: {', '.join(sorted(allowed))})")


def _folds(value, path: Path) -> List[str]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{path}: folds must be a non-empty list such as [0, 1, 2, 3, 4]")
    folds = [str(f) for f in value]
    bad = [f for f in folds if not (f.isdigit() or f == "all")]
    if bad or len(set(folds)) != len(folds):
        raise StudyError(f"{path}: folds {value} must be distinct fold numbers (or \"all\")")
    return folds


def study_from_dict(d: dict, path: Path) -> Study:
    """Validate a parsed study file; every problem is one line naming the key and what to write instead."""
    _check_keys(d, _TOP_KEYS, "the study file", path)
    for key in ("dataset", "configuration", "trainers"):
        if key not in d:
            raise StudyError(f"{path}: missing {key!r} (see `nnunet-losses study example`)")
    trainers = d["trainers"]
    if not isinstance(trainers, list) or not trainers or not all(isinstance(t, str) and t for t in trainers):
        raise StudyError(f"{path}: trainers must be a non-empty list of nnU-Net trainer names (-tr)")
    if len(set(trainers)) != len(trainers):
        raise StudyError(f"{path}: a trainer is listed twice in trainers {trainers}")
    baseline = d.get("baseline", trainers[0])
    if baseline not in trainers:
        raise StudyError(f"{path}: baseline {baseline!r} is not one of the trainers {trainers}; add it to trainers")
    ex = d.get("executor", {})
    _check_keys(ex, _EXECUTOR_KEYS, "[executor]", path)
    kind = ex.get("kind", "local")
    if kind not in EXECUTORS:
        raise StudyError(f"{path}: executor kind {kind!r} is not one of {EXECUTORS}")
    gpus = ex.get("gpus", [])
    if not isinstance(gpus, list) or not all(isinstance(g, int) and g >= 0 for g in gpus):
        raise StudyError(f"{path}: executor gpus must be a list of GPU indices such as [0, 1]")
    sl = ex.get("slurm", {})
    _check_keys(sl, _SLURM_KEYS, "[executor.slurm]", path)
    ev = d.get("evaluation", {})
    _check_keys(ev, _EVALUATION_KEYS, "[evaluation]", path)
    env = d.get("env", {})
    if not all(isinstance(v, (str, int, float)) for v in env.values()):
        raise StudyError(f"{path}: [env] values must be strings or numbers")
    base = path.parent
    folder = Path(d["output"]) if "output" in d else Path(path.stem)
    return Study(dataset=str(d["dataset"]), configuration=str(d["configuration"]), trainers=list(trainers),
                 baseline=baseline, folds=_folds(d.get("folds", list(DEFAULT_FOLDS)), path),
                 folder=(folder if folder.is_absolute() else base / folder).resolve(),
                 plans=str(d.get("plans", "nnUNetPlans")), device=str(d.get("device", "cuda")),
                 env={k: str(v) for k, v in env.items()}, executor=kind, gpus=list(gpus), slurm=SlurmOptions(**sl),
                 train_command=str(d.get("train_command", "nnUNetv2_train")),
                 num_processes=_number(ev, "num_processes", 1, int, 1, None, path),
                 n_boot=_number(ev, "n_boot", 10000, int, 1, None, path),
                 alpha=_number(ev, "alpha", 0.05, float, 0.0, 1.0, path), extra_folders=dict(ev.get("extra_folders", {})),
                 surface_tolerance_mm=_number(ev, "surface_tolerance_mm", None, float, 0.0, None, path),
                 source=path.resolve())


def _number(section: dict, key: str, default, kind, low, high, path: Path):
    """``section[key]`` as ``kind`` (int or float) with ``low <= value`` (floats: ``low < value``) and
    ``value < high``; a one-line error naming the key otherwise."""
    value = section.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value) == int(value))
    if ok:
        value = kind(value)
        ok = (value >= low if kind is int else value > low) and (high is None or value < high)
    if not ok:
        bound = f"{'an integer >= ' if kind is int else 'a number > '}{low}" + (f" and < {high}" if high else "")
        raise StudyError(f"{path}: [evaluation] {key} must be {bound}, got {section.get(key)!r}")
    return value


def load_study(path) -> Study:
    """Read and check a study file (TOML)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file (write one: `nnunet-losses study example > {path.name}`)")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: not valid TOML ({e})") from None
    return study_from_dict(d, path)


EXAMPLE = '''# nnunet-losses study file (TOML): `nnunet-losses study run THIS_FILE`
dataset = 1                                  # id or DatasetXXX_Name, planned and preprocessed
configuration = "3d_fullres"
trainers = ["nnUNetTrainer_CEonly", "nnUNetTrainer_SoftDice", "nnUNetTrainer_DSCpp"]
baseline = "nnUNetTrainer_CEonly"
folds = [0, 1, 2, 3, 4]
device = "cuda"

[executor]
kind = "local"                               # "slurm": a job array through submitit
gpus = [0]                                   # one training per listed GPU at a time

[evaluation]
surface_tolerance_mm = 1.0                   # HD95 and normalized surface Dice of every trainer (omit: not computed)

[executor.slurm]
partition = "gpu"
time_min = 1440
gpus_per_node = 1
cpus_per_task = 8
mem_gb = 64
setup = []
'''

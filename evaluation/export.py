"""``threshold``: label maps from saved probabilities, in the original image geometry, ready for submission.

For every ``<case>.npz`` (+ the ``<case>.pkl`` properties nnU-Net writes next to it) the label map is made with
a rule (:meth:`~.spec.TaskSpec.hard_map`) and written with the dataset's own reader/writer and those
properties -- exactly how nnU-Net's ``export_prediction_from_logits`` writes its ``.nii.gz`` (spacing, origin,
direction preserved). With nnU-Net's rule (``nnunet_rule=True``; argmax, or ``p > 0.5`` overwrite for regions)
the files are identical, voxel for voxel, to nnU-Net's own export.

Threshold rules: one threshold for every class, one per class (class order of dataset.json), or the best
thresholds of an evaluation's sweep (``best_from=<evaluation folder or summary.json>``, checked to be of the
same dataset, classes and -- as far as the folders tell -- model). Regions: ``seg[p_i >
T_i] = regions_class_order[i]`` in order (nnU-Net's rule with 0.5 replaced by ``T_i``); labels: the
foreground class with the largest ``p_c`` among those with ``p_c > T_c``, else background.

The output folder gets ``thresholds.json`` (rule, thresholds, cases) and a copy of the dataset's
``dataset.json`` (so ``nnunet-losses package`` knows the task); with ``overwrite`` the label maps an earlier run
wrote for cases no longer in the run are removed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.cases import CaseFiles, Source, find_cases, load_probabilities, load_properties
from nnunet_losses.evaluation.parallel import map_cases
from nnunet_losses.evaluation.probabilities import check_range, check_sums_to_one, sum_tolerance
from nnunet_losses.evaluation.spec import TaskSpec


def resolve_thresholds(spec: TaskSpec, thresholds=None, best_from=None, nnunet_rule: bool = False,
                       decision_rule: Optional[str] = None, source: Optional[Source] = None) -> Tuple[object, dict]:
    """Per-class thresholds (None = nnU-Net's rule; a string: a voxel decision rule of :mod:`.decisions`) and a
    description of where they come from; ``source`` (the cases to threshold) lets ``best_from`` be checked
    against the dataset and model it was evaluated on."""
    given = sum(x is not None and x is not False for x in (thresholds, best_from, nnunet_rule or None, decision_rule))
    if given != 1:
        raise EvaluationError("choose exactly one rule: thresholds (-t), the best thresholds of an evaluation "
                              "(--best_from), nnU-Net's own rule (--nnunet), or a decision rule (--rule)")
    keys = spec.keys
    if decision_rule is not None:
        from nnunet_losses.evaluation.decisions import VOXEL_RULES
        if decision_rule not in VOXEL_RULES:
            raise EvaluationError(f"unknown decision rule {decision_rule!r}; choose one of {list(VOXEL_RULES)}")
        return decision_rule, {"rule": f"decision rule {decision_rule} (one-vs-rest per class; a voxel kept by "
                                       f"several classes gets the largest p_c, regions overwrite in order)"}
    if nnunet_rule:
        return None, {"rule": "nnU-Net (argmax)" if not spec.has_regions else "nnU-Net (p > 0.5 overwrite)"}
    if best_from is not None:
        return best_thresholds(spec, best_from, source)
    thr = [float(t) for t in (thresholds if isinstance(thresholds, (list, tuple)) else [thresholds])]
    if len(thr) == 1:
        thr = thr * len(keys)
    if len(thr) != len(keys):
        raise EvaluationError(f"{len(thr)} thresholds for {len(keys)} classes {keys}; give one, or one per class")
    if not all(0.0 <= t < 1.0 for t in thr):
        raise EvaluationError(f"thresholds must lie in [0, 1), got {thr}")
    return thr, {"rule": "thresholds", "thresholds": dict(zip(keys, thr))}


def _read_sweep(best_from) -> Tuple[Path, dict]:
    p = Path(best_from)
    f = p / "summary.json" if p.is_dir() else p
    try:
        summary = json.loads(f.read_text())
        summary["threshold_sweep"]["per_class"].items()
    except FileNotFoundError:
        raise EvaluationError(f"{f}: not found; give an `nnunet-losses evaluate` output folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise EvaluationError(f"{f}: no threshold sweep in it; give an `nnunet-losses evaluate` output") from None
    return f, summary


def _check_same_model(f: Path, evaluated: dict, source: Source) -> None:
    """The evaluation must be of the same dataset and, as far as the folders tell, of the same model."""
    here = source.description
    if evaluated.get("dataset") and here.get("dataset") and evaluated["dataset"] != here["dataset"]:
        raise EvaluationError(f"{f}: evaluates dataset {evaluated['dataset']}, these predictions are of "
                              f"{here['dataset']}; use the evaluation of this model on this dataset")
    for k in ("trainer", "plans", "configuration"):
        if evaluated.get(k) and here.get(k) and evaluated[k] != here[k]:
            raise EvaluationError(f"{f}: evaluates {k} {evaluated[k]}, these predictions come from {here[k]}; "
                                  f"thresholds tuned on another model do not transfer")


def best_thresholds(spec: TaskSpec, best_from, source: Optional[Source] = None) -> Tuple[List[float], dict]:
    """The sweep's best threshold per class of an ``evaluate`` output, checked: same classes (and task type),
    same dataset/model when ``source`` is given, every threshold strictly inside (0, 1)."""
    f, summary = _read_sweep(best_from)
    per, keys = summary["threshold_sweep"]["per_class"], spec.keys
    task = summary.get("task", {})
    if list(per) != keys or task.get("type", "regions" if spec.has_regions else "labels") != \
            ("regions" if spec.has_regions else "labels"):
        raise EvaluationError(f"{f}: sweep of classes {list(per)} ({task.get('type')}), these predictions have "
                              f"{keys}; evaluated on another dataset?")
    if source is not None:
        _check_same_model(f, summary.get("source") or {}, source)
    thr = []
    for k in keys:
        t = per[k].get("best_threshold")
        if not isinstance(t, (int, float)) or math.isnan(t) or not 0.0 < t < 1.0:
            raise EvaluationError(f"{f}: best threshold of class {k} is {t}, not a number strictly between 0 and 1; "
                                  f"re-run `nnunet-losses evaluate` (its sweep picks one from --thresholds)")
        thr.append(float(t))
    return thr, {"rule": "best thresholds of the sweep", "source": str(f), "thresholds": dict(zip(keys, thr))}


def _stale_label_maps(dest: Path, file_ending: str, cases: Sequence[str]) -> List[Path]:
    """Label maps an earlier ``threshold`` run wrote into ``dest`` (its thresholds.json lists them) for cases
    this run does not write: removed once this run succeeded, so the folder holds exactly this run's cases. A
    label map no ``threshold`` run wrote there is never touched: it is an error (it would end up in a
    submission packaged from this folder)."""
    if not dest.is_dir():
        return []
    found = {p.name[: -len(file_ending)] for p in dest.iterdir() if p.is_file() and p.name.endswith(file_ending)}
    try:
        previous = set(json.loads((dest / "thresholds.json").read_text()).get("cases", []))
    except (OSError, ValueError, AttributeError):
        previous = set()
    foreign = sorted(found - previous - set(cases))
    if foreign:
        raise EvaluationError(f"{dest / (foreign[0] + file_ending)}: not written by `nnunet-losses threshold` "
                              f"({len(foreign)} such label map(s)), nor a case of this run; choose an empty output "
                              f"folder")
    return [dest / f"{c}{file_ending}" for c in sorted((found & previous) - set(cases))]


def export_case(case: CaseFiles, spec: TaskSpec, thresholds: Optional[List[float]], reader_writer_class,
                out_folder: Path, file_ending: str, transpose_backward=None) -> str:
    """Write one case's label map ``out_folder/<case><file_ending>`` with its ``.pkl`` properties."""
    probs = load_probabilities(case.npz, case.rerun)
    props = load_properties(case.pkl)
    if probs.shape[0] != spec.n_channels:
        raise EvaluationError(f"{case.npz}: {probs.shape[0]} channels, dataset.json declares {spec.n_channels}")
    if probs.dtype != np.float32 and probs.dtype != np.float64:
        probs = probs.astype(np.float32)
    tol = sum_tolerance(probs.dtype, spec.n_channels)
    check_range(probs, str(case.npz), tol)
    if not spec.has_regions:
        check_sums_to_one(probs, str(case.npz), tol)
    shape = props.get("shape_before_cropping")
    if shape is not None and transpose_backward is not None:
        expect = tuple(int(shape[i]) for i in transpose_backward)
        if expect != tuple(probs.shape[1:]):
            raise EvaluationError(f"{case.npz}: shape {tuple(probs.shape[1:])} does not match {case.pkl}")
    if isinstance(thresholds, str):  # a voxel decision rule
        from nnunet_losses.evaluation.decisions import rule_label_map
        seg = rule_label_map(probs, spec, thresholds)
    else:
        seg = spec.hard_map(probs, thresholds)
    reader_writer_class().write_seg(seg, str(Path(out_folder) / f"{case.name}{file_ending}"), props)
    return case.name


def export_thresholded(inputs, output_folder, *, thresholds=None, best_from=None, nnunet_rule: bool = False,
                       decision_rule: Optional[str] = None, folds: Optional[Sequence] = None, dataset_json=None,
                       plans=None, num_processes: int = 1, overwrite: bool = False, progress: bool = False) -> dict:
    """Write thresholded label maps of every case into ``output_folder`` (see module doc)."""
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_json
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    source = find_cases(inputs, folds=[str(f) for f in folds] if folds else None, dataset_json=dataset_json,
                        plans=plans, references=False)
    spec, cases = source.spec, source.cases
    thr, rule = resolve_thresholds(spec, thresholds, best_from, nnunet_rule, decision_rule, source)
    fe = source.dataset_json["file_ending"]
    names = [f"{c.name}{fe}" for c in cases] + ["thresholds.json", "dataset.json"]
    dest = check_destination(Path(output_folder), source.protected, overwrite, names, [source.dataset])
    stale = _stale_label_maps(dest, fe, [c.name for c in cases])
    with AtomicFolder(dest) as tmp:
        map_cases(export_case, cases, dict(spec=spec, thresholds=thr, reader_writer_class=source.reader_writer_class,
                                           out_folder=tmp, file_ending=fe,
                                           transpose_backward=(source.plans or {}).get("transpose_backward")),
                  num_processes, progress, "exporting")
        info = {**rule, "classes": spec.keys, "task": "regions" if spec.has_regions else "labels",
                "n_cases": len(cases), "cases": [c.name for c in cases], "source": source.description,
                "file_ending": fe}
        write_json(info, tmp / "thresholds.json", sort_keys=False)
        # the dataset's description travels with the label maps: `package` reads the task from it
        write_json(source.dataset_json, tmp / "dataset.json", sort_keys=False)
    for f in stale:
        f.unlink()
    info["output_folder"] = str(dest)
    return info

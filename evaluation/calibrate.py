"""``calibrate``: cross-fitted post-hoc calibration of one model's cross-validation probabilities, and
``apply_calibration`` of the fitted map to test-set predictions.

1. One read of every case (the evaluation's streamed pass, see :mod:`.evaluate`) gives the "before" evaluation
   and a stratified, weighted sample of voxels per case (:func:`.calibration.sample_case`: at most
   ``per_label`` voxels of each reference label, so memory stays bounded whatever the image sizes).
2. Cross-fitting: the cases of fold ``f`` are calibrated with a map fitted **only on the samples of the other
   folds** (without folds -- a prediction folder, or one fold -- on five groups of cases, round robin by name);
   no case is ever calibrated by a map that saw it. A final map fitted on all samples goes into
   ``calibration.json`` for test-set predictions.
3. Every case is calibrated and written as ``<case>.npz`` (``probabilities``, float32, as nnU-Net) with its
   ``.pkl`` into ``OUT/calibrated`` -- a prediction folder of its own (dataset.json, plans.json copied), never
   nnU-Net's -- and evaluated from there ("after").

Outputs: ``calibration.json``, ``calibration.md`` / ``calibration_summary.json`` (before/after: NLL, Brier, top-label ECE,
classwise ECE, soft dV, Dice of every decision rule, volume coverage), ``before/`` and ``after/`` (full evaluation
outputs), ``calibrated/``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from nnunet_losses.evaluation.accumulate import DEFAULT_EPS, BinGrid
from nnunet_losses.evaluation.calibration import (METHODS, ODIR_LAMBDA, CalibrationMap, VoxelSamples,
                                                  fit_calibration, sample_case)
from nnunet_losses.evaluation.cases import CaseFiles, Source, find_cases, load_probabilities
from nnunet_losses.evaluation.errors import EvaluationError

DEFAULT_PER_LABEL = 4000
N_GROUPS_WITHOUT_FOLDS = 5
CALIBRATION_FILES = ("calibration.json", "calibration.md", "calibration_summary.json")


class CaseSampler:
    """Per-case voxel sample taken while the case is in memory (picklable for worker processes); the random
    stream depends on the seed and the case name only, so results do not depend on the order of reading."""

    def __init__(self, spec, per_label: int, seed: int):
        self.spec, self.per_label, self.seed = spec, per_label, seed

    def __call__(self, case: CaseFiles, probabilities, reference, stats=None, spacing=None) -> dict:
        rng = np.random.default_rng([self.seed, zlib.crc32(case.name.encode())])
        return {"samples": sample_case(probabilities, reference, self.spec, self.per_label, rng)}


def calibration_groups(cases: Sequence[CaseFiles]):
    """``(groups of case indices, scheme)``: one group per fold with >= 2 folds, else five groups round robin."""
    folds = [c.fold for c in cases]
    distinct = sorted({f for f in folds if f is not None}, key=str)
    if len(distinct) >= 2 and all(f is not None for f in folds):
        return [[i for i, f in enumerate(folds) if f == d] for d in distinct], "other folds"
    order = sorted(range(len(cases)), key=lambda i: cases[i].name)
    n = min(N_GROUPS_WITHOUT_FOLDS, len(cases))
    if n < 2:
        raise EvaluationError("cross-fitted calibration needs at least two cases (one to fit on, one to calibrate)")
    return [sorted(order[g::n]) for g in range(n)], f"{n} groups of cases (no folds)"


def fit_crossfitted(method: str, samples: List[VoxelSamples], groups: List[List[int]], spec,
                    lam: float = ODIR_LAMBDA) -> List[CalibrationMap]:
    """One map per group, fitted on the samples of every case outside it."""
    maps = []
    for g in groups:
        inside = set(g)
        train = VoxelSamples.concat([s for i, s in enumerate(samples) if i not in inside])
        if not len(train.labels):
            raise EvaluationError("no voxels outside a held-out group to fit the calibration on")
        maps.append(fit_calibration(method, train, spec, lam))
    return maps


def _write_calibrated(case: CaseFiles, cal: CalibrationMap, folder: Path) -> CaseFiles:
    q = cal.apply(load_probabilities(case.npz, case.rerun))
    np.savez_compressed(folder / f"{case.name}.npz", probabilities=q)
    pkl = None
    if case.pkl is not None:
        pkl = folder / f"{case.name}.pkl"
        shutil.copyfile(case.pkl, pkl)
    return CaseFiles(case.name, case.fold, folder / f"{case.name}.npz", case.reference, pkl, case.rerun)


def _copy_descriptions(source: Source, folder: Path) -> None:
    from nnunet_losses.evaluation.outputs import write_json
    write_json(source.dataset_json, folder / "dataset.json", sort_keys=False)
    if source.plans is not None:
        write_json(source.plans, folder / "plans.json", sort_keys=False)


def _crossfit_calibrated(source: Source, maps: List[CalibrationMap], groups: List[List[int]], method: str,
                         folder: Path, progress: bool) -> Source:
    """Write every case calibrated by the map of its group (fitted on the other groups) into ``folder``."""
    from tqdm import tqdm
    folder.mkdir()
    _copy_descriptions(source, folder)
    group_of = {i: gi for gi, g in enumerate(groups) for i in g}
    cases = [_write_calibrated(c, maps[group_of[i]], folder)
             for i, c in enumerate(tqdm(source.cases, disable=not progress, desc="calibrating", unit="case",
                                        file=sys.stderr))]
    return Source(cases, source.dataset_json, source.plans, source.spec, source.reader_writer_class,
                  name=f"{source.name} + {method} scaling", description=dict(source.description),
                  protected=source.protected)


def calibrate(inputs, output_folder, *, method: str = "temperature", reference_folder=None,
              folds: Optional[Sequence] = None, dataset_json=None, plans=None, per_label: int = DEFAULT_PER_LABEL,
              lam: float = ODIR_LAMBDA, seed: int = 0, num_processes: int = 1, overwrite: bool = False,
              plots: bool = True, progress: bool = False) -> dict:
    """Cross-fitted calibration of a trainer's (or a prediction folder's) probabilities (see module doc)."""
    from nnunet_losses.evaluation.evaluate import build_summary, reduce_cases
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_json
    from nnunet_losses.evaluation.report import write_evaluation
    if method not in METHODS:
        raise EvaluationError(f"unknown calibration method {method!r}; choose one of {list(METHODS)}")
    if per_label < 1:
        raise EvaluationError(f"per_label must be at least 1 voxel, got {per_label}")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    source = find_cases(inputs, reference_folder, [str(f) for f in folds] if folds else None, dataset_json, plans)
    groups, scheme = calibration_groups(source.cases)
    dest = check_destination(Path(output_folder), source.protected, overwrite,
                             list(CALIBRATION_FILES) + ["before", "after", "calibrated"])
    grid, eps = BinGrid(), DEFAULT_EPS
    spec = source.spec
    results = reduce_cases(source, grid, eps, num_processes, progress, extra=CaseSampler(spec, per_label, seed))
    samples = [r.pop("samples") for r in results]
    t0 = time.perf_counter()
    maps = fit_crossfitted(method, samples, groups, spec, lam)
    final = fit_calibration(method, VoxelSamples.concat(samples), spec, lam)
    fit_seconds = time.perf_counter() - t0
    before = build_summary(source, results, grid, eps)
    with AtomicFolder(dest) as tmp:
        after_source = _crossfit_calibrated(source, maps, groups, method, tmp / "calibrated", progress)
        after = build_summary(after_source, reduce_cases(after_source, grid, eps, num_processes, progress), grid, eps)
        (tmp / "before").mkdir()
        (tmp / "after").mkdir()
        write_evaluation(before, tmp / "before", plots=plots)
        write_evaluation(after, tmp / "after", plots=plots)
        info = {"method": method, "crossfit": {"scheme": scheme,
                                               "groups": [[source.cases[i].name for i in g] for g in groups],
                                               "maps": [m.to_json() for m in maps]},
                "per_label": per_label, "seed": seed, "lambda_odir": lam if method == "dirichlet" else None,
                "fit_seconds": fit_seconds, "source": source.description}
        write_json({**final.to_json(), "note": "fitted on every case's sample; apply it to test-set predictions "
                                               "with `nnunet-losses calibrate --apply`", **info},
                   tmp / "calibration.json", sort_keys=False)
        from nnunet_losses.evaluation.calibration_report import before_after, before_after_markdown
        table = before_after(before, after)
        table.update(saturated_fraction=final.info["saturated_fraction"], n_fit_voxels=final.info["n_fit_voxels"],
                     temperatures=final.temperatures(), method=method, scheme=scheme, fit_seconds=fit_seconds)
        write_json(table, tmp / "calibration_summary.json", sort_keys=False)
        (tmp / "calibration.md").write_text(before_after_markdown(table, source.name))
    table["output_folder"] = str(dest)
    return table


def apply_calibration(calibration_json, inputs, output_folder, *, folds: Optional[Sequence] = None,
                      dataset_json=None, plans=None, overwrite: bool = False, progress: bool = False) -> dict:
    """Apply ``calibration.json`` (its final map) to ``nnUNetv2_predict --save_probabilities`` output (or fold
    folders): calibrated ``<case>.npz`` + ``.pkl`` and dataset.json/plans.json in ``output_folder``."""
    from tqdm import tqdm
    from nnunet_losses.evaluation.cases import read_json
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_json
    d = read_json(Path(calibration_json), "calibration.json (from `nnunet-losses calibrate`)")
    try:
        cal = CalibrationMap.from_json(d)
    except (KeyError, TypeError, ValueError):
        raise EvaluationError(f"{calibration_json}: not a calibration.json of `nnunet-losses calibrate`") from None
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    source = find_cases(inputs, folds=[str(f) for f in folds] if folds else None, dataset_json=dataset_json,
                        plans=plans, references=False)
    cases, dj, pl, spec = source.cases, source.dataset_json, source.plans, source.spec
    if spec.has_regions != cal.has_regions or len(cal.maps[0].b) != (2 if cal.has_regions else spec.n_channels) \
            or (cal.has_regions and len(cal.maps) != spec.n_channels):
        raise EvaluationError(f"{calibration_json}: fitted for another task ({d.get('task')}, {len(cal.maps)} maps) "
                              f"than these predictions ({spec.n_channels} channels); calibrate this model first")
    names = [f"{c.name}.npz" for c in cases] + [f"{c.name}.pkl" for c in cases] + ["dataset.json", "calibration.json"]
    dest = check_destination(Path(output_folder), source.protected, overwrite, names)
    with AtomicFolder(dest) as tmp:
        for c in tqdm(cases, disable=not progress, desc="calibrating", unit="case", file=sys.stderr):
            _write_calibrated(c, cal, tmp)
        write_json(dj, tmp / "dataset.json", sort_keys=False)
        if pl is not None:
            write_json(pl, tmp / "plans.json", sort_keys=False)
        write_json(d, tmp / "calibration.json", sort_keys=False)
    return {"n_cases": len(cases), "method": cal.method, "output_folder": str(dest), "source": source.description}

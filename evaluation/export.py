"""``threshold``: label maps from saved probabilities, in the original image geometry, ready for submission.

For every ``<case>.npz`` (+ the ``<case>.pkl`` properties nnU-Net writes next to it) the label map is made with
a rule (:meth:`~.spec.TaskSpec.hard_map`) and written with the dataset's own reader/writer and those
properties -- exactly how nnU-Net's ``export_prediction_from_logits`` writes its ``.nii.gz`` (spacing, origin,
direction preserved). With nnU-Net's rule (``nnunet_rule=True``; argmax, or ``p > 0.5`` overwrite for regions)
the files are identical, voxel for voxel, to nnU-Net's own export.

Threshold rules: one threshold for every class, one per class (class order of dataset.json), or the best
thresholds of an evaluation's sweep (``best_from=<evaluation folder or summary.json>``). Regions: ``seg[p_i >
T_i] = regions_class_order[i]`` in order (nnU-Net's rule with 0.5 replaced by ``T_i``); labels: the
foreground class with the largest ``p_c`` among those with ``p_c > T_c``, else background.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_losses.evaluation.accumulate import sum_tolerance
from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.cases import (Case, _load_descriptions, _parse_trainer_folder_name, _reader_writer, _spec, load_probabilities,
                     load_properties, resolve_folds)
from nnunet_losses.evaluation.spec import TaskSpec


def _collect(inputs: Sequence, folds, dataset_json, plans):
    """``(cases, dataset_json, plans, spec, rw class, protected folders, description)`` without references."""
    trainer = resolve_folds(inputs, [str(f) for f in folds] if folds else None)
    cases: List[Case] = []
    if trainer is not None:
        folder, fold_names = trainer
        dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
        tr, pn, cfg = _parse_trainer_folder_name(folder.name)
        dataset = (pl or {}).get("dataset_name") or folder.parent.name
        dirs = []
        for f in fold_names:
            vdir = folder / f"fold_{f}" / "validation"
            if not vdir.is_dir():
                raise EvaluationError(f"{vdir}: no validation folder; rerun `nnUNetv2_train {dataset} {cfg} {f} -tr "
                                      f"{tr} -p {pn} --val --npz`")
            dirs.append((vdir, f, f"rerun `nnUNetv2_train {dataset} {cfg} {f} -tr {tr} -p {pn} --val --npz`"))
        protected = [folder]
        desc = {"mode": "trainer", "trainer_folder": str(folder), "folds": fold_names}
    else:
        if len(inputs) != 1:
            raise EvaluationError(f"several inputs that are not fold folders: {[str(i) for i in inputs]}")
        folder = Path(inputs[0]).resolve()
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder")
        dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
        dirs = [(folder, None, "rerun `nnUNetv2_predict ... --save_probabilities`")]
        protected = [folder]
        desc = {"mode": "predictions", "prediction_folder": str(folder)}
    spec = _spec(dj, dj_path)
    seen = set()
    for vdir, fold, hint in dirs:
        npz = sorted(vdir.glob("*.npz"))
        segs = [f for f in vdir.iterdir() if f.name.endswith(dj["file_ending"])]
        if not npz:
            raise EvaluationError(f"{vdir}: no .npz probabilities; {hint}")
        have = {f.name[:-4] for f in npz}
        for s in segs:
            c = s.name[: -len(dj["file_ending"])]
            if c not in have:
                raise EvaluationError(f"{vdir / (c + '.npz')}: probabilities missing next to {s.name}; {hint}")
        for f in npz:
            c = f.name[:-4]
            pkl = vdir / f"{c}.pkl"
            if not pkl.is_file():
                raise EvaluationError(f"{pkl}: case properties missing (nnU-Net writes them next to the npz); {hint}")
            if c in seen:
                raise EvaluationError(f"{f}: case {c} appears twice (several folds?); export the folds separately")
            seen.add(c)
            cases.append(Case(c, fold, f, Path(), pkl))
    rw = _reader_writer(dj, pl, None if pl else next(iter(vdir.glob("*" + dj["file_ending"])), None))
    return cases, dj, pl, spec, rw, protected, desc


def resolve_thresholds(spec: TaskSpec, thresholds=None, best_from=None, nnunet_rule: bool = False) \
        -> Tuple[Optional[List[float]], dict]:
    """Per-class thresholds (None = nnU-Net's rule) and a description of where they come from."""
    given = sum(x is not None and x is not False for x in (thresholds, best_from, nnunet_rule or None))
    if given != 1:
        raise EvaluationError("choose exactly one rule: thresholds (-t), the best thresholds of an evaluation "
                              "(--best_from), or nnU-Net's own rule (--nnunet)")
    keys = spec.keys
    if nnunet_rule:
        return None, {"rule": "nnU-Net (argmax)" if not spec.has_regions else "nnU-Net (p > 0.5 overwrite)"}
    if best_from is not None:
        p = Path(best_from)
        f = p / "summary.json" if p.is_dir() else p
        try:
            s = json.loads(f.read_text())
            per = s["threshold_sweep"]["per_class"]
        except FileNotFoundError:
            raise EvaluationError(f"{f}: not found; give an `nnunet-losses evaluate` output folder") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvaluationError(f"{f}: no threshold sweep in it; give an `nnunet-losses evaluate` output") from None
        missing = [k for k in keys if k not in per]
        if missing:
            raise EvaluationError(f"{f}: no sweep for class {missing[0]} (classes {list(per)}); evaluated on "
                                  f"another dataset?")
        thr = [float(per[k]["best_threshold"]) for k in keys]
        if any(math.isnan(t) for t in thr):
            raise EvaluationError(f"{f}: the sweep found no best threshold for class "
                                  f"{keys[[math.isnan(t) for t in thr].index(True)]} (no case defines its Dice)")
        return thr, {"rule": "best thresholds of the sweep", "source": str(f), "thresholds": dict(zip(keys, thr))}
    thr = [float(t) for t in (thresholds if isinstance(thresholds, (list, tuple)) else [thresholds])]
    if len(thr) == 1:
        thr = thr * len(keys)
    if len(thr) != len(keys):
        raise EvaluationError(f"{len(thr)} thresholds for {len(keys)} classes {keys}; give one, or one per class")
    if not all(0.0 <= t < 1.0 for t in thr):
        raise EvaluationError(f"thresholds must lie in [0, 1), got {thr}")
    return thr, {"rule": "thresholds", "thresholds": dict(zip(keys, thr))}


def _export_one(case: Case, spec: TaskSpec, thr, rw_class, out_file: Path, transpose_backward=None) -> None:
    probs = load_probabilities(case.npz)
    props = load_properties(case.pkl)
    if probs.shape[0] != spec.n_channels:
        raise EvaluationError(f"{case.npz}: {probs.shape[0]} channels, dataset.json declares {spec.n_channels}")
    if probs.dtype != np.float32 and probs.dtype != np.float64:
        probs = probs.astype(np.float32)
    lo, hi = float(probs.min()), float(probs.max())
    tol = sum_tolerance(probs.dtype, spec.n_channels)
    if not (lo >= -tol and hi <= 1 + tol):
        raise EvaluationError(f"{case.npz}: probabilities contain {'NaN' if lo != lo or hi != hi else 'values outside [0, 1]'}")
    shape = props.get("shape_before_cropping")
    if shape is not None:
        tb = transpose_backward
        expect = tuple(int(shape[i]) for i in tb) if tb is not None else None
        if expect is not None and expect != tuple(probs.shape[1:]):
            raise EvaluationError(f"{case.npz}: shape {tuple(probs.shape[1:])} does not match {case.pkl}")
    seg = spec.hard_map(probs, thr)
    rw_class().write_seg(seg, str(out_file), props)


_W: dict = {}


def _init(spec, thr, rw, out, fe, tb):
    _W.update(spec=spec, thr=thr, rw=rw, out=out, fe=fe, tb=tb)


def _work(case: Case):
    _export_one(case, _W["spec"], _W["thr"], _W["rw"], Path(_W["out"]) / f"{case.name}{_W['fe']}", _W["tb"])
    return case.name


def export_thresholded(inputs, output_folder, *, thresholds=None, best_from=None, nnunet_rule: bool = False,
                       folds: Optional[Sequence] = None, dataset_json=None, plans=None, num_processes: int = 1,
                       overwrite: bool = False, progress: bool = False) -> dict:
    """Write thresholded label maps of every case into ``output_folder`` (see module doc)."""
    from tqdm import tqdm
    from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_json
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    cases, dj, pl, spec, rw, protected, desc = _collect(inputs, folds, dataset_json, plans)
    thr, rule = resolve_thresholds(spec, thresholds, best_from, nnunet_rule)
    fe = dj["file_ending"]
    tb = (pl or {}).get("transpose_backward")
    names = [f"{c.name}{fe}" for c in cases] + ["thresholds.json"]
    dest = check_destination(Path(output_folder), protected, overwrite, names)
    with AtomicFolder(dest) as tmp:
        with tqdm(total=len(cases), disable=not progress, desc="exporting", unit="case", file=sys.stderr) as bar:
            if num_processes > 1 and len(cases) > 1:
                from nnunet_losses.evaluation.evaluate import mp_context
                ctx = mp_context()
                with ctx.Pool(min(num_processes, len(cases)), initializer=_init,
                              initargs=(spec, thr, rw, str(tmp), fe, tb)) as pool:
                    for _ in pool.imap_unordered(_work, cases):
                        bar.update()
            else:
                for c in cases:
                    _export_one(c, spec, thr, rw, tmp / f"{c.name}{fe}", tb)
                    bar.update()
        info = {**rule, "classes": spec.keys, "task": "regions" if spec.has_regions else "labels",
                "n_cases": len(cases), "cases": [c.name for c in cases], "source": desc, "file_ending": fe}
        write_json(info, tmp / "thresholds.json", sort_keys=False)
    info["output_folder"] = str(dest)
    return info

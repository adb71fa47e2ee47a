"""``evaluate`` on label-map folders without probabilities: what nnU-Net users submit -- ``nnUNetv2_predict``
output without ``--save_probabilities``, ``nnUNetv2_apply_postprocessing`` output, ``nnUNetv2_ensemble`` /
``find_best_configuration`` ensembles; any folder ``nnUNetv2_evaluate_folder`` accepts (segmentations named like
the references, dataset.json in the folder or given).

With references, per case and class: nnU-Net's Dice/IoU/TP/FP/FN/TN/n_pred/n_ref, precision, recall, hard volumes
``V_pred``/``V_ref`` and ``dV = V_pred - V_ref`` (ml, or cm^2 for 2D), ``rel_dV``, and the surface metrics HD95/NSD
(:mod:`.surface`). The soft (probability) metrics -- soft volumes, soft Dice, NLL, Brier, ECE, the threshold
sweep -- are absent from the summary, not zero. Without references (a test set): the per-case predicted volumes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nnunet_losses.evaluation.cases import _case_ids, _load_descriptions, _reader_writer, _spec, load_reference, voxel_volume
from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.metrics import _div, class_counts, means
from nnunet_losses.evaluation.spec import TaskSpec
from nnunet_losses.evaluation.surface import DEFAULT_TOLERANCE_MM, image_surface_metrics

OUTPUT_FILES = ("summary.json", "per_case.csv")


def is_label_map_folder(inputs, dataset_json=None, reference_folder=None) -> bool:
    """One folder holding segmentations (dataset.json's file ending), and no ``.npz`` probabilities -- or
    probabilities but no reference folder (a test set: the per-case volume report, soft where npz exist)."""
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        return False
    folder = Path(inputs[0])
    dj = Path(dataset_json) if dataset_json else folder / "dataset.json"
    if not dj.is_file() or (reference_folder is not None and any(folder.glob("*.npz"))):
        return False
    import json
    ending = json.loads(dj.read_text()).get("file_ending", "")
    return bool(ending) and any(f.name.endswith(ending) for f in folder.iterdir())


def hard_class_metrics(prediction: np.ndarray, reference: np.ndarray, spec: TaskSpec, voxel_vol: float) -> Dict[str, dict]:
    """Per class, from the label-value confusion matrix of the non-ignored voxels (as nnU-Net's
    ``compute_metrics``: Dice and IoU NaN when reference and prediction are both empty)."""
    n = spec.n_label_values
    valid = np.ones(reference.shape, bool) if spec.ignore_label is None else reference != spec.ignore_label
    pred = np.clip(prediction[valid].astype(np.int64), 0, n - 1)
    confusion = np.bincount(reference[valid].astype(np.int64) * n + pred, minlength=n * n).reshape(n, n)
    out = {}
    for key, cls in zip(spec.keys, spec.classes):
        tp, fp, fn, tn = class_counts(confusion, spec.membership(cls))
        v_ref, v_pred = (tp + fn) * voxel_vol, (tp + fp) * voxel_vol
        out[key] = {"Dice": _div(2 * tp, 2 * tp + fp + fn), "IoU": _div(tp, tp + fp + fn), "FP": fp, "TP": tp,
                    "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn, "precision": _div(tp, tp + fp),
                    "recall": _div(tp, tp + fn), "V_ref": v_ref, "V_pred": v_pred, "dV": v_pred - v_ref,
                    "abs_dV": abs(v_pred - v_ref), "rel_dV": _div(v_pred - v_ref, v_ref)}
    return out


def _read(rw, path: Path):
    try:
        seg, props = rw.read_seg(str(path))
    except Exception as e:  # noqa: BLE001 -- reader errors vary by format
        raise EvaluationError(f"{path}: cannot read the segmentation ({type(e).__name__}: {e})") from None
    seg = np.asarray(seg)
    seg = seg[0] if seg.ndim >= 2 and seg.shape[0] == 1 else seg
    labels = seg.astype(np.int64)  # nnU-Net's readers return float arrays
    if not np.array_equal(labels, seg) or (labels.size and labels.min() < 0):
        raise EvaluationError(f"{path}: holds non-integer or negative values; it must be a label map")
    return labels, props


def soft_volumes(npz: Path, spec: TaskSpec, shape, voxel_vol: float) -> Dict[str, dict]:
    """Per class, the Poisson-binomial volume of a case's saved probabilities (``V_mean`` = sum p * v, ``V_sd``,
    95 % interval; :func:`.volume.volume_distribution`), after the checks ``evaluate`` makes on them."""
    from nnunet_losses.evaluation.cases import load_probabilities
    from nnunet_losses.evaluation.probabilities import check_range, check_sums_to_one, sum_tolerance
    from nnunet_losses.evaluation.volume import volume_distribution
    p = load_probabilities(npz)
    if p.shape[0] != spec.n_channels or tuple(p.shape[1:]) != tuple(shape):
        raise EvaluationError(f"{npz}: probabilities of shape {p.shape} do not fit the segmentation {tuple(shape)} "
                              f"with {spec.n_channels} channels")
    tol = sum_tolerance(p.dtype, spec.n_channels)
    if check_range(p, str(npz), tol):
        p = np.clip(p, 0.0, 1.0)
    if not spec.has_regions:
        check_sums_to_one(p, str(npz), tol)
    out = {}
    for key, ch in zip(spec.keys, spec.class_channels):
        c = p[ch].astype(np.float64, copy=False)
        out[key] = volume_distribution(c.sum(), np.square(c).sum(), voxel_vol)
    return out


def _case(path: Path, ref_path: Optional[Path], spec: TaskSpec, rw, tolerance_mm: Optional[float],
          file_ending: str) -> dict:
    pred, props = _read(rw, path)
    spacing = [float(s) for s in props.get("spacing", [1.0] * pred.ndim)]
    vv, unit, _ = voxel_volume(spacing, pred.shape)
    row = {"case": path.name, "prediction_file": str(path), "reference_file": str(ref_path) if ref_path else None,
           "fold": None, "spacing": spacing, "voxel_volume": vv, "unit": unit, "shape": list(pred.shape)}
    if ref_path is None:
        labels = np.clip(pred.astype(np.int64), 0, spec.n_label_values - 1)
        row["metrics"] = {k: {"V_pred": int(spec.membership(cls)[labels].sum()) * vv}
                          for k, cls in zip(spec.keys, spec.classes)}
        npz = path.parent / f"{path.name[:-len(file_ending)]}.npz"
        if npz.is_file():
            for key, volume in soft_volumes(npz, spec, pred.shape, vv).items():
                row["metrics"][key].update(volume)
        return row
    ref, _ = load_reference(ref_path, rw)
    if ref.shape != pred.shape:
        raise EvaluationError(f"{path}: shape {pred.shape} differs from the reference {ref_path} ({ref.shape})")
    row["metrics"] = hard_class_metrics(pred, ref, spec, vv)
    if tolerance_mm is None:
        return row
    for key, s in image_surface_metrics(pred, ref, spec, spacing, tolerance_mm).items():
        row["metrics"][key].update(s)
    return row


def evaluate_label_maps(folder, output_folder=None, *, reference_folder=None, dataset_json=None, plans=None,
                        tolerance_mm: Optional[float] = DEFAULT_TOLERANCE_MM, chill: bool = False, overwrite: bool = False,
                        progress: bool = False, name: Optional[str] = None) -> dict:
    """Hard metrics (and HD95/NSD; ``tolerance_mm=None``: without them) of a label-map folder against references,
    or its predicted volumes."""
    from tqdm import tqdm
    folder = Path(folder).resolve()
    dj, dj_path, pl = _load_descriptions(folder, dataset_json, plans)
    spec = _spec(dj, dj_path)
    fe = dj["file_ending"]
    names = sorted(_case_ids(folder, fe)["seg"])
    if not names:
        raise EvaluationError(f"{folder}: no segmentations ending in {fe}")
    ref = Path(reference_folder).resolve() if reference_folder is not None else None
    if ref is not None:
        from nnunet_losses.evaluation.cases import _check_references
        _check_references(folder, ref, names, fe, chill)
    rw = _reader_writer(dj, pl, folder / f"{names[0]}{fe}")()
    rows: List[dict] = []
    for c in tqdm(names, disable=not progress, desc=f"evaluating {folder.name}", unit="case"):
        rows.append(_case(folder / f"{c}{fe}", ref / f"{c}{fe}" if ref else None, spec, rw, tolerance_mm, fe))
        rows[-1]["case"] = c
    units = {r.pop("unit") for r in rows}
    summary = {"metric_per_case": rows, "volume_unit": units.pop() if len(units) == 1 else "mixed",
               "n_cases": len(rows), "name": name or folder.name,
               "source": {"mode": "label_maps" if ref else "label_maps_without_references",
                          "prediction_folder": str(folder), "reference_folder": str(ref) if ref else None},
               "task": {"type": "regions" if spec.has_regions else "labels", "classes": spec.keys},
               "settings": {"surface_tolerance_mm": tolerance_mm}}
    summary["mean"], summary["foreground_mean"], summary["nan_counts"] = means(rows, spec.keys)
    if output_folder is not None:
        from nnunet_losses.evaluation.outputs import AtomicFolder, check_destination, write_csv, write_json
        dest = check_destination(Path(output_folder), [folder] + ([ref] if ref else []), overwrite, OUTPUT_FILES)
        with AtomicFolder(dest) as tmp:
            write_json(summary, tmp / "summary.json")
            write_csv([{"case": r["case"], "class": k, **m, "volume_unit": summary["volume_unit"]}
                       for r in rows for k, m in r["metrics"].items()], tmp / "per_case.csv")
        summary["output_folder"] = str(dest)
    return summary

"""Evaluation against *probabilistic* references: a per-voxel reference probability map or K raters per case.

The reference of a case is ``y = (y_0 .. y_{C-1})``, class probabilities per voxel, read from the raw dataset:

* ``probabilitiesTr/<case><file_ending>``: P(voxel is label 1) of a two-label dataset (``y = (1 - q, q)``), as
  ``nnunet-losses phantom`` writes it; or
* ``ratersTr/<case>_rater<k><file_ending>``, k = 0..K-1 (the multi-rater format of docs/trainers.md):
  ``y_c = 1/K sum_k [r_k == c]``.

Against it, for nnU-Net's predicted probabilities ``p`` (``<case>.npz``) and segmentation ``s`` (``<case>`` +
file ending) of every foreground class ``c``, with ``v`` the volume of a voxel (ml; nnU-Net's 2D images: cm²):

* expected reference volume ``V_ref = v sum_i y_ic``; soft volume ``v sum_i p_ic``; hard volume ``v sum_i [s_i = c]``;
  ``dV_soft``, ``dV_hard``: those minus ``V_ref``;
* soft Dice ``2 sum p y / (sum p + sum y)`` and the Dice of the segmentation ``2 sum [s = c] y / (sum [s = c] + sum y)``;
* Brier score ``1/N sum_i sum_c (p_ic - y_ic)^2`` and NLL ``-1/N sum_i sum_c y_ic log max(p_ic, 1e-7)`` (all classes);
* calibration against the reference probabilities: ``ECE_ref = sum_b n_b / N |mean_b p - mean_b y|`` over 10
  equal-width bins of ``p_c``; on the uncertain voxels ``0 < y < 1`` the mean ``|p - y|`` and the means of ``p``
  and of ``y`` (NaN if there are none).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nnunet_losses.evaluation.cases import load_probabilities, voxel_volume
from nnunet_losses.evaluation.errors import EvaluationError

PROBABILITY_FOLDER = "probabilitiesTr"
RATER_FOLDER = "ratersTr"
REFERENCE_KINDS = ("probabilities", "raters")
NLL_EPS = 1e-7
N_BINS = 10


# ------------------------------------------------------------------------------------------------ formulas
def expected_volume(y: np.ndarray, voxel: float) -> float:
    """``V = v sum_i y_i``: the expected volume of a probabilistic map (or the volume of a binary one)."""
    return float(voxel * np.sum(y, dtype=np.float64))


def dice_against_soft(x: np.ndarray, y: np.ndarray) -> float:
    """``2 sum x y / (sum x + sum y)`` (NaN when both are empty)."""
    denom = float(np.sum(x, dtype=np.float64) + np.sum(y, dtype=np.float64))
    return 2.0 * float(np.sum(x.astype(np.float64) * y)) / denom if denom > 0 else float("nan")


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """``1/N sum_i sum_c (p_ic - y_ic)^2`` over ``(C, *spatial)`` arrays."""
    return float(np.sum((p.astype(np.float64) - y) ** 2) / np.prod(p.shape[1:]))


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """``-1/N sum_i sum_c y_ic log max(p_ic, 1e-7)`` (cross-entropy against the soft reference)."""
    return float(-np.sum(y * np.log(np.maximum(p.astype(np.float64), NLL_EPS))) / np.prod(p.shape[1:]))


def reference_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """``sum_b n_b / N |mean_b p - mean_b y|`` over ``n_bins`` equal-width bins of ``p`` (last bin closed)."""
    p, y = p.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, p, n_bins) - np.bincount(bins, y, n_bins))  # = n_b |mean_b p - mean_b y|
    return float(gap.sum() / max(1, n.sum()))


def uncertain_region_metrics(p: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """On the uncertain voxels ``U = {0 < y < 1}``: ``mae_uncertain = mean_U |p - y|``, and the means
    ``mean_p_uncertain``, ``mean_y_uncertain`` (calibration in the large there); NaN if ``U`` is empty."""
    u = (y > 0) & (y < 1)
    if not u.any():
        return {"mae_uncertain": float("nan"), "mean_p_uncertain": float("nan"), "mean_y_uncertain": float("nan")}
    pu, yu = p[u].astype(np.float64), y[u]
    return {"mae_uncertain": float(np.mean(np.abs(pu - yu))), "mean_p_uncertain": float(pu.mean()),
            "mean_y_uncertain": float(yu.mean())}


def soft_reference_metrics(p: np.ndarray, seg: np.ndarray, y: np.ndarray, voxel: float) -> Dict[str, object]:
    """Every metric of the module docstring for one case: ``p``, ``y`` ``(C, *spatial)``, ``seg`` ``(*spatial)``."""
    if p.shape != y.shape or seg.shape != p.shape[1:]:
        raise EvaluationError(f"prediction {p.shape} / segmentation {seg.shape} / reference {y.shape} do not match")
    out: Dict[str, object] = {"brier": brier(p, y), "nll": nll(p, y)}
    per_class = {}
    for c in range(1, p.shape[0]):
        hard = (seg == c).astype(np.float64)
        v_ref = expected_volume(y[c], voxel)
        per_class[str(c)] = {
            "expected_reference_volume": v_ref, "soft_volume": expected_volume(p[c], voxel),
            "hard_volume": expected_volume(hard, voxel),
            "dV_soft": expected_volume(p[c], voxel) - v_ref, "dV_hard": expected_volume(hard, voxel) - v_ref,
            "soft_dice": dice_against_soft(p[c], y[c]), "dice": dice_against_soft(hard, y[c]),
            "calibration_error": reference_calibration_error(p[c], y[c]),
            **uncertain_region_metrics(p[c], y[c])}
    out["classes"] = per_class
    return out


# ------------------------------------------------------------------------------------------------ reading
def _reader(dataset_json: dict, example: Path):
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    return determine_reader_writer_from_dataset_json(dataset_json, str(example), verbose=False)()


def reference_kind(raw_dataset: Path) -> str:
    """``"probabilities"`` if the dataset has ``probabilitiesTr/``, else ``"raters"`` if it has ``ratersTr/``."""
    for kind, folder in zip(REFERENCE_KINDS, (PROBABILITY_FOLDER, RATER_FOLDER)):
        if (Path(raw_dataset) / folder).is_dir():
            return kind
    raise EvaluationError(f"{raw_dataset} has neither {PROBABILITY_FOLDER}/ nor {RATER_FOLDER}/: no probabilistic "
                          f"reference to evaluate against (see docs/evaluation.md)")


def read_soft_reference(raw_dataset: Path, case: str, num_classes: int, kind: str, dataset_json: dict):
    """``(y (C, *spatial) float64, spacing)`` of ``case`` from ``probabilitiesTr/`` or ``ratersTr/``."""
    raw_dataset, ending = Path(raw_dataset), dataset_json["file_ending"]
    if kind == "probabilities":
        f = raw_dataset / PROBABILITY_FOLDER / f"{case}{ending}"
        if not f.is_file():
            raise EvaluationError(f"{f}: reference probability map is missing")
        if num_classes != 2:
            raise EvaluationError(f"{f}: a probability map is P(label 1) of a two-label dataset; this one has "
                                  f"{num_classes} labels (give raters instead)")
        q, props = _reader(dataset_json, f).read_images([str(f)])
        q = np.asarray(q[0], dtype=np.float64)
        if q.min() < 0 or q.max() > 1:
            raise EvaluationError(f"{f}: probabilities must lie in [0, 1], found [{q.min():g}, {q.max():g}]")
        return np.stack([1.0 - q, q]), props["spacing"]
    files = sorted((raw_dataset / RATER_FOLDER).glob(f"{case}_rater*{ending}"))
    if len(files) < 2:
        raise EvaluationError(f"{raw_dataset / RATER_FOLDER}: case {case} needs K >= 2 raters "
                              f"{case}_rater<k>{ending}, found {len(files)}")
    reader = _reader(dataset_json, files[0])
    y = None
    for f in files:
        r, props = reader.read_seg(str(f))
        r = np.asarray(r[0])
        if r.min() < 0 or r.max() >= num_classes or not np.array_equal(r, np.round(r)):
            raise EvaluationError(f"{f}: a rater map must hold the labels 0..{num_classes - 1}")
        onehot = (r[None] == np.arange(num_classes).reshape(-1, *([1] * r.ndim))).astype(np.float64)
        y = onehot if y is None else y + onehot
    return y / len(files), props["spacing"]


def evaluate_soft_reference(prediction_folder, raw_dataset, kind: Optional[str] = None,
                            output_file=None) -> Dict[str, object]:
    """Metrics of every ``<case>.npz`` (+ segmentation) in ``prediction_folder`` (nnU-Net's ``fold_X/validation``
    with ``--npz``, or ``nnUNetv2_predict --save_probabilities`` output) against the probabilistic reference of the
    raw dataset folder ``raw_dataset``; per case and the mean over cases. Written as JSON to ``output_file`` if
    given (never over an existing file)."""
    prediction_folder, raw_dataset = Path(prediction_folder), Path(raw_dataset)
    if output_file is not None and Path(output_file).exists():
        raise EvaluationError(f"{output_file} exists; choose another output file")
    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    num_classes = len([v for k, v in dataset_json["labels"].items() if k != "ignore"])
    kind = kind or reference_kind(raw_dataset)
    if kind not in REFERENCE_KINDS:
        raise EvaluationError(f"reference kind must be one of {REFERENCE_KINDS}, got {kind!r}")
    cases = sorted(f.name[:-4] for f in prediction_folder.glob("*.npz"))
    if not cases:
        raise EvaluationError(f"{prediction_folder}: no <case>.npz probabilities (train with --npz or predict with "
                              f"--save_probabilities)")
    per_case: List[dict] = []
    for case in cases:
        y, spacing = read_soft_reference(raw_dataset, case, num_classes, kind, dataset_json)
        p = load_probabilities(prediction_folder / f"{case}.npz")
        seg_file = prediction_folder / f"{case}{dataset_json['file_ending']}"
        seg = np.asarray(_reader(dataset_json, seg_file).read_seg(str(seg_file))[0][0])
        voxel, unit, _ = voxel_volume(spacing, y.shape[1:])
        per_case.append({"case": case, "volume_unit": unit, **soft_reference_metrics(p, seg, y, voxel)})
    result = {"reference": kind, "raw_dataset": str(raw_dataset), "predictions": str(prediction_folder),
              "per_case": per_case, "mean": mean_metrics(per_case)}
    if output_file is not None:
        Path(output_file).write_text(json.dumps(result, indent=2))
    return result


def mean_metrics(per_case: List[dict]) -> Dict[str, object]:
    """Mean over cases of every metric (NaN-aware), per class for the class metrics."""
    out: Dict[str, object] = {k: float(np.nanmean([c[k] for c in per_case])) for k in ("brier", "nll")}
    out["classes"] = {cls: {k: float(np.nanmean([c["classes"][cls][k] for c in per_case]))
                            for k in per_case[0]["classes"][cls]} for cls in per_case[0]["classes"]}
    return out

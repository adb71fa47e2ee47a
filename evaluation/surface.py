"""Surface metrics per case and class: HD95 and the normalized surface Dice (NSD) at a tolerance in mm, spacing
aware, computed by MONAI (``monai.metrics``).

Definitions (MONAI's, checked against a brute-force float64 computation in tests/test_surface.py):

* surface of a mask: its voxels with a face neighbour outside the mask (``mask XOR binary_erosion(mask)``; the
  image border counts as outside);
* ``d(a, B)``: Euclidean distance in mm (voxel indices x spacing) from surface voxel ``a`` to the nearest surface
  voxel of ``B``;
* ``HD95 = max(P95{d(a, R) : a in S_pred}, P95{d(r, P) : r in S_ref})`` (P95: 95th percentile, linear
  interpolation);
* ``NSD_tau = (|{a in S_pred : d(a, R) <= tau}| + |{r in S_ref : d(r, P) <= tau}|) / (|S_pred| + |S_ref|)``.

Empty masks (as nnU-Net's Dice): reference and prediction both empty -> HD95 and NSD are NaN (left out of means);
exactly one empty -> HD95 = inf, NSD = 0. Reference voxels with the ignore label count as outside both masks.

Why MONAI: maintained, installs with our pins (torch is already a dependency), and its distance transform is
scipy's exact EDT on the masks' bounding box. DeepMind's ``surface-distance`` (PyPI 0.1) was the other candidate:
it calls ``np.Inf``, removed in NumPy 2, on empty masks, and deprecated ``scipy.ndimage.filters``.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

from nnunet_losses.evaluation.spec import TaskSpec

NAN = float("nan")
DEFAULT_TOLERANCE_MM = 1.0
SURFACE_METRICS = ("HD95", "NSD")


def class_surface_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                          tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> Dict[str, float]:
    """HD95 (mm) and NSD at ``tolerance_mm`` of two boolean masks of the same shape (2D or 3D)."""
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape or len(spacing) != prediction.ndim:
        raise ValueError(f"masks {prediction.shape} / {reference.shape} and spacing {list(spacing)} do not match")
    has_pred, has_ref = bool(prediction.any()), bool(reference.any())
    if not has_pred and not has_ref:
        return {"HD95": NAN, "NSD": NAN}
    if not has_pred or not has_ref:
        return {"HD95": math.inf, "NSD": 0.0}
    import warnings
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    p = torch.from_numpy(prediction[None, None])
    r = torch.from_numpy(reference[None, None])
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about an argument of its own internal call
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)
        nsd = compute_surface_dice(p, r, [float(tolerance_mm)], include_background=True, spacing=sp)
    return {"HD95": float(hd.reshape(-1)[0]), "NSD": float(nsd.reshape(-1)[0])}


def surface_metrics(prediction: np.ndarray, reference: np.ndarray, spec: TaskSpec, spacing: Sequence[float],
                    tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> Dict[str, Dict[str, float]]:
    """``{class key: {"HD95", "NSD"}}`` of two label maps (nnU-Net's hard segmentation and the reference)."""
    prediction, reference = np.asarray(prediction).astype(np.int64), np.asarray(reference).astype(np.int64)
    valid = np.ones(reference.shape, dtype=bool) if spec.ignore_label is None else reference != spec.ignore_label
    out = {}
    for key, cls in zip(spec.keys, spec.classes):
        member = spec.membership(cls)
        pred = member[np.clip(prediction, 0, len(member) - 1)] & (prediction < len(member)) & valid
        ref = member[np.clip(reference, 0, len(member) - 1)] & valid
        out[key] = class_surface_metrics(pred, ref, spacing, tolerance_mm)
    return out


def image_surface_metrics(prediction: np.ndarray, reference: np.ndarray, spec: TaskSpec, spacing: Sequence[float],
                          tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> Dict[str, Dict[str, float]]:
    """:func:`surface_metrics` at the image's own geometry: an nnU-Net 2D image (one slice with a dummy first
    spacing) is measured in 2D, its dummy axis dropped -- else every in-plane boundary voxel would also count as
    a surface facing the image border across the dummy axis."""
    from nnunet_losses.evaluation.cases import voxel_volume
    if prediction.ndim == 3 and voxel_volume(spacing, prediction.shape)[2]:
        return surface_metrics(prediction[0], reference[0], spec, list(spacing)[1:], tolerance_mm)
    return surface_metrics(prediction, reference, spec, spacing, tolerance_mm)


class CaseSurface:
    """``evaluate``'s per-case hook (picklable): HD95 and NSD of nnU-Net's hard map of the case in memory."""

    def __init__(self, spec: TaskSpec, tolerance_mm: float = DEFAULT_TOLERANCE_MM):
        if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
            raise ValueError(f"the surface tolerance must be a positive number of mm, got {tolerance_mm}")
        self.spec, self.tolerance_mm = spec, float(tolerance_mm)

    def __call__(self, case, probabilities, reference, stats, spacing) -> dict:
        prediction = self.spec.nnunet_map(probabilities)[0]
        return {"surface": image_surface_metrics(prediction, reference, self.spec, spacing, self.tolerance_mm)}

"""Where the bias lives: FP and FN volume and calibration per distance band from the reference surface.

For a class with reference mask ``Y``, every valid voxel gets the Euclidean distance (in mm, the image's spacing:
``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``) from its centre to the nearest voxel centre on the
other side: inside voxels to the nearest outside voxel, outside voxels to the nearest inside voxel. Bands, from
deep inside to far outside: inside ``> 4``, ``(2, 4]``, ``(1, 2]``, ``(0, 1]`` mm, outside ``(0, 1]``, ``(1, 2]``,
``(2, 4]``, ``> 4`` mm (an empty reference puts every voxel outside ``> 4``). Per band: the voxels, the FP and FN
volume of nnU-Net's hard map, and the one-vs-rest reliability table (count, sum p, sum y per calibration bin, the
evaluation's bins) from which the band's ECE follows -- so a reader sees whether a loss moves the boundary
(FP/FN near the surface) or mis-calibrates the interior.

Cost: the distance transforms run on the reference's bounding box grown by ``4 mm + 1 voxel`` per axis only
(voxels outside it are more than 4 mm away: outside ``> 4`` by construction); that band's counts are the case's
totals (from the streamed pass) minus the box's. Still a few distance transforms per case and class, so it is
optional (``evaluate(..., bands=True)``, ``--bands``).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

EDGES_MM = (1.0, 2.0, 4.0)
BANDS = ("inside >4", "inside 2-4", "inside 1-2", "inside 0-1", "outside 0-1", "outside 1-2", "outside 2-4",
         "outside >4")
FAR_OUTSIDE = len(BANDS) - 1


def band_index(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Band (index into :data:`BANDS`) of every voxel of ``mask``'s array (see module doc)."""
    from scipy.ndimage import distance_transform_edt
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, FAR_OUTSIDE, dtype=np.int8)
    edges = np.asarray(EDGES_MM)
    out = np.empty(mask.shape, dtype=np.int8)
    if mask.all():
        out[:] = 0
        return out
    d_in = distance_transform_edt(mask, sampling=spacing)
    d_out = distance_transform_edt(~mask, sampling=spacing)
    out[mask] = 3 - np.searchsorted(edges, d_in[mask], side="left")
    out[~mask] = 4 + np.searchsorted(edges, d_out[~mask], side="left")
    return out


def _box(mask: np.ndarray, spacing: Sequence[float]):
    """Slices of the mask's bounding box grown by ``ceil(4 mm / spacing) + 1`` voxels per axis (clipped)."""
    idx = np.nonzero(mask)
    box = []
    for ax, sp in enumerate(spacing):
        grow = int(math.ceil(EDGES_MM[-1] / sp)) + 1
        box.append(slice(max(int(idx[ax].min()) - grow, 0), min(int(idx[ax].max()) + 1 + grow, mask.shape[ax])))
    return tuple(box)


def calibration_bin(p: np.ndarray, resolution: int, n_bins: int) -> np.ndarray:
    """The evaluation's calibration bin of each p (fine bin ``j = ceil(p R)``; bin 0 holds p == 0)."""
    j = np.ceil(np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0) * resolution).astype(np.intp)
    return np.where(j == 0, 0, (j - 1) // (resolution // n_bins))


def case_bands(probabilities: np.ndarray, reference: np.ndarray, spec, stats, grid,
               spacing: Sequence[float]) -> Dict[str, dict]:
    """Per class: ``{count (8,), FP (8,), FN (8,) in voxels, reliability (8, B, 3)}`` of one case."""
    from nnunet_losses.evaluation.metrics import class_counts
    B, R = grid.n_bins, grid.resolution
    ign = spec.ignore_label
    out = {}
    for key, cls, ch in zip(spec.keys, spec.classes, spec.class_channels):
        member = spec.membership(cls)
        y_full = member[reference]
        box = _box(y_full, spacing) if y_full.any() else tuple(slice(0, 0) for _ in reference.shape)
        ref = reference[box]
        valid = np.ones(ref.shape, bool) if ign is None else ref != ign
        band = band_index(y_full[box], spacing)[valid]
        y = y_full[box][valid]
        pred = member[spec.hard_map(probabilities[(slice(None),) + box])][valid]
        p = probabilities[(ch,) + box][valid]
        n = len(BANDS)
        count = np.bincount(band, minlength=n).astype(np.int64)
        fp = np.bincount(band[pred & ~y], minlength=n).astype(np.int64)
        fn = np.bincount(band[~pred & y], minlength=n).astype(np.int64)
        cell = band.astype(np.intp) * B + calibration_bin(p, R, B)
        rel = np.stack([np.bincount(cell, minlength=n * B),
                        np.bincount(cell, weights=np.clip(p.astype(np.float64), 0, 1), minlength=n * B),
                        np.bincount(cell, weights=y, minlength=n * B)], -1).reshape(n, B, 3).astype(np.float64)
        # outside the box: everything more than 4 mm outside, i.e. the case's totals minus the box
        _tp, fp_all, fn_all, _tn = class_counts(stats.confusion, member)
        count[FAR_OUTSIDE] += stats.n_valid - count.sum()
        fp[FAR_OUTSIDE] += fp_all - fp.sum()
        fn[FAR_OUTSIDE] += fn_all - fn.sum()
        rel[FAR_OUTSIDE] += stats.reliability[ch] - rel.sum(0)
        out[key] = {"count": count, "FP": fp, "FN": fn, "reliability": rel}
    return out


def _ece(rel: np.ndarray) -> float:
    n = rel[:, 0].sum()
    return float(np.abs(rel[:, 2] - rel[:, 1]).sum() / n) if n else math.nan


def case_band_table(bands: Dict[str, dict], voxel_volume: float) -> Dict[str, Dict[str, dict]]:
    """Per class and band: voxels, FP and FN volume, ECE (one case)."""
    return {key: {name: {"n_voxels": int(b["count"][i]), "FP_volume": float(b["FP"][i]) * voxel_volume,
                         "FN_volume": float(b["FN"][i]) * voxel_volume, "ECE": _ece(b["reliability"][i])}
                  for i, name in enumerate(BANDS)} for key, b in bands.items()}


def bands_summary(per_case_bands: Sequence[Dict[str, dict]], voxel_volumes: Sequence[float]) -> dict:
    """Across cases per class and band: mean FP and FN volume per case, and the ECE of all the band's voxels."""
    out = {"edges_mm": list(EDGES_MM), "bands": list(BANDS), "per_class": {}}
    if not per_case_bands:
        return out
    for key in per_case_bands[0]:
        rel = np.sum([b[key]["reliability"] for b in per_case_bands], axis=0)
        fp = np.array([b[key]["FP"] * v for b, v in zip(per_case_bands, voxel_volumes)])
        fn = np.array([b[key]["FN"] * v for b, v in zip(per_case_bands, voxel_volumes)])
        n = np.sum([b[key]["count"] for b in per_case_bands], axis=0)
        out["per_class"][key] = {name: {"n_voxels": int(n[i]), "FP_volume_mean": float(fp[:, i].mean()),
                                        "FN_volume_mean": float(fn[:, i].mean()), "ECE_pooled": _ece(rel[i])}
                                 for i, name in enumerate(BANDS)}
    return out


class CaseBands:
    """``evaluate``'s per-case hook (picklable): the bands of the case in memory, from the pass's totals."""

    def __init__(self, spec, grid):
        self.spec, self.grid = spec, grid

    def __call__(self, case, probabilities, reference, stats, spacing) -> dict:
        return {"bands": case_bands(probabilities, reference, self.spec, stats, self.grid, spacing)}

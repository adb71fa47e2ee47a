"""HD95 and NSD (evaluation/surface.py) against a brute-force float64 computation written from the definitions
(every surface voxel against every other, no distance transform), on small 2D and 3D masks with anisotropic
spacing, masks touching the image border, and the empty-mask conventions."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnunet_losses.evaluation.spec import TaskSpec
from nnunet_losses.evaluation.surface import class_surface_metrics, surface_metrics


def _surface_points(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it (or outside the image), as index rows."""
    pts = []
    for idx in itertools.product(*[range(n) for n in mask.shape]):
        if not mask[idx]:
            continue
        for axis in range(mask.ndim):
            for step in (-1, 1):
                nb = list(idx)
                nb[axis] += step
                if not (0 <= nb[axis] < mask.shape[axis]) or not mask[tuple(nb)]:
                    pts.append(idx)
                    break
            else:
                continue
            break
    return np.array(pts, dtype=np.float64).reshape(-1, mask.ndim)


def _directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64)
    return np.array([min(math.sqrt(float(np.sum(((p - q) * s) ** 2))) for q in b) for p in a])


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> dict:
    if not pred.any() and not ref.any():
        return {"HD95": math.nan, "NSD": math.nan}
    if not pred.any() or not ref.any():
        return {"HD95": math.inf, "NSD": 0.0}
    sp, sr = _surface_points(pred), _surface_points(ref)
    d_pr, d_rp = _directed(sp, sr, spacing), _directed(sr, sp, spacing)
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    nsd = (np.sum(d_pr <= tol) + np.sum(d_rp <= tol)) / (len(d_pr) + len(d_rp))
    return {"HD95": float(hd95), "NSD": float(nsd)}


def _random_blob(rng, shape, p=0.35):
    from scipy import ndimage
    m = ndimage.binary_opening(rng.random(shape) < p + 0.25) if len(shape) == 2 else rng.random(shape) < p
    return ndimage.binary_closing(m) | m


CASES = [((9, 11), (1.0, 1.0), 1.0), ((12, 10), (0.7, 1.9), 1.5), ((6, 7, 8), (2.5, 0.8, 0.8), 1.0),
         ((7, 6, 9), (1.0, 1.3, 0.6), 2.0)]


@pytest.mark.parametrize("shape, spacing, tol", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(shape, spacing, tol, seed):
    rng = np.random.default_rng(seed)
    pred, ref = _random_blob(rng, shape), _random_blob(rng, shape)
    assert pred.any() and ref.any()
    got, want = class_surface_metrics(pred, ref, spacing, tol), brute_force(pred, ref, spacing, tol)
    assert got["HD95"] == pytest.approx(want["HD95"], rel=1e-6)
    assert got["NSD"] == pytest.approx(want["NSD"], rel=1e-6)


def test_shifted_box_known_values():
    """A box and the same box shifted by 2 voxels along an axis of spacing 1.5 mm: every surface voxel of the
    moved faces is 3 mm away, the side faces 0 mm."""
    ref = np.zeros((10, 10, 10), bool)
    ref[2:6, 3:7, 3:7] = True
    pred = np.roll(ref, 2, axis=0)
    got = class_surface_metrics(pred, ref, (1.5, 1.0, 1.0), tolerance_mm=2.9)
    want = brute_force(pred, ref, (1.5, 1.0, 1.0), 2.9)
    assert got == pytest.approx(want)
    assert got["HD95"] == pytest.approx(3.0)
    assert class_surface_metrics(pred, ref, (1.5, 1.0, 1.0), tolerance_mm=3.0)["NSD"] == 1.0


@pytest.mark.parametrize("pred_empty, ref_empty, want", [
    (True, True, {"HD95": math.nan, "NSD": math.nan}),
    (True, False, {"HD95": math.inf, "NSD": 0.0}),
    (False, True, {"HD95": math.inf, "NSD": 0.0})])
def test_empty_conventions(pred_empty, ref_empty, want):
    m = np.zeros((6, 6), bool)
    m[2:4, 2:4] = True
    pred, ref = (np.zeros_like(m) if pred_empty else m), (np.zeros_like(m) if ref_empty else m)
    got = class_surface_metrics(pred, ref, (1.0, 1.0))
    assert got == pytest.approx(want, nan_ok=True)
    assert got == pytest.approx(brute_force(pred, ref, (1.0, 1.0), 1.0), nan_ok=True)


def test_label_maps_per_class_and_ignore_label():
    rng = np.random.default_rng(5)
    ref = rng.integers(0, 3, (8, 9, 7))
    pred = rng.integers(0, 3, (8, 9, 7))
    ref[0] = 3  # ignore label: outside both masks
    spec = TaskSpec.labels(3, ignore_label=3)
    got = surface_metrics(pred, ref, spec, (1.0, 2.0, 0.5), 1.0)
    valid = ref != 3
    for label in (1, 2):
        want = brute_force((pred == label) & valid, (ref == label) & valid, (1.0, 2.0, 0.5), 1.0)
        assert got[str(label)] == pytest.approx(want)


def test_mismatched_spacing_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        class_surface_metrics(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("dim", [2, 3])
def test_evaluate_of_probabilities_adds_surface_metrics_of_the_hard_map(tmp_path, dim):
    """``evaluate(..., surface_tolerance_mm=T)`` on an npz folder: HD95/NSD per case and class equal the brute
    force on nnU-Net's hard map (argmax) of the saved probabilities vs the reference, at the image's own geometry
    (2D images measured in 2D); without the option the columns are absent."""
    import json
    from nnunet_losses.evaluation import evaluate
    from nnunet_losses.evaluation.cases import load_reference
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from test_evaluation_export import make_prediction_folder
    pred, gt = make_prediction_folder(tmp_path, dim=dim, n_cases=2)
    labels = json.loads((pred / "dataset.json").read_text())["labels"]
    s = evaluate(pred, reference_folder=gt, surface_tolerance_mm=2.0)
    for c in s["metric_per_case"]:
        ref, _ = load_reference(c["reference_file"], SimpleITKIO())
        hard = np.load(c["prediction_file"])["probabilities"].argmax(0)
        sp = c["spacing"]
        if dim == 2:
            hard, ref, sp = hard[0], ref[0], sp[1:]
        for name, label in labels.items():
            if label == 0:
                continue
            want = brute_force(hard == label, ref == label, sp, 2.0)
            got = c["metrics"][str(label)]
            for m in ("HD95", "NSD"):
                assert got[m] == pytest.approx(want[m], rel=1e-5, nan_ok=True), (c["case"], name, m)  # float32
    assert "HD95" in s["mean"][str(max(labels.values()))]
    plain = evaluate(pred, reference_folder=gt)
    assert "HD95" not in plain["metric_per_case"][0]["metrics"]["1"]

"""Evaluation against probabilistic references (evaluation/soft_reference.py): each metric against a plain
per-voxel float64 loop written from its formula, and the reading of the phantom's probability maps and raters."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_losses.evaluation.errors import EvaluationError
from nnunet_losses.evaluation.soft_reference import (evaluate_soft_reference, read_soft_reference,
                                                     reference_calibration_error, soft_reference_metrics)


def loops(p, seg, y, voxel):
    """The metrics of one case, one voxel at a time."""
    C, N = p.shape[0], int(np.prod(p.shape[1:]))
    pf, yf, sf = p.reshape(C, N).astype(float), y.reshape(C, N), seg.reshape(N)
    brier = sum((pf[c, i] - yf[c, i]) ** 2 for c in range(C) for i in range(N)) / N
    nll = -sum(yf[c, i] * math.log(max(pf[c, i], 1e-7)) for c in range(C) for i in range(N)) / N
    out = {"brier": brier, "nll": nll, "classes": {}}
    for c in range(1, C):
        sp, sy, sh = sum(pf[c]), sum(yf[c]), sum(1.0 for i in range(N) if sf[i] == c)
        inter_p = sum(pf[c, i] * yf[c, i] for i in range(N))
        inter_h = sum(yf[c, i] for i in range(N) if sf[i] == c)
        bins = {}
        for i in range(N):
            b = min(int(pf[c, i] * 10), 9)
            bins.setdefault(b, []).append(i)
        ece = sum(len(ix) / N * abs(sum(pf[c, i] for i in ix) / len(ix) - sum(yf[c, i] for i in ix) / len(ix))
                  for ix in bins.values())
        unc = [i for i in range(N) if 0 < yf[c, i] < 1]
        out["classes"][str(c)] = {
            "expected_reference_volume": voxel * sy, "soft_volume": voxel * sp, "hard_volume": voxel * sh,
            "dV_soft": voxel * (sp - sy), "dV_hard": voxel * (sh - sy), "soft_dice": 2 * inter_p / (sp + sy),
            "dice": 2 * inter_h / (sh + sy), "calibration_error": ece,
            "mae_uncertain": sum(abs(pf[c, i] - yf[c, i]) for i in unc) / len(unc),
            "mean_p_uncertain": sum(pf[c, i] for i in unc) / len(unc),
            "mean_y_uncertain": sum(yf[c, i] for i in unc) / len(unc)}
    return out


def test_metrics_match_voxel_loops():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 5, 6)) * 2
    p = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    y = rng.dirichlet([0.3, 0.3, 0.3], size=(4, 5, 6)).transpose(3, 0, 1, 2)
    y[:, 0, 0, :] = np.array([1.0, 0, 0])[:, None]  # some certain voxels
    seg = p.argmax(0)
    got, ref = soft_reference_metrics(p, seg, y, 0.008), loops(p, seg, y, 0.008)
    assert got["brier"] == pytest.approx(ref["brier"], rel=1e-6)
    assert got["nll"] == pytest.approx(ref["nll"], rel=1e-6)
    for c in ("1", "2"):
        for k, v in ref["classes"][c].items():
            assert got["classes"][c][k] == pytest.approx(v, rel=1e-6, abs=1e-12), (c, k)


def test_perfect_calibration_and_volume():
    """p = y: no volume error, no calibration error, Brier 0; NLL is then the reference's entropy."""
    y1 = np.random.default_rng(1).uniform(size=(6, 7))
    y = np.stack([1 - y1, y1])
    m = soft_reference_metrics(y.astype(np.float32), (y1 > 0.5).astype(int), y, 1.0)
    assert m["brier"] == pytest.approx(0, abs=1e-12)
    assert m["classes"]["1"]["dV_soft"] == pytest.approx(0, abs=1e-5)
    assert m["classes"]["1"]["calibration_error"] == pytest.approx(0, abs=1e-7)
    entropy = -np.mean(np.sum(y * np.log(y), 0))
    assert m["nll"] == pytest.approx(entropy, rel=1e-5)
    assert reference_calibration_error(np.full(10, 0.9), np.full(10, 0.5)) == pytest.approx(0.4)


def _write(arr, path, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture(scope="module")
def rater_phantom(tmp_path_factory):
    from nnunet_losses.research.phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("raw")
    return write_phantom_dataset(root, 7, dim=2, n_cases=2, shape=(40, 40), radius_range=(5, 7), n_raters=3, seed=2)


def test_reads_probability_map_and_raters(rater_phantom):
    dj = json.loads((rater_phantom / "dataset.json").read_text())
    y, spacing = read_soft_reference(rater_phantom, "case_000", 2, "probabilities", dj)
    q = sitk.GetArrayFromImage(sitk.ReadImage(str(rater_phantom / "probabilitiesTr" / "case_000.nii.gz")))
    np.testing.assert_allclose(y[1], q)
    np.testing.assert_allclose(y.sum(0), 1.0)
    yr, _ = read_soft_reference(rater_phantom, "case_000", 2, "raters", dj)
    raters = [sitk.GetArrayFromImage(sitk.ReadImage(str(rater_phantom / "ratersTr" / f"case_000_rater{k}.nii.gz")))
              for k in range(3)]
    np.testing.assert_allclose(yr[1], np.mean(raters, 0))


def test_evaluate_folder(rater_phantom, tmp_path):
    """A prediction folder as nnU-Net writes it (npz + segmentation); the expected volume is the phantom's."""
    meta = json.loads((rater_phantom / "phantom.json").read_text())
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in ("case_000", "case_001"):
        q = sitk.GetArrayFromImage(sitk.ReadImage(str(rater_phantom / "probabilitiesTr" / f"{case}.nii.gz")))
        p = np.stack([1 - q, q]).astype(np.float32)
        np.savez_compressed(pred / f"{case}.npz", probabilities=p)
        _write((q >= 0.5).astype(np.uint8), pred / f"{case}.nii.gz")
    res = evaluate_soft_reference(pred, rater_phantom, output_file=tmp_path / "soft.json")
    assert res["reference"] == "probabilities" and (tmp_path / "soft.json").is_file()
    for c in res["per_case"]:
        cls = c["classes"]["1"]
        assert cls["expected_reference_volume"] == pytest.approx(meta["cases"][c["case"]]["expected_volume_ml"])
        assert cls["dV_soft"] == pytest.approx(0, abs=1e-6) and cls["calibration_error"] < 1e-6
    with pytest.raises(EvaluationError, match="exists"):
        evaluate_soft_reference(pred, rater_phantom, output_file=tmp_path / "soft.json")
    with pytest.raises(EvaluationError, match="no <case>.npz"):
        evaluate_soft_reference(tmp_path, rater_phantom)

"""``evaluate`` on a folder of label maps without probabilities (post-processed, ensembles, nnUNetv2_predict
output): Dice and hard dV against an independent numpy computation from the images' own spacing, HD95/NSD
against the brute-force reference of test_surface, soft columns absent; without references a volume report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from test_surface import brute_force

SPACING_XYZ = (0.5, 1.0, 2.0)  # SimpleITK order; the arrays' axes are (z, y, x) -> spacing (2.0, 1.0, 0.5)
ARRAY_SPACING = SPACING_XYZ[::-1]


def _write(path, arr):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(3)
    pred_dir, ref_dir = tmp_path / "postprocessed", tmp_path / "gt"
    pred_dir.mkdir()
    ref_dir.mkdir()
    dj = {"labels": {"background": 0, "kidney": 1, "tumour": 2}, "file_ending": ".nii.gz", "channel_names": {"0": "CT"},
          "numTraining": 3}
    (pred_dir / "dataset.json").write_text(json.dumps(dj))
    cases = {}
    for i in range(3):
        ref = np.zeros((6, 9, 8), np.uint8)
        ref[1:5, 2:7, 1:6] = 1
        ref[2:4, 3:5, 2:4] = 2
        pred = ref.copy()
        pred[rng.random(ref.shape) < 0.15] = rng.integers(0, 3)
        if i == 2:
            pred[pred == 2] = 0  # a case whose tumour is missed entirely
        _write(pred_dir / f"case{i}.nii.gz", pred)
        _write(ref_dir / f"case{i}.nii.gz", ref)
        cases[f"case{i}"] = (pred, ref)
    return pred_dir, ref_dir, cases


def test_label_map_folder_against_independent_computation(folders, tmp_path):
    from nnunet_losses.evaluation import evaluate
    pred_dir, ref_dir, cases = folders
    s = evaluate(pred_dir, tmp_path / "out", reference_folder=ref_dir)
    assert s["source"]["mode"] == "label_maps" and "calibration" not in s and "threshold_sweep" not in s
    ml = float(np.prod(ARRAY_SPACING)) / 1000
    by_case = {c["case"]: c["metrics"] for c in s["metric_per_case"]}
    for name, (pred, ref) in cases.items():
        for label in (1, 2):
            m = by_case[name][str(label)]
            p, r = pred == label, ref == label
            assert not any(k in m for k in ("dV_soft", "soft_Dice", "Brier", "ECE", "NLL"))
            assert m["Dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
            assert m["dV"] == pytest.approx((p.sum() - r.sum()) * ml)
            assert m["V_ref"] == pytest.approx(r.sum() * ml)
            want = brute_force(p, r, ARRAY_SPACING, 1.0)
            assert m["HD95"] == pytest.approx(want["HD95"]) and m["NSD"] == pytest.approx(want["NSD"])
    assert math.isinf(by_case["case2"]["2"]["HD95"]) and by_case["case2"]["2"]["NSD"] == 0.0
    assert s["mean"]["1"]["Dice"] == pytest.approx(np.mean([by_case[c]["1"]["Dice"] for c in cases]))
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["mean"]["1"]["dV"] == pytest.approx(s["mean"]["1"]["dV"])
    assert (tmp_path / "out" / "per_case.csv").is_file()


def test_label_map_folder_without_references_gives_volumes(folders):
    from nnunet_losses.evaluation.labelmaps import evaluate_label_maps
    pred_dir, _, cases = folders
    s = evaluate_label_maps(pred_dir)
    assert s["source"]["mode"] == "label_maps_without_references"
    ml = float(np.prod(ARRAY_SPACING)) / 1000
    for c in s["metric_per_case"]:
        pred = cases[c["case"]][0]
        assert c["metrics"]["1"] == {"V_pred": pytest.approx((pred == 1).sum() * ml)}
        assert c["metrics"]["2"]["V_pred"] == pytest.approx((pred == 2).sum() * ml)


def test_cli_on_a_label_map_folder(folders, tmp_path):
    from conftest import run_cli
    pred_dir, ref_dir, _ = folders
    out = run_cli(["nnunet-losses", "evaluate", "-i", pred_dir, "-ref", ref_dir, "-o", tmp_path / "ev"]).stdout
    assert "3 cases of postprocessed (label maps, no probabilities): foreground mean Dice" in out and "HD95" in out
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert f"{s['foreground_mean']['Dice']:.4f}" in out


def test_test_set_with_probabilities_and_no_references_gives_soft_volumes(folders, tmp_path):
    """nnUNetv2_predict --save_probabilities output without references: per case the hard volume and, where the
    npz exists, the Poisson-binomial volume of the saved probabilities (mean sum p * v, sd sqrt(sum p(1-p)) * v),
    from an independent numpy computation; a case without npz keeps the hard volume alone."""
    from nnunet_losses.evaluation import EvaluationError, evaluate
    pred_dir, _, cases = folders
    rng = np.random.default_rng(5)
    probs = {}
    for name in ("case0", "case1"):
        logits = rng.normal(size=(3, *cases[name][0].shape))
        p = np.exp(logits) / np.exp(logits).sum(0)
        np.savez_compressed(pred_dir / f"{name}.npz", probabilities=p.astype(np.float32))
        probs[name] = p.astype(np.float32).astype(np.float64)
    s = evaluate(pred_dir)
    assert s["source"]["mode"] == "label_maps_without_references"
    ml = float(np.prod(ARRAY_SPACING)) / 1000
    by_case = {c["case"]: c["metrics"] for c in s["metric_per_case"]}
    for name, p in probs.items():
        for label in (1, 2):
            m = by_case[name][str(label)]
            assert m["V_pred"] == pytest.approx((cases[name][0] == label).sum() * ml)
            assert m["V_mean"] == pytest.approx(p[label].sum() * ml, rel=1e-9)
            assert m["V_sd"] == pytest.approx(np.sqrt((p[label] * (1 - p[label])).sum()) * ml, rel=1e-9)
            assert m["V_low"] == pytest.approx(m["V_mean"] - 1.959963984540054 * m["V_sd"], rel=1e-9)
    assert set(by_case["case2"]["1"]) == {"V_pred"}
    assert s["mean"]["1"]["V_mean"] == pytest.approx(np.mean([p[1].sum() * ml for p in probs.values()]), rel=1e-9)
    from conftest import run_cli
    out = run_cli(["nnunet-losses", "evaluate", "-i", pred_dir, "-o", tmp_path / "ev", "--quiet"]).stdout
    assert "3 cases of postprocessed (no references): predicted volumes, hard, soft (Poisson-binomial)" in out
    np.savez_compressed(pred_dir / "case2.npz", probabilities=np.full((3, *cases["case2"][0].shape), 0.5 / 3))
    with pytest.raises(EvaluationError, match="do not sum to 1"):
        evaluate(pred_dir)

"""Cross-fitted calibration end to end (evaluation/calibrate.py) on a prediction folder whose probabilities are
over-confident by a known temperature, and the held-out property by construction."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from nnunet_losses.evaluation import EvaluationError, TaskSpec, evaluate
from nnunet_losses.evaluation.calibrate import apply_calibration, calibrate, calibration_groups, fit_crossfitted
from nnunet_losses.evaluation.calibration import CalibrationMap, VoxelSamples, fit_calibration
from nnunet_losses.evaluation.cases import CaseFiles as Case

T_KNOWN = 0.5  # saved maps are softmax(logits / 0.5): over-confident; temperature 2 undoes it


def softmax(a, axis=0):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def overconfident_folder(root, n_cases=6, shape=(14, 15, 16), seed=0):
    """nnUNetv2_predict-style folder: references drawn voxel-wise from calibrated softmax(logits); the saved npz
    holds softmax(logits / T_KNOWN)."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    rng = np.random.default_rng(seed)
    pred, gt = root / "pred", root / "gt"
    pred.mkdir(parents=True)
    gt.mkdir()
    dj = {"channel_names": {"0": "x"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n_cases,
          "file_ending": ".nii.gz"}
    (pred / "dataset.json").write_text(json.dumps(dj))
    (pred / "plans.json").write_text(json.dumps({"dataset_name": "Dataset999_X", "image_reader_writer": "SimpleITKIO",
                                                 "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}))
    for i in range(n_cases):
        logits = rng.normal(0, 1.5, (3, *shape))
        logits[0] += 1.0
        p = softmax(logits)
        ref = (rng.uniform(0, 1, shape)[None] > np.cumsum(p, 0)).sum(0).astype(np.uint8)
        img = sitk.GetImageFromArray(ref)
        img.SetSpacing((1.0, 1.0, 2.0))
        f = gt / f"case_{i}.nii.gz"
        sitk.WriteImage(img, str(f))
        _, props = SimpleITKIO().read_seg(str(f))
        with open(pred / f"case_{i}.pkl", "wb") as fh:
            pickle.dump(props, fh)
        np.savez_compressed(pred / f"case_{i}.npz", probabilities=softmax(logits / T_KNOWN).astype(np.float32))
    return pred, gt


def test_calibrate_recovers_the_temperature_and_improves_nll(tmp_path):
    pred, gt = overconfident_folder(tmp_path)
    before_files = {f.name: f.read_bytes() for f in pred.iterdir()}
    r = calibrate(pred, tmp_path / "cal", reference_folder=gt, method="temperature", per_label=3000, plots=False)
    out = tmp_path / "cal"
    cal = json.loads((out / "calibration.json").read_text())
    assert 1.0 / cal["maps"][0]["W"][0][0] == pytest.approx(1.0 / T_KNOWN, rel=0.05)
    for m in cal["crossfit"]["maps"]:  # every held-out group's map, fitted on the others
        assert 1.0 / m["maps"][0]["W"][0][0] == pytest.approx(1.0 / T_KNOWN, rel=0.08)
    assert r["scheme"] == "5 groups of cases (no folds)"
    assert r["overall"]["NLL"]["after"] < r["overall"]["NLL"]["before"] - 0.05
    assert r["overall"]["top_label_ECE"]["after"] < r["overall"]["top_label_ECE"]["before"]
    # the calibrated npz are in a new folder, nnU-Net's are untouched; the after-evaluation is of those files
    assert {f.name: f.read_bytes() for f in pred.iterdir()} == before_files
    s = evaluate(out / "calibrated", reference_folder=gt, plots=False)
    after = json.loads((out / "after" / "summary.json").read_text())
    assert s["calibration"]["pooled"]["NLL"] == pytest.approx(after["calibration"]["pooled"]["NLL"], rel=1e-12)
    # the case's calibrated file is its group's map applied to the saved probabilities
    groups = cal["crossfit"]["groups"]
    g = next(i for i, names in enumerate(groups) if "case_3" in names)
    m = CalibrationMap.from_json(cal["crossfit"]["maps"][g])
    want = m.apply(np.load(pred / "case_3.npz")["probabilities"])
    assert np.array_equal(np.load(out / "calibrated" / "case_3.npz")["probabilities"], want)
    assert (out / "calibration.md").is_file() and "NLL" in (out / "calibration.md").read_text()
    # test-set application of the final map
    info = apply_calibration(out / "calibration.json", pred, tmp_path / "test_cal")
    assert info["n_cases"] == 6
    final = CalibrationMap.from_json(cal)
    assert np.array_equal(np.load(tmp_path / "test_cal" / "case_0.npz")["probabilities"],
                          final.apply(np.load(pred / "case_0.npz")["probabilities"]))
    with pytest.raises(EvaluationError, match="already exists"):
        calibrate(pred, out, reference_folder=gt, per_label=100, plots=False)


def test_crossfit_never_touches_the_held_out_group():
    """A held-out group's samples are poisoned (NaN probabilities): its map is still finite and equals the fit
    on the other groups alone -- the fit never reads them."""
    rng = np.random.default_rng(1)
    spec = TaskSpec.labels(3)

    def sample(t):
        logits = rng.normal(0, 2, (2000, 3))
        p = softmax(logits, 1)
        y = (rng.uniform(0, 1, 2000)[:, None] > np.cumsum(p, 1)).sum(1)
        return VoxelSamples(softmax(logits / t, 1).astype(np.float32), y, np.ones(2000))

    samples = [sample(0.5) for _ in range(6)]
    groups = [[0, 1], [2, 3], [4, 5]]
    poisoned = list(samples)
    for i in groups[1]:
        poisoned[i] = VoxelSamples(np.full_like(samples[i].p, np.nan), samples[i].labels, samples[i].weights)
    maps = fit_crossfitted("vector", poisoned, groups, spec)
    direct = fit_calibration("vector", VoxelSamples.concat([samples[i] for i in (0, 1, 4, 5)]), spec)
    assert np.array_equal(maps[1].maps[0].W, direct.maps[0].W)
    assert np.isfinite(maps[1].maps[0].W).all()


def test_groups_follow_folds_or_round_robin():
    cases = [Case(f"c{i}", f, None, None) for i, f in enumerate(["0", "1", "0", "2", "1"])]
    groups, scheme = calibration_groups(cases)
    assert scheme == "other folds" and groups == [[0, 2], [1, 4], [3]]
    groups, scheme = calibration_groups([Case(f"c{i}", None, None, None) for i in range(7)])
    assert len(groups) == 5 and sorted(sum(groups, [])) == list(range(7))
    with pytest.raises(EvaluationError, match="at least two cases"):
        calibration_groups([Case("c0", None, None, None)])


@pytest.mark.slow
def test_cli_calibrate_apply_and_threshold_rule(tmp_path):
    """The console commands: calibrate (cross-fitted), --apply to a prediction folder, threshold --rule."""
    import subprocess
    import sys
    from pathlib import Path
    import SimpleITK as sitk
    from nnunet_losses.evaluation.decisions import rule_label_map
    exe = str(Path(sys.executable).parent / "nnunet-losses")
    pred, gt = overconfident_folder(tmp_path, n_cases=3, shape=(8, 9, 10))
    r = subprocess.run([exe, "calibrate", "-i", str(pred), "-ref", str(gt), "-o", str(tmp_path / "c"),
                        "--method", "vector", "--per_label", "500", "--no_plots", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "vector scaling cross-fitted (3 groups of cases (no folds))" in r.stdout
    r = subprocess.run([exe, "calibrate", "--apply", str(tmp_path / "c" / "calibration.json"), "-i", str(pred),
                        "-o", str(tmp_path / "applied"), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "applied" / "case_2.npz").is_file()
    r = subprocess.run([exe, "calibrate", "--apply", str(gt / "case_0.nii.gz"), "-i", str(pred),
                        "-o", str(tmp_path / "bad"), "-q"], capture_output=True, text=True)
    assert r.returncode == 1 and "calibration.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([exe, "threshold", "-i", str(pred), "--rule", "dice_optimal", "-o", str(tmp_path / "seg"),
                        "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg" / "case_1.nii.gz")))
    p = np.load(pred / "case_1.npz")["probabilities"]
    assert np.array_equal(seg, rule_label_map(p, TaskSpec.labels(3), "dice_optimal"))


def test_calibrate_region_model_end_to_end(tmp_path):
    """Region (sigmoid) predictions: one binary map per region, cross-fitted; the calibrated files are the
    group's map applied to the saved probabilities and stay probabilities per region."""
    from test_evaluation_export import make_prediction_folder
    pred, gt = make_prediction_folder(tmp_path, dim=3, regions=True, n_cases=4)
    r = calibrate(pred, tmp_path / "cal", reference_folder=gt, method="vector", per_label=500, plots=False)
    cal = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert cal["task"] == "regions" and len(cal["maps"]) == 2 and r["scheme"] == "4 groups of cases (no folds)"
    g = next(i for i, names in enumerate(cal["crossfit"]["groups"]) if "case_2" in names)
    m = CalibrationMap.from_json(cal["crossfit"]["maps"][g])
    q = np.load(tmp_path / "cal" / "calibrated" / "case_2.npz")["probabilities"]
    assert np.array_equal(q, m.apply(np.load(pred / "case_2.npz")["probabilities"]))
    assert q.min() >= 0 and q.max() <= 1
    after = json.loads((tmp_path / "cal" / "after" / "summary.json").read_text())
    assert set(after["decisions"]["mean"]) == {"(1, 2)", "(2,)"}

"""Thresholded export and volumes on hand-made nnU-Net prediction folders with non-trivial geometry
(anisotropic spacing, origin, oblique direction; a genuine 2D image), checked with SimpleITK round trips."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_losses.evaluation import EvaluationError, TaskSpec, evaluate, export_thresholded


def _direction_3d():
    a, b = 0.3, -0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def make_prediction_folder(root, dim=3, regions=False, n_cases=3, seed=0):
    """What nnUNetv2_predict --save_probabilities writes: <case>.npz/.pkl (+ dataset.json, plans.json), and a
    reference folder; the probabilities are random but in the reference image's array grid."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    rng = np.random.default_rng(seed)
    pred, gt = root / "pred", root / "gt"
    pred.mkdir(parents=True)
    gt.mkdir(parents=True)
    labels = ({"background": 0, "whole": [1, 2], "inner": [2]} if regions
              else {"background": 0, "a": 1, "b": 2})
    dj = {"channel_names": {"0": "x"}, "labels": labels, "numTraining": n_cases, "file_ending": ".nii.gz"}
    if regions:
        dj["regions_class_order"] = [1, 2]
    (pred / "dataset.json").write_text(json.dumps(dj))
    (pred / "plans.json").write_text(json.dumps({"dataset_name": "Dataset999_X", "image_reader_writer": "SimpleITKIO",
                                                 "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}))
    arr_shape = (9, 11, 13) if dim == 3 else (15, 17)
    for i in range(n_cases):
        ref = rng.integers(0, 3, arr_shape).astype(np.uint8)
        img = sitk.GetImageFromArray(ref)
        if dim == 3:
            img.SetSpacing((0.7, 0.9, 2.5))
            img.SetOrigin((10.0, -20.0, 5.0))
            img.SetDirection(_direction_3d())
        else:
            img.SetSpacing((0.4, 0.6))
            img.SetOrigin((3.0, -1.5))
            img.SetDirection((0.0, 1.0, 1.0, 0.0))
        f = gt / f"case_{i}.nii.gz"
        sitk.WriteImage(img, str(f))
        seg, props = SimpleITKIO().read_seg(str(f))
        shape = seg.shape[1:]
        props.update(shape_before_cropping=list(shape), bbox_used_for_cropping=[[0, s] for s in shape],
                     shape_after_cropping_and_before_resampling=list(shape))
        with open(pred / f"case_{i}.pkl", "wb") as fh:
            pickle.dump(props, fh)
        if regions:
            p = rng.random((2,) + shape).astype(np.float32)
        else:
            logits = rng.normal(0, 2, (3,) + shape)
            p = np.exp(logits) / np.exp(logits).sum(0)
            p = p.astype(np.float32)
        np.savez_compressed(pred / f"case_{i}.npz", probabilities=p)
    return pred, gt


def read(path):
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


@pytest.mark.parametrize("dim, regions", [(3, False), (3, True), (2, False)])
def test_export_geometry_round_trip(tmp_path, dim, regions):
    pred, gt = make_prediction_folder(tmp_path, dim=dim, regions=regions)
    thr = [0.3, 0.6]
    info = export_thresholded(pred, tmp_path / "out", thresholds=thr)
    assert info["n_cases"] == 3 and (tmp_path / "out" / "thresholds.json").is_file()
    for i in range(3):
        out, out_img = read(tmp_path / "out" / f"case_{i}.nii.gz")
        _, ref_img = read(gt / f"case_{i}.nii.gz")
        assert out_img.GetDimension() == ref_img.GetDimension() == dim
        assert out_img.GetSize() == ref_img.GetSize()
        np.testing.assert_allclose(out_img.GetSpacing(), ref_img.GetSpacing())
        np.testing.assert_allclose(out_img.GetOrigin(), ref_img.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(out_img.GetDirection(), ref_img.GetDirection(), atol=1e-6)  # NIfTI float32 qform
        p = np.load(pred / f"case_{i}.npz")["probabilities"]
        expect = np.zeros(p.shape[1:], np.uint8)
        if regions:  # nnU-Net's overwrite order, 0.5 replaced by the thresholds
            expect[p[0] > 0.3] = 1
            expect[p[1] > 0.6] = 2
        else:
            for idx in np.ndindex(*p.shape[1:]):  # voxel by voxel: the largest p_c among p_c > T_c
                above = [(p[(c,) + idx], c) for c in (1, 2) if p[(c,) + idx] > thr[c - 1]]
                expect[idx] = max(above)[1] if above else 0
        assert out.shape == expect.reshape(out.shape).shape
        np.testing.assert_array_equal(out, expect.reshape(out.shape))
    # nnU-Net's rule = LabelManager.convert_probabilities_to_segmentation
    export_thresholded(pred, tmp_path / "nn", nnunet_rule=True)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    dj = json.loads((pred / "dataset.json").read_text())
    lm = LabelManager(dj["labels"], dj.get("regions_class_order"))
    for i in range(3):
        p = np.load(pred / f"case_{i}.npz")["probabilities"]
        out, _ = read(tmp_path / "nn" / f"case_{i}.nii.gz")
        np.testing.assert_array_equal(out, np.asarray(lm.convert_probabilities_to_segmentation(p)).reshape(out.shape))


def test_volumes_use_the_readers_spacing_and_2d_dummy(tmp_path):
    pred, gt = make_prediction_folder(tmp_path / "a", dim=3)
    s = evaluate(pred, reference_folder=gt, plots=False)
    c = s["metric_per_case"][0]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(c["reference_file"]))
    assert s["volume_unit"] == "ml"
    assert c["metrics"]["1"]["V_ref"] == pytest.approx((ref == 1).sum() * 0.7 * 0.9 * 2.5 / 1000)
    pred2, gt2 = make_prediction_folder(tmp_path / "b", dim=2)
    s2 = evaluate(pred2, reference_folder=gt2, plots=False)
    c2 = s2["metric_per_case"][0]
    ref2 = sitk.GetArrayFromImage(sitk.ReadImage(c2["reference_file"]))
    assert s2["volume_unit"] == "cm^2"  # the 999-style dummy spacing is not a slice thickness
    assert c2["metrics"]["2"]["V_ref"] == pytest.approx((ref2 == 2).sum() * 0.4 * 0.6 / 100)


def test_export_refusals(tmp_path, monkeypatch):
    pred, gt = make_prediction_folder(tmp_path, dim=3, n_cases=2)
    out = tmp_path / "out"
    export_thresholded(pred, out, thresholds=0.5)
    with pytest.raises(EvaluationError, match="already exists.*--overwrite"):
        export_thresholded(pred, out, thresholds=0.5)
    export_thresholded(pred, out, thresholds=0.4, overwrite=True)
    assert json.loads((out / "thresholds.json").read_text())["thresholds"] == {"1": 0.4, "2": 0.4}
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        export_thresholded(pred, pred / "sub", thresholds=0.5)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        export_thresholded(pred, tmp_path / "results" / "x", thresholds=0.5)
    with pytest.raises(EvaluationError, match="3 thresholds for 2 classes"):
        export_thresholded(pred, tmp_path / "o2", thresholds=[0.1, 0.2, 0.3])
    with pytest.raises(EvaluationError, match="exactly one rule"):
        export_thresholded(pred, tmp_path / "o3", thresholds=0.5, nnunet_rule=True)
    (pred / "case_1.pkl").unlink()
    with pytest.raises(EvaluationError, match="case_1.pkl: case properties missing"):
        export_thresholded(pred, tmp_path / "o4", thresholds=0.5)
    assert not (tmp_path / "o4").exists()
    # a damaged case in the middle: nothing written at all
    (pred / "case_1.pkl").write_bytes(pickle.dumps(pickle.loads((pred / "case_0.pkl").read_bytes())))
    p = np.load(pred / "case_1.npz")["probabilities"]
    p[0, 0, 0, 0] = np.nan
    np.savez_compressed(pred / "case_1.npz", probabilities=p)
    with pytest.raises(EvaluationError, match="case_1.npz: probabilities contain NaN"):
        export_thresholded(pred, tmp_path / "o5", thresholds=0.5)
    assert not (tmp_path / "o5").exists() and not list(tmp_path.glob(".o5.tmp-*"))


def test_streamed_reading_equals_in_memory_and_damage_is_reported(tmp_path, monkeypatch):
    """evaluate() reduces each case while a thread is still inflating it: same numbers as from np.load arrays;
    a damaged file stops it with a one-line error naming the file, nothing written."""
    import nnunet_losses.evaluation.npz as npz
    from nnunet_losses.evaluation import case_metrics
    from nnunet_losses.evaluation.accumulate import accumulate_case
    from nnunet_losses.evaluation.cases import load_reference
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    monkeypatch.setattr(npz, "STEP", 4096)  # many small steps: the reduction really waits for the reader
    pred, gt = make_prediction_folder(tmp_path, dim=3, regions=False)
    spec = TaskSpec.from_dataset_json(json.loads((pred / "dataset.json").read_text()))
    s = evaluate(pred, reference_folder=gt, plots=False)
    for c in s["metric_per_case"]:
        ref, props = load_reference(c["reference_file"], SimpleITKIO())
        st = accumulate_case(np.load(c["prediction_file"])["probabilities"], ref, spec, chunk=97)
        m, cal = case_metrics(st, spec, c["voxel_volume"])
        assert cal == pytest.approx(c["calibration"], rel=1e-12)
        for k in m:
            assert m[k] == pytest.approx(c["metrics"][k], rel=1e-12, nan_ok=True)
    raw = (pred / "case_1.npz").read_bytes()
    (pred / "case_1.npz").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(EvaluationError, match=r"case_1.npz: cannot read the npz file .*damaged") as e:
        evaluate(pred, tmp_path / "out", reference_folder=gt, plots=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    # damage inside the deflate stream, found by the reading thread: depending on where it hits (and on the zlib
    # build that wrote the file), it breaks the stream, or inflates to in-range values caught by the CRC, or to
    # values outside [0, 1] seen before the CRC is checked -- all three must be reported as damage
    for where in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        bad = bytearray(raw)
        bad[int(len(raw) * where)] ^= 0xFF
        (pred / "case_1.npz").write_bytes(bad)
        with pytest.raises(EvaluationError, match=r"case_1.npz: cannot read the npz file .*damaged"):
            evaluate(pred, tmp_path / "out", reference_folder=gt, plots=False)
        assert not (tmp_path / "out").exists()

"""Data safety of the evaluation commands (issue 11): nothing of the user's is overwritten or left stale.

nnU-Net's raw/preprocessed/results trees hold ground truth and trained models; the outputs of ``evaluate``,
``compare`` and ``threshold`` must never land in them (whatever environment variables are exported) nor in the
folders a run reads, and ``threshold --overwrite`` must not leave label maps of cases that are no longer in the
run next to the new ones.
"""
from __future__ import annotations

import json
import shutil

import pytest

from nnunet_losses.evaluation import EvaluationError, compare, evaluate, export_thresholded
from test_evaluation_export import make_prediction_folder


def _tree_bytes(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def only_results_exported(tmp_path, monkeypatch):
    """The situation of the reported data loss: only nnUNet_results is exported."""
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "somewhere_else" / "results"))


def _raw_dataset(root, gt, name):
    """A raw nnU-Net dataset: dataset.json, imagesTr, labelsTr holding the ground truth."""
    ds = root / name
    (ds / "imagesTr").mkdir(parents=True)
    shutil.copytree(gt, ds / "labelsTr")
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2},
                                                 "file_ending": ".nii.gz", "channel_names": {"0": "x"}}))
    return ds


@pytest.mark.parametrize("name", ["Dataset123_Liver", "my_liver_data"])
def test_threshold_never_overwrites_raw_labels(tmp_path, only_results_exported, name):
    pred, gt = make_prediction_folder(tmp_path, n_cases=2)
    ds = _raw_dataset(tmp_path / "raw_elsewhere", gt, name)
    before = _tree_bytes(ds)
    for dest in (ds / "labelsTr", ds / "predictions", ds):
        with pytest.raises(EvaluationError, match="refusing to write inside"):
            export_thresholded(pred, dest, thresholds=0.5, overwrite=True)
    assert _tree_bytes(ds) == before


def test_outputs_refuse_nnunet_shaped_trees_and_read_folders(tmp_path, only_results_exported):
    pred, gt = make_prediction_folder(tmp_path, n_cases=2)
    results = tmp_path / "old_results" / "Dataset999_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (results / "fold_0").mkdir(parents=True)
    (results / "plans.json").write_text("{}")
    preprocessed = tmp_path / "pp" / "Task_of_mine"
    preprocessed.mkdir(parents=True)
    (preprocessed / "splits_final.json").write_text("[]")
    for dest in (results / "fold_0" / "sub", tmp_path / "x" / "gt_segmentations", preprocessed / "sub",
                 tmp_path / "nnUNet_raw" / "out"):
        with pytest.raises(EvaluationError, match="refusing to write inside"):
            export_thresholded(pred, dest, thresholds=0.5)
        assert not dest.exists()
    # the folder of a dataset.json given explicitly is read by the run: protected too
    dj = tmp_path / "described"
    dj.mkdir()
    shutil.copy(pred / "dataset.json", dj / "dataset.json")
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        export_thresholded(pred, dj / "out", thresholds=0.5, dataset_json=dj / "dataset.json")
    # evaluate: neither into the references nor above the predictions
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        evaluate(pred, gt / "eval", reference_folder=gt, plots=False)
    with pytest.raises(EvaluationError, match="refusing to write inside"):
        evaluate(pred, tmp_path, reference_folder=gt, plots=False, overwrite=True)
    # an ordinary folder is fine
    assert export_thresholded(pred, tmp_path / "submissions" / "a", thresholds=0.5)["n_cases"] == 2


def test_compare_refuses_to_write_into_its_inputs(tmp_path):
    a, b = tmp_path / "eval_a", tmp_path / "eval_b"
    for seed, dest in ((0, a), (1, b)):  # two models' predictions of the same cases
        pred, gt = make_prediction_folder(tmp_path / f"model{seed}", n_cases=3, seed=seed)
        evaluate(pred, dest, reference_folder=gt, plots=False)
    before = _tree_bytes(a)
    for dest in (a, a / "cmp"):
        with pytest.raises(EvaluationError, match="refusing to write inside"):
            compare([a, b], dest, n_boot=50, plots=False, overwrite=True)
    assert _tree_bytes(a) == before


def test_threshold_overwrite_removes_its_own_stale_maps_only(tmp_path):
    pred, gt = make_prediction_folder(tmp_path, n_cases=3)
    out = tmp_path / "out"
    export_thresholded(pred, out, thresholds=0.5)
    assert (out / "case_2.nii.gz").is_file()
    for ending in (".npz", ".pkl"):
        (pred / f"case_2{ending}").unlink()
    info = export_thresholded(pred, out, thresholds=0.4, overwrite=True)
    assert info["cases"] == ["case_0", "case_1"]
    assert sorted(p.name for p in out.iterdir()) == ["case_0.nii.gz", "case_1.nii.gz", "dataset.json",
                                                    "thresholds.json"]
    # a label map that no threshold run wrote is never deleted: refuse instead
    foreign = out / "case_7.nii.gz"
    foreign.write_bytes((out / "case_0.nii.gz").read_bytes())
    with pytest.raises(EvaluationError, match="case_7.nii.gz.*not written by"):
        export_thresholded(pred, out, thresholds=0.4, overwrite=True)
    assert foreign.is_file()

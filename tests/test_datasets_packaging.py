"""Challenge packaging and the convert/package command line, on synthetic replicas of the official downloads.

The packaging tests round-trip: a converted dataset's labelsTr are exactly what a perfect nnU-Net prediction
would be, so packaging them against the download must give back the download's own label files.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import dataset_replicas as R
from nnunet_losses.datasets import convert, package
from nnunet_losses.datasets.packaging import PackagingError


def as_predictions(dataset: Path, folder: Path) -> Path:
    """A dataset's labelsTr laid out as an nnU-Net prediction folder (which holds a copy of dataset.json)."""
    shutil.copytree(dataset / "labelsTr", folder)
    shutil.copy(dataset / "dataset.json", folder / "dataset.json")
    return folder


def sitk_read(path: Path):
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), (img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def test_brats_round_trip_and_refusals(tmp_path, nnunet_dirs):
    import SimpleITK as sitk
    rep = R.make_brats2018(tmp_path / "download")
    preds = as_predictions(convert("brats2018", rep.source), tmp_path / "preds")
    written = package("brats2018", preds, tmp_path / "submission", reference=rep.source)
    assert sorted(p.name for p in written) == sorted(f"{c}.nii.gz" for c in rep.labels)
    for c in rep.labels:
        grade = "LGG" if "TCIA10" in c else "HGG"
        src = rep.source / "MICCAI_BraTS_2018_Data_Training" / grade / c / f"{c}_seg.nii.gz"
        got, got_geometry = sitk_read(tmp_path / "submission" / f"{c}.nii.gz")
        want, want_geometry = sitk_read(src)
        np.testing.assert_array_equal(got, want)  # labels 0/1/2/4 again
        assert got_geometry == want_geometry

    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "submission").iterdir()}
    with pytest.raises(PackagingError, match="refusing to overwrite"):
        package("brats2018", preds, tmp_path / "submission", reference=rep.source)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "submission").iterdir()} == before

    # geometry that does not match the reference: nothing is written
    case = "Brats18_2013_2_1"
    arr, _ = sitk_read(preds / f"{case}.nii.gz")
    shifted = sitk.GetImageFromArray(arr)
    shifted.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(shifted, str(preds / f"{case}.nii.gz"))
    (preds / "Brats18_Unknown_1.nii.gz").write_bytes((preds / "Brats18_CBICA_AAB_1.nii.gz").read_bytes())
    with pytest.raises(PackagingError) as err:
        package("brats2018", preds, tmp_path / "sub2", reference=rep.source)
    text = str(err.value)
    assert "spacing" in text and case in text and "no reference image for Brats18_Unknown_1" in text
    assert not (tmp_path / "sub2").exists()


def test_brats_binary_task_and_label_checks(tmp_path, nnunet_dirs):
    import SimpleITK as sitk
    rep = R.make_brats2018(tmp_path / "download", with_validation=False)
    preds = as_predictions(convert("brats2018", rep.source, binary="wt"), tmp_path / "preds")
    # the task comes from dataset.json; a contradicting --variant is refused
    with pytest.raises(PackagingError, match="dataset.json says wt"):
        package("brats2018", preds, tmp_path / "x", reference=rep.source, variant="regions")
    package("brats2018", preds, tmp_path / "wt", reference=rep.source)
    got, _ = sitk_read(tmp_path / "wt" / "Brats18_2013_2_1.nii.gz")
    assert set(np.unique(got)) == {0, 2} and (got == 2).sum() == (rep.labels["Brats18_2013_2_1"] > 0).sum()

    arr, geometry = sitk_read(preds / "Brats18_2013_2_1.nii.gz")
    arr[0, 0, 0] = 5
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(geometry[0]), img.SetOrigin(geometry[1]), img.SetDirection(geometry[2])
    sitk.WriteImage(img, str(preds / "Brats18_2013_2_1.nii.gz"))
    with pytest.raises(PackagingError, match=r"label value\(s\) \[5\]"):
        package("brats2018", preds, tmp_path / "bad", reference=rep.source)
    assert list((tmp_path / "bad").iterdir()) == []  # nothing half-written
    with pytest.raises(PackagingError, match="predictions for 'brats2018'"):
        package("kits19", preds, tmp_path / "k", reference=rep.source)


def test_kits_round_trip_names_and_binary(tmp_path, nnunet_dirs):
    rep = R.make_kits19(tmp_path / "download")
    preds = as_predictions(convert("kits19", rep.source), tmp_path / "preds")
    package("kits19", preds, tmp_path / "submission", reference=rep.source)
    assert sorted(p.name for p in (tmp_path / "submission").iterdir()) == \
        sorted(c.replace("case", "prediction") + ".nii.gz" for c in rep.labels)
    for c in rep.labels:
        got, got_geometry = sitk_read(tmp_path / "submission" / (c.replace("case", "prediction") + ".nii.gz"))
        want, want_geometry = sitk_read(rep.source / "data" / c / "segmentation.nii.gz")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(np.concatenate(got_geometry), np.concatenate(want_geometry), atol=1e-6)

    tumour = as_predictions(convert("kits19", rep.source, binary="tumour"), tmp_path / "tumour_preds")
    (tumour / "dataset.json").unlink()  # no dataset.json: the task must be named
    package("kits19", tumour, tmp_path / "tumour", reference=rep.source, variant="tumour")
    got, _ = sitk_read(tmp_path / "tumour" / "prediction_00000.nii.gz")
    np.testing.assert_array_equal(got, np.where(rep.labels["case_00000"] == 2, 2, 0))
    (tumour / "liver_1.nii.gz").write_bytes((tumour / "case_00000.nii.gz").read_bytes())
    with pytest.raises(PackagingError, match="case IDs look like case_00210"):
        package("kits19", tumour, tmp_path / "t2", reference=rep.source, variant="tumour")


def test_isic_round_trip_and_size_check(tmp_path, nnunet_dirs):
    from PIL import Image
    rep = R.make_isic2018(tmp_path / "download")
    preds = as_predictions(convert("isic2018", rep.source), tmp_path / "preds")
    package("isic2018", preds, tmp_path / "submission", reference=rep.source / "ISIC2018_Task1-2_Training_Input")
    truth = rep.source / "ISIC2018_Task1_Training_GroundTruth"
    for c in rep.labels:
        name = f"{c}_segmentation.png"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "submission" / name)),
                                      np.asarray(Image.open(truth / name)))
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(preds / "ISIC_0000000.png")
    with pytest.raises(PackagingError, match=r"size \(7, 5\) != reference \(16, 12\)"):
        package("isic2018", preds, tmp_path / "sub2", reference=rep.source)


# ---- command line ---------------------------------------------------------------------------------------------------
def run(argv) -> int:
    from nnunet_losses.cli import main
    return main(argv)


def test_cli_is_registered():
    from nnunet_losses.cli import SUBCOMMAND_MODULES
    assert SUBCOMMAND_MODULES["nnunet_losses.cli.datasets"] == ("convert", "package")


def test_cli_convert_and_package(tmp_path, nnunet_dirs, capsys):
    rep = R.make_brats2018(tmp_path / "download")
    before = R.tree_hash(rep.source)
    assert run(["convert", "brats2018", rep.source, "--binary", "-np", "1", "--id", "44"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == nnunet_dirs["raw"] / "Dataset044_BraTS2018WT" and out.is_dir()
    assert run(["convert", "brats2018", rep.source, "--binary", "tc", "-np", "1", "--no-verify"]) == 0
    assert (nnunet_dirs["raw"] / "Dataset522_BraTS2018TC").is_dir()

    assert run(["convert", "brats2018", rep.source, "-np", "1", "--id", "44"]) == 1
    assert "already used by" in capsys.readouterr().err
    assert run(["convert", "brats2018", rep.source, "-np", "1", "--perfusion", "none"]) == 1
    assert "unknown option(s) perfusion" in capsys.readouterr().err
    assert run(["convert", "kits19", rep.source, "-np", "1"]) == 1
    assert "case_XXXXX" in capsys.readouterr().err
    assert R.tree_hash(rep.source) == before

    preds = as_predictions(out, tmp_path / "preds")
    assert run(["package", "brats2018", preds, tmp_path / "sub", "--reference", rep.source]) == 0
    assert "wrote 3 file(s)" in capsys.readouterr().out
    assert run(["package", "brats2018", preds, tmp_path / "sub", "--reference", rep.source]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


# ---- threshold -> package ------------------------------------------------------------------------------------------
def as_probability_predictions(dataset: Path, folder: Path) -> Path:
    """A dataset's labelsTr as what `nnUNetv2_predict --save_probabilities` writes: one-hot <case>.npz, the
    <case>.pkl properties, dataset.json and plans.json."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    folder.mkdir()
    dj = json.loads((dataset / "dataset.json").read_text())
    n_labels = sum(1 for k in dj["labels"] if k != "ignore")
    for f in sorted((dataset / "labelsTr").glob("*.nii.gz")):
        seg, props = SimpleITKIO().read_seg(str(f))
        shape = seg.shape[1:]
        props.update(shape_before_cropping=list(shape), bbox_used_for_cropping=[[0, s] for s in shape],
                     shape_after_cropping_and_before_resampling=list(shape))
        case = f.name[:-len(".nii.gz")]
        with open(folder / f"{case}.pkl", "wb") as fh:
            pickle.dump(props, fh)
        onehot = np.stack([seg[0] == v for v in range(n_labels)]).astype(np.float32)
        np.savez_compressed(folder / f"{case}.npz", probabilities=onehot)
    shutil.copy(dataset / "dataset.json", folder / "dataset.json")
    (folder / "plans.json").write_text(json.dumps({"dataset_name": dataset.name, "image_reader_writer": "SimpleITKIO",
                                                   "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}))
    return folder


def test_threshold_then_package_keeps_the_task(tmp_path, nnunet_dirs):
    """`threshold` -> `package` is safe by construction: the thresholded folder carries the dataset.json, so the
    label maps of a tumour-only KiTS model are packaged as tumour (label 2), never silently as the full task's
    kidney (label 1)."""
    from nnunet_losses.evaluation import export_thresholded
    rep = R.make_kits19(tmp_path / "download")
    pred = as_probability_predictions(convert("kits19", rep.source, binary="tumour"), tmp_path / "pred")
    thr = tmp_path / "thresholded"
    export_thresholded(pred, thr, thresholds=0.5)
    assert json.loads((thr / "dataset.json").read_text())["nnunet_losses"]["variant"] == "tumour"
    package("kits19", thr, tmp_path / "sub", reference=rep.source)
    for c in rep.labels:
        got, _ = sitk_read(tmp_path / "sub" / (c.replace("case", "prediction") + ".nii.gz"))
        np.testing.assert_array_equal(got, np.where(rep.labels[c] == 2, 2, 0))
    # without a dataset.json the task is never guessed ...
    (thr / "dataset.json").unlink()
    with pytest.raises(PackagingError, match="dataset.json is missing.*--variant"):
        package("kits19", thr, tmp_path / "sub2", reference=rep.source)
    # ... nor taken from a dataset.json that does not describe it
    dj = json.loads((pred / "dataset.json").read_text())
    dj.pop("nnunet_losses")
    (thr / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(PackagingError, match="declares 2 labels, task 'multiclass' has 3"):
        package("kits19", thr, tmp_path / "sub3", reference=rep.source)
    assert not (tmp_path / "sub2").exists() and not (tmp_path / "sub3").exists()

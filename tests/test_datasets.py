"""Dataset converters on tiny synthetic replicas of the official downloads (tests/dataset_replicas.py).

Every conversion runs nnU-Net's own verify_dataset_integrity (in-process; see base.verify_raw_dataset) before the
dataset is put in place, and every test checks that the download is byte-for-byte untouched.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dataset_replicas as R
from nnunet_losses.datasets import DATASETS, convert, converter_class, get_converter
from nnunet_losses.datasets.converter import DatasetIDError, LayoutError, SourceDataError, verify_raw_dataset


def read_label(path: Path) -> np.ndarray:
    if path.name.endswith(".png"):
        from PIL import Image
        return np.asarray(Image.open(path))
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def geometry(path: Path) -> dict:
    if path.name.endswith(".png"):
        return {"size": read_label(path).shape[:2]}
    import SimpleITK as sitk
    img = sitk.ReadImage(str(path))
    return {"spacing": img.GetSpacing(), "origin": img.GetOrigin(), "direction": img.GetDirection()}


def assert_geometry(found: dict, expected: dict):
    assert found.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(found[k], expected[k], atol=1e-6, err_msg=k)


BRATS_TO_NNUNET = {0: 0, 2: 1, 1: 2, 4: 3}  # nnU-Net's Dataset042/137 mapping


def expected_label(key: str, variant: str, src: np.ndarray) -> np.ndarray:
    if key == "brats2018":
        if variant == "regions":
            return np.vectorize(BRATS_TO_NNUNET.get)(src)
        return np.isin(src, {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}[variant])
    if key == "kits19":
        return {"multiclass": src, "kidney": src > 0, "tumour": src == 2}[variant]
    return src.astype(np.uint8)


def check_dataset(out: Path, key: str, rep: R.Replica, variant=None, cases=None, n_channels=None):
    cls = converter_class(key)
    variant = variant or cls.default_variant
    v = cls.variants[variant]
    meta = json.loads((out / "dataset.json").read_text())
    cases = sorted(cases if cases is not None else (c for c in rep.labels if c not in rep.test_cases))
    assert meta["numTraining"] == len(cases)
    assert meta["file_ending"] == cls.file_ending
    assert meta["labels"] == json.loads(json.dumps(v.labels))
    assert meta.get("regions_class_order") == (list(v.regions_class_order) if v.regions_class_order else None)
    assert meta["nnunet_losses"]["dataset"] == key and meta["nnunet_losses"]["variant"] == variant
    n_channels = n_channels or len(meta["channel_names"])
    if cls.file_ending == ".png":
        assert meta["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    ending = cls.file_ending
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(c + ending for c in cases)
    images = sorted(p.name for p in (out / "imagesTr").iterdir())
    if ending == ".png":
        assert images == sorted(f"{c}_0000.png" for c in cases)
    else:
        assert images == sorted(f"{c}_{i:04d}{ending}" for c in cases for i in range(n_channels))
    for c in cases:
        label = read_label(out / "labelsTr" / f"{c}{ending}")
        np.testing.assert_array_equal(label, expected_label(key, variant, rep.labels[c]), err_msg=c)
        assert_geometry(geometry(out / "labelsTr" / f"{c}{ending}"), rep.geometry[c])
        assert_geometry(geometry(out / "imagesTr" / f"{c}_0000{ending}"), rep.geometry[c])
    test_images = sorted(p.name for p in (out / "imagesTs").iterdir()) if (out / "imagesTs").exists() else []
    assert {n.rsplit("_", 1)[0] for n in test_images} == set(rep.test_cases)
    for c in rep.test_cases:  # test cases whose labels the download has (DRIVE's 1st_manual) go to labelsTs
        if c in rep.labels:
            np.testing.assert_array_equal(read_label(out / "labelsTs" / f"{c}{ending}"),
                                          expected_label(key, variant, rep.labels[c]))
    assert meta["numTest"] == len(rep.test_cases)


@pytest.mark.parametrize("key", list(DATASETS))
def test_convert_default_task(key, tmp_path, nnunet_dirs):
    rep = R.MAKERS[key](tmp_path / "download")
    before = R.tree_hash(rep.source)
    out = convert(key, rep.source)
    cls = converter_class(key)
    v = cls.variants[cls.default_variant]
    assert out == nnunet_dirs["raw"] / f"Dataset{v.preferred_id:03d}_{cls.dataset_name}{v.suffix}"
    check_dataset(out, key, rep)
    assert R.tree_hash(rep.source) == before, "the download was modified"
    assert [p.name for p in nnunet_dirs["raw"].iterdir()] == [out.name], "scratch folder left behind"


def test_brats_channels_in_nnunet_order_and_validation_set(tmp_path, nnunet_dirs):
    import SimpleITK as sitk
    rep = R.make_brats2018(tmp_path / "download")
    out = convert("brats2018", rep.source)
    case = "Brats18_2013_2_1"
    src = rep.source / "MICCAI_BraTS_2018_Data_Training" / "HGG" / case
    for i, m in enumerate(("t1", "t1ce", "t2", "flair")):  # as nnU-Net's Dataset042_BraTS18
        assert (out / "imagesTr" / f"{case}_{i:04d}.nii.gz").read_bytes() == (src / f"{case}_{m}.nii.gz").read_bytes()
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [f"Brats18_CBICA_AAM_1_{i:04d}.nii.gz"
                                                                   for i in range(4)]
    # SOURCE may also be the training folder itself (then the validation set is not looked for)
    out2 = convert("brats2018", rep.source / "MICCAI_BraTS_2018_Data_Training", binary=True)
    assert out2.name == "Dataset521_BraTS2018WT" and not (out2 / "imagesTs").exists()
    assert sitk.ReadImage(str(out2 / "labelsTr" / f"{case}.nii.gz")).GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("task", ["wt", "tc", "et"])
def test_brats_binary_tasks(task, tmp_path, nnunet_dirs):
    rep = R.make_brats2018(tmp_path / "download", with_validation=False)
    out = convert("brats2018", rep.source, binary=task)
    assert out.name == f"Dataset{521 + ['wt', 'tc', 'et'].index(task)}_BraTS2018{task.upper()}"
    check_dataset(out, "brats2018", rep, variant=task)


@pytest.mark.parametrize("task", ["kidney", "tumour"])
def test_kits_binary_tasks_and_flawed_cases(task, tmp_path, nnunet_dirs):
    rep = R.make_kits19(tmp_path / "download")
    before = R.tree_hash(rep.source)
    out = convert("kits19", rep.source / "data", binary=task, exclude_flawed=True)
    assert out.name == f"Dataset{541 if task == 'kidney' else 542}_KiTS19{task.capitalize()}"
    check_dataset(out, "kits19", rep, variant=task, cases=["case_00000", "case_00001"])
    assert R.tree_hash(rep.source) == before


def test_isles2017_perfusion_options(tmp_path, nnunet_dirs):
    import SimpleITK as sitk
    import nibabel as nib
    rep = R.make_isles2017(tmp_path / "download")
    out = convert("isles2017", rep.source, perfusion="raw", dataset_id=12)
    meta = json.loads((out / "dataset.json").read_text())
    assert out.name == "Dataset012_ISLES2017RawPWI"
    assert list(meta["channel_names"].values()) == list(R.ISLES17_MODS) + ["4DPWI_max", "4DPWI_mean"]
    check_dataset(out, "isles2017", rep, n_channels=8)
    pwi_file = next((rep.source / "ISLES2017_Training" / "training_2").glob("*4DPWI*/*.nii"))
    pwi = np.asarray(nib.load(str(pwi_file)).dataobj)[:, :, :, 0, :]  # (x, y, z, 1, t)
    got_max = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "training_2_0006.nii.gz")))
    got_mean = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "training_2_0007.nii.gz")))
    np.testing.assert_allclose(got_max, pwi.max(-1).transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(got_mean, pwi.mean(-1).transpose(2, 1, 0), rtol=1e-5)
    adc_file = next((rep.source / "ISLES2017_Training" / "training_2").glob("*MR_ADC*/*.nii"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "imagesTr" / "training_2_0000.nii.gz"))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(adc_file))))

    out = convert("isles2017", rep.source, perfusion="none")
    assert out.name == "Dataset530_ISLES2017NoPerfusion"
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "ADC"}
    check_dataset(out, "isles2017", rep)
    out = convert("isles2017", rep.source, modalities=["Tmax", "ADC"])
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "Tmax", "1": "ADC"}
    with pytest.raises(ValueError, match="modalities"):
        get_converter("isles2017", modalities=["DWI"])
    with pytest.raises(ValueError, match="perfusion"):
        get_converter("isles2017", perfusion="all")


def test_isles2018_default_channels_leave_out_raw_perfusion_and_dwi(tmp_path, nnunet_dirs):
    rep = R.make_isles2018(tmp_path / "download")
    out = convert("isles2018", rep.source / "TRAINING")  # the TRAINING folder itself works too (no test set then)
    meta = json.loads((out / "dataset.json").read_text())
    assert list(meta["channel_names"].values()) == ["CT", "CBF", "CBV", "MTT", "Tmax"]
    assert not (out / "imagesTs").exists()
    out = convert("isles2018", rep.source / "TRAINING", modalities="CT,Tmax,DWI,4DPWI")
    meta = json.loads((out / "dataset.json").read_text())
    assert list(meta["channel_names"].values()) == ["CT", "Tmax", "DWI", "4DPWI_max", "4DPWI_mean"]
    check_dataset(out, "isles2018", R.Replica(rep.source, rep.labels, rep.geometry))  # no test cases here
    # the test cases have no DWI: that is named, and nothing is written
    with pytest.raises(LayoutError, match=r"TESTING/case_1/SMIR.Brain.XX.O.MR_DWI"):
        convert("isles2018", rep.source, modalities="CT,Tmax,DWI,4DPWI")
    assert len(list(nnunet_dirs["raw"].iterdir())) == 2


def test_isles2018_archives_unpacked_into_folders_of_their_own_names(tmp_path, nnunet_dirs):
    """ISLES2018_Training.zip holds TRAINING/, ISLES2018_Testing.zip TESTING/: each unpacked into a folder named
    after its archive, SOURCE = the folder holding both."""
    import shutil
    rep = R.make_isles2018(tmp_path / "download")
    testing = tmp_path / "download" / "ISLES2018_Testing" / "TESTING"
    testing.parent.mkdir()
    shutil.move(str(rep.source / "TESTING"), str(testing))
    out = convert("isles2018", tmp_path / "download")
    check_dataset(out, "isles2018", rep)  # both training cases and the test case
    assert sorted(p.name for p in (out / "imagesTs").iterdir())[0].startswith("test_case_1_")


def test_2d_pixels(tmp_path, nnunet_dirs):
    from PIL import Image
    rep = R.make_dsb2018(tmp_path / "dsb")
    out = convert("dsb2018", rep.source)
    case = R.DSB_IDS[0]
    src = np.asarray(Image.open(rep.source / "stage1_train" / case / "images" / f"{case}.png"))
    got = np.asarray(Image.open(out / "imagesTr" / f"{case}_0000.png"))
    np.testing.assert_array_equal(got, src[..., :3])  # RGBA -> RGB, pixels unchanged
    rep = R.make_bus2017(tmp_path / "bus")
    out = convert("bus2017", rep.source)
    got = np.asarray(Image.open(out / "imagesTr" / "bus_000001_0000.png"))
    np.testing.assert_array_equal(got, np.asarray(Image.open(rep.source / "BUS_Dataset_B" / "original" / "000001.png")))
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "ultrasound"}
    rep = R.make_isic2018(tmp_path / "isic")
    out = convert("isic2018", rep.source)
    got = np.asarray(Image.open(out / "imagesTr" / "ISIC_0000001_0000.png"))
    jpeg = np.asarray(Image.open(rep.source / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg"))
    np.testing.assert_array_equal(got, jpeg)  # decoded once, stored losslessly


# ---- what the user gets when the layout is wrong --------------------------------------------------------------------
@pytest.mark.parametrize("key", list(DATASETS))
def test_missing_file_is_named(key, tmp_path, nnunet_dirs):
    rep = R.MAKERS[key](tmp_path / "download")
    rep.removable.unlink()
    before = R.tree_hash(rep.source)
    with pytest.raises(LayoutError) as err:
        convert(key, rep.source)
    assert len(err.value.missing) == 1, err.value.missing
    rel = rep.removable.relative_to(rep.source)
    if key.startswith("isles"):  # named by case folder and modality token (the portal's object ID is unknown)
        token = rep.removable.name.split(".")[4]
        assert f"{rel.parts[0]}/{rel.parts[1]}/" in err.value.missing[0]
        assert f"SMIR.Brain.XX.O.{token}." in err.value.missing[0]
    else:
        assert str(rel) in err.value.missing[0]
    assert "docs/datasets.md" in str(err.value)
    assert list(nnunet_dirs["raw"].iterdir()) == []
    assert R.tree_hash(rep.source) == before


@pytest.mark.parametrize("key", list(DATASETS))
def test_empty_or_wrong_folder(key, tmp_path, nnunet_dirs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError) as err:
        convert(key, tmp_path / "empty")
    assert err.value.missing and str(tmp_path / "empty") in str(err.value)
    with pytest.raises(LayoutError, match="does not exist"):
        convert(key, tmp_path / "nowhere")


def test_everything_missing_is_listed_at_once(tmp_path, nnunet_dirs):
    rep = R.make_brats2018(tmp_path / "download")
    train = rep.source / "MICCAI_BraTS_2018_Data_Training"
    (train / "HGG" / "Brats18_2013_2_1" / "Brats18_2013_2_1_seg.nii.gz").unlink()
    (train / "HGG" / "Brats18_CBICA_AAB_1" / "Brats18_CBICA_AAB_1_flair.nii.gz").unlink()
    for f in (train / "LGG").rglob("*"):
        if f.is_file():
            f.unlink()
    with pytest.raises(LayoutError) as err:
        convert("brats2018", rep.source)
    assert sorted(err.value.missing) == sorted([
        "MICCAI_BraTS_2018_Data_Training/HGG/Brats18_2013_2_1/Brats18_2013_2_1_seg.nii.gz",
        "MICCAI_BraTS_2018_Data_Training/HGG/Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_flair.nii.gz",
        *[f"MICCAI_BraTS_2018_Data_Training/LGG/Brats18_TCIA10_103_1/Brats18_TCIA10_103_1_{m}.nii.gz"
          for m in ("t1", "t1ce", "t2", "flair", "seg")]])


def test_kits_missing_imaging_hint(tmp_path, nnunet_dirs):
    rep = R.make_kits19(tmp_path / "download")
    rep.removable.unlink()
    with pytest.raises(LayoutError, match="get_imaging"):
        convert("kits19", rep.source)


def test_bad_source_content_leaves_nothing(tmp_path, nnunet_dirs):
    import SimpleITK as sitk
    rep = R.make_brats2018(tmp_path / "download", with_validation=False)
    seg_file = rep.source / "MICCAI_BraTS_2018_Data_Training" / "LGG" / "Brats18_TCIA10_103_1" / \
        "Brats18_TCIA10_103_1_seg.nii.gz"
    img = sitk.ReadImage(str(seg_file))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 3  # BraTS has no label 3
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(seg_file))
    for task in (None, "wt"):
        with pytest.raises(SourceDataError, match=r"unexpected label.*\[3\]"):
            convert("brats2018", rep.source, binary=task)
    assert list(nnunet_dirs["raw"].iterdir()) == []

    from PIL import Image
    rep = R.make_cvc_clinicdb(tmp_path / "cvc")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(rep.source / "CVC-ClinicDB" / "Ground Truth" / "2.tif")
    with pytest.raises(SourceDataError, match="cvc_002"):
        convert("cvc-clinicdb", rep.source)
    assert list(nnunet_dirs["raw"].iterdir()) == []


def test_options_and_tasks_are_checked():
    with pytest.raises(ValueError, match="unknown binary task"):
        get_converter("brats2018", binary="edema")
    with pytest.raises(ValueError, match="unknown option"):
        get_converter("brats2018", perfusion="none")
    with pytest.raises(KeyError, match="unknown dataset"):
        get_converter("brats2019")
    assert get_converter("CVC_ClinicDB").key == "cvc-clinicdb"
    assert get_converter("drive", binary=True).variant.name == "vessel"


# ---- dataset IDs --------------------------------------------------------------------------------------------------
def test_free_id_is_chosen_across_all_nnunet_folders(tmp_path, nnunet_dirs):
    (nnunet_dirs["preprocessed"] / "Dataset550_Other").mkdir()
    (nnunet_dirs["results"] / "Dataset551_Other").mkdir()
    (nnunet_dirs["raw"] / "Dataset552_Other").mkdir()
    (nnunet_dirs["raw"] / "Dataset553_file_not_dir").write_text("")
    rep = R.make_drive(tmp_path / "download")
    assert convert("drive", rep.source).name == "Dataset553_DRIVE"


def test_converting_twice_is_refused_not_copied(tmp_path, nnunet_dirs, capsys):
    """A second `convert` of the same task must not silently write a second copy under the next free ID."""
    from nnunet_losses.cli import main
    rep = R.make_drive(tmp_path / "download")
    first = convert("drive", rep.source, num_processes=1)
    with pytest.raises(DatasetIDError, match=f"already converted to {first}.*-d ID"):
        convert("drive", rep.source)
    assert main(["convert", "drive", rep.source, "-np", "1", "--no_verify"]) == 1
    assert f"already converted to {first}" in capsys.readouterr().err
    assert [p.name for p in nnunet_dirs["raw"].iterdir()] == [first.name]
    # asked for explicitly (-d), or a different dataset (other cases): converted
    assert convert("drive", rep.source, dataset_id=9).name == "Dataset009_DRIVE"
    assert convert("drive", rep.source, exclude=["21_training"]).name == "Dataset551_DRIVE"


def test_given_id_in_use_is_refused(tmp_path, nnunet_dirs):
    rep = R.make_bus2017(tmp_path / "download")
    (nnunet_dirs["results"] / "Dataset007_Mine").mkdir()
    with pytest.raises(DatasetIDError, match="Dataset007_Mine"):
        convert("bus2017", rep.source, dataset_id=7)
    with pytest.raises(DatasetIDError, match="1..999"):
        convert("bus2017", rep.source, dataset_id=1000)
    assert list(nnunet_dirs["raw"].iterdir()) == []
    out = convert("bus2017", rep.source, dataset_id=8, name="BUSB")
    assert out.name == "Dataset008_BUSB"
    with pytest.raises(DatasetIDError, match="Dataset008_BUSB"):
        convert("bus2017", rep.source, dataset_id=8)
    assert sorted(p.name for p in (out / "imagesTr").iterdir())  # the existing dataset is intact


def test_raw_inside_download_or_unset_is_refused(tmp_path, nnunet_dirs, monkeypatch):
    rep = R.make_bus2017(tmp_path / "download")
    before = R.tree_hash(rep.source)
    with pytest.raises(ValueError, match="must not be modified"):
        convert("bus2017", rep.source, raw_dir=rep.source / "nnUNet_raw")
    assert R.tree_hash(rep.source) == before
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(RuntimeError, match="nnUNet_raw is not set"):
        convert("bus2017", rep.source)


def test_nnunet_integrity_check_rejects_a_broken_dataset(tmp_path, nnunet_dirs):
    """The check the converters run is nnU-Net's: it fails on a label that is not in dataset.json."""
    rep = R.make_drive(tmp_path / "download")
    out = convert("drive", rep.source)
    verify_raw_dataset(out)  # passes on the converted dataset
    from PIL import Image
    Image.fromarray(np.full(R.SIZE2, 2, np.uint8)).save(out / "labelsTr" / "21_training.png")
    with pytest.raises(RuntimeError, match="unexpected labels"):
        verify_raw_dataset(out)



@pytest.mark.parametrize("key", ["brats2018", "isles2017", "dsb2018"])
def test_work_items_pickle_for_worker_processes(key, tmp_path, nnunet_dirs):
    """With num_processes > 1 every (converter, case) goes to a spawn pool, so both must survive pickling."""
    import pickle
    from nnunet_losses.datasets.converter import _convert_one
    rep = R.MAKERS[key](tmp_path / "download")
    converter = get_converter(key)
    train, _ = converter.find_cases(rep.source)
    (tmp_path / "i").mkdir(), (tmp_path / "l").mkdir()
    job = pickle.loads(pickle.dumps((converter, train[0], str(tmp_path / "i"), str(tmp_path / "l"))))
    _convert_one(*job)
    assert len(list((tmp_path / "l").iterdir())) == 1 and len(list((tmp_path / "i").iterdir())) >= 1

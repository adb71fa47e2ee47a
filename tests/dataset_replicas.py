"""Tiny synthetic replicas of the official downloads of the seed papers' datasets (for tests/test_datasets*.py).

Each ``make_<dataset>(root)`` writes 2-3 tiny cases with the folder and file names, formats and label encodings of
the real download (see docs/datasets.md) under ``root`` and returns a :class:`Replica`: the folder to pass as
SOURCE, the source labels of every labelled case (in the dataset's own encoding) and the geometry of every case.
Images are small (8^3 voxels / 16x12 pixels: width != height catches transposed axes) and deterministic.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

SHAPE3 = (6, 8, 7)  # z, y, x -- all different, so that a swapped axis shows
SIZE2 = (12, 16)    # h, w


@dataclass
class Replica:
    source: Path
    labels: Dict[str, np.ndarray] = field(default_factory=dict)   # case -> source label (z, y, x) / (h, w)
    geometry: Dict[str, dict] = field(default_factory=dict)       # case -> spacing/origin/direction or size
    test_cases: tuple = ()
    removable: Optional[Path] = None  # a required file; deleting it must give a LayoutError naming it


def tree_hash(root: Path) -> str:
    """Hash of every file's relative path, bytes and mtime, and every folder's path, under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        h.update(f"D {rel}\n".encode())
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            h.update(f"F {rel}/{f} {st.st_size} {st.st_mtime_ns} {st.st_mode}\n".encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _rng(seed):
    return np.random.default_rng(seed)


def _blob3(rng, values=(1,)) -> np.ndarray:
    """A label volume with nested boxes of the given values (outer first)."""
    lab = np.zeros(SHAPE3, dtype=np.uint8)
    z, y, x = (int(rng.integers(0, 2)), int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    for i, v in enumerate(values):
        lab[1 + z + i: 5 + z - i, 1 + y + i: 7 + y - i, 1 + x + i: 6 + x - i] = v
    return lab


def _sitk(arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _write(img, path: Path):
    import SimpleITK as sitk
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _geom(img) -> dict:
    return {"spacing": img.GetSpacing(), "origin": img.GetOrigin(), "direction": img.GetDirection()}


# ---------------------------------------------------------------------------------------------------------------------
# 3D
# ---------------------------------------------------------------------------------------------------------------------
def make_brats2018(root: Path, with_validation: bool = True) -> Replica:
    """MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, labels 0/1/2/4."""
    top = root / "MICCAI_BraTS_2018_Data_Training"
    rep = Replica(root)
    rng = _rng(2018)
    cases = [("HGG", "Brats18_2013_2_1"), ("HGG", "Brats18_CBICA_AAB_1"), ("LGG", "Brats18_TCIA10_103_1")]
    geo = dict(spacing=(1.0, 1.0, 1.0), origin=(-0.0, -239.0, 0.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    for grade, c in cases:
        d = top / grade / c
        seg = _blob3(rng, (2, 1, 4))  # oedema around necrosis around enhancing tumour
        for m in ("t1", "t1ce", "t2", "flair"):
            _write(_sitk(rng.normal(100, 20, SHAPE3).astype(np.int16), **geo), d / f"{c}_{m}.nii.gz")
        img = _sitk(seg, **geo)
        _write(img, d / f"{c}_seg.nii.gz")
        rep.labels[c], rep.geometry[c] = seg, _geom(img)
    (top / "survival_data.csv").write_text("Brats18_ID,Age,Survival,ResectionStatus\nBrats18_2013_2_1,60.5,289,GTR\n")
    if with_validation:
        v = root / "MICCAI_BraTS_2018_Data_Validation" / "Brats18_CBICA_AAM_1"
        for m in ("t1", "t1ce", "t2", "flair"):
            _write(_sitk(rng.normal(100, 20, SHAPE3).astype(np.int16), **geo), v / f"{v.name}_{m}.nii.gz")
        rep.test_cases = (v.name,)
    rep.removable = top / "LGG" / "Brats18_TCIA10_103_1" / "Brats18_TCIA10_103_1_t1ce.nii.gz"
    return rep


KITS_DIRECTION = (0.0, 0.0, -1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 0.0)  # kits19's (slice, row, column) affine


def make_kits19(root: Path) -> Replica:
    """kits19/data/case_XXXXX/{imaging,segmentation}.nii.gz (labels 0/1 kidney/2 tumour), test case 210 images only."""
    data = root / "kits19" / "data"
    rep = Replica(root / "kits19")
    rng = _rng(19)
    for i, c in enumerate(("case_00000", "case_00015", "case_00001", "case_00210")):
        spacing = (0.78, 0.78, 3.0 + i)
        img = _sitk(rng.normal(0, 300, SHAPE3).astype(np.float32), spacing=spacing, direction=KITS_DIRECTION)
        _write(img, data / c / "imaging.nii.gz")
        rep.geometry[c] = _geom(img)
        if c != "case_00210":
            seg = _blob3(rng, (1, 2))
            _write(_sitk(seg, spacing=spacing, direction=KITS_DIRECTION), data / c / "segmentation.nii.gz")
            rep.labels[c] = seg
    (data / "kits.json").write_text('[{"case_id": "case_00000"}]')
    rep.test_cases = ("case_00210",)
    rep.removable = data / "case_00001" / "imaging.nii.gz"
    return rep


ISLES17_MODS = ("ADC", "MTT", "rCBF", "rCBV", "Tmax", "TTP")


def _write_nii_nibabel(arr_xyz, path: Path, spacing):
    import nibabel as nib
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr_xyz, np.diag(list(spacing) + [1.0])), str(path))


def make_isles2017(root: Path) -> Replica:
    """ISLES2017_Training/training_N/VSD.Brain.XX.O.MR_<MOD>.<ID>/<same>.nii (+ OT), 4DPWI 5D (x, y, z, 1, t)."""
    top = root / "ISLES2017_Training"
    rep = Replica(root)
    rng = _rng(2017)
    oid = 127000
    spacing = (1.8, 1.8, 6.5)
    for n, t in ((1, 5), (2, 7), (4, 6)):  # non-contiguous numbers, time points differ between cases
        case = f"training_{n}"
        d = top / case
        for m in ISLES17_MODS:
            oid += 1
            name = f"VSD.Brain.XX.O.MR_{m}.{oid}"
            _write(_sitk(rng.random(SHAPE3).astype(np.float32) * 100, spacing=spacing), d / name / f"{name}.nii")
        oid += 1
        name = f"SMIR.Brain.XX.O.MR_4DPWI.{oid}"  # (one portal prefix mixed in, as in the real data)
        pwi = rng.random(SHAPE3[::-1] + (1, t)).astype(np.float32) * 1000
        _write_nii_nibabel(pwi, d / name / f"{name}.nii", spacing)
        oid += 1
        name = f"VSD.Brain.XX.O.OT.{oid}"
        seg = _blob3(rng)
        img = _sitk(seg, spacing=spacing)
        _write(img, d / name / f"{name}.nii")
        rep.labels[case], rep.geometry[case] = seg, _geom(img)
    (top / "__MACOSX" / "training_1").mkdir(parents=True)
    (top / "__MACOSX" / "training_1" / "._VSD.Brain.XX.O.MR_ADC.127001").write_bytes(b"\0resource fork")
    t = root / "ISLES2017_Testing" / "test_1"
    for m in ISLES17_MODS:
        oid += 1
        name = f"SMIR.Brain.XX.O.MR_{m}.{oid}"
        _write(_sitk(rng.random(SHAPE3).astype(np.float32), spacing=spacing), t / name / f"{name}.nii")
    oid += 1
    name = f"SMIR.Brain.XX.O.MR_4DPWI.{oid}"
    _write_nii_nibabel(rng.random(SHAPE3[::-1] + (1, 4)).astype(np.float32), t / name / f"{name}.nii", spacing)
    rep.test_cases = ("test_1",)
    rep.removable = next((top / "training_2").glob("*MR_Tmax*/*.nii"))
    return rep


ISLES18_MODS = ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "MR_DWI")


def make_isles2018(root: Path) -> Replica:
    """ISLES2018_Training/TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<ID>/<same>.nii (+ CT_4DPWI 4D, OT)."""
    top = root / "ISLES2018_Training" / "TRAINING"
    rep = Replica(root / "ISLES2018_Training")
    rng = _rng(2018)
    oid = 345560
    spacing = (0.9, 0.9, 5.0)

    def case(folder: Path, labelled: bool, t: int):
        nonlocal oid
        for m in ISLES18_MODS if labelled else ISLES18_MODS[:-1]:
            oid += 1
            name = f"SMIR.Brain.XX.O.{m}.{oid}"
            _write(_sitk((rng.random(SHAPE3) * 80).astype(np.int16), spacing=spacing), folder / name / f"{name}.nii")
        oid += 1
        name = f"SMIR.Brain.XX.O.CT_4DPWI.{oid}"
        _write_nii_nibabel((rng.random(SHAPE3[::-1] + (t,)) * 200).astype(np.int16), folder / name / f"{name}.nii",
                           spacing)
        if labelled:
            oid += 1
            name = f"SMIR.Brain.XX.O.OT.{oid}"
            seg = _blob3(rng)
            img = _sitk(seg, spacing=spacing)
            _write(img, folder / name / f"{name}.nii")
            rep.labels[folder.name], rep.geometry[folder.name] = seg, _geom(img)

    for n, t in ((1, 5), (2, 8)):
        case(top / f"case_{n}", True, t)
    case(root / "ISLES2018_Training" / "TESTING" / "case_1", False, 6)
    rep.test_cases = ("test_case_1",)
    rep.removable = next((top / "case_1").glob("*.OT.*/*.nii"))
    return rep


# ---------------------------------------------------------------------------------------------------------------------
# 2D
# ---------------------------------------------------------------------------------------------------------------------
def _save(arr, path: Path, **kw):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def _mask2(rng) -> np.ndarray:
    m = np.zeros(SIZE2, dtype=bool)
    y, x = int(rng.integers(1, 5)), int(rng.integers(1, 8))
    m[y: y + 6, x: x + 7] = True
    return m


def _rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, SIZE2 + (3,), dtype=np.uint8)


def make_drive(root: Path) -> Replica:
    """DRIVE/{training,test}/images/NN_<split>.tif, 1st_manual/NN_manual1.gif (0/255), mask/NN_<split>_mask.gif."""
    top = root / "DRIVE"
    rep = Replica(root)
    rng = _rng(4)
    for split, numbers in (("training", (21, 22)), ("test", (1,))):
        for n in numbers:
            stem = f"{n:02d}_{split}"
            _save(_rgb(rng), top / split / "images" / f"{stem}.tif")
            vessels = _mask2(rng)
            _save(vessels.astype(np.uint8) * 255, top / split / "1st_manual" / f"{n:02d}_manual1.gif")
            _save(np.full(SIZE2, 255, np.uint8), top / split / "mask" / f"{stem}_mask.gif")
            if split == "test":
                _save(vessels.astype(np.uint8) * 255, top / split / "2nd_manual" / f"{n:02d}_manual2.gif")
            rep.labels[stem], rep.geometry[stem] = vessels, {"size": SIZE2}
    rep.test_cases = ("01_test",)
    rep.removable = top / "training" / "1st_manual" / "22_manual1.gif"
    return rep


def make_bus2017(root: Path) -> Replica:
    """BUS_Dataset_B/original/NNNNNN.png (grey), GT/NNNNNN.png (0/255)."""
    top = root / "BUS_Dataset_B"
    rep = Replica(root)
    rng = _rng(163)
    for n in (1, 2, 163):
        name = f"{n:06d}.png"
        _save(rng.integers(0, 256, SIZE2, dtype=np.uint8), top / "original" / name)
        lesion = _mask2(rng)
        _save(lesion.astype(np.uint8) * 255, top / "GT" / name)
        rep.labels[f"bus_{n:06d}"], rep.geometry[f"bus_{n:06d}"] = lesion, {"size": SIZE2}
    rep.removable = top / "GT" / "000002.png"
    return rep


DSB_IDS = ("00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
           "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
           "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9")


def make_dsb2018(root: Path) -> Replica:
    """stage1_train/<id>/images/<id>.png (RGBA), stage1_train/<id>/masks/<mask id>.png (0/255, one per nucleus)."""
    top = root / "stage1_train"
    rep = Replica(root)
    rng = _rng(2018)
    for k, image_id in enumerate(DSB_IDS[:2]):
        rgba = np.concatenate([_rgb(rng), np.full(SIZE2 + (1,), 255, np.uint8)], axis=2)
        _save(rgba, top / image_id / "images" / f"{image_id}.png")
        union = np.zeros(SIZE2, dtype=bool)
        for j in range(2 + k):
            nucleus = np.zeros(SIZE2, dtype=bool)
            y, x = int(rng.integers(0, 9)), int(rng.integers(0, 13))
            nucleus[y: y + 3, x: x + 3] = True
            union |= nucleus
            mask_id = hashlib.sha256(f"{image_id}{j}".encode()).hexdigest()
            _save(nucleus.astype(np.uint8) * 255, top / image_id / "masks" / f"{mask_id}.png")
        rep.labels[image_id], rep.geometry[image_id] = union, {"size": SIZE2}
    (root / "stage1_train_labels.csv").write_text("ImageId,EncodedPixels\n" + f"{DSB_IDS[0]},1 3\n")
    test_id = DSB_IDS[2]
    rgba = np.concatenate([_rgb(rng), np.full(SIZE2 + (1,), 255, np.uint8)], axis=2)
    _save(rgba, root / "stage1_test" / test_id / "images" / f"{test_id}.png")
    rep.test_cases = (test_id,)
    rep.removable = top / DSB_IDS[1] / "images" / f"{DSB_IDS[1]}.png"
    return rep


def make_isic2018(root: Path) -> Replica:
    """ISIC2018_Task1-2_Training_Input/ISIC_NNNNNNN.jpg, ISIC2018_Task1_Training_GroundTruth/..._segmentation.png."""
    rep = Replica(root)
    rng = _rng(2594)
    inputs, truth = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    for n in (0, 1, 3):
        case = f"ISIC_{n:07d}"
        _save(_rgb(rng), inputs / f"{case}.jpg", quality=95)
        lesion = _mask2(rng)
        _save(lesion.astype(np.uint8) * 255, truth / f"{case}_segmentation.png")
        rep.labels[case], rep.geometry[case] = lesion, {"size": SIZE2}
    for folder in (inputs, truth):
        (folder / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
    (inputs / "ATTRIBUTION.txt").write_text("ISIC_0000000: Anonymous\n")
    _save(_rgb(rng), root / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0012255.jpg")
    rep.test_cases = ("ISIC_0012255",)
    rep.removable = truth / "ISIC_0000001_segmentation.png"
    return rep


def make_cvc_clinicdb(root: Path) -> Replica:
    """CVC-ClinicDB/Original/N.tif (RGB), CVC-ClinicDB/Ground Truth/N.tif (0/255, stored as RGB)."""
    top = root / "CVC-ClinicDB"
    rep = Replica(root)
    rng = _rng(612)
    for n in (1, 2, 612):
        _save(_rgb(rng), top / "Original" / f"{n}.tif")
        polyp = _mask2(rng)
        _save(np.repeat(polyp[..., None].astype(np.uint8) * 255, 3, axis=2), top / "Ground Truth" / f"{n}.tif")
        rep.labels[f"cvc_{n:03d}"], rep.geometry[f"cvc_{n:03d}"] = polyp, {"size": SIZE2}
    rep.removable = top / "Ground Truth" / "2.tif"
    return rep


MAKERS = {"brats2018": make_brats2018, "kits19": make_kits19, "isles2017": make_isles2017,
          "isles2018": make_isles2018, "drive": make_drive, "bus2017": make_bus2017, "dsb2018": make_dsb2018,
          "isic2018": make_isic2018, "cvc-clinicdb": make_cvc_clinicdb}

"""BraTS 2018 (MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz).

Default task: nnU-Net's region-based BraTS setup (as its Dataset042_BraTS18 / Dataset137_BraTS21): labels
0/1/2/4 are converted by nnU-Net's own ``copy_BraTS_segmentation_and_convert_labels_to_nnUNet`` (2 -> 1, 1 -> 2,
4 -> 3) and dataset.json declares the regions whole tumour (1, 2, 3), tumour core (2, 3) and enhancing tumour (3).
Binary tasks: ``wt`` whole tumour (labels 1, 2, 4; seeds 001/002), ``tc`` tumour core (1, 4), ``et`` enhancing (4).
The validation set (``MICCAI_BraTS_2018_Data_Validation``, no labels) goes to imagesTs when it is inside SOURCE.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from nnunet_losses.datasets.converter import SourceCase, Converter, Variant, check_label_values, copy_nifti, visible_dirs, \
    write_label_like

TRAIN_DIR = "MICCAI_BraTS_2018_Data_Training"
VALIDATION_DIR = "MICCAI_BraTS_2018_Data_Validation"
GRADES = ("HGG", "LGG")
MODALITIES = ("t1", "t1ce", "t2", "flair")  # channel order of nnU-Net's BraTS converters
BRATS_LABELS = (0, 1, 2, 4)  # 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour
BINARY_SOURCE_LABELS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}


def _find(folder: Path, stem: str) -> Optional[Path]:
    for ending in (".nii.gz", ".nii"):
        p = folder / (stem + ending)
        if p.is_file():
            return p
    return None


class BraTS2018(Converter):
    key = "brats2018"
    title = "BraTS 2018"
    dataset_name = "BraTS2018"
    url = "https://www.med.upenn.edu/sbia/brats2018/data.html"
    release = "2018 training data (285 cases: 210 HGG, 75 LGG)"
    citation = ("Menze et al., IEEE TMI 2015; Bakas et al., Sci. Data 2017; Bakas et al., arXiv:1811.02629")
    licence = "see https://www.med.upenn.edu/sbia/brats2018/registration.html"
    variants = {
        "regions": Variant("regions", "", {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                           "enhancing tumor": (3,)}, 520,
                           "region-based whole tumour / tumour core / enhancing tumour (nnU-Net's BraTS setup)",
                           regions_class_order=(1, 2, 3)),
        "wt": Variant("wt", "WT", {"background": 0, "whole tumor": 1}, 521,
                      "binary whole tumour (BraTS labels 1, 2, 4)", binary=True),
        "tc": Variant("tc", "TC", {"background": 0, "tumor core": 1}, 522,
                      "binary tumour core (BraTS labels 1, 4)", binary=True),
        "et": Variant("et", "ET", {"background": 0, "enhancing tumor": 1}, 523,
                      "binary enhancing tumour (BraTS label 4)", binary=True),
    }
    default_variant, default_binary = "regions", "wt"

    def channel_names(self):
        return {0: "T1", 1: "T1ce", 2: "T2", 3: "Flair"}

    def _case(self, folder: Path, with_label: bool, missing: List[str], source: Path) -> SourceCase:
        c = folder.name
        images = []
        for m in MODALITIES + (("seg",) if with_label else ()):
            p = _find(folder, f"{c}_{m}")
            if p is None:
                missing.append(f"{folder.relative_to(source)}/{c}_{m}.nii.gz")
            images.append(p)
        return SourceCase(c, tuple(images[:4]), images[4] if with_label else None)

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        if any((source / g).is_dir() for g in GRADES):
            train_root = source
        elif (source / TRAIN_DIR).is_dir():
            train_root = source / TRAIN_DIR
        else:
            raise self.layout_error(source, [f"{source}/HGG/ and {source}/LGG/ (or {source}/{TRAIN_DIR}/HGG, LGG)"])
        missing: List[str] = []
        train: List[SourceCase] = []
        for grade in GRADES:
            folder = train_root / grade
            if not folder.is_dir():
                missing.append(f"{folder.relative_to(source)}/")
                continue
            cases = [d for d in visible_dirs(folder) if d.name.startswith("Brats")]
            if not cases:
                missing.append(f"{folder.relative_to(source)}/Brats18_*/ (no case folders)")
            train += [self._case(d, True, missing, source) for d in cases]
        test: List[SourceCase] = []
        if (source / VALIDATION_DIR).is_dir():
            test = [self._case(d, False, missing, source) for d in visible_dirs(source / VALIDATION_DIR)
                    if d.name.startswith("Brats")]
        if missing:
            raise self.layout_error(source, missing)
        return train, test

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        for i, src in enumerate(case.images):
            copy_nifti(src, images_dir / f"{case.case_id}_{i:04d}.nii.gz")
        if labels_dir is None or case.label is None:
            return
        dst = labels_dir / f"{case.case_id}.nii.gz"
        if self.variant.name == "regions":
            # nnU-Net's own conversion (0, 1, 2, 4 -> 0, 2, 1, 3)
            from nnunetv2.dataset_conversion.Dataset042_BraTS18 import \
                copy_BraTS_segmentation_and_convert_labels_to_nnUNet
            try:
                copy_BraTS_segmentation_and_convert_labels_to_nnUNet(str(case.label), str(dst))
            except RuntimeError:  # nnU-Net raises a bare 'unexpected label': name the file and values
                import SimpleITK as sitk
                check_label_values(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))), BRATS_LABELS, case.label)
                raise
            return
        import SimpleITK as sitk
        img = sitk.ReadImage(str(case.label))
        seg = sitk.GetArrayFromImage(img)
        check_label_values(seg, BRATS_LABELS, case.label)
        write_label_like(np.isin(seg, BINARY_SOURCE_LABELS[self.variant.name]), img, dst)


CONVERTER = BraTS2018

"""KiTS19 (github.com/neheller/kits19: data/case_XXXXX/{imaging,segmentation}.nii.gz; labels 0/1 kidney/2 tumour).

Default task: kidney (1) and tumour (2) as plain labels, as nnU-Net's own KiTS19 entry (v1 ``Task040_KiTS``: CT
channel, labels copied unchanged) and the DSC++ paper (Yeung et al. 2022). Binary tasks: ``kidney`` (kidney including
tumour, labels 1 and 2: KiTS19's "kidney and tumour" composite) and ``tumour`` (label 2). Cases without a
segmentation (the 90 test cases 210-299) go to imagesTs. ``exclude_flawed`` leaves out the six cases 15, 23, 37,
68, 125 and 133 that nnU-Net's KiTS19 submission and the DSC++ paper exclude for label problems.

nnU-Net v2's ``Dataset220_KiTS2023`` is not called: it expects KiTS23's labels (kidney/tumour/cyst regions), a
segmentation for every case, and writes into the nnUNet_raw fixed at import time.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Tuple


from nnunet_losses.datasets.converter import SourceCase, Converter, Variant, check_label_values, visible_dirs, write_label_like

FLAWED_CASES = ("case_00015", "case_00023", "case_00037", "case_00068", "case_00125", "case_00133")
FIRST_TEST_CASE = 210
KITS_LABELS = (0, 1, 2)


class KiTS19(Converter):
    key = "kits19"
    title = "KiTS19"
    dataset_name = "KiTS19"
    url = "https://github.com/neheller/kits19"
    release = "kits19 repository data/ (210 labelled cases 0-209, 90 unlabelled test cases 210-299)"
    citation = "Heller et al., arXiv:1904.00445 (2019); Heller et al., Med. Image Anal. 2021"
    licence = "CC BY-NC-SA 4.0 (see the kits19 repository)"
    variants = {
        "multiclass": Variant("multiclass", "", {"background": 0, "kidney": 1, "tumor": 2}, 540,
                              "kidney (1) and kidney tumour (2)"),
        "kidney": Variant("kidney", "Kidney", {"background": 0, "kidney and tumor": 1}, 541,
                          "binary kidney including tumour (KiTS labels 1, 2)", binary=True),
        "tumour": Variant("tumour", "Tumour", {"background": 0, "tumor": 1}, 542,
                          "binary kidney tumour (KiTS label 2)", binary=True),
    }
    default_variant, default_binary = "multiclass", "kidney"
    options = {"exclude_flawed": False}

    def channel_names(self):
        return {0: "CT"}

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        root = source
        if not any(d.name.startswith("case_") for d in visible_dirs(source)) and (source / "data").is_dir():
            root = source / "data"
        case_dirs = [d for d in visible_dirs(root) if d.name.startswith("case_")]
        if not case_dirs:
            raise self.layout_error(source, [f"{source}/case_XXXXX/ folders (or {source}/data/case_XXXXX/)"])
        missing, train, test = [], [], []
        for d in case_dirs:
            if self.opts["exclude_flawed"] and d.name in FLAWED_CASES:
                continue
            imaging, seg = d / "imaging.nii.gz", d / "segmentation.nii.gz"
            if not imaging.is_file():
                missing.append(f"{d.relative_to(source)}/imaging.nii.gz")
            try:
                number = int(d.name.split("_")[1])
            except (IndexError, ValueError):
                number = FIRST_TEST_CASE
            if seg.is_file():
                train.append(SourceCase(d.name, (imaging,), seg))
            elif number < FIRST_TEST_CASE:
                missing.append(f"{d.relative_to(source)}/segmentation.nii.gz")
            else:
                test.append(SourceCase(d.name, (imaging,), None))
        if missing:
            hint = ("The images are not in the git repository: run `python3 -m starter_code.get_imaging` in the "
                    "kits19 checkout." if any(m.endswith("imaging.nii.gz") for m in missing) else "")
            raise self.layout_error(source, missing, hint)
        return train, test

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        shutil.copyfile(case.images[0], images_dir / f"{case.case_id}_0000.nii.gz")
        if labels_dir is None or case.label is None:
            return
        dst = labels_dir / f"{case.case_id}.nii.gz"
        if self.variant.name == "multiclass":
            shutil.copyfile(case.label, dst)  # labels already 0/1/2 (checked by nnU-Net's integrity check)
            return
        import SimpleITK as sitk
        img = sitk.ReadImage(str(case.label))
        seg = sitk.GetArrayFromImage(img)
        check_label_values(seg, KITS_LABELS, case.label)
        write_label_like(seg > 0 if self.variant.name == "kidney" else seg == 2, img, dst)


CONVERTER = KiTS19

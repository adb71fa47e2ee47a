"""ISIC 2018 task 1 (ISIC2018_Task1-2_Training_Input/ISIC_NNNNNNN.jpg,
ISIC2018_Task1_Training_GroundTruth/ISIC_NNNNNNN_segmentation.png).

2594 dermoscopic JPEG images with binary lesion masks (0/255 PNG). JPEGs are decoded once and stored as PNG (nnU-Net
refuses lossy formats). The validation and test inputs (``ISIC2018_Task1-2_{Validation,Test}_Input``), when inside
SOURCE, go to imagesTs, with their ground truth (``ISIC2018_Task1_{Validation,Test}_GroundTruth``, released after
the challenge) to labelsTs when present.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets.converter import SourceCase, Mask2DConverter, Variant, case_with_label, visible_files

IMAGE_RE = re.compile(r"^ISIC_\d+\.jpe?g$", re.IGNORECASE)
SPLITS = ("Training", "Validation", "Test")


def input_dir(split: str) -> str:
    return f"ISIC2018_Task1-2_{split}_Input"


def truth_dir(split: str) -> str:
    return f"ISIC2018_Task1_{split}_GroundTruth"


class ISIC2018(Mask2DConverter):
    key = "isic2018"
    title = "ISIC 2018 task 1"
    dataset_name = "ISIC2018"
    url = "https://challenge.isic-archive.com/data/#2018"
    release = "ISIC 2018 task 1 training data (2594 images)"
    citation = "Codella et al., arXiv:1902.03368 (2019); Tschandl et al., Sci. Data 5:180161 (2018)"
    licence = "CC BY-NC 4.0 (see LICENSE.txt in the input archive)"
    variants = {"lesion": Variant("lesion", "", {"background": 0, "lesion": 1}, 553, "binary skin lesion",
                                  binary=True)}
    default_variant = default_binary = "lesion"

    def _split(self, source: Path, split: str, labels_required: bool, missing: List[str]) -> List[SourceCase]:
        images = [p for p in visible_files(source / input_dir(split), (".jpg", ".jpeg")) if IMAGE_RE.match(p.name)]
        if not images:
            missing.append(f"{input_dir(split)}/ISIC_NNNNNNN.jpg (no images)")
        truth = source / truth_dir(split)
        have_truth = truth.is_dir()
        cases = []
        for p in images:
            case_id = p.name.rsplit(".", 1)[0]
            cases.append(case_with_label(case_id, p, truth / f"{case_id}_segmentation.png", labels_required or have_truth,
                                         missing, f"{truth_dir(split)}/{case_id}_segmentation.png"))
        if have_truth:
            ids = {c.case_id for c in cases}
            for m in visible_files(truth, ("_segmentation.png",)):
                if m.name[: -len("_segmentation.png")] not in ids:
                    missing.append(f"{input_dir(split)}/{m.name[: -len('_segmentation.png')]}.jpg")
        return cases

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        missing = [f"{d}/" for d in (input_dir("Training"), truth_dir("Training")) if not (source / d).is_dir()]
        if missing:
            raise self.layout_error(source, missing)
        train = self._split(source, "Training", True, missing)
        test: List[SourceCase] = []
        for split in SPLITS[1:]:
            if (source / input_dir(split)).is_dir():
                test += self._split(source, split, False, missing)
        if missing:
            raise self.layout_error(source, missing)
        return train, test


CONVERTER = ISIC2018

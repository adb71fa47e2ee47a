"""DRIVE (DRIVE/{training,test}/images/NN_{training,test}.tif, 1st_manual/NN_manual1.gif, mask/...).

40 colour fundus photographs (565 x 584): 20 training (21-40) with manual vessel segmentations, 20 test (01-20).
Training goes to imagesTr/labelsTr, test to imagesTs (and labelsTs when ``test/1st_manual`` is there -- the
original release has it, the grand-challenge re-release does not). Vessel masks are GIFs with 0/255. The field of
view masks (``mask/``) are not used.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets.converter import SourceCase, Mask2DConverter, Variant, case_with_label, visible_files

IMAGE_RE = re.compile(r"^(?P<n>\d+)_(?P<split>training|test)\.tiff?$", re.IGNORECASE)


class DRIVE(Mask2DConverter):
    key = "drive"
    title = "DRIVE"
    dataset_name = "DRIVE"
    url = "https://drive.grand-challenge.org/ (original release: Image Sciences Institute, UMC Utrecht)"
    release = "DRIVE.zip (20 training + 20 test images)"
    citation = "Staal et al., IEEE TMI 23(4):501-509 (2004)"
    licence = "see https://drive.grand-challenge.org/"
    variants = {"vessel": Variant("vessel", "", {"background": 0, "vessel": 1}, 550, "binary retinal vessels",
                                  binary=True)}
    default_variant = default_binary = "vessel"

    def _split(self, root: Path, split: str, source: Path, labels_required: bool, missing: List[str]):
        folder = root / split / "images"
        if not folder.is_dir():
            missing.append(f"{folder.relative_to(source)}/")
            return []
        images = [p for p in visible_files(folder, (".tif", ".tiff")) if IMAGE_RE.match(p.name)]
        if not images:
            missing.append(f"{folder.relative_to(source)}/NN_{split}.tif (no images)")
        manual = root / split / "1st_manual"
        cases = []
        for p in images:
            label = manual / f"{IMAGE_RE.match(p.name).group('n')}_manual1.gif"
            cases.append(case_with_label(p.name.rsplit(".", 1)[0], p, label, labels_required, missing,
                                         str(label.relative_to(source))))
        return cases

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        root = source if (source / "training").is_dir() else source / "DRIVE"
        if not (root / "training").is_dir():
            raise self.layout_error(source, [f"{source}/training/ (or {source}/DRIVE/training/)"])
        missing: List[str] = []
        train = self._split(root, "training", source, True, missing)
        test = self._split(root, "test", source, False, missing) if (root / "test").is_dir() else []
        if missing:
            raise self.layout_error(source, missing)
        return train, test


CONVERTER = DRIVE

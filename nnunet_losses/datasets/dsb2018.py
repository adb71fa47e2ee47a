"""2018 Data Science Bowl nuclei (stage1_train/<id>/images/<id>.png, stage1_train/<id>/masks/<mask id>.png).

670 training images (Kaggle ``data-science-bowl-2018``, ``stage1_train.zip``), each with one binary PNG (0/255)
per nucleus; the nuclei masks are merged (union) into one binary label. Images are RGBA PNGs: the alpha channel
is dropped (3 channels; grey images are stored as RGB). ``stage1_test`` (65 images, no masks), when inside
SOURCE, goes to imagesTs. Case IDs are the Kaggle image IDs.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from nnunet_losses.datasets.converter import RGB_CHANNELS, SourceCase, Converter, SourceDataError, Variant, read_mask, read_rgb, visible_dirs, \
    visible_files, write_2d_case


class DSB2018(Converter):
    key = "dsb2018"
    title = "2018 Data Science Bowl (stage 1)"
    dataset_name = "DSB2018"
    url = "https://www.kaggle.com/c/data-science-bowl-2018/data (also BBBC038: https://bbbc.broadinstitute.org/BBBC038)"
    release = "stage1_train (670 images)"
    citation = "Caicedo et al., Nature Methods 16:1247-1253 (2019)"
    licence = "see the Kaggle competition rules / BBBC038 (CC0)"
    file_ending = ".png"
    reader_writer = "NaturalImage2DIO"
    variants = {"nuclei": Variant("nuclei", "", {"background": 0, "nucleus": 1}, 552,
                                  "binary nuclei (per-nucleus masks merged)", binary=True)}
    default_variant = default_binary = "nuclei"

    def channel_names(self):
        return dict(RGB_CHANNELS)

    def _cases(self, folder: Path, source: Path, labelled: bool, missing: List[str]) -> List[SourceCase]:
        cases = []
        for d in visible_dirs(folder):
            image = d / "images" / f"{d.name}.png"
            if not image.is_file():
                missing.append(str(image.relative_to(source)))
            masks = None
            if labelled:
                masks = tuple(visible_files(d / "masks", (".png",))) if (d / "masks").is_dir() else ()
                if not masks:
                    missing.append(f"{(d / 'masks').relative_to(source)}/*.png (no nucleus masks)")
            cases.append(SourceCase(d.name, (image,), masks))
        return cases

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        test_root = None
        if (source / "stage1_train").is_dir():
            train_root = source / "stage1_train"
            test_root = source / "stage1_test" if (source / "stage1_test").is_dir() else None
        elif any((d / "images").is_dir() for d in visible_dirs(source)):
            train_root = source  # the extracted stage1_train.zip itself
        else:
            raise self.layout_error(source, [f"{source}/stage1_train/<image id>/images/<image id>.png"])
        missing: List[str] = []
        train = self._cases(train_root, source, True, missing)
        test = self._cases(test_root, source, False, missing) if test_root else []
        if not train:
            missing.append(f"{train_root}/<image id>/ (no cases)")
        if missing:
            raise self.layout_error(source, missing)
        return train, test

    def convert_case(self, case: SourceCase, images_dir: Path, labels_dir: Optional[Path]) -> None:
        image = read_rgb(case.images[0])
        mask = None
        if case.label and labels_dir is not None:
            mask = np.zeros(image.shape[:2], dtype=bool)
            for m in case.label:
                nucleus = read_mask(m)
                if nucleus.shape != mask.shape:
                    raise SourceDataError(f"{case.case_id}: image {case.images[0]} is {mask.shape[1]}x{mask.shape[0]}"
                                          f" but the nucleus mask {m} is {nucleus.shape[1]}x{nucleus.shape[0]}")
                mask |= nucleus
        write_2d_case(image, mask, case.case_id, images_dir, labels_dir, case.images[0], "its masks")


CONVERTER = DSB2018

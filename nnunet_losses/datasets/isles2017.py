"""ISLES 2017 (ISLES2017_Training/training_N/<P>.Brain.XX.O.MR_<MOD>.<ID>/<same>.nii; ground truth OT).

43 training cases ``training_1`` ... ``training_48`` (numbers missing), 7 images each: ADC, the perfusion parameter
maps MTT, rCBF, rCBV, Tmax, TTP, and the raw perfusion series 4DPWI (5D: x, y, z, 1, t); ``OT`` is the binary
follow-up lesion. The test set (``ISLES2017_Testing/test_N``, no OT) goes to imagesTs when it is inside SOURCE.
Channels: see :mod:`nnunet_losses.datasets._isles` (default: the seed papers' setting, raw 4DPWI omitted).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets._isles import RAW, ISLESConverter
from nnunet_losses.datasets.converter import SourceCase, Variant, visible_dirs

TRAIN_DIR, TEST_DIR = "ISLES2017_Training", "ISLES2017_Testing"
TRAIN_CASE, TEST_CASE = re.compile(r"^training_\d+$"), re.compile(r"^test_\d+$")


class ISLES2017(ISLESConverter):
    key = "isles2017"
    title = "ISLES 2017"
    dataset_name = "ISLES2017"
    url = "http://www.isles-challenge.org/ISLES2017/ (data: https://www.smir.ch/ISLES/Start2017)"
    release = "ISLES 2017 training data (43 cases)"
    citation = "Winzeck et al., Front. Neurol. 9:679 (2018)"
    licence = "see http://www.isles-challenge.org/ISLES2017/"
    variants = {"lesion": Variant("lesion", "", {"background": 0, "lesion": 1}, 530,
                                  "binary follow-up stroke lesion", binary=True)}
    default_variant = default_binary = "lesion"
    tokens = {"ADC": "MR_ADC", "MTT": "MR_MTT", "rCBF": "MR_rCBF", "rCBV": "MR_rCBV", "Tmax": "MR_Tmax",
              "TTP": "MR_TTP", RAW: "MR_4DPWI"}
    anatomical = ("ADC",)
    perfusion_maps = ("MTT", "rCBF", "rCBV", "Tmax", "TTP")

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        def cases_in(folder: Path, pattern):
            return sorted((d for d in visible_dirs(folder) if pattern.match(d.name)),
                          key=lambda d: int(d.name.rsplit("_", 1)[1]))

        train_dirs = cases_in(source, TRAIN_CASE)
        test_dirs: List[Path] = []
        if not train_dirs and (source / TRAIN_DIR).is_dir():
            train_dirs = cases_in(source / TRAIN_DIR, TRAIN_CASE)
            if (source / TEST_DIR).is_dir():
                test_dirs = cases_in(source / TEST_DIR, TEST_CASE)
        if not train_dirs:
            raise self.layout_error(source, [f"{source}/training_N/ case folders (or {source}/{TRAIN_DIR}/training_N/)"])
        missing: List[str] = []
        train = self.collect(train_dirs, source, True, missing)
        test = self.collect(test_dirs, source, False, missing)
        if missing:
            raise self.layout_error(source, missing)
        return train, test


CONVERTER = ISLES2017

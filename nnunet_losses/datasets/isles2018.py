"""ISLES 2018 (TRAINING/case_N/SMIR.Brain.XX.O.<MOD>.<ID>/<same>.nii; ground truth OT).

94 training cases ``case_1`` ... ``case_94`` with CT, the raw CT perfusion series CT_4DPWI, the perfusion
parameter maps CT_CBF, CT_CBV, CT_MTT, CT_Tmax, the MR_DWI the lesion was drawn on, and ``OT`` (binary core lesion).
MR_DWI is not in the test set and is therefore not an input by default (``modalities`` can add it).
The test set (``TESTING/case_N``, no OT or DWI) goes to imagesTs as ``test_case_N`` when it is inside SOURCE.
Channels: see :mod:`nnunet_losses.datasets._isles` (default: the seed papers' setting, raw CT_4DPWI omitted).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets._isles import RAW, ISLESConverter
from nnunet_losses.datasets.converter import SourceCase, Variant, first_existing, visible_dirs

CASE = re.compile(r"^case_\d+$")


class ISLES2018(ISLESConverter):
    key = "isles2018"
    title = "ISLES 2018"
    dataset_name = "ISLES2018"
    url = "http://www.isles-challenge.org/ISLES2018/ (data: https://www.smir.ch/ISLES/Start2018)"
    release = "ISLES 2018 training data (94 cases)"
    citation = "Cereda et al., J. Cereb. Blood Flow Metab. 2016; Hakim et al., Stroke 2021 (ISLES 2018)"
    licence = "see http://www.isles-challenge.org/ISLES2018/"
    variants = {"lesion": Variant("lesion", "", {"background": 0, "lesion": 1}, 531,
                                  "binary acute stroke lesion (core)", binary=True)}
    default_variant = default_binary = "lesion"
    tokens = {"CT": "CT", "CBF": "CT_CBF", "CBV": "CT_CBV", "MTT": "CT_MTT", "Tmax": "CT_Tmax", RAW: "CT_4DPWI",
              "DWI": "MR_DWI"}
    anatomical = ("CT",)
    perfusion_maps = ("CBF", "CBV", "MTT", "Tmax")
    not_inputs = ("DWI",)

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        def cases_in(folder: Path):
            return sorted((d for d in visible_dirs(folder) if CASE.match(d.name)),
                          key=lambda d: int(d.name.rsplit("_", 1)[1]))

        test_root = None
        if cases_in(source):  # SOURCE is the TRAINING folder itself
            train_root = source
        else:
            train_root = first_existing(source / "TRAINING", source / "ISLES2018_Training" / "TRAINING")
            test_root = first_existing(source / "TESTING", source / "ISLES2018_Testing" / "TESTING")
            if train_root is None or not cases_in(train_root):
                raise self.layout_error(source, [f"{source}/TRAINING/case_N/ case folders"])
        missing: List[str] = []
        train = self.collect(cases_in(train_root), source, True, missing)
        test = self.collect(cases_in(test_root) if test_root else [], source, False, missing,
                            case_id=lambda d: f"test_{d.name}")
        if missing:
            raise self.layout_error(source, missing)
        return train, test


CONVERTER = ISLES2018

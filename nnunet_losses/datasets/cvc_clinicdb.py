"""CVC-ClinicDB (CVC-ClinicDB/Original/N.tif, CVC-ClinicDB/Ground Truth/N.tif).

612 colonoscopy frames (384 x 288) from 31 sequences with binary polyp masks of the same file name. The official
archive has TIFF files; the widely used Kaggle copy has ``PNG/`` and ``TIF/`` folders, each with ``Original`` and
``Ground Truth`` -- all of these are accepted. Case IDs: ``cvc_NNN``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets.converter import SourceCase, Mask2DConverter, Variant, visible_files

IMAGES, MASKS = "Original", "Ground Truth"
SUFFIXES = (".tif", ".tiff", ".png", ".bmp")


class CVCClinicDB(Mask2DConverter):
    key = "cvc-clinicdb"
    title = "CVC-ClinicDB"
    dataset_name = "CVCClinicDB"
    url = "https://polyp.grand-challenge.org/CVCClinicDB/"
    release = "CVC-ClinicDB (612 frames)"
    citation = "Bernal et al., Comput. Med. Imaging Graph. 43:99-111 (2015)"
    licence = "research and educational use only (see the dataset page)"
    variants = {"polyp": Variant("polyp", "", {"background": 0, "polyp": 1}, 554, "binary colorectal polyp",
                                 binary=True)}
    default_variant = default_binary = "polyp"

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        candidates = [source, source / "CVC-ClinicDB", source / "TIF", source / "PNG",
                      source / "CVC-ClinicDB" / "TIF", source / "CVC-ClinicDB" / "PNG"]
        root = next((c for c in candidates if (c / IMAGES).is_dir() and (c / MASKS).is_dir()), None)
        if root is None:
            root = next((c for c in candidates if (c / IMAGES).is_dir() or (c / MASKS).is_dir()), source)
            missing = [f"{(root / d).relative_to(source)}/" for d in (IMAGES, MASKS) if not (root / d).is_dir()]
            raise self.layout_error(source, missing)
        images = visible_files(root / IMAGES, SUFFIXES)
        if not images:
            raise self.layout_error(source, [f"{(root / IMAGES).relative_to(source)}/N.tif (no images)"])
        masks = {p.stem: p for p in visible_files(root / MASKS, SUFFIXES)}
        missing, cases = [], []
        for p in images:
            label = masks.get(p.stem)
            if label is None:
                missing.append(f"{(root / MASKS / p.name).relative_to(source)}")
            case_id = f"cvc_{int(p.stem):03d}" if p.stem.isdigit() else f"cvc_{p.stem}"
            cases.append(SourceCase(case_id, (p,), label))
        if missing:
            raise self.layout_error(source, missing)
        return cases, []


CONVERTER = CVCClinicDB

"""BUS 2017 dataset B (BUS_Dataset_B/original/NNNNNN.png, GT/NNNNNN.png, DatasetB.xlsx).

163 breast ultrasound images (UDIAT Diagnostic Centre, Sabadell; 109 benign, 54 malignant lesions) with binary
lesion masks (0/255) of the same file name. Distributed on request (licence agreement) by M. H. Yap. Images are
stored as grey (an RGB copy is converted to grey), one channel.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from nnunet_losses.datasets.converter import SourceCase, Mask2DConverter, Variant, visible_files

ROOT = "BUS_Dataset_B"


class BUS2017(Mask2DConverter):
    key = "bus2017"
    title = "BUS 2017 dataset B"
    dataset_name = "BUS2017B"
    url = "http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php (on request)"
    release = "Dataset B (163 images)"
    citation = "Yap et al., IEEE J. Biomed. Health Inform. 22(4):1218-1226 (2018)"
    licence = "research use under the data owners' licence agreement"
    channels = {0: "ultrasound"}
    variants = {"lesion": Variant("lesion", "", {"background": 0, "lesion": 1}, 551, "binary breast lesion",
                                  binary=True)}
    default_variant = default_binary = "lesion"

    def find_cases(self, source: Path) -> Tuple[List[SourceCase], List[SourceCase]]:
        root = source if (source / "original").is_dir() or (source / "GT").is_dir() else source / ROOT
        missing = [f"{(root / d).relative_to(source)}/" for d in ("original", "GT")
                   if not (root / d).is_dir()]
        if missing:
            raise self.layout_error(source, missing)
        images = visible_files(root / "original", (".png",))
        if not images:
            raise self.layout_error(source, [f"{(root / 'original').relative_to(source)}/NNNNNN.png (no images)"])
        cases = []
        for p in images:
            label = root / "GT" / p.name
            if not label.is_file():
                missing.append(str(label.relative_to(source)))
            cases.append(SourceCase(f"bus_{p.stem}", (p,), label))
        if missing:
            raise self.layout_error(source, missing)
        return cases, []


CONVERTER = BUS2017

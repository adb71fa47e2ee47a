"""Where an output may go: never into a folder the run reads, never into anything that looks like nnU-Net's.

nnU-Net's raw/preprocessed/results folders hold the user's data (ground truth, trained models); a label map
written there replaces ground truth without a trace. Environment variables name those folders only when they
are exported, so the trees are also recognised by their shape, whatever is exported:

* the folders named by ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` (when set), and folders
  *named* like them;
* a dataset folder ``DatasetXXX_Name`` (raw, preprocessed and results alike), and any folder named as the
  dataset of the run (``dataset_name`` of the plans);
* nnU-Net's subfolders ``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``, ``gt_segmentations``;
* a folder holding a ``dataset.json`` next to ``imagesTr``/``labelsTr`` (a raw dataset of any name), a
  ``splits_final.json`` or ``nnUNetPlans.json`` (preprocessed), or a ``plans.json`` next to ``fold_N`` folders
  (a trainer folder).

A destination is refused when it, or any folder above it, is one of these or one of the run's inputs; and when
it is above one of the run's inputs (``-o`` = the parent of the predictions would mix outputs into them).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, List, Optional

from nnunet_losses.evaluation.errors import EvaluationError

NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DATASET_RE = re.compile(r"^Dataset\d{3}_.+$")
FOLD_RE = re.compile(r"^fold_(\d+|all)$")
NNUNET_SUBFOLDERS = frozenset({"imagesTr", "labelsTr", "imagesTs", "labelsTs", "gt_segmentations"})


def exported_nnunet_folders() -> List[Path]:
    """The folders named by ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` (those exported)."""
    return [Path(os.environ[v]).resolve() for v in NNUNET_ENV if os.environ.get(v)]


def nnunet_role(folder: Path, dataset_names: Iterable[str] = ()) -> Optional[str]:
    """Why ``folder`` belongs to an nnU-Net tree (a few words), or None."""
    name = folder.name
    if name in NNUNET_ENV:
        return f"named like nnU-Net's {name} folder"
    if DATASET_RE.match(name) or name in set(dataset_names):
        return "an nnU-Net dataset folder"
    if name in NNUNET_SUBFOLDERS:
        return f"nnU-Net's {name} folder"
    if not folder.is_dir():
        return None
    if (folder / "dataset.json").is_file() and ((folder / "imagesTr").is_dir() or (folder / "labelsTr").is_dir()):
        return "an nnU-Net raw dataset (dataset.json with imagesTr/labelsTr)"
    if (folder / "splits_final.json").is_file() or (folder / "nnUNetPlans.json").is_file():
        return "an nnU-Net preprocessed dataset"
    if (folder / "plans.json").is_file() and any(FOLD_RE.match(p.name) for p in folder.iterdir() if p.is_dir()):
        return "an nnU-Net trainer folder"
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_output_location(dest: Path, read_folders: Iterable[Path] = (), dataset_names: Iterable[str] = ()) -> Path:
    """``dest`` resolved, or a one-line :class:`EvaluationError` when it is in (or around) a folder the run reads
    or in an nnU-Net tree (see the module doc)."""
    dest = Path(dest).resolve()
    dataset_names = [n for n in dataset_names if n]
    for folder in [*exported_nnunet_folders(), *[Path(p).resolve() for p in read_folders]]:
        if _inside(dest, folder) or _inside(folder, dest):
            raise EvaluationError(f"{dest}: refusing to write inside (or around) {folder}, which belongs to "
                                  f"nnU-Net or holds the inputs; choose an output folder elsewhere")
    for folder in (dest, *dest.parents):
        role = nnunet_role(folder, dataset_names)
        if role is not None:
            raise EvaluationError(f"{dest}: refusing to write inside {folder}, {role} (nnU-Net's folders hold "
                                  f"your data); choose an output folder elsewhere")
    return dest

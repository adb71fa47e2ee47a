"""Multi-rater references in nnU-Net: K label maps per training case, trained on their mean or on one rater drawn
per iteration, every rater moved by the same augmentation as the image.

Raw dataset format (next to nnU-Net's own folders)::

    DatasetXXX_Name/
        dataset.json, imagesTr/, labelsTr/         nnU-Net's: labelsTr/<case> is the label map nnU-Net plans with,
                                                   samples foreground from, and validates against (e.g. rater 0
                                                   or a consensus)
        ratersTr/<case>_rater<k><file_ending>      rater k = 0 .. K-1 of every training case, label maps with the
                                                   labels of dataset.json, same geometry as labelsTr/<case>

Every training case has the same number K >= 2 of raters. ``nnunet-losses phantom --raters K`` writes such a
dataset with known per-voxel probabilities (``probabilitiesTr/``, read by the evaluation).

Design: the raters travel through nnU-Net's pipeline as *extra segmentation channels*. nnU-Net's data loader
crops every channel of the segmentation with the same box, and its spatial transforms (rotation, scaling,
mirroring) resample every segmentation channel with the same grid -- exactly how nnU-Net moves the previous
stage's segmentation in its cascade. So the raters get the augmentation of the image without any change to
nnU-Net's data loader or transforms; only the dataset class differs (:class:`RaterDataset` appends the raters to
the segmentation nnU-Net loads). The raters are preprocessed once by nnU-Net's own preprocessor of the
configuration (transpose, crop to the image's nonzero region, resampling as for segmentations), into a cache
next to nnU-Net's preprocessed data::

    $nnUNet_preprocessed/DatasetXXX_Name/nnunet_losses_raters/<data_identifier>/<case>.npy   (K, *shape) int16

which is made on the first training start and only added to afterwards (nnU-Net's own files are never touched).
In the training step channel 0 (nnU-Net's label map) is dropped and the K raters become the target:

* ``rater_mode = "mean"``: the soft target ``y_c = 1/K sum_k [r_k == c]`` at full resolution, averaged onto every
  deep-supervision output;
* ``rater_mode = "sample"``: a hard target, rater ``k`` drawn uniformly per batch element in every iteration (at
  every deep-supervision output nnU-Net's nearest-neighbour down-sampled map of that rater).

Validation during training (loss and pseudo Dice) uses channel 0, nnU-Net's label map, as does nnU-Net's final
validation. Region-based datasets and ignore labels are refused (nnU-Net converts only segmentation channel 0
into regions).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from torch import Tensor

from nnunet_losses.trainers.soft_targets import SoftTargetMixin, Target, full_resolution, like_target, onehot_labels

RATER_FOLDER = "ratersTr"
CACHE_FOLDER = "nnunet_losses_raters"
RATER_MODES = ("mean", "sample")


# ------------------------------------------------------------------------------------------------ format
def rater_file(raw_dataset: Path, case: str, k: int, file_ending: str) -> Path:
    return Path(raw_dataset) / RATER_FOLDER / f"{case}_rater{k}{file_ending}"


def find_raters(raw_dataset: Path, cases: List[str], file_ending: str) -> Dict[str, List[Path]]:
    """``{case: [rater files]}`` for ``cases``; raises a one-line error unless every case has the same K >= 2."""
    folder = Path(raw_dataset) / RATER_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"no {RATER_FOLDER}/ in {raw_dataset}: a multi-rater dataset needs "
                                f"{RATER_FOLDER}/<case>_rater<k>{file_ending} for k = 0..K-1 (see docs/trainers.md)")
    found = {}
    for case in cases:
        files = []
        while rater_file(raw_dataset, case, len(files), file_ending).is_file():
            files.append(rater_file(raw_dataset, case, len(files), file_ending))
        found[case] = files
    counts = {len(f) for f in found.values()}
    if len(counts) != 1 or min(counts) < 2:
        few = sorted(c for c, f in found.items() if len(f) != max(counts))[:3]
        raise ValueError(f"every case needs the same number K >= 2 of raters {RATER_FOLDER}/<case>_rater<k>"
                         f"{file_ending} in {raw_dataset}; found K in {sorted(counts)} (e.g. cases {few})")
    return found


# ------------------------------------------------------------------------------------------------ soft target
def rater_mean_target(raters: Tensor, num_classes: int) -> Tensor:
    """``(B, K, *spatial)`` rater label maps -> ``(B, C, *spatial)`` soft target ``y_c = 1/K sum_k [r_k == c]``."""
    total = None
    for k in range(raters.shape[1]):
        onehot = onehot_labels(raters[:, k:k + 1], num_classes)
        total = onehot if total is None else total + onehot
    return total / raters.shape[1]


def sampled_rater(raters: Tensor, choice: Tensor) -> Tensor:
    """``(B, K, *spatial)`` -> ``(B, 1, *spatial)``: rater ``choice[b]`` of every batch element ``b``."""
    index = choice.view(-1, 1, *([1] * (raters.ndim - 2))).expand(-1, 1, *raters.shape[2:])
    return torch.gather(raters, 1, index.to(raters.device))


# ------------------------------------------------------------------------------------------------ dataset
class RaterDataset:
    """nnU-Net's dataset of the configuration with the preprocessed raters appended to each segmentation as
    channels 1..K (see the module docstring). Picklable, for nnU-Net's data-augmentation worker processes."""

    def __init__(self, base, rater_folder: str):
        self.base, self.rater_folder = base, rater_folder
        self.identifiers = base.identifiers

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def load_case(self, identifier):
        data, seg, seg_prev, properties = self.base.load_case(identifier)
        raters = np.load(os.path.join(self.rater_folder, identifier + ".npy"), mmap_mode="r")
        seg = np.asarray(seg[:])
        if raters.shape[1:] != seg.shape[1:]:
            raise ValueError(f"preprocessed raters of {identifier} have shape {raters.shape[1:]}, its segmentation "
                             f"{seg.shape[1:]}: delete {self.rater_folder} to redo them")
        return data, np.concatenate([seg, raters.astype(seg.dtype)], 0), seg_prev, properties


def preprocess_raters(trainer, cases: List[str]) -> str:
    """Preprocess the raters of ``cases`` that are not cached yet with nnU-Net's preprocessor of the trainer's
    configuration; returns the cache folder (see the module docstring)."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    raw = Path(nnUNet_raw or "") / trainer.plans_manager.dataset_name
    ending = trainer.dataset_json["file_ending"]
    raters = find_raters(raw, cases, ending)
    out = Path(trainer.preprocessed_dataset_folder_base) / CACHE_FOLDER / trainer.configuration_manager.data_identifier
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if not (out / f"{c}.npy").is_file()]
    if not todo:
        return str(out)
    trainer.print_to_log_file(f"nnunet-losses: preprocessing {len(raters[todo[0]])} raters of {len(todo)} cases "
                              f"into {out}")
    images = get_filenames_of_train_images_and_targets(str(raw), trainer.dataset_json)
    preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, todo)
    for case in todo:
        expected = dataset.load_case(case)[1].shape[1:]
        maps = []
        for f in raters[case]:
            _, seg, _ = preprocessor.run_case(images[case]["images"], str(f), trainer.plans_manager,
                                              trainer.configuration_manager, trainer.dataset_json)
            if seg.shape[1:] != tuple(expected):
                raise ValueError(f"{f} preprocesses to shape {seg.shape[1:]}, but {case}'s label map to {expected}: "
                                 f"a rater must have the geometry of labelsTr/{case}{ending}")
            maps.append(seg[0].astype(np.int16))
        fd, tmp = tempfile.mkstemp(suffix=".npy", dir=str(out))
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.stack(maps))
        os.replace(tmp, out / f"{case}.npy")
    return str(out)


class MultiRaterMixin(SoftTargetMixin):
    """Training on K raters per case (module docstring): ``rater_mode`` ``"mean"`` (soft target) or ``"sample"``
    (one rater drawn per batch element and iteration). Put it before a loss trainer."""
    rater_mode: str = "mean"

    @property
    def target_kind(self) -> str:
        if self.rater_mode == "mean":
            return "multi-rater soft target (mean of the K raters' one-hot maps)"
        return "multi-rater hard target (one rater drawn per batch element and iteration)"

    def check_dataset(self) -> None:
        super().check_dataset()
        if self.rater_mode not in RATER_MODES:
            raise ValueError(f"rater_mode must be one of {RATER_MODES}, got {self.rater_mode!r}")
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__}: multi-rater training supports label (softmax) datasets only; "
                             f"nnU-Net converts only segmentation channel 0 into regions")

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        folder = preprocess_raters(self, sorted(dataset_tr.identifiers) + sorted(dataset_val.identifiers))
        return RaterDataset(dataset_tr, folder), RaterDataset(dataset_val, folder)

    def training_target(self, data: Tensor, target: Target) -> Target:
        raters = full_resolution(target)[:, 1:]
        if self.rater_mode == "mean":
            return like_target(rater_mean_target(raters, self.num_target_classes()), target)
        choice = torch.randint(raters.shape[1], (raters.shape[0],))
        if isinstance(target, (list, tuple)):
            return [sampled_rater(t[:, 1:], choice) for t in target]
        return sampled_rater(raters, choice)

    def validation_target(self, target: Target) -> Target:
        if isinstance(target, (list, tuple)):
            return [t[:, :1] for t in target]
        return target[:, :1]

"""Knowledge distillation from a trained nnU-Net model folder, inside nnU-Net's training step.

In every training step the teacher sees the *same augmented batch* as the student; its logits ``z_t`` give the
soft target ``q = softmax(z_t / T)`` (``sigmoid`` for region-based datasets), averaged onto every
deep-supervision output. With the student's logits ``z`` and its hard label ``y`` the loss is (Hinton, Vinyals,
Dean 2015, with any loss ``L`` of the library in place of CE)::

    (1 - w) * L(z, y)  +  w * T**2 * L(z / T, q)

``T`` = ``distillation_temperature`` (default 1), ``w`` = ``distillation_weight`` (default 0.5; JDTLosses'
defaults). The factor ``T**2`` keeps the gradient of the soft term on the scale of the hard one (Hinton et al.).

The teacher is an nnU-Net model folder (``$nnUNet_results/DatasetXXX/Trainer__Plans__configuration``), given by
the environment variable ``NNUNET_LOSSES_TEACHER`` (or the class attribute ``teacher_model_folder``). Its fold is
the student's fold: a teacher of another fold was trained on the student's validation cases, which would leak
them into training. It is loaded with nnU-Net's own ``nnUNetPredictor.initialize_from_trained_model_folder``
(any trainer and network nnU-Net can predict with, e.g. a larger teacher for a small student), and must have been
trained on the same preprocessed data: same labels, spacing and intensity normalisation (checked, with a
one-line error).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from nnunet_losses.segmentation_loss import check_range
from nnunet_losses.trainers.soft_targets import SoftTargetMixin, Target, full_resolution, ignore_mask, like_target

TEACHER_ENV = "NNUNET_LOSSES_TEACHER"


def teacher_soft_target(teacher_logits: Tensor, temperature: float, region_based: bool) -> Tensor:
    """``q = softmax(z_t / T)`` over classes (``sigmoid(z_t / T)`` per region)."""
    z = teacher_logits.float() / temperature
    return torch.sigmoid(z) if region_based else torch.softmax(z, 1)


def scaled_logits(output, temperature: float):
    """``z / T`` for one network output or each of nnU-Net's deep-supervision outputs."""
    if isinstance(output, (list, tuple)):
        return [o / temperature for o in output]
    return output / temperature


def preprocessing_signature(plans_manager, configuration_manager) -> dict:
    """What must agree between teacher and student for the teacher to read the student's batches."""
    return {"spacing": [round(float(s), 6) for s in configuration_manager.spacing],
            "normalization_schemes": list(configuration_manager.normalization_schemes),
            "use_mask_for_norm": list(configuration_manager.use_mask_for_norm),
            "intensity_properties": plans_manager.foreground_intensity_properties_per_channel}


def load_teacher(model_folder, fold, student_signature: dict, dataset_json: dict, device: torch.device,
                 checkpoint_name: str = "checkpoint_final.pth") -> torch.nn.Module:
    """The teacher network of ``model_folder``/fold_``fold`` in eval mode on ``device``, after checking that it
    was trained on the student's preprocessing (labels, spacing, normalisation)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = Path(model_folder)
    checkpoint = folder / f"fold_{fold}" / checkpoint_name
    if not checkpoint.is_file():
        raise FileNotFoundError(f"teacher checkpoint {checkpoint} not found: set {TEACHER_ENV} to a trained nnU-Net "
                                f"model folder (…/Trainer__Plans__configuration) with fold {fold}")
    teacher_json = load_json(str(folder / "dataset.json"))
    if teacher_json["labels"] != dataset_json["labels"]:
        raise ValueError(f"teacher {folder} has labels {teacher_json['labels']}, the student {dataset_json['labels']}")
    predictor = nnUNetPredictor(device=device, perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,), checkpoint_name=checkpoint_name)
    theirs = preprocessing_signature(predictor.plans_manager, predictor.configuration_manager)
    differ = [k for k in student_signature if student_signature[k] != theirs[k]]
    if differ:
        raise ValueError(f"teacher {folder} was trained on other preprocessing than the student: "
                         f"{', '.join(differ)} differ; distil from a model of the same dataset and configuration")
    network = predictor.network.to(device)
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


class DistillationMixin(SoftTargetMixin):
    """Knowledge distillation (see the module docstring); put it before a loss trainer:
    ``class X(DistillationMixin, nnUNetTrainer_SoftDice): pass``."""
    distillation_temperature: float = 1.0
    distillation_weight: float = 0.5
    #: teacher model folder; empty = the environment variable NNUNET_LOSSES_TEACHER
    teacher_model_folder: str = ""
    teacher_checkpoint: str = "checkpoint_final.pth"
    #: ignored voxels of the hard target go to the loss as the ignore channel of the teacher's soft target
    supports_ignore_label = True

    @property
    def target_kind(self) -> str:
        folder = self.teacher_model_folder or os.environ.get(TEACHER_ENV, "") or f"not set (${TEACHER_ENV})"
        return (f"knowledge distillation: (1 - {self.distillation_weight:g}) x hard labels + "
                f"{self.distillation_weight:g} x T^2 x teacher softmax at T = {self.distillation_temperature:g} "
                f"(teacher {folder})")

    def teacher_folder(self) -> str:
        folder = self.teacher_model_folder or os.environ.get(TEACHER_ENV, "")
        if not folder:
            raise ValueError(f"{type(self).__name__} needs a teacher: set {TEACHER_ENV} to a trained nnU-Net model "
                             f"folder ($nnUNet_results/DatasetXXX/Trainer__Plans__configuration)")
        return folder

    def check_dataset(self) -> None:
        super().check_dataset()
        check_range("distillation_temperature", self.distillation_temperature, 0.0, float("inf"), low_open=True)
        check_range("distillation_weight", self.distillation_weight, 0.0, 1.0)

    def on_train_start(self):
        # the teacher is needed for training only: ``nnUNetv2_train --val`` and prediction run without it
        super().on_train_start()
        self.load_teacher()

    def load_teacher(self) -> None:
        signature = preprocessing_signature(self.plans_manager, self.configuration_manager)
        self.teacher = load_teacher(self.teacher_folder(), self.fold, signature, self.dataset_json, self.device,
                                    self.teacher_checkpoint)
        self.print_to_log_file(f"nnunet-losses: {self.target_kind}")

    def teacher_target(self, data: Tensor, target: Target) -> Target:
        with torch.no_grad():
            logits = self.teacher(data)
        logits = full_resolution(logits)  # a teacher built with deep supervision on returns a list
        region_based = bool(self.label_manager.has_regions)
        soft = teacher_soft_target(logits, self.distillation_temperature, region_based)
        ignored = ignore_mask(full_resolution(target), self.label_manager.ignore_label, region_based)
        if ignored is not None:
            soft = torch.cat([soft, ignored], 1)
        return like_target(soft, target, ignored is not None)

    def training_loss(self, data: Tensor, output, target: Target) -> Tensor:
        w, t = self.distillation_weight, self.distillation_temperature
        soft = self.loss(scaled_logits(output, t), self.teacher_target(data, target))
        if w == 1:
            return t * t * soft
        return (1 - w) * self.loss(output, target) + w * t * t * soft

"""One nnU-Net trainer per loss of the library: nnU-Net's default trainer (network, SGD, schedule, augmentation,
deep supervision, validation, export) with only the loss replaced. Everything shared lives in
:class:`~nnunet_losses.trainers.mixins.LossTrainerMixin`; a trainer is its loss name and hyper-parameters.
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_losses.registry import LOSSES
from nnunet_losses.trainers.mixins import LossTrainerMixin


def _paper(loss_name: str) -> str:
    return LOSSES[loss_name][1]


class nnUNetTrainer_CEonly(LossTrainerMixin, nnUNetTrainer):
    """Cross-entropy only (BCE for region-based datasets)."""
    loss_name, paper = "ce", _paper("ce")


class nnUNetTrainer_wCE(LossTrainerMixin, nnUNetTrainer):
    """Weighted CE, weights from the class priors of the fold's training labels (cached; see ``priors``)."""
    loss_name, paper = "wce", _paper("wce")


class nnUNetTrainer_Focal(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "focal", _paper("focal")


class nnUNetTrainer_SoftDice(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "softdice", _paper("softdice")


class nnUNetTrainer_SoftJaccard(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "softjaccard", _paper("softjaccard")


class nnUNetTrainer_Lovasz(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "lovasz", _paper("lovasz")


class nnUNetTrainer_DSCpp(LossTrainerMixin, nnUNetTrainer):
    """DSC++ with the paper's gamma = 2; the gamma grid is ``nnUNetTrainer_DSCpp_g0p5`` ... ``_g5``."""
    loss_name, paper = "dscpp", _paper("dscpp")


class nnUNetTrainer_Tversky(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "tversky", _paper("tversky")


class nnUNetTrainer_FocalTversky(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "focal_tversky", _paper("focal_tversky")


class nnUNetTrainer_Combo(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "combo", _paper("combo")


class nnUNetTrainer_UnifiedFocal(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "unified_focal", _paper("unified_focal")


class nnUNetTrainer_TverskyPP(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "tversky_pp", _paper("tversky_pp")


class nnUNetTrainer_FocalTverskyPP(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "focal_tversky_pp", _paper("focal_tversky_pp")


class nnUNetTrainer_ComboPP(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "combo_pp", _paper("combo_pp")


class nnUNetTrainer_UnifiedFocalPP(LossTrainerMixin, nnUNetTrainer):
    loss_name, paper = "unified_focal_pp", _paper("unified_focal_pp")


class nnUNetTrainer_DiceCE(LossTrainerMixin, nnUNetTrainer):
    """nnU-Net's default Dice + CE, computed by this library (reference for the others)."""
    loss_name, paper = "dice_ce", _paper("dice_ce")


#: short tag -> trainer, one per loss of the library (the tag is the trainer name without ``nnUNetTrainer_``)
LOSS_TRAINERS = {cls.__name__[len("nnUNetTrainer_"):]: cls for cls in (
    nnUNetTrainer_CEonly, nnUNetTrainer_wCE, nnUNetTrainer_Focal, nnUNetTrainer_SoftDice, nnUNetTrainer_SoftJaccard,
    nnUNetTrainer_Lovasz, nnUNetTrainer_DSCpp, nnUNetTrainer_Tversky, nnUNetTrainer_FocalTversky, nnUNetTrainer_Combo,
    nnUNetTrainer_UnifiedFocal, nnUNetTrainer_TverskyPP, nnUNetTrainer_FocalTverskyPP, nnUNetTrainer_ComboPP,
    nnUNetTrainer_UnifiedFocalPP, nnUNetTrainer_DiceCE)}

__all__ = [cls.__name__ for cls in LOSS_TRAINERS.values()]

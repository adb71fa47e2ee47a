"""Thin ``nn.Module`` wrappers around :mod:`nnunet_losses.functional`, one family per file.

The ++ forms (Tversky++, Focal Tversky++, Combo++, Unified Focal++) are not classes: they are registry entries
(``get_loss("tversky_pp")`` = ``TverskyLoss(gamma_pp=2)``); see :mod:`nnunet_losses.registry`.
"""
from nnunet_losses.losses.pixelwise import CrossEntropyLoss, WeightedCrossEntropyLoss, FocalLoss
from nnunet_losses.losses.overlap import SoftDiceLoss, SoftJaccardLoss, DSCppLoss, TverskyLoss, FocalTverskyLoss
from nnunet_losses.losses.lovasz import LovaszLoss
from nnunet_losses.losses.metric import DiceMetricLoss, JaccardMetricLoss, MetricTverskyLoss
from nnunet_losses.losses.compound import DiceCELoss, ComboLoss, UnifiedFocalLoss

__all__ = ["CrossEntropyLoss", "WeightedCrossEntropyLoss", "FocalLoss", "SoftDiceLoss", "SoftJaccardLoss",
           "DSCppLoss", "TverskyLoss", "FocalTverskyLoss", "LovaszLoss", "DiceCELoss", "ComboLoss", "UnifiedFocalLoss",
           "DiceMetricLoss", "JaccardMetricLoss", "MetricTverskyLoss"]

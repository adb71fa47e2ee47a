"""Thin ``nn.Module`` wrappers around :mod:`nnunet_losses.functional`, one family per file."""
from nnunet_losses.losses.pixelwise import CrossEntropyLoss, WeightedCrossEntropyLoss, FocalLoss
from nnunet_losses.losses.overlap import (SoftDiceLoss, SoftJaccardLoss, DSCppLoss, TverskyLoss, TverskyPPLoss, FocalTverskyLoss,
                      FocalTverskyPPLoss)
from nnunet_losses.losses.lovasz import LovaszLoss
from nnunet_losses.losses.compound import DiceCELoss, ComboLoss, ComboPPLoss, UnifiedFocalLoss, UnifiedFocalPPLoss

__all__ = ["CrossEntropyLoss", "WeightedCrossEntropyLoss", "FocalLoss", "SoftDiceLoss", "SoftJaccardLoss",
           "DSCppLoss", "TverskyLoss", "TverskyPPLoss", "FocalTverskyLoss", "FocalTverskyPPLoss", "LovaszLoss",
           "DiceCELoss", "ComboLoss", "ComboPPLoss", "UnifiedFocalLoss", "UnifiedFocalPPLoss"]

"""Thin ``nn.Module`` wrappers around :mod:`nnunet_losses.functional`, one family per file."""
from .pixelwise import CrossEntropyLoss, WeightedCrossEntropyLoss, FocalLoss
from .overlap import (SoftDiceLoss, SoftJaccardLoss, DSCppLoss, TverskyLoss, TverskyPPLoss, FocalTverskyLoss,
                      FocalTverskyPPLoss)
from .lovasz import LovaszLoss
from .compound import DiceCELoss, ComboLoss, ComboPPLoss, UnifiedFocalLoss, UnifiedFocalPPLoss

__all__ = ["CrossEntropyLoss", "WeightedCrossEntropyLoss", "FocalLoss", "SoftDiceLoss", "SoftJaccardLoss",
           "DSCppLoss", "TverskyLoss", "TverskyPPLoss", "FocalTverskyLoss", "FocalTverskyPPLoss", "LovaszLoss",
           "DiceCELoss", "ComboLoss", "ComboPPLoss", "UnifiedFocalLoss", "UnifiedFocalPPLoss"]

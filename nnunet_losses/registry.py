"""Name -> loss registry: ``available_losses()`` and ``get_loss(name, **kwargs)``."""
from __future__ import annotations

import inspect
from typing import Dict, List, Type

from nnunet_losses.segmentation_loss import SegmentationLoss
from nnunet_losses.losses import (ComboLoss, ComboPPLoss, CrossEntropyLoss, DiceCELoss, DSCppLoss, FocalLoss, FocalTverskyLoss,
                     FocalTverskyPPLoss, LovaszLoss, SoftDiceLoss, SoftJaccardLoss, TverskyLoss, TverskyPPLoss,
                     UnifiedFocalLoss, UnifiedFocalPPLoss, WeightedCrossEntropyLoss)

#: name -> (class, paper). The papers are the three seed papers of this project (see README).
LOSSES: Dict[str, tuple] = {
    "ce": (CrossEntropyLoss, "Bertels et al. 2019 (CE baseline)"),
    "wce": (WeightedCrossEntropyLoss, "Bertels et al. 2019 (weighted CE, 1/(2p), 1/(2-2p))"),
    "focal": (FocalLoss, "Lin et al. 2017; Yeung et al. 2022 Eq. 2"),
    "softdice": (SoftDiceLoss, "Milletari et al. 2016; Bertels et al. 2019/2020"),
    "softjaccard": (SoftJaccardLoss, "Rahman & Wang 2016; Bertels et al. 2019"),
    "lovasz": (LovaszLoss, "Berman et al. 2018; Bertels et al. 2019"),
    "dscpp": (DSCppLoss, "Yeung et al. 2022 Eq. 9"),
    "tversky": (TverskyLoss, "Salehi et al. 2017; Yeung et al. 2022 Eq. 15"),
    "focal_tversky": (FocalTverskyLoss, "Abraham & Khan 2019; Yeung et al. 2022 Eq. 17"),
    "combo": (ComboLoss, "Taghanaki et al. 2019; Yeung et al. 2022 Eq. 13"),
    "unified_focal": (UnifiedFocalLoss, "Yeung et al. 2022 Eq. 18"),
    "tversky_pp": (TverskyPPLoss, "Yeung et al. 2022 (Tversky++)"),
    "focal_tversky_pp": (FocalTverskyPPLoss, "Yeung et al. 2022 (Focal Tversky++)"),
    "combo_pp": (ComboPPLoss, "Yeung et al. 2022 (Combo++)"),
    "unified_focal_pp": (UnifiedFocalPPLoss, "Yeung et al. 2022 (Unified Focal++)"),
    "dice_ce": (DiceCELoss, "Isensee et al. 2021 (nnU-Net default)"),
}


def available_losses() -> List[str]:
    """Names accepted by :func:`get_loss`."""
    return list(LOSSES)


def loss_arguments(name: str) -> Dict[str, object]:
    """Keyword arguments of loss ``name`` with their defaults (``inspect.Parameter.empty`` if required)."""
    cls = loss_class(name)
    return {p.name: p.default for p in list(inspect.signature(cls.__init__).parameters.values())[1:]}


def loss_class(name: str) -> Type[SegmentationLoss]:
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    return LOSSES[name.lower()][0]


def get_loss(name: str, **kwargs) -> SegmentationLoss:
    """Instantiate loss ``name`` (see :func:`available_losses`), called as ``loss(logits, target)``.

    Keyword arguments use nnU-Net's names (``batch_dice``, ``do_bg``, ``smooth``, ``ignore_label``, ``ddp``,
    ``region_based``) and the papers' names otherwise (``alpha`` = FP weight, ``beta`` = FN weight, ``gamma``,
    ``delta``, ``lambda_``, ``gamma_pp`` = DSC++ exponent of the ++ forms).
    """
    valid = loss_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r} does not accept {', '.join(unknown)}; valid arguments: {', '.join(valid)}")
    missing = [k for k, default in valid.items() if default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}; valid arguments: {', '.join(valid)}")
    return loss_class(name)(**kwargs)

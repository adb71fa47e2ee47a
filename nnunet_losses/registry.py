"""The one table of losses: name -> class, paper, nnU-Net trainer and default overrides.

:data:`LOSSES` drives everything that lists losses: :func:`available_losses`, :func:`get_loss`, the trainers
(``trainers/loss_trainers.py`` builds ``nnUNetTrainer_<trainer>`` for every entry), ``nnunet-losses losses`` and
the tests (a test checks that the README's loss table lists exactly these names). A variant that only changes
defaults is one line here -- e.g. Tversky++ is ``TverskyLoss`` with ``gamma_pp=2`` -- plus its reference test.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Dict, List, Mapping, Type

from nnunet_losses.segmentation_loss import SegmentationLoss
from nnunet_losses.losses import (ComboLoss, CrossEntropyLoss, DiceCELoss, DiceMetricLoss, DSCppLoss, FocalLoss,
                                  FocalTverskyLoss, JaccardMetricLoss, LovaszLoss, MetricTverskyLoss, SoftDiceLoss,
                                  SoftJaccardLoss, TverskyLoss, UnifiedFocalLoss, WeightedCrossEntropyLoss)


@dataclass(frozen=True)
class LossSpec:
    """One registry entry: ``cls(**defaults, **user_kwargs)``, trained by ``nnUNetTrainer_<trainer>``."""
    cls: Type[SegmentationLoss]
    paper: str
    trainer: str
    defaults: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


def _entry(cls, paper: str, trainer: str, **defaults) -> LossSpec:
    return LossSpec(cls, paper, trainer, defaults)


#: name -> entry. The papers are the three seed papers of this project (see README).
LOSSES: Dict[str, LossSpec] = {
    "ce": _entry(CrossEntropyLoss, "Bertels et al. 2019 (CE baseline)", "CEonly"),
    "wce": _entry(WeightedCrossEntropyLoss, "Bertels et al. 2019 (weighted CE, 1/(2p), 1/(2-2p))", "wCE"),
    "focal": _entry(FocalLoss, "Lin et al. 2017; Yeung et al. 2022 Eq. 2", "Focal"),
    "softdice": _entry(SoftDiceLoss, "Milletari et al. 2016; Bertels et al. 2019/2020", "SoftDice"),
    "softjaccard": _entry(SoftJaccardLoss, "Rahman & Wang 2016; Bertels et al. 2019", "SoftJaccard"),
    "lovasz": _entry(LovaszLoss, "Berman et al. 2018; Bertels et al. 2019", "Lovasz"),
    "dscpp": _entry(DSCppLoss, "Yeung et al. 2022 Eq. 9", "DSCpp"),
    "tversky": _entry(TverskyLoss, "Salehi et al. 2017; Yeung et al. 2022 Eq. 15", "Tversky"),
    "focal_tversky": _entry(FocalTverskyLoss, "Abraham & Khan 2019; Yeung et al. 2022 Eq. 17", "FocalTversky"),
    "combo": _entry(ComboLoss, "Taghanaki et al. 2019; Yeung et al. 2022 Eq. 13", "Combo"),
    "unified_focal": _entry(UnifiedFocalLoss, "Yeung et al. 2022 Eq. 18", "UnifiedFocal"),
    "tversky_pp": _entry(TverskyLoss, "Yeung et al. 2022 (Tversky++)", "TverskyPP", gamma_pp=2.0),
    "focal_tversky_pp": _entry(FocalTverskyLoss, "Yeung et al. 2022 (Focal Tversky++)", "FocalTverskyPP",
                               gamma_pp=2.0),
    "combo_pp": _entry(ComboLoss, "Yeung et al. 2022 (Combo++)", "ComboPP", gamma_pp=2.0),
    "unified_focal_pp": _entry(UnifiedFocalLoss, "Yeung et al. 2022 (Unified Focal++)", "UnifiedFocalPP",
                               gamma_pp=2.0),
    "dice_ce": _entry(DiceCELoss, "Isensee et al. 2021 (nnU-Net default)", "DiceCE"),
    "dml": _entry(DiceMetricLoss, "Wang et al. 2023 (Dice semimetric loss)", "DML"),
    "jml": _entry(JaccardMetricLoss, "Wang et al. 2023 (Jaccard metric loss)", "JML"),
    "metric_tversky": _entry(MetricTverskyLoss, "Wang et al. 2023 (JDTLoss, Tversky form)", "MetricTversky"),
}


def available_losses() -> List[str]:
    """Names accepted by :func:`get_loss`."""
    return list(LOSSES)


def loss_spec(name: str) -> LossSpec:
    """The registry entry of ``name`` (case-insensitive); a one-line error listing the names otherwise."""
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}")
    return LOSSES[name.lower()]


def loss_arguments(name: str) -> Dict[str, object]:
    """Keyword arguments of loss ``name`` with its defaults (``inspect.Parameter.empty`` if required)."""
    spec = loss_spec(name)
    args = {p.name: p.default for p in inspect.signature(spec.cls).parameters.values()}
    return {k: spec.defaults.get(k, default) for k, default in args.items()}


def get_loss(name: str, **kwargs) -> SegmentationLoss:
    """Instantiate loss ``name`` (see :func:`available_losses`), called as ``loss(logits, target)``.

    Keyword arguments use nnU-Net's names (``batch_dice``, ``do_bg``, ``smooth``, ``ignore_label``, ``ddp``,
    ``region_based``) and the papers' names otherwise (``alpha`` = FP weight, ``beta`` = FN weight, ``gamma``,
    ``delta``, ``lambda_``, ``gamma_pp`` = DSC++ exponent of the ++ forms); ``loss_arguments(name)`` lists them.
    """
    spec = loss_spec(name)
    valid = loss_arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r} does not accept {', '.join(unknown)}; valid arguments: {', '.join(valid)}")
    missing = [k for k, default in valid.items() if default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}; valid arguments: {', '.join(valid)}")
    return spec.cls(**{**spec.defaults, **kwargs})

"""Trainers with soft targets: boundary label smoothing, knowledge distillation, multi-rater references.

``nnUNetTrainer_<kind>_<loss>`` for the losses of :data:`SOFT_LOSS_TAGS`, e.g. ``nnUNetTrainer_BoundarySmoothing_SoftDice``,
``nnUNetTrainer_Distill_CEonly``, ``nnUNetTrainer_MultiRaterMean_SoftDice``, ``nnUNetTrainer_MultiRaterSample_CEonly``.
Any other loss trainer takes the same mixin in a subclass of one line (docs/trainers.md)::

    class nnUNetTrainer_BoundarySmoothing_Tversky(BoundarySmoothingMixin, nnUNetTrainer_Tversky): pass
"""
from __future__ import annotations

from nnunet_losses.trainers.distillation import DistillationMixin
from nnunet_losses.trainers.loss_trainers import LOSS_TRAINERS
from nnunet_losses.trainers.multirater import MultiRaterMixin
from nnunet_losses.trainers.soft_targets import BoundarySmoothingMixin
from nnunet_losses.trainers.variants import define_trainer

#: loss trainers (tags of LOSS_TRAINERS) that get a generated soft-target trainer of every kind
SOFT_LOSS_TAGS = ("CEonly", "SoftDice", "DiceCE", "DML")


class MultiRaterSampleMixin(MultiRaterMixin):
    rater_mode = "sample"


#: kind -> (mixin, description)
SOFT_KINDS = {
    "BoundarySmoothing": (BoundarySmoothingMixin, "boundary label smoothing (epsilon 0.5, 3-voxel band)"),
    "Distill": (DistillationMixin, "knowledge distillation from $NNUNET_LOSSES_TEACHER (T 1, weight 0.5)"),
    "MultiRaterMean": (MultiRaterMixin, "multi-rater references, mean of the raters as soft target"),
    "MultiRaterSample": (MultiRaterSampleMixin, "multi-rater references, one rater drawn per iteration"),
}

SOFT_TRAINERS = {}
for _kind, (_mixin, _what) in SOFT_KINDS.items():
    for _tag in SOFT_LOSS_TAGS:
        _loss_trainer = LOSS_TRAINERS[_tag]
        _cls = define_trainer(f"nnUNetTrainer_{_kind}_{_tag}", (_mixin, _loss_trainer), globals(),
                              doc=f"{_what}, trained with {_loss_trainer.loss_name!r}.")
        SOFT_TRAINERS[_cls.__name__] = _cls
del _kind, _mixin, _what, _tag, _loss_trainer, _cls

__all__ = list(SOFT_TRAINERS)

"""One nnU-Net trainer per loss of the library: nnU-Net's default trainer (network, SGD, schedule, augmentation,
deep supervision, validation, export) with only the loss replaced. Everything shared lives in
:class:`~nnunet_losses.trainers.mixins.LossTrainerMixin`; a trainer is its loss name and hyper-parameters.

The trainers are generated from the loss registry (:data:`nnunet_losses.registry.LOSSES`): every entry gives
``nnUNetTrainer_<entry.trainer>`` (e.g. ``nnUNetTrainer_SoftDice`` for ``softdice``), so a new registry entry
has its trainer without a line here. They are ordinary module-level classes of this module (see
:func:`~nnunet_losses.trainers.variants.define_trainer`), found by nnU-Net's name lookup and picklable.
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_losses.registry import LOSSES
from nnunet_losses.trainers.mixins import LossTrainerMixin
from nnunet_losses.trainers.variants import define_trainer

#: short tag -> trainer, one per loss of the library (the tag is the trainer name without ``nnUNetTrainer_``)
LOSS_TRAINERS = {}

for _name, _spec in LOSSES.items():
    _defaults = "".join(f", {k}={v!r}" for k, v in _spec.defaults.items())
    LOSS_TRAINERS[_spec.trainer] = define_trainer(
        f"nnUNetTrainer_{_spec.trainer}", (LossTrainerMixin, nnUNetTrainer), globals(),
        doc=f"nnU-Net's default trainer with the loss {_name!r}: {_spec.cls.__name__}(...{_defaults}) "
            f"({_spec.paper}).", loss_name=_name, paper=_spec.paper)

del _name, _spec, _defaults

__all__ = [cls.__name__ for cls in LOSS_TRAINERS.values()]

"""Generated trainers: the DSC++ gamma grid, the paper's networks with every loss, fine-tune variants.

* ``nnUNetTrainer_DSCpp_g<gamma>``: DSC++ with gamma in the grid of Yeung et al. 2022
  (0.5, 1, 1.5, 2, 2.5, 3, 4, 5 -> ``_g0p5`` ... ``_g5``);
* ``nnUNetTrainer_<LR|ConvNet|UNet>_<loss>``: the volume-bias paper's networks (Adam, lr 1e-3 / LR 1) with every
  loss of the library (``CE`` for cross-entropy, e.g. ``nnUNetTrainer_UNet_SoftDice``, ``nnUNetTrainer_LR_CE``);
* ``nnUNetTrainer_<loss>_finetune``: second stage of Bertels et al. 2019's protocol (Adam, lr 1e-4), started with
  ``-pretrained_weights`` from a CE run.
"""
from __future__ import annotations

from nnunet_losses.trainers.baselines import ARCHITECTURE_MIXINS
from nnunet_losses.trainers.mixins import FineTuneMixin
from nnunet_losses.trainers.loss_trainers import LOSS_TRAINERS, nnUNetTrainer_DSCpp
from nnunet_losses.trainers.variants import define_trainer, number_tag

#: gamma grid of the DSC++ paper (Yeung et al. 2022)
DSCPP_GAMMAS = (0.5, 1, 1.5, 2, 2.5, 3, 4, 5)

GENERATED = {}

for _gamma in DSCPP_GAMMAS:
    _cls = define_trainer(f"nnUNetTrainer_DSCpp_g{number_tag(_gamma)}", (nnUNetTrainer_DSCpp,), globals(),
                          doc=f"DSC++ with gamma = {_gamma} (Yeung et al. 2022 grid).", loss_kwargs={"gamma": _gamma})
    GENERATED[_cls.__name__] = _cls

for _arch, _mixin in ARCHITECTURE_MIXINS.items():
    for _tag, _loss_trainer in LOSS_TRAINERS.items():
        _short = "CE" if _tag == "CEonly" else _tag
        _cls = define_trainer(f"nnUNetTrainer_{_arch}_{_short}", (_mixin, _loss_trainer), globals(),
                              doc=f"Volume-bias paper's {_arch} (Adam lr {_mixin.paper_lr:g}) trained with "
                                  f"{_loss_trainer.loss_name!r}.")
        GENERATED[_cls.__name__] = _cls

for _tag, _loss_trainer in LOSS_TRAINERS.items():
    _cls = define_trainer(f"nnUNetTrainer_{_tag}_finetune", (FineTuneMixin, _loss_trainer), globals(),
                          doc=f"Fine-tune with {_loss_trainer.loss_name!r}, Adam lr 1e-4 (Bertels et al. 2019); "
                              f"start with -pretrained_weights from a CE run.")
    GENERATED[_cls.__name__] = _cls

del _gamma, _arch, _mixin, _tag, _loss_trainer, _short, _cls

__all__ = list(GENERATED)

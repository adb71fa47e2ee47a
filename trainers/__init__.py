"""nnU-Net v2 trainers for every loss of nnunet-losses, the DSC++ gamma grid, the volume-bias paper's networks
and fine-tune variants (installed as ``nnunet_losses.trainers``; see docs/trainers.md).

nnU-Net finds them with one line of set-up::

    export nnUNet_extTrainer=$(nnunet-losses trainer-path)

Your own variant, in a file in a folder you add to ``nnUNet_extTrainer`` (``os.pathsep``-separated)::

    from nnunet_losses.trainers import nnUNetTrainer_DSCpp
    class nnUNetTrainer_DSCpp_g3p5(nnUNetTrainer_DSCpp):
        loss_kwargs = {"gamma": 3.5}

``from nnunet_losses.trainers import *`` imports the trainer classes only (``__all__``); the building blocks
(``LossTrainerMixin``, ``UNetMixin``, ``FineTuneMixin``, ``define_trainer``, ...) are imported by name.
"""
from pathlib import Path

from nnunet_losses.trainers.mixins import (SHORT_RUN_ENV, FineTuneMixin, LossTrainerMixin, PaperAdamMixin, ShortRunMixin,
                   ValidationPlateauLR, deep_supervision_weights, short_run_overrides)
from nnunet_losses.trainers.baselines import ARCHITECTURE_MIXINS, ArchitectureMixin, ConvNetMixin, LRMixin, UNetMixin
from nnunet_losses.trainers.generated import DSCPP_GAMMAS, GENERATED
from nnunet_losses.trainers.loss_trainers import LOSS_TRAINERS
from nnunet_losses.trainers.loss_trainers import *  # noqa: F401,F403  (the 16 loss trainers)
from nnunet_losses.trainers.generated import *  # noqa: F401,F403  (generated trainers)
from nnunet_losses.trainers.variants import define_trainer, number_tag
from nnunet_losses.trainers.soft_targets import BoundarySmoothingMixin, SoftTargetMixin
from nnunet_losses.trainers.distillation import DistillationMixin
from nnunet_losses.trainers.multirater import MultiRaterMixin
from nnunet_losses.trainers.soft_trainers import SOFT_TRAINERS, MultiRaterSampleMixin
from nnunet_losses.trainers.soft_trainers import *  # noqa: F401,F403  (soft-target trainers)

#: every trainer of the package, name -> class
TRAINERS = {**{cls.__name__: cls for cls in LOSS_TRAINERS.values()}, **GENERATED, **SOFT_TRAINERS}

__all__ = list(TRAINERS)


def trainer_path() -> str:
    """The folder to put in ``nnUNet_extTrainer``: it holds one thin module re-exporting :data:`TRAINERS`.

    nnU-Net imports every module of that folder as a *top-level* module and drops it from ``sys.modules``
    afterwards; the classes it finds there are the ones defined in this package (same objects, importable and
    picklable by their ``nnunet_losses.trainers...`` names).
    """
    return str(Path(__file__).resolve().parent / "nnunet_ext")

"""nnunet-losses: segmentation losses for nnU-Net v2, checked against their papers' equations.

>>> import nnunet_losses
>>> loss = nnunet_losses.get_loss("dscpp", gamma=2, batch_dice=True)
>>> value = loss(logits, target)  # nnU-Net's network output and target (lists under deep supervision)
"""
from nnunet_losses.segmentation_loss import SegmentationLoss
from nnunet_losses.deep_supervision import deep_supervision_loss, nnunet_deep_supervision_weights
from nnunet_losses.losses import *  # noqa: F401,F403
from nnunet_losses.losses import __all__ as _loss_classes
from nnunet_losses.registry import available_losses, get_loss, loss_arguments

__version__ = "0.1.0"
__all__ = ["available_losses", "get_loss", "loss_arguments", "SegmentationLoss", "deep_supervision_loss",
           "nnunet_deep_supervision_weights", *_loss_classes]

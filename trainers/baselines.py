"""The volume-bias paper's LR / ConvNet / U-Net (Bertels, Robben et al. 2019) inside nnU-Net's pipeline.

``ArchitectureMixin`` swaps nnU-Net's network for :class:`~nnunet_losses.trainers.networks.BaselineNet` and its
SGD for the paper's Adam (lr 1e-3; LR model 1), and switches deep supervision off (the networks have a single
output). Everything else -- data loading, augmentation, patch size, validation, export, checkpoints, ``--val``,
``--c``, ``nnUNetv2_predict`` -- is nnU-Net's. Combine a mixin with any loss trainer::

    class nnUNetTrainer_UNet_Lovasz(UNetMixin, nnUNetTrainer_Lovasz): pass
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_losses.trainers.mixins import PaperAdamMixin
from nnunet_losses.trainers.networks import build_baseline


class ArchitectureMixin(PaperAdamMixin):
    """Base of :class:`LRMixin`, :class:`ConvNetMixin`, :class:`UNetMixin`: the network is ``architecture``."""
    architecture: str = "UNet"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # single-output networks: no down-sampled targets, no list outputs, plain loss
        self.enable_deep_supervision = False

    # nnU-Net 2.8 calls this as ``self.build_network_architecture(...)`` in training and as
    # ``trainer_class.build_network_architecture(..., enable_deep_supervision=False)`` in inference; a classmethod
    # with the same parameters (after cls) serves both and lets the class attribute pick the architecture.
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        dim = len(configuration_manager.patch_size)
        return build_baseline(cls.architecture, dim, num_input_channels, num_output_channels)


class LRMixin(ArchitectureMixin):
    """Per-voxel logistic regression on the input channels (a 1x1(x1) convolution), Adam lr 1."""
    architecture, paper_lr = "LR", 1.0


class ConvNetMixin(ArchitectureMixin):
    """The paper's U-Net without its two deepest levels, Adam lr 1e-3."""
    architecture, paper_lr = "ConvNet", 1e-3


class UNetMixin(ArchitectureMixin):
    """The paper's small U-Net (average pooling, linear up-sampling, no normalisation), Adam lr 1e-3."""
    architecture, paper_lr = "UNet", 1e-3


ARCHITECTURE_MIXINS = {"LR": LRMixin, "ConvNet": ConvNetMixin, "UNet": UNetMixin}

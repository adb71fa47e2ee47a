"""The three models of Bertels, Robben et al. 2019 ("Optimization with soft Dice can lead to a volumetric bias",
Sect. 3.1): LR, ConvNet and U-Net, in 2D or 3D.

U-Net: "three 3x3(x3) average pooling layers with corresponding linear up-sampling layers", no normalisation,
"two 3x3(x3) convolutional layers before and after the pooling and up-sampling layer, respectively, with
[[10, 20], [20, 10]], [[20, 40], [40, 20]], [[40, 80], [80, 40]] and [40, 20] filters":

====== =================== ===================================
level  encoder (before pool) decoder (after up-sampling + skip)
====== =================== ===================================
1      10, 20              20, 10
2      20, 40              40, 20
3      40, 80              80, 40
bottom 40, 20              --
====== =================== ===================================

ConvNet: the U-Net without its two deepest levels (level 3 and the bottom); level 2's four convolutions then
follow each other at the coarsest resolution. LR: logistic regression on the input channels, i.e. one 1x1(x1)
convolution (softmax or sigmoid applied by the loss / nnU-Net's inference).

Choices the paper leaves open, taken from No New-Net (its starting point, Isensee et al. 2018) and nnU-Net:
leaky ReLU (slope 1e-2) after every 3x3 convolution, skip connections by concatenation, pooling windows of 3 with
stride 2 (padding 1, so any patch size works), up-sampling by (bi/tri)linear interpolation to the skip's size,
He initialisation as nnU-Net. The final 1x1 convolution is called ``classifier`` (not nnU-Net's ``seg_layers``),
so nnU-Net's ``-pretrained_weights`` transfers the whole network, as the fine-tune protocol needs.

The networks have no deep supervision. They still have a ``decoder`` with a ``deep_supervision`` attribute, which
nnU-Net's ``set_deep_supervision_enabled`` sets and which is ignored: the output is always a single tensor.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: (encoder filters, decoder filters) per level, top first, and the bottom's filters (paper, Sect. 3.1)
UNET_LEVELS = (((10, 20), (20, 10)), ((20, 40), (40, 20)), ((40, 80), (80, 40)))
UNET_BOTTOM = (40, 20)
ARCHITECTURES = {
    # name: (levels with pooling, bottom filters)
    "UNet": (UNET_LEVELS, UNET_BOTTOM),
    "ConvNet": (UNET_LEVELS[:1], UNET_LEVELS[1][0] + UNET_LEVELS[1][1]),
    "LR": ((), ()),
}


def _conv(dim: int):
    return nn.Conv2d if dim == 2 else nn.Conv3d


class ConvBlock(nn.Sequential):
    """3x3(x3) convolutions with bias, each followed by a leaky ReLU; no normalisation."""

    def __init__(self, dim: int, in_channels: int, filters: Sequence[int]):
        layers = []
        for f in filters:
            layers += [_conv(dim)(in_channels, f, kernel_size=3, padding=1, bias=True),
                       nn.LeakyReLU(negative_slope=1e-2, inplace=True)]
            in_channels = f
        super().__init__(*layers)
        self.out_channels = in_channels


class AvgPoolDown(nn.Module):
    """3x3(x3) average pooling with stride 2 (padding 1, padded voxels not counted). An axis shorter than 3 voxels
    (thin patches deep in the network) is averaged over its whole length instead (length 1 is kept)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        kernel = [min(3, s) for s in sizes]
        stride = [2 if s > 1 else 1 for s in sizes]
        padding = [1 if k == 3 else 0 for k in kernel]
        pool = F.avg_pool2d if self.dim == 2 else F.avg_pool3d
        return pool(x, kernel, stride, padding, ceil_mode=False, count_include_pad=False)


class Encoder(nn.Module):
    def __init__(self, dim: int, in_channels: int, levels, bottom: Sequence[int]):
        super().__init__()
        self.dim = dim
        self.stages = nn.ModuleList()
        self.skip_channels: List[int] = []
        for enc_filters, _ in levels:
            block = ConvBlock(dim, in_channels, enc_filters)
            self.stages.append(block)
            self.skip_channels.append(block.out_channels)
            in_channels = block.out_channels
        self.bottom = ConvBlock(dim, in_channels, bottom)
        self.out_channels = self.bottom.out_channels
        self.pool = AvgPoolDown(dim) if levels else None

    def forward(self, x) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottom(x), skips


class Decoder(nn.Module):
    """Up-sampling path and the 1x1(x1) classifier. ``deep_supervision`` is accepted and ignored."""

    def __init__(self, dim: int, in_channels: int, levels, skip_channels: Sequence[int], num_classes: int):
        super().__init__()
        self.deep_supervision = False
        self.mode = "bilinear" if dim == 2 else "trilinear"
        self.stages = nn.ModuleList()
        for (_, dec_filters), skip in reversed(list(zip(levels, skip_channels))):
            block = ConvBlock(dim, in_channels + skip, dec_filters)
            self.stages.append(block)
            in_channels = block.out_channels
        self.classifier = _conv(dim)(in_channels, num_classes, kernel_size=1, bias=True)

    def forward(self, x, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        for stage, skip in zip(self.stages, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
            x = stage(torch.cat((x, skip), dim=1))
        return self.classifier(x)


class BaselineNet(nn.Module):
    """LR / ConvNet / U-Net of the volume-bias paper (see the module docstring)."""

    def __init__(self, architecture: str, dim: int, in_channels: int, num_classes: int):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        levels, bottom = ARCHITECTURES[architecture]
        self.architecture, self.dim = architecture, dim
        self.encoder = Encoder(dim, in_channels, levels, bottom)
        self.decoder = Decoder(dim, self.encoder.out_channels, levels, self.encoder.skip_channels, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(*self.encoder(x))


def _init_weights(module: nn.Module, neg_slope: float = 1e-2):
    """He initialisation as nnU-Net's ``InitWeights_He(1e-2)``."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_baseline(architecture: str, dim: int, in_channels: int, num_classes: int) -> BaselineNet:
    return BaselineNet(architecture, dim, in_channels, num_classes)

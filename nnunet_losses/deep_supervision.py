"""Deep supervision: one mechanism for every loss of the package.

nnU-Net's networks return a list of outputs (full resolution first) and its data loader a matching list of
down-sampled targets. nnU-Net wraps its loss in ``DeepSupervisionWrapper(loss, weights)``, which raises a
``TypeError`` with its default ``weight_factors=None``; here every :class:`~nnunet_losses.segmentation_loss.SegmentationLoss`
accepts a list directly, and ``None`` means nnU-Net's own weighting.

Soft targets: nnU-Net down-samples label maps by nearest neighbour in its transforms
(``DownsampleSegForDSTransform``) and hands the loss a list. A nearest-neighbour probability map would throw
away the averaging that makes it a probability, so a soft target may instead be passed *once*, at full
resolution, with the list of outputs: :func:`downsample_soft_target` averages it to each output's size. A list of
soft targets (down-sampled by the caller) is used as it is.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def nnunet_deep_supervision_weights(n_outputs: int, ddp: bool = False) -> tuple:
    """nnU-Net's weights (``nnUNetTrainer._build_loss``): ``1/2**i``, lowest resolution 0, normalised to sum 1.

    Under DDP nnU-Net gives the lowest resolution ``1e-6`` instead of 0 so that every parameter receives a
    gradient (DDP raises on unused parameters); ``ddp=True`` does the same.
    """
    if n_outputs < 1:
        raise ValueError(f"deep supervision needs at least one output, got {n_outputs}")
    weights = np.array([1 / (2 ** i) for i in range(n_outputs)])
    if n_outputs > 1:
        weights[-1] = 1e-6 if ddp else 0
    return tuple(float(w) for w in weights / weights.sum())


def deep_supervision_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Sequence[Tensor],
                          targets: Sequence[Tensor], weights: Optional[Sequence[float]] = None) -> Tensor:
    """``sum_i w_i * loss_fn(outputs[i], targets[i])``; outputs with weight 0 are not evaluated."""
    if not isinstance(targets, (list, tuple)) or len(targets) != len(outputs):
        raise ValueError(f"deep supervision: got {len(outputs)} network outputs but "
                         f"{len(targets) if isinstance(targets, (list, tuple)) else 'a single'} target(s); "
                         f"pass one target per output (nnU-Net's data loader does this when deep supervision is on)")
    if weights is None:
        weights = nnunet_deep_supervision_weights(len(outputs))
    if len(weights) < len(outputs):
        raise ValueError(f"deep supervision: {len(outputs)} outputs but only {len(weights)} weights {tuple(weights)}")
    if not any(w != 0 for w in weights[:len(outputs)]):
        raise ValueError("deep supervision: at least one weight must be non-zero")
    total = None
    for w, out, tgt in zip(weights, outputs, targets):
        if w != 0:
            term = w * loss_fn(out, tgt)
            total = term if total is None else total + term
    return total


def downsample_soft_target(target: Tensor, spatial_shape: Sequence[int], has_ignore_channel: bool) -> Tensor:
    """A soft target ``(B, K[+1], *spatial)`` averaged to ``spatial_shape`` (area interpolation = block means).

    Without an ignore channel every channel is averaged: probabilities stay probabilities (a coarse voxel's class
    probabilities are the mean over its fine voxels). With one (last channel, 1 = ignored) the classes are
    averaged over the *valid* fine voxels only and the ignore channel becomes the ignored fraction, so that the
    coarse voxel counts with the weight of its valid part (see :mod:`nnunet_losses.batch`).
    """
    if tuple(target.shape[2:]) == tuple(spatial_shape):
        return target
    size = tuple(int(s) for s in spatial_shape)
    if not has_ignore_channel:
        return F.interpolate(target, size=size, mode="area")
    valid = 1 - target[:, -1:]
    values = target[:, :-1].nan_to_num() * valid  # values under ignored voxels are not read
    valid_mean = F.interpolate(valid, size=size, mode="area")
    mean = F.interpolate(values, size=size, mode="area") / valid_mean.clamp_min(1e-12)
    return torch.cat([mean, 1 - valid_mean], 1)

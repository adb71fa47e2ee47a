"""Soft (probabilistic) training targets inside nnU-Net's training step, and boundary label smoothing.

nnU-Net's data loader hands the training step hard targets: a label map ``(B, 1, *spatial)`` (softmax training)
or binary region maps ``(B, R, *spatial)`` (sigmoid training), one per deep-supervision output, down-sampled by
nearest neighbour. :class:`SoftTargetMixin` lets a trainer turn that into a *soft* target -- ``(B, C, *spatial)``
class probabilities summing to 1 per voxel, or region probabilities ``(B, R, *spatial)`` in [0, 1] -- which the
losses of :mod:`nnunet_losses` accept next to label maps. The soft target is built once at full resolution and
down-sampled to every deep-supervision output by *averaging* (:func:`like_target`), so a coarse voxel
gets the mean probability of the fine voxels it covers instead of the label of one of them.

:class:`BoundarySmoothingMixin` is the first use: label smoothing only in a band around the boundaries of the
hard label (Wang, Popordanoska, Bertels, Lemmens, Blaschko 2023, reference code ``zifuwanggg/JDTLosses``,
``train_soft_label.py``: ``epsilon`` 0.5 in the band found by a 3-voxel pooling of the one-hot label).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_losses.deep_supervision import downsample_soft_target
from nnunet_losses.segmentation_loss import check_range

Target = Union[Tensor, List[Tensor]]


# ------------------------------------------------------------------------------------------------ formulas
def onehot_labels(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 1, *spatial)`` label map -> ``(B, C, *spatial)`` one-hot: ``y_c(v) = [label(v) == c]``."""
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise ValueError(f"expected a label map (B, 1, *spatial), got shape {tuple(labels.shape)}")
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, *([1] * (labels.ndim - 2)))
    return (labels.long() == classes).to(dtype)


def _pool(x: Tensor, kernel: int) -> Tensor:
    """Max over the ``kernel``-voxel neighbourhood (stride 1, same size); padded voxels never win."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, kernel_size=kernel, stride=1, padding=kernel // 2)


def boundary_band(onehot: Tensor, band_width: int = 3) -> Tensor:
    """Voxels whose ``band_width``-voxel neighbourhood (a cube) holds more than one value of a channel.

    Per channel: ``dilate(y) != erode(y)`` with ``dilate`` = max-pool, ``erode`` = min-pool over the neighbourhood
    (JDTLosses' ``get_label_boundary``: the one-hot label differs from its min-pool). For a one-hot label map
    this is "the neighbourhood is not a single class" in every channel the voxel borders; for region maps each
    region has its own band. The image border does not count as a boundary. Returns a bool tensor of the
    input's shape.
    """
    if int(band_width) != band_width or band_width < 3 or band_width % 2 == 0:
        raise ValueError(f"band_width must be an odd integer >= 3 (the neighbourhood in voxels), got {band_width!r}")
    x = onehot.float()
    return _pool(x, band_width) != -_pool(-x, band_width)


def smooth_in_band(onehot: Tensor, band: Tensor, epsilon: float, n_classes: int) -> Tensor:
    """Label smoothing where ``band`` is set: ``y' = (1 - eps) y + eps / n`` (``n`` classes; 2 for a region,
    which is a two-class problem of its own), ``y' = y`` elsewhere."""
    smoothed = onehot * (1.0 - epsilon) + epsilon / n_classes
    return torch.where(band, smoothed, onehot)


def ignore_mask(target: Tensor, ignore_label: Optional[int], region_based: bool) -> Optional[Tensor]:
    """nnU-Net's ignored voxels as a float ``(B, 1, ...)`` mask (1 = ignored): the label map's ``ignore_label``
    voxels, or for regions the ignore channel nnU-Net appends as the last target channel; ``None`` without one."""
    if ignore_label is None:
        return None
    return target[:, -1:].float() if region_based else (target == ignore_label).float()


def boundary_smoothed_target(target: Tensor, num_classes: int, region_based: bool, epsilon: float = 0.5,
                             band_width: int = 3, ignore_label: Optional[int] = None) -> Tensor:
    """Soft target from a hard one: label smoothing with ``epsilon`` in the boundary band (see
    :func:`boundary_band`, :func:`smooth_in_band`). Labels ``(B, 1, ...)`` -> ``(B, C, ...)`` summing to 1;
    regions ``(B, R, ...)`` -> ``(B, R, ...)`` in [0, 1], every region smoothed in its own band.

    With an ignore label the result gets the loss core's ignore channel as last channel (``(B, C + 1, ...)`` /
    ``(B, R + 1, ...)``, 1 = ignored), and, as in JDTLosses, no voxel within the band width of an ignored voxel
    is smoothed (the border to "unknown" is not a class boundary).
    """
    ignored = ignore_mask(target, ignore_label, region_based)
    if region_based:
        onehot = (target[:, :-1] if ignored is not None else target).float()
        band = boundary_band(onehot, band_width)
        n_classes = 2
    else:
        labels = target if ignored is None else torch.where(ignored.bool(), 0, target)
        onehot = onehot_labels(labels, num_classes)  # ignored voxels as class 0: never read, no band near them
        band = boundary_band(onehot, band_width).any(1, keepdim=True)
        n_classes = num_classes
    if ignored is None:
        return smooth_in_band(onehot, band, epsilon, n_classes)
    band = band & (_pool(ignored, band_width) == 0)
    return torch.cat([smooth_in_band(onehot, band, epsilon, n_classes), ignored], 1)


# ------------------------------------------------------------------------------------------------ trainer
def to_device(target: Target, device: torch.device) -> Target:
    if isinstance(target, (list, tuple)):
        return [t.to(device, non_blocking=True) for t in target]
    return target.to(device, non_blocking=True)


def full_resolution(target: Target) -> Tensor:
    return target[0] if isinstance(target, (list, tuple)) else target


def like_target(soft_full: Tensor, target: Target, has_ignore_channel: bool = False) -> Target:
    """``soft_full`` in the structure of nnU-Net's ``target``: a list averaged onto every deep-supervision shape
    (the loss core's :func:`~nnunet_losses.deep_supervision.downsample_soft_target`: block means, over the valid
    voxels when the last channel is the ignore channel), or the tensor."""
    if isinstance(target, (list, tuple)):
        return [downsample_soft_target(soft_full, t.shape[2:], has_ignore_channel) for t in target]
    return soft_full


class SoftTargetMixin:
    """nnU-Net's ``train_step`` with a hook for the target: :meth:`training_target` turns the data loader's
    (hard) target into what the loss is given; :meth:`training_loss` computes the loss (override it for more
    than one term, e.g. distillation). ``target_kind`` names the target in the training log.

    Put it before the loss trainer: ``class X(BoundarySmoothingMixin, nnUNetTrainer_SoftDice): pass``.
    Datasets a subclass cannot handle are refused by :meth:`check_dataset` with a one-line error at
    ``initialize``; ``supports_ignore_label`` says whether it builds the loss core's ignore channel.
    """
    #: shown in the training log next to the loss
    target_kind: str = "hard labels"
    supports_ignore_label: bool = False

    def check_dataset(self) -> None:
        """Raise a one-line ``ValueError`` if this trainer cannot train on the dataset."""
        if self.label_manager.has_ignore_label and not self.supports_ignore_label:
            raise ValueError(f"{type(self).__name__}: soft targets with an ignore label are not supported; "
                             f"use a trainer without soft targets for this dataset")

    def initialize(self):
        self.check_dataset()
        super().initialize()
        self.print_to_log_file(f"nnunet-losses: training target: {self.target_kind} (loss {self.loss_name!r})")

    def num_target_classes(self) -> int:
        return int(self.label_manager.num_segmentation_heads)

    def training_target(self, data: Tensor, target: Target) -> Target:
        return target

    def training_loss(self, data: Tensor, output, target: Target) -> Tensor:
        return self.loss(output, self.training_target(data, target))

    def validation_target(self, target: Target) -> Target:
        """Target of nnU-Net's validation step (loss and pseudo Dice): nnU-Net's hard target by default."""
        return target

    def validation_step(self, batch: dict) -> dict:
        return super().validation_step({**batch, "target": self.validation_target(batch["target"])})

    def train_step(self, batch: dict) -> dict:
        # nnU-Net 2.8's nnUNetTrainer.train_step with the loss call replaced by training_loss (keep in sync)
        from torch import autocast
        from nnunetv2.utilities.helpers import dummy_context

        data = batch["data"].to(self.device, non_blocking=True)
        target = to_device(batch["target"], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.training_loss(data, output, target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}


class BoundarySmoothingMixin(SoftTargetMixin):
    """Boundary label smoothing computed from the hard label in every training step, for any loss:
    ``y' = (1 - smoothing_epsilon) y + smoothing_epsilon / C`` in the band of voxels whose
    ``smoothing_band_width``-voxel neighbourhood holds more than one class (regions: per region, ``C = 2``);
    hard labels elsewhere. Defaults are JDTLosses' (epsilon 0.5, 3-voxel band). Validation uses the hard label.
    With an ignore label, voxels within the band width of an ignored voxel are not smoothed and the ignore channel
    goes to the loss (see :func:`boundary_smoothed_target`).

    Options as class attributes (a subclass of three lines)::

        class nnUNetTrainer_BoundarySmoothing_SoftDice_e0p2(nnUNetTrainer_BoundarySmoothing_SoftDice):
            smoothing_epsilon = 0.2
    """
    smoothing_epsilon: float = 0.5
    smoothing_band_width: int = 3
    supports_ignore_label = True

    @property
    def target_kind(self) -> str:
        return (f"boundary label smoothing (epsilon {self.smoothing_epsilon:g} in a {self.smoothing_band_width}-voxel "
                f"band of the hard label)")

    def check_dataset(self) -> None:
        super().check_dataset()
        check_range("smoothing_epsilon", self.smoothing_epsilon, 0.0, 1.0)
        boundary_band(torch.zeros(1, 1, 1, 1), self.smoothing_band_width)  # validates the band width

    def training_target(self, data: Tensor, target: Target) -> Target:
        ignore_label = self.label_manager.ignore_label
        soft = boundary_smoothed_target(full_resolution(target), self.num_target_classes(),
                                        bool(self.label_manager.has_regions), self.smoothing_epsilon,
                                        self.smoothing_band_width, ignore_label)
        return like_target(soft, target, ignore_label is not None)

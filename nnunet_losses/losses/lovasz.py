"""Lovász losses (Berman et al. 2018): Lovász-softmax for label training, Lovász-hinge for regions."""
from __future__ import annotations

import torch
from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses.segmentation_loss import SegmentationLoss, check_bool
from nnunet_losses.batch import PreparedBatch


class LovaszLoss(SegmentationLoss):
    r"""Lovász extension of the Jaccard loss, :math:`\bar\Delta_J(m) = \sum_k m_{\pi(k)} g_k(\pi)`.

    * softmax (labels): Lovász-softmax, errors :math:`m_i = |y_{i,c} - p_{i,c}|` per class; with
      ``only_present`` (Berman's ``classes='present'``) classes absent from the image (or batch) are skipped;
    * sigmoid (regions): Lovász-hinge on the logits, errors :math:`m_i = \max(0, 1 - x_i s_i)`, ``s = 2y - 1``,
      per region.

    ``batch_dice=False`` is Berman's ``per_image=True`` (one extension per sample, averaged); ``batch_dice=True``
    sorts all voxels of the batch together (all ranks' voxels with ``ddp=True``). ``do_bg`` (softmax only)
    includes the background class. A perfect prediction gives exactly 0.

    Equal errors are taken in voxel order (a stable sort, :func:`~nnunet_losses.functional.sort_order_descending`):
    the value does not depend on how ties are ordered, the (sub)gradient does, and this makes it deterministic
    and the same on every device and path.

    Soft targets: the foreground indicator in Berman's cumulative counts is replaced by the soft ``y`` (fractional
    intersection and union counts; the hinge's sign ``2y - 1`` becomes fractional). This is an extension, not
    Berman et al.'s loss, and it is not minimised at ``p = y`` (README loss table; tests/test_proper_scoring.py).
    """

    def __init__(self, *, batch_dice: bool = False, do_bg: bool = False, only_present: bool = True,
                 ddp: bool = False, **shared):
        super().__init__(**shared)
        self.batch_dice = check_bool("batch_dice", batch_dice)
        self.do_bg = check_bool("do_bg", do_bg)
        self.only_present = check_bool("only_present", only_present)
        self.ddp = check_bool("ddp", ddp)

    def compute(self, batch: PreparedBatch) -> Tensor:
        c0 = batch.first_channel(self.do_bg)
        fg = batch.onehot
        # the error maps' inputs, every channel (lovasz_extension skips those before c0, and applies the map inside
        # its one pass on CPU); with a mask the map's input is masked first, so the map comes after it
        if batch.region_based:  # relu(1 - x s), s = 2y - 1, from the logits
            values, error_map = ((batch.logits, "hinge") if batch.mask is None
                                 else (Fn.hinge_margin(batch.logits, fg), "relu"))
        else:  # |y - p| = |p - y|
            values, error_map = (batch.probs, "abs_diff") if batch.mask is None else (batch.probs - fg, "abs")
        if batch.mask is not None:  # ignored voxels: error 0 and no foreground -> sorted last, contribute nothing
            values = values * batch.mask  # map(v) * mask = map(v * mask) exactly for both maps, as mask >= 0
            fg = fg * batch.mask
        n_samples, n_channels = values.shape[:2]
        values = values.reshape(n_samples, n_channels, -1)
        fg = fg.reshape(n_samples, n_channels, -1)
        if self.batch_dice:
            if self.ddp:
                from nnunetv2.utilities.ddp_allgather import AllGatherGrad
                values = AllGatherGrad.apply(values).flatten(0, 1)
                fg = AllGatherGrad.apply(fg).flatten(0, 1)
            # one row per channel holding every voxel of the batch
            values = values.transpose(0, 1).reshape(n_channels, -1)
            fg = fg.transpose(0, 1).reshape(n_channels, -1)
            losses = Fn.lovasz_extension(values, fg, error_map, c0).view(1, n_channels - c0)
        else:
            losses = Fn.lovasz_extension(values, fg, error_map, c0)  # (B, C - c0)
        if batch.region_based or not self.only_present:
            return losses.mean()
        # mean over present classes per image (0 for an image without any), then over images -- as Berman et al.
        present = (fg[..., c0:, :].sum(-1) > 0).view(losses.shape).to(losses.dtype)
        per_image = (losses * present).sum(1) / present.sum(1).clamp_min(1)
        return per_image.mean()

"""Turning nnU-Net's (network output, target) pair into what the loss formulas need.

nnU-Net trains in one of two modes, and every loss of this package accepts both:

* **label (softmax) training**: logits ``(B, C, *spatial)`` with ``C >= 2`` (background first) and a label map
  ``(B, 1, *spatial)`` of class indices; the ignore label, if any, is a value of that map.
* **region (sigmoid) training** (``region_based=True``): logits ``(B, R, *spatial)``, one per region, and binary
  region maps ``(B, R, *spatial)``; with an ignore label nnU-Net appends the ignore mask as channel ``R``
  (``(B, R + 1, *spatial)``, 1 = ignored), exactly as its ``DC_and_BCE_loss`` expects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_losses import functional as Fn


@dataclass
class PreparedBatch:
    """Logits, one-hot target and validity mask of one (output, target) pair, in the compute dtype.

    The compute dtype is float32 (float64 if the logits are float64): half-precision logits are upcast once
    here, so that no sum in any loss overflows under autocast. Nonlinearities are computed lazily and cached, so
    compound losses share one softmax.

    ``hard`` is True when ``onehot`` and ``mask`` are known to hold only 0 and 1 (label maps; bool region maps as
    nnU-Net's data loader produces them), which lets :func:`~nnunet_losses.functional.overlap_stats` take its
    fused path; float region maps might be soft and keep the generic one.
    """
    logits: Tensor
    onehot: Tensor
    mask: Optional[Tensor]
    region_based: bool
    hard: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def probs(self) -> Tensor:
        return self._cached("p", lambda: torch.sigmoid(self.logits) if self.region_based
                            else torch.softmax(self.logits, 1))

    @property
    def log_probs(self) -> Tensor:
        return self._cached("logp", lambda: F.logsigmoid(self.logits) if self.region_based
                            else torch.log_softmax(self.logits, 1))

    @property
    def log_one_minus_probs(self) -> Tensor:
        return self._cached("log1mp", lambda: F.logsigmoid(-self.logits) if self.region_based
                            else Fn.log_one_minus_softmax(self.logits))

    def first_channel(self, do_bg: bool) -> int:
        """Index of the first channel an overlap term looks at: region maps have no background channel."""
        return 0 if (do_bg or self.region_based) else 1


def prepare_batch(logits: Tensor, target: Tensor, region_based: bool, ignore_label: Optional[int]) -> PreparedBatch:
    """Validate nnU-Net's (logits, target) pair and build the one-hot target and the ignore mask."""
    if not isinstance(logits, Tensor) or logits.ndim not in (4, 5):
        raise ValueError(f"expected network output of shape (B, C, X, Y) or (B, C, X, Y, Z), got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise ValueError(f"expected the target as a torch.Tensor, got {type(target).__name__}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dtype)
    if target.ndim == x.ndim - 1:  # (B, X, Y[, Z]) label map without channel axis
        target = target.unsqueeze(1)
    if target.ndim != x.ndim or target.shape[0] != x.shape[0] or target.shape[2:] != x.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match network output {tuple(x.shape)}: "
                         f"expected (B, 1, *spatial) labels or (B, R[+1], *spatial) regions with the same B and "
                         f"spatial size")
    if region_based:
        n_channels = x.shape[1] + (1 if ignore_label is not None else 0)
        if target.shape[1] != n_channels:
            extra = " plus the ignore mask as last channel (nnU-Net's convention)" if ignore_label is not None else ""
            raise ValueError(f"region-based target must have {n_channels} channels (one per region{extra}), got "
                             f"{target.shape[1]}; for a label map (B, 1, ...) use region_based=False")
        mask = None
        if ignore_label is not None:
            mask = 1 - target[:, -1:].to(dtype)
            target = target[:, :-1]
        return PreparedBatch(x, target.to(dtype), mask, True, hard=target.dtype == torch.bool)

    if x.shape[1] < 2:
        raise ValueError(f"label (softmax) training needs at least 2 output channels (background first), got "
                         f"{x.shape[1]}; for a single sigmoid output pass region_based=True")
    if target.shape[1] != 1:
        raise ValueError(f"label target must be a label map of shape (B, 1, *spatial), got {tuple(target.shape)}; "
                         f"for binary region maps pass region_based=True")
    n_classes = x.shape[1]
    # An integer label map (nnU-Net's loader gives int16) is used as it is, without an int64 copy, when every
    # class index fits its dtype; float maps are truncated by .long() as before, and so is any map with an
    # ignore label (which need not fit the narrow dtype).
    narrow = (ignore_label is None and target.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32)
              and n_classes - 1 <= torch.iinfo(target.dtype).max)
    labels = target if narrow else target.long()
    mask = None
    if ignore_label is not None:
        valid = labels != ignore_label
        mask = valid.to(dtype)
        labels = torch.where(valid, labels, 0)
    lo, hi = torch.aminmax(labels)
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"target contains label {int(hi) if hi >= n_classes else int(lo)} but the network has "
                         f"{n_classes} output channels (labels 0..{n_classes - 1}"
                         f"{'' if ignore_label is None else f', ignore label {ignore_label}'}); "
                         f"check dataset.json 'labels' and the loss's ignore_label")
    # one-hot as labels == class index, written straight into the compute dtype: one kernel, no zero fill, the
    # same 0/1 values as zeros().scatter_(1, labels, 1)
    classes = torch.arange(n_classes, dtype=labels.dtype, device=labels.device).view(1, -1, *([1] * (x.ndim - 2)))
    onehot = torch.empty_like(x)
    torch.eq(labels, classes, out=onehot)
    return PreparedBatch(x, onehot, mask, False, hard=True)

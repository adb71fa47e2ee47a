"""Turning nnU-Net's (network output, target) pair into what the loss formulas need.

nnU-Net trains in one of two modes, and every loss of this package accepts both:

* **label (softmax) training**: logits ``(B, C, *spatial)`` with ``C >= 2`` (background first) and a label map
  ``(B, 1, *spatial)`` of class indices; the ignore label, if any, is a value of that map.
* **region (sigmoid) training** (``region_based=True``): logits ``(B, R, *spatial)``, one per region, and binary
  region maps ``(B, R, *spatial)``; with an ignore label nnU-Net appends the ignore mask as channel ``R``
  (``(B, R + 1, *spatial)``, 1 = ignored), exactly as its ``DC_and_BCE_loss`` expects.

Next to these hard targets every loss takes **soft (probabilistic) targets**:

* label mode: a probability map ``(B, C, *spatial)`` of floats in [0, 1] summing to 1 over the C classes at every
  voxel (a label map always has one channel, so the channel count tells the two apart);
* region mode: float region maps ``(B, R, *spatial)`` with values in [0, 1].

Ignored voxels of a soft target are marked as nnU-Net marks them for regions: one extra last channel, 1 = ignored
(``(B, C + 1, ...)`` / ``(B, R + 1, ...)``); the target values under ignored voxels are not read. A fractional
value of that channel (from averaging when a target is down-sampled for deep supervision) is the voxel's ignored
fraction: the voxel counts with weight ``1 - value``.

A float target is never rounded: a one-channel float label map must hold whole class indices, anything else that is
not a valid probability map is a one-line error.
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

    ``dense_target`` is the ``(B, K, *spatial)`` target (one-hot, class probabilities or region maps). For a label
    map it is None until :attr:`onehot` is first read, which builds it from ``labels`` (the validated label map,
    ignored voxels set to 0): CE, weighted CE and Focal read one class at a time and never build it.
    """
    logits: Tensor
    dense_target: Optional[Tensor]
    mask: Optional[Tensor]
    region_based: bool
    hard: bool = False
    labels: Optional[Tensor] = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def onehot(self) -> Tensor:
        """The target ``(B, K, *spatial)`` in the compute dtype (a label map's one-hot is built on first use)."""
        if self.dense_target is None:
            self.dense_target = label_onehot(self.labels, self.logits)
        return self.dense_target

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
    """Validate nnU-Net's (logits, target) pair and build the one-hot (or soft) target and the ignore mask."""
    x = _compute_logits(logits)
    if not isinstance(target, Tensor):
        raise ValueError(f"expected the target as a torch.Tensor, got {type(target).__name__}")
    if target.ndim == x.ndim - 1:  # (B, X, Y[, Z]) label map without channel axis
        target = target.unsqueeze(1)
    if target.ndim != x.ndim or target.shape[0] != x.shape[0] or target.shape[2:] != x.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match network output {tuple(x.shape)}: "
                         f"expected (B, 1, *spatial) labels, (B, C[+1], *spatial) class probabilities or "
                         f"(B, R[+1], *spatial) regions with the same B and spatial size")
    if region_based:
        return _region_batch(x, target, ignore_label)
    if x.shape[1] < 2:
        raise ValueError(f"label (softmax) training needs at least 2 output channels (background first), got "
                         f"{x.shape[1]}; for a single sigmoid output pass region_based=True")
    if ignore_label is not None and 0 <= ignore_label < x.shape[1]:
        raise ValueError(f"ignore_label {ignore_label} is one of the network's {x.shape[1]} classes (0.."
                         f"{x.shape[1] - 1}); nnU-Net's ignore label is a label value above every class (dataset.json "
                         f"'labels': 'ignore' gets the highest value)")
    if target.shape[1] == 1:
        return _label_map_batch(x, target, ignore_label)
    return _probability_batch(x, target, ignore_label)


def _compute_logits(logits: Tensor) -> Tensor:
    """The logits in the compute dtype; ``-inf`` (a masked-out class) becomes the lowest finite value.

    ``-inf`` logits are legitimate (``torch.nn.functional.cross_entropy`` gives the finite answer: that class has
    probability 0), but ``0 * log(0)`` in a one-hot product is NaN. The lowest finite float gives the same
    probabilities and a zero gradient there. The check is a read-only pass; the copy is made only when needed.
    """
    if not isinstance(logits, Tensor) or logits.ndim not in (4, 5):
        raise ValueError(f"expected network output of shape (B, C, X, Y) or (B, C, X, Y, Z), got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    if logits.numel() == 0:
        raise ValueError(f"empty batch: the network output {tuple(logits.shape)} has no voxels (batch size, channel "
                         f"count and every spatial size must be at least 1)")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(dtype)
    # amin is one reduction (~7x cheaper than isneginf(x).any(), which writes a bool map); a NaN anywhere makes the
    # minimum NaN and skips the clamp, which changes nothing: the loss is NaN through that NaN anyway
    if bool(x.amin() == float("-inf")):
        x = x.clamp_min(torch.finfo(dtype).min)
    return x


def _region_batch(x: Tensor, target: Tensor, ignore_label: Optional[int]) -> PreparedBatch:
    """Region (sigmoid) mode: maps ``(B, R, ...)`` in [0, 1], plus the ignore channel when there is an ignore label."""
    n_channels = x.shape[1] + (1 if ignore_label is not None else 0)
    if target.shape[1] != n_channels:
        extra = " plus the ignore mask as last channel (nnU-Net's convention)" if ignore_label is not None else ""
        raise ValueError(f"region-based target must have {n_channels} channels (one per region{extra}), got "
                         f"{target.shape[1]}; for a label map (B, 1, ...) use region_based=False")
    mask = None
    if ignore_label is not None:
        mask = _valid_weight(target[:, -1:], x.dtype)
        target = target[:, :-1]
    hard = target.dtype == torch.bool  # bool maps (nnU-Net's loader) are 0/1 by type; anything else is checked
    if not hard:
        _check_unit_interval(target, mask, "region target")
    target = _as_float(target, x.dtype)
    if mask is not None and not hard:  # values under ignored voxels are not read (they may be anything, even NaN)
        target = torch.where(mask > 0, target, 0)
    return PreparedBatch(x, target, mask, True, hard=hard)


def _label_map_batch(x: Tensor, target: Tensor, ignore_label: Optional[int]) -> PreparedBatch:
    """Label (softmax) mode with nnU-Net's label map ``(B, 1, ...)`` of class indices."""
    n_classes = x.shape[1]
    if target.is_floating_point() and bool((target != torch.round(target)).any()):
        raise ValueError(f"float label map with fractional values (e.g. {_first_fractional(target)}): a (B, 1, ...) "
                         f"target must hold class indices; for soft targets pass class probabilities "
                         f"(B, {n_classes}{'' if ignore_label is None else ' + 1 ignore channel'}, ...)")
    # An integer label map (nnU-Net's loader gives int16) is used as it is, without an int64 copy, when every
    # class index fits its dtype; other maps (and any map with an ignore label, which need not fit the narrow
    # dtype) are converted -- float maps are whole numbers here, so .long() is exact.
    narrow = (ignore_label is None and target.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32)
              and n_classes - 1 <= torch.iinfo(target.dtype).max)
    labels = target if narrow else target.long()
    mask = None
    if ignore_label is not None:
        valid = labels != ignore_label
        mask = valid.to(x.dtype)
        labels = torch.where(valid, labels, 0)
    lo, hi = torch.aminmax(labels)
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"target contains label {int(hi) if hi >= n_classes else int(lo)} but the network has "
                         f"{n_classes} output channels (labels 0..{n_classes - 1}"
                         f"{'' if ignore_label is None else f', ignore label {ignore_label}'}); "
                         f"check dataset.json 'labels' and the loss's ignore_label")
    return PreparedBatch(x, None, mask, False, hard=True, labels=labels)


def label_onehot(labels: Tensor, logits: Tensor) -> Tensor:
    """One-hot of a label map ``(B, 1, ...)`` in the logits' dtype and shape.

    ``labels == class index``, written straight into the compute dtype: one kernel, no zero fill, the same 0/1
    values as ``zeros().scatter_(1, labels, 1)``.
    """
    classes = torch.arange(logits.shape[1], dtype=labels.dtype, device=labels.device)
    onehot = torch.empty_like(logits)
    torch.eq(labels, classes.view(1, -1, *([1] * (logits.ndim - 2))), out=onehot)
    return onehot


def _probability_batch(x: Tensor, target: Tensor, ignore_label: Optional[int]) -> PreparedBatch:
    """Label (softmax) mode with a soft target: class probabilities ``(B, C[+1 ignore channel], ...)``."""
    n_classes = x.shape[1]
    expected = n_classes + (1 if ignore_label is not None else 0)
    if target.shape[1] != expected or not target.is_floating_point():
        extra = " plus the ignore mask as last channel" if ignore_label is not None else ""
        raise ValueError(f"label target must be a label map (B, 1, ...) or float class probabilities (B, {expected}, "
                         f"...: one channel per class{extra}), got {target.dtype} of shape {tuple(target.shape)}; "
                         f"for region maps pass region_based=True")
    mask = None
    if ignore_label is not None:
        mask = _valid_weight(target[:, -1:], x.dtype)
        target = target[:, :-1]
    probs = target.to(x.dtype)
    if mask is not None:  # values under ignored voxels are not read (they may be anything, even NaN)
        probs = torch.where(mask > 0, probs, 0)
    _check_unit_interval(probs, mask, "class probability target")
    tol = 1e-3 if target.dtype in (torch.float32, torch.float64) else 1e-2
    error = (probs.sum(1, keepdim=True) - 1).abs()
    if mask is not None:
        error = error * (mask > 0)
    worst = float(error.max())
    if not worst <= tol:
        raise ValueError(f"class probability target must sum to 1 over its {n_classes} class channels at every "
                         f"(non-ignored) voxel; the largest deviation is {worst:.3g}")
    return PreparedBatch(x, probs, mask, False, hard=False)


def _valid_weight(ignore_channel: Tensor, dtype: torch.dtype) -> Tensor:
    """Weight ``1 - ignored`` of every voxel from the ignore channel (values in [0, 1]; 1 = ignored)."""
    if ignore_channel.dtype != torch.bool:
        _check_unit_interval(ignore_channel, None, "ignore channel (last target channel)")
    return 1 - _as_float(ignore_channel, dtype)


def _as_float(values: Tensor, dtype: torch.dtype) -> Tensor:
    """``values.to(dtype)``; a bool map is converted through its uint8 view (the same 0/1 values: torch stores
    a bool as one byte holding 0 or 1), because torch's bool->float copy is ~6x slower than uint8->float on CPU."""
    return (values.view(torch.uint8) if values.dtype == torch.bool else values).to(dtype)


def _check_unit_interval(values: Tensor, mask: Optional[Tensor], what: str) -> None:
    """One-line error unless every (non-ignored) value lies in [0, 1] (NaN fails too)."""
    if mask is not None:
        values = torch.where(mask > 0, values.to(mask.dtype), 0.5)
    lo, hi = torch.aminmax(values.detach())
    if not (0 <= float(lo) and float(hi) <= 1):
        bad = float(lo) if not 0 <= float(lo) else float(hi)
        raise ValueError(f"{what} values must lie in [0, 1] (binary maps or probabilities), got {bad:g}")


def _first_fractional(target: Tensor) -> float:
    return float(target[target != torch.round(target)].flatten()[0])

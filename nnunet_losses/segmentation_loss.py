"""Base class shared by every loss: input handling, deep supervision and argument validation."""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Optional, Sequence

from torch import Tensor, nn

from nnunet_losses.deep_supervision import deep_supervision_loss, downsample_soft_target
from nnunet_losses.batch import PreparedBatch, prepare_batch


def check_range(name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False):
    """Raise a one-line ``ValueError`` unless ``low <= value <= high`` (open ends where requested)."""
    # finite only: inf passes an open-ended range like [0, inf] but makes the losses NaN (smooth=inf: inf/inf)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or math.isinf(high) else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_deep_supervision_weights(weights) -> Optional[tuple]:
    """``None`` (nnU-Net's weighting) or a tuple of finite, non-negative floats of which at least one is positive."""
    if weights is None:
        return None
    values = tuple(weights) if hasattr(weights, "__iter__") and not isinstance(weights, (str, bytes)) else None
    if not values or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
                             for w in values) or not any(w > 0 for w in values):
        raise ValueError(f"deep_supervision_weights must be finite numbers >= 0, at least one of them > 0 (one per "
                         f"network output; None = nnU-Net's 1/2**i weighting), got {weights!r}")
    return tuple(float(w) for w in values)


class SegmentationLoss(nn.Module):
    """A loss called as ``loss(logits, target)`` on nnU-Net's network output and target.

    Subclasses implement :meth:`compute` on a :class:`~nnunet_losses.batch.PreparedBatch`. This class handles
    what is common to all of them:

    * ``region_based``: ``False`` = softmax over label maps, ``True`` = sigmoid over region maps (nnU-Net's
      ``label_manager.has_regions``);
    * ``ignore_label``: voxels with this label (or, for regions, flagged in the extra last target channel)
      contribute nothing;
    * deep supervision: if ``logits`` and ``target`` are lists (nnU-Net's deep supervision outputs), the result
      is ``sum_i w_i loss(logits[i], target[i])`` with ``deep_supervision_weights`` (``None`` = nnU-Net's
      ``1/2**i`` weighting with the lowest resolution off). A soft target may be one full-resolution tensor: it
      is averaged to every output's size (:func:`~nnunet_losses.deep_supervision.downsample_soft_target`);
    * soft targets (class probabilities, float region maps): see :mod:`nnunet_losses.batch`.

    Every constructor argument is keyword-only. A subclass names its own arguments and passes the rest on as
    ``**shared``; :func:`constructor_signature` (``help(cls)``, ``inspect.signature(cls)``) show the whole chain.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = constructor_signature(cls)

    def __init__(self, *, region_based: bool = False, ignore_label: Optional[int] = None,
                 deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.region_based = check_bool("region_based", region_based)
        if ignore_label is not None and (isinstance(ignore_label, bool) or not isinstance(ignore_label, int)):
            raise ValueError(f"ignore_label must be an int label value or None, got {ignore_label!r}")
        self.ignore_label = ignore_label
        self.deep_supervision_weights = check_deep_supervision_weights(deep_supervision_weights)

    def forward(self, logits, target) -> Tensor:
        if isinstance(logits, (list, tuple)):
            if isinstance(target, Tensor) and self._is_soft(target):  # one full-resolution soft target: averaged
                target = [downsample_soft_target(target, out.shape[2:], self.ignore_label is not None)
                          for out in logits]
            return deep_supervision_loss(self._single, logits, target, self.deep_supervision_weights)
        return self._single(logits, target)

    def _is_soft(self, target: Tensor) -> bool:
        """A float target that is not a one-channel label map: probabilities (labels) or float region maps."""
        return target.is_floating_point() and (self.region_based or target.ndim < 2 or target.shape[1] > 1)

    def _single(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.compute(prepare_batch(logits, target, self.region_based, self.ignore_label))

    def compute(self, batch: PreparedBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        # every public attribute is a constructor argument of the same name and value (a test checks this), so
        # the repr -- which the trainers write to nnU-Net's training log -- reads as the call that builds the loss
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                         if not k.startswith("_") and not isinstance(v, nn.Module) and k != "training")


def constructor_signature(cls: type) -> inspect.Signature:
    """The keyword arguments of ``cls(...)``: its own ``__init__``'s, then (while an ``__init__`` forwards
    ``**shared``) its bases', down to :class:`SegmentationLoss`'s shared ones. Each name appears once."""
    params = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        forwards = False
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            else:
                params.setdefault(p.name, p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        if not forwards:
            break
    return inspect.Signature(list(params.values()))

"""The checks every probability array passes before it is used (evaluate and threshold alike).

* range: every value in ``[0, 1]`` up to :func:`sum_tolerance` (float rounding of nnU-Net's own files); values
  within the tolerance are clipped by the caller, NaN or anything further out is an error;
* softmax (label models): the channels of every voxel sum to 1 up to the same tolerance -- a region (sigmoid)
  file or a wrong dataset.json fails here instead of giving plausible-looking numbers.
"""
from __future__ import annotations

import math

import numpy as np

from nnunet_losses.evaluation.errors import EvaluationError

REGENERATE = "regenerate the file (nnUNetv2_train ... --val --npz or nnUNetv2_predict --save_probabilities)"


def sum_tolerance(dtype, n_channels: int) -> float:
    """How far a voxel's softmax may sum from 1 (float16 rounding of nnU-Net v1 files included); also how far a
    value may lie outside [0, 1]."""
    if np.dtype(dtype) == np.float16:
        return 1e-3 + n_channels * 2.0 ** -11
    return 1e-3


def check_range(p: np.ndarray, name: str, tol: float) -> bool:
    """Raise unless ``-tol <= p <= 1 + tol`` everywhere (NaN included); True when some value needs clipping."""
    if p.size == 0:
        return False
    lo, hi = float(p.min()), float(p.max())
    if not (lo >= -tol and hi <= 1.0 + tol):  # also catches NaN
        what = "NaN" if (math.isnan(lo) or math.isnan(hi)) else f"values in [{lo:.6g}, {hi:.6g}]"
        raise EvaluationError(f"{name}: probabilities contain {what}, outside [0, 1]; {REGENERATE}")
    return lo < 0.0 or hi > 1.0


def check_sums_to_one(p: np.ndarray, name: str, tol: float) -> None:
    """Raise unless the channels (axis 0) of every voxel sum to 1 within ``tol`` (softmax of a label model)."""
    if p.shape[1:] and p[0].size == 0:
        return
    total = p.sum(0)
    dev = np.abs(total - 1.0)
    if not (dev <= tol).all():
        raise EvaluationError(f"{name}: softmax probabilities do not sum to 1 over channels (worst voxel sums to "
                              f"{float(total.reshape(-1)[np.argmax(dev)]):.6g}); is this a region (sigmoid) "
                              f"prediction or a wrong dataset.json?")

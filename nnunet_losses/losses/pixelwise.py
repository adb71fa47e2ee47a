"""Distribution-based (per-voxel) losses: CE, weighted CE, Focal."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses import sigmoid_fused
from nnunet_losses.segmentation_loss import SegmentationLoss, check_range
from nnunet_losses.batch import PreparedBatch
from nnunet_losses.softmax_terms import CategoricalNLL, softmax_label_terms


def voxel_focal_nll(batch: PreparedBatch, fg_weight: float | Tensor = 1.0, bg_weight: float | Tensor = 1.0,
                    fg_gamma: float = 0.0, bg_gamma: float = 0.0, class_weights: Optional[Tensor] = None) -> Tensor:
    """Per-voxel weighted focal NLL in either training mode (the foreground/background view of both).

    * softmax: categorical NLL; the background class (channel 0) gets ``bg_weight``/``bg_gamma``, every
      foreground class ``fg_weight``/``fg_gamma`` (or ``class_weights`` for all C classes);
    * sigmoid: per-region binary NLL; ``y = 1`` voxels get the foreground, ``y = 0`` the background parameters.

    A two-class softmax and a one-region sigmoid with the same foreground logit give the same value.
    """
    if batch.region_based:
        if fg_gamma == 0 and bg_gamma == 0:  # (weighted) BCE: torch's fused kernel, same formula
            return Fn.sigmoid_binary_nll(batch.logits, batch.onehot, fg_weight, bg_weight)
        if batch.hard:  # 0/1 region maps: one log-sigmoid and one focal factor per element, gradient fused
            return Fn.binary_focal_nll_hard(batch.logits, batch.onehot, fg_weight, bg_weight, fg_gamma, bg_gamma)
        return Fn.binary_focal_nll(batch.log_probs, batch.log_one_minus_probs, batch.onehot,
                                   fg_weight, bg_weight, fg_gamma, bg_gamma)
    spec = categorical_nll(batch.logits.shape[1], fg_weight, bg_weight, fg_gamma, bg_gamma, class_weights)
    if batch.hard:  # label maps: one softmax, the gradient written out
        return Fn.categorical_focal_nll_hard(batch.logits, batch.onehot, *spec)
    return Fn.categorical_focal_nll(batch.log_probs, batch.onehot, *spec, hard=batch.hard)


def categorical_nll(n_classes: int, fg_weight: float | Tensor = 1.0, bg_weight: float | Tensor = 1.0,
                    fg_gamma: float = 0.0, bg_gamma: float = 0.0, class_weights: Optional[Tensor] = None
                    ) -> CategoricalNLL:
    """Per-class weights and gammas of the softmax NLL of :func:`voxel_focal_nll` (background: channel 0)."""
    if class_weights is None and (fg_weight != 1 or bg_weight != 1):
        # float64 (Python floats are doubles): _channel_weight casts to the compute dtype, so float64 losses
        # are not limited to float32-rounded weights (delta = 0.6 would become 0.6000000238)
        class_weights = torch.tensor([bg_weight] + [fg_weight] * (n_classes - 1), dtype=torch.float64)
    gammas = None if (fg_gamma == 0 and bg_gamma == 0) else (float(bg_gamma),) + (float(fg_gamma),) * (n_classes - 1)
    return CategoricalNLL(class_weights, gammas)


def region_terms(batch: PreparedBatch, stats_gamma: Optional[float], focal: Optional[dict] = None
                 ) -> Optional[Tuple[Optional[Tuple[Tensor, Tensor, Tensor]], Optional[Tensor]]]:
    """From one fused pass (:mod:`nnunet_losses.sigmoid_fused`) for hard region maps: ``(TP, FP, FN)`` (``(B, R)``)
    with FP/FN exponent ``stats_gamma`` (None: not asked for) and, for ``focal`` (the keyword arguments
    ``fg_weight, bg_weight, fg_gamma, bg_gamma`` of :func:`voxel_focal_nll`; None: not asked for), the mean of
    :func:`voxel_focal_nll` over the valid voxels. None where the general formulas apply (label maps, soft region
    maps, other FP/FN exponents, saturated logits)."""
    if not (batch.region_based and batch.hard):
        return None
    if stats_gamma is not None and float(stats_gamma) not in sigmoid_fused.FUSED_STATS_GAMMAS:
        return None
    focal = None if focal is None else {"fg_weight": 1.0, "bg_weight": 1.0, "fg_gamma": 0.0, "bg_gamma": 0.0, **focal}
    gammas = None if focal is None else (focal["fg_gamma"], focal["bg_gamma"])
    # one sum of both sides when they are weighted alike (CE, Focal with alpha 1/2, Combo with beta 1/2)
    alike = (focal is not None and not isinstance(focal["fg_weight"], Tensor)
             and focal["fg_weight"] == focal["bg_weight"])
    out = sigmoid_fused.sigmoid_hard_terms(batch.logits, batch.onehot, batch.mask, stats_gamma, gammas, split=not alike)
    if out is None:
        return None
    stats, sums = out
    if focal is None:
        return stats, None
    return stats, sigmoid_fused.focal_mean_from_sums(sums, focal["fg_weight"], focal["bg_weight"], batch.mask,
                                                     batch.logits)


def focal_nll_mean(batch: PreparedBatch, fg_weight: float | Tensor = 1.0, bg_weight: float | Tensor = 1.0,
                   fg_gamma: float = 0.0, bg_gamma: float = 0.0, class_weights: Optional[Tensor] = None) -> Tensor:
    """Mean of :func:`voxel_focal_nll` over the valid voxels (and channels): fused for label maps (the mean and its
    gradient from one softmax pass, :func:`~nnunet_losses.softmax_terms.softmax_label_terms`, no per-voxel map)
    and for hard region maps (:func:`region_terms`); elsewhere (soft targets, saturated logits) the per-voxel
    formula averaged."""
    if batch.hard and not batch.region_based:
        spec = categorical_nll(batch.logits.shape[1], fg_weight, bg_weight, fg_gamma, bg_gamma, class_weights)
        # from the label map (labels == c, class by class) unless the one-hot map was built already
        terms = softmax_label_terms(batch.logits, batch.dense_target, batch.mask, 0, None, spec, labels=batch.labels)
        if terms is not None:
            return terms.nll
    focal = {"fg_weight": fg_weight, "bg_weight": bg_weight, "fg_gamma": fg_gamma, "bg_gamma": bg_gamma}
    fused = None if class_weights is not None else region_terms(batch, None, focal)
    if fused is not None:
        return fused[1]
    return Fn.masked_mean(voxel_focal_nll(batch, fg_weight, bg_weight, fg_gamma, bg_gamma, class_weights), batch.mask)


class CrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy, averaged over the non-ignored voxels.

    softmax: :math:`-\frac1N \sum_i \log p_{i,t_i}`; sigmoid (regions):
    :math:`-\frac{1}{NR}\sum_{i,r} y \log p + (1-y)\log(1-p)` (``torch``'s ``BCEWithLogitsLoss``).
    """

    def compute(self, batch: PreparedBatch) -> Tensor:
        if batch.region_based and batch.mask is None and not batch.hard:
            # torch's own 'mean' reduction is this mean of the same per-element terms (the same value bit for bit,
            # the gradient to rounding), without keeping the per-element map or a separate mean backward pass
            return F.binary_cross_entropy_with_logits(batch.logits, batch.onehot)
        return focal_nll_mean(batch)


class WeightedCrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy weighted to balance classes by their priors (Bertels et al. 2019, Sect. 3).

    softmax: weight :math:`1/(C p_c)` for class c (binary: :math:`1/(2p)` foreground, :math:`1/(2-2p)`
    background); sigmoid: :math:`1/(2p_r)` for region voxels and :math:`1/(2-2p_r)` for the rest. The weighted
    terms are averaged over voxels (not divided by the sum of weights, as ``torch``'s weighted mean would), so
    the weights keep their meaning: every class contributes equally in expectation.

    ``class_priors``: softmax, the frequency of each of the C classes (background first, sums to 1); regions,
    the foreground frequency of each region. nnU-Net's trainer computes them from the training labels.
    """

    def __init__(self, *, class_priors: Sequence[float], **shared):
        super().__init__(**shared)
        if class_priors is None:
            raise ValueError("wce needs class_priors: the frequency of each class (labels, background first) or of "
                             "each region's foreground (regions)")
        self.class_priors = tuple(float(p) for p in class_priors)
        weights, neg_weights = Fn.class_weights_from_priors(self.class_priors, self.region_based)
        self.register_buffer("weights", weights.float(), persistent=False)
        self.register_buffer("neg_weights", None if neg_weights is None else neg_weights.float(), persistent=False)

    def compute(self, batch: PreparedBatch) -> Tensor:
        n = batch.logits.shape[1]
        if len(self.class_priors) != n:
            raise ValueError(f"wce has {len(self.class_priors)} class_priors but the network has {n} output channels")
        weights, neg_weights = self.weights, self.neg_weights
        if batch.logits.dtype == torch.float64:  # the float32 buffers are rounded: use exact weights in float64
            weights, neg_weights = Fn.class_weights_from_priors(self.class_priors, batch.region_based)
        if batch.region_based:
            return focal_nll_mean(batch, fg_weight=weights, bg_weight=neg_weights)
        return focal_nll_mean(batch, class_weights=weights)


class FocalLoss(SegmentationLoss):
    r"""Focal loss (Lin et al. 2017; Yeung et al. 2022, Eq. 2), averaged over non-ignored voxels.

    .. math:: L_F = -\frac1N \sum_i \alpha_{t_i} (1 - p_{i,t_i})^\gamma \log p_{i,t_i}

    ``alpha`` weights foreground classes/region voxels and ``1 - alpha`` background (``alpha=None``: no
    weighting). Defaults are the DSC++ paper's Table 2 (alpha 0.5, gamma 2). Note: CE is gamma = 0 with
    alpha = None (the paper says gamma = 1, a typo).
    """

    def __init__(self, *, alpha: Optional[float] = 0.5, gamma: float = 2.0, **shared):
        super().__init__(**shared)
        self.alpha = None if alpha is None else check_range("alpha", alpha, 0, 1)
        self.gamma = check_range("gamma", gamma, 0, float("inf"))

    def compute(self, batch: PreparedBatch) -> Tensor:
        fg, bg = (1.0, 1.0) if self.alpha is None else (self.alpha, 1 - self.alpha)
        return focal_nll_mean(batch, fg, bg, self.gamma, self.gamma)

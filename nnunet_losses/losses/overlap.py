"""Overlap (region-based) losses: soft Dice, soft Jaccard, DSC++, Tversky, Focal Tversky and their ++ forms.

Every class here evaluates TP/FP/FN statistics (:func:`~nnunet_losses.functional.overlap_stats`) on the
channels selected by ``do_bg`` and reduces them per sample or over the batch (``batch_dice``, all-gathered
across DDP ranks with ``ddp=True``). The ++ forms (Yeung et al. 2022) compute the FP and FN statistics with the
DSC++ focal exponent ``gamma_pp`` -- ``(p (1-y))^gamma_pp`` and ``((1-p) y)^gamma_pp`` per voxel -- in place of the
plain sums; ``gamma_pp = 1`` is the original loss.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses.segmentation_loss import SegmentationLoss, check_bool, check_range
from nnunet_losses.batch import PreparedBatch

_INF = float("inf")


class OverlapLoss(SegmentationLoss):
    """Shared arguments of overlap losses (nnU-Net's names and defaults: ``smooth=1e-5``, ``do_bg=False``).

    * ``batch_dice``: statistics summed over the batch (nnU-Net's ``batch_dice``) instead of per sample;
    * ``do_bg``: include the background channel (softmax only; region maps have no background channel);
    * ``smooth``: added to numerator and denominator;
    * ``ddp``: with ``batch_dice``, sum the statistics over all DDP ranks (nnU-Net passes ``self.is_ddp``).
    """
    default_do_bg = False

    def __init__(self, batch_dice: bool = False, do_bg: Optional[bool] = None, smooth: float = 1e-5,
                 ddp: bool = False, region_based: bool = False, ignore_label: Optional[int] = None,
                 deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(region_based, ignore_label, deep_supervision_weights)
        self.batch_dice = check_bool("batch_dice", batch_dice)
        self.do_bg = check_bool("do_bg", self.default_do_bg if do_bg is None else do_bg)
        self.smooth = check_range("smooth", smooth, 0, _INF)
        self.ddp = check_bool("ddp", ddp)
        self.gamma_pp = 1.0

    def stats(self, batch: PreparedBatch) -> Tuple[Tensor, Tensor, Tensor]:
        """Reduced (TP, FP, FN) of the selected channels, shape ``(K,)`` (batch dice) or ``(B, K)``."""
        c0 = batch.first_channel(self.do_bg)
        stats = Fn.overlap_stats(batch.probs[:, c0:], batch.onehot[:, c0:], batch.mask, self.gamma_pp,
                                 hard=batch.hard)
        return Fn.reduce_stats(stats, self.batch_dice, self.ddp)

    def dice_loss(self, batch: PreparedBatch) -> Tensor:
        """``1 - mean`` soft Dice (or DSC++ when ``gamma_pp != 1``) over samples/channels."""
        return 1 - Fn.dice_score(*self.stats(batch), self.smooth).mean()

    def _set_gamma_pp(self, gamma_pp: float, name: str = "gamma_pp"):
        self.gamma_pp = check_range(name, gamma_pp, 0, _INF, low_open=True)


class SoftDiceLoss(OverlapLoss):
    r"""Soft Dice loss (Milletari et al.; Bertels et al. 2019 Eq. 6): :math:`1 - \mathrm{mean}_{b,c}
    \frac{2\sum_i p_i y_i + s}{\sum_i p_i + \sum_i y_i + s}`."""

    def compute(self, batch: PreparedBatch) -> Tensor:
        return self.dice_loss(batch)


class DSCppLoss(OverlapLoss):
    r"""DSC++ loss (Yeung et al. 2022, Eq. 9):

    .. math:: 1 - \mathrm{mean}_c \frac{2 TP_c + s}{2 TP_c + \sum_i (p_{i,c}(1-y_{i,c}))^\gamma
              + \sum_i ((1-p_{i,c}) y_{i,c})^\gamma + s}

    ``gamma = 1`` is soft Dice; the paper's choice is ``gamma = 2`` (grid 0.5..5). For ``gamma < 1`` the power
    is exact above 1e-8 and linear below (see :func:`~nnunet_losses.functional.safe_pow`) instead of the
    authors' clamping of ``p`` and ``y``, so values are unbiased and gradients finite.
    """

    def __init__(self, gamma: float = 2.0, batch_dice: bool = False, do_bg: Optional[bool] = None,
                 smooth: float = 1e-5, ddp: bool = False, region_based: bool = False,
                 ignore_label: Optional[int] = None, deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(batch_dice, do_bg, smooth, ddp, region_based, ignore_label, deep_supervision_weights)
        self._set_gamma_pp(gamma, "gamma")

    def compute(self, batch: PreparedBatch) -> Tensor:
        return self.dice_loss(batch)


class SoftJaccardLoss(OverlapLoss):
    r"""Soft Jaccard loss (Rahman & Wang; Bertels et al. 2019): :math:`1 - \mathrm{mean}
    \frac{\sum py + s}{\sum p + \sum y - \sum py + s}`."""

    def compute(self, batch: PreparedBatch) -> Tensor:
        return 1 - Fn.jaccard_score(*self.stats(batch), self.smooth).mean()


class TverskyLoss(OverlapLoss):
    r"""Tversky loss (Salehi et al. 2017; Yeung et al. 2022 Eqs. 15-16): :math:`1 - \mathrm{mean}_c TI_c`,
    :math:`TI = (TP + s)/(TP + \alpha FP + \beta FN + s)`.

    ``alpha`` weights false positives, ``beta`` false negatives; defaults 0.3/0.7 (DSC++ paper, Table 2).
    ``gamma_pp`` > 1 gives Tversky++ (FP/FN with the DSC++ exponent). Note: the paper sums over classes; we
    average, so values lie in [0, 1] like every overlap loss here (gradients differ by the constant C).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma_pp: float = 1.0, batch_dice: bool = False,
                 do_bg: Optional[bool] = None, smooth: float = 1e-5, ddp: bool = False, region_based: bool = False,
                 ignore_label: Optional[int] = None, deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(batch_dice, do_bg, smooth, ddp, region_based, ignore_label, deep_supervision_weights)
        self.alpha = check_range("alpha", alpha, 0, _INF)
        self.beta = check_range("beta", beta, 0, _INF)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0 (the Tversky index would ignore all errors)")
        self._set_gamma_pp(gamma_pp)

    def tversky_index(self, batch: PreparedBatch) -> Tensor:
        return Fn.tversky_index(*self.stats(batch), self.alpha, self.beta, self.smooth)

    def compute(self, batch: PreparedBatch) -> Tensor:
        return 1 - self.tversky_index(batch).mean()


class FocalTverskyLoss(TverskyLoss):
    r"""Focal Tversky loss (Abraham & Khan 2019; Yeung et al. 2022 Eq. 17): :math:`\mathrm{mean}_c
    (1 - TI_c)^{1/\gamma}`, defaults alpha 0.3, beta 0.7, gamma 4/3 (Table 2).

    For ``1/gamma < 1`` the derivative is infinite at a perfect prediction; the power is continued linearly
    below 1e-8 (:func:`~nnunet_losses.functional.safe_pow`).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4 / 3, gamma_pp: float = 1.0,
                 batch_dice: bool = False, do_bg: Optional[bool] = None, smooth: float = 1e-5, ddp: bool = False,
                 region_based: bool = False, ignore_label: Optional[int] = None,
                 deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(alpha, beta, gamma_pp, batch_dice, do_bg, smooth, ddp, region_based, ignore_label,
                         deep_supervision_weights)
        self.gamma = check_range("gamma", gamma, 0, _INF, low_open=True)

    def compute(self, batch: PreparedBatch) -> Tensor:
        return Fn.focal_tversky_term(self.tversky_index(batch), self.gamma).mean()


class TverskyPPLoss(TverskyLoss):
    """Tversky++ (Yeung et al. 2022, Sect. 2.6): Tversky with DSC++'s FP/FN terms, ``gamma_pp = 2``."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma_pp: float = 2.0, batch_dice: bool = False,
                 do_bg: Optional[bool] = None, smooth: float = 1e-5, ddp: bool = False, region_based: bool = False,
                 ignore_label: Optional[int] = None, deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(alpha, beta, gamma_pp, batch_dice, do_bg, smooth, ddp, region_based, ignore_label,
                         deep_supervision_weights)


class FocalTverskyPPLoss(FocalTverskyLoss):
    """Focal Tversky++ (Yeung et al. 2022): Focal Tversky with DSC++'s FP/FN terms, ``gamma_pp = 2``."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4 / 3, gamma_pp: float = 2.0,
                 batch_dice: bool = False, do_bg: Optional[bool] = None, smooth: float = 1e-5, ddp: bool = False,
                 region_based: bool = False, ignore_label: Optional[int] = None,
                 deep_supervision_weights: Optional[Sequence[float]] = None):
        super().__init__(alpha, beta, gamma, gamma_pp, batch_dice, do_bg, smooth, ddp, region_based, ignore_label,
                         deep_supervision_weights)

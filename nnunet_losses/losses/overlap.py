"""Overlap (region-based) losses: soft Dice, soft Jaccard, DSC++, Tversky, Focal Tversky and their ++ forms.

Every class here evaluates TP/FP/FN statistics (:func:`~nnunet_losses.functional.overlap_stats`) on the
channels selected by ``do_bg`` and reduces them per sample or over the batch (``batch_dice``, all-gathered
across DDP ranks with ``ddp=True``). The ++ forms (Yeung et al. 2022) compute the FP and FN statistics with the
DSC++ focal exponent ``gamma_pp`` -- ``(p (1-y))^gamma_pp`` and ``((1-p) y)^gamma_pp`` per voxel -- in place of the
plain sums; ``gamma_pp = 1`` is the original loss. The ++ forms are registry entries (``tversky_pp`` =
``TverskyLoss`` with ``gamma_pp=2``; see :mod:`nnunet_losses.registry`), not classes of their own.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses.segmentation_loss import SegmentationLoss, check_bool, check_range
from nnunet_losses.batch import PreparedBatch
from nnunet_losses.softmax_terms import LabelTerms, VoxelNLL, softmax_label_terms
from nnunet_losses.losses.pixelwise import region_terms

_INF = float("inf")


class OverlapLoss(SegmentationLoss):
    """Shared arguments of overlap losses (nnU-Net's names and defaults: ``smooth=1e-5``, ``do_bg=False``).

    * ``batch_dice``: statistics summed over the batch (nnU-Net's ``batch_dice``) instead of per sample;
    * ``do_bg``: include the background channel (softmax only; region maps have no background channel);
    * ``smooth``: added to numerator and denominator;
    * ``ddp``: with ``batch_dice``, sum the statistics over all DDP ranks (nnU-Net passes ``self.is_ddp``).
    """
    default_do_bg = False
    #: the constructor argument holding DSC++'s FP/FN exponent (Eq. 9), or None for the plain sums (exponent 1)
    fp_fn_exponent_arg: Optional[str] = None
    #: statistics from the L1 intersection of Wang et al. 2023 (:func:`~nnunet_losses.functional.metric_overlap_stats`)
    metric_intersection = False

    def __init__(self, *, batch_dice: bool = False, do_bg: Optional[bool] = None, smooth: float = 1e-5,
                 ddp: bool = False, **shared):
        super().__init__(**shared)
        self.batch_dice = check_bool("batch_dice", batch_dice)
        self.do_bg = check_bool("do_bg", self.default_do_bg if do_bg is None else do_bg)
        self.smooth = check_range("smooth", smooth, 0, _INF)
        self.ddp = check_bool("ddp", ddp)

    @property
    def fp_fn_exponent(self) -> float:
        """DSC++'s exponent of the per-voxel FP and FN terms (1: soft Dice/Tversky statistics)."""
        return 1.0 if self.fp_fn_exponent_arg is None else getattr(self, self.fp_fn_exponent_arg)

    def stats(self, batch: PreparedBatch) -> Tuple[Tensor, Tensor, Tensor]:
        """Reduced (TP, FP, FN) of the selected channels, shape ``(K,)`` (batch dice) or ``(B, K)``."""
        terms = self.label_terms(batch)
        if terms is not None:
            return Fn.reduce_stats(terms.stats, self.batch_dice, self.ddp)
        fused = None if self.metric_intersection else region_terms(batch, self.fp_fn_exponent)
        if fused is not None:  # hard region maps: one fused sigmoid pass (nnunet_losses.sigmoid_fused)
            return Fn.reduce_stats(fused[0], self.batch_dice, self.ddp)
        c0 = batch.first_channel(self.do_bg)
        if self.metric_intersection:
            stats = Fn.metric_overlap_stats(batch.probs[:, c0:], batch.onehot[:, c0:], batch.mask)
        else:
            stats = Fn.overlap_stats(batch.probs[:, c0:], batch.onehot[:, c0:], batch.mask, self.fp_fn_exponent,
                                     hard=batch.hard)
        return Fn.reduce_stats(stats, self.batch_dice, self.ddp)

    def stats_and_nll(self, batch: PreparedBatch, nll: VoxelNLL, general_nll: Callable[[], Tensor],
                      region_nll: Optional[dict] = None) -> Tuple[Tuple[Tensor, Tensor, Tensor], Tensor]:
        """:meth:`stats` and a voxel NLL's mean over valid voxels (``general_nll()``, the formula as written).

        On label maps both come from one softmax pass with one backward
        (:func:`~nnunet_losses.softmax_terms.softmax_label_terms`, the same values and gradients to rounding);
        on hard region maps from one sigmoid pass (:func:`~nnunet_losses.losses.pixelwise.region_terms`), where
        ``region_nll`` (the keyword arguments of :func:`~nnunet_losses.losses.pixelwise.voxel_focal_nll`) says
        which binary NLL ``general_nll`` computes.
        """
        if batch.region_based:
            fused = None if self.metric_intersection or region_nll is None else region_terms(
                batch, self.fp_fn_exponent, region_nll)
            if fused is not None and fused[0] is not None:
                return Fn.reduce_stats(fused[0], self.batch_dice, self.ddp), fused[1]
            return self.stats(batch), general_nll()
        terms = self.label_terms(batch, nll)
        if terms is None:
            return self.stats(batch), general_nll()
        return Fn.reduce_stats(terms.stats, self.batch_dice, self.ddp), terms.nll

    def label_terms(self, batch: PreparedBatch, nll: Optional[VoxelNLL] = None) -> Optional[LabelTerms]:
        """The fused label-map pass of the statistics (and ``nll``), or None where the general path applies."""
        if batch.region_based or not batch.hard or self.metric_intersection:
            return None
        return softmax_label_terms(batch.logits, batch.onehot, batch.mask, batch.first_channel(self.do_bg),
                                   self.fp_fn_exponent, nll)

    def dice_loss(self, batch: PreparedBatch, stats: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """``1 - mean`` soft Dice (or DSC++ when the FP/FN exponent is not 1) over samples/channels."""
        return 1 - Fn.dice_score(*(self.stats(batch) if stats is None else stats), self.smooth).mean()


def check_exponent(name: str, value) -> float:
    """A positive finite exponent (DSC++'s gamma, Focal Tversky's gamma)."""
    return check_range(name, value, 0, _INF, low_open=True)


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

    fp_fn_exponent_arg = "gamma"

    def __init__(self, *, gamma: float = 2.0, **shared):
        super().__init__(**shared)
        self.gamma = check_exponent("gamma", gamma)

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

    fp_fn_exponent_arg = "gamma_pp"

    def __init__(self, *, alpha: float = 0.3, beta: float = 0.7, gamma_pp: float = 1.0, **shared):
        super().__init__(**shared)
        self.alpha = check_range("alpha", alpha, 0, _INF)
        self.beta = check_range("beta", beta, 0, _INF)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0 (the Tversky index would ignore all errors)")
        self.gamma_pp = check_exponent("gamma_pp", gamma_pp)

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

    def __init__(self, *, gamma: float = 4 / 3, **tversky):
        super().__init__(**tversky)
        self.gamma = check_exponent("gamma", gamma)

    def compute(self, batch: PreparedBatch) -> Tensor:
        return Fn.focal_tversky_term(self.tversky_index(batch), self.gamma).mean()

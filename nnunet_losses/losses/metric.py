"""Overlap losses for soft targets (Wang, Popordanoska, Bertels, Lemmens, Blaschko 2023; code JDTLosses):
the Dice semimetric loss, the Jaccard metric loss and their Tversky form.

They replace the soft intersection ``sum p y`` by ``I = (|p|_1 + |y|_1 - |p - y|_1) / 2``
(:func:`~nnunet_losses.functional.metric_overlap_stats`): on hard targets they equal soft Dice / Jaccard /
Tversky, value and gradient; on soft targets they are minimised at ``p = y``, which soft Dice is not (with
``y = 0.5`` it pushes ``p`` to 1). Every option of the other overlap losses applies (``batch_dice``, ``do_bg``,
``smooth``, ``ddp``, ignore label, regions, deep supervision). Defaults are nnU-Net's (``smooth = 1e-5``,
background off), not JDTLosses' (``smooth = 1``).
"""
from __future__ import annotations

from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses.batch import PreparedBatch
from nnunet_losses.losses.overlap import OverlapLoss
from nnunet_losses.segmentation_loss import check_range

_INF = float("inf")


class DiceMetricLoss(OverlapLoss):
    r"""Dice semimetric loss (Wang et al. 2023): :math:`1 - \mathrm{mean} \frac{2I + s}{\|p\|_1 + \|y\|_1 + s}`."""
    metric_intersection = True

    def compute(self, batch: PreparedBatch) -> Tensor:
        return self.dice_loss(batch)


class JaccardMetricLoss(OverlapLoss):
    r"""Jaccard metric loss (Wang et al. 2023): :math:`1 - \mathrm{mean} \frac{I + s}{\|p\|_1 + \|y\|_1 - I + s}`."""
    metric_intersection = True

    def compute(self, batch: PreparedBatch) -> Tensor:
        return 1 - Fn.jaccard_score(*self.stats(batch), self.smooth).mean()


class MetricTverskyLoss(OverlapLoss):
    r"""Tversky form of the metric losses (JDTLosses' ``JDTLoss``):
    :math:`1 - \mathrm{mean} \frac{I + s}{I + \alpha (\|p\|_1 - I) + \beta (\|y\|_1 - I) + s}`.

    ``alpha`` weights false positives, ``beta`` false negatives (defaults 0.3/0.7 as ``tversky``);
    ``alpha = beta = 1`` is the Jaccard metric loss.
    """
    metric_intersection = True

    def __init__(self, *, alpha: float = 0.3, beta: float = 0.7, **shared):
        super().__init__(**shared)
        self.alpha = check_range("alpha", alpha, 0, _INF)
        self.beta = check_range("beta", beta, 0, _INF)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0 (the Tversky index would ignore all errors)")

    def compute(self, batch: PreparedBatch) -> Tensor:
        return 1 - Fn.tversky_index(*self.stats(batch), self.alpha, self.beta, self.smooth).mean()

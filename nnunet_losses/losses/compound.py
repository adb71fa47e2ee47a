"""Compound losses: nnU-Net's Dice + CE, Combo, Unified Focal (their ++ forms are registry entries)."""
from __future__ import annotations

import torch
from torch import Tensor

from nnunet_losses import functional as Fn
from nnunet_losses.segmentation_loss import check_bool, check_range
from nnunet_losses.batch import PreparedBatch
from nnunet_losses.losses.overlap import OverlapLoss, check_exponent
from nnunet_losses.losses.pixelwise import categorical_nll, focal_nll_mean
from nnunet_losses.softmax_terms import OneVsRestNLL

_INF = float("inf")


class DiceCELoss(OverlapLoss):
    r"""nnU-Net's default loss, for reference: ``weight_ce * CE + weight_dice * (1 - soft Dice)``.

    Identical in gradient to nnU-Net's ``DC_and_CE_loss`` / ``DC_and_BCE_loss`` with ``MemoryEfficientSoftDiceLoss``
    (values are ``weight_dice`` higher, because nnU-Net returns ``-Dice``). One documented difference: with an
    ignore label in region training nnU-Net divides the BCE sum over regions by the number of valid voxels
    (a sum over regions); we average over regions in every case, as its non-ignore branch does.
    """

    def __init__(self, *, weight_ce: float = 1.0, weight_dice: float = 1.0, **shared):
        super().__init__(**shared)
        self.weight_ce = check_range("weight_ce", weight_ce, 0, _INF)
        self.weight_dice = check_range("weight_dice", weight_dice, 0, _INF)

    def compute(self, batch: PreparedBatch) -> Tensor:
        stats, ce = self.stats_and_nll(batch, categorical_nll(batch.logits.shape[1]),
                                       lambda: focal_nll_mean(batch), region_nll={})
        return self.weight_ce * ce + self.weight_dice * self.dice_loss(batch, stats)


class ComboLoss(OverlapLoss):
    r"""Combo loss (Taghanaki et al. 2019; Yeung et al. 2022 Eqs. 13-14): :math:`\alpha L_{mCE} + (1-\alpha)(1 - DSC)`.

    .. math:: L_{mCE} = -\frac1N\sum_i \beta\, y_i \ln p_i + (1-\beta)(1-y_i)\ln(1-p_i)

    evaluated one-vs-rest on every channel the Dice term uses (softmax: the foreground classes, plus background
    with ``do_bg``; regions: every region) and averaged over them; for a binary task this is exactly Eq. 14.
    The paper writes ``- (1-alpha) DSC``; we add the constant ``1 - alpha`` so the value is comparable with the
    other losses. Defaults alpha = beta = 0.5 (Table 2). ``gamma_pp = 2`` is Combo++.
    """

    fp_fn_exponent_arg = "gamma_pp"

    def __init__(self, *, alpha: float = 0.5, beta: float = 0.5, gamma_pp: float = 1.0, **shared):
        super().__init__(**shared)
        self.alpha = check_range("alpha", alpha, 0, 1)
        self.beta = check_range("beta", beta, 0, 1)
        self.gamma_pp = check_exponent("gamma_pp", gamma_pp)

    def compute(self, batch: PreparedBatch) -> Tensor:
        stats, mce = self.stats_and_nll(batch, OneVsRestNLL(self.beta, 1 - self.beta), lambda: self.modified_ce(batch),
                                        region_nll=dict(fg_weight=self.beta, bg_weight=1 - self.beta))
        return self.alpha * mce + (1 - self.alpha) * self.dice_loss(batch, stats)

    def modified_ce(self, batch: PreparedBatch) -> Tensor:
        """Eq. 14's :math:`L_{mCE}`, one-vs-rest on the Dice term's channels, averaged over valid voxels."""
        c0 = batch.first_channel(self.do_bg)
        if batch.region_based:  # regions have no background channel: c0 = 0; torch's fused BCE, same formula
            mce = Fn.sigmoid_binary_nll(batch.logits, batch.onehot, w_pos=self.beta, w_neg=1 - self.beta)
        elif batch.hard:  # label maps: one logarithm per element, gradient written out
            mce = Fn.one_vs_rest_softmax_nll_hard(batch.logits, batch.onehot, c0, w_pos=self.beta, w_neg=1 - self.beta)
        else:
            mce = Fn.binary_focal_nll(batch.log_probs[:, c0:], batch.log_one_minus_probs[:, c0:],
                                      batch.onehot[:, c0:], w_pos=self.beta, w_neg=1 - self.beta)
        return Fn.masked_mean(mce, batch.mask)


class UnifiedFocalLoss(OverlapLoss):
    r"""Unified Focal loss (Yeung et al. 2022 CMIG; DSC++ paper Eqs. 18-21), multi-class.

    .. math:: L_{UF} = \lambda L_{aF} + (1-\lambda) L_{aFT}

    **lambda convention**: as in the paper's Eq. 18 and MONAI's ``AsymmetricUnifiedFocalLoss``, ``lambda_`` weights
    the (asymmetric) *focal* term. The authors' code applies it to the Focal Tversky term instead; with the default
    0.5 both agree.

    * :math:`L_{aF}` (Eq. 19), averaged over valid voxels: background voxels
      :math:`-(1-\delta)(1-p_{bg})^\gamma \log p_{bg}`, foreground (rare) voxels :math:`-\delta \log p_{c}` --
      every foreground class is "rare" in the multi-class case; regions: per region, ``y=1`` vs ``y=0``.
    * :math:`L_{aFT}` (Eq. 20): :math:`TI_c = (TP + s)/(TP + \delta FN + (1-\delta) FP + s)`, background term
      :math:`1 - TI_{bg}`, foreground terms :math:`(1 - TI_c)^{1-\gamma}`, averaged over terms. The background
      term needs the background channel, so ``do_bg`` defaults to True here (softmax; regions have none).
    * ``asymmetric=False``: the symmetric variant -- focal modulation :math:`(1-p)^\gamma` and the
      :math:`(1-TI)^{1-\gamma}` enhancement on every class.

    Defaults (Table 2): ``lambda_ = 0.5, delta = 0.6, gamma = 0.5``. ``gamma_pp = 2`` is Unified Focal++.
    """
    default_do_bg = True

    fp_fn_exponent_arg = "gamma_pp"

    def __init__(self, *, lambda_: float = 0.5, delta: float = 0.6, gamma: float = 0.5, asymmetric: bool = True,
                 gamma_pp: float = 1.0, **shared):
        super().__init__(**shared)
        self.lambda_ = check_range("lambda_", lambda_, 0, 1)
        self.delta = check_range("delta", delta, 0, 1)
        self.gamma = check_range("gamma", gamma, 0, 1, high_open=True)
        self.asymmetric = check_bool("asymmetric", asymmetric)
        self.gamma_pp = check_exponent("gamma_pp", gamma_pp)

    def focal_params(self) -> dict:
        """Eq. 19's weights and exponents: background ``1 - delta, gamma``; foreground ``delta, 0`` (asymmetric)."""
        return dict(fg_weight=self.delta, bg_weight=1 - self.delta, fg_gamma=0.0 if self.asymmetric else self.gamma,
                    bg_gamma=self.gamma)

    def focal_term(self, batch: PreparedBatch) -> Tensor:
        return focal_nll_mean(batch, **self.focal_params())

    def focal_tversky_term(self, batch: PreparedBatch, stats) -> Tensor:
        tp, fp, fn = stats
        ti = Fn.tversky_index(tp, fp, fn, alpha=1 - self.delta, beta=self.delta, smooth=self.smooth)
        # (1 - TI)^(1 - gamma) is the Focal Tversky term with exponent 1/gamma' = 1 - gamma
        terms = Fn.focal_tversky_term(ti, 1 / (1 - self.gamma))
        if self.asymmetric and not batch.region_based and self.do_bg:
            terms = torch.cat([1 - ti[..., :1], terms[..., 1:]], dim=-1)  # the background term is not enhanced
        return terms.mean()

    def compute(self, batch: PreparedBatch) -> Tensor:
        spec = categorical_nll(batch.logits.shape[1], **self.focal_params())
        stats, focal = self.stats_and_nll(batch, spec, lambda: self.focal_term(batch), region_nll=self.focal_params())
        return self.lambda_ * focal + (1 - self.lambda_) * self.focal_tversky_term(batch, stats)

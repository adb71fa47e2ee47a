r"""One fused pass for region (sigmoid) training with hard targets: overlap statistics and the focal BCE sums.

Every region loss is a function of a few numbers per sample and region: the overlap statistics of
:func:`~nnunet_losses.functional.overlap_stats` (TP, FP, FN, with DSC++'s exponent) and the two halves of the
(weighted, focal) binary NLL of :func:`~nnunet_losses.functional.binary_focal_nll`,

.. math:: L^+ = \sum_i m_i\, y_i\, (1-q_i)^{\gamma^+} \log q_i, \qquad
          L^- = \sum_i m_i\, (1-y_i)\, (1-q_i)^{\gamma^-} \log q_i

(``q`` the probability of the reference's side: ``p`` where ``y = 1``, ``1 - p`` where ``y = 0``; ``m`` the
voxel mask). :func:`sigmoid_hard_terms` returns these ``(B, R)`` numbers from one sigmoid, and its backward maps
their gradients back to the logits in one pass; the losses combine them with ordinary autograd (the weights
``w+ L+ + w- L-``, the means, the scores). This is a speed-up only: the same values and gradients as the general
formulas, to rounding (tests/test_sigmoid_fused.py), for targets holding only 0 and 1 (``PreparedBatch.hard``).

Gradient (derivation). With ``p = sigmoid(x)``, ``dp/dx = p (1 - p)``:

* ``gamma = 1``: ``TP = sum m p y``, ``FP = sum m p - TP``, ``FN = sum m y - TP``, so
  ``dL/dp = m (g_FP + y (g_TP - g_FP - g_FN))``;
* ``gamma = 2``: with ``r = y - p`` (``1 - p`` where ``y = 1``, ``-p`` where ``y = 0``) the FP and FN terms
  are ``m r^2 (1 - y)`` and ``m r^2 y``, so ``dL/dp = m (g_TP y - 2 r (g_FP + y (g_FN - g_FP)))``;
* focal sums: with the side's sign ``s = 2y - 1``, ``z = s x``, ``q = sigmoid(z)``, ``u = 1 - q = sigmoid(-z)``,
  ``d log q / dz = u``, ``du/dz = -q u`` and the focal factor ``F = safe_pow(u, gamma)``:
  ``d(F log q)/dx = s u (F - q log q F'(u))`` =: ``G`` (``F'`` as autograd takes it through ``safe_pow``, see
  :func:`~nnunet_losses.functional.focal_factor_and_derivative`); for ``gamma = 0``, ``G = s u = y - p``.
  So ``dL/dx = m G (g_L- + y (g_L+ - g_L-))``.

The logits' gradient is ``p (1 - p) dL/dp + (focal part)``: a handful of elementwise passes, against the dozen
full-size kernels and saved intermediates of the autograd graph. With focal exponents ``p`` is not computed:
``p = q`` where ``y = 1`` and ``p = u``, ``1 - p = q`` where ``y = 0``, so the statistics and ``p (1 - p) = q u``
come from ``q`` and ``u`` (the exact sigmoid where the general formula rounds ``1 - p``). ``log q`` is taken as
``log(sigmoid(z))`` (a third of ``logsigmoid``'s time); where some ``q`` is below ``1e-30`` (a logit ~70 on the
wrong side) it would lose precision, and :func:`sigmoid_hard_terms` returns None so that the caller takes the
general formula. Where ``q`` rounds near 1 the focal path corrects ``log q`` by the rounding error
``q - 1 + u``; the BCE (gamma 0, no ``u``) keeps ``log`` of the rounded ``q``: its value is exact to
``2^-24`` absolute per element (the gradient, ``y - p``, is torch's own). The BCE without an ignore mask reads
only the per-(sample, region) sums of ``log q``: they are taken from the logarithms of products of up to 16
``q`` (:func:`~nnunet_losses.functional.sum_of_logs`; exact to rounding, a logarithm costs ~6 products here).
Differentiable once (double backward raises).

Asymmetric focal exponents (foreground 0, background ``gamma > 0``: Unified Focal) take their own pass,
:mod:`nnunet_losses.sigmoid_asymmetric` (about half the elementwise passes: no focal factor on the foreground
side, one exponential for ``q``, ``u`` and ``log q``); the same numbers.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from nnunet_losses.functional import POW_EPS, focal_factor_and_derivative, sum_of_logs
from nnunet_losses.sigmoid_asymmetric import asymmetric_terms, negated_side_logits, power

#: Below this side probability ``q`` the focal sums take the general formula (see the module docstring).
_Q_MIN = 1e-30
#: FP/FN exponents the fused statistics cover; others take :func:`~nnunet_losses.functional.overlap_stats`.
FUSED_STATS_GAMMAS = (1.0, 2.0)

Stats = Tuple[Tensor, Tensor, Tensor]


def sigmoid_hard_terms(logits: Tensor, y: Tensor, mask: Optional[Tensor], stats_gamma: Optional[float] = None,
                       focal_gammas: Optional[Tuple[float, float]] = None, split: bool = True
                       ) -> Optional[Tuple[Optional[Stats], Optional[Tuple[Tensor, Tensor]]]]:
    """``((TP, FP, FN), (L+, L-))`` of ``sigmoid(logits)``, each ``(B, R)``; a part not asked for is None.

    ``y`` (logits' dtype) and ``mask`` (``(B, 1, ...)``) must hold only 0 and 1. ``stats_gamma`` (1 or 2, see
    :data:`FUSED_STATS_GAMMAS`) asks for the overlap statistics, ``focal_gammas = (gamma+, gamma-)`` for the focal
    sums (``(0, 0)``: the two halves of the BCE). ``split=False`` (both sides weighted alike) returns
    ``(L+ + L-, None)``, one pass less each way. Returns None (take the general formulas) when a side probability
    ``q`` is below 1e-30.
    """
    if stats_gamma is not None and float(stats_gamma) not in FUSED_STATS_GAMMAS:
        raise ValueError(f"the fused statistics cover FP/FN exponents {FUSED_STATS_GAMMAS}, got {stats_gamma}")
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    gammas = None if focal_gammas is None else (float(focal_gammas[0]), float(focal_gammas[1]))
    bce = gammas == (0.0, 0.0)
    if gammas is not None and gammas[0] == 0 < gammas[1] and logits.dtype in (torch.float32, torch.float64):
        # asymmetric focal (Unified Focal): no factor on the foreground side, its own pass (half the work);
        # float32/64 only, as exp(-z) overflows float16 at |z| ~ 11
        with torch.no_grad():
            n = negated_side_logits(logits, y, mask)
        terms = asymmetric_terms(n, logits, y, mask, None if stats_gamma is None else float(stats_gamma),
                                 gammas[1], acc)
        if terms is None:
            return None
        stats = tuple(terms[:3]) if stats_gamma is not None else None
        return stats, ((terms[3], terms[4]) if split else (terms[3] + terms[4], None))
    with torch.no_grad():
        # p = sigmoid(x) for the statistics and the BCE gradient y - p (torch's own, sigmoid(x) - y); with focal
        # exponents the statistics read p from q and u instead (p = q where y = 1, u where y = 0)
        p = torch.sigmoid(logits) if bce or (stats_gamma is not None and gammas is None) else None
        side = None
        if gammas is not None:
            # z = s x with s = 2y - 1 = +-1 (exact); s itself is not kept: backward folds it into the side weights
            z = torch.mul(y, 2).sub_(1).mul_(logits)
            if mask is not None:  # ignored voxels (read through the mask only) at z = 0: no saturation there
                z.mul_(mask)
            u = None if bce else torch.neg(z).sigmoid_()  # u = 1 - q = sigmoid(-z), exact where q rounds to 1
            q = z.sigmoid_()
            q_min = float(q.amin())  # amin: one reduction, no bool map
            if q_min < _Q_MIN:
                return None
            side = (q, u, q_min)
    out = _SigmoidHardTerms.apply(logits, y, mask, p, side, None if stats_gamma is None else float(stats_gamma),
                                  gammas, split, acc)
    stats = tuple(out[:3]) if stats_gamma is not None else None
    return stats, ((out[3], out[4] if split else None) if gammas is not None else None)


class _SigmoidHardTerms(torch.autograd.Function):
    """Forward and one-pass backward of :func:`sigmoid_hard_terms` (derivation in the module docstring).

    Every full-size map is written into a buffer of ours where one is free (``out=``, in place), and the first
    backward writes the gradient into forward buffers nothing reads any more: on this CPU a fresh 6 MB tensor
    costs about as much as the pass that fills it (page faults). The maps backward reads are kept on ``ctx``
    (they are neither inputs nor outputs) and never modified, so backward may run again (``retain_graph``).
    """

    @staticmethod
    def forward(ctx, logits, y, mask, p, side, stats_gamma, focal_gammas, split, acc):
        axes = tuple(range(2, logits.ndim))
        ym = y if mask is None else y * mask
        tp, fp, fn, l_pos, l_neg = (logits.new_zeros(()) for _ in range(5))  # parts not asked for
        free = []  # full-size buffers of ours that nothing reads any more
        r = slope_p = None
        sides = stats_gamma is not None and p is None  # focal exponents: the statistics from q and u
        if sides:
            (tp, fp, fn), slope_p = _stats_from_sides(y, ym, mask, side, stats_gamma, free, axes, acc)
        elif stats_gamma == 1:
            work = torch.mul(p, ym)
            tp = work.sum(axes, dtype=acc)
            p_sum = torch.mul(p, mask, out=work).sum(axes, dtype=acc) if mask is not None else p.sum(axes, dtype=acc)
            fp, fn = p_sum - tp, ym.sum(axes, dtype=acc) - tp
            free.append(work)
        elif stats_gamma == 2:  # r^2 is the FP term where y = 0 and the FN term where y = 1
            r = y - p  # backward reads p (1 - p) as |r| (1 - |r|): nothing reads p after TP, in place
            tp = p.mul_(ym).sum(axes, dtype=acc)
            r2 = torch.mul(r, r, out=p)
            fn_map = r2 * ym
            fn = fn_map.sum(axes, dtype=acc)
            fp_map = r2.sub_(fn_map)
            if mask is not None:
                fp_map.mul_(mask)
            fp = fp_map.sum(axes, dtype=acc)
            free += [fp_map, fn_map]
            p = None
        g_map, ctx.negated = None, False
        if focal_gammas == (0.0, 0.0) and mask is None and not split:  # the BCE's sum of log q alone: from the
            # logarithms of products of q (q itself is not needed afterwards)
            l_pos = sum_of_logs(side[0], side[2], 2, in_place=True)
            if stats_gamma is None:  # p is ours alone: G = -(p - y), the sign taken by backward's (B, R) factor
                g_map, ctx.negated = p.sub_(y), True
            else:
                g_map = _bce_slope(y, p, False, r, free)
            free.append(side[0])
        elif focal_gammas is not None:
            values, g_map = _focal_values_and_slope(y, p, stats_gamma is None, r, side, focal_gammas, free,
                                                    keep_u=sides and stats_gamma == 2)
            if mask is not None:
                values.mul_(mask)
            if split:  # (1 - y) m F log q as m F log q - y m F log q, in place: exact for y in {0, 1}
                pos_map = torch.mul(values, y, out=free.pop()) if free else values * y
                l_pos = pos_map.sum(axes, dtype=acc)
                l_neg = values.sub_(pos_map).sum(axes, dtype=acc)
                free.append(pos_map)
            else:
                l_pos = values.sum(axes, dtype=acc)
            free.append(values)
        ctx.stats_gamma, ctx.focal, ctx.split = stats_gamma, focal_gammas is not None, split
        ctx.signed = focal_gammas == (0.0, 0.0)  # g_map is G (BCE: y - p), else G / s (s folded in below)
        ctx.save_for_backward(y, mask)
        # p (1 - p) through sigmoid_backward of p, or as the product q u of the statistics from the sides
        ctx.maps = (p if stats_gamma is not None else None, r, g_map, slope_p,
                    side[1] if sides and stats_gamma == 2 else None)  # u: the DSC++ gradient and p (1 - p)
        ctx.spare = free[-2:]  # buffers backward may write its result into (its first call only)
        return tp, fp, fn, l_pos, l_neg

    @staticmethod
    @once_differentiable  # the derivatives are written out without a graph: refuse double backward
    def backward(ctx, g_tp, g_fp, g_fn, g_pos, g_neg):
        y, mask = ctx.saved_tensors
        p, r, g_map, slope_p, u = ctx.maps  # read only: backward may run again (retain_graph, gradcheck)
        spare, ctx.spare = ctx.spare, []  # the result is handed to autograd: a second call writes elsewhere
        shape = y.shape[:2] + (1,) * (y.ndim - 2)
        grad = None
        if ctx.stats_gamma == 1:  # dL/dp = g_FP + y (g_TP - g_FP - g_FN)
            grad = torch.mul(y, (g_tp - g_fp - g_fn).view(shape), out=_pop(spare)).add_(g_fp.view(shape))
        elif ctx.stats_gamma == 2 and r is not None:  # dL/dp = g_TP y - 2 r (g_FP + y (g_FN - g_FP))
            grad = torch.mul(y, (-2 * (g_fn - g_fp)).view(shape), out=_pop(spare)).add_((-2 * g_fp).view(shape))
            grad.mul_(r).addcmul_(y, g_tp.view(shape))
        elif ctx.stats_gamma == 2:  # the same with r = s u: dL/dp = g_TP y + u (2 g_FP - 2 y (g_FP + g_FN))
            grad = torch.mul(y, (-2 * (g_fp + g_fn)).view(shape), out=_pop(spare)).add_((2 * g_fp).view(shape))
            grad.mul_(u).addcmul_(y, g_tp.view(shape))
        if grad is not None and slope_p is not None:  # times dp/dx = p (1 - p) = q u
            grad.mul_(slope_p)
        elif grad is not None and u is not None:  # p (1 - p) = u (1 - u), as the general formula rounds it
            torch.ops.aten.sigmoid_backward.grad_input(grad, u, grad_input=grad)
        elif grad is not None:  # times dp/dx = p (1 - p), in place; with r = y - p, p (1 - p) = |r| (1 - |r|)
            p = p if p is not None else torch.abs(r, out=_pop(spare))
            torch.ops.aten.sigmoid_backward.grad_input(grad, p, grad_input=grad)
        if ctx.focal:  # dL/dx = G (g_L- + y (g_L+ - g_L-)); G g_L+ when not split
            if ctx.negated:  # g_map = -G
                g_pos = -g_pos
            if not ctx.signed:  # g_map = G / s: the side weights times s = +1 (y = 1) and s = -1 (y = 0)
                g_neg, split = -(g_neg if ctx.split else g_pos), True
            else:
                split = ctx.split
            if not split:
                grad = (torch.mul(g_map, g_pos.view(shape), out=_pop(spare)) if grad is None
                        else grad.addcmul_(g_map, g_pos.view(shape)))
            else:
                weights = torch.mul(y, (g_pos - g_neg).view(shape), out=_pop(spare)).add_(g_neg.view(shape))
                grad = weights.mul_(g_map) if grad is None else grad.addcmul_(weights, g_map)
        if mask is not None:
            grad.mul_(mask)
        return grad, None, None, None, None, None, None, None, None


def _pop(buffers: list) -> Optional[Tensor]:
    """A spare buffer for an ``out=`` argument, or None (the op allocates)."""
    return buffers.pop() if buffers else None


def _bce_slope(y: Tensor, p: Optional[Tensor], p_free: bool, r: Optional[Tensor], free: list) -> Tensor:
    """The BCE's ``G = y - p`` (F = 1; torch's own BCE gradient, ``sigmoid(x) - y``): the DSC++ statistics' ``r``,
    or written over ``p`` (``p_free``) or a free buffer."""
    if r is not None:
        return r
    if p_free:  # -(p - y) in place: negation is exact
        return p.sub_(y).neg_()
    return torch.sub(y, p, out=_pop(free))


def _focal_values_and_slope(y: Tensor, p: Optional[Tensor], p_free: bool, r: Optional[Tensor], side,
                            gammas: Tuple[float, float], free: list, keep_u: bool = False) -> Tuple[Tensor, Tensor]:
    """The unmasked maps ``F log q`` and ``G / s = d(F log q)/dz`` of the module docstring (for the BCE ``G``
    itself, ``y - p``), written into ``side``'s maps and ``free``'s buffers where possible (``p_free``: nothing
    else reads ``p``, it may be overwritten); maps nothing reads any more (``u`` unless ``keep_u``) are added to
    ``free``."""
    q, u = side[:2]
    if gammas == (0.0, 0.0):
        return q.log_(), _bce_slope(y, p, p_free, r, free)
    gamma_pos, gamma_neg = gammas
    log_q = torch.log(q, out=_pop(free))
    # log q to full precision where q rounds near 1: minus the rounding error d = q - 1 + u of q (q - 1 is exact
    # there; where q is small, |d| <= 2^-24 is far below |log q|), written over q; then q log q = (1 - u) log q
    rounding = q.sub_(1).add_(u)
    log_q.sub_(rounding)
    q_log_q = torch.addcmul(log_q, u, log_q, value=-1, out=rounding)
    if not any(0 < g < 1 for g in gammas) or bool(u.amin() > POW_EPS):
        # no element on safe_pow's linear piece: D = u F' = gamma F on either side, so with gamma- + y (gamma+ -
        # gamma-) the reference side's exponent, u F - q log q D = F (u - gamma- q log q - y (gamma+ - gamma-) q log q)
        if gamma_neg != 0:  # -gamma- q log q (1 + y (gamma+ - gamma-) / gamma-), in place
            slope = q_log_q.mul_(-gamma_neg)
            if gamma_pos != gamma_neg:
                slope.addcmul_(slope, y, value=(gamma_pos - gamma_neg) / gamma_neg)
        else:
            slope = q_log_q.mul_(y).mul_(-gamma_pos)
        slope.add_(u)
        # F from u, the last power over u itself unless backward reads u (nothing else does any more)
        factor = _power(u, gamma_pos, free, in_place=not keep_u and gamma_neg == gamma_pos)
        if gamma_pos != gamma_neg:
            factor = _by_side(y, factor, _power(u, gamma_neg, free, in_place=not keep_u and factor is not u),
                              u if keep_u else None)
        slope.mul_(factor)
        scaled = None
    else:  # the reference side's F and D = u F' (exact blends: y is 0 or 1), D = F on the linear piece
        factor, scaled = _factor_and_scaled_derivative(u, gamma_neg)
        if gamma_pos != gamma_neg:
            factor_pos, scaled_pos = _factor_and_scaled_derivative(u, gamma_pos)
            factor, scaled = _by_side(y, factor_pos, factor, u), _by_side(y, scaled_pos, scaled, u)
        slope = q_log_q.mul_(scaled).neg_().addcmul_(u, factor)  # u F - q log q D
    values = log_q.mul_(factor)
    for m in (u, factor, scaled):  # nothing reads them any more (u may be F and D too: once)
        if isinstance(m, Tensor) and not (keep_u and m is u) and all(m is not f for f in free):
            free.append(m)
    return values, slope


def _stats_from_sides(y: Tensor, ym: Tensor, mask: Optional[Tensor], side, gamma: float, free: list, axes, acc
                      ) -> Tuple[Tuple[Tensor, Tensor, Tensor], Optional[Tensor]]:
    """(TP, FP, FN) of :func:`~nnunet_losses.functional.overlap_stats` from ``q = sigmoid(z)`` and
    ``u = sigmoid(-z)`` (``p = q`` where ``y = 1``; ``p = u`` and ``1 - p = q`` where ``y = 0``): no sigmoid
    of their own. The FP and FN terms are ``u (1 - y)`` and ``y - TP`` (gamma 1), ``u^2 (1 - y)`` and ``u^2 y``
    (gamma 2): the exact sigmoid where the general formula rounds ``1 - p``. Also returns, for gamma 1, the map
    ``p (1 - p) = q u`` for backward (gamma 2 keeps ``u`` for its gradient, and takes ``u (1 - u)``)."""
    q, u = side[:2]
    work = q * ym
    tp = work.sum(axes, dtype=acc)
    if gamma == 1:
        fn = ym.sum(axes, dtype=acc) - tp
    else:  # (u y m)^2 = u^2 y m exactly for y, m in {0, 1}
        fn = torch.mul(u, ym, out=work).square_().sum(axes, dtype=acc)
    fp_map = torch.addcmul(u, u, y, value=-1, out=work)  # u (1 - y), exact
    if mask is not None:
        fp_map.mul_(mask)
    if gamma == 2:
        fp_map.square_()
    fp = fp_map.sum(axes, dtype=acc)
    free.append(fp_map)
    return (tp, fp, fn), (q * u if gamma == 1 else None)  # gamma 2: backward reads u anyway


def _power(u: Tensor, gamma: float, free: list, in_place: bool = False) -> float | Tensor:
    """``u ** gamma`` for ``u > POW_EPS`` (safe_pow's exact piece; a number for gamma 0, ``u`` for gamma 1),
    written over ``u`` (``in_place``) or into one of the ``free`` buffers if there is one."""
    if gamma == 0:
        return 1.0
    return power(u, gamma, out=u if in_place else _pop(free))


def _factor_and_scaled_derivative(u: Tensor, gamma: float) -> Tuple[float | Tensor, float | Tensor]:
    """``F = safe_pow(u, gamma)`` and ``D = u F'(u)`` from
    :func:`~nnunet_losses.functional.focal_factor_and_derivative` (the one formula of ``F'``): numbers for gamma 0,
    ``u`` itself for gamma 1, new maps otherwise (``D`` written over ``F'``)."""
    factor, derivative = focal_factor_and_derivative(u, gamma)
    if not isinstance(derivative, Tensor):  # gamma 0: D = 0; gamma 1: D = u
        return factor, (u if derivative == 1 else derivative * u if derivative != 0 else 0.0)
    return factor, derivative.mul_(u)


def _by_side(y: Tensor, pos: float | Tensor, neg: float | Tensor, shared: Optional[Tensor]) -> Tensor:
    """``pos`` where ``y = 1``, ``neg`` where ``y = 0``, exactly (one of the two products is 0), written into
    ``neg``'s map where it is ours (not ``shared``)."""
    if not isinstance(neg, Tensor) and neg == 0:
        return pos.mul_(y) if isinstance(pos, Tensor) and pos is not shared else torch.mul(y, pos)
    if isinstance(neg, Tensor):  # neg (1 - y) as neg - neg y
        out = neg.addcmul_(neg, y, value=-1) if neg is not shared else torch.addcmul(neg, neg, y, value=-1)
    else:
        out = torch.mul(y, -neg).add_(neg)
    return out.addcmul_(pos, y) if isinstance(pos, Tensor) else (out.add_(y, alpha=pos) if pos != 0 else out)


def focal_mean_from_sums(sums: Tuple[Tensor, Tensor], w_pos: float | Tensor, w_neg: float | Tensor,
                         mask: Optional[Tensor], logits: Tensor) -> Tensor:
    r"""Mean of :func:`~nnunet_losses.functional.binary_focal_nll` over the valid elements, from its sums:

    .. math:: -\frac{1}{N_{valid} R} \sum_{b,r} \big(w^+_r L^+_{b,r} + w^-_r L^-_{b,r}\big)

    (``w+``, ``w-`` numbers or one per region), the value :func:`~nnunet_losses.functional.masked_mean` gives
    for the per-element terms (no mask: their plain mean; a mask without valid voxel: 0).
    """
    l_pos, l_neg = sums
    total = _region_weighted(w_pos, l_pos)
    if l_neg is not None:  # None: both sides in l_pos, weighted alike (w+ = w-)
        total = total + _region_weighted(w_neg, l_neg)
    if mask is None:
        return -total.sum() / logits.numel()
    return -total.sum() / (mask.sum() * logits.shape[1]).clamp_min(1)


def _region_weighted(w: float | Tensor, sums: Tensor) -> Tensor:
    """``w * sums`` for ``(B, R)`` sums and a number or one weight per region; weight 1 is skipped."""
    if isinstance(w, Tensor):
        return w.to(device=sums.device, dtype=sums.dtype).view(1, -1) * sums
    return sums if w == 1 else w * sums

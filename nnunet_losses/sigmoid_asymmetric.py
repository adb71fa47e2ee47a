r"""The fused region pass of :mod:`nnunet_losses.sigmoid_fused` for asymmetric focal sides (Unified Focal's Eq. 19).

Foreground (``y = 1``) exponent 0, background (``y = 0``) exponent ``gamma > 0``: with ``q`` the probability of
the reference's side, ``u = 1 - q`` and the voxel mask ``m``, :func:`asymmetric_terms` returns the same numbers as
:func:`~nnunet_losses.sigmoid_fused.sigmoid_hard_terms` (``(B, R)`` each),

.. math:: L^+ = \sum_i m_i y_i \log q_i, \quad L^- = \sum_i m_i (1 - y_i)\, F(u_i) \log q_i,
          \quad F = \mathrm{safe\_pow}(\cdot, \gamma),

and the overlap statistics (FP/FN exponent 1 or 2), with about half the elementwise passes of the general fused
path: the foreground side needs no focal factor at all, and every map is written into one of four full-size
buffers besides the target (as the general path).

**One exponential.** With ``n = -z = x (1 - 2y)`` (one ``addcmul``, exact) and ``e = exp(n)``:
``q = 1 / (1 + e)``, ``u = e q`` and ``-log q = log1p(e)`` (softplus, as ``logsigmoid`` computes it): exact to
rounding for every ``n`` up to the ``q >= 1e-30`` limit of the fused path, with no rounding of ``1 - u``.

**The background factor from the FP map.** ``b = u (1 - y) m`` is ``p m`` where ``y = 0`` and 0 where ``y = 1``:
the FP term of the statistics (its square for DSC++'s exponent 2), and ``F0 = F(b)`` is the background's factor
where it counts and exactly 0 elsewhere (``F(0) = 0``), so ``L- = -sum F0 log1p(e)``. With DSC++'s exponent 2
the FP map is squared in its buffer (a fifth buffer costs more than the passes it saves) and ``b`` is taken from
``u`` again (for gamma 0.5 within the square root's lift: ``sqrt(lerp(u, 1, y) m) - y m``).

**Gradient** (``dp/dx = q u`` on both sides; ``d log q/dz = u``, ``du/dz = -q u``, ``dz/dx = -1`` where
``y = 0``):

* statistics, as in :mod:`~nnunet_losses.sigmoid_fused`: ``q u (g_FP + y (g_TP - g_FP - g_FN))`` (exponent 1),
  ``q u (y g_TP + u (2 g_FP - 2 y (g_FP + g_FN)))`` (exponent 2);
* ``L+``: ``y m u``; ``L-``: ``-H`` with ``H = F0 u + q log1p(e) D0``, ``D0 = b F'(b)`` (``F'`` as autograd takes it
  through ``safe_pow``, :func:`~nnunet_losses.functional.focal_factor_and_derivative`); ``D0 = gamma F0`` where no
  ``b`` lies on safe_pow's linear piece, so ``H = F0 (u + gamma q log1p(e))``.

So ``dL/dx = m (u ((stats' q-part) + y g_L+) - g_L- H)``: backward reads ``u`` and ``H`` only (three to seven
passes into a forward buffer), with ``q u`` taken as ``u (1 - u)``, the general formula's ``p (1 - p)`` rounded
alike. Differentiable once (double backward raises).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from nnunet_losses.functional import POW_EPS, focal_factor_and_derivative

#: ``n = -z`` above which ``q = sigmoid(z) < 1e-30``: the general formula's range (the fused path's limit)
NEG_SIDE_LOGIT_MAX = -math.log(1e-30)
#: ``n`` above which every ``u = sigmoid(n)`` is above safe_pow's ``POW_EPS`` by a margin far beyond rounding
_ABOVE_LINEAR_PIECE = math.log(POW_EPS) + 1.0


def negated_side_logits(logits: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``n = -z = x (1 - 2y)`` (``x - 2 x y`` in one pass: exact for ``y`` in {0, 1}), 0 on ignored voxels."""
    n = torch.addcmul(logits, logits, y, value=-2)
    return n.mul_(mask) if mask is not None else n


def asymmetric_terms(n: Tensor, logits: Tensor, y: Tensor, mask: Optional[Tensor], stats_gamma: Optional[float],
                     gamma: float, acc: torch.dtype) -> Optional[Tuple[Tensor, ...]]:
    """``(TP, FP, FN, L+, L-)`` (zeros for statistics not asked for) from ``n`` (:func:`negated_side_logits`, which
    this consumes); None where some ``q`` is below 1e-30 (the caller takes the general formula)."""
    low, high = torch.aminmax(n)
    if float(high) > NEG_SIDE_LOGIT_MAX:
        return None
    linear_piece = gamma < 1 and float(low) <= _ABOVE_LINEAR_PIECE
    return _AsymmetricFocalTerms.apply(logits, y, mask, n, stats_gamma, float(gamma), linear_piece, acc)


class _AsymmetricFocalTerms(torch.autograd.Function):
    """Forward and one-pass backward of :func:`asymmetric_terms` (derivation in the module docstring). Four
    full-size buffers (five with a mask: ``y m``); backward reads ``u`` and ``H`` (kept on ``ctx``, never
    modified) and writes into a forward buffer nothing reads any more (its first call only)."""

    @staticmethod
    def forward(ctx, logits, y, mask, n, stats_gamma, gamma, linear_piece, acc):
        axes = tuple(range(2, logits.ndim))
        ym = y if mask is None else y * mask
        e = n.exp_()
        q = torch.add(e, 1).reciprocal_()
        softplus = torch.log1p(e)  # -log q = log1p(e) now, while e exists
        u = e.mul_(q)
        zeros = [logits.new_zeros(()) for _ in range(3)]
        tp, fp, fn = zeros
        base = torch.mul(q, ym) if stats_gamma is not None else None
        if stats_gamma is not None:
            tp = base.sum(axes, dtype=acc)
            fn = (ym.sum(axes, dtype=acc) - tp if stats_gamma == 1
                  else torch.mul(u, ym, out=base).square_().sum(axes, dtype=acc))  # (u y m)^2 = u^2 y m
        base = _fp_map(u, y, mask, out=base)
        if stats_gamma == 1:
            fp = base.sum(axes, dtype=acc)
        elif stats_gamma == 2:  # squared in place (a fifth buffer costs more than the passes it saves);
            fp = base.square_().sum(axes, dtype=acc)  # the factor below takes b from u again
        factor, h = _background_factor_and_slope(base, stats_gamma != 2, u, q, softplus, y, mask, ym, gamma,
                                                 linear_piece)
        l_neg = factor.mul_(softplus).sum(axes, dtype=acc).neg_()  # sum F0 log q
        l_pos = softplus.mul_(ym).sum(axes, dtype=acc).neg_()  # sum y m log q
        ctx.stats_gamma = stats_gamma
        ctx.save_for_backward(y, mask)
        ctx.maps = (u, h)
        ctx.spare = [factor, softplus]
        return tp, fp, fn, l_pos, l_neg

    @staticmethod
    @once_differentiable  # the derivatives are written out without a graph: refuse double backward
    def backward(ctx, g_tp, g_fp, g_fn, g_pos, g_neg):
        y, mask = ctx.saved_tensors
        u, h = ctx.maps  # read only: backward may run again (retain_graph, gradcheck)
        out, ctx.spare = (ctx.spare[0] if ctx.spare else None), []  # the result is handed to autograd
        shape = y.shape[:2] + (1,) * (y.ndim - 2)
        # q u as u (1 - u): the general formula's p (1 - p), rounded alike (t (1 - u) written t - t u)
        if ctx.stats_gamma == 1:  # q (g_FP + y (g_TP - g_FP - g_FN))
            grad = torch.addcmul(g_fp.view(shape), y, (g_tp - g_fp - g_fn).view(shape), out=out)
            grad.addcmul_(grad, u, value=-1)
        elif ctx.stats_gamma == 2:  # q (y g_TP + u (2 g_FP - 2 y (g_FP + g_FN)))
            grad = torch.addcmul((2 * g_fp).view(shape), y, (-2 * (g_fp + g_fn)).view(shape), out=out)
            grad.mul_(u).addcmul_(y, g_tp.view(shape))
            grad.addcmul_(grad, u, value=-1)
        if ctx.stats_gamma is not None:
            grad.addcmul_(y, g_pos.view(shape))
        else:
            grad = torch.mul(y, g_pos.view(shape), out=out)
        grad.mul_(u).addcmul_(h, g_neg.view(shape), value=-1)  # u (... + y g_L+) - g_L- H
        if mask is not None:
            grad.mul_(mask)
        return grad, None, None, None, None, None, None, None


def _fp_map(u: Tensor, y: Tensor, mask: Optional[Tensor], out: Tensor) -> Tensor:
    """``b = u (1 - y) m`` (``u - u y``: exact for ``y`` in {0, 1}): ``p m`` where ``y = 0``, exactly 0 elsewhere."""
    base = torch.addcmul(u, u, y, value=-1, out=out)
    return base.mul_(mask) if mask is not None else base


def _background_factor_and_slope(base: Tensor, holds_b: bool, u: Tensor, q: Tensor, softplus: Tensor, y: Tensor,
                                 mask: Optional[Tensor], ym: Tensor, gamma: float, linear_piece: bool
                                 ) -> Tuple[Tensor, Tensor]:
    """``F0 = safe_pow(b, gamma)`` (written over ``base``) and ``H = F0 u + q log1p(e) b F'(b)`` (written over
    ``q``, which nothing reads after): ``gamma F0`` for ``b F'`` unless some ``b`` may lie on safe_pow's linear
    piece (``linear_piece``). ``base`` holds ``b`` (``holds_b``) or is a spare buffer (``b`` taken from ``u``)."""
    if not holds_b and not linear_piece and gamma == 0.5:
        factor = _root_from_u(u, y, mask, ym, out=base)
    else:
        if not holds_b:
            base = _fp_map(u, y, mask, out=base)
        if linear_piece:  # b F'(b) from the one formula of F' (gamma F0 above POW_EPS, F0 on the linear piece)
            factor, derivative = focal_factor_and_derivative(base, gamma)
            return factor, q.mul_(softplus).mul_(derivative.mul_(base)).addcmul_(u, factor)
        if gamma == 0.5:  # sqrt of an exact 0 takes a ~10x slower path on this CPU: the foreground's b = 0 lifted
            factor = base.add_(y).sqrt_().sub_(y)  # to 1 and back (sqrt(1) - 1 = 0 exactly; + 0 elsewhere)
        else:
            factor = power(base, gamma, out=base)
    return factor, torch.addcmul(u, q, softplus, value=gamma, out=q).mul_(factor)  # F0 (u + gamma q log1p(e))


def _root_from_u(u: Tensor, y: Tensor, mask: Optional[Tensor], ym: Tensor, out: Tensor) -> Tensor:
    """``sqrt(b)``, ``b = u (1 - y) m``, as ``sqrt(lerp(u, 1, y) m) - y m``: one pass for ``b`` and the lift below
    (lerp returns ``u`` and exactly 1 for ``y`` = 0 and 1), so that the foreground's ``sqrt(1) - 1`` is exactly 0
    without a square root of an exact 0 (a ~10x slower path on this CPU)."""
    lifted = torch.lerp(u, u.new_ones(()), y, out=out)
    return (lifted.mul_(mask) if mask is not None else lifted).sqrt_().sub_(ym)


def power(x: Tensor, gamma: float, out: Optional[Tensor] = None) -> Tensor:
    """``x ** gamma`` written into ``out`` (``out=x``: over ``x``; None: a new tensor); ``x`` itself for gamma 1.
    The square and the square root as the cheap kernels they are: torch's general power is ~15x a product."""
    if gamma == 1:
        return x
    if gamma == 2:
        return torch.mul(x, x, out=out)
    return torch.sqrt(x, out=out) if gamma == 0.5 else torch.pow(x, gamma, out=out)

r"""One softmax pass for everything a loss needs from (logits, label map): overlap statistics and the voxel NLL.

A compound loss on nnU-Net's label maps (Dice + CE, Combo, Unified Focal and their ++ forms) needs, from one
``p = softmax(x)`` and the one-hot ``y`` of the label map (``mask`` m: 1 valid, 0 ignored):

* the per-(sample, channel) statistics of :func:`~nnunet_losses.functional.overlap_stats` on the channels
  ``c >= c0`` (``TP = sum p y m``, ``FP = sum (p (1-y))^gamma m``, ``FN = sum ((1-p) y)^gamma m``);
* the mean over valid voxels of one voxel NLL: the categorical focal NLL
  :func:`~nnunet_losses.functional.categorical_focal_nll` (CE, weighted CE, focal, asymmetric focal) or the
  one-vs-rest NLL :func:`~nnunet_losses.functional.binary_focal_nll` of Combo (gamma 0, channels ``c >= c0``).

Autograd through the general formulas keeps a dozen full-size tensors and runs a softmax backward per term.
:func:`softmax_label_terms` computes them from one softmax without a graph and maps the gradients of those few
numbers back to the logits in one pass (:class:`_SoftmaxLabelTerms`). The losses combine the returned numbers
with ordinary autograd, so every formula still lives in one place (functional.py); this is its gradient written
out. Derivation, for incoming gradients ``g_tp, g_fp, g_fn`` (shape ``(B, K)``) and ``G`` (the NLL mean):

* statistics, per element of channel ``c >= c0``, ``T_c = dL/dp_c = m (y (g_tp - g_fn) + (1-y) g_fp)`` for
  gamma = 1; for gamma > 1 with ``q = |y - p|``: ``T_c = m (y g_tp + gamma q^(gamma-1) ((1-y) g_fp - y g_fn))``.
  Through the softmax: ``dx_k = p_k (T_k - sum_{j >= c0} p_j T_j)`` (``T_k = 0`` for ``k < c0``);
* categorical NLL: ``dx = D (y - p) G m / N`` (``D`` of :func:`~nnunet_losses.functional.hard_categorical_focal_terms`);
* one-vs-rest NLL: :func:`~nnunet_losses.functional.one_vs_rest_grad` with ``a = -w G m / (N K)``;

``N`` the number of valid voxels. The sum of the parts is the gradient. Label maps only: ``onehot`` and ``mask``
hold 0 and 1 (soft targets take the general path). Differentiable once (double backward raises). Few
logits-sized buffers are kept or made (here memory is time: see README "Performance"): sums are formed one class
at a time, DSC++'s ``2(y - p)`` and the one-vs-rest ``1 - p_c`` are recomputed in backward, and the categorical
NLL alone writes its gradient over the saved softmax.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from nnunet_losses import functional as Fn


class CategoricalNLL(NamedTuple):
    """:func:`~nnunet_losses.functional.categorical_focal_nll` with these per-class weights and gammas (None: 1, 0)."""
    class_weights: Optional[Tensor] = None
    class_gammas: Optional[Tuple[float, ...]] = None


class OneVsRestNLL(NamedTuple):
    """:func:`~nnunet_losses.functional.binary_focal_nll` (gamma 0) one-vs-rest on the statistics' channels."""
    w_pos: float = 1.0
    w_neg: float = 1.0


VoxelNLL = Union[CategoricalNLL, OneVsRestNLL]


class LabelTerms(NamedTuple):
    """``stats``: (TP, FP, FN), each ``(B, K)``, or None; ``nll``: the NLL mean over valid voxels, or None."""
    stats: Optional[Tuple[Tensor, Tensor, Tensor]]
    nll: Optional[Tensor]


#: Below this probability (p_t of the categorical NLL, p_c or 1 - p_c of the one-vs-rest NLL) the logarithm would
#: lose precision (subnormal) or be -inf: :func:`softmax_label_terms` returns None and the caller takes the general
#: log-domain formula (logit gaps of ~70 in float32).
MIN_PROBABILITY = 1e-30


def softmax_label_terms(logits: Tensor, onehot: Optional[Tensor], mask: Optional[Tensor], first_channel: int,
                        gamma: Optional[float] = None, nll: Optional[VoxelNLL] = None,
                        labels: Optional[Tensor] = None) -> Optional[LabelTerms]:
    """Statistics (``gamma`` not None: DSC++'s FP/FN exponent, 1 or > 1) and/or the NLL mean of ``softmax(logits)``.

    ``onehot`` is the one-hot label map ``(B, C, *spatial)`` (0/1, logits' dtype), ``mask`` ``(B, 1, *spatial)``
    0/1 or None. The categorical NLL alone may be given the label map ``labels`` ``(B, 1, *spatial)`` (ignored
    voxels 0) instead of ``onehot`` (None): it then reads one class at a time (``labels == c``) and the
    ``(B, C, ...)`` one-hot map is never built. Returns None where the general path must be taken: ``gamma < 1``
    (its power needs :func:`~nnunet_losses.functional.safe_pow`'s linear piece), or a probability the NLL takes
    the logarithm of is below :data:`MIN_PROBABILITY` at a valid voxel (ignored voxels count with probability 1).
    """
    if gamma is not None and gamma < 1:
        return None
    with torch.no_grad():
        state = _LabelPass(logits, onehot, mask, first_channel, gamma, nll, logits.requires_grad, labels)
    if state.outputs is None:
        return None
    outputs = _SoftmaxLabelTerms.apply(logits, state)
    stats = tuple(outputs[:3]) if gamma is not None else None
    return LabelTerms(stats, outputs[-1] if nll is not None else None)


class _LabelPass:
    """The forward pass without autograd: the outputs (None if saturated) and what the backward pass needs."""

    def __init__(self, logits, onehot, mask, c0, gamma, nll, need_grad, labels=None):
        if onehot is None and (gamma is not None or not isinstance(nll, CategoricalNLL) or labels is None):
            raise ValueError("only the categorical NLL alone can be computed from the label map; pass the one-hot map")
        self.p = p = torch.softmax(logits, 1)
        self.onehot, self.labels, self.mask, self.c0, self.gamma, self.nll = onehot, labels, mask, c0, gamma, nll
        self.need_grad, self.outputs, self.dtype = need_grad, None, p.dtype
        # the categorical NLL alone, from the label map: its backward needs p - y only, so the forward pass leaves
        # p - y in p (the class indicator is read once, not again in backward)
        self.p_minus_y = onehot is None and need_grad
        tp = self._tp_and_p_t() if gamma is not None or isinstance(nll, CategoricalNLL) else None
        if isinstance(nll, CategoricalNLL):
            self.p_t_min = float(self.p_t.amin())  # amin: no bool tensor
            if self.p_t_min < MIN_PROBABILITY:
                return
        if isinstance(nll, OneVsRestNLL):
            self.q = self._one_vs_rest_q()
            if bool(self.q.amin() < MIN_PROBABILITY):
                return
        outputs = self._stats(tp) if gamma is not None else ()
        self.outputs = outputs + ((self._nll(),) if nll is not None else ())

    def _indicator(self, c: int, out: Optional[Tensor] = None) -> Tensor:
        """The ``(B, 1, *spatial)`` 0/1 map of class ``c``: a one-hot channel, or ``labels == c`` (written into
        ``out``, or a new tensor)."""
        if self.onehot is not None:
            return self.onehot[:, c:c + 1]
        if out is None:
            out = torch.empty(self.labels.shape, dtype=self.dtype, device=self.labels.device)
        return torch.eq(self.labels, c, out=out)

    def _tp_and_p_t(self) -> Optional[Tensor]:
        """``TP = sum p y m`` of the statistics' channels (None without statistics) and, for the categorical NLL,
        ``p_t = sum_c p_c y_c`` (``self.p_t``): channel by channel, ``(B, 1, *spatial)`` temporaries only."""
        p, m, c0 = self.p, self.mask, self.c0
        categorical = isinstance(self.nll, CategoricalNLL)
        columns, p_t, y_c, prod = [], None, None, None
        for c in range(0 if categorical else c0, p.shape[1]):
            y_c = self._indicator(c, out=y_c)  # one buffer for every class of the label map
            prod = torch.mul(p[:, c:c + 1], y_c, out=prod)
            if c >= c0 and self.gamma is not None:  # p (y m) = (p y) m exactly: y, m are 0/1
                columns.append(_spatial_sum(prod if m is None else prod * m))
            if categorical:  # one of the terms is non-zero: the sum is exact in any order
                p_t, prod = (prod, None) if p_t is None else (p_t.add_(prod), prod)
            if self.p_minus_y:
                p[:, c:c + 1].sub_(y_c)
        self.p_t = p_t if p_t is None else self._one_where_ignored(p_t)
        return torch.cat(columns, 1) if columns else None

    def _one_vs_rest_q(self) -> Tensor:
        """:func:`~nnunet_losses.functional.one_vs_rest_reference_probability`, 1 at ignored voxels."""
        return self._one_where_ignored(Fn.one_vs_rest_reference_probability(self.p, self.onehot, self.c0))

    def _one_where_ignored(self, prob: Tensor) -> Tensor:
        """``prob`` (ours, in place) with 1 at ignored voxels: their logarithm is 0, not -inf (0 * -inf would be
        NaN in the masked mean), and a probability there, however small, does not send the batch to the general
        path. Exact: ``prob * m + (1 - m)`` for ``m`` in {0, 1}."""
        return prob if self.mask is None else prob.mul_(self.mask).add_(1 - self.mask)

    def _stats(self, tp: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """:func:`~nnunet_losses.functional.overlap_stats` for 0/1 ``y``, ``m`` (the same sums, to rounding)."""
        p, y, m, gamma = self.p[:, self.c0:], self.onehot[:, self.c0:], self.mask, self.gamma
        if gamma == 1:
            return tp, _channel_sums(p, m) - tp, _channel_sums(y, m) - tp
        r = y - p  # 1 - p where y = 1, -p where y = 0: q = |r| is the FN (y = 1) or FP (y = 0) base
        if gamma == 2:  # q^2 = r r; its derivative 2q is signed 2r, recomputed in backward (one subtraction; the
            q_pow, self.slope = r.mul_(r), None  # 1/C of the logits' memory less until then)
        else:
            q = r.abs_()
            q_pow, self.slope = q.pow(gamma), (q.pow_(gamma - 1) if self.need_grad else None)
        fn = _channel_sums(q_pow, m, y)
        q_pow.addcmul_(q_pow, y, value=-1)  # q^gamma (1 - y), exactly: q^gamma - q^gamma = 0 where y = 1
        return tp, _channel_sums(q_pow, m), fn

    def _nll(self) -> Tensor:
        """The voxel NLL's mean over valid voxels (:func:`~nnunet_losses.functional.masked_mean`)."""
        if isinstance(self.nll, CategoricalNLL) and self.nll == (None, None):  # plain CE: -sum log p_t / N, and the slope -1 of every voxel
            self.slope_nll = -1.0
            self.count = self.p_t.numel() if self.mask is None else self.mask.sum().clamp_min(1)
            return -Fn.sum_of_logs(self.p_t, self.p_t_min, in_place=True) / self.count  # p_t: not read again
        if isinstance(self.nll, CategoricalNLL):
            value, self.slope_nll = Fn.hard_categorical_focal_terms(self._indicator, self.p_t, *self.nll,
                                                                    self.need_grad)
        else:
            y = self.onehot[:, self.c0:]
            self.w = Fn._blend(y, 1 - y, self.nll.w_pos, self.nll.w_neg)
            value = Fn._weighted_neg(self.w, self.q.log())  # -w log p_c (y = 1) or -w log(1 - p_c) (y = 0)
            self.q = None  # recomputed in backward: a few additions, and 1/C of the logits' memory less meanwhile
        # masked_mean's denominator: valid voxels times channels, at least 1
        self.count = value.numel() if self.mask is None else (self.mask.sum() * value.shape[1]).clamp_min(1)
        return Fn.masked_mean(value, self.mask)

    def backward(self, grads) -> Tensor:
        """Gradient w.r.t. the logits for the incoming gradients of the outputs (see the module docstring).

        The statistics' part is written straight into the gradient, the NLL's added channel by channel: besides
        the gradient only ``(B, 1, *spatial)`` temporaries (peak memory as autograd's softmax backward).
        """
        if self.gamma is None:
            return self._nll_grad(grads[-1], None)
        c0 = self.c0
        grad = torch.empty_like(self.p)
        p, t = self.p[:, c0:], grad[:, c0:]
        self._stats_dp(*grads[:3], out=t)
        s = p[:, :1] * t[:, :1]  # sum_j p_j T_j, channel by channel: no (B, K, ...) temporary
        for j in range(1, t.shape[1]):
            s.addcmul_(p[:, j:j + 1], t[:, j:j + 1])
        t.sub_(s).mul_(p)  # p_k (T_k - s) on the statistics' channels, -p_k s on the others
        if c0 > 0:
            torch.mul(self.p[:, :c0], s.neg_(), out=grad[:, :c0])
        return self._nll_grad(grads[-1], grad) if self.nll is not None else grad

    def _stats_dp(self, g_tp: Tensor, g_fp: Tensor, g_fn: Tensor, out: Tensor) -> None:
        """``T = dL/dp`` on the statistics' channels, written into ``out`` ``(B, K, *spatial)``."""
        y, m = self.onehot[:, self.c0:], self.mask
        shape = g_tp.shape + (1,) * (y.ndim - 2)
        g_tp, g_fp, g_fn = g_tp.view(shape), g_fp.view(shape), g_fn.view(shape)
        if self.gamma == 1:  # T = g_fp + y (g_tp - g_fn - g_fp): g_fp where y = 0, g_tp - g_fn where y = 1
            t = torch.mul(y, g_tp - g_fn - g_fp, out=out).add_(g_fp)  # mul + add: 2x faster than addcmul here
        elif self.gamma == 2:  # slope r = y - p; 2q = 2r (y = 1), -2r (y = 0): T = y g_tp - 2r (g_fp + y (g_fn - g_fp))
            t = torch.mul(y, -2 * (g_fn - g_fp), out=out).add_(-2 * g_fp)
        else:  # slope q^(gamma-1): T = y g_tp + gamma q^(gamma-1) (g_fp + y (-g_fn - g_fp))
            t = torch.mul(y, self.gamma * (-g_fn - g_fp), out=out).add_(self.gamma * g_fp)
        if self.gamma != 1:
            t.mul_(torch.sub(y, self.p[:, self.c0:]) if self.gamma == 2 else self.slope).addcmul_(y, g_tp)
        if m is not None:
            t.mul_(m)

    def _nll_grad(self, g_nll: Tensor, grad: Optional[Tensor]) -> Tensor:
        """Gradient of the NLL mean w.r.t. the logits, added to ``grad`` (or a new ``(B, C, *spatial)`` tensor)."""
        g = g_nll / self.count  # the mean's backward: G / N on every valid element
        if isinstance(self.nll, CategoricalNLL):
            e = self.slope_nll * g  # a 0-d tensor for plain CE (the same slope everywhere)
            e = e if self.mask is None else e * self.mask
            if self.p_minus_y:  # (y - p) e = (p - y) (-e), p - y left in p by the forward pass
                grad, self.p = self.p, None
                return grad.mul_(-e)
            if grad is None:  # (y - p) e written over p (-p + y == y - p exactly): no new logits-sized buffer, so
                # that a training step frees no more than torch's CE (glibc returns a larger free heap top to the
                # OS, and every page of the next step's allocations is then faulted in again: ~4 ms per step here)
                grad, self.p = self.p.neg_(), None
                if self.onehot is not None:
                    return grad.add_(self.onehot).mul_(e)
                for k in range(grad.shape[1]):  # + y_k, class by class from the label map
                    grad[:, k:k + 1].add_(self._indicator(k))
                return grad.mul_(e)
            for k in range(grad.shape[1]):  # (y_k - p_k) e, channel by channel
                grad[:, k:k + 1].add_(torch.sub(self._indicator(k), self.p[:, k:k + 1]).mul_(e))
            return grad
        y = self.onehot[:, self.c0:]
        a = self.w * -g if isinstance(self.w, Tensor) else -self.w * g  # a = -w G / N; a 0-d tensor if w is one
        a = a * self.mask if self.mask is not None else a
        return Fn.one_vs_rest_grad(a, y, self.p, self._one_vs_rest_q(), self.c0, out=grad, consume_q=True)


def _spatial_sum(x: Tensor) -> Tensor:
    return x.sum(tuple(range(2, x.ndim)), dtype=x.dtype)


def _channel_sums(x: Tensor, mask: Optional[Tensor], y: Optional[Tensor] = None) -> Tensor:
    """``sum x m`` (``sum x y m``) over the spatial axes per sample and channel, ``(B, K)``; the products are
    formed channel by channel (``(B, 1, *spatial)`` temporaries, not a ``(B, K, ...)`` one)."""
    if mask is None and y is None:
        return _spatial_sum(x)
    columns = []
    for c in range(x.shape[1]):
        prod = x[:, c:c + 1] * (mask if y is None else y[:, c:c + 1])
        if y is not None and mask is not None:
            prod.mul_(mask)
        columns.append(_spatial_sum(prod))
    return torch.cat(columns, 1)


class _SoftmaxLabelTerms(torch.autograd.Function):
    """Returns the outputs :class:`_LabelPass` computed; backward is :meth:`_LabelPass.backward`."""

    @staticmethod
    def forward(ctx, logits: Tensor, state: _LabelPass):
        ctx.state = state
        ctx.save_for_backward(logits)  # no copy; only read if the softmax was consumed by an earlier backward
        outputs, state.outputs = state.outputs, None  # the state must not hold the outputs (a reference cycle)
        return outputs

    @staticmethod
    @once_differentiable  # the derivatives are written out without a graph: refuse double backward
    def backward(ctx, *grads):
        if ctx.state.p is None:  # a second backward (retain_graph): the first one wrote its gradient over p
            ctx.state.p, ctx.state.p_minus_y = torch.softmax(ctx.saved_tensors[0], 1), False
        return ctx.state.backward(grads), None

"""Functional core: every loss formula of the library lives in exactly one function here.

Conventions (shared by all functions):

* ``probs`` / ``onehot`` / ``mask`` have shape ``(B, K, *spatial)``; ``mask`` is ``(B, 1, *spatial)`` with 1 for
  voxels that count and 0 for ignored voxels, or ``None`` when every voxel counts.
* "Statistics" are per sample and channel, shape ``(B, K)``, reduced over the spatial axes. They are summed in at
  least float32 (``sum(dtype=...)``), because fp16 sums overflow at 65504 -- a single 64^3 patch already has more
  voxels than that.
* Overlap scores are computed from statistics (TP, FP, FN); losses are ``1 - score`` so that values compare with
  the papers and other libraries (a constant offset does not change gradients).

The wrappers in :mod:`nnunet_losses.losses` only choose parameters and channels; they contain no formula.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Below this value ``x ** e`` (``e < 1``) is continued linearly; see :func:`safe_pow`.
POW_EPS = 1e-8
#: Denominators are clamped to this value so that 0/0 (no voxel of a class, smooth=0) gives 0, not NaN.
DENOM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# numerics
# ----------------------------------------------------------------------------------------------------------------
def safe_pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x >= 0`` with a finite derivative everywhere.

    For ``exponent < 1`` the derivative ``e * x**(e-1)`` is infinite at ``x = 0`` (DSC++ with gamma < 1 on a
    confident prediction, Focal Tversky at a perfect prediction). The DSC++ authors clamp ``p`` and ``y`` to
    ``[eps, 1-eps]``, which adds ``eps**gamma`` to *every* voxel's FP/FN term (for gamma=0.5 and 1e7 background
    voxels that is a visible bias). We instead keep the exact power for ``x >= POW_EPS`` and continue it linearly
    below (value ``x * POW_EPS**(e-1)``): the value is exactly 0 at 0 and continuous at ``POW_EPS``. The
    derivative is ``e * x**(e-1)`` above ``POW_EPS`` and ``POW_EPS**(e-1)`` on ``(0, POW_EPS]``, so it is bounded
    by ``POW_EPS**(e-1)``; at ``x = 0`` it is 0 (the clamp that absorbs negative rounding noise meets the
    linear piece there, and 0 is a subgradient of that kink).
    """
    if exponent == 1:
        return x
    if exponent == 0:
        return torch.ones_like(x)
    x = x.clamp_min(0)  # 1 - TI can be -1e-8 from rounding; a fractional power of it would be NaN
    if exponent > 1:
        return x ** exponent
    exact = x.clamp_min(POW_EPS) ** exponent  # clamped so that the unselected branch has a finite gradient
    # at x == POW_EPS the linear piece is taken: the clamp above would give the exact piece a zero derivative there
    return torch.where(x > POW_EPS, exact, x * (POW_EPS ** (exponent - 1)))


def log_one_minus_softmax(logits: Tensor) -> Tensor:
    """``log(1 - softmax(logits))`` along dim 1, exact for extreme logits.

    ``log1p(-p)`` is ``-inf`` once ``p`` rounds to 1 (logit gaps of ~17 in float32), but the true value is
    ``logsumexp_{k != c} l_k - logsumexp_k l_k``, which we compute class by class (C is small in segmentation).
    """
    lse = torch.logsumexp(logits, dim=1, keepdim=True)
    out = []
    for c in range(logits.shape[1]):
        others = torch.cat([logits[:, :c], logits[:, c + 1:]], dim=1)
        out.append(torch.logsumexp(others, dim=1, keepdim=True))
    return torch.cat(out, dim=1) - lse


def sum_of_logs(prob: Tensor, smallest: float, start_dim: int = 0, in_place: bool = False) -> Tensor:
    """``sum log prob`` over the dimensions from ``start_dim`` on (float32 or float64 accumulation), as the sum of
    the logarithms of products of up to 16 values: ``log a + log b = log(a b)``, and on this CPU a logarithm
    costs ~6 multiplications. ``smallest`` is ``prob``'s minimum (values <= 1): the products are formed only while
    they stay >= 2^26 times the smallest normal number (2^-100 in float32), far above the subnormals, so each is exact to k roundings
    and its logarithm to ~k ulp of 1 -- rounding, as the sum's own. ``prob`` is overwritten if ``in_place`` (no
    new buffer: here a fresh one costs page faults, and peak memory), else not modified."""
    floor = math.log2(torch.finfo(prob.dtype).tiny) + 26  # 2^-100 in float32, 2^-996 in float64
    flat, per_product = prob.flatten(start_dim), 1
    while per_product < 16 and flat.shape[-1] % 2 == 0 and 2 * per_product * math.log2(smallest) >= floor:
        half = flat.shape[-1] // 2
        # the first product is a new tensor unless prob is ours to overwrite; the others are written over it
        flat = (torch.mul(flat[..., :half], flat[..., half:]) if per_product == 1 and not in_place
                else flat[..., :half].mul_(flat[..., half:]))
        per_product *= 2
    flat = flat.log_() if in_place or per_product > 1 else flat.log()  # in place where the buffer is ours
    return flat.sum(-1, dtype=torch.float64 if prob.dtype == torch.float64 else torch.float32)


def masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``values`` over all elements whose voxel is not ignored; 0 (with zero gradient) if all are ignored.

    ``values`` is ``(B, K, *spatial)``; every channel of a valid voxel counts.
    """
    if mask is None:
        return values.mean()
    total = (values * mask).sum(dtype=torch.float32 if values.dtype != torch.float64 else torch.float64)
    count = mask.sum() * values.shape[1]
    return total / count.clamp_min(1)


# ----------------------------------------------------------------------------------------------------------------
# per-voxel (distribution-based) terms
# ----------------------------------------------------------------------------------------------------------------
def focal_log_likelihood(log_q: Tensor, gamma: float) -> Tensor:
    r""":math:`(1 - q)^\gamma \log q` from log-probabilities ``log_q`` (``gamma = 0``: ``log q``).

    ``1 - q`` is ``-expm1(log q)``, exact near ``q = 1`` (unlike ``1 - exp(log q)``); the power is
    :func:`safe_pow`'s, finite in value and derivative for ``gamma < 1`` too.
    """
    if gamma == 0:
        return log_q
    return log_q * safe_pow(-torch.expm1(log_q), gamma)


def categorical_focal_nll(log_probs: Tensor, onehot: Tensor, class_weights: Optional[Tensor] = None,
                          class_gammas: Optional[Sequence[float]] = None, hard: bool = False) -> Tensor:
    r"""Per-voxel weighted focal negative log-likelihood of a softmax output, shape ``(B, 1, *spatial)``.

    .. math:: \ell_i = -\sum_c w_c\, y_{i,c}\, (1 - p_{i,c})^{\gamma_c} \log p_{i,c}

    * cross-entropy: ``w = 1, gamma = 0``;   weighted CE (Bertels et al.): ``w_c = 1 / (C p_c)``;
    * Focal (Lin et al., Yeung et al. Eq. 2): ``w = alpha_c, gamma_c = gamma``;
    * asymmetric focal (Unified Focal, Eq. 19): background ``w = 1-delta, gamma``; foreground ``w = delta, 0``.

    ``hard=True`` promises a one-hot ``onehot`` (exactly one 1 per voxel, as label maps give): the focal factor is
    then computed for the reference class's ``log p_t = sum_c y_c log p_c`` only, not for all C channels.
    """
    gammas = None if class_gammas is None else [float(g) for g in class_gammas]
    if hard and gammas is not None:
        log_p_t = (onehot * log_probs).sum(1, keepdim=True)
        distinct = sorted(set(gammas))
        terms = None
        for g in distinct:  # one focal factor per distinct gamma (background / foreground: two)
            term = focal_log_likelihood(log_p_t, g)
            if len(distinct) > 1:  # ... kept where the reference class has this gamma
                term = term * onehot[:, [c for c, gc in enumerate(gammas) if gc == g]].sum(1, keepdim=True)
            terms = term if terms is None else terms + term
        if class_weights is not None:
            terms = terms * (onehot * _channel_weight(class_weights, onehot)).sum(1, keepdim=True)
        return -terms
    terms = -onehot * log_probs
    if gammas is not None:
        if len(set(gammas)) == 1:
            terms = focal_log_likelihood(log_probs, gammas[0]) * -onehot
        else:
            terms = torch.stack([focal_log_likelihood(log_probs[:, c], g) for c, g in enumerate(gammas)], 1) * -onehot
    if class_weights is not None:
        terms = terms * _channel_weight(class_weights, terms)
    return terms.sum(1, keepdim=True)


#: Below this reference-class probability the fused categorical path falls back to log_softmax (log of a
#: subnormal or zero probability would lose precision or be -inf; log_softmax is exact there).
_P_T_MIN = 1e-30


def categorical_focal_nll_hard(logits: Tensor, onehot: Tensor, class_weights: Optional[Tensor] = None,
                               class_gammas: Optional[Sequence[float]] = None) -> Tensor:
    """:func:`categorical_focal_nll` of ``softmax(logits)`` for one-hot ``onehot`` (label maps), shape ``(B, 1, ...)``.

    The reference class's probability ``p_t = sum_c y_c p_c`` comes from one softmax, ``log p_t`` from its
    logarithm, and :class:`_HardCategoricalFocalNLL` writes the gradient ``G D (y - p)`` out (``D`` the derivative
    of the focal term with respect to ``log p_t``): the general formula's value and gradient to rounding, with
    one softmax pass and no log-softmax backward -- as fast as ``torch.nn.functional.cross_entropy``. Where some
    ``p_t`` is below ``1e-30`` (a confidently wrong voxel, logit gap ~70) the general formula is used.
    """
    with torch.no_grad():
        p = torch.softmax(logits, 1)
        p_t = (p * onehot).sum(1, keepdim=True)
    if bool(p_t.amin() < _P_T_MIN):  # amin: one reduction, no bool tensor (~15x cheaper than (p_t < m).any())
        return categorical_focal_nll(torch.log_softmax(logits, 1), onehot, class_weights, class_gammas, hard=True)
    return _HardCategoricalFocalNLL.apply(logits, onehot, p, p_t, class_weights,
                                          None if class_gammas is None else tuple(float(g) for g in class_gammas))


def hard_categorical_focal_terms(indicator: Callable[[int], Tensor], p_t: Tensor, class_weights: Optional[Tensor],
                                 class_gammas: Optional[Tuple[float, ...]], need_slope: bool
                                 ) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Per-voxel value ``\ell = -w_t F(u) \log p_t`` and slope ``D`` with ``d\ell/dx = D (y - p)``, no graph.

    Per voxel ``l = log p_t``, ``u = 1 - p_t = -expm1(l)``, ``F = safe_pow(u, gamma_t)``. With ``du/dl = -p_t``:
    ``D = d\ell/dl = -w_t (F - p_t\, l\, F'(u))`` (``F'`` as autograd takes it through :func:`safe_pow`), and
    ``dl/dx_k = y_k - p_k``. ``p_t >= 1e-30`` (the callers check). The slope is None unless ``need_slope``, and a
    plain number where it is the same for every voxel (unweighted CE). ``indicator(c)`` is the
    ``(B, 1, *spatial)`` 0/1 map of class ``c`` (a one-hot channel).
    """
    log_p_t = p_t.log()
    factor, derivative = 1.0, 0.0
    if class_gammas is not None:
        u = torch.expm1(log_p_t).neg_()
        distinct = sorted(set(class_gammas))
        if len(distinct) == 1:
            factor, derivative = focal_factor_and_derivative(u, distinct[0])
        else:  # one focal factor per distinct gamma, kept where the class has it (exact: y is 0/1, one term each)
            factor = derivative = None
            for g in distinct:
                f_g, d_g = focal_factor_and_derivative(u, g)
                has_g = _sum_of_indicators(indicator, [c for c, gc in enumerate(class_gammas) if gc == g])
                factor = _add_product(factor, has_g, f_g)
                derivative = _add_product(derivative, has_g, d_g)
                del f_g, d_g, has_g  # free before the next gamma's temporaries (peak memory)
            derivative = 0.0 if derivative is None else derivative
        del u
    w_t = 1.0 if class_weights is None else _sum_of_indicators(indicator, range(len(class_weights)),
                                                               class_weights.tolist())
    value = _weighted_neg(w_t, log_p_t * factor if isinstance(factor, Tensor) else log_p_t.clone())
    if not need_slope:
        return value, None
    if isinstance(derivative, Tensor) or derivative != 0:  # D / -w_t = F - p_t l F'
        d = torch.mul(p_t, log_p_t).mul_(derivative).neg_().add_(factor)
    elif isinstance(factor, Tensor):
        d = factor.clone()
    elif not isinstance(w_t, Tensor):  # plain CE: D = -1 everywhere, a number (no voxel map)
        return value, -(w_t * factor)
    else:
        d = _as_tensor(factor, p_t)
    return value, _weighted_neg(w_t, d)


def _add_product(out: Optional[Tensor], a: Tensor, b: float | Tensor) -> Optional[Tensor]:
    """``out + a * b``, in place on ``out`` (ours); ``out = None`` is 0 (then ``a`` itself may be returned for
    ``b = 1``, and None for ``b = 0``)."""
    if out is None:
        if isinstance(b, Tensor) or b not in (0, 1):
            return a * b
        return a if b == 1 else None
    if isinstance(b, Tensor):
        return out.addcmul_(a, b)
    return out.add_(a, alpha=b) if b != 0 else out


def _sum_of_indicators(indicator: Callable[[int], Tensor], channels: Sequence[int],
                       weights: Optional[Sequence[float]] = None) -> Tensor:
    """``sum_{c in channels} w_c y_c`` as a ``(B, 1, *spatial)`` tensor, class by class (no ``(B, C, ...)``
    temporary, no index copy); for one-hot ``y`` every product is exact and at most one term is non-zero."""
    out = None
    for c in channels:
        w = 1.0 if weights is None else weights[c]
        y_c = indicator(c)
        if out is None:
            out = y_c * w if w != 1 else y_c.clone()
        else:
            out.add_(y_c, alpha=w)
    return out


class _HardCategoricalFocalNLL(torch.autograd.Function):
    """Value and vector-Jacobian product of :func:`categorical_focal_nll_hard` (see
    :func:`hard_categorical_focal_terms`): the gradient for an incoming ``G`` is ``G D (y - p)``."""

    @staticmethod
    def forward(ctx, logits, onehot, p, p_t, class_weights, class_gammas):
        value, slope = hard_categorical_focal_terms(lambda c: onehot[:, c:c + 1], p_t, class_weights, class_gammas,
                                                    ctx.needs_input_grad[0])
        if slope is not None:
            ctx.save_for_backward(onehot, p, _as_tensor(slope, p_t))
        return value

    @staticmethod
    @once_differentiable  # the derivatives are written out without a graph: refuse double backward
    def backward(ctx, grad_output):
        onehot, p, d = ctx.saved_tensors
        return torch.sub(onehot, p).mul_(d * grad_output), None, None, None, None, None


def _as_tensor(v: float | Tensor, like: Tensor) -> Tensor:
    return v.clone() if isinstance(v, Tensor) else torch.full_like(like, v)


def binary_focal_nll(log_p: Tensor, log_1mp: Tensor, y: Tensor, w_pos: float | Tensor = 1.0,
                     w_neg: float | Tensor = 1.0, gamma_pos: float = 0.0, gamma_neg: float = 0.0) -> Tensor:
    r"""Per-voxel, per-channel weighted focal binary NLL (one-vs-rest), shape of ``y``.

    .. math:: \ell_{i,k} = -w^+_k\, y\, (1-p)^{\gamma^+} \log p \;-\; w^-_k\, (1-y)\, p^{\gamma^-} \log(1-p)

    * binary cross-entropy (sigmoid / region training): all weights 1, gammas 0;
    * weighted BCE (Bertels et al.): ``w+ = 1/(2p), w- = 1/(2-2p)`` with ``p`` the foreground prior;
    * binary focal: ``w+ = alpha, w- = 1-alpha, gamma+ = gamma- = gamma``;
    * Combo's modified CE (Eq. 14): ``w+ = beta, w- = 1-beta``;
    * asymmetric focal per region: ``w+ = delta, gamma+ = 0, w- = 1-delta, gamma- = gamma``.

    ``log_p``/``log_1mp`` are passed separately so that both are exact for extreme logits.
    """
    pos = y * focal_log_likelihood(log_p, gamma_pos)  # (1 - p)^gamma+ log p
    neg = (1 - y) * focal_log_likelihood(log_1mp, gamma_neg)  # p^gamma- log(1 - p), p = 1 - (1 - p)
    return -(_weighted(w_pos, pos) + _weighted(w_neg, neg))


#: Below this probability (p_c, or S_c = 1 - p_c) the one-vs-rest NLL takes the general log-domain formula
#: (float32's smallest normal number is 1.2e-38; a subnormal would lose precision, 0 would give -inf).
_OTHERS_MIN = 1e-30


def one_vs_rest_softmax_nll_hard(logits: Tensor, onehot: Tensor, first_channel: int, w_pos: float = 1.0,
                                 w_neg: float = 1.0) -> Tensor:
    r""":func:`binary_focal_nll` (gamma 0) of a softmax's channels ``first_channel..C-1``, one-vs-rest, hard targets.

    .. math:: \ell_{i,c} = -w^+ y_{i,c} \log p_{i,c} - w^- (1 - y_{i,c}) \log(1 - p_{i,c})

    For one-hot ``onehot`` (0/1) each element needs one of the two logarithms. ``1 - p_c`` is the sum of the
    *other* classes' probabilities, ``S_c = sum_{k != c} p_k``, a sum of non-negative numbers and so exact to
    rounding even where ``p_c`` rounds to 1; :class:`_OneVsRestSoftmaxNLL` takes the logarithm of ``p_c`` or
    ``S_c`` (one softmax, one logarithm per element) and writes the gradient out (about 5x faster than
    log-softmax and the class-by-class log-sum-exp of :func:`log_one_minus_softmax` under autograd). Where the
    probability taken is below ``1e-30`` (logit gaps of ~70 in float32) the general formula is used.
    """
    with torch.no_grad():
        p = torch.softmax(logits, 1)
        q = one_vs_rest_reference_probability(p, onehot, first_channel)
    if bool(q.amin() < _OTHERS_MIN):  # amin: one reduction, no bool tensor
        return binary_focal_nll(torch.log_softmax(logits, 1)[:, first_channel:],
                                log_one_minus_softmax(logits)[:, first_channel:], onehot[:, first_channel:],
                                w_pos, w_neg)
    return _OneVsRestSoftmaxNLL.apply(logits, onehot, q, p, first_channel, float(w_pos), float(w_neg))


def one_vs_rest_reference_probability(p: Tensor, onehot: Tensor, first_channel: int) -> Tensor:
    """``q_c = p_c`` where ``y_c = 1`` and ``S_c = 1 - p_c`` (summed, see :func:`_sums_of_others`) where ``y_c = 0``,
    for ``c >= first_channel``, as ``(S - S y) + p y`` in place: exact (``S - S = 0``; one term is 0), no temporary."""
    y = onehot[:, first_channel:]
    q = _sums_of_others(p, first_channel)
    return q.addcmul_(q, y, value=-1).addcmul_(p[:, first_channel:], y)


def _sums_of_others(p: Tensor, first_channel: int) -> Tensor:
    """``S_c = sum_{k != c} p_k`` for ``c >= first_channel``, shape ``(B, C - first_channel, *spatial)``.

    Summed class by class (O(C^2) slices, C is small), never as ``sum - p_c``, which cancels where ``p_c ~ 1``.
    Written straight into the output's channels (no concatenation).
    """
    n = p.shape[1]
    out = p.new_empty((p.shape[0], n - first_channel) + tuple(p.shape[2:]))
    for c in range(first_channel, n):
        others = [k for k in range(n) if k != c]
        s = out[:, c - first_channel:c - first_channel + 1]
        s.copy_(p[:, others[0]:others[0] + 1])
        for k in others[1:]:
            s.add_(p[:, k:k + 1])
    return out


class _OneVsRestSoftmaxNLL(torch.autograd.Function):
    r"""Value and vector-Jacobian product of :func:`one_vs_rest_softmax_nll_hard`.

    With ``T_c = log p_c`` where ``y_c = 1`` and ``log S_c`` elsewhere, ``d log p_c / dx_k = [k = c] - p_k`` and
    ``d log S_c / dx_k = [k != c] p_k / S_c - p_k``, the gradient of ``sum_c G_c (-w_c T_c)`` for an incoming
    gradient ``G`` is, with ``a_c = -w_c G_c`` (``w_c = w+`` or ``w-`` by ``y_c``) and ``H_c = a_c (1-y_c)/S_c``:

    .. math:: \frac{\partial}{\partial x_k} = p_k \Big(\sum_{c \ne k} H_c - \sum_c a_c\Big) + [k \ge c_0]\, a_k y_k

    ``sum_{c != k} H_c`` is summed without ``H_k`` (subtracting it would cancel where ``S_k`` is tiny).
    """

    @staticmethod
    def forward(ctx, logits, onehot, q, p, first_channel, w_pos, w_neg):
        y = onehot[:, first_channel:]
        terms = q.log()  # log p_c where y_c = 1, log S_c elsewhere
        w = _blend(y, 1 - y, w_pos, w_neg)
        ctx.save_for_backward(y, p, q)  # q = S_c where y_c = 0, and q >= 1e-30 > 0 everywhere
        ctx.first_channel, ctx.w = first_channel, w
        return _weighted_neg(w, terms)

    @staticmethod
    @once_differentiable  # the derivatives are written out without a graph: refuse double backward
    def backward(ctx, grad_output):
        y, p, q = ctx.saved_tensors
        a = _weighted_neg(ctx.w, grad_output.clone())  # -w_c G_c
        return one_vs_rest_grad(a, y, p, q, ctx.first_channel), None, None, None, None, None, None


def one_vs_rest_grad(a: Tensor, y: Tensor, p: Tensor, q: Tensor, first_channel: int,
                     out: Optional[Tensor] = None, consume_q: bool = False) -> Tensor:
    """Gradient w.r.t. the logits of ``sum_c a_c T_c`` (:class:`_OneVsRestSoftmaxNLL`'s formula, ``a = -w G``).

    ``y``, ``a`` and ``q`` (:func:`one_vs_rest_reference_probability`) cover the channels from
    ``first_channel`` on (``a`` may be a 0-d or ``(B, 1, ...)`` tensor that broadcasts over them), ``p`` all C.
    Returns a new ``(B, C, *spatial)`` tensor, or ``out`` with the gradient added to it. ``consume_q``: ``q``
    may be overwritten (one temporary less).
    """
    c0 = first_channel
    # H_c = a_c / S_c where y_c = 0, 0 where y_c = 1 (S_c may be 0 there, q is not): 1/q - y/q is exactly that
    h = q.reciprocal_() if consume_q else torch.reciprocal(q)
    h.addcmul_(h, y, value=-1).mul_(a)
    # ``a`` may broadcast over the channels (one weight for both sides): then sum_c a_c = K a
    total_a = a.sum(1, keepdim=True) if a.ndim == y.ndim and a.shape[1] == y.shape[1] else a * y.shape[1]
    grad = torch.empty_like(p) if out is None else out
    n = p.shape[1]
    for k in range(n):
        coef = -total_a  # sum over c != k of H_c, then minus sum_c a_c
        for c in range(c0, n):
            if c != k:
                coef = coef + h[:, c - c0:c - c0 + 1]
        if out is None:
            grad[:, k:k + 1] = p[:, k:k + 1] * coef
        else:
            grad[:, k:k + 1].addcmul_(p[:, k:k + 1], coef)
    grad[:, c0:].addcmul_(a, y)
    return grad


def binary_focal_nll_hard(logits: Tensor, y: Tensor, w_pos: float | Tensor = 1.0, w_neg: float | Tensor = 1.0,
                          gamma_pos: float = 0.0, gamma_neg: float = 0.0) -> Tensor:
    """:func:`binary_focal_nll` of a sigmoid output for hard targets: ``y`` holds only 0 and 1 (logits' dtype).

    One term per element: with ``s = 2y - 1`` the log-probability of the reference's side is
    ``log q = logsigmoid(s x)`` (``log p`` where ``y = 1``, ``log(1 - p)`` where ``y = 0``), so the loss is
    ``-w (1 - q)^gamma log q`` with ``w, gamma`` of that side. Evaluated by :class:`_HardBinaryFocalNLL`: the
    general formula's value (to rounding) and its gradient written out in the forward pass -- one saved tensor
    instead of an autograd graph of a dozen full-size intermediates. Differentiable once (double backward raises).
    """
    return _HardBinaryFocalNLL.apply(logits, y, w_pos, w_neg, float(gamma_pos), float(gamma_neg))


def focal_factor_and_derivative(u: Tensor, gamma: float) -> Tuple[float | Tensor, float | Tensor]:
    """``F = safe_pow(u, gamma)`` and ``F'(u)``, the derivative autograd takes through :func:`safe_pow`, for
    ``u >= 0`` without a graph (plain numbers for gamma 0), equal to them to rounding.

    Both come from one power ``r = max(u, POW_EPS)**(gamma - 1)`` (torch's power is ~15x slower than a product
    for most exponents; 0.5, -0.5 and 2 are fast): ``F = u r`` is ``u**gamma`` above ``POW_EPS`` and exactly
    safe_pow's linear piece ``u POW_EPS**(gamma-1)`` below; ``F' = gamma r`` above and ``r`` on the linear piece
    (``gamma < 1``). At ``u = 0`` every caller multiplies ``F'`` by 0.
    """
    if gamma == 0:
        return 1.0, 0.0
    if gamma == 1:
        return u, 1.0
    if gamma > 1:
        r = u if gamma == 2 else u.pow(gamma - 1)
        return u * r, r * gamma
    r = u.clamp_min(POW_EPS).pow_(gamma - 1)
    factor = u * r
    above = torch.empty_like(u)
    torch.gt(u, POW_EPS, out=above)  # 0/1 written as floats: 3x cheaper than a bool mask and a conversion
    return factor, r.addcmul_(r, above, value=gamma - 1)  # gamma r above POW_EPS, r on the linear piece


def _blend(y: Tensor, not_y: Tensor, a: float | Tensor, b: float | Tensor) -> float | Tensor:
    """``a`` where ``y = 1``, ``b`` where ``y = 0``, as ``a y + b (1 - y)`` (exact for 0/1 ``y``); numbers if equal."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor) and a == b:
        return a
    if not isinstance(a, Tensor):  # one product and one scaled add (a 0/1 tensor times a is exact)
        b_part = not_y * b
        return b_part if a == 0 else torch.add(b_part, y, alpha=a)
    if not isinstance(b, Tensor):
        return _blend(not_y, y, b, a)
    return torch.addcmul(a * y, b, not_y)


class _HardBinaryFocalNLL(torch.autograd.Function):
    r"""Value and gradient of :func:`binary_focal_nll_hard` in one forward pass.

    With ``z = s x``, ``log q = logsigmoid(z)``, ``u = 1 - q = sigmoid(-z)`` and the focal factor
    ``F = safe_pow(u, gamma)`` the element's loss is :math:`\ell = -w F(u) \log q`. From
    :math:`d \log q / dz = u` and :math:`du/dz = -q u`:

    .. math:: \frac{d\ell}{dx} = -s\, w\, \big(F(u)\, u - q \log q\; F'(u)\, u\big)

    (``gamma = 0``: ``-s w u``, the BCE gradient), ``F'`` being the derivative autograd takes through
    :func:`safe_pow` (see :func:`focal_factor_and_derivative`): the general formula's value and gradient to rounding.
    """

    @staticmethod
    def forward(ctx, logits, y, w_pos, w_neg, gamma_pos, gamma_neg):
        not_y = 1 - y
        sign = y - not_y  # 2y - 1, exactly
        z = logits * sign
        log_q = F.logsigmoid(z)
        u = torch.sigmoid(z.neg_())  # 1 - q, exact where q rounds to 1
        factor, slope = focal_factor_and_derivative(u, gamma_pos)
        if gamma_neg != gamma_pos:
            factor_neg, slope_neg = focal_factor_and_derivative(u, gamma_neg)
            factor, slope = _blend(y, not_y, factor, factor_neg), _blend(y, not_y, slope, slope_neg)
        slope = u * slope if isinstance(slope, Tensor) or slope != 0 else 0.0  # F'(u) u
        w = _blend(y, not_y, _channel_weight(w_pos, y), _channel_weight(w_neg, y))  # per-channel weights broadcast
        value = _weighted_neg(w, log_q * factor if isinstance(factor, Tensor) else log_q.clone())  # -w F log q
        if ctx.needs_input_grad[0]:
            grad = u * factor  # F u - q log q F'u, then times -w and s, in place
            if isinstance(slope, Tensor):
                grad.sub_(u.neg_().add_(1).mul_(log_q).mul_(slope))  # u is no longer needed: q = 1 - u in place
            ctx.save_for_backward(_weighted_neg(w, grad).mul_(sign))
        return value

    @staticmethod
    @once_differentiable  # the gradient was computed without a graph: refuse double backward
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None


def _weighted_neg(w: float | Tensor, terms: Tensor) -> Tensor:
    """``-(w * terms)``, in place on ``terms`` (a tensor of ours)."""
    if isinstance(w, Tensor):
        return terms.mul_(w).neg_()
    return terms.mul_(-w)


def _channel_weight_tensor(w: float | Tensor, like: Tensor) -> Tensor:
    """:func:`_channel_weight`, with a plain number turned into a 0-d tensor of ``like``'s dtype and device."""
    w = _channel_weight(w, like)
    return w if isinstance(w, Tensor) else like.new_tensor(w)


def sigmoid_binary_nll(logits: Tensor, y: Tensor, w_pos: float | Tensor = 1.0, w_neg: float | Tensor = 1.0) -> Tensor:
    r""":func:`binary_focal_nll` of a sigmoid output with ``gamma = 0``, from the logits in one fused torch op.

    .. math:: \ell = -w^+\, y \log\sigma(x) - w^-\, (1-y) \log(1-\sigma(x))

    ``binary_cross_entropy_with_logits`` (``weight = w-``, ``pos_weight = w+ / w-``) evaluates exactly this,
    stably for +-1e4 logits, with the gradient ``w-(1-y)s - w+ y (1-s)`` in one kernel each way: about 3x faster
    and half the memory of the two log-sigmoids of the general formula, equal to it to rounding. Where a
    negative weight is 0 (``pos_weight`` would be infinite) the general formula is used.
    """
    if bool((torch.as_tensor(w_neg) <= 0).any()):
        return binary_focal_nll(F.logsigmoid(logits), F.logsigmoid(-logits), y, w_pos, w_neg)
    if not isinstance(w_pos, Tensor) and not isinstance(w_neg, Tensor) and w_pos == w_neg:
        # one weight for both terms: no pos_weight pass
        return _weighted(w_neg, F.binary_cross_entropy_with_logits(logits, y, reduction="none"))
    weight = _channel_weight_tensor(w_neg, logits)
    pos_weight = _channel_weight_tensor(w_pos, logits) / weight
    return F.binary_cross_entropy_with_logits(logits, y, weight=weight, pos_weight=pos_weight, reduction="none")


def _channel_weight(w: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(w, Tensor):
        return w.to(device=like.device, dtype=like.dtype).view((1, -1) + (1,) * (like.ndim - 2))
    return w


def _weighted(w: float | Tensor, terms: Tensor) -> Tensor:
    """``w * terms`` with ``w`` per channel; a plain weight 1 is skipped (``1 * x == x`` exactly, one pass less)."""
    if not isinstance(w, Tensor) and w == 1:
        return terms
    return _channel_weight(w, terms) * terms


def class_weights_from_priors(priors: Sequence[float], region_based: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Weighted-CE weights from class priors (Bertels et al., Sect. 3: balance all classes equally).

    * label (softmax) training, priors ``p_c`` of the C classes (background included): ``w_c = 1 / (C p_c)``,
      which for C = 2 is the paper's ``1/(2p)`` (foreground) and ``1/(2-2p)`` (background);
    * region (sigmoid) training, foreground priors ``p_r`` of each region: ``w+ = 1/(2 p_r)``, ``w- = 1/(2 - 2 p_r)``.

    Returns ``(w, None)`` for labels and ``(w_pos, w_neg)`` for regions. Uniform priors give weights 1 (plain CE).
    """
    p = torch.as_tensor(priors, dtype=torch.float64)
    if p.ndim != 1 or p.numel() == 0:
        raise ValueError(f"class_priors must be a non-empty list of floats, got {priors!r}")
    if not bool(((p > 0) & (p < 1)).all()):
        raise ValueError(f"class_priors must lie strictly between 0 and 1 (a class that never occurs cannot be "
                         f"weighted by 1/p), got {p.tolist()}")
    if region_based:
        return 1 / (2 * p), 1 / (2 - 2 * p)
    if abs(float(p.sum()) - 1) > 1e-3:
        raise ValueError(f"class_priors of a label (softmax) task must sum to 1 over all classes including "
                         f"background, got sum {float(p.sum()):.4f} for {p.tolist()}")
    return 1 / (p.numel() * p), None


# ----------------------------------------------------------------------------------------------------------------
# overlap statistics and scores
# ----------------------------------------------------------------------------------------------------------------
def overlap_stats(probs: Tensor, onehot: Tensor, mask: Optional[Tensor], gamma: float = 1.0, hard: bool = False
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Soft TP, FP, FN per sample and channel, shape ``(B, K)`` each.

    .. math:: TP = \sum_i p_i y_i,\quad FP = \sum_i (p_i (1-y_i))^\gamma,\quad FN = \sum_i ((1-p_i) y_i)^\gamma

    ``gamma`` is DSC++'s focal exponent (Yeung et al., Eq. 9); ``gamma = 1`` gives the ordinary soft statistics.
    ``onehot`` may be soft (probabilities in [0, 1]); ``mask`` is a voxel weight (1 valid, 0 ignored, fractional
    after deep-supervision down-sampling of a soft target).

    ``hard=True`` is the caller's promise that ``onehot`` and ``mask`` hold only 0 and 1 (label maps, bool region
    maps). For ``gamma > 1`` the statistics then come from :class:`_HardPowerStats`, which returns the same
    values *and* the same gradient as this function's autograd graph, bit for bit, with a fraction of its
    memory traffic and saved tensors (a speed-up only; ``hard=False`` is always correct). The fused path is
    differentiable once: second derivatives (double backward) raise, and need ``hard=False``.
    """
    axes = tuple(range(2, probs.ndim))
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    if hard and gamma > 1 and probs.dtype == acc:
        return _HardPowerStats.apply(probs, onehot, mask, float(gamma), acc)
    y = onehot if mask is None else onehot * mask
    tp = (probs * y).sum(axes, dtype=acc)
    if gamma == 1:
        # FP = sum p - TP, FN = sum y - TP: two plain sums instead of two more elementwise products
        p_sum = (probs * mask).sum(axes, dtype=acc) if mask is not None else probs.sum(axes, dtype=acc)
        return tp, p_sum - tp, y.sum(axes, dtype=acc) - tp
    # Eq. 9 as written, (p (1-y))^gamma: for soft targets p^gamma (1-y) would be a different loss. The mask
    # multiplies after the power: it is a voxel weight (fractional after deep-supervision down-sampling).
    fp_map = safe_pow(probs * (1 - onehot), gamma)
    fn_map = safe_pow((1 - probs) * onehot, gamma)
    if mask is not None:
        fp_map, fn_map = fp_map * mask, fn_map * mask
    return tp, fp_map.sum(axes, dtype=acc), fn_map.sum(axes, dtype=acc)


def metric_overlap_stats(probs: Tensor, onehot: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    r"""TP, FP, FN from the L1 intersection of Wang et al. 2023 (Dice semimetric / Jaccard metric losses).

    .. math:: I = \tfrac12(\|p\|_1 + \|y\|_1 - \|p - y\|_1),\quad FP = \|p\|_1 - I,\quad FN = \|y\|_1 - I

    per sample and channel over the (weighted) voxels. For hard y, ``I = sum p y`` (the soft statistics); for soft
    y, ``I = sum min(p, y)``, so FP = FN = 0 exactly at ``p = y`` and every score built on them is maximal there.
    """
    axes = tuple(range(2, probs.ndim))
    acc = torch.float64 if probs.dtype == torch.float64 else torch.float32
    if mask is not None:  # |p m - y m| = |p - y| m for a weight m >= 0
        probs, onehot = probs * mask, onehot * mask
    p_norm, y_norm = probs.sum(axes, dtype=acc), onehot.sum(axes, dtype=acc)
    intersection = (p_norm + y_norm - (probs - onehot).abs().sum(axes, dtype=acc)) / 2
    return intersection, p_norm - intersection, y_norm - intersection


class _HardPowerStats(torch.autograd.Function):
    """:func:`overlap_stats` for hard targets (``onehot``, ``mask`` in {0, 1}) and ``gamma > 1``, fused.

    The autograd graph of the generic code keeps four full-size intermediates alive and runs about a dozen
    full-size kernels in backward. For hard targets, voxel by voxel at most one of the FP and FN terms is
    non-zero, so both come from one power of ``q = |y - p|`` (``p`` where ``y = 0``, ``1 - p`` where ``y = 1``).

    **Same results, bit for bit.** Forward: every summed element equals the generic code's (``q`` is ``p`` or
    the same ``1 - p``; ``x * 0 = 0``; ``a - a = 0``; the masks multiply by 1 or 0), so the same reductions give
    the same sums. Backward: autograd's gradient of the generic graph is, per voxel,
    ``g_tp * y + g_fp * (1 - y) m * d(p) - g_fn * y * d(1 - p)`` with ``d(x) = gamma * x.pow(gamma - 1)``
    (``PowBackward0``; ``safe_pow``'s ``clamp_min(0)`` zeroes it at ``x = 0``, where it is 0 anyway for
    ``gamma > 1``). For ``y, m`` in {0, 1} every product with them is exact and at most two terms are
    non-zero, so ``where(y, -g_fn, g_fp) * d(q) * m + g_tp * y`` rounds identically (negations are exact).
    """

    @staticmethod
    def forward(ctx, probs: Tensor, onehot: Tensor, mask: Optional[Tensor], gamma: float, acc: torch.dtype):
        axes = tuple(range(2, probs.ndim))
        y = onehot if mask is None else onehot * mask
        tp = (probs * y).sum(axes, dtype=acc)
        r = y - probs  # 1 - p where y = 1, -p where y = 0 (and where m = 0; masked below)
        if gamma == 2:  # torch evaluates x ** 2 as x * x, and r * r = |r| * |r|
            q_pow = r * r
        else:
            q = r.abs_()  # q = |y - p|
            q_pow = safe_pow(q, gamma)  # a new tensor for gamma > 1
        fn_map = q_pow * y
        fn = fn_map.sum(axes, dtype=acc)
        fp_map = q_pow.sub_(fn_map)  # q^gamma where y = 0, 0 where y = 1
        if mask is not None:
            fp_map.mul_(mask)
        fp = fp_map.sum(axes, dtype=acc)
        ctx.signed = gamma == 2
        if ctx.needs_input_grad[0]:
            # autograd's PowBackward0 computes ``gamma * x.pow(gamma - 1)`` (``x.pow(1)`` is a copy of x). For
            # gamma = 2 we keep the sign of r instead of |r| (d = -2p where y = 0) and flip g_fp in backward.
            d = gamma * r if gamma == 2 else gamma * q.pow(gamma - 1)
            ctx.save_for_backward(d, y, mask)
        return tp, fp, fn

    @staticmethod
    @once_differentiable  # d was computed without a graph: refuse double backward rather than get it wrong
    def backward(ctx, g_tp: Tensor, g_fp: Tensor, g_fn: Tensor):
        d, y, mask = ctx.saved_tensors
        shape = g_tp.shape + (1,) * (d.ndim - 2)
        g_fp = -g_fp if ctx.signed else g_fp
        grad = torch.where(y.bool(), -g_fn.view(shape), g_fp.view(shape)).mul_(d)
        if mask is not None:
            grad.mul_(mask)
        grad.addcmul_(g_tp.view(shape), y)  # exact product (y in {0, 1}), so one rounding as in autograd's sum
        return grad, None, None, None, None


def reduce_stats(stats: Sequence[Tensor], batch_dice: bool, ddp: bool) -> Tuple[Tensor, ...]:
    """Sum ``(B, K)`` statistics over the batch when ``batch_dice`` -- over *all* ranks' batches when ``ddp``.

    The all-gather is nnU-Net's ``AllGatherGrad`` (as in ``MemoryEfficientSoftDiceLoss``): every rank computes
    the global score; its backward sums the gradient over ranks, so after DDP's gradient averaging the parameter
    gradient equals that of a single process on the concatenated batch.
    """
    if not batch_dice:
        return tuple(stats)
    if ddp:
        from nnunetv2.utilities.ddp_allgather import AllGatherGrad
        stats = [AllGatherGrad.apply(s).sum(0) for s in stats]
    return tuple(s.sum(0) for s in stats)


def dice_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float) -> Tensor:
    r"""Soft Dice / DSC++ score :math:`(2TP + s) / (2TP + FP + FN + s)` (= ``(2 sum py + s)/(sum p + sum y + s)``)."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(DENOM_EPS)


def jaccard_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float) -> Tensor:
    r"""Soft Jaccard score :math:`(TP + s) / (TP + FP + FN + s)` (= ``(sum py + s)/(sum p + sum y - sum py + s)``)."""
    return (tp + smooth) / (tp + fp + fn + smooth).clamp_min(DENOM_EPS)


def tversky_index(tp: Tensor, fp: Tensor, fn: Tensor, alpha: float, beta: float, smooth: float) -> Tensor:
    r"""Tversky index :math:`(TP + s) / (TP + \alpha FP + \beta FN + s)` (Salehi et al.; Yeung et al. Eq. 16).

    ``alpha`` weights false positives, ``beta`` false negatives. ``alpha = beta = 1/2`` is the Dice score when
    ``smooth = 0``.
    """
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(DENOM_EPS)


def focal_tversky_term(ti: Tensor, gamma: float) -> Tensor:
    r"""Focal Tversky term :math:`(1 - TI)^{1/\gamma}` (Abraham & Khan; Yeung et al. Eq. 17)."""
    return safe_pow(1 - ti, 1.0 / gamma)


# ----------------------------------------------------------------------------------------------------------------
# Lovász extension (Berman et al. 2018)
# ----------------------------------------------------------------------------------------------------------------
def lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors, for every row of ``(..., N)``.

    Row-wise version of Berman et al.'s ``lovasz_grad``: each row is sorted by *its own* errors, and the
    foreground indicator of *that* class/region is carried along -- not the integer label map (the bug of a
    well-known vectorised port, wrong for C > 2).

    With ``c_k`` the cumulative foreground count of the first ``k + 1`` sorted voxels and ``G = c_{N-1}``:
    intersection ``G - c_k``, union ``G + (k + 1 - c_k)`` (Berman's ``gts + (1 - gt_sorted).cumsum()``),
    Jaccard loss ``J_k = 1 - intersection / union``, gradient ``J_k - J_{k-1}`` (``J_{-1} = 0``). These are
    integer counts (at most 2N), exact in float32 up to N = 2**23 voxels per row, so one cumulative sum
    gives all of them. ``fg_sorted`` is a constant (the target): no gradient flows into it.
    """
    n = fg_sorted.shape[-1]
    intersection = fg_sorted.cumsum(-1)
    gts = intersection[..., -1:].clone()  # G, the last cumulative count (= fg_sorted.sum(-1), exactly)
    torch.sub(gts, intersection, out=intersection)  # G - c_k, in place: fg is a constant, nothing needs c_k
    # J with a leading 0 column: the differences J_k - J_{k-1} are then one subtraction, no concatenation
    jaccard = fg_sorted.new_empty(fg_sorted.shape[:-1] + (n + 1,))
    jaccard[..., 0] = 0
    j = jaccard[..., 1:]
    torch.add(intersection, torch.arange(1, n + 1, dtype=j.dtype, device=j.device), out=j)  # union, >= 1
    # J = 1 - I / U in one kernel: 1 + (-I) / U rounds exactly like 1 - (I / U)
    torch.addcdiv(torch.ones((), dtype=j.dtype, device=j.device), intersection, j, value=-1, out=j)
    return j - jaccard[..., :-1]


def hinge_margin(logits: Tensor, fg: Tensor) -> Tensor:
    r"""Margin :math:`1 - x s` of the Lovász-hinge, :math:`s = 2y - 1`, written :math:`x (1 - 2y) + 1`: the same
    value (exact for 0/1 targets) without a negation in backward."""
    return logits * torch.sub(1, fg, alpha=2) + 1


#: error maps of :func:`lovasz_extension`, ``errors = map(values, fg)``: Lovász-softmax's ``|y - p|`` is ``abs_diff``
#: of the probabilities (or ``abs`` of ``p - y``), the hinge's ``max(0, 1 - x s)`` is ``hinge`` of the logits (or
#: ``relu`` of :func:`hinge_margin`)
LOVASZ_ERROR_MAPS = {
    "identity": lambda v, fg: v,
    "abs": lambda v, fg: torch.abs(v),
    "abs_diff": lambda v, fg: torch.abs(v - fg),
    "relu": lambda v, fg: torch.relu(v),
    "hinge": lambda v, fg: torch.relu(hinge_margin(v, fg)),
}


def lovasz_extension(values: Tensor, fg: Tensor, error_map: str = "identity", first_channel: int = 0) -> Tensor:
    r"""Lovász extension of the Jaccard loss of the errors ``m = error_map(values, fg)``, one value per row of
    ``(..., N)`` (shape ``values.shape[:-1]``); with ``first_channel > 0`` only the rows of channels
    ``first_channel..C-1`` of ``(..., C, N)`` (shape ``(..., C - first_channel)``).

    .. math:: \bar\Delta_J(m) = \sum_k m_{\pi(k)}\, g_k(\pi)

    with :math:`\pi` sorting the errors decreasingly (ties in voxel order) and :math:`g` from :func:`lovasz_grad`.
    ``error_map`` is one of :data:`LOVASZ_ERROR_MAPS`; passing the map (and the whole channel axis) instead of the
    errors lets the CPU path apply it (and its derivative) inside its one pass, without full-size temporaries. Ignored voxels must have error 0 and ``fg = 0``: they sort
    after every positive error and add nothing. ``fg`` (a constant) may be a strided view.

    On CPU this is :class:`_CpuLovaszExtension` (a compiled sort-and-accumulate pass, the same value to rounding
    and the same gradient); elsewhere, or when ``fg`` needs a gradient, :func:`lovasz_extension_autograd`.
    """
    if error_map not in LOVASZ_ERROR_MAPS:
        raise ValueError(f"error_map must be one of {sorted(LOVASZ_ERROR_MAPS)}, got {error_map!r}")
    if first_channel and values.ndim < 2:
        raise ValueError(f"first_channel={first_channel} needs values of shape (..., C, N), got {tuple(values.shape)}")
    if _cpu_fast_path(values, fg):
        return _CpuLovaszExtension.apply(values, fg, error_map, first_channel)
    values, fg = values[..., first_channel:, :], fg[..., first_channel:, :]
    return lovasz_extension_autograd(LOVASZ_ERROR_MAPS[error_map](values, fg), fg)


def lovasz_extension_autograd(errors: Tensor, fg: Tensor) -> Tensor:
    """:func:`lovasz_extension` of errors on any device: sort, gather, :func:`lovasz_grad`, dot product; autograd
    scatters the gradient back through the permutation."""
    perm = sort_order_descending(errors.detach())
    errors_sorted = torch.gather(errors, -1, perm)  # autograd: the gradient is scattered back through perm
    fg_sorted = torch.gather(fg, -1, perm)
    return (errors_sorted * lovasz_grad(fg_sorted)).sum(-1)


def _cpu_fast_path(values: Tensor, fg: Tensor) -> bool:
    from nnunet_losses.lovasz_cpu import MAX_ROW
    return (values.device.type == "cpu" and fg.device.type == "cpu" and values.dtype in (torch.float32, torch.float64)
            and fg.shape == values.shape and fg.dtype == values.dtype and not fg.requires_grad and values.ndim >= 1
            and 0 < values.shape[-1] < MAX_ROW and values.numel() > 0)


class _CpuLovaszExtension(torch.autograd.Function):
    r""":func:`lovasz_extension` of ``(..., N)`` CPU rows, value and gradient from one compiled pass.

    The value is linear in the errors for a fixed order, :math:`\bar\Delta_J = \sum_k m_{\pi(k)} g_k`, so its
    gradient w.r.t. :math:`m_i` is :math:`g_k` at the sorted position :math:`k = \pi^{-1}(i)` of voxel :math:`i`
    -- what autograd gets by scattering :math:`g` back through :math:`\pi` -- and w.r.t. the value :math:`v_i`
    it is that times the error map's derivative: 1, :math:`\operatorname{sign}(v_i)` (0 at 0, as torch's ``abs``;
    ``abs_diff``: :math:`\operatorname{sign}(v_i - y_i)`),
    :math:`[v_i > 0]` (``relu``) or :math:`[h_i > 0](1 - 2y_i)` (``hinge``, :math:`h` = :func:`hinge_margin`). :func:`nnunet_losses.lovasz_cpu.extension_and_gradient` writes it there during
    the forward pass, so backward is ``grad_output * grad``; the saved ``(..., N)`` gradient replaces the int64
    permutation and the error map's input autograd would keep. The value is summed in float64 (autograd's path
    sums float32 products): equal to rounding; the gradient is the same bits (``hinge`` with a soft target: to
    rounding, as ``g (1 - 2y)`` is rounded before ``grad_output`` multiplies it).
    """

    @staticmethod
    def forward(ctx, values: Tensor, fg: Tensor, error_map: str, first_channel: int) -> Tensor:
        from nnunet_losses.lovasz_cpu import MODES, extension_and_gradient
        out, grad = extension_and_gradient(values, fg, MODES[error_map], first_channel)
        ctx.save_for_backward(grad)
        ctx.first_channel = first_channel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        if ctx.first_channel:  # the channels before it got no loss: gradient 0 (grad holds 0 there)
            grad_out = F.pad(grad_out, (ctx.first_channel, 0))
        return grad * grad_out.unsqueeze(-1), None, None, None


def sort_order_descending(values: Tensor) -> Tensor:
    """Indices sorting every row of ``(..., N)`` by decreasing value, ties in index order (a stable sort).

    This is ``torch.sort(values, dim=-1, descending=True, stable=True).indices`` -- the same permutation on every
    path. On CPU, float32 rows (the Lovász errors) are sorted by
    :func:`nnunet_losses.lovasz_cpu.sort_order_rows`, an LSD radix sort of their bit patterns (~5x faster than
    torch's radix sort of the same bits as int32, ~20x its comparison sort of float rows).
    """
    n = values.shape[-1]
    if values.device.type == "cpu" and values.dtype == torch.float32 and values.numel() > 0:
        from nnunet_losses.lovasz_cpu import MAX_ROW, sort_order_rows
        if n < MAX_ROW:
            return sort_order_rows(values.reshape(-1, n)).view(values.shape)
    return torch.sort(values, dim=-1, descending=True, stable=True).indices

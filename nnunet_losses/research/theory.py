r"""Bertels et al. 2020, Sect. 2.2 and Fig. 1, computed exactly: which prediction minimises the expected soft Dice / CE?

Bertels, Robben et al., *Optimization with soft Dice can lead to a volumetric bias* (2020), Sect. 2.2.

The situation
-------------
An image is made of independent regions:

* α: volume :math:`s_\alpha = 100`, certainly background (:math:`p_\alpha = 0`), predicted :math:`\hat p_\alpha = 0`;
* β: volume :math:`s_\beta = \mu s_\gamma`, split into ``N`` equally large sub-regions β_n (volume μ/N each), each of
  which belongs to the structure independently with probability ``p``; all of them get the **same** predicted
  probability :math:`\hat p` (one network output for regions that look alike);
* γ: volume :math:`s_\gamma = 1`, certainly structure (:math:`p_\gamma = 1`), predicted :math:`\hat p_\gamma = 1`.

Only the number ``k`` of β sub-regions that are drawn into the reference matters, ``k ~ Binomial(N, p)``, so every
expectation below is an exact finite sum over ``k = 0..N`` with binomial weights (no Monte Carlo).

Soft Dice
---------
The loss is the paper's Eq. 6 (from Milletari et al.), *without* smoothing terms,
:math:`SD = 1 - 2\sum_i \hat y_i y_i / (\sum_i \hat y_i + \sum_i y_i)`, evaluated over the whole image (Eq. 12).
α contributes nothing (:math:`\hat p_\alpha = p_\alpha = 0`), γ contributes 1 to the intersection and 1 + 1 to the
denominator, so the denominator is >= 2 and never 0. With ``x = μ p̂`` the predicted β volume and ``q = k/N``:

.. math:: SD(\hat p \mid k) = 1 - \frac{2(1 + \mu \hat p q)}{2 + \mu \hat p + \mu q}, \qquad
          E[SD](\hat p) = \sum_{k=0}^{N} \binom{N}{k} p^k (1-p)^{N-k} \, SD(\hat p \mid k).

Soft Dice is homogeneous of degree 0 in the volumes, so only the ratio μ = s_β / s_γ matters (s_α does not).

Closed form for N = 1 (derivation)
----------------------------------
With ``k ∈ {0, 1}`` and ``x = μ p̂ ∈ [0, μ]``:

.. math:: f(x) = E[SD] = (1-p)\frac{x}{2+x} + p\,\frac{\mu - x}{2+\mu+x}.

Its derivative :math:`f'(x) = \frac{2(1-p)}{(2+x)^2} - \frac{2p(1+\mu)}{(2+\mu+x)^2}` is positive iff
:math:`\left(\frac{2+x}{2+\mu+x}\right)^2 < \frac{1-p}{p(1+\mu)}`; the left side increases with ``x``, so ``f'``
changes sign at most once, from + to −: ``f`` first increases and then decreases (quasi-concave). Its minimum over
``[0, μ]`` is therefore at an end point, i.e. **the SD-optimal p̂ is 0 or 1**. Comparing the end points,
:math:`f(0) = p\mu/(2+\mu)` and :math:`f(\mu) = (1-p)\mu/(2+\mu)`, so p̂* = 0 for p < 1/2 and p̂* = 1 for p > 1/2:
**the flip is at p = 1/2 for every μ** (at p = 1/2 exactly both are optimal; this module returns the smaller one).

The expected predicted volume (Eq. 7, the probabilistic volume :math:`\sum_j s_j \hat p_j`) is
:math:`1 + \mu\hat p`, the expected true volume :math:`1 + \mu p`, so the **volume bias** is
:math:`\Delta V = \mu(\hat p - p)`, in units of s_γ:

* SD, N = 1: ΔV = −μp for p < 1/2 (under-estimation) and ΔV = μ(1 − p) for p > 1/2 (over-estimation). It is largest
  next to the flip, where it jumps from −μ/2 to +μ/2: |ΔV| <= μ/2, with ΔV → ∓μ/2 as p → 1/2 from below/above, and it
  is antisymmetric, ΔV(1 − p) = −ΔV(p). The **predicted-uncertainty error** p̂* − p jumps from −1/2 to +1/2 and does
  not depend on μ (the paper's dashed lines in Fig. 1 A4).
* CE: see below, ΔV = 0.

Many sub-regions
----------------
For N > 1 the optimum is found numerically (:func:`optimal_p_hat_soft_dice`); for the values of Fig. 1 it is still
always 0 or 1, but the flip moves below 1/2, the more so for larger μ and N (easier over-estimation). In the limit
N → ∞ the drawn fraction k/N → p deterministically, ``SD`` becomes
:math:`1 - 2(1+\mu\hat p p)/(2 + \mu\hat p + \mu p)`, whose derivative in p̂ has the sign of
:math:`1 - p(2 + \mu p)`, so the flip tends to the root of :math:`\mu p^2 + 2p - 1 = 0`,
:math:`p_\infty = (\sqrt{1+\mu} - 1)/\mu` (:func:`flip_threshold_limit`).

Cross-entropy
-------------
Eq. 5 summed over the image: α and γ contribute 0 (with :math:`0 \log 0 = 0`), β contributes
:math:`\mu\,[-p\log\hat p - (1-p)\log(1-\hat p)]` in expectation, for any N (the loss is linear in the labels).
Its derivative :math:`\mu(\hat p - p)/(\hat p(1-\hat p))` vanishes only at **p̂ = p**: CE is unbiased.

Numerical minimisation
----------------------
:func:`optimal_p_hat_soft_dice` evaluates the exact expectation on a uniform grid of p̂ (2001 points, end points
included), takes the grid minimum (the smallest p̂ on ties) and refines it with a bounded scalar minimisation
(golden-section search, vectorised over all (p, μ) at once) on the two neighbouring grid cells, keeping the
refined value only if it is strictly better. End points are thus evaluated exactly; an interior minimum is located
to ~1e-12 (for a unimodal function within the bracket).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_losses.research import PAPER_SHORT

S_ALPHA = 100.0  #: volume of the certain background α (only matters for CE with reduction="mean")
S_GAMMA = 1.0  #: volume of the certain structure γ; μ = s_β / s_γ

FIG1_N = (1, 4, 16)
FIG1_MU = (0.25, 1.0, 4.0)
FIG1_P = (0.0, 0.25, 0.5, 0.75, 1.0)
FIG1_COLORS = {0.25: "tab:blue", 1.0: "black", 4.0: "tab:red"}

LOSSES = ("soft_dice", "cross_entropy")


def _check(p_hat, p, n_subregions, mu):
    n = int(n_subregions)
    if n != n_subregions or n < 1:
        raise ValueError(f"n_subregions must be a positive integer, got {n_subregions!r}")
    p_hat, p, mu = (np.asarray(a, dtype=np.float64) for a in (p_hat, p, mu))
    for name, a in (("p_hat", p_hat), ("p", p)):
        if np.any((a < 0) | (a > 1)) or np.any(np.isnan(a)):
            raise ValueError(f"{name} must lie in [0, 1]")
    if np.any(mu < 0) or np.any(np.isnan(mu)):
        raise ValueError("mu must be >= 0")
    return p_hat, p, n, mu


def _scalar(a: np.ndarray):
    return float(a) if np.ndim(a) == 0 else a


def binomial_weights(p, n_subregions: int) -> np.ndarray:
    """P(k of the N sub-regions are drawn in), shape ``p.shape + (N + 1,)`` (exact, also for p = 0 and p = 1)."""
    from scipy.special import gammaln, xlog1py, xlogy
    n = int(n_subregions)
    k = np.arange(n + 1, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)[..., None]
    log_comb = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)
    with np.errstate(divide="ignore"):
        return np.exp(log_comb + xlogy(k, p) + xlog1py(n - k, -p))


def soft_dice_given_draw(p_hat, k, n_subregions: int = 1, mu=1.0):
    """Soft Dice loss (Eq. 6/12, no smoothing) of the prediction p̂ when ``k`` of the N β sub-regions are drawn in."""
    p_hat, _, n, mu = _check(p_hat, 0.0, n_subregions, mu)
    q = np.asarray(k, dtype=np.float64) / n
    return _scalar(1.0 - 2.0 * (1.0 + mu * p_hat * q) / (2.0 + mu * p_hat + mu * q))


def expected_soft_dice(p_hat, p, n_subregions: int = 1, mu=1.0):
    """Exact E[SD] over all Bernoulli outcomes of the β sub-regions; p_hat, p and mu broadcast (numpy rules)."""
    p_hat, p, n, mu = _check(p_hat, p, n_subregions, mu)
    p_hat, p, mu = np.broadcast_arrays(p_hat, p, mu)
    q = np.arange(n + 1) / n
    ph, m = p_hat[..., None], mu[..., None]
    sd = 1.0 - 2.0 * (1.0 + m * ph * q) / (2.0 + m * ph + m * q)
    return _scalar((binomial_weights(p, n) * sd).sum(-1))


def expected_cross_entropy(p_hat, p, n_subregions: int = 1, mu=1.0, reduction: str = "sum"):
    """Exact E[CE] (Eq. 5): ``mu * (-p log p̂ - (1-p) log(1-p̂))`` (α, γ contribute 0), independent of N.

    ``reduction="sum"`` sums over the image as Eq. 5; ``"mean"`` divides by its volume s_α + μ + s_γ (as nnU-Net's
    voxel-averaged CE). The value is +inf where p̂ ∈ {0, 1} contradicts a possible label.
    """
    from scipy.special import xlogy
    p_hat, p, n, mu = _check(p_hat, p, n_subregions, mu)
    with np.errstate(divide="ignore"):
        ce = -(xlogy(p, p_hat) + xlogy(1.0 - p, 1.0 - p_hat))
    out = mu * ce
    if reduction == "mean":
        out = out / (S_ALPHA + mu + S_GAMMA)
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return _scalar(out)


def _sd_values(n: int) -> Callable:
    q = np.arange(n + 1) / n

    def values(p_hat, weights, mu):  # weights (..., N+1); p_hat, mu broadcast against weights[..., 0]
        ph, m = np.asarray(p_hat)[..., None], np.asarray(mu)[..., None]
        return (weights * (1.0 - 2.0 * (1.0 + m * ph * q) / (2.0 + m * ph + m * q))).sum(-1)
    return values


def _ce_values(p_hat, p, mu):
    from scipy.special import xlogy
    with np.errstate(divide="ignore", invalid="ignore"):
        return mu * -(xlogy(p, p_hat) + xlogy(1.0 - p, 1.0 - p_hat))


def _minimise_over_p_hat(values: Callable, aux, mu, grid_size: int = 2001, refine: bool = True) -> np.ndarray:
    """argmin over p̂ ∈ [0, 1] of ``values(p_hat, aux, mu)`` for every row of ``aux`` / entry of ``mu``.

    ``aux`` is what the objective needs besides p̂ and μ (binomial weights for SD, p for CE), one row per problem.
    Grid minimum first (smallest p̂ on ties), then a bounded golden-section refinement, vectorised over all
    problems, on the two grid cells around it; the refined point is kept only where it is strictly better.
    """
    grid = np.linspace(0.0, 1.0, int(grid_size))
    best = np.empty(mu.size)
    invphi = (np.sqrt(5.0) - 1.0) / 2.0

    def f(x, a, m):
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.asarray(values(x, a, m), dtype=np.float64)
        return np.where(np.isnan(v), np.inf, v)

    for start in range(0, mu.size, 256):  # chunks keep memory small for N = 16+ and long p vectors
        sl = slice(start, start + 256)
        a, m = aux[sl], mu[sl]
        vals = f(grid[None, :], a[:, None], m[:, None])
        idx = np.argmin(vals, axis=1)  # first (smallest p̂) on ties
        x, fx = grid[idx], vals[np.arange(idx.size), idx]
        if refine:
            lo, hi = grid[np.maximum(idx - 1, 0)], grid[np.minimum(idx + 1, grid.size - 1)]
            c, d = hi - invphi * (hi - lo), lo + invphi * (hi - lo)
            fc, fd = f(c, a, m), f(d, a, m)
            for _ in range(60):  # bracket width 1e-3 * 0.618^60 < 1e-15
                left = fc < fd
                hi, lo = np.where(left, d, hi), np.where(left, lo, c)
                c_new, d_new = hi - invphi * (hi - lo), lo + invphi * (hi - lo)
                fd, fc = np.where(left, fc, f(d_new, a, m)), np.where(left, f(c_new, a, m), fd)
                c, d = np.where(left, c_new, d), np.where(left, c, d_new)
            xr = 0.5 * (lo + hi)
            fr = f(xr, a, m)
            better = np.isfinite(fr) & (fr < fx - 1e-15)
            x = np.where(better, xr, x)
        best[sl] = x
    return best


def optimal_p_hat_soft_dice(p, n_subregions: int = 1, mu=1.0, grid_size: int = 2001, refine: bool = True):
    """The p̂ ∈ [0, 1] that minimises the exact E[SD] (smallest one on exact ties); p and mu broadcast."""
    _, p, n, mu = _check(0.0, p, n_subregions, mu)
    p, mu = np.broadcast_arrays(p, mu)
    weights = binomial_weights(p.ravel(), n)
    best = _minimise_over_p_hat(_sd_values(n), weights, mu.ravel(), grid_size, refine)
    return _scalar(best.reshape(p.shape))


def optimal_p_hat_cross_entropy(p, n_subregions: int = 1, mu=1.0, numerical: bool = False, grid_size: int = 2001):
    """The p̂ minimising E[CE]: exactly p (first-order condition, Eq. 9). ``numerical=True`` runs the same grid +
    bounded minimiser as for SD instead (used by the tests to confirm the closed form); μ > 0 is needed for a
    unique answer."""
    _, p, n, mu = _check(0.0, p, n_subregions, mu)
    p, mu = np.broadcast_arrays(p, mu)
    if not numerical:
        return _scalar(p.copy())
    best = _minimise_over_p_hat(_ce_values, p.ravel(), mu.ravel(), grid_size)
    return _scalar(best.reshape(p.shape))


def optimal_p_hat(p, n_subregions: int = 1, mu=1.0, loss: str = "soft_dice"):
    if loss == "soft_dice":
        return optimal_p_hat_soft_dice(p, n_subregions, mu)
    if loss == "cross_entropy":
        return optimal_p_hat_cross_entropy(p, n_subregions, mu)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def expected_true_volume(p, mu=1.0):
    """E[V(Y)] = s_γ + μ p (Eq. 7; α contributes 0), in units of s_γ."""
    return _scalar(S_GAMMA + np.asarray(mu, dtype=np.float64) * np.asarray(p, dtype=np.float64))


def expected_predicted_volume(p_hat, mu=1.0):
    """V(Ŷ) = s_γ + μ p̂ (Eq. 7, the probabilistic volume Σ s_j p̂_j), in units of s_γ."""
    return _scalar(S_GAMMA + np.asarray(mu, dtype=np.float64) * np.asarray(p_hat, dtype=np.float64))


def volume_bias(p, n_subregions: int = 1, mu=1.0, loss: str = "soft_dice"):
    """ΔV = V(Ŷ) − E[V(Y)] = μ (p̂* − p) of the risk-minimising prediction for ``loss``, in units of s_γ."""
    p_opt = optimal_p_hat(p, n_subregions, mu, loss)
    return _scalar(np.asarray(expected_predicted_volume(p_opt, mu)) - np.asarray(expected_true_volume(p, mu)))


def uncertainty_error(p, n_subregions: int = 1, mu=1.0, loss: str = "soft_dice"):
    """Error in the predicted uncertainty p̂* − p of the risk-minimising prediction for ``loss``."""
    return _scalar(np.asarray(optimal_p_hat(p, n_subregions, mu, loss)) - np.asarray(p, dtype=np.float64))


def flip_threshold(n_subregions: int, mu: float, tol: float = 1e-10) -> float:
    """The p at which the SD-optimal p̂ jumps from 0 to 1, by bisection.

    Bisects on the sign of E[SD](p̂ = 1) − E[SD](p̂ = 0) (decreasing in p), then checks with the full minimiser
    (:func:`optimal_p_hat_soft_dice`) that the optimum is 0 just below and 1 just above the result; if it is not
    (an interior optimum), it bisects on ``p̂*(p) > 1/2`` with the full minimiser instead.
    For N = 1 the result is exactly 1/2 for every μ; it decreases with μ and N towards :func:`flip_threshold_limit`.
    Raises if μ <= 0 (then every p̂ is optimal).
    """
    if not mu > 0:
        raise ValueError("mu must be > 0 (for mu = 0 soft Dice does not depend on p_hat)")

    def bisect(above):
        lo, hi = 0.0, 1.0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if above(mid) else (mid, hi)
        return 0.5 * (lo + hi)

    flip = bisect(lambda p: expected_soft_dice(1.0, p, n_subregions, mu) < expected_soft_dice(0.0, p, n_subregions, mu))
    eps = max(10 * tol, 1e-7)
    below, above = optimal_p_hat_soft_dice(np.array([max(flip - eps, 0.0), min(flip + eps, 1.0)]), n_subregions, mu)
    if below == 0.0 and above == 1.0:
        return flip
    return bisect(lambda p: optimal_p_hat_soft_dice(p, n_subregions, mu) > 0.5)


def flip_threshold_limit(mu):
    """Flip threshold for N → ∞ (deterministic fraction k/N = p): the root of μp² + 2p − 1 = 0, (√(1+μ) − 1)/μ."""
    mu = np.asarray(mu, dtype=np.float64)
    return _scalar((np.sqrt(1.0 + mu) - 1.0) / mu)


def summary_table(n_values: Sequence[int] = FIG1_N, mu_values: Sequence[float] = FIG1_MU,
                  n_p: int = 201) -> list:
    """Rows (N, μ, flip threshold, max |ΔV_SD|, max |p̂*−p|, optimum always 0/1?) over a grid of p."""
    rows = []
    p = np.linspace(0.0, 1.0, n_p)
    for n in n_values:
        for mu in mu_values:
            p_opt = np.asarray(optimal_p_hat_soft_dice(p, n, mu))
            err = p_opt - p
            rows.append({"N": n, "mu": mu, "flip": flip_threshold(n, mu), "max_abs_bias": float(np.max(np.abs(mu * err))),
                         "max_abs_uncertainty_error": float(np.max(np.abs(err))),
                         "binary_optimum": bool(np.all((p_opt == 0) | (p_opt == 1)))})
    return rows


# ----------------------------------------------------------------------------------------------------- Fig. 1
def _draw_schematic(ax, n: int):
    from matplotlib.patches import Rectangle, Wedge, Circle
    ax.add_patch(Rectangle((0, 0), 1, 1, facecolor="0.93", edgecolor="0.5"))
    c, r_in, r_out = (0.5, 0.5), 0.17, 0.38
    rot = 90.0
    for i in range(n):
        th1, th2 = rot + 360.0 * i / n, rot + 360.0 * (i + 1) / n
        ax.add_patch(Wedge(c, r_out, th1, th2, width=r_out - r_in, facecolor="0.55" if i % 2 else "0.68",
                           edgecolor="white", lw=0.8))
    ax.add_patch(Circle(c, r_in, facecolor="0.15"))
    ax.text(0.05, 0.9, "α", fontsize=11)
    ax.text(0.5, 0.5, "γ", color="white", ha="center", va="center", fontsize=11)
    ax.text(0.5, 0.5 + (r_in + r_out) / 2, "β", ha="center", va="center", fontsize=11)
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02), ax.set_aspect("equal"), ax.axis("off")
    ax.set_title(f"N = {n}", fontsize=9)


def _draw_bias_panel(ax, n: int, mu_values: Sequence[float], colors: Sequence[str], p_axis: np.ndarray) -> None:
    """Fig. 1's last column for N = ``n``: the SD optimum's volume bias μ(p̂* − p) (solid) and p̂* − p (dashed)
    against p, one colour per μ; the light red band spans [p_flip(N, max μ), 1/2]."""
    flip_max = flip_threshold(n, max(mu_values), tol=1e-6)
    if flip_max < 0.5 - 1e-6:
        ax.axvspan(flip_max, 0.5, color="tab:red", alpha=0.15, lw=0)
    ax.axhline(0, color="0.6", lw=0.8)
    lim = 0.0
    for mu, color in zip(mu_values, colors):
        p_opt = np.asarray(optimal_p_hat_soft_dice(p_axis, n, mu))
        ax.plot(p_axis, mu * (p_opt - p_axis), color=color, lw=1.4, label=f"ΔV, μ = {mu:g}")
        ax.plot(p_axis, p_opt - p_axis, color=color, lw=1.0, ls="--")
        lim = max(lim, 1.1 * float(np.max(np.abs(mu * (p_opt - p_axis)))))
    ax.set_ylim(-lim, lim), ax.set_xlim(0, 1)
    ax.set_xlabel("p", fontsize=8), ax.tick_params(labelsize=7)


def plot_figure1(path, n_values: Sequence[int] = FIG1_N, mu_values: Sequence[float] = FIG1_MU,
                 p_values: Sequence[float] = FIG1_P, n_p: int = 201, dpi: int = 80) -> Path:
    """Draw Fig. 1 of Bertels et al. 2020 to a PNG at ``path`` (matplotlib, Agg) and return the path.

    Rows: N = 1, 4, 16 (A–C). Column 0: schematic (α background, γ certain core, β ring of N sub-regions).
    Columns 1–3: exact E[SD] (y) against p̂ (x) for μ = 0.25, 1, 4 (one column each, colours blue/black/red),
    one curve per p ∈ {0, .25, .5, .75, 1} with increasing opacity; dots mark each curve's minimum. Column 4: for
    each μ, the volume bias μ(p̂* − p) of the SD optimum (solid) and the error in predicted uncertainty p̂* − p
    (dashed) against p; the light red band spans [p_flip(N, max μ), 1/2], the p < 1/2 where SD already
    over-estimates (empty for N = 1). CE's optimum p̂ = p has zero of both (grey line).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_values, mu_values = tuple(n_values), tuple(mu_values)
    colors = [FIG1_COLORS.get(float(m), c) for m, c in zip(mu_values, ("tab:blue", "black", "tab:red", "tab:green"))]
    grid = np.linspace(0.0, 1.0, 201)
    p_axis = np.linspace(0.0, 1.0, n_p)
    fig, axes = plt.subplots(len(n_values), 1 + len(mu_values) + 1,
                             figsize=(2.6 * (len(mu_values) + 2), 2.4 * len(n_values)), squeeze=False)
    alphas = np.linspace(0.2, 1.0, len(p_values))
    for r, n in enumerate(n_values):
        row = "ABCDEFGH"[r]
        _draw_schematic(axes[r, 0], n)
        axes[r, 0].set_title(f"{row}0: N = {n}", fontsize=9)
        for c, (mu, color) in enumerate(zip(mu_values, colors), start=1):
            ax = axes[r, c]
            for pv, a in zip(p_values, alphas):
                sd = expected_soft_dice(grid, pv, n, mu)
                ax.plot(grid, sd, color=color, alpha=a, lw=1.2)
                x = optimal_p_hat_soft_dice(pv, n, mu)
                ax.plot([x], [expected_soft_dice(x, pv, n, mu)], "o", color=color, alpha=a, ms=3.5)
            ax.set_ylim(0, 1), ax.set_xlim(0, 1)
            ax.set_title(f"{row}{c}: E[SD], μ = {mu:g}", fontsize=9)
            ax.set_xlabel("p̂", fontsize=8), ax.tick_params(labelsize=7)
            if c == 1:
                ax.set_ylabel("E[SD]", fontsize=8)
        _draw_bias_panel(axes[r, -1], n, mu_values, colors, p_axis)
        axes[r, -1].set_title(f"{row}{len(mu_values) + 1}: ΔV (—), p̂*−p (--)", fontsize=9)
        if r == 0:
            axes[r, -1].legend(fontsize=6, loc="upper left", frameon=False)
    fig.suptitle(f"{PAPER_SHORT}, Fig. 1, exact: soft-Dice-optimal p̂ and its volume bias (CE: p̂ = p, ΔV = 0)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")  # without format, a path lacking ".png" gets it appended
    plt.close(fig)
    return path

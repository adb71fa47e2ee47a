"""Paired statistics over cases: bootstrap confidence interval and p-value, Wilcoxon signed-rank, Holm.

* :func:`bootstrap_mean` resamples the cases (with replacement, ``n_boot`` times, a seeded
  ``numpy.random.default_rng``) and reports the mean, the percentile confidence interval of the mean and the
  two-sided bootstrap p-value of "mean = 0": ``min(1, 2 min(P*(m <= 0), P*(m >= 0)))`` with the ``(1 + #) /
  (n_boot + 1)`` correction, so ``p < alpha`` exactly when the percentile interval at level ``1 - alpha``
  excludes 0 (up to the +1). This is the pairwise non-parametric bootstrap test of the tables of Bertels et al.
  2020 and 2019. It is floored at ``2^(1-n)``: with all ``n`` differences of one sign every resample has a mean
  of that sign and the raw bootstrap p would be ~0 even for n = 2; no exact test on n paired cases goes below
  ``2^(1-n)``.
* :func:`wilcoxon` is ``scipy.stats.wilcoxon`` (two-sided, zero differences dropped as Wilcoxon did); all-zero
  differences give p = 1.
* :func:`holm` adjusts a family of p-values (Holm-Bonferroni step-down, monotone, capped at 1); NaN entries
  are not counted in the family and stay NaN.
Cases where a metric is NaN for either side (e.g. Dice with empty reference and prediction) are dropped
pairwise and the number used is reported (``n``).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

NAN = float("nan")
DEFAULT_N_BOOT = 10_000
DEFAULT_SEED = 0


def bootstrap_mean(values: Sequence[float], n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
                   alpha: float = 0.05) -> Dict[str, float]:
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": NAN, "ci_low": NAN, "ci_high": NAN, "p_bootstrap": NAN}
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    block = max(1, 2_000_000 // n)
    for s in range(0, n_boot, block):
        m = min(block, n_boot - s)
        boot[s:s + m] = x[rng.integers(0, n, size=(m, n))].mean(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    le = (1 + np.count_nonzero(boot <= 0)) / (n_boot + 1)
    ge = (1 + np.count_nonzero(boot >= 0)) / (n_boot + 1)
    # floor: 2^(1-n) is the smallest two-sided p an exact sign-flip test on n paired cases can reach; the
    # percentile bootstrap gives ~0 whenever all n differences share a sign, however small n is
    p = max(min(1.0, 2 * min(le, ge)), 2.0 ** (1 - n))
    if np.all(x == 0):
        p = 1.0
    return {"n": int(n), "mean": float(x.mean()), "ci_low": float(lo), "ci_high": float(hi), "p_bootstrap": float(p)}


def wilcoxon(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return NAN
    if np.all(x == 0):
        return 1.0
    from scipy.stats import wilcoxon as _w
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_w(x, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, NAN)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired(a: Sequence[float], b: Sequence[float], n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
           alpha: float = 0.05) -> Dict[str, float]:
    """Paired comparison of ``b - a`` over the cases where both are defined."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    d = b[ok] - a[ok]
    res = bootstrap_mean(d, n_boot=n_boot, seed=seed, alpha=alpha)
    res = {"n": res["n"], "n_dropped_nan": int((~ok).sum()), "mean_a": float(a[ok].mean()) if ok.any() else NAN,
           "mean_b": float(b[ok].mean()) if ok.any() else NAN, "mean_diff": res["mean"], "ci_low": res["ci_low"],
           "ci_high": res["ci_high"], "p_bootstrap": res["p_bootstrap"], "p_wilcoxon": wilcoxon(d)}
    return res


def one_sample(x: Sequence[float], n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED,
               alpha: float = 0.05) -> Dict[str, float]:
    """Is the mean of ``x`` (e.g. a trainer's dV) different from 0? Bootstrap + Wilcoxon."""
    x = np.asarray(x, dtype=np.float64)
    res = bootstrap_mean(x, n_boot=n_boot, seed=seed, alpha=alpha)
    res["n_dropped_nan"] = int(np.isnan(x).sum())
    res["p_wilcoxon"] = wilcoxon(x)
    return res

"""The predicted volume as a random variable: Poisson-binomial mean, spread, interval, CRPS; Bland-Altman.

If the voxels' labels were independent with ``P(y_i = 1) = p_i`` (what a calibrated probability map claims), the
class volume is ``V = v sum_i B_i``, ``B_i ~ Bernoulli(p_i)`` -- a Poisson-binomial count times the voxel volume
``v``:

* mean ``mu = v sum p``, variance ``sigma^2 = v^2 sum p (1 - p)`` (= ``v^2 (sum p - sum p^2)``, both sums already in
  the streamed pass's statistics, so nothing is added to it);
* 95 % interval ``mu +- z_{0.975} sigma`` (normal approximation of the count, Lyapunov's central limit theorem;
  accurate once ``sigma`` is a few voxels; a saturated map has ``sigma ~ 0`` and an interval of width ~0, which is
  what such a map claims);
* CRPS of the volume against the reference volume ``x`` under that normal distribution,
  ``sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]``, ``z = (x - mu)/sigma`` (Gneiting & Raftery 2007, eq. 21);
  ``|x - mu|`` when ``sigma = 0``;
* over cases: the interval's coverage of the reference volume (95 % for a calibrated model), the mean CRPS, and
  Bland-Altman of predicted vs reference volume: bias = mean ``d``, ``d = V_pred - V_ref``, limits of agreement
  ``bias +- 1.96 sd(d)`` (sample sd).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

Z95 = 1.959963984540054  # Phi^{-1}(0.975)
LOA_Z = 1.96  # Bland & Altman's own constant
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def volume_distribution(sum_p: float, sum_p2: float, voxel_volume: float) -> Dict[str, float]:
    """Poisson-binomial volume of one class in one case: mean, sd and 95 % interval (see module doc)."""
    mean = float(sum_p) * voxel_volume
    var_count = max(float(sum_p) - float(sum_p2), 0.0)  # sum p(1-p) >= 0; rounding can make it -1e-12
    sd = math.sqrt(var_count) * voxel_volume
    return {"V_mean": mean, "V_sd": sd, "V_low": mean - Z95 * sd, "V_high": mean + Z95 * sd}


def normal_crps(mean: float, sd: float, x: float) -> float:
    """CRPS of ``N(mean, sd^2)`` at the observation ``x`` (closed form; ``|x - mean|`` for ``sd = 0``)."""
    if sd <= 0:
        return abs(x - mean)
    z = (x - mean) / sd
    cdf = 0.5 * math.erfc(-z / math.sqrt(2.0))
    pdf = _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    return sd * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI)


def case_volume(sum_p: float, sum_p2: float, voxel_volume: float, v_ref: float) -> Dict[str, float]:
    """Per case and class: the distribution, whether its interval covers ``v_ref``, and the CRPS."""
    d = volume_distribution(sum_p, sum_p2, voxel_volume)
    d["covers_V_ref"] = bool(d["V_low"] <= v_ref <= d["V_high"])
    d["CRPS"] = normal_crps(d["V_mean"], d["V_sd"], v_ref)
    return d


def bland_altman(v_pred: Sequence[float], v_ref: Sequence[float]) -> Dict[str, float]:
    """Bias and 95 % limits of agreement of ``v_pred - v_ref`` over cases (NaN pairs dropped)."""
    a = np.asarray(v_pred, dtype=np.float64)
    b = np.asarray(v_ref, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = int(d.size)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return {"n": n, "bias": bias, "sd_diff": sd, "loa_low": bias - LOA_Z * sd, "loa_high": bias + LOA_Z * sd}


def volume_summary(rows: Sequence[dict]) -> Dict[str, float]:
    """Across cases of one class: interval coverage, mean CRPS, mean sd, Bland-Altman of the soft (expected) volume
    and of the hard (argmax) volume. ``rows``: per-case dicts with ``V_mean, V_sd, covers_V_ref, CRPS, V_ref,
    V_pred``."""
    n = len(rows)
    cov = [r["covers_V_ref"] for r in rows]
    return {"n_cases": n,
            "coverage_95": float(np.mean(cov)) if n else math.nan,
            "CRPS_mean": float(np.mean([r["CRPS"] for r in rows])) if n else math.nan,
            "V_sd_mean": float(np.mean([r["V_sd"] for r in rows])) if n else math.nan,
            "bland_altman_soft": bland_altman([r["V_mean"] for r in rows], [r["V_ref"] for r in rows]),
            "bland_altman_hard": bland_altman([r["V_pred"] for r in rows], [r["V_ref"] for r in rows])}

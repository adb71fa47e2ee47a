"""Probabilistic volume (evaluation/volume.py) on probability maps that are calibrated by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_losses.evaluation.volume import bland_altman, case_volume, normal_crps, volume_distribution, volume_summary


def calibrated_case(rng, n_voxels=3000):
    """A probability map and a reference drawn from it: y_i ~ Bernoulli(p_i) independently."""
    p = rng.beta(0.4, 1.2, n_voxels)
    p[rng.uniform(0, 1, n_voxels) < 0.3] = 0.0  # saturated background, as nnU-Net's maps
    y = rng.uniform(0, 1, n_voxels) < p
    return p, y


def test_mean_and_sd_are_the_poisson_binomial_moments():
    p = np.array([0.1, 0.5, 0.9, 1.0, 0.0, 0.25])
    d = volume_distribution(p.sum(), (p ** 2).sum(), 2.5)
    assert d["V_mean"] == pytest.approx(2.5 * p.sum())
    assert d["V_sd"] == pytest.approx(2.5 * math.sqrt(np.sum(p * (1 - p))))
    assert d["V_high"] - d["V_mean"] == pytest.approx(1.959964 * d["V_sd"], rel=1e-6)


def test_interval_covers_95_percent_of_references_of_a_calibrated_model():
    rng = np.random.default_rng(0)
    vv = 0.8
    rows = []
    for _ in range(2500):
        p, y = calibrated_case(rng)
        r = case_volume(p.sum(), (p ** 2).sum(), vv, y.sum() * vv)
        rows.append({**r, "V_ref": y.sum() * vv, "V_pred": (p > 0.5).sum() * vv})
    s = volume_summary(rows)
    assert s["n_cases"] == 2500
    assert abs(s["coverage_95"] - 0.95) <= 0.02, s["coverage_95"]
    # a model whose probabilities are made over-confident (p^(1/T), T = 0.5 sharpens) under-covers
    rows = []
    for _ in range(500):
        p, y = calibrated_case(rng)
        q = p ** 2 / (p ** 2 + (1 - p) ** 2)
        rows.append(case_volume(q.sum(), (q ** 2).sum(), vv, y.sum() * vv))
    assert np.mean([r["covers_V_ref"] for r in rows]) < 0.85


def mc_crps(samples, x):
    """CRPS = E|X - x| - E|X - X'| / 2 from samples (E|X - X'| by the sorted-sample identity)."""
    s = np.sort(np.asarray(samples, dtype=np.float64))
    n = s.size
    e_abs = np.mean(np.abs(s - x))
    gini = 2.0 * np.sum((2 * np.arange(1, n + 1) - n - 1) * s) / n ** 2
    return e_abs - 0.5 * gini


@pytest.mark.parametrize("offset_sd", [0.0, 0.7, 2.5])
def test_crps_equals_monte_carlo_of_the_poisson_binomial_volume(offset_sd):
    rng = np.random.default_rng(1)
    # few distinct probabilities, many voxels each: the Poisson-binomial count is a sum of binomials (exact draws)
    levels = np.array([0.02, 0.1, 0.3, 0.5, 0.8, 0.97])
    counts = np.array([4000, 1500, 600, 400, 700, 900])
    sum_p, sum_p2 = float(levels @ counts), float((levels ** 2) @ counts)
    vv = 0.3
    d = volume_distribution(sum_p, sum_p2, vv)
    x = d["V_mean"] + offset_sd * d["V_sd"]
    draws = sum(rng.binomial(n, q, size=400_000) for n, q in zip(counts, levels)) * vv
    assert normal_crps(d["V_mean"], d["V_sd"], x) == pytest.approx(mc_crps(draws, x), rel=0.01)


def test_crps_of_a_point_forecast_is_the_absolute_error():
    assert normal_crps(3.0, 0.0, 5.5) == 2.5
    assert case_volume(4.0, 4.0, 1.0, 6.0)["CRPS"] == pytest.approx(2.0)  # all p in {0, 1}


def test_bland_altman_against_definition():
    a = np.array([1.0, 2.0, 4.0, np.nan, 7.0])
    b = np.array([1.5, 1.0, 5.0, 3.0, 6.0])
    r = bland_altman(a, b)
    d = np.array([-0.5, 1.0, -1.0, 1.0])
    assert r["n"] == 4 and r["bias"] == pytest.approx(d.mean())
    assert r["loa_high"] - r["bias"] == pytest.approx(1.96 * d.std(ddof=1))
    assert r["loa_low"] == pytest.approx(d.mean() - 1.96 * d.std(ddof=1))

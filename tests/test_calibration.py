"""Post-hoc calibration maps (evaluation/calibration.py) on data whose temperature is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_losses.evaluation.calibration import (CalibrationMap, VoxelSamples, _objective, fit_calibration, fit_map,
                                                  sample_case, saturated_fraction)
from nnunet_losses.evaluation.spec import TaskSpec


def softmax(a, axis=-1):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def calibrated_voxels(rng, n=40000, K=3, scale=2.5):
    """True probabilities and labels drawn from them (calibrated by construction)."""
    logits = rng.normal(0, scale, (n, K))
    p = softmax(logits)
    y = (rng.uniform(0, 1, n)[:, None] > np.cumsum(p, 1)).sum(1)
    return logits, p, y


def ref_nll(q, y, w):
    return float(-np.sum(w * np.log(q[np.arange(len(y)), y])) / np.sum(w))


@pytest.mark.parametrize("t_known", [0.5, 2.0])
def test_temperature_scaling_recovers_a_known_temperature(t_known):
    """Probabilities made over/under-confident as p^(1/T) renormalised: the fitted T undoes it (T_fit = 1/T)."""
    rng = np.random.default_rng(0)
    logits, p, y = calibrated_voxels(rng)
    observed = softmax(logits / t_known)
    m = fit_map("temperature", observed, y)
    t_fit = 1.0 / m.W[0, 0]
    assert t_fit * t_known == pytest.approx(1.0, rel=0.05)
    assert np.allclose(m(np.log(observed)), p, atol=0.03)


def voxels_of_a_known_map(rng, W, b, n=60000, K=3):
    """Saved probabilities ``obs`` and labels drawn from ``softmax(W log obs + b)``: the map is the truth."""
    obs = softmax(rng.normal(0, 2.0, (n, K)))
    p = softmax(np.log(obs) @ np.asarray(W).T + b)
    y = (rng.uniform(0, 1, n)[:, None] > np.cumsum(p, 1)).sum(1)
    return obs, p, y


def test_vector_scaling_recovers_per_class_temperatures():
    """Per-class temperatures T_c (scales w_c = 1/T_c on log p, plus biases) are recovered within 5 %. (A softmax
    of logits / T_c has no such map on the saved probabilities: its per-voxel normaliser is scaled differently per
    class, so the per-class temperatures of *logits* are not identifiable from probabilities.)"""
    rng = np.random.default_rng(1)
    t_known = np.array([0.5, 1.0, 2.0])
    b = np.array([0.0, 0.3, -0.4])
    obs, p, y = voxels_of_a_known_map(rng, np.diag(1 / t_known), b)
    m = fit_map("vector", obs, y)
    assert 1 / m.W.diagonal() == pytest.approx(t_known, rel=0.05)
    assert m.b == pytest.approx(b, abs=0.05)


def test_dirichlet_recovers_a_linear_map_of_log_probabilities():
    rng = np.random.default_rng(2)
    A = np.array([[0.6, 0.2, 0.0], [0.1, 0.8, 0.1], [0.0, 0.3, 0.5]])
    obs, p, y = voxels_of_a_known_map(rng, A, np.zeros(3))
    m = fit_map("dirichlet", obs, y, lam=0.0)
    q = m(np.log(obs))
    assert np.abs(q - p).max() < 0.05
    assert ref_nll(q, y, np.ones(len(y))) <= ref_nll(p, y, np.ones(len(y))) + 2e-3
    assert ref_nll(q, y, np.ones(len(y))) < ref_nll(obs, y, np.ones(len(y))) - 0.05


@pytest.mark.parametrize("method", ["temperature", "vector", "dirichlet"])
def test_gradient_matches_finite_differences(method):
    rng = np.random.default_rng(3)
    _, p, y = calibrated_voxels(rng, n=300)
    z = np.log(np.maximum(p, 1e-7))
    w = rng.uniform(0.5, 2, len(y))
    w /= w.sum()
    K = 3
    theta = {"temperature": np.array([0.3]), "vector": rng.normal(1, 0.2, 2 * K - 1),
             "dirichlet": rng.normal(0, 0.5, K * K + K - 1)}[method]
    f0, g = _objective(theta, method, z, y, w, 0.1)
    num = np.zeros_like(theta)
    for i in range(len(theta)):
        d = np.zeros_like(theta)
        d[i] = 1e-6
        num[i] = (_objective(theta + d, method, z, y, w, 0.1)[0] - _objective(theta - d, method, z, y, w, 0.1)[0]) / 2e-6
    assert g == pytest.approx(num, rel=1e-5, abs=1e-8)
    # and the objective is the weighted NLL written out
    if method == "temperature":
        q = softmax(z / math.exp(theta[0]))
        assert f0 == pytest.approx(ref_nll(q, y, w), rel=1e-12)


def test_weighted_stratified_sample_estimates_the_case_nll():
    rng = np.random.default_rng(4)
    shape = (30, 40, 50)
    logits = rng.normal(0, 2, (3, *shape))
    logits[0] += 4  # mostly background
    p = softmax(logits, 0).astype(np.float32)
    ref = (rng.uniform(0, 1, shape)[None] > np.cumsum(p, 0)).sum(0).astype(np.uint8)
    s = sample_case(p, ref, TaskSpec.labels(3), 2000, rng)
    assert s.weights.sum() == pytest.approx(ref.size)
    full = -np.log(np.take_along_axis(p.reshape(3, -1), ref.reshape(1, -1), 0)).mean()
    est = ref_nll(s.p.astype(np.float64), s.labels, s.weights)
    assert est == pytest.approx(full, rel=0.05)


def test_apply_labels_and_regions_and_json_round_trip():
    rng = np.random.default_rng(5)
    logits, p, y = calibrated_voxels(rng, n=20000)
    obs = softmax(logits / 0.5)
    spec = TaskSpec.labels(3)
    cal = fit_calibration("temperature", VoxelSamples(obs.astype(np.float32), y, np.ones(len(y))), spec)
    vol = obs.T.reshape(3, 20, 1000).astype(np.float32)
    out = cal.apply(vol)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.allclose(out.sum(0), 1, atol=1e-5)
    assert np.array_equal(out.argmax(0), vol.argmax(0))  # temperature keeps the argmax
    again = CalibrationMap.from_json(cal.to_json())
    assert np.array_equal(again.apply(vol), out)
    # regions: one binary map per region channel; sigmoid(logit / T) recovered
    rspec = TaskSpec.regions([(1, 2), (2,)], [1, 2])
    # region (1, 2) is calibrated with logit z0; the region file shows sigmoid(z0 / 0.5): T_fit = 2 undoes it
    z = rng.normal(0, 3, (2, 30000))
    truth = 1 / (1 + np.exp(-z))
    inside = rng.uniform(0, 1, 30000) < truth[0]
    inner = inside & (rng.uniform(0, 1, 30000) < truth[1] / np.maximum(truth[0], 1e-9))
    lab = np.where(inner, 2, np.where(inside, 1, 0))
    obs_r = 1 / (1 + np.exp(-z / 0.5))
    rcal = fit_calibration("temperature", VoxelSamples(obs_r.T.astype(np.float32), lab, np.ones(30000)), rspec)
    assert 1.0 / rcal.maps[0].W[0, 0] == pytest.approx(2.0, rel=0.05)


def test_saturated_fraction():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [0.999, 0.001, 0.0]])
    assert saturated_fraction(p) == pytest.approx(2 / 3)
    assert saturated_fraction(p, np.array([1.0, 2.0, 1.0])) == pytest.approx(0.5)

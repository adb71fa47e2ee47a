"""nnunet_losses.research.theory: seed 001 Sect. 2.2 / Fig. 1, exact expectations vs closed forms, limits and Monte Carlo."""

import numpy as np
import pytest

from nnunet_losses.research import theory as T

MUS = (0.1, 0.25, 1.0, 4.0, 10.0)


def sd_n1_closed_form(p_hat, p, mu):
    """N = 1: E[SD] = (1-p) x/(2+x) + p (mu-x)/(2+mu+x), x = mu p_hat (derived in the theory module's docstring)."""
    x = mu * p_hat
    return (1 - p) * x / (2 + x) + p * (mu - x) / (2 + mu + x)


def sd_direct(pred, truth, volumes):
    """Eq. 6 written out over the regions (alpha, beta_0..beta_{N-1}, gamma) with their volumes."""
    return 1 - 2 * (volumes * pred * truth).sum(-1) / ((volumes * pred).sum(-1) + (volumes * truth).sum(-1))


def test_n1_expectation_equals_closed_form():
    p_hat = np.linspace(0, 1, 41)[:, None, None]
    p = np.linspace(0, 1, 21)[None, :, None]
    mu = np.array(MUS)[None, None, :]
    np.testing.assert_allclose(T.expected_soft_dice(p_hat, p, 1, mu), sd_n1_closed_form(p_hat, p, mu),
                               rtol=0, atol=1e-13)


@pytest.mark.parametrize("mu", MUS)
def test_n1_flip_at_one_half_for_every_mu(mu):
    assert T.flip_threshold(1, mu) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("mu", MUS)
def test_n1_optimum_is_binary_and_bias_is_plus_minus_half_mu(mu):
    p = np.concatenate([np.linspace(0, 0.49, 50), np.linspace(0.51, 1, 50), [0.5 - 1e-7, 0.5 + 1e-7]])
    p_opt = T.optimal_p_hat_soft_dice(p, 1, mu)
    np.testing.assert_array_equal(p_opt, (p > 0.5).astype(float))  # p̂* ∈ {0, 1}, 0 below 1/2, 1 above
    bias = T.volume_bias(p, 1, mu)
    np.testing.assert_allclose(bias, np.where(p < 0.5, -mu * p, mu * (1 - p)), atol=1e-12)
    # next to the flip the bias is -mu/2 (under-estimation) / +mu/2 (over-estimation), and never larger
    assert bias[-2] == pytest.approx(-mu / 2, abs=1e-5) and bias[-1] == pytest.approx(mu / 2, abs=1e-5)
    assert np.all(np.abs(bias) <= mu / 2 + 1e-12)
    # antisymmetry around p = 1/2 and a predicted-uncertainty error that does not depend on mu
    np.testing.assert_allclose(T.volume_bias(1 - p, 1, mu), -bias, atol=1e-12)
    np.testing.assert_allclose(T.uncertainty_error(p, 1, mu), bias / mu, atol=1e-12)
    # the end-point values of the derivation: f(0) = p mu/(2+mu), f(mu) = (1-p) mu/(2+mu)
    np.testing.assert_allclose(T.expected_soft_dice(0.0, p, 1, mu), p * mu / (2 + mu), atol=1e-14)
    np.testing.assert_allclose(T.expected_soft_dice(1.0, p, 1, mu), (1 - p) * mu / (2 + mu), atol=1e-14)


def test_ce_optimum_is_p_analytically_and_numerically():
    p = np.array([0.0, 0.03, 0.2, 0.37, 0.5, 0.8, 0.999, 1.0])
    for n, mu in ((1, 1.0), (4, 0.25), (16, 4.0)):
        np.testing.assert_array_equal(T.optimal_p_hat_cross_entropy(p, n, mu), p)
        np.testing.assert_allclose(T.optimal_p_hat_cross_entropy(p, n, mu, numerical=True), p, atol=1e-6)
        np.testing.assert_allclose(T.volume_bias(p, n, mu, loss="cross_entropy"), 0.0, atol=0)
    # first-order condition: d/dp̂ E[CE] = mu (p̂ - p) / (p̂ (1 - p̂)) = 0 at p̂ = p
    h, pp, mu = 1e-6, 0.3, 2.0
    deriv = (T.expected_cross_entropy(pp + h, pp, 1, mu) - T.expected_cross_entropy(pp - h, pp, 1, mu)) / (2 * h)
    assert abs(deriv) < 1e-6
    # E[CE] is linear in the labels: independent of N, symmetric under (p̂, p) -> (1-p̂, 1-p)
    ph = np.linspace(0.01, 0.99, 25)[:, None]
    q = np.linspace(0, 1, 11)[None, :]
    np.testing.assert_allclose(T.expected_cross_entropy(ph, q, 1, 1.5), T.expected_cross_entropy(ph, q, 16, 1.5))
    np.testing.assert_allclose(T.expected_cross_entropy(ph, q, 4, 1.5), T.expected_cross_entropy(1 - ph, 1 - q, 4, 1.5))
    assert T.expected_cross_entropy(0.5, 0.5, 1, 1.0, reduction="mean") == pytest.approx(np.log(2) / 102)
    assert T.expected_cross_entropy(0.0, 0.2, 1, 1.0) == np.inf


def test_limits_and_sanity():
    p_hat = np.linspace(0, 1, 51)[:, None]
    p = np.linspace(0, 1, 51)[None, :]
    for n in (1, 4, 16):
        for mu in (0.25, 1.0, 4.0):
            sd = T.expected_soft_dice(p_hat, p, n, mu)
            assert sd.shape == (51, 51) and np.all(sd >= -1e-15) and np.all(sd <= 1)
            # certain cases: perfect prediction has zero loss and is the optimum (no bias)
            assert T.expected_soft_dice(0.0, 0.0, n, mu) == 0 and T.expected_soft_dice(1.0, 1.0, n, mu) == pytest.approx(0)
            assert T.optimal_p_hat_soft_dice(0.0, n, mu) == 0 and T.optimal_p_hat_soft_dice(1.0, n, mu) == 1
    # mu -> 0: soft Dice no longer depends on p̂ and the bias vanishes
    assert np.ptp(T.expected_soft_dice(p_hat, 0.3, 4, 1e-9)) < 1e-9
    assert np.max(np.abs(T.volume_bias(np.linspace(0, 1, 21), 4, 1e-6))) < 1e-6
    # no smoothing term: with gamma always present the loss is defined at p̂ = 0 and equals k mu/N / (2 + k mu/N)
    assert T.soft_dice_given_draw(0.0, 2, 4, 2.0) == pytest.approx(1.0 / 3.0)
    with pytest.raises(ValueError):
        T.expected_soft_dice(1.2, 0.5, 1, 1.0)
    with pytest.raises(ValueError):
        T.flip_threshold(4, 0.0)


def test_vectorised_broadcasting_matches_scalar_calls():
    p_hat = np.array([0.0, 0.3, 1.0])[:, None]
    p = np.array([0.1, 0.5, 0.7, 0.95])[None, :]
    out = T.expected_soft_dice(p_hat, p, 4, 2.0)
    assert out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == pytest.approx(T.expected_soft_dice(float(p_hat[i, 0]), float(p[0, j]), 4, 2.0), abs=1e-15)
    mu = np.array([0.25, 1.0, 4.0])
    assert np.shape(T.optimal_p_hat_soft_dice(np.array([[0.2], [0.45]]), 4, mu)) == (2, 3)
    assert isinstance(T.expected_soft_dice(0.5, 0.5, 1, 1.0), float)


# reference values printed by `nnunet-losses theory`, and confirmed below by independent root finding
FLIPS = {(4, 0.25): 0.479106, (4, 1.0): 0.435795, (4, 4.0): 0.359044,
         (16, 0.25): 0.473878, (16, 1.0): 0.419586, (16, 4.0): 0.321145}


@pytest.mark.parametrize("n,mu", sorted(FLIPS))
def test_flip_thresholds_for_many_subregions(n, mu):
    from math import comb
    from scipy.optimize import brentq
    flip = T.flip_threshold(n, mu)
    assert flip == pytest.approx(FLIPS[n, mu], abs=1e-6)

    def sd_end_point_difference(p):  # E[SD](p̂ = 1) - E[SD](p̂ = 0), written out independently
        total = 0.0
        for k in range(n + 1):
            w, q = comb(n, k) * p ** k * (1 - p) ** (n - k), k / n
            total += w * ((1 - 2 * (1 + mu * q) / (2 + mu + mu * q)) - (1 - 2 / (2 + mu * q)))
        return total
    assert flip == pytest.approx(brentq(sd_end_point_difference, 1e-6, 1 - 1e-6, xtol=1e-13), abs=1e-9)
    # the optimum still jumps from 0 straight to 1 (no interior optimum for these settings)
    below, above = T.optimal_p_hat_soft_dice(np.array([flip - 1e-6, flip + 1e-6]), n, mu)
    assert (below, above) == (0.0, 1.0)
    p = np.linspace(0, 1, 101)
    assert set(np.unique(T.optimal_p_hat_soft_dice(p, n, mu))) <= {0.0, 1.0}


def test_flip_decreases_with_mu_and_n_towards_the_large_n_limit():
    for mu in (0.25, 1.0, 4.0):
        flips = [T.flip_threshold(n, mu, tol=1e-8) for n in (1, 4, 16, 64)]
        assert all(a > b for a, b in zip(flips, flips[1:]))
        assert all(f > T.flip_threshold_limit(mu) for f in flips)
        # O(1/N) convergence: 64 -> 256 sub-regions brings the flip about 4x closer to the limit
        err_64, err_256 = flips[-1] - T.flip_threshold_limit(mu), T.flip_threshold(256, mu, tol=1e-7) - T.flip_threshold_limit(mu)
        assert 0 < err_256 < 0.35 * err_64 and err_256 < 1e-3
    for n in (4, 16):
        flips = [T.flip_threshold(n, mu, tol=1e-8) for mu in (0.25, 1.0, 4.0)]
        assert flips[0] > flips[1] > flips[2]
    assert T.flip_threshold_limit(4.0) == pytest.approx((np.sqrt(5) - 1) / 4)


@pytest.mark.parametrize("n,mu,p,p_hat", [(1, 1.0, 0.3, 0.6), (4, 0.25, 0.5, 0.2), (16, 4.0, 0.35, 0.9), (4, 4.0, 0.8, 1.0)])
def test_exact_expectation_agrees_with_monte_carlo(n, mu, p, p_hat):
    rng = np.random.default_rng(1234 + n)
    draws = 40000
    truth_beta = (rng.random((draws, n)) < p).astype(float)
    truth = np.concatenate([np.zeros((draws, 1)), truth_beta, np.ones((draws, 1))], axis=1)
    pred = np.concatenate([[0.0], np.full(n, p_hat), [1.0]])
    volumes = np.concatenate([[T.S_ALPHA], np.full(n, mu / n), [T.S_GAMMA]])
    sd = sd_direct(pred, truth, volumes)
    se = sd.std(ddof=1) / np.sqrt(draws)
    assert abs(sd.mean() - T.expected_soft_dice(p_hat, p, n, mu)) < 4 * se + 1e-12
    with np.errstate(divide="ignore"):
        ce_voxel = np.where(truth_beta == 1, -np.log(p_hat), -np.log1p(-p_hat))  # only the drawn label's term
    ce = (ce_voxel * mu / n).sum(1)
    if np.all(np.isfinite(ce)):
        se = ce.std(ddof=1) / np.sqrt(draws)
        assert abs(ce.mean() - T.expected_cross_entropy(p_hat, p, n, mu)) < 4 * se + 1e-12


def test_figure_and_cli(tmp_path, capsys):
    out = T.plot_figure1(tmp_path / "fig.png", n_values=(1, 4), mu_values=(1.0, 4.0), n_p=21, dpi=40)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 300_000
    from nnunet_losses.cli import main
    assert main(["theory", "-N", "1", "4", "--mu", "1"]) == 0
    text = capsys.readouterr().out
    assert "0.500000" in text and "0.435795" in text

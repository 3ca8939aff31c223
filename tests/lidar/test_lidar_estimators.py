"""Per-pixel estimators: ML = mean, zero score, gradchecks, EM with background, histograms."""

import math

import numpy as np
import pytest
import torch

from cvpr24.lidar import (
    Scene1D,
    estimate_delay,
    fill_empty,
    histogram_log_likelihood,
    simulate_photons,
    timestamp_log_likelihood,
    to_histogram,
    uniform_bin_edges,
)

SIGMA = 0.01


def flat_scene(tau=0.3):
    return Scene1D(lambda x: tau + 0 * np.asarray(x, float), name="flat")


def test_numeric_ml_equals_the_sample_mean_without_background():
    ph = simulate_photons(Scene1D.ramp(), 50, 1e4, SIGMA, n_repeats=2, rng=1)
    mean, _ = estimate_delay(ph, sigma_t=SIGMA, method="mean")
    ml, info = estimate_delay(ph, sigma_t=SIGMA, method="ml")
    assert info.iterations >= 1
    np.testing.assert_allclose(ml, mean, rtol=0, atol=1e-8)


def test_score_is_zero_at_the_ml_estimate_with_background():
    w, lam = 0.3, 300
    ph = simulate_photons(flat_scene(), 1, lam, SIGMA, background=w * lam / (1 - w), rng=2)
    tau_hat, _ = estimate_delay(ph, sigma_t=SIGMA, method="ml", background=w)
    tau = torch.tensor(float(tau_hat[0]), dtype=torch.float64, requires_grad=True)
    ll = timestamp_log_likelihood(tau, torch.as_tensor(ph.t), SIGMA, w)
    (score,) = torch.autograd.grad(ll, tau)
    assert abs(score.item()) < 1e-6
    # and it is a maximum: moving away lowers the likelihood
    for d in (-1e-3, 1e-3):
        assert timestamp_log_likelihood(tau.detach() + d, torch.as_tensor(ph.t), SIGMA, w) < ll


def test_histogram_log_likelihood_gradcheck():
    rng = np.random.default_rng(0)
    edges = torch.linspace(0.0, 1.0, 41, dtype=torch.float64)
    hist = torch.as_tensor(rng.poisson(3.0, (3, 40)), dtype=torch.float64)
    tau = torch.tensor([0.31, 0.5, 0.72], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(0.04, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, s: histogram_log_likelihood(t, hist, edges, s, 0.2),
                                    (tau, sigma))


def test_em_recovers_tau_and_the_mean_shows_the_predicted_bias():
    w, lam, tau, trials = 0.3, 200, 0.3, 200
    ph = simulate_photons(flat_scene(tau), 1, lam, SIGMA, background=w * lam / (1 - w),
                          n_repeats=trials, rng=3)
    em, info = estimate_delay(ph, sigma_t=SIGMA, method="em")
    em = em.ravel()
    assert abs(em.mean() - tau) < 3 * em.std(ddof=1) / math.sqrt(trials)
    assert info.w.mean() == pytest.approx(w, abs=0.02)
    mean = estimate_delay(ph, sigma_t=SIGMA, method="mean")[0].ravel()
    bias = w * (0.5 - tau)  # background pulls the mean to the window centre
    assert abs(mean.mean() - tau - bias) < 3 * mean.std(ddof=1) / math.sqrt(trials)
    assert abs(mean.mean() - tau) > 10 * mean.std(ddof=1) / math.sqrt(trials)


def test_histogram_ml_matches_timestamp_ml_and_lmf_is_within_a_grid_step():
    ph = simulate_photons(Scene1D.ramp(), 20, 2000, SIGMA, rng=2)
    delta = SIGMA / 20
    edges = uniform_bin_edges((0, 1), delta)
    h = to_histogram(ph, edges)
    ts, _ = estimate_delay(ph, sigma_t=SIGMA, method="ml")
    hm, _ = estimate_delay(h, sigma_t=SIGMA, method="ml", bin_edges=edges)
    assert np.max(np.abs(hm - ts)) < delta / 5
    subdiv = 8
    lmf, _ = estimate_delay(h, sigma_t=SIGMA, method="lmf", bin_edges=edges, subdiv=subdiv)
    assert np.max(np.abs(lmf - hm)) <= delta / subdiv


def test_histogram_em_and_ml_with_background_agree_roughly():
    w, lam = 0.5, 400
    ph = simulate_photons(flat_scene(0.62), 1, lam, SIGMA, background=w * lam / (1 - w),
                          n_repeats=30, rng=8)
    edges = uniform_bin_edges((0, 1), SIGMA / 4)
    h = to_histogram(ph, edges)
    ml, _ = estimate_delay(h, sigma_t=SIGMA, method="ml", bin_edges=edges, background=w)
    em, info = estimate_delay(h, sigma_t=SIGMA, method="em", bin_edges=edges)
    se = SIGMA / math.sqrt(lam)
    assert abs(ml.mean() - 0.62) < 4 * se and abs(em.mean() - 0.62) < 4 * se
    assert info.w.mean() == pytest.approx(w, abs=0.05)


def test_empty_pixel_rules():
    tau = np.array([[1.0, np.nan, np.nan, 4.0, np.nan]])
    mask = np.isnan(tau)
    np.testing.assert_array_equal(fill_empty(tau, mask, "nearest", dims=1), [[1, 1, 4, 4, 4]])
    assert np.isnan(fill_empty(tau, mask, "nan", dims=1)).sum() == 3
    np.testing.assert_array_equal(fill_empty(tau, mask, "global_mean", dims=1, global_mean=[2.5]),
                                  [[1, 2.5, 2.5, 4, 2.5]])
    img = np.full((5, 5), np.nan)
    img[0, 0], img[4, 3] = 1.0, 2.0
    out = fill_empty(img, np.isnan(img), "nearest", dims=2)
    assert out[1, 1] == 1.0 and out[3, 4] == 2.0 and out[2, 2] == 1.0  # Chebyshev distance 2 vs 2
    # the simulator's empty pixels: counted and filled
    ph = simulate_photons(Scene1D.ramp(), 500, 500, SIGMA, rng=0)
    tau_hat, info = estimate_delay(ph, sigma_t=SIGMA, method="mean")
    assert info.n_empty == int(np.sum(ph.counts == 0)) > 0 and np.all(np.isfinite(tau_hat))
    nan_hat, _ = estimate_delay(ph, sigma_t=SIGMA, method="mean", empty="nan")
    assert np.isnan(nan_hat).sum() == info.n_empty


@pytest.mark.parametrize("bad", [np.array([[1.0, -1.0, 2.0]]), np.array([[1.0, np.nan, 2.0]])])
def test_histogram_estimators_reject_bad_counts(bad):
    with pytest.raises(ValueError, match="counts"):
        estimate_delay(bad, sigma_t=0.1, bin_edges=np.array([0.0, 0.3, 0.6, 0.9]))


def test_estimator_argument_checks():
    ph = simulate_photons(Scene1D.ramp(), 5, 100, SIGMA, rng=0)
    with pytest.raises(ValueError, match="background"):
        estimate_delay(ph, sigma_t=SIGMA, background=1.0)
    with pytest.raises(ValueError, match="method"):
        estimate_delay(ph, sigma_t=SIGMA, method="median")
    with pytest.raises(ValueError, match="empty"):
        estimate_delay(ph, sigma_t=SIGMA, empty="zero")
    with pytest.raises(ValueError, match="bin_edges"):
        estimate_delay(np.ones((2, 3)), sigma_t=SIGMA)


def test_timestamp_lmf_blocks_do_not_change_the_result():
    from cvpr24.lidar.estimators import _lmf_timestamps

    ph = simulate_photons(Scene1D.sine(), 37, 3000, SIGMA, n_repeats=3, rng=6)
    size = ph.n_pixels * ph.n_repeats
    whole = _lmf_timestamps(ph.pix, ph.t, size, ph.t_window, SIGMA, 8)
    blocks = _lmf_timestamps(ph.pix, ph.t, size, ph.t_window, SIGMA, 8, max_cells=5 * 400)
    np.testing.assert_array_equal(whole, blocks)
    mean, _ = estimate_delay(ph, sigma_t=SIGMA, method="mean")
    has = ph.counts.ravel() > 0
    assert np.max(np.abs(whole[has] - mean.ravel()[has])) < 3 * SIGMA  # the peak is near the data


def test_histogram_repeats_are_not_neighbours():
    edges = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    hist = np.zeros((2, 3, 4))
    hist[0, 0, 1] = hist[1, 2, 3] = 5  # repeat 0 has only pixel 0, repeat 1 only pixel 2
    tau, info = estimate_delay(hist, sigma_t=0.05, method="mean", bin_edges=edges, dims=1)
    np.testing.assert_allclose(tau, [[0.375] * 3, [0.875] * 3])
    assert info.n_empty == 4
    with pytest.raises(ValueError, match="dims"):
        estimate_delay(hist, sigma_t=0.05, bin_edges=edges, dims=3)

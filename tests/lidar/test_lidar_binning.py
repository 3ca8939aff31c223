"""Binning advice on low-flux cubes with background, its parts against Monte Carlo, the
per-pixel uncertainty map, background-aware defaults and the guards on the theory's domain."""

import math
import warnings

import numpy as np
import pytest

from cvpr24.lidar import (
    Scene1D,
    estimate_delay,
    optimal_pixels,
    recommend_binning,
    simulate_photons,
    to_histogram,
    uniform_bin_edges,
)
from cvpr24.lidar.acceptance import run_case, simulate_cube
from cvpr24.lidar.estimators import background_rates
from cvpr24.lidar.theory import lock_in_probability

SIGMA = 0.01


def flat_scene(tau=0.4):
    return Scene1D(lambda x: tau + 0 * np.asarray(x, float), name="flat")


# Seed sweep (12 seeds each, 32 x 32 x 512 cubes, factors 1-8, 2 repeats, seeds 1000-1011; the
# model of B(1) from neighbour jumps, background gated on the cleaned pilot):
#   3 photons/px, w = 0.3: chose the MC best in 11/12 (the miss, seed 1009: factor 4, 1.30x the
#       best RMSE, predicted/measured 0.60), predicted/measured at the choice 0.77-1.10 in the
#       others; P(lock) at factor 1 0.089-0.106; factor 1 measured 5.9-9.0x the best RMSE;
#   30 photons/px, w = 0.1: chose the MC best (1: do not bin) in 12/12, predicted/measured 0.76-1.14.
# Seed 1000 (used here): 1.10 and 1.14.
# The issue's own criteria (10 %, 30 %) are measured on 40 larger cubes by
# benchmarks/lidar_binning.py (docs/lidar.md); this test keeps the sweep's ranges with margin.
@pytest.mark.parametrize(("signal", "bg_fraction", "binned"), [(3.0, 0.3, True), (30.0, 0.1, False)])
def test_advice_on_generated_cubes_with_edges_and_background(signal, bg_fraction, binned):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        case = run_case(1000, signal, bg_fraction, shape=(32, 32), factors=(1, 2, 4, 8), repeats=2, sub=4)
    assert (case.chosen > 1) == binned
    assert case.choice_ratio <= 1.10
    assert 0.5 <= case.prediction_ratio <= 1.5
    if binned:  # at native resolution the filter often locks onto background
        assert case.p_lock_native > 0.05 and case.measured_rmse_m[0] > 3 * min(case.measured_rmse_m)


def test_line_sensor_and_non_square_factors():
    rng = np.random.default_rng(3)

    def tau(x, y):  # a vertical step that cuts pixel columns (not on a pixel or block border)
        return 8e-9 + 1e-9 * (np.asarray(x) > 0.555) + 0 * np.asarray(y)

    cube = simulate_cube(tau, (1, 256), 4.0, 2.0, 100e-12, 35e-12, 512, rng)[0]  # (N, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rec = recommend_binning(cube, 100e-12, 35e-12)
    assert rec.factors[0] == (1, 1) and all(fy == 1 for fy, _ in rec.factors)
    assert rec.factors[-1] == (1, 128) and rec.pilot.shape == (256,)
    assert rec.factor[1] > 1  # 4 signal + 2 background photons per pixel: bin
    assert "<- best" in rec.table() and np.all(np.isfinite(rec.rmse_depth_m))
    cube2 = simulate_cube(tau, (16, 32), 20.0, 0.0, 100e-12, 35e-12, 512, rng)
    with pytest.warns(UserWarning, match="largest evaluated"):
        rec2 = recommend_binning(cube2, 100e-12, 35e-12, factors=[1, (2, 1), (4, 2), (1, 4)])
    assert rec2.factors == [(1, 1), (2, 1), (1, 4), (4, 2)]
    # the bias of a vertical edge grows with the column factor only
    i = {f: k for k, f in enumerate(rec2.factors)}
    assert rec2.bias[i[(2, 1)]] < 0.5 * rec2.bias[i[(1, 4)]]


def test_factor_validation():
    cube = np.ones((6, 6, 32))
    with pytest.raises(ValueError, match="factor"):
        recommend_binning(cube, 0.01, 0.01, factors=[4])
    assert recommend_binning(cube, 0.01, 0.01, factors=[4], crop=True).factors == [(4, 4)]
    with pytest.raises(ValueError, match="rows = 1"):
        recommend_binning(np.ones((8, 32)), 0.01, 0.01, factors=[(2, 1)])
    with pytest.raises(ValueError, match="pairs"):
        recommend_binning(cube, 0.01, 0.01, factors=[(1, 2, 3)])
    with pytest.raises(ValueError, match="cube"):
        recommend_binning(np.ones(5), 0.01, 0.01)


def test_background_rates_shrink_toward_the_array_rate():
    rng = np.random.default_rng(0)
    exposure = np.full(5000, 100.0)
    same = background_rates(rng.poisson(0.5, 5000), exposure)  # no real spread: all pooled
    np.testing.assert_allclose(same, same.mean())
    true = rng.gamma(4.0, 0.02 / 4.0, 5000)  # rates that do differ
    c = rng.poisson(true * exposure)
    r = background_rates(c, exposure)
    raw = c / exposure
    assert np.mean((r - true) ** 2) < 0.7 * np.mean((raw - true) ** 2)  # shrinkage helps
    assert r.mean() == pytest.approx(raw.mean(), rel=0.02)


def test_lock_in_probability_against_monte_carlo():
    # Model / MC over 6000 pixels each, seeds 0-9: 1.07-1.18 at (2, 1), 1.04-1.13 at (4, 8),
    # 0.89-1.39 at (8, 8) (docs: domain of L18).
    edges = uniform_bin_edges((0, 1), SIGMA / 3)
    for lam_s, lam_b in ((2, 1), (4, 8), (8, 8)):
        ph = simulate_photons(flat_scene(), 6000, lam_s * 6000, SIGMA, background=lam_b * 6000, rng=1)
        tau, info = estimate_delay(to_histogram(ph, edges), sigma_t=SIGMA, bin_edges=edges, empty="nan")
        mc = np.mean(np.abs(tau[info.counts > 0] - 0.4) > 5 * SIGMA)
        p_lock, p_empty = lock_in_probability(lam_s, lam_b, SIGMA, 1.0)
        assert 0.7 <= float(p_lock) / (1 - float(p_empty)) / mc <= 1.7
    assert float(lock_in_probability(3.0, 0.0, SIGMA, 1.0)[0]) == 0.0  # no background: no lock-in


@pytest.mark.parametrize(("lam", "w"), [(30, 0.2), (8, 0.0)])
def test_uncertainty_map_matches_monte_carlo_spread(lam, w):
    # predicted / MC mean squared error over 3000 pixels, seeds 0-9, timestamps and histograms:
    # 0.98-1.02 at (30, 0.2), 0.94-1.07 at (8, 0)
    ph = simulate_photons(flat_scene(), 3000, lam * 3000, SIGMA, background=w * lam / (1 - w) * 3000, rng=4)
    edges = uniform_bin_edges((0, 1), SIGMA / 3)
    for tau, info in (estimate_delay(ph, sigma_t=SIGMA),
                      estimate_delay(to_histogram(ph, edges), sigma_t=SIGMA, bin_edges=edges)):
        ok = info.counts > 0
        assert np.all(np.isnan(info.variance[~ok]))
        assert np.mean(info.variance[ok]) / np.mean((tau[ok] - 0.4) ** 2) == pytest.approx(1.0, abs=0.12)
        # and pixel by pixel: fewer photons, larger predicted variance
        k = info.counts[ok]
        assert np.corrcoef(k, info.variance[ok])[0, 1] < -0.5


def test_timestamp_ml_is_background_aware_by_default():
    w, lam = 0.3, 20
    ph = simulate_photons(flat_scene(0.3), 500, lam * 500, SIGMA, background=w * lam / (1 - w) * 500, rng=2)
    auto, info = estimate_delay(ph, sigma_t=SIGMA)
    plain, _ = estimate_delay(ph, sigma_t=SIGMA, background=None)
    assert np.median(info.w) == pytest.approx(w, abs=0.05)
    assert np.median(np.abs(auto - 0.3)) < 0.5 * SIGMA / math.sqrt(lam) * 3
    assert np.median(np.abs(plain - 0.3)) > 5 * np.median(np.abs(auto - 0.3))


def test_em_on_histograms_is_chunked_without_changing_the_result():
    ph = simulate_photons(flat_scene(0.6), 300, 300 * 40, SIGMA, background=300 * 20, rng=5)
    edges = uniform_bin_edges((0, 1), SIGMA / 2)
    h = to_histogram(ph, edges)
    whole, info = estimate_delay(h, sigma_t=SIGMA, method="em", bin_edges=edges, chunk=4096)
    parts, _ = estimate_delay(h, sigma_t=SIGMA, method="em", bin_edges=edges, chunk=7)
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-12)
    assert np.median(info.w) == pytest.approx(1 / 3, abs=0.05)
    assert np.sqrt(np.mean((whole - 0.6) ** 2)) < 2 * SIGMA / math.sqrt(40)


def test_guards_on_pulse_width_and_flux():
    hist = np.ones((4, 100))
    with pytest.raises(ValueError, match="sigma_t=1e-06 is 286"):  # 1 us pulse, 3.5 ns window
        estimate_delay(hist, sigma_t=1e-6, bin_edges=35e-12 * np.arange(101))
    with pytest.warns(UserWarning, match="sigma_t=1e-13 is 0.00286 of a TDC bin"):
        estimate_delay(hist, sigma_t=1e-13, bin_edges=35e-12 * np.arange(101))
    ph = simulate_photons(flat_scene(), 4, 40, SIGMA, rng=0)
    with pytest.raises(ValueError, match="cells per pixel"):
        estimate_delay(ph, sigma_t=1e-9)
    with pytest.warns(UserWarning, match=r"Lambda = 2\.4\d* photons per pixel"):
        optimal_pixels(0.36, 100, 0.01)  # the example: N* = 41.7
    with pytest.warns(UserWarning, match="scan limit n_max = 20"):
        optimal_pixels(Scene1D.ramp(), 1e4, 0.01, method="exact", n_max=20)

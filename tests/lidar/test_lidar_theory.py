"""Closed forms and reference values of the theory (spec section 6, first block)."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from cvpr24.lidar import (
    Scene1D,
    Scene2D,
    fisher_information,
    inv_poisson_moment,
    mse_closed_form,
    mse_exact,
    optimal_pixels,
    pixel_moments,
    slope_energy,
)

SIGMA, ALPHA0, C = 0.01, 1e4, 0.6


def brute_force_g(lam: float) -> float:
    """E[1/K | K >= 1] summed in log space over k up to lam + 40 sqrt(lam) + 200."""
    k = np.arange(1, int(lam + 40 * math.sqrt(lam) + 200))
    log_pmf = -lam + k * math.log(lam) - special.gammaln(k + 1)
    return float(np.sum(np.exp(log_pmf) / k) / -math.expm1(-lam))


@pytest.mark.parametrize("lam", [0.1, 0.5, 2, 10, 99.9, 100.1, 700, 1e4])
def test_inv_poisson_moment_matches_brute_force(lam):
    assert inv_poisson_moment(lam) == pytest.approx(brute_force_g(lam), rel=1e-9)


def test_inv_poisson_moment_reference_values_and_shape():
    ref = {0.5: 0.8788850409, 2: 0.5765908850, 5: 0.2577695371, 10: 0.1130214089,
           20: 0.0527977880, 100: 0.0101020625}
    for lam, g in ref.items():
        assert inv_poisson_moment(lam) == pytest.approx(g, abs=1e-10)
    # continuous across both branch switches
    for edge in (0.5, 100.0):
        lo, hi = inv_poisson_moment(np.nextafter(edge, 0)), inv_poisson_moment(edge)
        assert hi == pytest.approx(lo, rel=1e-12)
    lam = np.geomspace(1e-3, 1e5, 400)
    g = inv_poisson_moment(lam)
    assert np.all(np.diff(g) < 0)  # monotone decreasing
    assert lam[-1] * g[-1] == pytest.approx(1.0, abs=2e-5)  # Lambda g -> 1
    assert inv_poisson_moment(0.0) == 1.0
    with pytest.raises(ValueError, match="Lambda"):
        inv_poisson_moment(-1.0)


def test_ramp_within_pixel_variance_is_c2_over_12N2():
    m = pixel_moments(Scene1D.ramp(C), 100, fine=2**16)
    assert np.max(np.abs(m.b / (C**2 / (12 * 100**2)) - 1)) < 1e-6
    assert m.bias == pytest.approx(C**2 / (12 * 100**2), rel=1e-9)


def test_step_edge_bias_is_exact():
    # edge at fraction u = 0.25 inside pixel 3 of N = 10: bias = (1/N) h^2 u (1 - u)
    m = pixel_moments(Scene1D.step(h=0.5, x0=0.325), 10)
    assert m.bias == pytest.approx(4.6875e-3, rel=1e-12)


def test_closed_form_and_exact_reference_point():
    assert mse_closed_form(C**2, 100, ALPHA0, SIGMA) == pytest.approx(4.03e-6, rel=1e-12)
    assert mse_exact(Scene1D.ramp(C), 100, ALPHA0, SIGMA).total == pytest.approx(4.0405e-6, rel=2e-5)


def test_optimal_pixels_for_the_ramp():
    S = slope_energy(Scene1D.ramp(C))
    assert optimal_pixels(S, ALPHA0, SIGMA) == pytest.approx(182.26, abs=0.005)
    assert optimal_pixels(S, ALPHA0, SIGMA, method="approx") == pytest.approx(181.71, abs=0.005)
    n = np.arange(1, 1000)
    assert n[np.argmin(mse_closed_form(S, n, ALPHA0, SIGMA))] == 182
    assert optimal_pixels(Scene1D.ramp(C), ALPHA0, SIGMA, method="exact") == 180


def test_slope_energy_of_the_sine_scene():
    assert slope_energy(Scene1D.sine()) == pytest.approx(math.pi**2 / 8, rel=1e-12)
    numeric = Scene1D(Scene1D.sine().tau)  # no derivative given: finite differences
    assert slope_energy(numeric) == pytest.approx(math.pi**2 / 8, rel=1e-6)


def test_closed_form_2d_matches_exact_for_a_plane():
    plane = Scene2D.plane()
    S2 = slope_energy(plane)
    assert S2 == pytest.approx(0.13, rel=1e-12)
    for n in (16, 32, 64, 128):  # Lambda = 1e6 / N^2 >= 61
        exact = mse_exact(plane, n, 1e6, SIGMA).total
        assert mse_closed_form(S2, n, 1e6, SIGMA, dims=2) / exact == pytest.approx(1.0, abs=0.0125)


def test_closed_form_gradcheck_and_stationary_at_cubic_root():
    args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (150.0, ALPHA0, SIGMA)]
    assert torch.autograd.gradcheck(lambda n, a, s: mse_closed_form(C**2, n, a, s), args)
    n_star = torch.tensor(optimal_pixels(C**2, ALPHA0, SIGMA), dtype=torch.float64, requires_grad=True)
    value = mse_closed_form(C**2, n_star, ALPHA0, SIGMA)
    (grad,) = torch.autograd.grad(value, n_star)
    assert abs(grad.item()) < 1e-9 * value.item() / n_star.item()
    away = torch.tensor(1.2 * n_star.item(), dtype=torch.float64, requires_grad=True)
    (grad_away,) = torch.autograd.grad(mse_closed_form(C**2, away, ALPHA0, SIGMA), away)
    assert grad_away.item() > 1e-3 * value.item() / n_star.item()


def test_fisher_information_background():
    assert fisher_information(0.0, SIGMA, 1.0) == pytest.approx(1 / SIGMA**2, rel=1e-10)
    info = fisher_information(np.array([0.1, 0.3, 0.6]), SIGMA, 1.0)
    assert np.all(np.diff(info) < 0) and np.all(info < 1 / SIGMA**2)
    with pytest.raises(ValueError, match="w"):
        fisher_information(1.0, SIGMA, 1.0)


def test_exact_theory_with_background_reduces_and_grows():
    ramp = Scene1D.ramp(C)
    base = mse_exact(ramp, 100, ALPHA0, SIGMA)
    assert mse_exact(ramp, 100, ALPHA0, SIGMA, background=0.0).total == base.total
    with_bg = mse_exact(ramp, 100, ALPHA0, SIGMA, background=ALPHA0)
    assert with_bg.bias == pytest.approx(base.bias) and with_bg.variance > base.variance


def test_invariances_of_the_exact_theory():
    sine = Scene1D.sine()
    ref = mse_exact(sine, 37, ALPHA0, SIGMA).total
    a = 2.5
    assert mse_exact(sine.scaled(a), 37, ALPHA0, a * SIGMA, t_window=(0, a)).total == pytest.approx(
        a**2 * ref, rel=1e-10)
    assert mse_exact(sine.scaled(1.0, 0.1), 37, ALPHA0, SIGMA).total == pytest.approx(ref, rel=1e-9)
    assert mse_exact(sine.mirrored(), 37, ALPHA0, SIGMA).total == pytest.approx(ref, rel=1e-9)
    const = Scene1D(sine.tau, alpha=lambda x: 3.0 + 0 * np.asarray(x))
    assert mse_exact(const, 37, ALPHA0, SIGMA).total == pytest.approx(ref, rel=1e-9)
    assert mse_exact(sine, 37, 7 * ALPHA0, SIGMA).Lambda == pytest.approx(7 * ALPHA0 / 37)


def test_nonuniform_alpha_weights_the_pixel_mean():
    ramp = Scene1D(Scene1D.ramp(C).tau, alpha=lambda x: np.asarray(x, float))  # alpha = x
    m = pixel_moments(ramp, 1)
    # alpha-weighted mean of 0.2 + 0.6 x with density 2x on [0, 1] is 0.2 + 0.6 * 2/3
    assert m.mu[0] == pytest.approx(0.6, rel=1e-12)
    assert m.mean[0] == pytest.approx(0.5, rel=1e-12)


def test_bad_inputs_of_the_theory():
    ramp = Scene1D.ramp()
    with pytest.raises(ValueError, match="alpha0"):
        mse_exact(ramp, 10, 0.0, SIGMA)
    with pytest.raises(ValueError, match="sigma_t"):
        mse_exact(ramp, 10, ALPHA0, -1.0)
    with pytest.raises(ValueError, match="fine"):
        mse_exact(ramp, 100, ALPHA0, SIGMA, fine=399)
    with pytest.raises(ValueError, match="background"):
        mse_exact(ramp, 10, ALPHA0, SIGMA, background=-1.0)
    with pytest.raises(ValueError, match="N"):
        mse_closed_form(0.36, 0, ALPHA0, SIGMA)
    with pytest.raises(ValueError, match="method"):
        optimal_pixels(0.36, ALPHA0, SIGMA, method="golden")


def test_poisson_moment_against_scipy_sampling():
    rng = np.random.default_rng(0)
    k = stats.poisson.rvs(3.0, size=400_000, random_state=rng)
    k = k[k > 0]
    se = np.std(1 / k) / math.sqrt(k.size)
    assert abs(np.mean(1 / k) - inv_poisson_moment(3.0)) < 4 * se


def test_2d_optimum_exact_search_agrees_with_a_full_scan():
    scene = Scene2D.plane_ripple()
    found = optimal_pixels(scene, 2e4, SIGMA, method="exact", n_max=40)
    scan = min(range(1, 41), key=lambda n: mse_exact(scene, n, 2e4, SIGMA).total)
    assert found == scan
    assert optimal_pixels(scene, 2e4, SIGMA) == pytest.approx((slope_energy(scene) * 2e4 / 12e-4) ** 0.25)


def test_config_validation():
    from cvpr24.lidar import LidarConfig

    assert LidarConfig().fine(100) == 2**14 and LidarConfig().fine(2000) == 32000
    assert LidarConfig.cpu().repeats(1e3) == 400 and LidarConfig.cpu().repeats(1e5) == 8
    for kwargs, name in (({"irf": "sinc"}, "irf"), ({"sigma_t": 0}, "sigma_t"), ({"dims": 3}, "dims"),
                         ({"empty_pixel": "zero"}, "empty_pixel"), ({"estimator": "x"}, "estimator")):
        with pytest.raises(ValueError, match=name):
            LidarConfig(**kwargs)


def test_mse_curve_equals_mse_exact_point_by_point():
    from cvpr24.lidar import mse_curve

    for scene in (Scene1D.sine(), Scene1D.step(), Scene2D.plane()):
        ns = [3, 10, 64] if scene.dims == 2 else [1, 7, 100, 333, 1000]
        fine = 2**9 if scene.dims == 2 else 2**14
        curve = mse_curve(scene, ns, ALPHA0, SIGMA, background=50.0, fine=fine)
        for i, n in enumerate(ns):
            point = mse_exact(scene, n, ALPHA0, SIGMA, background=50.0, fine=fine)
            assert curve.total[i] == pytest.approx(point.total, rel=1e-10)
            assert curve.Lambda[i] == pytest.approx(point.Lambda, rel=1e-12)


def test_compensated_running_sums_are_exact_to_double_double():
    from cvpr24.lidar.scene import _compensated_cumsum

    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, (2, 5000)) * 10.0 ** rng.integers(-8, 1, (2, 5000))
    hi, lo = _compensated_cumsum(x)
    for k in (1, 17, 2500, 5000):
        exact = math.fsum(x[0, :k])
        assert abs((hi[0, k] + lo[0, k]) - exact) <= 1e-15 * abs(exact)
        # and a tiny increment deep in the sum keeps its relative precision
        inc = math.fsum(x[1, k - 1: k])
        got = (hi[1, k] - hi[1, k - 1]) + (lo[1, k] - lo[1, k - 1])
        assert abs(got - inc) <= 1e-12 * abs(inc) + 1e-30


def _mp_pixel_moments(tau, lo, hi):
    """Mean and variance of tau over [lo, hi] in 40-digit arithmetic, split at 0.3 and 0.7."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        lo, hi = mp.mpf(lo), mp.mpf(hi)
        pts = [lo] + [mp.mpf(c) / 10 for c in (3, 7) if lo < mp.mpf(c) / 10 < hi] + [hi]
        mean = mp.quad(tau, pts) / (hi - lo)
        var = mp.quad(lambda x: (tau(x) - mean) ** 2, pts) / (hi - lo)
        return float(mean), float(var)


def test_closed_form_pixel_moments_match_40_digit_integration():
    mp = pytest.importorskip("mpmath")
    from cvpr24.lidar.scene import AnalyticProfile

    def sine(x):
        return mp.mpf("0.5") + mp.mpf("0.2") * mp.sin(2 * mp.pi * x) + mp.mpf("0.05") * mp.sin(6 * mp.pi * x)

    prof = AnalyticProfile(0.4, 0.1, (0.03,), (5.0,), (0.3,), (0.3, 0.7), (0.1, -0.2))

    def mixed(x):  # the same profile: a ramp, a phase-shifted sine and two jumps
        return (mp.mpf(0.4) + mp.mpf(0.1) * x + mp.mpf(0.03) * mp.sin(5 * x + mp.mpf(0.3))
                + mp.mpf(0.1) * (x >= mp.mpf(0.3)) - mp.mpf(0.2) * (x >= mp.mpf(0.7)))

    cases = [(Scene1D.sine(), sine, 1, [0]), (Scene1D.sine(), sine, 7, [0, 3, 6]),
             (Scene1D.sine(), sine, 100_000, [25_000, 33_333]),  # tau' = 0 at x = 1/4: b ~ h^4,
             # where a quadrature's E[tau^2] - mu^2 loses every digit
             (Scene1D.from_profile(prof), mixed, 10, [2, 3, 6, 9]), (Scene1D.from_profile(prof), mixed, 3, [0, 2])]
    for scene, tau, n, pixels in cases:
        m = pixel_moments(scene, n)
        for i in pixels:
            mean, var = _mp_pixel_moments(tau, mp.mpf(i) / n, mp.mpf(i + 1) / n)
            assert m.mu[i] == pytest.approx(mean, rel=1e-14, abs=1e-15)
            assert m.b[i] == pytest.approx(var, rel=1e-9)


def test_closed_form_and_quadrature_pixel_moments_agree():
    from cvpr24.lidar.scene import AnalyticProfile

    prof = AnalyticProfile(0.4, 0.1, (0.03, 0.01), (5.0, 40.0), (0.3, -1.0), (0.3, 0.3004, 0.7),
                           (0.1, -0.05, 0.2))  # two jumps inside one pixel for N <= 2500
    scenes = [Scene1D.ramp(C), Scene1D.sine(), Scene1D.step(), Scene1D.from_profile(prof)]
    for scene in scenes + [s.mirrored() for s in scenes] + [s.scaled(2.5, 0.1) for s in scenes]:
        x = np.linspace(0, 1, 1001)
        for n in (1, 3, 10, 37, 1000):
            exact, quad = pixel_moments(scene, n), pixel_moments(scene, n, fine=2**16)
            np.testing.assert_allclose(exact.mu, quad.mu, rtol=0, atol=1e-12)
            # the quadrature's b_n = E[tau^2] - mu^2 carries absolute rounding errors up to
            # ~1e-16 (the ulp of tau^2; the summation order depends on the BLAS)
            np.testing.assert_allclose(exact.b, quad.b, rtol=1e-7, atol=1e-15)
            assert exact.bias == pytest.approx(quad.bias, rel=1e-9)
            np.testing.assert_array_equal(exact.mass, 1.0 / n)
        assert scene.profile is not None and np.allclose(scene.profile.tau(x), scene.tau(x), atol=1e-15)


def test_mirrored_and_scaled_profiles_are_the_transformed_scenes():
    x = np.linspace(0.001, 0.999, 997)  # avoids the jump itself, where 1[x >= e] is one-sided
    for scene in (Scene1D.ramp(C), Scene1D.sine(), Scene1D.step()):
        np.testing.assert_allclose(scene.mirrored().tau(x), scene.tau(1 - x), atol=1e-14)
        np.testing.assert_allclose(scene.scaled(2.5, 0.1).tau(x), 2.5 * scene.tau(x) + 0.1, atol=1e-14)
        np.testing.assert_allclose(scene.mirrored().dtau(x), -scene.dtau(1 - x), atol=1e-12)


def test_mse_curve_one_pass_equals_mse_exact_without_background():
    from cvpr24.lidar import mse_curve

    samples = Scene1D.from_samples(0.3 + 0.4 * np.random.default_rng(0).random(40))
    ns = [1, 2, 7, 100, 333, 1000]
    for scene, fine in ((Scene1D.sine(), None), (Scene1D.step(), None), (Scene1D.sine(), 2**14),
                        (samples, 2**14)):
        curve = mse_curve(scene, ns, ALPHA0, SIGMA, fine=fine)
        for i, n in enumerate(ns):
            point = mse_exact(scene, n, ALPHA0, SIGMA, fine=fine)
            for name in ("bias", "variance", "total", "Lambda", "p_empty"):
                assert getattr(curve, name)[i] == pytest.approx(getattr(point, name), rel=1e-12)
    with pytest.raises(ValueError, match="fine"):
        mse_curve(samples, [10, 100], ALPHA0, SIGMA, fine=399)


def test_analytic_profile_bad_inputs():
    from cvpr24.lidar.scene import AnalyticProfile

    with pytest.raises(ValueError, match="amp, omega and phase"):
        AnalyticProfile(amp=(0.1,), omega=(1.0, 2.0), phase=(0.0,))
    with pytest.raises(ValueError, match="edges and heights"):
        AnalyticProfile(edges=(0.5,))
    with pytest.raises(ValueError, match="edges"):
        AnalyticProfile(edges=(1.5,), heights=(0.1,))
    with pytest.raises(ValueError, match="omega"):
        AnalyticProfile(amp=(0.1,), omega=(0.0,), phase=(0.0,))
    with pytest.raises(ValueError, match="finite"):
        AnalyticProfile(slope=float("nan"))


def test_rectangular_pixels_in_the_exact_theory_and_the_closed_form():
    # a plane steeper along x: more columns than rows is the better rectangle
    scene = Scene2D.plane(cx=0.3, cy=0.1)
    s_y, s_x = slope_energy(scene, directional=True)
    assert (s_y, s_x) == (pytest.approx(0.01), pytest.approx(0.09))
    exact = {n: mse_exact(scene, n, 1e6, 0.01).total for n in ((64, 16), (16, 64), (32, 32))}
    for n, e in exact.items():  # Lambda >= 976: the closed form is exact for a plane up to g ~ 1/Lambda
        assert mse_closed_form((s_y, s_x), n, 1e6, 0.01, dims=2) == pytest.approx(e, rel=1e-3)
    assert exact[(16, 64)] < exact[(32, 32)] < exact[(64, 16)]
    assert exact[(32, 32)] == mse_exact(scene, 32, 1e6, 0.01).total
    with pytest.raises(ValueError, match="dims=2"):
        mse_closed_form(0.1, (4, 8), 1e4, 0.01)

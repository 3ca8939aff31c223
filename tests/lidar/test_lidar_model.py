"""The forward model: arrival statistics, invariances, round trips, bad inputs."""

import math

import numpy as np
import pytest
from scipy import stats

from cvpr24.lidar import (
    PhotonData,
    Scene1D,
    Scene2D,
    alpha0_from_hardware,
    bin_cube,
    bin_pixels,
    continuous_mse,
    delay_to_depth,
    depth_mse,
    depth_to_delay,
    estimate_delay,
    mse_exact,
    simulate_photons,
    to_histogram,
    uniform_bin_edges,
)

SIGMA = 0.01


def test_arrival_density_of_a_ramp_pixel_is_the_difference_of_phis():
    # L5/L13: pulse convolved with a uniform of width c/N; N = 10, c = 0.6 -> width 6 sigma_t
    c, n = 0.6, 10
    ph = simulate_photons(Scene1D.ramp(c), n, 2.2e5, SIGMA, rng=11)
    t = ph.t[ph.pix == 3][:20_000]
    assert t.size == 20_000
    ta, tb = 0.2 + c * 0.3, 0.2 + c * 0.4  # delays at the pixel's edges

    def G(z):
        return z * stats.norm.cdf(z) + stats.norm.pdf(z)

    def cdf(x):
        return SIGMA / (tb - ta) * (G((x - ta) / SIGMA) - G((x - tb) / SIGMA))

    assert stats.kstest(t, cdf).pvalue > 0.01
    var = SIGMA**2 + c**2 / (12 * n**2)
    se_mean = math.sqrt(var / t.size)
    se_var = var * math.sqrt(2 / (t.size - 1))
    assert abs(t.mean() - 0.2 - c * 0.35) < 3 * se_mean
    assert abs(t.var(ddof=1) - var) < 3 * se_var
    # and the Gaussian law of the same variance is rejected: the footprint shape is real
    assert stats.kstest(t, stats.norm(t.mean(), math.sqrt(var)).cdf).pvalue < 0.01


def test_total_flux_is_fixed_while_n_varies():
    scene = Scene1D.sine()
    for n in (10, 1000):
        ph = simulate_photons(scene, n, 1e4, SIGMA, n_repeats=50, rng=n)
        per_rep = ph.counts.sum(axis=1)
        assert abs(per_rep.mean() - 1e4) < 4 * math.sqrt(1e4 / 50)


def test_time_scaling_scales_the_mc_mse_by_a_squared():
    scene, a, n = Scene1D.sine(), 2.5, 40
    ph1 = simulate_photons(scene, n, 5e3, SIGMA, n_repeats=3, rng=5)
    ph2 = simulate_photons(scene.scaled(a), n, 5e3, a * SIGMA, t_window=(0, a), n_repeats=3, rng=5)
    m1 = continuous_mse(estimate_delay(ph1, sigma_t=SIGMA, method="mean")[0], scene)
    m2 = continuous_mse(estimate_delay(ph2, sigma_t=a * SIGMA, method="mean")[0], scene.scaled(a))
    np.testing.assert_allclose(m2, a**2 * m1, rtol=1e-9)


def test_offset_and_constant_alpha_leave_the_mc_mse_unchanged():
    scene, n = Scene1D.sine(), 40
    ref = continuous_mse(estimate_delay(simulate_photons(scene, n, 5e3, SIGMA, n_repeats=3, rng=2),
                                        sigma_t=SIGMA, method="mean")[0], scene)
    shifted = scene.scaled(1.0, 0.1)
    m = continuous_mse(estimate_delay(simulate_photons(shifted, n, 5e3, SIGMA, n_repeats=3, rng=2),
                                      sigma_t=SIGMA, method="mean")[0], shifted)
    np.testing.assert_allclose(m, ref, rtol=1e-7)
    const = Scene1D(scene.tau, alpha=lambda x: 4.0 + 0 * np.asarray(x))
    m = continuous_mse(estimate_delay(simulate_photons(const, n, 5e3, SIGMA, n_repeats=3, rng=2),
                                      sigma_t=SIGMA, method="mean")[0], const)
    np.testing.assert_allclose(m, ref, rtol=1e-7)


def test_nonuniform_alpha_puts_photons_where_alpha_is():
    scene = Scene1D(Scene1D.ramp().tau, alpha=lambda x: np.asarray(x, float))  # alpha = x
    ph = simulate_photons(scene, 4, 4e4, SIGMA, rng=0)
    share = ph.counts / ph.counts.sum()
    expected = np.diff(np.linspace(0, 1, 5) ** 2)
    assert np.all(np.abs(share - expected) < 4 * np.sqrt(expected / 4e4))


def test_2d_simulation_matches_2d_theory_loosely():
    scene = Scene2D.plane_ripple()
    ph = simulate_photons(scene, 16, 2e4, SIGMA, n_repeats=20, rng=1)
    assert ph.counts.shape == (20, 16, 16)
    tau, _ = estimate_delay(ph, sigma_t=SIGMA, method="mean")
    mc = continuous_mse(tau, scene).mean()
    assert mc / mse_exact(scene, 16, 2e4, SIGMA).total == pytest.approx(1.0, abs=0.1)


def test_bin_pixels_relabels_photons_and_keeps_counts():
    ph = simulate_photons(Scene1D.sine(), 12, 3e3, SIGMA, rng=4)
    binned = bin_pixels(ph, 3)
    assert binned.shape == (4,) and binned.counts.sum() == ph.counts.sum()
    got = sorted(zip(binned.pix.tolist(), binned.t.tolist(), strict=True))
    want = sorted(zip((ph.pix // 3).tolist(), ph.t.tolist(), strict=True))
    assert got == want
    ph2 = simulate_photons(Scene2D.plane(), 6, 3e3, SIGMA, rng=4)
    b2 = bin_pixels(ph2, 2)
    np.testing.assert_array_equal(b2.counts, ph2.counts.reshape(3, 2, 3, 2).sum(axis=(1, 3)))
    with pytest.raises(ValueError, match="factor"):
        bin_pixels(ph, 5)
    assert bin_pixels(ph, 5, crop=True).counts.sum() == ph.counts[:10].sum()


def test_histogram_sums_to_counts_and_bin_cube():
    ph = simulate_photons(Scene2D.plane(), 8, 5e3, SIGMA, n_repeats=2, rng=3)
    h = to_histogram(ph, uniform_bin_edges((0, 1), SIGMA / 2))
    assert h.shape == (2, 8, 8, 200)
    np.testing.assert_array_equal(h.sum(axis=-1), ph.counts)
    cube = h[0]
    np.testing.assert_array_equal(bin_cube(cube, 4).sum(axis=(0, 1)), cube.sum(axis=(0, 1)))
    with pytest.raises(ValueError, match="factor"):
        bin_cube(cube, 3)
    assert bin_cube(cube, 3, crop=True).shape == (2, 2, 200)


def test_units_and_hardware_budget():
    assert delay_to_depth(depth_to_delay(12.5)) == pytest.approx(12.5)
    assert depth_to_delay(1.0) == pytest.approx(6.671281903963041e-9)
    assert depth_mse(1e-20) == pytest.approx((299_792_458.0 / 2) ** 2 * 1e-20)
    assert alpha0_from_hardware(1e6, 0.01) == pytest.approx(1e4)
    with pytest.raises(ValueError, match="signal_prob_per_cycle_per_fov"):
        alpha0_from_hardware(1e6, 0.06)


@pytest.mark.parametrize("n", [0, -3, 2.5, "8", True])
def test_simulator_rejects_bad_pixel_counts(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        simulate_photons(Scene1D.ramp(), n, 1e3, SIGMA)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"alpha0": 0.0}, "alpha0"), ({"alpha0": -5.0}, "alpha0"), ({"sigma_t": 0.0}, "sigma_t"),
    ({"background": -1.0}, "background"), ({"sigma_t": 0.1}, "t_window"),
])
def test_simulator_rejects_bad_physics(kwargs, name):
    args = {"alpha0": 1e3, "sigma_t": SIGMA, **kwargs}
    with pytest.raises(ValueError, match=name):
        simulate_photons(Scene1D.ramp(), 10, args.pop("alpha0"), args.pop("sigma_t"), **args)


def test_photon_data_rejects_out_of_window_stamps_and_bad_edges():
    with pytest.raises(ValueError, match="t_window"):
        PhotonData(np.array([0, 1]), np.array([0.5, 1.2]), (2,))
    with pytest.raises(ValueError, match="pix"):
        PhotonData(np.array([0, 5]), np.array([0.5, 0.2]), (2,))
    ph = PhotonData(np.array([0, 1]), np.array([0.5, 0.7]), (2,))
    with pytest.raises(ValueError, match="bin_edges"):
        to_histogram(ph, np.array([0.0, 0.6]))


def test_same_seed_same_photons():
    a = simulate_photons(Scene1D.sine(), 30, 2e3, SIGMA, background=100, rng=9)
    b = simulate_photons(Scene1D.sine(), 30, 2e3, SIGMA, background=100, rng=9)
    np.testing.assert_array_equal(a.pix, b.pix)
    np.testing.assert_array_equal(a.t, b.t)


def test_blocked_tau_and_cached_window_check_change_nothing(monkeypatch):
    from cvpr24.lidar import model

    plane = Scene2D.plane_ripple()
    whole = [simulate_photons(Scene1D.sine(), 64, 5e3, SIGMA, rng=3), simulate_photons(plane, 8, 2e3, SIGMA, rng=4)]
    monkeypatch.setattr(model, "TAU_BLOCK", 97)  # many ragged blocks
    blocked = [simulate_photons(Scene1D.sine(), 64, 5e3, SIGMA, rng=3), simulate_photons(plane, 8, 2e3, SIGMA, rng=4)]
    for w, b in zip(whole, blocked, strict=True):
        assert w.t.size > 10 * 97
        np.testing.assert_array_equal(w.t, b.t)
    scene = Scene1D.sine()  # the delay range is cached, the window is checked on every call
    simulate_photons(scene, 16, 1e3, SIGMA, rng=0)
    with pytest.raises(ValueError, match="t_window"):
        simulate_photons(scene, 16, 1e3, SIGMA, t_window=(0.0, 0.7), rng=0)
    with pytest.raises(ValueError, match="t_window"):
        simulate_photons(plane, 8, 1e3, 0.1, rng=0)

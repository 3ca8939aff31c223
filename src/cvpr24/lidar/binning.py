"""How far to bin a real SPAD cube: the exact theory (L9-L11, L17) applied to a pilot scene.

From a native-resolution (H, W, T) histogram cube, :func:`recommend_binning`

1. estimates a pilot delay map at native resolution (log-matched filter + L7 ML) and the
   background level per pixel (counts outside +-3 sigma_t of the peak, per bin);
2. smooths the pilot (Gaussian, sigma = 2 px): a noisy pilot's slopes are biased *upward*
   (noise adds to |grad tau|^2), which would push the advice toward too little binning;
3. treats the smoothed pilot as the scene and evaluates the exact MSE of L9 for every
   admissible factor b: super-pixel bias from the spread of the pilot inside each b x b block
   (plus the native pixels' own linearised spread), variance g(Lambda) / I(w) with Lambda the
   measured signal + background counts of the block (L11, L17).

Units: seconds in, seconds^2 and metres out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvpr24.lidar.estimators import estimate_delay
from cvpr24.lidar.model import bin_cube
from cvpr24.lidar.scene import C_LIGHT, check_pixels
from cvpr24.lidar.theory import check_positive, fisher_information, inv_poisson_moment

Array = np.ndarray


@dataclass(frozen=True)
class BinningRecommendation:
    """The advice of :func:`recommend_binning`.

    Attributes
    ----------
    factor : int
        The bin factor with the least predicted MSE.
    factors : list of int
        Every factor evaluated.
    mse : ndarray
        Predicted delay MSE per factor (s^2).
    rmse_depth_m : ndarray
        The same as a depth RMSE in metres.
    bias, variance : ndarray
        The two terms of L9 per factor (s^2).
    signal_photons, background_photons : float
        Estimated totals over the cube.
    slope_energy : float
        S2_hat of the smoothed pilot over the field of view normalised to the unit square.
    pilot : ndarray
        The (smoothed) pilot delay map (s).
    """

    factor: int
    factors: list[int]
    mse: Array
    rmse_depth_m: Array
    bias: Array
    variance: Array
    signal_photons: float
    background_photons: float
    slope_energy: float
    pilot: Array

    def table(self) -> str:
        """A plain-text table: factor, pixels, predicted delay RMSE and depth RMSE."""
        lines = [f"{'factor':>6} {'pixels':>11} {'RMSE delay (s)':>15} {'RMSE depth (m)':>15}"]
        h, w = self.pilot.shape
        for f, m, d in zip(self.factors, self.mse, self.rmse_depth_m, strict=True):
            mark = "  <- best" if f == self.factor else ""
            lines.append(f"{f:>6} {f'{h // f}x{w // f}':>11} {np.sqrt(m):>15.4g} {d:>15.4g}{mark}")
        return "\n".join(lines)


def recommend_binning(cube: Array, sigma_t: float, bin_width: float, *, t0: float = 0.0,
                      factors: list[int] | None = None, crop: bool = False, pilot: str = "smooth",
                      smooth_px: float = 2.0, gate: float = 3.0) -> BinningRecommendation:
    """Recommend a super-pixel bin factor for an (H, W, T) cube at its own photon budget.

    Parameters
    ----------
    cube : ndarray (H, W, T)
        Native-resolution histogram counts.
    sigma_t : float
        Pulse std in seconds.
    bin_width : float
        TDC bin width in seconds; bin b spans t0 + [b, b+1) bin_width.
    factors : list of int, optional
        Factors to evaluate; default every common divisor of H and W up to min(H, W) / 2
        (with ``crop=True``: every factor up to min(H, W) / 2, remainders dropped).
    pilot : {"smooth", "raw"}
        Smooth the pilot map (recommended, see the module docstring) or use it as is.
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (H, W, T), got shape {cube.shape}")
    if not np.all(np.isfinite(cube)) or np.any(cube < 0):
        raise ValueError("cube counts must be finite and non-negative (no NaN)")
    sigma_t = check_positive(sigma_t, "sigma_t")
    bin_width = check_positive(bin_width, "bin_width")
    if pilot not in ("smooth", "raw"):
        raise ValueError(f"pilot must be 'smooth' or 'raw', got {pilot!r}")
    h, w, n_bins = cube.shape
    factors = _admissible_factors(h, w, factors, crop)

    # 1. pilot map and per-pixel signal / background counts
    edges = t0 + bin_width * np.arange(n_bins + 1)
    tau, info = estimate_delay(cube, sigma_t=sigma_t, method="lmf", bin_edges=edges)
    signal, bg = _signal_and_background(cube, tau, t0, bin_width, sigma_t, gate)
    w_global = float(np.clip(bg.sum() / max(signal.sum() + bg.sum(), 1.0), 0.0, 0.99))
    tau, _ = estimate_delay(cube, sigma_t=sigma_t, method="ml", bin_edges=edges,
                            background=w_global)

    # 2. smoothed pilot: the scene the theory is evaluated on
    if pilot == "smooth":
        from scipy import ndimage

        tau = ndimage.gaussian_filter(tau, smooth_px, mode="nearest")
    gy, gx = np.gradient(tau)  # per native pixel
    floor = (gx**2 + gy**2) / 12.0  # linearised spread inside one native pixel (L12)
    s2 = float(np.mean((gx * w) ** 2 + (gy * h) ** 2))

    # 3. exact theory per factor
    t_range = n_bins * bin_width
    bias, var = [], []
    for f in factors:
        b_, v_ = _mse_for_factor(tau, floor, signal, bg, f, sigma_t, t_range)
        bias.append(b_)
        var.append(v_)
    bias_a, var_a = np.array(bias), np.array(var)
    mse = bias_a + var_a
    best = factors[int(np.argmin(mse))]
    return BinningRecommendation(best, factors, mse, C_LIGHT / 2 * np.sqrt(mse), bias_a, var_a,
                                 float(signal.sum()), float(bg.sum()), s2, tau)


def _admissible_factors(h: int, w: int, factors: list[int] | None, crop: bool) -> list[int]:
    top = max(1, min(h, w) // 2)
    if factors is None:
        return [f for f in range(1, top + 1) if crop or (h % f == 0 and w % f == 0)]
    out = [check_pixels(f, "factors") for f in factors]
    for f in out:
        if (h % f or w % f) and not crop:
            raise ValueError(f"factor {f} does not divide H={h} and W={w}; pass crop=True")
        if f > min(h, w):
            raise ValueError(f"factor {f} is larger than the cube's H={h} or W={w}")
    return sorted(set(out))


def _signal_and_background(cube: Array, tau: Array, t0: float, bin_width: float, sigma_t: float,
                           gate: float) -> tuple[Array, Array]:
    """Signal = counts within +-gate sigma_t of the peak minus the background expected there;
    background rate per bin from the counts outside the gate."""
    n_bins = cube.shape[-1]
    centres = t0 + bin_width * (np.arange(n_bins) + 0.5)
    inside = np.abs(centres[None, None, :] - tau[..., None]) <= gate * sigma_t
    n_in = inside.sum(axis=-1)
    c_in = np.sum(cube * inside, axis=-1)
    c_out = cube.sum(axis=-1) - c_in
    rate = c_out / np.maximum(n_bins - n_in, 1)
    signal = np.maximum(c_in - rate * n_in, 0.0)
    return signal, rate * n_bins


def _mse_for_factor(tau: Array, floor: Array, signal: Array, bg: Array, f: int, sigma_t: float,
                    t_range: float) -> tuple[float, float]:
    """Area-averaged bias and variance (L9) of f x f super-pixels over the pilot scene."""
    hh, ww = tau.shape[0] // f, tau.shape[1] // f

    def blocks(a: Array) -> Array:
        return a[: hh * f, : ww * f].reshape(hh, f, ww, f).transpose(0, 2, 1, 3).reshape(hh, ww, f * f)

    tb, fb, sb = blocks(tau), blocks(floor), blocks(signal)
    lam_s = bin_cube(signal[..., None], f, crop=True)[..., 0]
    lam_b = bin_cube(bg[..., None], f, crop=True)[..., 0]
    weights = np.where(lam_s[..., None] > 0, sb / np.maximum(lam_s[..., None], 1e-300), 1.0 / (f * f))
    mu = np.sum(weights * tb, axis=-1)  # alpha-weighted mean (L10)
    spread = np.sum(weights * ((tb - mu[..., None]) ** 2 + fb), axis=-1)  # b_n (L10)
    bias = float(np.mean((tb - mu[..., None]) ** 2 + fb))
    lam = lam_s + lam_b
    w = np.where(lam > 0, lam_b / np.maximum(lam, 1e-300), 0.0)
    var = inv_poisson_moment(lam) / fisher_information(np.clip(w, 0.0, 0.999),
                                                       np.sqrt(sigma_t**2 + spread), t_range)
    return bias, float(np.mean(var))

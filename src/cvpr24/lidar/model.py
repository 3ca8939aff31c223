"""The forward model at a fixed total photon budget alpha0: photon timestamps and histograms.

L2  lambda(x, t) = alpha(x) s(t - tau(x)) + beta / T_r 1[0 <= t < T_r]
L3  pixel n integrates its footprint Omega_n (width 1/N; 1/N x 1/N in 2-D)
L4  K_n ~ Poisson(Lambda_n), Lambda_n = alpha0 int_{Omega_n} alpha / int alpha (+ B_n)
L5  given K_n the stamps are i.i.d.: X ~ alpha restricted to Omega_n, T = tau(X) + sigma_t Z

The sampler draws each photon's sub-pixel position X (so the footprint's depth spread is in
the data, not added afterwards), all pixels and repeats at once: memory is O(photons), never
O(N x fine grid). alpha0 is the total over the field of view: there is deliberately no
"photons per pixel" argument (a common pitfall).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from cvpr24.lidar.scene import C_LIGHT, Scene1D, Scene2D, check_pixels
from cvpr24.lidar.theory import check_background, check_positive

Array = np.ndarray
MAX_PROB_PER_CYCLE = 0.05  # above this, pile-up biases the histogram (TCSPC 5 % rule)
TAU_BLOCK = 2**15  # photons per evaluation of the scene's tau in the sampler


@dataclass
class LidarConfig:
    """Physics and estimator settings (full-scale defaults; docs/lidar.md).

    Times are in units of the timing window: with ``t_window=(0, 1)``, ``sigma_t=0.01`` is a
    1 ns pulse in a 100 ns window. ``alpha0`` is the total expected number of detected signal
    photons over the whole field of view and acquisition.
    """

    dims: int = 1
    sigma_t: float = 0.01
    alpha0: float = 1e4
    background: float = 0.0
    t_window: tuple[float, float] = (0.0, 1.0)
    irf: str = "gaussian"
    fine_grid_min: int = 2**14
    fine_grid_factor: int = 16
    empty_pixel: str = "nearest"
    estimator: str = "ml"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    alphas: tuple[float, ...] = (1e3, 1e4, 1e5)
    photons_per_point: float = 4e5  # Monte Carlo: R = max(8, photons_per_point / alpha0)
    n_grid: int = 12

    def __post_init__(self) -> None:
        if self.dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {self.dims!r}")
        check_positive(self.sigma_t, "sigma_t")
        check_positive(self.alpha0, "alpha0")
        check_background(self.background)
        if self.irf != "gaussian":
            raise ValueError(f"irf must be 'gaussian' (the model of L1), got {self.irf!r}")
        if self.empty_pixel not in ("nearest", "nan", "global_mean"):
            raise ValueError(f"empty_pixel must be 'nearest', 'nan' or 'global_mean', got {self.empty_pixel!r}")
        if self.estimator not in ("ml", "mean", "em", "lmf"):
            raise ValueError(f"estimator must be 'ml', 'mean', 'em' or 'lmf', got {self.estimator!r}")

    @classmethod
    def cpu(cls) -> LidarConfig:
        """The reproduction's preset: same physics, 5 seeds, R = max(8, 4e5/alpha0) repeats.

        The estimator is the closed-form ML, the sample mean (identical to the numeric ML for a
        Gaussian pulse without background, to 1e-8 in the tests, and much cheaper).
        """
        return cls(estimator="mean")

    @classmethod
    def tiny(cls) -> LidarConfig:
        """Smoke-test size: one flux level, one seed, fewer repeats."""
        return cls(estimator="mean", seeds=(0,), alphas=(1e3,), photons_per_point=2e4, n_grid=4)

    def fine(self, n: int) -> int:
        """Fine-grid size M = max(fine_grid_min, fine_grid_factor N) (L8)."""
        return max(self.fine_grid_min, self.fine_grid_factor * n)

    def repeats(self, alpha0: float) -> int:
        """Monte Carlo repeats R per seed so that every point sees the same photon total."""
        return max(8, int(round(self.photons_per_point / alpha0)))


def alpha0_from_hardware(n_cycles: int, signal_prob_per_cycle_per_fov: float) -> float:
    """alpha0 = n_cycles x p: the photon budget from the number of laser cycles and the
    probability that a cycle yields a detected signal photon over the whole field of view.

    The model is a Poisson process (no dead time, no pile-up): valid for p <= 0.05.
    """
    n = check_positive(n_cycles, "n_cycles")
    p = check_positive(signal_prob_per_cycle_per_fov, "signal_prob_per_cycle_per_fov")
    if p > MAX_PROB_PER_CYCLE:
        raise ValueError(
            f"signal_prob_per_cycle_per_fov={p:g} exceeds {MAX_PROB_PER_CYCLE}: the detector is in "
            "the pile-up regime, which this Poisson model does not cover; attenuate the laser")
    return n * p


def depth_to_delay(depth_m: Array | float) -> Array | float:
    """Round-trip delay tau = 2 d / c_light (seconds) for a depth in metres."""
    return 2.0 * np.asarray(depth_m, dtype=float) / C_LIGHT


def delay_to_depth(tau_s: Array | float) -> Array | float:
    """Depth d = c_light tau / 2 (metres) for a round-trip delay in seconds."""
    return C_LIGHT * np.asarray(tau_s, dtype=float) / 2.0


def depth_mse(mse_s2: Array | float) -> Array | float:
    """A delay MSE in s^2 as a depth MSE in m^2: (c_light / 2)^2 MSE."""
    return (C_LIGHT / 2.0) ** 2 * np.asarray(mse_s2, dtype=float)


@dataclass(frozen=True)
class PhotonData:
    """Photon timestamps of ``n_repeats`` acquisitions of a pixel grid of ``shape``.

    Attributes
    ----------
    pix : ndarray of int64, (K,)
        Flat index into (n_repeats, *shape), C order (2-D pixels are [row, col]).
    t : ndarray of float64, (K,)
        Arrival times, inside ``t_window``.
    shape : tuple of int
        (N,) in 1-D, (rows, cols) in 2-D.
    """

    pix: Array
    t: Array
    shape: tuple[int, ...]
    n_repeats: int = 1
    t_window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.shape) not in (1, 2):
            raise ValueError(f"shape must be (N,) or (rows, cols), got {self.shape!r}")
        for s in self.shape:
            check_pixels(s, "shape")
        check_pixels(self.n_repeats, "n_repeats")
        t0, t1 = self.t_window
        if not t1 > t0:
            raise ValueError(f"t_window must be (start, stop) with stop > start, got {self.t_window!r}")
        pix, t = np.asarray(self.pix), np.asarray(self.t, dtype=float)
        if pix.shape != t.shape or pix.ndim != 1:
            raise ValueError(f"pix and t must be 1-D of equal length, got {pix.shape} and {t.shape}")
        if pix.size and not np.issubdtype(pix.dtype, np.integer):
            raise ValueError(f"pix must hold integer pixel indices, got dtype {pix.dtype}")
        if pix.size and (pix.min() < 0 or pix.max() >= self.n_pixels * self.n_repeats):
            raise ValueError(f"pix must lie in [0, {self.n_pixels * self.n_repeats}), got "
                             f"[{pix.min()}, {pix.max()}]")
        if not np.all(np.isfinite(t)):
            raise ValueError("t (timestamps) must be finite")
        if t.size and (t.min() < t0 or t.max() >= t1):
            raise ValueError(f"t (timestamps) must lie in t_window=[{t0:g}, {t1:g}), got "
                             f"[{t.min():g}, {t.max():g}]")

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.shape))

    @functools.cached_property
    def counts(self) -> Array:
        """K per pixel, shape (*shape) for one acquisition, (n_repeats, *shape) otherwise."""
        c = np.bincount(self.pix, minlength=self.n_pixels * self.n_repeats)
        return c.reshape(self._grid_shape())

    def _grid_shape(self) -> tuple[int, ...]:
        return self.shape if self.n_repeats == 1 else (self.n_repeats, *self.shape)


def simulate_photons(scene: Scene1D | Scene2D, n: int, alpha0: float, sigma_t: float, *,
                     background: float = 0.0, t_window: tuple[float, float] = (0.0, 1.0),
                     n_repeats: int = 1, rng: np.random.Generator | int = 0,
                     fine: int | None = None) -> PhotonData:
    """Draw photon timestamps for N pixels (per side in 2-D) at total flux ``alpha0`` (L2-L5).

    Parameters
    ----------
    scene : Scene1D or Scene2D
    n : int
        Pixels, per side in 2-D.
    alpha0 : float
        Total expected signal photons over the field of view, per acquisition.
    sigma_t : float
        Gaussian pulse std (L1).
    background : float
        Total expected background photons over the field of view, uniform in the window.
    n_repeats : int
        Independent acquisitions drawn at once (pixel index r * N^dims + n).
    rng : numpy Generator or int seed
    fine : int, optional
        Quadrature nodes for the pixel flux shares when alpha is not uniform.

    Notes
    -----
    Photons are stamped modulo the window (a periodic laser); the scene is checked to stay
    5 sigma_t inside it, so a wrapped photon has probability < 6e-7.
    """
    n = check_pixels(n)
    alpha0 = check_positive(alpha0, "alpha0")
    sigma_t = check_positive(sigma_t, "sigma_t")
    background = check_background(background)
    n_repeats = check_pixels(n_repeats, "n_repeats")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    scene.check_window(sigma_t, t_window)
    t0, t1 = t_window
    if scene.dims == 1:
        pix, x = _sample_positions_1d(scene, n, alpha0, n_repeats, rng, fine)
        tau = _tau_at(scene, x)
        shape: tuple[int, ...] = (n,)
    else:
        pix, x, y = _sample_positions_2d(n, alpha0, n_repeats, rng)
        tau = _tau_at(scene, x, y)
        shape = (n, n)
    t = rng.standard_normal(pix.size)
    t *= sigma_t
    t += tau  # T = tau(X) + sigma_t Z  (L5)
    n_pix = int(np.prod(shape))
    if background > 0:
        kb = rng.poisson(background / n_pix, size=n_repeats * n_pix)
        pix = np.concatenate([pix, np.repeat(np.arange(kb.size), kb)])
        t = np.concatenate([t, t0 + (t1 - t0) * rng.random(int(kb.sum()))])
    out = (t < t0) | (t >= t1)
    if np.any(out):  # rare (< 6e-7 per photon): wrap into the window, as a periodic laser does
        t[out] = t0 + np.mod(t[out] - t0, t1 - t0)
    return PhotonData(pix, t, shape, n_repeats, (t0, t1))


def _tau_at(scene: Scene1D | Scene2D, *coords: Array) -> Array:
    """tau at the photons' positions, in blocks of TAU_BLOCK photons so that the scene's
    temporaries stay in cache (tau is a pointwise function: the result is the same)."""
    if coords[0].size <= TAU_BLOCK:
        return scene.tau(*coords)
    out = np.empty(coords[0].size)
    for s in range(0, out.size, TAU_BLOCK):
        out[s: s + TAU_BLOCK] = scene.tau(*(c[s: s + TAU_BLOCK] for c in coords))
    return out


def _sample_positions_1d(scene: Scene1D, n: int, alpha0: float, n_repeats: int,
                         rng: np.random.Generator, fine: int | None) -> tuple[Array, Array]:
    if scene.alpha is None:
        k = rng.poisson(alpha0 / n, size=n_repeats * n)  # K_n (L4)
        pix = np.repeat(np.arange(k.size), k)
        local = pix if n_repeats == 1 else np.repeat(np.tile(np.arange(n), n_repeats), k)
        x = (local + rng.random(pix.size)) / n  # X uniform on Omega_n
        return pix, x
    tab = scene.table(fine if fine is not None else max(2**14, 16 * n))
    cdf = tab.alpha_cdf(np.arange(n + 1) / n)
    mass = np.diff(cdf)
    k = rng.poisson(np.tile(alpha0 * mass, n_repeats))
    pix = np.repeat(np.arange(k.size), k)
    local = pix % n
    x = tab.alpha_quantile(cdf[local] + rng.random(pix.size) * mass[local])  # X ~ alpha on Omega_n
    return pix, x


def _sample_positions_2d(n: int, alpha0: float, n_repeats: int,
                         rng: np.random.Generator) -> tuple[Array, Array, Array]:
    k = rng.poisson(alpha0 / n**2, size=n_repeats * n * n)
    pix = np.repeat(np.arange(k.size), k)
    local = pix % (n * n)
    row, col = np.divmod(local, n)
    u = rng.random((2, pix.size))
    return pix, (col + u[0]) / n, (row + u[1]) / n


def uniform_bin_edges(t_window: tuple[float, float], bin_width: float) -> Array:
    """TDC bin edges of width ``bin_width`` covering ``t_window`` (the last bin may overhang)."""
    bin_width = check_positive(bin_width, "bin_width")
    t0, t1 = t_window
    n_bins = math.ceil((t1 - t0) / bin_width - 1e-9)
    return t0 + bin_width * np.arange(n_bins + 1)


def to_histogram(data: PhotonData, bin_edges: Array) -> Array:
    """Per-pixel TCSPC histograms: counts of shape (*grid, B) with B = len(bin_edges) - 1.

    The grid is ``data.shape`` (with a leading repeat axis when n_repeats > 1); the sum over
    bins equals ``data.counts``.
    """
    edges = np.asarray(bin_edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError("bin_edges must be a 1-D increasing array of at least 2 edges")
    if data.t.size and (data.t.min() < edges[0] or data.t.max() >= edges[-1]):
        raise ValueError(f"timestamps span [{data.t.min():g}, {data.t.max():g}], outside "
                         f"bin_edges [{edges[0]:g}, {edges[-1]:g})")
    n_bins = edges.size - 1
    b = np.searchsorted(edges, data.t, side="right") - 1
    flat = np.bincount(data.pix * n_bins + b, minlength=data.n_pixels * data.n_repeats * n_bins)
    return flat.reshape(*data._grid_shape(), n_bins)


def bin_pixels(data: PhotonData, factor: int, *, crop: bool = False) -> PhotonData:
    """Super-pixel binning at fixed total flux: pixel n -> floor(n / factor) on every axis.

    Photons are relabelled, never resampled, so the total count is preserved. The grid must
    be divisible by ``factor`` unless ``crop=True`` (then the remainder pixels are dropped).
    """
    factor = check_pixels(factor, "factor")
    shape = data.shape
    if any(s % factor for s in shape) and not crop:
        raise ValueError(f"factor={factor} does not divide the pixel grid {shape}; "
                         "pass crop=True to drop the remainder")
    new_shape = tuple(s // factor for s in shape)
    if min(new_shape) < 1:
        raise ValueError(f"factor={factor} is larger than the pixel grid {shape}")
    rep, local = np.divmod(data.pix, data.n_pixels)
    idx = np.unravel_index(local, shape)
    keep = np.all([i < ns * factor for i, ns in zip(idx, new_shape, strict=True)], axis=0)
    new_idx = tuple(i[keep] // factor for i in idx)
    pix = rep[keep] * int(np.prod(new_shape)) + np.ravel_multi_index(new_idx, new_shape)
    return PhotonData(pix, data.t[keep], new_shape, data.n_repeats, data.t_window)


def bin_cube(cube: Array, factor: int, *, crop: bool = False) -> Array:
    """Sum factor x factor blocks of an (H, W, T) histogram cube (fixed total flux)."""
    cube = np.asarray(cube)
    factor = check_pixels(factor, "factor")
    if cube.ndim != 3:
        raise ValueError(f"cube must be (H, W, T), got shape {cube.shape}")
    h, w, t = cube.shape
    if (h % factor or w % factor) and not crop:
        raise ValueError(f"factor={factor} does not divide H={h} and W={w}; pass crop=True to "
                         "drop the remainder")
    hh, ww = h // factor, w // factor
    if hh < 1 or ww < 1:
        raise ValueError(f"factor={factor} is larger than the cube's H={h} or W={w}")
    c = cube[: hh * factor, : ww * factor]
    return c.reshape(hh, factor, ww, factor, t).sum(axis=(1, 3))

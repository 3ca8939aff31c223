"""The resolution limit: exact and closed-form MSE of the per-pixel ML depth map versus N.

Equation labels are defined in the Equations section of ``docs/lidar.md``; [P-sum] marks the
paper's result as quoted, [D] our derivation from the paper's model, [X] our extension
(background, lock-in, the per-pixel error).

- :func:`inv_poisson_moment`   g(Lambda) = E[1/K | K >= 1]                       (L11)
- :func:`mse_exact`            bias + variance with exact moments                 (L9-L11, [D])
- :func:`mse_closed_form`      c^2/(12N^2) + (N/alpha0)(sigma_t^2 + c^2 sigma_x^2) (L14, L16)
- :func:`optimal_pixels`       N* from the cubic, its approximation, or the exact scan (L15)
- :func:`fisher_information`   per-photon Fisher information with background     (L17, [X])
- :func:`continuous_mse`       int (tau_hat(x) - tau(x))^2 dx of a piecewise-constant map (L8)
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import special

from cvpr24.lidar.scene import (
    PixelMoments,
    Scene1D,
    Scene2D,
    check_fine,
    check_grid,
    check_pixels,
    has_closed_form,
    pixel_moments,
    slope_energy,
)

Array = np.ndarray
_ASYMPTOTIC_FROM = 100.0
_SERIES_BELOW = 0.5


def check_positive(value: Any, name: str) -> float:
    """``float(value)`` if it is a finite number > 0, else ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def inv_poisson_moment(lam: float | Array) -> float | Array:
    """g(Lambda) = E[1/K | K >= 1] for K ~ Poisson(Lambda) (L11).

    g = e^{-L} (Ei(L) - gamma - ln L) / (1 - e^{-L}); below L = 0.5 the bracket is summed as
    its series sum_k L^k / (k k!) (no cancellation), from L = 100 the asymptotic series
    sum_{j<10} j!/L^{j+1} is used (Ei overflows past L ~ 700). g(0) = 1 (the limit).
    The paper's approximation is g ~ 1/Lambda.
    """
    lam_arr = np.asarray(lam, dtype=float)
    if np.any(~np.isfinite(lam_arr)) or np.any(lam_arr < 0):
        raise ValueError(f"Lambda must be finite and >= 0, got {lam!r}")
    out = np.empty_like(lam_arr)
    small = lam_arr < _SERIES_BELOW
    big = lam_arr >= _ASYMPTOTIC_FROM
    mid = ~small & ~big
    if out.size > 1 and np.all(lam_arr == lam_arr.flat[0]):  # uniform flux: one value
        return np.full(lam_arr.shape, inv_poisson_moment(float(lam_arr.flat[0])))
    if out.size > 64:  # pixels often share a few Lambda values: evaluate each once
        uniq, inverse = np.unique(lam_arr, return_inverse=True)
        if uniq.size < out.size // 2:
            return inv_poisson_moment(uniq)[inverse].reshape(lam_arr.shape)
    if np.any(small):
        x = lam_arr[small]
        k = np.arange(1, 25)[:, None]
        bracket = np.sum(x ** k / (k * special.factorial(k)), axis=0)  # Ei(x) - gamma - ln x
        out[small] = np.where(x > 0, np.exp(-x) * bracket / -np.expm1(-np.where(x > 0, x, 1.0)), 1.0)
    if np.any(mid):
        x = lam_arr[mid]
        out[mid] = np.exp(-x) * (special.expi(x) - np.euler_gamma - np.log(x)) / -np.expm1(-x)
    if np.any(big):
        x = lam_arr[big]
        j = np.arange(10)[:, None]
        out[big] = np.sum(special.factorial(j) / x ** (j + 1), axis=0)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class MSEBreakdown:
    """The MSE of L9 split into its parts (units: time^2).

    ``Lambda`` is the mean expected count per pixel (signal + background) and ``p_empty`` the
    mean probability that a pixel gets no photon (e^{-Lambda} for uniform flux).
    """

    bias: float
    variance: float
    total: float
    Lambda: float
    p_empty: float


@functools.lru_cache(maxsize=8)
def _legendre(n: int) -> tuple[Array, Array]:
    return special.roots_legendre(n)


def fisher_information(w: float | Array, sigma: float | Array, t_range: float,
                       n_nodes: int = 401) -> Array:
    """Per-photon Fisher information about tau of f = (1-w) N(tau, sigma^2) + w / T_r (L17, [X]).

    I = int (d_tau f)^2 / f dt by quadrature over +-12 sigma (the pulse well inside the window).
    With w = 0 it is 1/sigma^2.
    """
    w = np.asarray(w, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if np.any((w < 0) | (w >= 1)):
        raise ValueError(f"w (background fraction) must be in [0, 1), got {w!r}")
    u, wq = _legendre(n_nodes)
    u, wq = 12.0 * u, 12.0 * wq  # u in units of sigma
    phi = np.exp(-0.5 * u**2) / math.sqrt(2 * math.pi)  # standard normal density
    ws, ss = np.broadcast_arrays(w, sigma)
    shape = ws.shape
    ws, ss = ws.ravel(), ss.ravel()
    out = np.empty(ws.size)
    for i in range(0, ws.size, 4096):  # bounded memory for large pixel arrays
        wc, sc = ws[i: i + 4096, None], ss[i: i + 4096, None]
        num = ((1 - wc) * phi * u) ** 2  # (sigma d_tau f)^2 sigma^2, per unit of u
        den = (1 - wc) * phi + wc * sc / t_range  # sigma f
        out[i: i + 4096] = np.sum(wq * num / den, axis=-1) / sc[:, 0] ** 2
    return out.reshape(shape)


def mse_exact(scene: Scene1D | Scene2D, n: int, alpha0: float, sigma_t: float, *,
              background: float = 0.0, t_window: tuple[float, float] = (0.0, 1.0),
              fine: int | None = None, moments: PixelMoments | None = None) -> MSEBreakdown:
    """The exact MSE(N) of the per-pixel ML depth map (L9-L11, [D]; background L17, [X]).

    MSE = sum_n int_{Omega_n} (tau - mu_n)^2 dx + sum_n |Omega_n| Var[tau_hat_n], with
    Var[tau_hat_n] = (sigma_t^2 + b_n) g(Lambda_n) without background. With background of
    ``background`` expected photons over the whole field of view (uniform in the window), the
    variance is g(Lambda_n) / I(w_n) with the Fisher information of L17 at the effective pulse
    width sqrt(sigma_t^2 + b_n) (an extension; the paper has no background).

    Parameters
    ----------
    scene : Scene1D or Scene2D
    n : int or (rows, cols)
        Pixels (per side in 2-D; a pair gives rectangular pixels, as a non-square binning does).
    alpha0 : float
        Total expected signal photons over the whole field of view (L2): fixed as N varies.
    sigma_t : float
        Pulse (IRF) standard deviation, same unit as tau.
    background : float
        Total expected background photons over the field of view and the window.
    fine : int, optional
        Quadrature nodes M (per axis in 2-D); default max(2^14, 16N) in 1-D. A 1-D scene with
        an analytic profile and uniform flux needs none: with ``fine=None`` its pixel moments
        are in closed form.
    moments : PixelMoments, optional
        Precomputed ``pixel_moments(scene, n, fine)``.
    """
    n = check_grid(n, scene.dims)
    alpha0 = check_positive(alpha0, "alpha0")
    sigma_t = check_positive(sigma_t, "sigma_t")
    background = check_background(background)
    m = pixel_moments(scene, n, fine) if moments is None else moments
    lam_bg = background * m.area
    lam = alpha0 * m.mass + lam_bg  # Lambda_n (L4)
    spread = sigma_t**2 + m.b  # per-photon variance v_n (L10)
    g = inv_poisson_moment(lam)  # E[1/K | K >= 1] (L11)
    if background > 0:  # [X] L17
        w = np.where(lam > 0, lam_bg / np.where(lam > 0, lam, 1.0), 0.0)
        var = g / fisher_information(w, np.sqrt(spread), t_window[1] - t_window[0])
    else:
        var = spread * g
    bias = m.bias
    variance = float(np.sum(m.area * var))
    return MSEBreakdown(bias, variance, bias + variance, float(np.mean(lam)),
                        float(np.mean(np.exp(-lam))))


def mse_curve(scene: Scene1D | Scene2D, ns: Any, alpha0: float, sigma_t: float, *,
              background: float = 0.0, t_window: tuple[float, float] = (0.0, 1.0),
              fine: int | None = None) -> MSEBreakdown:
    """:func:`mse_exact` for many pixel counts; the fields of the result are arrays over ``ns``.

    A 1-D scene with uniform flux and no background takes one vectorised pass over the pixels
    of every N: with uniform flux Lambda = alpha0 / N is the same for all pixels, so
    MSE(N) = B(N) + g(alpha0 / N) (sigma_t^2 + B(N)), with B(N) = (1/N) sum_n b_n both the bias
    and the mean footprint spread. The b_n come in closed form when the scene has an
    :class:`~cvpr24.lidar.scene.AnalyticProfile` and ``fine`` is None; otherwise every N
    shares one quadrature table (``fine`` defaults to max(2^14, 16 max(ns))), so a 200-point
    curve costs O(sum N) after one O(M) set-up. Other cases call :func:`mse_exact` per N.
    """
    ns = [check_pixels(n) for n in np.atleast_1d(ns)]
    alpha0 = check_positive(alpha0, "alpha0")
    sigma_t = check_positive(sigma_t, "sigma_t")
    background = check_background(background)
    if scene.dims == 1 and scene.alpha is None and background == 0:
        return _uniform_curve_1d(scene, np.asarray(ns), alpha0, sigma_t, fine)
    if fine is None and scene.dims == 1:
        fine = max(2**14, 16 * max(ns))
    rows = [mse_exact(scene, n, alpha0, sigma_t, background=background, t_window=t_window,
                      fine=fine) for n in ns]
    return MSEBreakdown(*(np.array([getattr(r, f.name) for r in rows]) for f in fields(MSEBreakdown)))


def _uniform_curve_1d(scene: Scene1D, ns: Array, alpha0: float, sigma_t: float,
                      fine: int | None) -> MSEBreakdown:
    """L9-L11 for uniform flux without background, all N in one pass (see :func:`mse_curve`)."""
    first = np.cumsum(ns) - ns  # flat index of each N's first pixel
    if has_closed_form(scene) and fine is None:
        bias = spread = scene.profile.spread_sums(ns) / ns  # sum_n |Omega_n| b_n
    else:  # one shared quadrature table, the formulas of pixel_moments
        fine = check_fine(max(2**14, 16 * int(ns.max())) if fine is None else fine, int(ns.max()), 1)
        edges = np.concatenate([np.arange(n + 1) / n for n in ns])
        keep = np.ones(edges.size - 1, bool)
        keep[first[1:] + np.arange(1, ns.size) - 1] = False  # drop the steps from 1 back to 0
        one, u1, u2 = scene.table(fine).increments(edges)[:, keep]  # int 1, tau, tau^2 per pixel
        bias = np.add.reduceat(np.maximum(u2 - u1**2 / one, 0.0), first)
        spread = np.add.reduceat(np.maximum(u2 / one - (u1 / one) ** 2, 0.0), first) / ns
    lam = alpha0 / ns
    variance = inv_poisson_moment(lam) * (sigma_t**2 + spread)
    return MSEBreakdown(bias, variance, bias + variance, lam, np.exp(-lam))


def check_background(background: Any) -> float:
    """``float(background)`` if it is a finite number >= 0, else ValueError naming it."""
    try:
        b = float(background)
    except (TypeError, ValueError):
        raise ValueError(f"background must be a number >= 0, got {background!r}") from None
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"background must be a finite number >= 0, got {background!r}")
    return b


def mse_closed_form(S: Any, n: Any, alpha0: Any, sigma_t: Any, *, dims: int = 1,
                    sigma_x: str | float = "matched") -> Any:
    """The paper's closed form (L14, [P-sum]); 2-D with N per side (L16, [D]).

    1-D:  MSE_cf = S/(12 N^2) + (N/alpha0) (sigma_t^2 + S sigma_x^2)
    2-D:  MSE_cf = S2/(12 N^2) + (N^2/alpha0) (sigma_t^2 + S2 sigma_x^2)

    Rectangular 2-D pixels: ``n = (rows, cols)`` and ``S = (S_y, S_x)`` (see
    ``slope_energy(directional=True)``; a single S is split evenly), with the footprint spread
    S_y/(12 rows^2) + S_x/(12 cols^2) in both the bias and the variance (L16).
    ``sigma_x="matched"`` is the variance-matched Gaussian footprint sigma_x^2 = 1/(12 N^2)
    (our reading, see the docs); a float is a footprint std in field-of-view units. Works on
    floats, numpy arrays and torch tensors (differentiable in every argument).
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    if isinstance(n, (tuple, list)):
        if dims != 2 or len(n) != 2:
            raise ValueError(f"a (rows, cols) pixel grid needs dims=2, got n={n!r}, dims={dims}")
        ny, nx = n
        s_y, s_x = S if isinstance(S, (tuple, list)) else (S / 2, S / 2)
        for name, v in (("S_y", s_y), ("S_x", s_x), ("rows", ny), ("cols", nx), ("alpha0", alpha0),
                        ("sigma_t", sigma_t)):
            if not _all_positive(v):
                raise ValueError(f"{name} must be positive, got {v!r}")
        if not isinstance(sigma_x, str):
            raise ValueError("rectangular pixels take sigma_x='matched' only")
        spread = s_y / (12.0 * ny**2) + s_x / (12.0 * nx**2)
        return spread + (ny * nx / alpha0) * (sigma_t**2 + spread)
    for name, v in (("S", S), ("N", n), ("alpha0", alpha0), ("sigma_t", sigma_t)):
        if not _all_positive(v):
            raise ValueError(f"{name} must be positive, got {v!r}")
    if isinstance(sigma_x, str):
        if sigma_x != "matched":
            raise ValueError(f"sigma_x must be 'matched' or a float, got {sigma_x!r}")
        sx2 = 1.0 / (12.0 * n**2)
    else:
        sx2 = check_positive(sigma_x, "sigma_x") ** 2
    pixels = n if dims == 1 else n**2
    return S / (12.0 * n**2) + (pixels / alpha0) * (sigma_t**2 + S * sx2)


def _all_positive(v: Any) -> bool:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            return bool(torch.all(v > 0))
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    a = np.asarray(v, dtype=float)
    return bool(np.all(np.isfinite(a)) and np.all(a > 0))


def optimal_pixels(scene_or_S: Scene1D | Scene2D | float, alpha0: float, sigma_t: float, *,
                   dims: int | None = None, method: str = "cubic", background: float = 0.0,
                   n_max: int | None = None, fine: int | None = None) -> float | int:
    """The optimal pixel count N* (per side in 2-D) for a total photon budget alpha0 (L15).

    Parameters
    ----------
    scene_or_S : Scene1D, Scene2D or float
        The scene, or its slope energy S (S2 in 2-D).
    method : {"cubic", "approx", "exact"}
        ``"approx"``: (S alpha0 / (6 sigma_t^2))^(1/3) in 1-D, (S2 alpha0/(12 sigma_t^2))^(1/4)
        in 2-D. ``"cubic"``: the positive root of sigma_t^2 N^3 - (S/12) N - S alpha0/6 = 0
        (in 2-D the stationarity condition is exactly the quartic root). ``"exact"``: the
        integer argmin of :func:`mse_exact` (needs a scene), scanned over [1, n_max] in 1-D and
        found by integer ternary search in 2-D (the exact curve is unimodal for such scenes).

    Returns
    -------
    float (approx, cubic) or int (exact).
    """
    alpha0 = check_positive(alpha0, "alpha0")
    sigma_t = check_positive(sigma_t, "sigma_t")
    scene = None if isinstance(scene_or_S, (int, float, np.floating, np.integer)) else scene_or_S
    if scene is not None:
        dims = scene.dims if dims is None else dims
        if dims != scene.dims:
            raise ValueError(f"dims={dims} does not match the {scene.dims}-D scene")
    dims = 1 if dims is None else dims
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    if method not in ("cubic", "approx", "exact"):
        raise ValueError(f"method must be 'cubic', 'approx' or 'exact', got {method!r}")
    if method == "exact":
        if scene is None:
            raise ValueError("method='exact' needs a scene, not only its slope energy")
        n_best, n_top = _exact_argmin(scene, alpha0, sigma_t, background, n_max, fine)
        if n_best == n_top and n_top > 1:
            warnings.warn(f"the exact optimum N = {n_best} sits on the scan limit n_max = {n_top}: "
                          "the true optimum may be larger; pass a larger n_max", UserWarning, stacklevel=2)
        warn_low_flux(n_best, alpha0, dims)
        return n_best
    S = check_positive(slope_energy(scene) if scene is not None else scene_or_S, "S")
    if dims == 2:
        n_star = (S * alpha0 / (12.0 * sigma_t**2)) ** 0.25
    elif method == "approx":
        n_star = (S * alpha0 / (6.0 * sigma_t**2)) ** (1.0 / 3.0)
    else:
        roots = np.roots([sigma_t**2, 0.0, -S / 12.0, -S * alpha0 / 6.0])
        real = roots[np.abs(roots.imag) < 1e-9 * np.abs(roots).max()].real
        n_star = float(real[real > 0].max())
    warn_low_flux(n_star, alpha0, dims)
    return n_star


LOW_FLUX = 5.0  # photons per pixel below which L9-L11 stop predicting the error


def warn_low_flux(n: float, alpha0: float, dims: int) -> None:
    """Warn, naming Lambda, when N pixels (per side in 2-D) leave fewer than 5 photons each."""
    lam = alpha0 / n**dims
    if lam < LOW_FLUX:
        side = " per side" if dims == 2 else ""
        warnings.warn(f"Lambda = {lam:.3g} photons per pixel at N = {n:.4g}{side} (< {LOW_FLUX:g}): "
                      f"outside the theory's domain; {math.exp(-lam):.0%} of pixels are empty and "
                      "the fill and (with background) lock-in errors it ignores can make the real "
                      "error several times larger (a depth-map scene measured 2.6-4x at Lambda = 0.09-0.8)",
                      UserWarning, stacklevel=3)


def _exact_argmin(scene, alpha0, sigma_t, background, n_max, fine) -> tuple[int, int]:
    """The integer argmin of the exact MSE and the top of the scan."""
    if n_max is None:
        smooth = scene.dims == 2 or not scene.breakpoints
        S = slope_energy(scene) if smooth else 0.0
        if S > 0:  # 3x the closed-form optimum brackets the exact one comfortably
            with warnings.catch_warnings():  # the caller warns about its own optimum
                warnings.simplefilter("ignore", UserWarning)
                guess = optimal_pixels(S, alpha0, sigma_t, dims=scene.dims, method="approx")
            n_max = max(16, math.ceil(3 * guess))
        else:  # jumps or a flat scene: scan down to 5 photons per pixel
            n_max = max(16, math.ceil((alpha0 / 5) ** (1 / scene.dims)))
    n_max = check_pixels(n_max, "n_max")
    if scene.dims == 1:  # one vectorised pass, or one shared quadrature table
        totals = mse_curve(scene, np.arange(1, n_max + 1), alpha0, sigma_t, background=background,
                           fine=fine).total
        return int(np.argmin(totals)) + 1, n_max

    def f(n: int) -> float:
        return mse_exact(scene, n, alpha0, sigma_t, background=background, fine=fine).total

    lo, hi = 1, n_max
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    return min(range(lo, hi + 1), key=f), n_max


def continuous_mse(tau_hat: Array, scene: Scene1D | Scene2D | None = None, *,
                   fine: int | None = None, moments: PixelMoments | None = None) -> Array:
    """int (tau_hat(x) - tau(x))^2 dx for the piecewise-constant map tau_hat (L8).

    ``tau_hat`` has shape (..., N) in 1-D or (..., N, N) in 2-D (leading axes are repeats);
    returns one MSE per leading index. The integral is exact to quadrature precision:
    sum_n [int_{Omega_n} (tau - mean_n)^2 + |Omega_n| (tau_hat_n - mean_n)^2]. NaN pixels
    (``empty="nan"``) make the result NaN.
    """
    tau_hat = np.asarray(tau_hat, dtype=float)
    if moments is None:
        if scene is None:
            raise ValueError("continuous_mse needs a scene or precomputed moments")
        dims = scene.dims
        if tau_hat.ndim < dims:
            raise ValueError(f"tau_hat must have at least {dims} axes, got shape {tau_hat.shape}")
        moments = pixel_moments(scene, tau_hat.shape[-1], fine)
    nd = len(moments.shape)
    if tau_hat.shape[tau_hat.ndim - nd:] != moments.shape:
        raise ValueError(f"tau_hat's trailing shape {tau_hat.shape[-nd:]} does not match the "
                         f"pixel grid {moments.shape}")
    axes = tuple(range(tau_hat.ndim - nd, tau_hat.ndim))
    dev = np.sum((tau_hat - moments.mean) ** 2, axis=axes) * moments.area
    return float(np.sum(moments.sqdev)) + dev


# ------------------------------------------------------------------ the estimator at low counts
SIGMA_MAX_WINDOW = 0.1  # sigma_t above this share of the timing window: refused (no pulse fits)
SIGMA_MIN_BIN = 0.1  # sigma_t below this share of a TDC bin: warned (a unit slip, most likely)
LMF_MAX_CELLS = 2**22  # a timestamp filter grid of 4 T_r / sigma_t cells beyond this: refused
LMF_HALF_WIDTH = 3.0  # the log-matched filter counts photons within about +-3 sigma of its peak
NEWTON_REACH = 6.0  # the ML solvers use the bins within +-6 sigma_t of the filter's peak
LOCK_MAX_COUNT = 400  # signal windows beyond this many photons never lose to background


def check_sigma_t(sigma_t: float, t_range: float, bin_width: float | None = None) -> None:
    """Refuse a pulse width that cannot fit the window; warn when it is below a tenth of a bin.

    Both usually mean a unit slip (``sigma_t`` in other units than the timestamps or bins).
    """
    if sigma_t > SIGMA_MAX_WINDOW * t_range:
        raise ValueError(f"sigma_t={sigma_t:g} is {sigma_t / t_range:.3g} of the timing window "
                         f"{t_range:g} (more than {SIGMA_MAX_WINDOW:g}): no pulse fits; give "
                         "sigma_t in the unit of the timestamps / bin width (seconds)")
    if bin_width is None and 4 * t_range / sigma_t > LMF_MAX_CELLS:
        raise ValueError(f"sigma_t={sigma_t:g} is {t_range / sigma_t:.3g} times shorter than the "
                         f"timing window {t_range:g}: the matched filter would need "
                         f"{4 * t_range / sigma_t:.3g} cells per pixel; check its unit")
    if bin_width is not None and sigma_t < SIGMA_MIN_BIN * bin_width:
        warnings.warn(f"sigma_t={sigma_t:g} is {sigma_t / bin_width:.3g} of a TDC bin "
                      f"({bin_width:g}): a pulse that narrow is implausible; check its unit",
                      UserWarning, stacklevel=3)


def lock_in_probability(lam_s: Array, lam_b: Array, sigma: Array, t_range: float) -> tuple[Array, Array]:
    """P(the estimator locks onto a background cluster) and P(the pixel is empty) (L18, [X]).

    The log-matched filter picks the delay whose +-a sigma window (a = LMF_HALF_WIDTH, width
    omega = 2 a sigma) holds the most photons. The signal window holds S ~ Poisson(0.997
    Lambda_s + m) photons, m = Lambda_b omega / T_r; each of M = 2 (T_r / omega - 1) competing
    windows (a sliding window has about twice the disjoint ones) holds Poisson(m). With F, p
    the competitors' cdf and pmf, the signal wins a tie among r + 1 windows with probability
    1 / (r + 1), which sums to P(win | S = j) = (F_j^{M+1} - F_{j-1}^{M+1}) / ((M + 1) p_j).
    The lock-in probability is 1 - P(win) - P(K = 0), P(K = 0) = exp(-(Lambda_s + Lambda_b)).
    """
    from scipy import stats

    lam_s, lam_b, sigma = np.broadcast_arrays(*(np.asarray(v, float) for v in (lam_s, lam_b, sigma)))
    shape = lam_s.shape
    lam_s, lam_b, sigma = lam_s.ravel(), lam_b.ravel(), sigma.ravel()
    p_empty = np.exp(-(lam_s + lam_b))
    p_lock = np.zeros(lam_s.size)
    omega = 2 * LMF_HALF_WIDTH * sigma
    m = lam_b * omega / t_range
    n_comp = 2 * np.maximum(t_range / omega - 1, 0.0)
    active = (lam_b > 0) & (lam_s < LOCK_MAX_COUNT)
    if np.any(active):
        ls, mb, nc = lam_s[active, None], m[active, None], n_comp[active, None]
        mu_sig = 0.9973 * ls + mb
        top = int(np.ceil(np.max(mu_sig + 8 * np.sqrt(mu_sig) + 10)))
        j = np.arange(top + 1)[None, :]
        p_sig = stats.poisson.pmf(j, mu_sig)
        pj = stats.poisson.pmf(j, mb)
        fj = stats.poisson.cdf(j, mb)
        fprev = np.where(j > 0, stats.poisson.cdf(j - 1, mb), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # tiny p_j: the derivative F_j^M
            win = np.where(pj > 1e-8 * fj, (fj ** (nc + 1) - fprev ** (nc + 1)) / ((nc + 1) * pj),
                           fj**nc)
        p_win = np.sum(p_sig * win, axis=1)
        p_lock[active] = np.clip(1.0 - p_win - p_empty[active], 0.0, 1.0)
    return p_lock.reshape(shape), p_empty.reshape(shape)


def estimator_variance(lam_s: Array, lam_b: Array, sigma: Array, t_range: float, sigma_t: float,
                       bin_width: float) -> Array:
    """Var[tau_hat] of a pixel whose estimate stays on the signal (L19, [X]).

    g(Lambda) / I(w) (L11, L17) over the ML solver's window of width G = 2 NEWTON_REACH sigma_t,
    which holds Lambda = Lambda_s + Lambda_b G / T_r photons, a share w of them background.
    The solver stays within 2 sigma_t + 1 bin of its start, so the variance is capped at that
    of a uniform law there. Never blows up as w -> 1 (no clipping needed).
    """
    g_width = 2 * NEWTON_REACH * sigma_t
    lam_bg = np.asarray(lam_b, float) * g_width / t_range
    lam = np.asarray(lam_s, float) + lam_bg
    w = np.where(lam > 0, lam_bg / np.maximum(lam, 1e-300), 0.0)
    info = fisher_information(np.minimum(w, 1 - 1e-9), sigma, g_width)
    cap = (2 * sigma_t + bin_width) ** 2 / 3
    return np.minimum(inv_poisson_moment(lam) / info, cap)


def pixel_variance(counts: Array, w: Array, sigma_t: float, t_window: tuple[float, float],
                   bin_width: float = 0.0) -> tuple[Array, Array]:
    """Each pixel's error variance given its count K, and its lock-in probability (L22, [X]).

    The variance is min(1 / (K I(w)), cap): the Fisher bound of L17 for the K photons seen (a
    share w of them background, pulse variance sigma_t^2 + Delta^2/12 with TDC bins of width
    Delta), capped as in L19. It is the error of an estimate that stayed on the signal; the
    probability that it did not is L18 at Lambda_s = K (1 - w), Lambda_b = K w, given K >= 1
    (a plug-in that over-states the lock-in of pixels with fewer than ~10 photons). Both are
    NaN where K = 0 (the pixel was filled, not estimated).
    """
    k = np.asarray(counts, float)
    w = np.clip(np.asarray(w, float), 0.0, 1 - 1e-9)
    t_range = t_window[1] - t_window[0]
    sigma = math.sqrt(sigma_t**2 + bin_width**2 / 12)
    var = np.minimum(1.0 / (np.maximum(k, 1.0) * fisher_information(w, sigma, t_range)),
                     (2 * sigma_t + bin_width) ** 2 / 3)
    p_lock, p_empty = lock_in_probability(k * (1 - w), k * w, sigma, t_range)
    q = np.clip(p_lock / np.maximum(1 - p_empty, 1e-300), 0.0, 1.0)
    return np.where(k > 0, var, np.nan), np.where(k > 0, q, np.nan)

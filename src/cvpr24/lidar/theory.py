"""The resolution limit: exact and closed-form MSE of the per-pixel ML depth map versus N.

Equation labels L8-L17 follow ``papers/lidar.md``; [P-sum] marks the paper's result as quoted,
[D] our derivation from the paper's model, [X] our extension (background).

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
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import special

from cvpr24.lidar.scene import (
    PixelMoments,
    Scene1D,
    Scene2D,
    check_fine,
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
    n : int
        Pixels (per side in 2-D).
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
    n = check_pixels(n)
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

    ``sigma_x="matched"`` is the variance-matched Gaussian footprint sigma_x^2 = 1/(12 N^2)
    (our reading, see the docs); a float is a footprint std in field-of-view units. Works on
    floats, numpy arrays and torch tensors (differentiable in every argument).
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
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
        return _exact_argmin(scene, alpha0, sigma_t, background, n_max, fine)
    S = check_positive(slope_energy(scene) if scene is not None else scene_or_S, "S")
    if dims == 2:
        return (S * alpha0 / (12.0 * sigma_t**2)) ** 0.25
    if method == "approx":
        return (S * alpha0 / (6.0 * sigma_t**2)) ** (1.0 / 3.0)
    roots = np.roots([sigma_t**2, 0.0, -S / 12.0, -S * alpha0 / 6.0])
    real = roots[np.abs(roots.imag) < 1e-9 * np.abs(roots).max()].real
    return float(real[real > 0].max())


def _exact_argmin(scene, alpha0, sigma_t, background, n_max, fine) -> int:
    if n_max is None:
        smooth = scene.dims == 2 or not scene.breakpoints
        S = slope_energy(scene) if smooth else 0.0
        if S > 0:  # 3x the closed-form optimum brackets the exact one comfortably
            guess = optimal_pixels(S, alpha0, sigma_t, dims=scene.dims, method="approx")
            n_max = max(16, math.ceil(3 * guess))
        else:  # jumps or a flat scene: scan down to 5 photons per pixel
            n_max = max(16, math.ceil((alpha0 / 5) ** (1 / scene.dims)))
    n_max = check_pixels(n_max, "n_max")
    if scene.dims == 1:  # one vectorised pass, or one shared quadrature table
        totals = mse_curve(scene, np.arange(1, n_max + 1), alpha0, sigma_t, background=background,
                           fine=fine).total
        return int(np.argmin(totals)) + 1

    def f(n: int) -> float:
        return mse_exact(scene, n, alpha0, sigma_t, background=background, fine=fine).total

    lo, hi = 1, n_max
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    return min(range(lo, hi + 1), key=f)


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

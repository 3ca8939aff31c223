"""Scenes: the time-delay profile tau(x) over the normalised field of view, and its pixel moments.

The field of view is the unit interval (1-D) or the unit square (2-D). A scene gives the
round-trip delay tau(x) (depth d = c_light * tau / 2) and, in 1-D, an optional relative flux
density alpha(x) (uniform by default). Everything the theory and the metric need from a scene
for N pixels is collected by :func:`pixel_moments`:

- the footprint Omega_n and its flux share  int_{Omega_n} alpha / int alpha      (L3, L4)
- mu_n  = alpha-weighted mean of tau over Omega_n                                (L10)
- b_n   = alpha-weighted variance of tau over Omega_n                            (L10)
- the bias integral  int_{Omega_n} (tau - mu_n)^2 dx                             (L9)

The ramp, sine and step scenes carry an :class:`AnalyticProfile` (a line, sines and jumps),
whose pixel moments are in closed form: with uniform flux no quadrature is needed, and b_n is
a sum of squares that keeps its relative precision however small the pixel. Other scenes use
composite 4-point Gauss-Legendre quadrature on a fine grid of ``fine`` nodes (M in the spec,
default max(2**14, 16 N)); panels are split at the scene's discontinuities, so a step edge is
integrated exactly. In 1-D the integrals are accumulated once per grid (in compensated,
double-double precision) and differenced at the pixel edges, so one more N costs O(N), not O(M).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray
_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)  # nodes and weights on [-1, 1]
FINE_MIN_1D = 2**14
FINE_FACTOR_1D = 16
FINE_MIN_2D = 2**9
FINE_FACTOR_2D = 8


def default_fine(n: int, dims: int = 1) -> int:
    """The default fine-grid size M for N pixels (per side in 2-D): max(2^14, 16N) in 1-D,
    max(2^9, 8N) nodes per axis in 2-D."""
    if dims == 1:
        return max(FINE_MIN_1D, FINE_FACTOR_1D * n)
    return max(FINE_MIN_2D, FINE_FACTOR_2D * n)


def check_pixels(n: object, name: str = "n") -> int:
    """Validate a pixel count: a positive integer (numpy integers and integral floats pass)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer, float, np.floating)):
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    if not float(n).is_integer() or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def check_fine(fine: int | None, n: int, dims: int) -> int:
    """The quadrature size M for N pixels: the default, or ``fine`` checked to be >= 4N."""
    fine = default_fine(n, dims) if fine is None else check_pixels(fine, "fine")
    if fine < 4 * n:
        raise ValueError(f"fine must be at least 4*N = {4 * n} quadrature nodes "
                         f"(per side in 2-D) so each pixel is resolved, got fine={fine}")
    return fine


@dataclass(frozen=True)
class AnalyticProfile:
    """A delay profile whose pixel moments (L10) have a closed form.

    tau(x) = offset + slope x + sum_k amp_k sin(omega_k x + phase_k) + sum_j height_j 1[x >= edge_j]

    The ramp, the sine and the step scenes of the spec are of this form. For a pixel of width h
    centred on m, write x = m + u with u ~ U(-h/2, h/2). Then
    sin(omega (m + u) + phase) = s cos(omega u) + c sin(omega u), with s, c = sin, cos(omega m + phase).
    The smooth part is a linear combination, with per-pixel coefficients, of the odd basis
    {u, sin omega_k u} and the even basis {cos omega_k u}. Odd and even functions of u are
    uncorrelated, so

        mu_n = offset + slope m + sum_k amp_k s_k E[cos omega_k u]
        b_n  = v_odd' C_odd v_odd + v_even' C_even v_even,   v_odd = (slope, amp_k c_k), v_even = (amp_k s_k)

    where C_odd and C_even are the covariance matrices of the bases. They depend on h alone, so
    there is one small matrix per pixel count. They are integrals of trigonometric polynomials
    over one pixel, taken by Gauss-Legendre with enough nodes to be exact to rounding. The
    centred cosines are formed as 2 (E[sin^2(omega u / 2)] - sin^2(omega u / 2)), so no digits
    cancel for small pixels, and b_n is a sum of squares, never a difference E[tau^2] - mu^2.
    A jump inside a pixel, with a fraction p of the pixel beyond it, adds height p to the mean
    and height^2 p (1 - p) plus its covariances with the smooth part to the variance. All of
    these are in closed form.
    """

    offset: float = 0.0
    slope: float = 0.0
    amp: tuple[float, ...] = ()
    omega: tuple[float, ...] = ()
    phase: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()
    heights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("amp", "omega", "phase", "edges", "heights"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not len(self.amp) == len(self.omega) == len(self.phase):
            raise ValueError(f"amp, omega and phase must have equal lengths, got {len(self.amp)}, "
                             f"{len(self.omega)} and {len(self.phase)}")
        if len(self.edges) != len(self.heights):
            raise ValueError(f"edges and heights must have equal lengths, got {len(self.edges)} "
                             f"and {len(self.heights)}")
        values = (self.offset, self.slope, *self.amp, *self.omega, *self.phase, *self.heights)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("offset, slope, amp, omega, phase and heights must be finite")
        if any(w == 0 for w in self.omega):
            raise ValueError(f"omega must be non-zero (put constants in offset), got {self.omega}")
        if any(not 0.0 < e < 1.0 for e in self.edges):
            raise ValueError(f"edges must lie in (0, 1), got {self.edges}")

    def tau(self, x: Array) -> Array:
        """tau(x), vectorised."""
        x = np.asarray(x, dtype=float)
        out = self.offset + self.slope * x if self.slope else self.offset
        for a, w, p in zip(self.amp, self.omega, self.phase, strict=True):
            out = out + a * np.sin(w * x + p if p else w * x)
        for e, h in zip(self.edges, self.heights, strict=True):
            out = out + h * (x >= e)
        return np.full_like(x, out) if isinstance(out, float) else out

    def dtau(self, x: Array) -> Array:
        """tau'(x) away from the jumps."""
        x = np.asarray(x, dtype=float)
        out = np.full_like(x, self.slope)
        for a, w, p in zip(self.amp, self.omega, self.phase, strict=True):
            out = out + a * w * np.cos(w * x + p)
        return out

    def scaled(self, a: float = 1.0, offset: float = 0.0) -> AnalyticProfile:
        """The profile a tau + offset."""
        return AnalyticProfile(a * self.offset + offset, a * self.slope, tuple(a * v for v in self.amp),
                               self.omega, self.phase, self.edges, tuple(a * h for h in self.heights))

    def mirrored(self) -> AnalyticProfile:
        """The profile tau(1 - x): sin(omega (1 - x) + phase) = sin(omega x + pi - omega - phase),
        and 1[1 - x >= e] = 1 - 1[x > 1 - e] (equal but at the jump itself)."""
        return AnalyticProfile(self.offset + self.slope + sum(self.heights), -self.slope, self.amp,
                               self.omega, tuple(math.pi - w - p for w, p in zip(self.omega, self.phase, strict=True)),
                               tuple(1.0 - e for e in self.edges), tuple(-h for h in self.heights))

    def pixel_moments(self, ns: Array) -> tuple[Array, Array]:
        """Mean mu_n and variance b_n of tau over every pixel of every pixel count in ``ns``.

        Returns two arrays of length sum(ns): the pixels of ns[0], then those of ns[1], ...
        """
        ns = np.asarray(ns, dtype=np.int64)
        local, m, odd, even = self._coefficients(ns)
        ecos, c_odd, c_even = self._basis_moments(1.0 / ns)
        mean = self.offset + self.slope * m
        for k, v in enumerate(even):
            mean += v * np.repeat(ecos[:, k], ns)
        var = np.zeros(m.size)
        for v, c in ((odd, c_odd), (even, c_even)):
            for i, j in zip(*np.triu_indices(len(v)), strict=True):
                var += (1.0 + (i != j)) * v[i] * v[j] * np.repeat(c[:, i, j], ns)
        for e, h in zip(self.edges, self.heights, strict=True):
            mean += h * np.clip(local + 1 - np.repeat(e * ns, ns), 0.0, 1.0)  # the share beyond it
        for idx, _, dvar in self._jump_terms(ns, odd, even, ecos):
            var[idx] += dvar
        return mean, var

    def spread_sums(self, ns: Array) -> Array:
        """sum_n b_n over the pixels of each pixel count in ``ns`` (one pass, no per-pixel b).

        The quadratic form is summed per N first: sum_n v_i v_j, then times C_ij(N).
        """
        ns = np.asarray(ns, dtype=np.int64)
        first = np.cumsum(ns) - ns
        _, _, odd, even = self._coefficients(ns)
        ecos, c_odd, c_even = self._basis_moments(1.0 / ns)
        out = np.zeros(ns.size)
        for v, c in ((odd, c_odd), (even, c_even)):
            for i, j in zip(*np.triu_indices(len(v)), strict=True):
                out += (1.0 + (i != j)) * c[:, i, j] * np.add.reduceat(v[i] * v[j], first)
        for _, g, dvar in self._jump_terms(ns, odd, even, ecos):
            np.add.at(out, g, dvar)
        return out

    def _coefficients(self, ns: Array) -> tuple[Array, Array, list[Array], list[Array]]:
        """Pixel indices within their grid, pixel centres m, and the per-pixel coefficients of the odd basis (slope, amp_k c_k)
        and of the even basis (amp_k s_k), each a list of (sum N,) arrays."""
        local = np.arange(int(ns.sum())) - np.repeat(np.cumsum(ns) - ns, ns)  # index within its grid
        m = (local + 0.5) / np.repeat(ns, ns)  # (P,) pixel centres
        odd = [np.full(m.shape, self.slope)] if self.slope else []
        even = []
        for a, w, p in zip(self.amp, self.omega, self.phase, strict=True):
            arg = w * m + p
            odd.append(a * np.cos(arg))
            even.append(a * np.sin(arg))
        return local, m, odd, even

    def _basis_moments(self, width: Array) -> tuple[Array, Array, Array]:
        """E[cos omega_k u] (G, K) and the covariances of the odd basis (G, D, D) and of the
        even basis (G, K, K), for u ~ U(-h/2, h/2) with h = ``width``."""
        theta = max((abs(w) for w in self.omega), default=0.0) * float(np.max(width))
        x, wq = _legendre_nodes(24 + math.ceil(theta))  # exact to rounding for phases up to theta
        u = width[:, None] / 2 * x  # (G, q)
        wq = wq / 2  # weights of the mean over the pixel
        omega = np.asarray(self.omega)[None, :, None]  # (1, K, 1)
        odd = np.sin(omega * u[:, None, :])  # (G, K, q), zero mean by symmetry
        if self.slope:
            odd = np.concatenate([u[:, None, :], odd], axis=1)
        half = np.sin(omega * u[:, None, :] / 2) ** 2  # (1 - cos omega u) / 2
        mean_half = half @ wq  # (G, K)
        even = 2.0 * (mean_half[..., None] - half)  # cos omega u - E[cos omega u], no cancellation
        c_odd = np.einsum("giq,gjq,q->gij", odd, odd, wq)
        c_even = np.einsum("giq,gjq,q->gij", even, even, wq)
        return 1.0 - 2.0 * mean_half, c_odd, c_even

    def _jump_terms(self, ns: Array, odd: list[Array], even: list[Array],
                    ecos: Array) -> list[tuple[Array, Array, Array]]:
        """The jumps' additions to b_n, as (flat pixel index, grid index, amount) triples.

        A jump J = 1[u >= u0] of height h with a fraction p of its pixel beyond it adds
        h^2 p (1 - p) + 2 h Cov(J, smooth part), and two jumps in one pixel add
        2 h1 h2 (min(p1, p2) - p1 p2).
        """
        first, width = np.cumsum(ns) - ns, 1.0 / ns
        out, cuts = [], []
        for e, h in zip(self.edges, self.heights, strict=True):
            pos = e * ns  # (G,) the jump in pixel units
            pixel = np.floor(pos)
            g = np.flatnonzero(pixel + 1 - pos < 1)  # grids where the jump cuts a pixel
            idx = first[g] + pixel[g].astype(np.int64)
            p, hw = (pixel + 1 - pos)[g], width[g]  # fraction beyond the jump, pixel width
            cov = [p * (1 - p) * hw / 2] if self.slope else []  # Cov(J, u)
            cov_even = []
            for k, w in enumerate(self.omega):  # Cov(J, sin w u) and Cov(J, cos w u - E cos w u)
                sp = np.sin(w * p * hw / 2)
                cov.append(2 * np.sin(w * (1 - p) * hw / 2) * sp / (w * hw))
                cov_even.append(2 * np.cos(w * (1 - p) * hw / 2) * sp / (w * hw) - ecos[g, k] * p)
            cross = sum((v[idx] * c for v, c in zip(odd, cov, strict=True)), np.zeros(idx.size))
            cross = cross + sum((v[idx] * c for v, c in zip(even, cov_even, strict=True)), np.zeros(idx.size))
            out.append((idx, g, h * h * p * (1 - p) + 2 * h * cross))
            cuts.append((idx, g, p, h))
        for a, (idx1, g1, p1, h1) in enumerate(cuts):
            for idx2, _, p2, h2 in cuts[a + 1:]:
                common, i1, i2 = np.intersect1d(idx1, idx2, return_indices=True)
                out.append((common, g1[i1], 2 * h1 * h2 * (np.minimum(p1[i1], p2[i2]) - p1[i1] * p2[i2])))
        return out


@functools.lru_cache(maxsize=16)
def _legendre_nodes(q: int) -> tuple[Array, Array]:
    return np.polynomial.legendre.leggauss(q)


@dataclass(frozen=True, eq=False)
class Scene1D:
    """A 1-D scene on x in [0, 1]: delay profile tau(x) and relative flux density alpha(x).

    Parameters
    ----------
    tau : callable
        Vectorised round-trip delay tau(x), in the caller's time unit (the window's).
    alpha : callable, optional
        Vectorised relative flux density alpha(x) >= 0 (any scale: it is normalised so that
        the total is alpha0). ``None`` means uniform, alpha(x) = alpha0.
    dtau : callable, optional
        tau'(x), used for the slope energy S (L12); finite differences when ``None``.
    breakpoints : tuple of float
        Positions in (0, 1) where tau jumps; quadrature panels are split there.
    name : str
        Shown in reports.
    profile : AnalyticProfile, optional
        The same tau in a form whose pixel moments are closed-form (see
        :meth:`from_profile`); with uniform flux the theory then needs no quadrature.

    Examples
    --------
    >>> scene = Scene1D.ramp(0.6)
    >>> round(slope_energy(scene), 6)
    0.36
    """

    tau: Callable[[Array], Array]
    alpha: Callable[[Array], Array] | None = None
    dtau: Callable[[Array], Array] | None = None
    breakpoints: tuple[float, ...] = ()
    name: str = "custom"
    profile: AnalyticProfile | None = None
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    dims = 1

    def __post_init__(self) -> None:
        for b in self.breakpoints:
            if not 0.0 < b < 1.0:
                raise ValueError(f"breakpoints must lie in (0, 1), got {b!r}")

    # -- the scenes of the spec ------------------------------------------------------------
    @classmethod
    def from_profile(cls, profile: AnalyticProfile, alpha: Callable[[Array], Array] | None = None,
                     name: str = "analytic") -> Scene1D:
        """The scene tau = ``profile.tau``, its jumps as breakpoints, closed-form pixel moments."""
        return cls(profile.tau, alpha, profile.dtau, tuple(sorted(set(profile.edges))), name, profile)

    @classmethod
    def ramp(cls, c: float = 0.6, tau0: float = 0.2) -> Scene1D:
        """tau(x) = tau0 + c x: slope energy S = c^2 (L12)."""
        return cls.from_profile(AnalyticProfile(offset=tau0, slope=c), name="ramp")

    @classmethod
    def sine(cls) -> Scene1D:
        """tau(x) = 0.5 + 0.2 sin(2 pi x) + 0.05 sin(6 pi x): S = pi^2 / 8 = 1.2337."""
        return cls.from_profile(AnalyticProfile(offset=0.5, amp=(0.2, 0.05), omega=(2 * np.pi, 6 * np.pi),
                                                phase=(0.0, 0.0)), name="sine")

    @classmethod
    def step(cls, h: float = 0.5, x0: float = 0.325, tau0: float = 0.25) -> Scene1D:
        """tau(x) = tau0 + h 1[x >= x0]: a single depth edge (L14 does not hold there)."""
        return cls.from_profile(AnalyticProfile(offset=tau0, edges=(x0,), heights=(h,)), name="step")

    @classmethod
    def from_samples(cls, values: Array, name: str = "samples") -> Scene1D:
        """A profile sampled at the centres of ``len(values)`` equal cells, linearly
        interpolated (constant beyond the first and last centres)."""
        v = np.asarray(values, dtype=float)
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
            raise ValueError(f"values must be a finite 1-D array of >= 2 samples, got shape {v.shape}")
        xc = (np.arange(v.size) + 0.5) / v.size
        return cls(lambda x: np.interp(x, xc, v), name=name)

    # -- transformations (used by the invariance tests) ------------------------------------
    def scaled(self, a: float = 1.0, offset: float = 0.0) -> Scene1D:
        """The scene with tau -> a tau + offset (a time rescaling and a constant delay)."""
        name = f"{self.name}*{a:g}+{offset:g}"
        if self.profile is not None:
            return Scene1D.from_profile(self.profile.scaled(a, offset), self.alpha, name)
        tau, dtau = self.tau, self.dtau
        return Scene1D(lambda x: a * tau(x) + offset, self.alpha,
                       None if dtau is None else (lambda x: a * dtau(x)),
                       self.breakpoints, name)

    def mirrored(self) -> Scene1D:
        """The scene under x -> 1 - x."""
        tau, alpha, dtau = self.tau, self.alpha, self.dtau
        mirrored_alpha = None if alpha is None else (lambda x: alpha(1.0 - np.asarray(x, dtype=float)))
        if self.profile is not None:
            return Scene1D.from_profile(self.profile.mirrored(), mirrored_alpha, f"{self.name}-mirrored")
        return Scene1D(lambda x: tau(1.0 - np.asarray(x, dtype=float)),
                       mirrored_alpha,
                       None if dtau is None else (lambda x: -dtau(1.0 - np.asarray(x, dtype=float))),
                       tuple(sorted(1.0 - b for b in self.breakpoints)), f"{self.name}-mirrored")

    def check_window(self, sigma_t: float, t_window: tuple[float, float], fine: int = 4096) -> None:
        """Raise unless tau stays >= 5 sigma_t inside the timing window (no truncated pulse).

        tau's range on ``fine`` cell centres is computed once per scene and cached."""
        if ("range", fine) not in self._tables:
            tau = self.tau((np.arange(fine) + 0.5) / fine)
            self._tables["range", fine] = (float(np.min(tau)), float(np.max(tau)))
        _check_inside(self._tables["range", fine], sigma_t, t_window)

    def table(self, fine: int) -> _MomentTable:
        """The cumulative moment table for ``fine`` quadrature nodes (cached)."""
        if fine not in self._tables:
            self._tables[fine] = _MomentTable(self, fine)
        return self._tables[fine]


def _check_inside(tau_range: tuple[float, float], sigma_t: float, t_window: tuple[float, float]) -> None:
    lo, hi = tau_range
    t0, t1 = t_window
    if lo - 5 * sigma_t < t0 or hi + 5 * sigma_t > t1:
        raise ValueError(
            f"the scene's delays [{lo:.4g}, {hi:.4g}] must stay at least 5*sigma_t = "
            f"{5 * sigma_t:.3g} inside t_window=({t0:g}, {t1:g}) so the pulse is not truncated")


class _MomentTable:
    """Cumulative integrals of 1, alpha, alpha tau, alpha tau^2, tau, tau^2 on [0, x] (only 1,
    tau, tau^2 for uniform flux).

    tau is centred on a reference value, and the running sums are compensated (double-double:
    a float64 sum plus the exact rounding error of every addition), so the difference of two
    cumulative values keeps full relative precision even for a tiny pixel deep in the field of
    view: pixel variances ~1e-12 survive next to sums ~0.1. This is portable (no long double).
    ``increments(e)`` returns the integrals between consecutive points e, exact to quadrature
    precision: whole panels come from the running sums, partial panels from their own 4-point rule.
    """

    def __init__(self, scene: Scene1D, fine: int) -> None:
        self.scene = scene
        n_panels = max(1, math.ceil(fine / 4))
        edges = np.union1d(np.linspace(0.0, 1.0, n_panels + 1), np.asarray(scene.breakpoints, float))
        self.edges = edges
        self.tau_ref = float(np.mean(scene.tau((edges[:-1] + edges[1:]) / 2)))
        self.hi, self.lo = _compensated_cumsum(self._panel_integrals(edges[:-1], edges[1:]))
        self.alpha_row = 0 if scene.alpha is None else 1  # the row holding int alpha
        self.total_alpha = float(self.hi[self.alpha_row, -1] + self.lo[self.alpha_row, -1])
        if not self.total_alpha > 0:
            raise ValueError("alpha must be positive somewhere in the field of view")

    def _panel_integrals(self, a: Array, b: Array) -> Array:
        half = (b - a) / 2
        x = (a + b)[:, None] / 2 + half[:, None] * _GL_X  # (P, 4)
        tau = self.scene.tau(x) - self.tau_ref
        one = 2.0 * half  # int 1 over [a, b]; every rule below is half * (f @ GL weights)
        t1, t2 = half * (tau @ _GL_W), half * ((tau * tau) @ _GL_W)
        if self.scene.alpha is None:  # uniform flux: the alpha-weighted moments are the plain ones
            return np.stack([one, t1, t2])
        alpha = np.asarray(self.scene.alpha(x), float)
        if np.any(alpha < 0) or not np.all(np.isfinite(alpha)):
            raise ValueError("alpha must be finite and non-negative")
        return np.stack([one, half * (alpha @ _GL_W), half * ((alpha * tau) @ _GL_W),
                         half * ((alpha * tau * tau) @ _GL_W), t1, t2])

    def increments(self, e: Array) -> Array:
        """Integrals over [e_i, e_{i+1}] for increasing points e in [0, 1]: (6, len(e) - 1), or
        (3, len(e) - 1) for uniform flux (1, tau, tau^2: the alpha-weighted rows coincide)."""
        e = np.asarray(e, dtype=float)
        p = np.clip(np.searchsorted(self.edges, e, side="right") - 1, 0, self.edges.size - 2)
        partial = self._panel_integrals(self.edges[p], e)  # [panel start, e]
        return (np.diff(self.hi[:, p], axis=1) + np.diff(self.lo[:, p], axis=1)
                + np.diff(partial, axis=1))

    def alpha_cdf(self, x: Array) -> Array:
        """F(x) = int_0^x alpha / int_0^1 alpha, exact at panel edges, linear between them."""
        cum = self.hi[self.alpha_row] + self.lo[self.alpha_row]
        return np.interp(x, self.edges, cum / self.total_alpha)

    def alpha_quantile(self, u: Array) -> Array:
        """Inverse of :meth:`alpha_cdf` (piecewise-linear within a panel)."""
        cum = self.hi[self.alpha_row] + self.lo[self.alpha_row]
        return np.interp(u, cum / self.total_alpha, self.edges)


def _compensated_cumsum(x: Array) -> tuple[Array, Array]:
    """Running sums of the rows of x, from 0, as hi + lo (Knuth's TwoSum on every addition).

    ``np.cumsum`` accumulates sequentially, hi_k = fl(hi_{k-1} + x_k), so the rounding error
    of each step is recovered exactly and summed into lo.
    """
    hi = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=hi[:, 1:])
    prev, s = hi[:, :-1], hi[:, 1:]
    bb = s - prev
    err = (prev - (s - bb)) + (x - bb)
    lo = np.zeros_like(hi)
    np.cumsum(err, axis=1, out=lo[:, 1:])
    return hi, lo


@dataclass(frozen=True)
class PixelMoments:
    """What the theory and the metric need from a scene at N pixels (shape ``shape``).

    Attributes
    ----------
    area : float
        |Omega_n| = 1/N (1-D) or 1/N^2 (2-D).
    mass : ndarray
        int_{Omega_n} alpha / int alpha: the share of alpha0 that pixel n receives (L4).
    mu : ndarray
        alpha-weighted mean of tau over Omega_n (L10): the mean of the ML estimate.
    b : ndarray
        alpha-weighted variance of tau over Omega_n (L10): the footprint's delay spread.
    mean : ndarray
        Unweighted mean of tau over Omega_n (for the metric L8).
    sqdev : ndarray
        int_{Omega_n} (tau - mean_n)^2 dx.
    """

    shape: tuple[int, ...]
    area: float
    mass: Array
    mu: Array
    b: Array
    mean: Array
    sqdev: Array

    @property
    def bias(self) -> float:
        """The bias term of L9: sum_n int_{Omega_n} (tau - mu_n)^2 dx."""
        return float(np.sum(self.sqdev + self.area * (self.mean - self.mu) ** 2))


def pixel_moments(scene: Scene1D | Scene2D, n: int | tuple[int, int],
                  fine: int | None = None) -> PixelMoments:
    """Pixel moments of ``scene`` for ``n`` pixels (per side in 2-D, or (rows, cols) there).

    A 1-D scene with an :class:`AnalyticProfile` and uniform flux gets them in closed form
    unless ``fine`` is given; otherwise they are integrated on ``fine`` quadrature nodes.
    """
    n = check_grid(n, scene.dims)
    if isinstance(n, tuple):
        return _pixel_moments_2d(scene, n, check_fine(fine, max(n), 2))
    if has_closed_form(scene) and fine is None:
        mean, var = scene.profile.pixel_moments([n])
        area = 1.0 / n
        return PixelMoments((n,), area, np.full(n, area), mean, var, mean, area * var)
    fine = check_fine(fine, n, scene.dims)
    if scene.dims == 2:
        return _pixel_moments_2d(scene, (n, n), fine)
    tab = scene.table(fine)
    rows = tab.increments(np.arange(n + 1) / n)  # each row (n,)
    if scene.alpha is None:
        one, u1, u2 = rows
        a0, a1, a2 = one, u1, u2
    else:
        one, a0, a1, a2, u1, u2 = rows
    with np.errstate(invalid="ignore", divide="ignore"):
        mu_c = np.where(a0 > 0, a1 / a0, u1 / one)  # centred on tab.tau_ref
        b = np.where(a0 > 0, a2 / a0 - mu_c**2, 0.0)
    mean_c = u1 / one
    sqdev = u2 - u1**2 / one
    mass = np.full(n, 1.0 / n) if scene.alpha is None else a0 / tab.total_alpha
    return PixelMoments((n,), 1.0 / n, mass, mu_c + tab.tau_ref,
                        np.maximum(b, 0.0), mean_c + tab.tau_ref, np.maximum(sqdev, 0.0))


def has_closed_form(scene: Scene1D | Scene2D) -> bool:
    """True for a 1-D scene with an :class:`AnalyticProfile` and uniform flux."""
    return scene.dims == 1 and scene.profile is not None and scene.alpha is None


@dataclass(frozen=True, eq=False)
class Scene2D:
    """A 2-D scene on the unit square, uniform flux, pixels counted per side (N x N).

    ``tau(x, y)`` takes the horizontal coordinate x (columns) and the vertical y (rows);
    pixel arrays are indexed ``[row, col]``.
    """

    tau: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], tuple[Array, Array]] | None = None
    name: str = "custom2d"
    _ranges: dict = field(default_factory=dict, repr=False, compare=False)

    dims = 2

    @classmethod
    def plane(cls, tau0: float = 0.5, cx: float = 0.3, cy: float = 0.2) -> Scene2D:
        """tau = tau0 + cx (x - 1/2) + cy (y - 1/2): S2 = cx^2 + cy^2."""
        def tau(x, y):
            return tau0 + cx * (np.asarray(x, float) - 0.5) + cy * (np.asarray(y, float) - 0.5)

        return cls(tau, lambda x, y: (np.full_like(np.asarray(x, float), cx),
                                      np.full_like(np.asarray(y, float), cy)), name="plane")

    @classmethod
    def plane_ripple(cls, tau0: float = 0.5, cx: float = 0.3, cy: float = 0.2,
                     amp: float = 0.03) -> Scene2D:
        """A tilted plane plus a ripple amp sin(2 pi x) sin(2 pi y) (our 2-D test scene)."""
        def tau(x, y):
            x, y = np.asarray(x, float), np.asarray(y, float)
            return (tau0 + cx * (x - 0.5) + cy * (y - 0.5)
                    + amp * np.sin(2 * np.pi * x) * np.sin(2 * np.pi * y))

        def grad(x, y):
            x, y = np.asarray(x, float), np.asarray(y, float)
            k = 2 * np.pi * amp
            return (cx + k * np.cos(2 * np.pi * x) * np.sin(2 * np.pi * y),
                    cy + k * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y))

        return cls(tau, grad, name="plane+ripple")

    @classmethod
    def from_depth_map(cls, depth: Array, *, unit: str = "m", interp: str = "linear",
                       name: str = "depth-map") -> Scene2D:
        """A scene from an (H, W) depth map, bilinearly interpolated between pixel centres.

        ``unit="m"`` converts depth to round-trip delay in seconds (tau = 2 d / c_light);
        ``unit="s"`` takes the map as delays already. The map's aspect ratio is normalised to
        the unit square.
        """
        from scipy.interpolate import RegularGridInterpolator

        d = np.asarray(depth, dtype=float)
        if d.ndim != 2 or min(d.shape) < 2 or not np.all(np.isfinite(d)):
            raise ValueError(f"depth must be a finite (H, W) array with H, W >= 2, got shape {d.shape}")
        if unit not in ("m", "s"):
            raise ValueError(f"unit must be 'm' or 's', got {unit!r}")
        if interp not in ("linear", "nearest"):
            raise ValueError(f"interp must be 'linear' or 'nearest', got {interp!r}")
        tau_map = 2.0 * d / C_LIGHT if unit == "m" else d
        h, w = d.shape
        yc, xc = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
        f = RegularGridInterpolator((yc, xc), tau_map, method=interp, bounds_error=False, fill_value=None)

        def tau(x, y):
            x, y = np.broadcast_arrays(np.clip(np.asarray(x, float), xc[0], xc[-1]),
                                       np.clip(np.asarray(y, float), yc[0], yc[-1]))
            return f(np.stack([y.ravel(), x.ravel()], axis=-1)).reshape(x.shape)

        return cls(tau, name=name)

    def check_window(self, sigma_t: float, t_window: tuple[float, float], fine: int = 256) -> None:
        """Raise unless tau stays >= 5 sigma_t inside the timing window (range cached per scene)."""
        if fine not in self._ranges:
            g = (np.arange(fine) + 0.5) / fine
            tau = self.tau(g[None, :], g[:, None])
            self._ranges[fine] = (float(np.min(tau)), float(np.max(tau)))
        _check_inside(self._ranges[fine], sigma_t, t_window)


C_LIGHT = 299_792_458.0  # m/s


def _pixel_moments_2d(scene: Scene2D, n: tuple[int, int], fine: int) -> PixelMoments:
    """Pixel moments of an (rows, cols) = n grid of rectangular pixels by Gauss-Legendre."""
    ny, nx = n

    def axis(k: int) -> tuple[Array, Array, int]:
        p = max(1, math.ceil(fine / (4 * k)))  # panels per pixel on this axis
        edges = np.linspace(0.0, 1.0, k * p + 1)
        half = np.diff(edges)[:, None] / 2
        return (((edges[:-1] + edges[1:])[:, None] / 2 + half * _GL_X).ravel(),  # (k p 4,)
                (half * _GL_W).ravel(), 4 * p)

    (yn, yw, ky), (xn, xw, kx) = axis(ny), axis(nx)
    tau = scene.tau(xn[None, :], yn[:, None]).reshape(ny, ky, nx, kx)  # (rows=y, cols=x)
    ww = yw.reshape(ny, ky)[:, :, None, None] * xw.reshape(nx, kx)[None, None, :, :]
    area = 1.0 / (ny * nx)
    mean = np.einsum("ikjl,ikjl->ij", tau, ww) / area
    sqdev = np.einsum("ikjl,ikjl->ij", (tau - mean[:, None, :, None]) ** 2, ww)
    return PixelMoments((ny, nx), area, np.full((ny, nx), area), mean, sqdev / area, mean, sqdev)


def check_grid(n: object, dims: int) -> int | tuple[int, int]:
    """A pixel count N (per side in 2-D), or in 2-D a (rows, cols) pair of rectangular pixels."""
    if dims == 2 and isinstance(n, (tuple, list)):
        if len(n) != 2:
            raise ValueError(f"n must be N or a (rows, cols) pair, got {n!r}")
        return check_pixels(n[0], "n (rows)"), check_pixels(n[1], "n (cols)")
    return check_pixels(n)


def slope_energy(scene: Scene1D | Scene2D, fine: int = 2**14, *,
                 directional: bool = False) -> float | tuple[float, float]:
    """The slope energy S = int tau'(x)^2 dx (L12), or S2 = int |grad tau|^2 in 2-D (L16).

    With ``directional=True`` a 2-D scene gives (S_y, S_x) = (int (d tau/dy)^2, int (d tau/dx)^2),
    whose sum is S2: what rectangular pixels need (L16). Jumps contribute nothing here (only
    the smooth part is counted) and a warning says that the closed form does not apply to such
    a scene; use :func:`mse_exact` there.
    """
    if scene.dims == 2:
        m = max(64, int(math.isqrt(fine)))
        g, w = _gl_grid(m)
        x, y = g[None, :], g[:, None]
        if scene.grad is not None:
            gx, gy = scene.grad(x, y)
        else:
            h = 1e-6
            gx = (scene.tau(x + h, y) - scene.tau(x - h, y)) / (2 * h)
            gy = (scene.tau(x, y + h) - scene.tau(x, y - h)) / (2 * h)
        wq = w[None, :] * w[:, None]
        s_y, s_x = float(np.sum(np.asarray(gy) ** 2 * wq)), float(np.sum(np.asarray(gx) ** 2 * wq))
        return (s_y, s_x) if directional else s_y + s_x
    if scene.breakpoints:
        warnings.warn(f"scene {scene.name!r} has depth discontinuities at {scene.breakpoints}: "
                      "the slope energy counts only its smooth part and the closed form (L14) "
                      "does not hold there; use mse_exact", UserWarning, stacklevel=2)
    edges = np.union1d(np.linspace(0.0, 1.0, max(1, fine // 4) + 1), np.asarray(scene.breakpoints))
    half = np.diff(edges)[:, None] / 2
    x = (edges[:-1] + edges[1:])[:, None] / 2 + half * _GL_X
    w = half * _GL_W
    if scene.dtau is not None:
        d = scene.dtau(x)
    else:
        h = 1e-6
        d = (scene.tau(x + h) - scene.tau(x - h)) / (2 * h)
    return float(np.sum(np.asarray(d) ** 2 * w))


def _gl_grid(m: int) -> tuple[Array, Array]:
    """m/4 panels of 4 Gauss-Legendre nodes on [0, 1]: nodes and weights."""
    edges = np.linspace(0.0, 1.0, max(1, m // 4) + 1)
    half = np.diff(edges)[:, None] / 2
    return (((edges[:-1] + edges[1:])[:, None] / 2 + half * _GL_X).ravel(), (half * _GL_W).ravel())

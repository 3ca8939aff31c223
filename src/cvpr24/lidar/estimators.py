"""Per-pixel maximum-likelihood time-delay estimators (L6, L7) and the empty-pixel rules.

Timestamps (:class:`~cvpr24.lidar.model.PhotonData`):

- ``"mean"``: the sample mean, which *is* the ML estimate for a Gaussian pulse without
  background (L6 with w = 0).
- ``"ml"``: numeric ML of L6, tau_hat = argmax sum_k log[(1-w) s(T_k - tau) + w/T_r] with a
  known background fraction w (0 by default), by safeguarded Newton from the log-matched-filter
  peak. With w = 0 it agrees with ``"mean"`` to rounding.
- ``"em"``: EM on the Gaussian + uniform mixture, w estimated per pixel (or fixed) ([X]).
- ``"lmf"``: the peak of the log-matched filter on a sub-bin grid.

Histograms (``(..., B)`` counts with ``bin_edges``): ``"ml"`` maximises L7,
sum_b h_b log p_b(tau) with p_b = Phi((e_{b+1} - tau)/sigma_t) - Phi((e_b - tau)/sigma_t)
(+ w/B), by Newton from the log-matched-filter peak; ``"lmf"`` is that peak; ``"mean"`` the
centroid of bin centres (adds Delta^2/12 per photon, Sheppard); ``"em"`` weighted EM on bin
centres. The histogram path is batched in torch (chunks of pixels), which is what makes an
Edinburgh-sized 192 x 128 x 1024 cube take seconds.

Empty pixels (K_n = 0) have no ML estimate: ``empty="nearest"`` (default) copies the nearest
non-empty pixel (index distance in 1-D, Chebyshev distance in 2-D), ``"nan"`` leaves NaN,
``"global_mean"`` uses the mean of all photons of that acquisition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr

from cvpr24.lidar.model import PhotonData, uniform_bin_edges
from cvpr24.lidar.theory import check_positive, check_sigma_t, pixel_variance

Array = np.ndarray
METHODS = ("mean", "ml", "em", "lmf")
EMPTY_RULES = ("nearest", "nan", "global_mean")
_SQRT2PI = math.sqrt(2 * math.pi)


@dataclass(frozen=True)
class EstimateInfo:
    """Side results of :func:`estimate_delay`.

    ``counts`` per pixel (same shape as the estimate), ``n_empty`` pixels with no photon
    (filled by the ``empty`` rule), ``w`` the background fraction used or estimated per pixel
    (``None`` for methods without background), ``iterations`` of the numeric solver, and
    ``variance`` the predicted error variance of each pixel's estimate given its count and
    ``p_lock`` the probability that it locked onto background instead (L22; NaN for empty
    pixels; ``"ml"`` and ``"em"`` only).
    """

    counts: Array
    n_empty: int
    w: Array | None = None
    iterations: int = 0
    variance: Array | None = None
    p_lock: Array | None = None


def estimate_delay(data: PhotonData | Array, *, sigma_t: float, method: str = "ml",
                   background: float | str | None = "auto", empty: str = "nearest",
                   bin_edges: Array | None = None, subdiv: int = 8, dims: int | None = None,
                   chunk: int = 8192) -> tuple[Array, EstimateInfo]:
    """Estimate the delay tau_n of every pixel (L6; histograms L7).

    Parameters
    ----------
    data : PhotonData or ndarray
        Timestamps, or histogram counts of shape (..., B) (then ``bin_edges`` is required,
        uniform bins).
    sigma_t : float
        Gaussian pulse std, in the unit of the timestamps.
    method : {"ml", "mean", "em", "lmf"}
    background : float, "auto" or None
        The background fraction w in [0, 1) of each pixel's photons. ``"auto"`` (default)
        estimates it per pixel from the photons outside +-5 sigma_t of the log-matched-filter
        peak, shrunk toward the whole array's rate (:func:`background_rates`); ``"em"`` then
        starts from it and re-estimates w. A float fixes w for every pixel; ``None`` means
        w = 0 for ``"ml"`` (with histograms, bins beyond +-6 sigma_t of the start still act as
        a gate) and "estimate it" for ``"em"``.
    empty : {"nearest", "nan", "global_mean"}
        Rule for pixels without photons.
    bin_edges : ndarray, optional
        Histogram bin edges (B + 1,).
    subdiv : int
        Log-matched-filter grid points per bin.
    dims : int, optional
        Histograms only: how many axes before B are the pixel grid (1 or 2) for the empty-pixel
        rule; axes before those are repeats. Default: 2 for (H, W, B), 1 for (N, B).

    Returns
    -------
    tau_hat : ndarray
        Shape ``data.counts.shape`` (timestamps) or ``data.shape[:-1]`` (histograms).
    info : EstimateInfo
    """
    sigma_t = check_positive(sigma_t, "sigma_t")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    if background is not None and background != "auto":
        try:
            background = float(background)
        except (TypeError, ValueError):
            raise ValueError(f"background must be 'auto', None or a fraction in [0, 1), "
                             f"got {background!r}") from None
        if not 0.0 <= background < 1.0:
            raise ValueError(f"background (the fraction w) must be in [0, 1), got {background!r}")
    if isinstance(data, PhotonData):
        check_sigma_t(sigma_t, data.t_window[1] - data.t_window[0])
        return _estimate_timestamps(data, sigma_t, method, background, empty, subdiv)
    if bin_edges is None:
        raise ValueError("bin_edges is required when data is a histogram array")
    hist = np.asarray(data)
    dims = min(hist.ndim - 1, 2) if dims is None else dims
    if dims not in (1, 2) or dims > hist.ndim - 1:
        raise ValueError(f"dims must be 1 or 2 and leave the bin axis, got {dims!r} for shape {hist.shape}")
    return _estimate_histograms(hist, np.asarray(bin_edges, float), sigma_t, method,
                                background, empty, subdiv, chunk, dims)


# ----------------------------------------------------------------------------- timestamps
def _estimate_timestamps(data: PhotonData, sigma_t: float, method: str, w: float | str | None,
                         empty: str, subdiv: int) -> tuple[Array, EstimateInfo]:
    pix, t = data.pix, data.t
    size = data.n_pixels * data.n_repeats
    k = np.bincount(pix, minlength=size).astype(float)
    has = k > 0
    mean = np.bincount(pix, weights=t, minlength=size) / np.where(has, k, 1.0)
    iters, w_out = 0, None
    t_range = data.t_window[1] - data.t_window[0]
    if method == "mean":
        tau = mean
    else:
        start = _lmf_timestamps(pix, t, size, data.t_window, sigma_t,
                                subdiv if method == "lmf" else 1)
        if method == "lmf":
            tau = start
        else:
            w_pix = _initial_w(w, method, size, lambda: _gate_counts_timestamps(
                pix, t, start, size, sigma_t, data.t_window), k, t_range)
            if method == "ml":
                tau, iters = _newton_timestamps(pix, t, start, k, sigma_t, w_pix, t_range)
                w_out = w_pix
            else:
                tau, w_out, iters = _em_timestamps(pix, t, start, k, sigma_t, w_pix,
                                                   not isinstance(w, float), t_range)
    tau = np.where(has, tau, np.nan)
    grid = data.counts.shape
    reps = pix // data.n_pixels
    tot = np.bincount(reps, weights=t, minlength=data.n_repeats)
    global_mean = tot / np.maximum(np.bincount(reps, minlength=data.n_repeats), 1)
    filled = fill_empty(tau.reshape(grid), ~has.reshape(grid), empty, dims=len(data.shape),
                        global_mean=global_mean)
    return filled, _info(k, has, w_out, iters, grid, sigma_t, data.t_window, 0.0)


def _lmf_timestamps(pix: Array, t: Array, size: int, t_window: tuple[float, float],
                    sigma_t: float, subdiv: int, max_cells: int = 2**24) -> Array:
    """Log-matched-filter peaks of every pixel from sigma_t/4 histograms, built a block of
    pixels at a time so memory stays O(photons + max_cells)."""
    edges = uniform_bin_edges(t_window, sigma_t / 4)
    n_bins = edges.size - 1
    order = np.argsort(pix, kind="stable")
    sp, st = pix[order], t[order]
    bins = np.searchsorted(edges, st, "right") - 1
    block = max(1, max_cells // n_bins)
    out = np.empty(size)
    for a in range(0, size, block):
        lo, hi = np.searchsorted(sp, [a, a + block])
        hist = np.bincount((sp[lo:hi] - a) * n_bins + bins[lo:hi],
                           minlength=min(block, size - a) * n_bins).reshape(-1, n_bins)
        out[a: a + block] = _lmf_numpy(hist, edges, sigma_t, subdiv)
    return out


def _responsibility(u: Array, w: Array | float, sigma_t: float, t_range: float) -> Array:
    """r = (1-w) s(u) / ((1-w) s(u) + w/T_r): the posterior that a photon is signal."""
    sig = (1 - w) * np.exp(-0.5 * (u / sigma_t) ** 2) / (_SQRT2PI * sigma_t)
    return sig / np.maximum(sig + w / t_range, 1e-300)  # 0, not NaN, where both underflow


def _newton_timestamps(pix: Array, t: Array, start: Array, k: Array, sigma_t: float, w: Array,
                       t_range: float, max_iter: int = 50) -> tuple[Array, int]:
    """Safeguarded Newton on the L6 log-likelihood of every pixel at once (w per pixel)."""
    tau = start.copy()
    size = tau.size
    mixture = bool(np.any(w > 0))
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        u = t - tau[pix]
        r = _responsibility(u, w[pix], sigma_t, t_range) if mixture else np.ones_like(u)
        score = np.bincount(pix, weights=r * u, minlength=size) / sigma_t**2
        hess = np.bincount(pix, weights=r * (1 - r) * u**2 / sigma_t**2 - r, minlength=size) / sigma_t**2
        concave = hess < 0
        step = np.where(concave, -score / np.where(concave, hess, -1.0), np.sign(score) * sigma_t / 4)
        if mixture:  # the mixture likelihood is not concave: keep each step local
            step = np.clip(step, -sigma_t / 2, sigma_t / 2)
        step = np.where(k > 0, step, 0.0)
        tau += step
        if np.max(np.abs(step), initial=0.0) < 1e-12 * sigma_t:
            break
    return tau, it


def _em_timestamps(pix: Array, t: Array, start: Array, k: Array, sigma_t: float, w: Array,
                   learn_w: bool, t_range: float, max_iter: int = 500) -> tuple[Array, Array, int]:
    """EM for the Gaussian + uniform mixture (known sigma_t) from w per pixel, re-estimated
    when ``learn_w``."""
    size = start.size
    tau, wv = start.copy(), w.copy()
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        r = _responsibility(t - tau[pix], wv[pix], sigma_t, t_range)
        rs = np.bincount(pix, weights=r, minlength=size)
        new = np.where(rs > 0, np.bincount(pix, weights=r * t, minlength=size) / np.maximum(rs, 1e-300), tau)
        if learn_w:
            wv = np.where(k > 0, np.clip(1.0 - rs / np.maximum(k, 1.0), 0.0, 1.0 - 1e-9), wv)
        delta = np.max(np.abs(new - tau), initial=0.0)
        tau = new
        if delta < 1e-10 * sigma_t:
            break
    return tau, wv, it


# ------------------------------------------------------------------------------ background
GATE = 5.0  # background is counted beyond +-GATE sigma_t of the peak (signal share 6e-7)
W_MAX = 0.99  # the largest background fraction handed to the estimators


def background_rates(counts: Array, exposure: Array) -> Array:
    """Per-pixel background rates, each shrunk toward the whole array's rate (L20, [X]).

    ``counts`` photons were seen in ``exposure`` (time, or bins) outside each pixel's signal
    gate. The prior is a Gamma law fitted by moments across pixels: mean r = sum c / sum e,
    variance = var(c/e) - mean(r/e) (what is left of the spread after Poisson noise). The
    posterior mean (c + a) / (e + a/r), a = r^2 / variance, pulls a pixel with few counts
    toward r; when the spread is all Poisson noise (variance <= 0) every pixel gets r.
    """
    c = np.asarray(counts, float)
    e = np.maximum(np.asarray(exposure, float), 1e-300)
    rate = float(c.sum() / e.sum())
    if rate <= 0 or c.size < 2:
        return np.full(c.shape, rate)
    between = float(np.var(c / e) - np.mean(rate / e))
    if between <= 0:
        return np.full(c.shape, rate)
    a = rate**2 / between
    return (c + a) / (e + a / rate)


def background_fraction(rate: Array, t_range: float, k: Array) -> Array:
    """w per pixel: the expected background count rate * T_r over the photons seen, <= W_MAX."""
    expected = np.asarray(rate, float) * t_range
    return np.clip(expected / np.maximum(np.asarray(k, float), np.maximum(expected, 1e-300)), 0.0, W_MAX)


def _initial_w(w, method: str, size: int, gate_counts, k: Array, t_range: float) -> Array:
    """The per-pixel w the solvers start from (see ``background`` in :func:`estimate_delay`)."""
    if isinstance(w, float):
        return np.full(size, w)
    if w is None:
        return np.full(size, 0.0 if method == "ml" else 0.5)
    c_out, exposure = gate_counts()
    return background_fraction(background_rates(c_out, exposure), t_range, k)


def _gate_counts_timestamps(pix: Array, t: Array, tau: Array, size: int, sigma_t: float,
                            t_window: tuple[float, float]) -> tuple[Array, Array]:
    """Photons beyond +-GATE sigma_t of tau per pixel, and the time outside the gate."""
    outside = np.abs(t - tau[pix]) > GATE * sigma_t
    lo = np.clip(tau - GATE * sigma_t, *t_window)
    hi = np.clip(tau + GATE * sigma_t, *t_window)
    return (np.bincount(pix, weights=outside, minlength=size),
            (t_window[1] - t_window[0]) - (hi - lo))


def gate_counts_histogram(flat: Array, t0: float, bin_width: float, tau: Array, sigma_t: float,
                          gate: float = GATE, chunk: int = 8192,
                          tau_hi: Array | None = None) -> tuple[Array, Array]:
    """Counts in the bins whose centres lie beyond +-gate sigma_t of tau, and those bins' time.

    ``flat`` is (P, B); the sums use a running total per chunk of pixels (bounded memory).
    With ``tau_hi`` the gate is [tau - gate sigma_t, tau_hi + gate sigma_t].
    """
    n_bins = flat.shape[1]
    tau_hi = tau if tau_hi is None else tau_hi
    lo = np.clip(np.ceil((tau - gate * sigma_t - t0) / bin_width - 0.5), 0, n_bins).astype(np.int64)
    hi = np.clip(np.floor((tau_hi + gate * sigma_t - t0) / bin_width - 0.5) + 1, 0, n_bins).astype(np.int64)
    hi = np.maximum(hi, lo)
    inside = np.empty(flat.shape[0])
    for s in range(0, flat.shape[0], chunk):
        cs = np.zeros((min(chunk, flat.shape[0] - s), n_bins + 1))
        np.cumsum(flat[s: s + chunk], axis=1, out=cs[:, 1:])
        rows = np.arange(cs.shape[0])
        inside[s: s + chunk] = cs[rows, hi[s: s + chunk]] - cs[rows, lo[s: s + chunk]]
    return flat.sum(axis=1) - inside, bin_width * (n_bins - (hi - lo))


# ------------------------------------------------------------------------------ empty pixels
def fill_empty(tau: Array, empty_mask: Array, rule: str, *, dims: int,
               global_mean: Array | float | None = None) -> Array:
    """Fill pixels without photons by ``rule`` (see the module docstring).

    ``tau`` has shape (*grid) or (R, *grid); ``global_mean`` is one value per repeat.
    """
    if rule not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {rule!r}")
    tau = np.array(tau, dtype=float)
    if rule == "nan" or not np.any(empty_mask):
        return tau
    lead = tau.shape[: tau.ndim - dims]
    flat = tau.reshape(-1, *tau.shape[tau.ndim - dims:])
    mask = np.asarray(empty_mask).reshape(flat.shape)
    if rule == "global_mean":
        gm = np.broadcast_to(np.asarray(global_mean if global_mean is not None else np.nan, float),
                             (flat.shape[0],))
        for r in range(flat.shape[0]):
            flat[r][mask[r]] = gm[r]
        return flat.reshape(*lead, *tau.shape[tau.ndim - dims:])
    if dims == 1:
        out = _nearest_fill_1d(flat, mask)
    else:
        from scipy import ndimage

        out = flat.copy()
        for r in range(flat.shape[0]):
            if mask[r].all():
                continue
            _, (ri, ci) = ndimage.distance_transform_cdt(mask[r], metric="chessboard",
                                                         return_indices=True)
            out[r] = flat[r][ri, ci]
    return out.reshape(tau.shape)


def _nearest_fill_1d(x: Array, mask: Array) -> Array:
    """Copy each empty entry from the nearest non-empty one in its row (ties: the left)."""
    n = x.shape[-1]
    idx = np.broadcast_to(np.arange(n), x.shape)
    left = np.maximum.accumulate(np.where(~mask, idx, -1), axis=-1)
    right = np.flip(np.minimum.accumulate(np.flip(np.where(~mask, idx, n), -1), axis=-1), -1)
    use_left = (left >= 0) & ((right >= n) | (idx - left <= right - idx))
    src = np.where(use_left, left, np.where(right < n, right, -1))
    filled = np.take_along_axis(x, np.clip(src, 0, n - 1), axis=-1)
    return np.where(mask & (src >= 0), filled, x)


# ----------------------------------------------------------------------------- histograms
def _check_histogram(hist: Array, edges: Array) -> tuple[float, float]:
    if edges.ndim != 1 or edges.size != hist.shape[-1] + 1:
        raise ValueError(f"bin_edges must have B + 1 = {hist.shape[-1] + 1} entries, got {edges.shape}")
    widths = np.diff(edges)
    if not np.all(widths > 0) or np.ptp(widths) > 1e-6 * widths.mean():
        raise ValueError("bin_edges must be increasing and uniform (one TDC bin width)")
    if not np.all(np.isfinite(hist)) or np.any(hist < 0):
        raise ValueError("histogram counts must be finite and non-negative (no NaN)")
    return float(edges[0]), float(widths.mean())


def _estimate_histograms(hist: Array, edges: Array, sigma_t: float, method: str, w: float | str | None,
                         empty: str, subdiv: int, chunk: int, dims: int) -> tuple[Array, EstimateInfo]:
    if hist.ndim < 2:
        raise ValueError(f"a histogram array must be (..., B), got shape {hist.shape}")
    t0, delta = _check_histogram(hist, edges)
    check_sigma_t(sigma_t, delta * hist.shape[-1], delta)
    grid = hist.shape[:-1]
    flat = hist.reshape(-1, hist.shape[-1]).astype(float)
    k = flat.sum(axis=1)
    has = k > 0
    centres = t0 + delta * (np.arange(flat.shape[1]) + 0.5)
    iters, w_out = 0, None
    if method == "mean":
        tau = flat @ centres / np.where(has, k, 1.0)
    else:  # ML and EM only need a start within a bin: the integer-bin LMF is 'subdiv' x cheaper
        tau = _lmf_numpy(flat, edges, sigma_t, subdiv if method == "lmf" else 1, chunk)
        if method != "lmf":
            t_range = delta * flat.shape[1]
            w_pix = _initial_w(w, method, tau.size, lambda: gate_counts_histogram(
                flat, t0, delta, tau, sigma_t, chunk=chunk), k, t_range)
        if method == "ml":
            tau, iters = newton_histogram(flat, t0, delta, sigma_t, tau, w_pix, chunk=chunk)
            w_out = w_pix
        elif method == "em":
            tau, w_out, iters = em_histogram(flat, t0, delta, sigma_t, tau, w_pix,
                                             learn_w=not isinstance(w, float), chunk=chunk)
    tau = np.where(has, tau, np.nan)
    global_mean = float(flat.sum(axis=0) @ centres / max(k.sum(), 1.0))
    filled = fill_empty(tau.reshape(grid), ~has.reshape(grid), empty, dims=dims,
                        global_mean=global_mean)
    return filled, _info(k, has, w_out, iters, grid, sigma_t, (t0, t0 + delta * flat.shape[1]), delta)


def _info(k: Array, has: Array, w: Array | None, iters: int, grid: tuple[int, ...],
          sigma_t: float, t_window: tuple[float, float], bin_width: float) -> EstimateInfo:
    if w is None:
        return EstimateInfo(k.reshape(grid).astype(int), int(np.sum(~has)), None, iters)
    var, p_lock = pixel_variance(k, w, sigma_t, t_window, bin_width)
    return EstimateInfo(k.reshape(grid).astype(int), int(np.sum(~has)), w.reshape(grid), iters,
                        var.reshape(grid), p_lock.reshape(grid))


def em_histogram(flat: Array, t0: float, bin_width: float, sigma_t: float, start: Array,
                 w: Array, *, learn_w: bool = True, chunk: int = 8192, max_iter: int = 500,
                 reach: float = 6.0) -> tuple[Array, Array, int]:
    """EM on bin centres weighted by counts (the binned analogue of :func:`_em_timestamps`).

    Chunked like :func:`newton_histogram`: each chunk of pixels iterates on the bins within
    ``reach`` sigma_t (+ one bin) of its start, and a pixel stops as soon as its delay moves
    less than 1e-10 sigma_t. Bins further out
    have a signal responsibility below 1e-7 of the nearest ones, so they only enter w through
    the pixel's total count k: w = 1 - (sum of responsibilities) / k.
    """
    n_bins = flat.shape[1]
    t_range = bin_width * n_bins
    half = math.ceil(reach * sigma_t / bin_width) + 1
    offs = np.arange(-half, half + 1)
    out_tau, out_w = np.empty(flat.shape[0]), np.asarray(w, float).copy()
    iters = 0
    for s in range(0, flat.shape[0], chunk):
        h, tau = flat[s: s + chunk], np.asarray(start[s: s + chunk], dtype=float).copy()
        k = h.sum(axis=1)
        idx = np.clip(((tau - t0) / bin_width).astype(np.int64), 0, n_bins - 1)[:, None] + offs
        valid = (idx >= 0) & (idx < n_bins)
        hw = np.take_along_axis(h, np.clip(idx, 0, n_bins - 1), axis=1) * valid  # (P, 2 half + 1)
        centres = t0 + bin_width * (idx + 0.5)
        wv = out_w[s: s + chunk].copy()
        act = np.flatnonzero(k > 0)  # pixels still moving
        for it in range(1, max_iter + 1):
            if act.size == 0:
                break
            c, ta, wa = centres[act], tau[act], wv[act]
            r = _responsibility(c - ta[:, None], wa[:, None], sigma_t, t_range) * hw[act]
            rs = r.sum(axis=1)
            new = np.where(rs > 0, np.sum(r * c, axis=1) / np.maximum(rs, 1e-300), ta)
            if learn_w:
                wv[act] = np.clip(1.0 - rs / k[act], 0.0, 1.0 - 1e-9)
            tau[act] = new
            iters = max(iters, it)
            act = act[np.abs(new - ta) >= 1e-10 * sigma_t]
        out_tau[s: s + chunk], out_w[s: s + chunk] = tau, wv
    return out_tau, out_w, iters


def _lmf_numpy(flat: Array, edges: Array, sigma_t: float, subdiv: int, chunk: int = 8192) -> Array:
    t0, delta = float(edges[0]), float(edges[1] - edges[0])
    out = np.empty(flat.shape[0])
    chunk = max(1, min(chunk, 2**23 // (subdiv * flat.shape[1])))  # score tensor <= 32 MB
    for s in range(0, flat.shape[0], chunk):
        h = torch.as_tensor(flat[s: s + chunk], dtype=torch.float32)
        out[s: s + chunk] = log_matched_filter(h, t0, delta, sigma_t, subdiv=subdiv).double().numpy()
    return out


def log_matched_filter(hist: torch.Tensor, t0: float, bin_width: float, sigma_t: float, *,
                       subdiv: int = 8, eps_rel: float = 1e-6) -> torch.Tensor:
    """Peak of the log-matched filter sum_b h_b log(s(t_b - tau) + eps) on a sub-bin grid.

    Parameters
    ----------
    hist : Tensor (P, B)
        Counts of P pixels in B uniform bins starting at ``t0``.
    subdiv : int
        Candidate delays per bin: tau = c_i + j bin_width / subdiv, c_i the bin centres.
    eps_rel : float
        eps = eps_rel * s(0): photons further than sqrt(2 ln(1/eps_rel)) sigma_t from tau
        count as background instead of dominating the score.

    Returns
    -------
    Tensor (P,)
        The peak delays (float64).
    """
    if hist.ndim != 2:
        raise ValueError(f"hist must be (P, B), got shape {tuple(hist.shape)}")
    half = max(1, math.ceil(math.sqrt(2 * math.log(1 / eps_rel)) * sigma_t / bin_width) + 1)
    m = torch.arange(-half, half + 1, dtype=torch.float64)
    j = torch.arange(subdiv, dtype=torch.float64)[:, None]
    u = (m[None, :] - j / subdiv) * bin_width / sigma_t  # (t_b - tau) / sigma_t
    kernel = torch.log(torch.exp(-0.5 * u**2) + eps_rel) - math.log(eps_rel)  # log(s + eps) - log eps
    score = torch.nn.functional.conv1d(hist[:, None, :], kernel[:, None, :].to(hist.dtype),
                                       padding=half)  # (P, subdiv, B)
    flat_idx = torch.argmax(score.transpose(1, 2).reshape(score.shape[0], -1), dim=1)
    i, jj = flat_idx // subdiv, flat_idx % subdiv
    return t0 + bin_width * (i.double() + 0.5 + jj.double() / subdiv)


def _binned_terms(tau: Array, edges: Array, sigma_t: float) -> tuple[Array, Array, Array]:
    """p_b, dp_b/dtau, d2p_b/dtau2 of a Gaussian pulse for consecutive bins (L7).

    ``edges`` (P, B + 1) are each pixel's bin edges; the tails and densities are evaluated once
    per edge. p_b is taken from the lower tail on both sides of the pulse, so it keeps full
    relative precision far from tau (no difference of two numbers close to 1).
    """
    a = (edges - tau) / sigma_t
    lower, upper = ndtr(a), ndtr(-a)
    phi = np.exp(-0.5 * a * a) / _SQRT2PI
    right = a[:, :-1] > 0  # the whole bin lies right of tau
    p = np.where(right, upper[:, :-1] - upper[:, 1:], lower[:, 1:] - lower[:, :-1])
    dp = (phi[:, :-1] - phi[:, 1:]) / sigma_t
    aphi = a * phi
    d2p = (aphi[:, :-1] - aphi[:, 1:]) / sigma_t**2
    return p, dp, d2p


def histogram_log_likelihood(tau: torch.Tensor, hist: torch.Tensor, bin_edges: torch.Tensor,
                             sigma_t: torch.Tensor | float, w: float = 0.0) -> torch.Tensor:
    """L7: sum_b h_b log[(1 - w) p_b(tau) + w Delta_b / T] per pixel (differentiable).

    ``tau`` (P,), ``hist`` (P, B), ``bin_edges`` (B + 1,); T is the span of the edges.
    """
    lo, hi = bin_edges[:-1], bin_edges[1:]
    a_lo = (lo[None, :] - tau[:, None]) / sigma_t
    a_hi = (hi[None, :] - tau[:, None]) / sigma_t
    ndtr = torch.special.ndtr
    p = torch.where(a_lo > 0, ndtr(-a_lo) - ndtr(-a_hi), ndtr(a_hi) - ndtr(a_lo))
    f = (1 - w) * p + w * (hi - lo)[None, :] / (bin_edges[-1] - bin_edges[0])
    return torch.sum(hist * torch.log(torch.clamp(f, min=1e-300)), dim=1)


def timestamp_log_likelihood(tau: torch.Tensor, t: torch.Tensor, sigma_t: float, w: float = 0.0,
                             t_range: float = 1.0) -> torch.Tensor:
    """L6 for one pixel: sum_k log[(1 - w) s(T_k - tau) + w / T_r] (differentiable in tau)."""
    s = torch.exp(-0.5 * ((t - tau) / sigma_t) ** 2) / (_SQRT2PI * sigma_t)
    return torch.sum(torch.log((1 - w) * s + w / t_range))


def newton_histogram(flat: Array, t0: float, bin_width: float, sigma_t: float, start: Array,
                     w: float | Array = 0.0, *, chunk: int = 8192, max_iter: int = 30,
                     reach: float = 6.0) -> tuple[Array, int]:
    """Vectorised Newton on L7 for P pixels at once, from ``start`` (the LMF peaks).

    Only bins within ``reach`` sigma_t (+ one bin) of the start enter each pixel's sums. With
    background modelled (w > 0) the others carry no information about tau; with w = 0 this is a
    +-6 sigma_t gate, which keeps stray background photons from dragging the Gaussian ML. Steps are clipped to sigma_t/2
    and iterates kept within 2 sigma_t + 1 bin of the start (a bounded solver, as the spec
    asks); where the curvature is not negative a fixed step follows the score's sign.
    """
    n_bins = flat.shape[1]
    half = math.ceil(reach * sigma_t / bin_width) + 1
    offs = np.arange(-half, half + 1)
    out = np.empty(flat.shape[0])
    bound = 2 * sigma_t + bin_width
    w_all = np.broadcast_to(np.asarray(w, float), (flat.shape[0],))
    iters = 0
    for s in range(0, flat.shape[0], chunk):
        h, tau0 = flat[s: s + chunk], np.asarray(start[s: s + chunk], dtype=float)
        w = w_all[s: s + chunk, None]
        bg = w / n_bins  # uniform background share of one bin
        idx = np.clip(((tau0 - t0) / bin_width).astype(np.int64), 0, n_bins - 1)[:, None] + offs
        valid = (idx >= 0) & (idx < n_bins)
        hw = np.take_along_axis(h, np.clip(idx, 0, n_bins - 1), axis=1) * valid  # (P, 2 half + 1)
        edges = t0 + bin_width * np.concatenate([idx, idx[:, -1:] + 1], axis=1)  # (P, 2 half + 2)
        tau = tau0.copy()
        for it in range(1, max_iter + 1):
            p, dp, d2p = _binned_terms(tau[:, None], edges, sigma_t)
            f = np.maximum((1 - w) * p + bg, 1e-300)
            g1 = np.sum(hw * (1 - w) * dp / f, axis=1)
            g2 = np.sum(hw * ((1 - w) * d2p / f - ((1 - w) * dp / f) ** 2), axis=1)
            concave = g2 < 0
            step = np.where(concave, -g1 / np.where(concave, g2, -1.0), np.sign(g1) * sigma_t / 4)
            new = np.clip(tau + np.clip(step, -sigma_t / 2, sigma_t / 2), tau0 - bound, tau0 + bound)
            moved = np.max(np.abs(new - tau), initial=0.0)
            tau = new
            iters = max(iters, it)
            if moved < 1e-12 * sigma_t:
                break
        out[s: s + chunk] = tau
    return out, iters

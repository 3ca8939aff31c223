"""Multi-label calibration and ranking metrics, functional and streaming.

Every function takes probabilities ``probs`` and labels ``labels`` of the same shape, (N, C)
or (N,), as numpy arrays, torch tensors or nested lists. Labels are {0, 1}; NaN labels (and
entries where ``mask`` is False) are unknown and ignored. ``S`` below is the set of known
entries.

* ECE (pooled, primary): equal-width bins ``B_m = ((m-1)/M, m/M]`` (0 goes to the first),
  ``sum_m |B_m|/|S| |mean_{B_m} y - mean_{B_m} p|``; MCE the max gap over non-empty bins;
* ACE: the same gap over ``M`` equal-count chunks of the sorted probabilities;
* classwise ECE: ECE per class, averaged over classes with at least one positive;
* Brier, NLL (probabilities clipped to [1e-12, 1 - 1e-12]), the oracle CPE error
  ``mean |p - eta|`` where the true posterior is known;
* mAP: macro mean over classes with a positive of non-interpolated AP (scikit-learn's
  ``average_precision_score``); CP/CR/CF1 and OP/OR/OF1 at a threshold.

The streaming classes (:class:`CalibrationError`, :class:`AdaptiveCalibrationError`,
:class:`ProbabilityScores`, :class:`MeanAveragePrecision`, :class:`F1Scores`,
:class:`OracleCPEError`) follow torchmetrics: ``update`` accumulates sums in float64 tensors
of size O(bins) (O(C x bins) for per-class states), ``compute`` reads them, ``sync`` sums the
states over a ``torch.distributed`` group. ECE/MCE/classwise ECE/Brier/NLL/F1/CPE stream
exactly; ACE and mAP stream on a fine histogram of the scores (``resolution`` bins), which is
exact for the scores rounded to that grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array, torch tensor or nested sequence
_CLIP = 1e-12


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------

def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(x).__name__}") from e


def _check_probs(p: np.ndarray, name: str = "probs") -> None:
    if np.isnan(p).any():
        raise ValueError(f"{name} contains NaN")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(f"{name} must be probabilities in [0, 1], got values in "
                         f"[{p.min():.4g}, {p.max():.4g}] (for SPA use SPALoss.predict_proba(v), "
                         "not the raw outputs)")


def _prepare(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(p, y, known)``, all of the input shape; unknown labels set to 0."""
    p, y = _to_numpy(probs, "probs"), _to_numpy(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"probs and labels must have the same shape, got probs {p.shape} and labels {y.shape}")
    if p.ndim not in (1, 2):
        raise ValueError(f"probs must have shape (N,) or (N, C), got {p.shape}")
    _check_probs(p)
    known = ~np.isnan(y)
    if mask is not None:
        m = np.asarray(mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else mask)
        if m.shape != p.shape:
            raise ValueError(f"mask must have the shape of probs {p.shape}, got {m.shape}")
        known &= m.astype(bool)
    if ((y[known] != 0) & (y[known] != 1)).any():
        raise ValueError("labels must hold 0 or 1 (NaN for unknown labels); "
                         f"found {np.unique(y[known & (y != 0) & (y != 1)])[:5].tolist()}")
    return p, np.where(known, y, 0.0), known


def _check_bins(n_bins: int, name: str = "n_bins") -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n_bins!r}")


def bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: ``((m-1)/M, m/M] -> m-1``, with 0 in the first."""
    return np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def bin_sums(p: np.ndarray, y: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-bin sums (3, M): count, sum of ``p`` and sum of ``y`` over equal-width bins; every
    binned calibration metric (and the streaming state) is a function of these."""
    b = bin_index(p, n_bins)
    return np.stack([np.bincount(b, minlength=n_bins).astype(np.float64),
                     np.bincount(b, weights=p, minlength=n_bins),
                     np.bincount(b, weights=y, minlength=n_bins)])


def _gaps(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin ``|mean y - mean p|`` and counts from (3, M) sums (empty bins: gap 0)."""
    count, sp, sy = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(count > 0, np.abs(sy - sp) / np.maximum(count, 1), 0.0)
    return gap, count


def _ece_from_sums(sums: np.ndarray) -> float:
    gap, count = _gaps(sums)
    total = count.sum()
    return float((gap * count).sum() / total) if total > 0 else float("nan")


def _mce_from_sums(sums: np.ndarray) -> float:
    gap, count = _gaps(sums)
    return float(gap[count > 0].max()) if (count > 0).any() else float("nan")


# --------------------------------------------------------------------------------------------
# functional metrics
# --------------------------------------------------------------------------------------------

def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, mask: ArrayLike | None = None) -> float:
    """Pooled expected calibration error over all known (n, c) entries, ``n_bins`` equal-width bins."""
    _check_bins(n_bins)
    p, y, known = _prepare(probs, labels, mask)
    return _ece_from_sums(bin_sums(p[known], y[known], n_bins))


def mce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, mask: ArrayLike | None = None) -> float:
    """Maximum calibration error: the largest bin gap among non-empty equal-width bins."""
    _check_bins(n_bins)
    p, y, known = _prepare(probs, labels, mask)
    return _mce_from_sums(bin_sums(p[known], y[known], n_bins))


def ace(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, mask: ArrayLike | None = None) -> float:
    """Adaptive calibration error: sort the known probabilities, split them into ``n_bins``
    equal-count chunks (``np.array_split``), weight each chunk's gap by its size."""
    _check_bins(n_bins)
    p, y, known = _prepare(probs, labels, mask)
    p, y = p[known], y[known]
    if p.size == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, n_bins):
        if chunk.size:
            total += abs(y[chunk].sum() - p[chunk].sum())
    return float(total / p.size)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15,
                  mask: ArrayLike | None = None) -> float:
    """ECE of each class over its known predictions, averaged over classes with a positive."""
    _check_bins(n_bins)
    p, y, known = _prepare(probs, labels, mask)
    if p.ndim != 2:
        raise ValueError(f"classwise_ece needs probs of shape (N, C), got {p.shape}")
    values = [_ece_from_sums(bin_sums(p[known[:, c], c], y[known[:, c], c], n_bins))
              for c in range(p.shape[1]) if y[known[:, c], c].sum() > 0]
    return float(np.mean(values)) if values else float("nan")


def brier(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Brier score ``mean (p - y)^2`` over the known entries."""
    p, y, known = _prepare(probs, labels, mask)
    return float(np.mean((p[known] - y[known]) ** 2)) if known.any() else float("nan")


def nll(probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Negative log-likelihood ``-mean[y log p + (1-y) log(1-p)]``, p clipped to [1e-12, 1-1e-12]."""
    p, y, known = _prepare(probs, labels, mask)
    if not known.any():
        return float("nan")
    p, y = np.clip(p[known], _CLIP, 1 - _CLIP), y[known]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def oracle_cpe_error(probs: ArrayLike, eta: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Class-probability-estimation error ``mean |p - eta|`` against the true posterior ``eta``
    (synthetic data only)."""
    p, e = _to_numpy(probs, "probs"), _to_numpy(eta, "eta")
    if p.shape != e.shape:
        raise ValueError(f"probs and eta must have the same shape, got probs {p.shape} and eta {e.shape}")
    _check_probs(p)
    _check_probs(e, "eta")
    keep = np.ones(p.shape, bool) if mask is None else np.asarray(mask, bool)
    return float(np.mean(np.abs(p - e)[keep]))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP of one class (ties handled as in scikit-learn: one threshold per
    distinct score). NaN when there is no positive."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    # last index of each run of equal scores = one threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float((precision * recall_step).sum())


def mean_average_precision(scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None,
                           per_class: bool = False) -> float | tuple[float, np.ndarray]:
    """Macro mAP over classes with at least one known positive (in [0, 1]; ASL reports x100).

    Scores may be any monotone read-out (mAP is invariant to the link). With ``per_class`` also
    returns the (C,) AP array (NaN for classes without a positive).
    """
    s, y = _to_numpy(scores, "scores"), _to_numpy(labels, "labels")
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores and labels must both have shape (N, C), got scores {s.shape} and labels {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contains NaN")
    known = ~np.isnan(y) if mask is None else (~np.isnan(y) & np.asarray(mask, bool))
    if ((y[known] != 0) & (y[known] != 1)).any():
        raise ValueError("labels must hold 0 or 1 (NaN for unknown labels)")
    aps = np.array([average_precision(s[known[:, c], c], y[known[:, c], c]) for c in range(s.shape[1])])
    value = float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")
    return (value, aps) if per_class else value


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    cp, cr = ratio(tp, tp + fp), ratio(tp, tp + fn)
    CP, CR = float(cp.mean()), float(cr.mean())
    OP = float(ratio(np.array(tp.sum()), np.array(tp.sum() + fp.sum())))
    OR = float(ratio(np.array(tp.sum()), np.array(tp.sum() + fn.sum())))
    f1 = lambda a, b: 2 * a * b / (a + b) if a + b > 0 else 0.0
    return {"CP": CP, "CR": CR, "CF1": f1(CP, CR), "OP": OP, "OR": OR, "OF1": f1(OP, OR)}


def f1_scores(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5,
              mask: ArrayLike | None = None) -> dict[str, float]:
    """Per-class (CP, CR, CF1) and overall (OP, OR, OF1) precision/recall/F1 of ``p > threshold``
    (the ASL-paper convention: CF1 from the class-averaged CP and CR)."""
    p, y, known = _prepare(probs, labels, mask)
    if p.ndim != 2:
        raise ValueError(f"f1_scores needs probs of shape (N, C), got {p.shape}")
    pred = (p > threshold) & known
    pos = (y > 0.5) & known
    counts = np.stack([(pred & pos).sum(0), (pred & ~pos).sum(0), (~pred & pos).sum(0)])
    return _f1_from_counts(*counts.astype(np.float64))


def calibration_report(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15,
                       mask: ArrayLike | None = None) -> dict[str, float]:
    """All the metrics of this module in one dict (ECE, ACE, MCE, cw-ECE, Brier, NLL, mAP, F1)."""
    return {"ece": ece(probs, labels, n_bins, mask), "ace": ace(probs, labels, n_bins, mask),
            "mce": mce(probs, labels, n_bins, mask), "cw_ece": classwise_ece(probs, labels, n_bins, mask),
            "brier": brier(probs, labels, mask), "nll": nll(probs, labels, mask),
            "map": mean_average_precision(probs, labels, mask), **f1_scores(probs, labels, mask=mask)}


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, *,
                        mask: ArrayLike | None = None, ax: Any = None, title: str = ""):
    """Pooled reliability diagram: per-bin mean confidence vs observed frequency, with counts.

    Returns
    -------
    fig : matplotlib Figure
        ``ax.figure``, or a new Figure not registered with pyplot (``fig.savefig`` writes it).
    data : dict
        ``confidence``, ``frequency``, ``count`` (each (M,), NaN for empty bins), ``edges``
        (M + 1,) and ``ece``.
    """
    from matplotlib.figure import Figure

    _check_bins(n_bins)
    p, y, known = _prepare(probs, labels, mask)
    count, sp, sy = bin_sums(p[known], y[known], n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, freq = np.where(count > 0, sp / count, np.nan), np.where(count > 0, sy / count, np.nan)
    edges = np.linspace(0, 1, n_bins + 1)
    data = {"confidence": conf, "frequency": freq, "count": count, "edges": edges,
            "ece": _ece_from_sums(np.stack([count, sp, sy]))}
    if ax is None:
        fig = Figure(figsize=(3.6, 3.6))
        ax = fig.subplots()
    else:
        fig = ax.figure
    ax.bar(edges[:-1], np.nan_to_num(freq), width=1 / n_bins, align="edge", edgecolor="k",
           alpha=0.7, label="observed frequency")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(conf, freq, "o", ms=3, color="C3")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="frequency of y = 1",
           title=f"{title} ECE={data['ece']:.4f}".strip())
    return fig, data


# --------------------------------------------------------------------------------------------
# streaming metrics (torchmetrics-like: update / compute / reset / sync)
# --------------------------------------------------------------------------------------------

class StreamingMetric:
    """Base class: float64 tensor states that are sums over the stream (so DDP reduces them by
    ``all_reduce(SUM)``, torchmetrics' ``dist_reduce_fx="sum"``)."""

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor] = {}

    def add_state(self, name: str, default: torch.Tensor) -> None:
        self._defaults[name] = default.to(torch.float64)
        setattr(self, name, default.clone().to(torch.float64))

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, default.clone())

    def sync(self, group: Any = None) -> None:
        """Sum every state over the processes of ``group`` (no-op outside ``torch.distributed``)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for name in self._defaults:
                torch.distributed.all_reduce(getattr(self, name), group=group)

    def _add(self, name: str, value: np.ndarray) -> None:
        getattr(self, name).add_(torch.from_numpy(np.asarray(value, dtype=np.float64)))


class CalibrationError(StreamingMetric):
    """Streaming ECE / MCE (pooled) and optionally classwise ECE, in O(bins) (O(C bins)) memory.

    ``compute()`` returns ``{"ece", "mce"}`` (+ ``"cw_ece"`` when ``classwise``); the numbers
    equal :func:`ece`, :func:`mce`, :func:`classwise_ece` on the concatenated stream.
    """

    def __init__(self, n_bins: int = 15, classwise: bool = False, num_classes: int | None = None) -> None:
        super().__init__()
        _check_bins(n_bins)
        if classwise and (num_classes is None or num_classes < 1):
            raise ValueError(f"classwise=True needs num_classes >= 1, got {num_classes!r}")
        self.n_bins, self.classwise, self.num_classes = n_bins, classwise, num_classes
        self.add_state("sums", torch.zeros(3, n_bins))
        if classwise:
            self.add_state("class_sums", torch.zeros(num_classes, 3, n_bins))

    def update(self, probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        p, y, known = _prepare(probs, labels, mask)
        self._add("sums", bin_sums(p[known], y[known], self.n_bins))
        if self.classwise:
            if p.ndim != 2 or p.shape[1] != self.num_classes:
                raise ValueError(f"probs must have shape (N, {self.num_classes}), got {p.shape}")
            per_class = np.stack([bin_sums(p[known[:, c], c], y[known[:, c], c], self.n_bins)
                                  for c in range(self.num_classes)])
            self._add("class_sums", per_class)

    def compute(self) -> dict[str, float]:
        sums = self.sums.numpy()
        out = {"ece": _ece_from_sums(sums), "mce": _mce_from_sums(sums)}
        if self.classwise:
            cs = self.class_sums.numpy()
            vals = [_ece_from_sums(cs[c]) for c in range(self.num_classes) if cs[c, 2].sum() > 0]
            out["cw_ece"] = float(np.mean(vals)) if vals else float("nan")
        return out


class AdaptiveCalibrationError(StreamingMetric):
    """Streaming ACE from a histogram of ``resolution`` equal-width bins (O(resolution) memory).

    Equal-count chunks are formed from cumulative counts of the fine bins: a fine bin belongs
    to the chunk that holds its middle rank. Exact for probabilities on the fine grid; on
    real-valued inputs it differs from :func:`ace` by at most about the mass of one fine bin
    per chunk boundary.
    """

    def __init__(self, n_bins: int = 15, resolution: int = 10_000) -> None:
        super().__init__()
        _check_bins(n_bins)
        _check_bins(resolution, "resolution")
        self.n_bins, self.resolution = n_bins, resolution
        self.add_state("sums", torch.zeros(3, resolution))

    def update(self, probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        p, y, known = _prepare(probs, labels, mask)
        self._add("sums", bin_sums(p[known], y[known], self.resolution))

    def compute(self) -> float:
        count, sp, sy = self.sums.numpy()
        total = count.sum()
        if total == 0:
            return float("nan")
        middle_rank = np.cumsum(count) - count / 2
        chunk = np.minimum((middle_rank * self.n_bins / total).astype(np.int64), self.n_bins - 1)
        gap_sum = np.abs(np.bincount(chunk, sy, self.n_bins) - np.bincount(chunk, sp, self.n_bins))
        return float(gap_sum.sum() / total)


class ProbabilityScores(StreamingMetric):
    """Streaming Brier score and NLL (exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("totals", torch.zeros(3))  # count, sum squared error, sum log loss

    def update(self, probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        p, y, known = _prepare(probs, labels, mask)
        p, y = p[known], y[known]
        pc = np.clip(p, _CLIP, 1 - _CLIP)
        self._add("totals", [p.size, ((p - y) ** 2).sum(),
                             -(y * np.log(pc) + (1 - y) * np.log1p(-pc)).sum()])

    def compute(self) -> dict[str, float]:
        n, se, ll = self.totals.tolist()
        return {"brier": se / n, "nll": ll / n} if n else {"brier": float("nan"), "nll": float("nan")}


class OracleCPEError(StreamingMetric):
    """Streaming ``mean |p - eta|`` against known true posteriors (exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("totals", torch.zeros(2))

    def update(self, probs: ArrayLike, eta: ArrayLike) -> None:
        p, e = _to_numpy(probs, "probs"), _to_numpy(eta, "eta")
        if p.shape != e.shape:
            raise ValueError(f"probs and eta must have the same shape, got {p.shape} and {e.shape}")
        _check_probs(p)
        _check_probs(e, "eta")
        self._add("totals", [p.size, np.abs(p - e).sum()])

    def compute(self) -> float:
        n, s = self.totals.tolist()
        return s / n if n else float("nan")


class MeanAveragePrecision(StreamingMetric):
    """Streaming mAP from per-class histograms of positive and negative scores.

    Memory O(C x resolution). The AP of each class is computed with one threshold per fine bin
    (scores in the same bin are ties), which equals scikit-learn's AP of the scores rounded up
    to the bin grid ``ceil(s * resolution) / resolution``. Scores must lie in [0, 1].
    """

    def __init__(self, num_classes: int, resolution: int = 1000) -> None:
        super().__init__()
        _check_bins(num_classes, "num_classes")
        _check_bins(resolution, "resolution")
        self.num_classes, self.resolution = num_classes, resolution
        self.add_state("hist", torch.zeros(2, num_classes, resolution))  # [negatives, positives]

    def update(self, probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        p, y, known = _prepare(probs, labels, mask)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise ValueError(f"probs must have shape (N, {self.num_classes}), got {p.shape}")
        flat = bin_index(p, self.resolution) + self.resolution * np.arange(self.num_classes)
        size = self.num_classes * self.resolution
        pos = np.bincount(flat[known & (y > 0.5)], minlength=size)
        neg = np.bincount(flat[known & (y < 0.5)], minlength=size)
        self._add("hist", np.stack([neg, pos]).reshape(2, self.num_classes, self.resolution))

    def compute(self) -> float:
        neg, pos = self.hist.numpy()[:, :, ::-1]  # descending score
        tp, fp = np.cumsum(pos, 1), np.cumsum(neg, 1)
        n_pos = tp[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            ap = (precision * pos).sum(1) / n_pos
        return float(ap[n_pos > 0].mean()) if (n_pos > 0).any() else float("nan")


class F1Scores(StreamingMetric):
    """Streaming CP/CR/CF1 and OP/OR/OF1 at a threshold (exact)."""

    def __init__(self, num_classes: int, threshold: float = 0.5) -> None:
        super().__init__()
        _check_bins(num_classes, "num_classes")
        self.num_classes, self.threshold = num_classes, threshold
        self.add_state("counts", torch.zeros(3, num_classes))  # tp, fp, fn

    def update(self, probs: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        p, y, known = _prepare(probs, labels, mask)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise ValueError(f"probs must have shape (N, {self.num_classes}), got {p.shape}")
        pred, pos = (p > self.threshold) & known, (y > 0.5) & known
        self._add("counts", np.stack([(pred & pos).sum(0), (pred & ~pos).sum(0), (~pred & pos).sum(0)]))

    def compute(self) -> dict[str, float]:
        tp, fp, fn = self.counts.numpy()
        return _f1_from_counts(tp, fp, fn)

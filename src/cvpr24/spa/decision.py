"""Decisions that rely on calibrated probabilities: Bayes cost thresholds and compound-query
retrieval (the project page's "dog AND NOT cat" demo). With miscalibrated scores (ASL, focal,
or SPA read with ``sigmoid(v)``) these rules are not the optimal ones they claim to be."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from cvpr24.spa.metrics import ArrayLike, _check_probs, _to_numpy


def expected_cost_threshold(c_fp: float, c_fn: float) -> float:
    """Bayes-optimal threshold ``c_fp / (c_fp + c_fn)`` on a calibrated ``P(y=1|x)``: predict
    positive iff ``p * c_fn > (1 - p) * c_fp``."""
    if not (c_fp >= 0 and c_fn >= 0 and c_fp + c_fn > 0):
        raise ValueError(f"c_fp and c_fn must be >= 0 and not both 0, got {c_fp!r}, {c_fn!r}")
    return c_fp / (c_fp + c_fn)


def cost_sensitive_predict(probs: ArrayLike, c_fp: float | Sequence[float],
                           c_fn: float | Sequence[float]) -> np.ndarray:
    """Indicator matrix of the Bayes decisions for per-class (or shared) costs."""
    p = _to_numpy(probs, "probs")
    _check_probs(p)
    c_fp, c_fn = np.broadcast_arrays(np.asarray(c_fp, float), np.asarray(c_fn, float))
    if (c_fp < 0).any() or (c_fn < 0).any() or ((c_fp + c_fn) <= 0).any():
        raise ValueError("c_fp and c_fn must be >= 0 and not both 0 for any class")
    return (p > c_fp / (c_fp + c_fn)).astype(int)


class Retrieved(NamedTuple):
    """Indices of the retrieved examples (best first) and their query probabilities."""

    indices: np.ndarray
    scores: np.ndarray


def retrieve(probs: ArrayLike, include: Sequence[int | str] = (), exclude: Sequence[int | str] = (),
             top_k: int | None = None, min_score: float = 0.0, *,
             class_names: Sequence[str] | None = None) -> Retrieved:
    """Rank examples for the compound query "all of ``include`` AND none of ``exclude``".

    Score ``prod_{c in include} p_c * prod_{c in exclude} (1 - p_c)``: the query's probability
    under conditional independence of the labels given x; meaningful only for calibrated ``p``.
    Classes are column indices, or names when ``class_names`` (the column order) is given.
    Returns the ``top_k`` best (all when None) with score >= ``min_score``.
    """
    p = _to_numpy(probs, "probs")
    _check_probs(p)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {p.shape}")
    inc, exc = _columns(include, "include", class_names), _columns(exclude, "exclude", class_names)
    if not inc and not exc:
        raise ValueError("give at least one class in include or exclude")
    bad = [c for c in inc + exc if not 0 <= c < p.shape[1]]
    if bad:
        raise ValueError(f"class indices {bad} outside [0, {p.shape[1]})")
    if set(inc) & set(exc):
        raise ValueError(f"classes {sorted(set(inc) & set(exc))} are both included and excluded")
    score = np.prod(p[:, inc], axis=1) * np.prod(1 - p[:, exc], axis=1)
    order = np.argsort(-score, kind="stable")
    order = order[score[order] >= min_score]
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        order = order[:top_k]
    return Retrieved(order, score[order])


def _columns(classes: Sequence[int | str], name: str, class_names: Sequence[str] | None) -> list[int]:
    if isinstance(classes, (str, int)):
        classes = [classes]
    index = {n: i for i, n in enumerate(class_names)} if class_names is not None else {}
    out = []
    for c in classes:
        if isinstance(c, str) and c in index:
            out.append(index[c])
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            out.append(int(c))
        elif class_names is None:
            raise ValueError(f"{name} holds {c!r}: classes are integer column indices, or names "
                             "when class_names is given")
        else:
            raise ValueError(f"{name} holds an unknown class {c!r}; known: "
                             f"{', '.join(list(class_names)[:20])}" + (" ..." if len(class_names) > 20 else ""))
    return out


def tune_thresholds(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-class threshold maximising F1 on a validation set (NaN labels ignored).

    For each class the candidates are its distinct predicted probabilities; predicting
    ``p >= t`` at the best candidate. Classes without a known positive get 0.5. With calibrated
    probabilities :func:`expected_cost_threshold` needs no validation set; this utility is for
    the F1 objective, which has no closed-form threshold.
    """
    p, y = _to_numpy(probs, "probs"), _to_numpy(labels, "labels")
    _check_probs(p)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"probs and labels must both have shape (N, C), got {p.shape} and {y.shape}")
    thresholds = np.full(p.shape[1], 0.5)
    for c in range(p.shape[1]):
        known = ~np.isnan(y[:, c])
        s, t = p[known, c], y[known, c]
        if t.sum() == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s, t = s[order], t[order]
        last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # one candidate per distinct score
        tp = np.cumsum(t)[last]
        f1 = 2 * tp / (last + 1 + t.sum())  # 2 TP / (predicted positives + actual positives)
        thresholds[c] = s[last[int(np.argmax(f1))]]
    return thresholds

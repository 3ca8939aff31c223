"""Grouping metrics: the official Jaccard best-match micro/macro P/R/F1 (G14) with its
quirks, a strict one-to-one (Hungarian) version, exact-partition accuracy and ARI.

A grouping of one set of ``M`` parts is a list of groups, each a list of part indices.
Parts in no group are unassigned (noise parts belong to no ground-truth group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

Groups = Sequence[Sequence[int]]
MODES = ("official", "strict")
_EPS = 1e-8  # the official code's guard, kept so "official" numbers match to the last digit


@dataclass
class GroupingScores:
    """Micro P/R/F1 (from TP/FP/FN summed over every counted set), macro P/R/F1 (mean of
    the per-set values), exact-partition accuracy, mean ARI, and how many sets counted.

    ``n_sets_counted < n_sets`` only in official mode (quirk (a): sets with no predicted
    group are skipped). When no set is counted the P/R/F1 fields are 0.0 and
    ``defined`` is False: the official metric is then undefined, and we report 0.
    """

    mode: str
    precision: float
    recall: float
    f1: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    exact: float
    ari: float
    n_sets: int
    n_sets_counted: int
    groups_per_set: float
    defined: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp + _EPS)
    r = tp / (tp + fn + _EPS)
    return p, r, 2 * p * r / (p + r + _EPS)


def _masks(groups: Groups, n_parts: int, name: str) -> np.ndarray:
    masks = np.zeros((len(groups), n_parts), dtype=bool)
    seen = np.zeros(n_parts, dtype=bool)
    for k, g in enumerate(groups):
        idx = np.asarray(list(g), dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"{name}: group {k} is empty")
        if idx.min() < 0 or idx.max() >= n_parts:
            raise ValueError(f"{name}: group {k} has an index outside [0, {n_parts})")
        if seen[idx].any() or len(set(idx.tolist())) != idx.size:
            raise ValueError(f"{name}: part indices must appear in at most one group")
        seen[idx] = True
        masks[k, idx] = True
    return masks


def _counts_official(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """G14 as the official code computes it: each GT group takes its best-Jaccard prediction
    (only a strictly better score replaces the running best, which starts at 0)."""
    tp = fp = fn = 0
    for g in gt:
        best, best_j = None, 0.0
        for p in pred:
            j = (p & g).sum() / ((p | g).sum() + _EPS)
            if j > best_j:
                best, best_j = p, j
        if best is None:  # quirk (b): no overlap with any prediction contributes nothing
            continue
        tp += int((best & g).sum())
        fp += int((best & ~g).sum())
        fn += int((g & ~best).sum())
    return tp, fp, fn


def _counts_strict(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """One-to-one match maximising total Jaccard; unmatched GT parts are FN, unmatched
    predicted parts FP (every assigned part of a prediction outside its matched GT is FP)."""
    if len(pred) == 0:
        return 0, 0, int(gt.sum())
    if len(gt) == 0:
        return 0, int(pred.sum()), 0
    inter = (pred[:, None, :] & gt[None, :, :]).sum(-1)
    union = (pred[:, None, :] | gt[None, :, :]).sum(-1)
    rows, cols = linear_sum_assignment(-(inter / (union + _EPS)))
    tp = int(inter[rows, cols].sum())
    return tp, int(pred.sum()) - tp, int(gt.sum()) - tp


def _labels(masks: np.ndarray, n_parts: int) -> np.ndarray:
    lab = np.full(n_parts, -1, dtype=np.int64)
    for k, m in enumerate(masks):
        lab[m] = k
    return lab


def set_scores(pred: Groups, gt: Groups, n_parts: int, mode: str = "strict") -> dict:
    """TP/FP/FN, exact and ARI for one set. ``counted`` is False when official mode skips it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pm, gm = _masks(pred, n_parts, "pred"), _masks(gt, n_parts, "gt")
    counted = not (mode == "official" and len(pm) == 0)  # quirk (a)
    tp, fp, fn = (_counts_official if mode == "official" else _counts_strict)(pm, gm)
    exact = {frozenset(map(int, g)) for g in pred} == {frozenset(map(int, g)) for g in gt}
    # ARI on per-part labels; unassigned parts share the label -1.
    ari = float(adjusted_rand_score(_labels(gm, n_parts), _labels(pm, n_parts))) if n_parts else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "counted": counted, "exact": exact, "ari": ari,
            "n_pred": len(pm)}


def grouping_metrics(
    preds: Sequence[Groups], gts: Sequence[Groups], n_parts: Sequence[int], mode: str = "strict"
) -> GroupingScores:
    """Score predicted groupings of many sets against their ground truth.

    ``mode="official"`` reproduces G14 with quirks (a)-(d): a set with no prediction is
    skipped, a GT group overlapping no prediction adds no FN, a prediction that is no GT
    group's best match adds no FP, one prediction may match several GT groups.
    ``mode="strict"`` is a one-to-one Hungarian match on the Jaccard matrix where every
    unmatched part counts and every set counts. Exact accuracy and ARI use every set in both.
    """
    if not (len(preds) == len(gts) == len(n_parts)):
        raise ValueError(
            f"preds, gts and n_parts must have the same length, got {len(preds)}, {len(gts)}, "
            f"{len(n_parts)}"
        )
    if len(preds) == 0:
        raise ValueError("preds is empty: there is no set to score")
    rows = [set_scores(p, g, n, mode) for p, g, n in zip(preds, gts, n_parts, strict=True)]
    counted = [r for r in rows if r["counted"]]
    tp, fp, fn = (sum(r[k] for r in counted) for k in ("tp", "fp", "fn"))
    p, r, f = _prf(tp, fp, fn) if counted else (0.0, 0.0, 0.0)
    per_set = np.array([_prf(c["tp"], c["fp"], c["fn"]) for c in counted]).reshape(-1, 3)
    mp, mr, mf = per_set.mean(0) if counted else (0.0, 0.0, 0.0)
    return GroupingScores(
        mode=mode,
        precision=float(p),
        recall=float(r),
        f1=float(f),
        macro_precision=float(mp),
        macro_recall=float(mr),
        macro_f1=float(mf),
        exact=float(np.mean([r["exact"] for r in rows])),
        ari=float(np.mean([r["ari"] for r in rows])),
        n_sets=len(rows),
        n_sets_counted=len(counted),
        groups_per_set=float(np.mean([r["n_pred"] for r in rows])),
        defined=bool(counted),
    )


def set_counts(preds: Sequence[Groups], gts: Sequence[Groups], n_parts: Sequence[int],
               mode: str = "strict") -> np.ndarray:
    """Per-set TP, FP, FN as an ``(n_sets, 3)`` int array, the sufficient statistics of the
    micro scores (:func:`micro_prf`). A set that official mode skips (quirk (a)) is a zero
    row, which adds nothing to a sum, so resampling rows (a bootstrap over sets) gives the
    micro scores of the resampled test set."""
    rows = [set_scores(p, g, n, mode) for p, g, n in zip(preds, gts, n_parts, strict=True)]
    return np.array([[r["tp"], r["fp"], r["fn"]] if r["counted"] else [0, 0, 0]
                     for r in rows], dtype=np.int64).reshape(-1, 3)


def micro_prf(counts: np.ndarray) -> np.ndarray:
    """Micro P, R, F1 from per-set counts ``(..., n_sets, 3)`` (summed over the set axis),
    with the same guards as :func:`grouping_metrics`. Returns ``(..., 3)``; vectorised, so
    ``counts[idx]`` with bootstrap indices ``idx`` ``(draws, n_sets)`` scores every draw."""
    tp, fp, fn = np.moveaxis(np.asarray(counts, dtype=np.float64).sum(-2), -1, 0)
    p = tp / (tp + fp + _EPS)
    r = tp / (tp + fn + _EPS)
    return np.stack([p, r, 2 * p * r / (p + r + _EPS)], -1)


def groups_from_labels(labels: Sequence[int]) -> list[list[int]]:
    """Per-part labels (-1 = unassigned) to a list of groups, ordered by first part."""
    out: dict[int, list[int]] = {}
    for i, lab in enumerate(np.asarray(labels).tolist()):
        if lab >= 0:
            out.setdefault(int(lab), []).append(i)
    return list(out.values())


def labels_from_groups(groups: Groups, n_parts: int) -> np.ndarray:
    """A list of groups to per-part labels in group order; unassigned parts get -1."""
    return _labels(_masks(groups, n_parts, "groups"), n_parts)

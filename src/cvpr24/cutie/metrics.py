"""VOS metrics following the DAVIS semi-supervised protocol (Eqs J and F in docs/cutie.md).

- **J** (region similarity): IoU of prediction and ground truth; 1 when both are empty.
- **F** (boundary accuracy): boundaries by the one-pixel rule of :func:`seg2bmap`, matched
  within ``r = ceil(0.008 * diagonal)`` pixels (disk dilation); ``F = 2PR / (P + R)``; both
  boundaries empty gives 1, exactly one empty gives 0.
- Protocol: objects are the ids 1..max of the first ground-truth frame; the first and last
  frames are skipped; each object's scores are averaged over frames, then over all objects
  of the dataset (not per video); ``J&F = (J + F) / 2``. Scores are in percent. Pixels
  labelled 255 (void) are ignored.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

VOID = 255


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary: a pixel differing from its right, lower or lower-right neighbour
    (outside the image counts as background); the bottom-right pixel is never a boundary
    from outside neighbours."""
    seg = mask.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= r**2


def f_measure(
    pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008
) -> float:
    """Boundary F-measure with tolerance ``ceil(bound_th * diagonal)`` pixels."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape))
    bp, bg = seg2bmap(pred), seg2bmap(gt)
    disk = _disk(int(r))
    dil_p = ndimage.binary_dilation(bp, structure=disk)
    dil_g = ndimage.binary_dilation(bg, structure=disk)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = (bp & dil_g).sum() / n_p
    recall = (bg & dil_p).sum() / n_g
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def evaluate_video(
    gt: list[np.ndarray], pred: list[np.ndarray], skip_first_last: bool = True
) -> dict[int, tuple[float, float]]:
    """Per-object mean (J, F) over the frames of one video (index masks)."""
    if len(gt) != len(pred):
        raise ValueError(f"pred: {len(pred)} frames but the ground truth has {len(gt)}")
    n_obj = int(gt[0][gt[0] != VOID].max(initial=0))
    frames = range(1, len(gt) - 1) if skip_first_last and len(gt) > 2 else range(len(gt))
    out = {}
    for k in range(1, n_obj + 1):
        js, fs = [], []
        for t in frames:
            void = gt[t] == VOID
            js.append(jaccard(pred[t] == k, gt[t] == k, void))
            fs.append(f_measure(pred[t] == k, gt[t] == k, void))
        out[k] = (float(np.mean(js)), float(np.mean(fs)))
    return out


def summarize(per_object: dict[str, tuple[float, float]]) -> dict:
    """Dataset J, F and J&F (percent) as the mean over all objects."""
    if not per_object:
        raise ValueError("no objects to evaluate")
    j = 100 * float(np.mean([v[0] for v in per_object.values()]))
    f = 100 * float(np.mean([v[1] for v in per_object.values()]))
    return {
        "J&F": (j + f) / 2,
        "J": j,
        "F": f,
        "per_object": {k: (100 * a, 100 * b) for k, (a, b) in per_object.items()},
    }


def evaluate_vos(
    gt_dir: str | os.PathLike, pred_dir: str | os.PathLike, skip_first_last: bool = True
) -> dict:
    """Evaluate every video folder of ``gt_dir`` (index PNGs) against ``pred_dir``.

    Returns ``{"J&F", "J", "F", "per_object": {"video/id": (J, F)}}`` in percent.
    """
    from cvpr24.cutie.data import read_index_png

    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"gt_dir: not a folder: {gt_dir}")
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"pred_dir: not a folder: {pred_dir}")
    videos = sorted(p.name for p in gt_dir.iterdir() if p.is_dir())
    if not videos:
        raise ValueError(f"gt_dir: no video folders in {gt_dir}")
    per_object = {}
    for v in videos:
        names = sorted(p.name for p in (gt_dir / v).glob("*.png"))
        missing = [n for n in names if not (pred_dir / v / n).exists()]
        if missing:
            raise FileNotFoundError(
                f"pred_dir: {v}/ lacks {len(missing)} frames, e.g. {missing[0]}"
            )
        gt = [read_index_png(gt_dir / v / n, "gt")[0] for n in names]
        pred = [read_index_png(pred_dir / v / n, "pred")[0] for n in names]
        for k, jf in evaluate_video(gt, pred, skip_first_last).items():
            per_object[f"{v}/{k}"] = jf
    return summarize(per_object)

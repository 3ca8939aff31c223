"""Text2HOI evaluation metrics (H1-H8 in the docs). The official release has none.

Functional forms over tensors; ``ActionClassifier`` is the fixed evaluator network whose
penultimate features give accuracy, FID, diversity and multimodality.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from scipy import linalg

PENETRATION_THRESHOLD = 0.005  # m: deeper than 5 mm is a penetrating frame (H4)
CONTACT_DISTANCE = 0.005  # m: a joint within 5 mm is in contact (H4, official contact-frame rule)
STATIC_SPEED = 0.001  # m per frame
STATIC_ANGLE = np.deg2rad(0.5)  # rad per frame


def penetration_depth(sdf_values: torch.Tensor) -> torch.Tensor:
    """(H1) per frame: the largest depth max(0, −SDF) over hand vertices. sdf (..., V) -> (...)."""
    return (-sdf_values).clamp_min(0).amax(-1)


def contact_ratio(sdf_values: torch.Tensor, threshold: float = CONTACT_DISTANCE) -> torch.Tensor:
    """(H3) per frame: the fraction of hand vertices with |SDF| < 5 mm (inside counts as contact)."""
    return (sdf_values < threshold).to(sdf_values.dtype).mean(-1)


def penetration_volume(
    sdf_object: Callable[[torch.Tensor], torch.Tensor], hand_inside: Callable[[torch.Tensor], torch.Tensor],
    lo: torch.Tensor, hi: torch.Tensor, voxel: float = 0.002,
) -> float:
    """(H2) volume (m³) of voxels inside both the object (SDF < 0) and the hand, in the box [lo, hi]."""
    axes = [torch.arange(float(a) + voxel / 2, float(b), voxel, dtype=torch.float64) for a, b in zip(lo, hi, strict=True)]
    if any(len(a) == 0 for a in axes):
        return 0.0
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    both = (sdf_object(grid) < 0) & hand_inside(grid)
    return float(both.sum()) * voxel**3


def object_static(x_o: torch.Tensor) -> torch.Tensor:
    """Per frame (T,) whether the object is still: speed < 1 mm/frame and rotation < 0.5°/frame.

    Frame f compares pose f with f−1; the first frame counts as static.
    """
    from cvpr24.text2hoi.rotations import rot6d_to_rotmat

    speed = (x_o[1:, :3] - x_o[:-1, :3]).norm(dim=-1)
    r = rot6d_to_rotmat(x_o[:, 3:9])
    rel = r[1:] @ r[:-1].transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    still = (speed < STATIC_SPEED) & (torch.arccos(cos) < STATIC_ANGLE)
    return torch.cat([torch.ones(1, dtype=torch.bool), still])


def contact_frames(joint_sdf: torch.Tensor, min_joints: int = 2) -> torch.Tensor:
    """(T,) frames with at least 2 of the 21 joints (all hands) within 5 mm: joint_sdf (T, J)."""
    return (joint_sdf.abs() < CONTACT_DISTANCE).sum(-1) >= min_joints


def physical_realism(
    depth: torch.Tensor, x_o: torch.Tensor, joint_sdf: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, float]:
    """(H4) our definition [X]: the fraction of valid frames that have no penetration deeper than
    5 mm and either a still object or contact. Returns the score and its parts.

    depth (T,) from :func:`penetration_depth` over both hands; x_o (T, 9); joint_sdf (T, J).
    """
    valid = torch.ones(depth.shape[0], dtype=torch.bool) if valid is None else valid.bool()
    no_pen = depth <= PENETRATION_THRESHOLD
    still = object_static(x_o)
    touch = contact_frames(joint_sdf)
    ok = no_pen & (still | touch) & valid
    n = max(int(valid.sum()), 1)
    return {
        "phy": float(ok.sum()) / n,
        "no_penetration": float((no_pen & valid).sum()) / n,
        "moving_without_contact": float((~still & ~touch & valid).sum()) / n,
    }


def contact_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(H5) IoU of binary maps (..., N); 1 when both are empty."""
    p, t = pred > 0.5, target > 0.5
    inter = (p & t).sum(-1).float()
    union = (p | t).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def fid(feat_a: np.ndarray | torch.Tensor, feat_b: np.ndarray | torch.Tensor) -> float:
    """(H6) ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}) of Gaussian fits to two feature sets."""
    a, b = np.asarray(feat_a, dtype=np.float64), np.asarray(feat_b, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def diversity(features: np.ndarray | torch.Tensor, n_pairs: int = 200, seed: int = 0) -> float:
    """(H7) mean distance between ``n_pairs`` random pairs of features (pairs drawn with a seed)."""
    f = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(len(f), size=n_pairs), rng.integers(len(f), size=n_pairs)
    return float(np.linalg.norm(f[i] - f[j], axis=-1).mean())


def multimodality(features: np.ndarray | torch.Tensor, groups: np.ndarray, n_pairs: int = 10, seed: int = 0) -> float:
    """(H8) per text (group), the mean distance of ``n_pairs`` pairs of its samples; mean over texts."""
    f = np.asarray(features, dtype=np.float64)
    g = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out = []
    for key in np.unique(g):
        idx = np.nonzero(g == key)[0]
        if len(idx) < 2:
            continue
        i, j = rng.choice(idx, n_pairs), rng.choice(idx, n_pairs)
        keep = i != j
        if keep.any():
            out.append(np.linalg.norm(f[i[keep]] - f[j[keep]], axis=-1).mean())
    return float(np.mean(out)) if out else float("nan")


def classifier_input(joints_l: torch.Tensor, joints_r: torch.Tensor, is_l: torch.Tensor, is_r: torch.Tensor, n: int = 15) -> torch.Tensor:
    """(B, T, 21, 3) joints of each hand -> (B, 15, 21, 6) at linspace frames, relative to the
    participating hand's wrist at the first picked frame; an absent hand is zeros."""
    t = joints_l.shape[1]
    idx = torch.linspace(0, t - 1, n).round().long()
    jl, jr = joints_l[:, idx], joints_r[:, idx]
    root = torch.where(is_r.bool()[:, None], jr[:, 0, 0], jl[:, 0, 0])  # (B, 3)
    jl = (jl - root[:, None, None]) * is_l.reshape(-1, 1, 1, 1)
    jr = (jr - root[:, None, None]) * is_r.reshape(-1, 1, 1, 1)
    return torch.cat([jl, jr], -1)


class ActionClassifier(nn.Module):
    """A GRU over (15, 21·6) inputs; ``features`` (penultimate) feed FID / diversity / MM."""

    def __init__(self, n_classes: int, hidden: int = 64, feat_dim: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(21 * 6, hidden, batch_first=True)
        self.feat = nn.Sequential(nn.Linear(hidden, feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.flatten(2) * 10)  # decimetres: inputs of order 1
        return self.feat(h[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int = 400, seed: int = 0) -> ActionClassifier:
    """The fixed evaluator: trained once on GT motions with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = ActionClassifier(n_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(64, len(x)),), generator=g)
        loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()

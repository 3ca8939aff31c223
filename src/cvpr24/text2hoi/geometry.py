"""Object geometry for Text2HOI: transforms, FPS, normalisation, distance maps and contacts.

Points are metres. ``x_o`` is [τ_o (3) ‖ 6D rotation (6) (‖ α for ARCTIC)].
"""

from __future__ import annotations

import numpy as np
import torch

from cvpr24.text2hoi.rotations import rot6d_to_rotmat

CONTACT_THRESHOLD = 0.02  # m: the 2 cm rule of T2/T3


def transform_points(
    points: torch.Tensor, x_o: torch.Tensor, rot_convention: str = "Rp", top_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Object points (B, N, 3) (or (N, 3)) under per-frame poses x_o (B, T, 9|10) -> (B, T, N, 3).

    ``rot_convention`` "Rp" (H2O, ARCTIC) applies R·p; "pR" (GRAB) applies pᵀR, i.e. Rᵀ·p.
    With a tenth value α (ARCTIC) the points in ``top_mask`` (N,) are first rotated by α about
    the object's −z axis.
    """
    if x_o.shape[-1] not in (9, 10):
        raise ValueError(f"x_o must have last dimension 9 or 10, got shape {tuple(x_o.shape)}")
    if rot_convention not in ("Rp", "pR"):
        raise ValueError(f"rot_convention must be 'Rp' or 'pR', got {rot_convention!r}")
    b, t = x_o.shape[:2]
    pts = points.expand(b, *points.shape[-2:]) if points.ndim == 2 else points
    pts = pts.unsqueeze(1).expand(b, t, *pts.shape[-2:])
    if x_o.shape[-1] == 10:
        if top_mask is None:
            raise ValueError("an articulated object (x_o with 10 values) needs top_mask (ARCTIC obj_pc_top)")
        a = -x_o[..., 9]  # rotation about −z
        c, s = torch.cos(a), torch.sin(a)
        z, o = torch.zeros_like(a), torch.ones_like(a)
        rz = torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(b, t, 1, 3, 3)
        rotated = (rz @ pts.unsqueeze(-1)).squeeze(-1)
        pts = torch.where(top_mask.reshape(1, 1, -1, 1).bool(), rotated, pts)
    r = rot6d_to_rotmat(x_o[..., 3:9])  # (B, T, 3, 3)
    if rot_convention == "pR":
        r = r.transpose(-1, -2)
    return torch.einsum("btij,btnj->btni", r, pts) + x_o[..., None, :3]


def farthest_point_sampling(points: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (n,) of farthest-point samples of (M, 3) points, deterministic from index 0.

    With fewer than ``n`` points, all M are ordered by FPS and the order repeats (padding).
    """
    m = points.shape[0]
    if m == 0:
        raise ValueError("points must not be empty")
    pts = points.detach().cpu().double().numpy()
    k = min(n, m)
    idx = np.zeros(k, dtype=np.int64)
    dist = np.full(m, np.inf)
    cur = 0
    for i in range(k):
        idx[i] = cur
        dist = np.minimum(dist, ((pts - pts[cur]) ** 2).sum(-1))
        cur = int(dist.argmax())
    return torch.from_numpy(idx[np.arange(n) % k])


def pc_normalize(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T4) centroid c, scale s = max‖p − c‖, P_norm = (P − c)/s for (..., N, 3)."""
    c = points.mean(-2, keepdim=True)
    s = (points - c).norm(dim=-1).amax(-1)
    return (points - c) / s[..., None, None], c.squeeze(-2), s


def distance_map(obj_points: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """(T1) D[..., i, j] = ‖p_i − J_j‖ for points (..., N, 3) and joints (..., 21, 3)."""
    return torch.cdist(obj_points, joints)


def contact_labels(
    obj_points: torch.Tensor, joints: torch.Tensor, valid: torch.Tensor | None = None, threshold: float = CONTACT_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T2, T3) for one hand: dense target D* (T, N, 21) and the object contact map c (N,).

    ``obj_points`` (T, N, 3) world points, ``joints`` (T, 21, 3), ``valid`` (T,) frames.
    D* holds the distance where it is below ``threshold`` and 0 elsewhere; c_i = 1 when point
    i is within ``threshold`` of any joint in any valid frame.
    """
    d = distance_map(obj_points, joints)
    hit = d < threshold
    if valid is not None:
        hit = hit & valid.reshape(-1, 1, 1).bool()
    dstar = torch.where(hit, d, torch.zeros_like(d))
    return dstar, hit.any(-1).any(0).to(obj_points.dtype)


def nearest_points(query: torch.Tensor, points: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour in ``points`` (..., N, 3) of each ``query`` (..., Q, 3): (distance, index)."""
    ds, ids = [], []
    for q in query.split(chunk, dim=-2):
        d, i = torch.cdist(q, points).min(-1)
        ds.append(d)
        ids.append(i)
    return torch.cat(ds, -1), torch.cat(ids, -1)


def gather_points(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """points (..., N, 3), index (..., Q) -> (..., Q, 3)."""
    return torch.gather(points, -2, index.unsqueeze(-1).expand(*index.shape, 3))

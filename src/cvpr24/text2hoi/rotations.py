"""Rotation representations used by Text2HOI: 6D (R1), rotation matrices, axis-angle.

Shapes are ``(..., 6)``, ``(..., 3, 3)`` and ``(..., 3)``. All functions are differentiable
torch operations and work in any float dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEGENERATE_EPS = 1e-8


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """6D rotation (R1) -> rotation matrix by Gram-Schmidt.

    The 6 numbers are the first two columns of ``R``, flattened row-major from a ``(3, 2)``
    view: ``x = [R00, R01, R10, R11, R20, R21]``. Degenerate input (a zero column, or parallel
    columns) is eps-guarded: the missing direction is completed with a fixed axis, so the result
    is always a proper rotation (masked/padded frames of a prediction go through FK safely).
    Use :func:`check_rot6d` to reject such input instead.
    """
    if x.shape[-1] != 6:
        raise ValueError(f"x must have last dimension 6 (a 6D rotation), got shape {tuple(x.shape)}")
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    ex = torch.zeros_like(a1)
    ex[..., 0] = 1
    n1 = a1.norm(dim=-1, keepdim=True)
    b1 = torch.where(n1 < DEGENERATE_EPS, ex, a1 / n1.clamp_min(DEGENERATE_EPS))
    u2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    n2 = u2.norm(dim=-1, keepdim=True)
    # fallback second column: the axis least aligned with b1, orthogonalised
    k = b1.abs().argmin(-1, keepdim=True)
    e = torch.zeros_like(b1).scatter(-1, k, 1.0)
    f2 = e - (b1 * e).sum(-1, keepdim=True) * b1
    f2 = f2 / f2.norm(dim=-1, keepdim=True)
    b2 = torch.where(n2 < DEGENERATE_EPS, f2, u2 / n2.clamp_min(DEGENERATE_EPS))
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def check_rot6d(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` naming ``name`` if any 6D rotation is degenerate or not finite."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    n1 = a1.norm(dim=-1)
    cross = torch.linalg.cross(a1, a2, dim=-1).norm(dim=-1)
    if bool((n1 < DEGENERATE_EPS).any() or (cross < DEGENERATE_EPS * a2.norm(dim=-1).clamp_min(1)).any()):
        raise ValueError(f"{name} holds a degenerate 6D rotation (a zero column or parallel columns)")


def rotmat_to_rot6d(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix -> 6D (R1): the first two columns, row-major."""
    return r[..., :, :2].reshape(*r.shape[:-2], 6)


def axis_angle_to_rotmat(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle (rotation vector) -> rotation matrix by Rodrigues' formula (R2).

    Near zero angle the Taylor series of sin(θ)/θ and (1 - cos θ)/θ² keeps it exact and smooth.
    """
    theta2 = (aa * aa).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    theta = theta2.clamp_min(1e-24).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    zero = torch.zeros_like(aa[..., 0])
    kx, ky, kz = aa[..., 0], aa[..., 1], aa[..., 2]
    k = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def rotmat_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix -> unit quaternion ``(w, x, y, z)`` with w >= 0 (Shepperd's method)."""
    m = r
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # four candidate (unnormalised) quaternions; pick the best-conditioned one per matrix
    cands = torch.stack(
        [
            torch.stack([1 + tr, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - tr, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - tr, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - tr], -1),
        ],
        -2,
    )  # (..., 4, 4): row i has 4·q_i² in its i-th entry
    diag = torch.stack([1 + tr, 1 + 2 * m[..., 0, 0] - tr, 1 + 2 * m[..., 1, 1] - tr, 1 + 2 * m[..., 2, 2] - tr], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def rotmat_to_axis_angle(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix -> axis-angle with angle in [0, π] (via the quaternion; exact near 0 and π)."""
    q = rotmat_to_quaternion(r)
    w, v = q[..., :1], q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, w)
    scale = torch.where(s < 1e-8, 2 / w.clamp_min(1e-8), angle / s.clamp_min(1e-12))
    return v * scale


def rot6d_to_axis_angle(x: torch.Tensor) -> torch.Tensor:
    return rotmat_to_axis_angle(rot6d_to_rotmat(x))


def axis_angle_to_rot6d(aa: torch.Tensor) -> torch.Tensor:
    return rotmat_to_rot6d(axis_angle_to_rotmat(aa))


def random_rotmat(n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """``n`` rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = F.normalize(torch.randn(n, 4, generator=generator, dtype=dtype), dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(n, 3, 3)

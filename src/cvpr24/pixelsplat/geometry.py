"""Camera geometry: rays, disparity buckets (E1), the bounds shim (E0), epipolar segments.

Conventions: extrinsics are camera-to-world 4x4 in OpenCV axes (+x right, +y down,
+z forward); intrinsics are normalised (row 0 divided by W, row 1 by H); "depth" is the
distance along the unit ray, never camera z.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_image_grid(image_shape: tuple[int, int], device=None, dtype=torch.float32) -> Tensor:
    """Normalised pixel centres ``((j + 0.5) / W, (i + 0.5) / H)`` -> ``[H, W, 2]``."""
    h, w = image_shape
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def get_world_rays(xy: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Origins and unit directions of rays through normalised ``xy [..., 2]``."""
    xy1 = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
    d = (torch.linalg.inv(intrinsics) @ xy1.unsqueeze(-1)).squeeze(-1)
    d = d / d.norm(dim=-1, keepdim=True)
    d = (extrinsics[..., :3, :3] @ d.unsqueeze(-1)).squeeze(-1)
    return extrinsics[..., :3, 3].expand_as(d), d


def relative_disparity_to_depth(r: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """``d(r) = 1 / ((1 - r)(1/near - 1/far) + 1/far)``: r=0 -> near, r=1 -> far (E1)."""
    return 1 / ((1 - r) * (1 / near - 1 / far) + 1 / far)


def depth_to_relative_disparity(d: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """``r(d) = 1 - (1/d - 1/far) / (1/near - 1/far)`` (E1)."""
    return 1 - (1 / d - 1 / far) / (1 / near - 1 / far)


def bounds_shim(extrinsics: Tensor, intrinsics: Tensor, image_shape: tuple[int, int],
                near_disparity: float = 3.0, far_disparity: float = 0.5) -> tuple[Tensor, Tensor]:
    """Near/far from the context cameras (E0): the depths where the baseline gives a disparity
    of ``near_disparity * min(H, W)`` and ``far_disparity`` pixels. ``[B, V, ...]`` -> ``[B, V]``.
    """
    h, w = image_shape
    centres = extrinsics[..., :3, 3]
    baseline = (centres[:, :, None] - centres[:, None]).norm(dim=-1).flatten(1).max(dim=1).values  # [B]
    pixel = intrinsics.new_tensor([1.0 / w, 1.0 / h])
    footprint = (torch.linalg.inv(intrinsics)[..., :2, :2] @ pixel).mean(-1)  # [B, V]
    near = baseline[:, None] / (near_disparity * min(h, w) * footprint)
    far = baseline[:, None] / (far_disparity * footprint)
    return near, far


def project_points(points: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """World points ``[..., 3]`` -> normalised image xy ``[..., 2]`` and camera z ``[...]``."""
    rot, t = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    cam = (rot.transpose(-1, -2) @ (points - t).unsqueeze(-1)).squeeze(-1)
    uvw = (intrinsics @ cam.unsqueeze(-1)).squeeze(-1)
    return uvw[..., :2] / uvw[..., 2:], cam[..., 2]


def project_rays(origins: Tensor, directions: Tensor, extrinsics: Tensor, intrinsics: Tensor,
                 near: Tensor, far: Tensor, eps: float = 1e-6) -> dict[str, Tensor]:
    """Project the ray segments ``o + t d, t in [near, far]`` into another camera, clipped to
    the image frame (EP1).

    In the other camera, ``0 <= x(t) <= 1``, ``0 <= y(t) <= 1`` and ``z(t) > 0`` are each a
    linear inequality in ``t`` (the denominators are positive in front of the camera), so the
    visible part is one interval ``[t_min, t_max]``. Returns ``t_min, t_max [...]``, the
    normalised end points ``xy_min, xy_max [..., 2]`` and ``overlaps_image [...]``.
    """
    rot, centre = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    rt = rot.transpose(-1, -2)
    o = (rt @ (origins - centre).unsqueeze(-1)).squeeze(-1)
    d = (rt @ directions.unsqueeze(-1)).squeeze(-1)
    k = intrinsics
    # rows (a + b t) >= 0 for: z > eps, x >= 0, x <= 1, y >= 0, y <= 1 (times z)
    num_x_o = k[..., 0, 0] * o[..., 0] + k[..., 0, 2] * o[..., 2]
    num_x_d = k[..., 0, 0] * d[..., 0] + k[..., 0, 2] * d[..., 2]
    num_y_o = k[..., 1, 1] * o[..., 1] + k[..., 1, 2] * o[..., 2]
    num_y_d = k[..., 1, 1] * d[..., 1] + k[..., 1, 2] * d[..., 2]
    a = torch.stack([o[..., 2] - eps, num_x_o, o[..., 2] - num_x_o, num_y_o, o[..., 2] - num_y_o], -1)
    b = torch.stack([d[..., 2], num_x_d, d[..., 2] - num_x_d, num_y_d, d[..., 2] - num_y_d], -1)
    t_min = near.expand(a.shape[:-1]).clone()
    t_max = far.expand(a.shape[:-1]).clone()
    bound = -a / b
    t_min = torch.maximum(t_min, torch.where(b > 0, bound, -torch.inf).max(-1).values)
    t_max = torch.minimum(t_max, torch.where(b < 0, bound, torch.inf).min(-1).values)
    never = ((b == 0) & (a < 0)).any(-1)
    overlaps = (t_min < t_max) & ~never & torch.isfinite(t_min) & torch.isfinite(t_max)
    t_min = torch.where(overlaps, t_min, near.expand_as(t_min))
    t_max = torch.where(overlaps, t_max, far.expand_as(t_max))

    def project(t: Tensor) -> Tensor:
        p = o + t[..., None] * d
        return torch.stack([(k[..., 0, 0] * p[..., 0] + k[..., 0, 2] * p[..., 2]) / p[..., 2],
                            (k[..., 1, 1] * p[..., 1] + k[..., 1, 2] * p[..., 2]) / p[..., 2]], -1)

    xy_min = torch.where(overlaps[..., None], project(t_min), 0).nan_to_num(0, 0, 0)
    xy_max = torch.where(overlaps[..., None], project(t_max), 0).nan_to_num(0, 0, 0)
    return {"t_min": t_min, "t_max": t_max, "xy_min": xy_min, "xy_max": xy_max, "overlaps_image": overlaps}


def ray_depth_at_sample(origins: Tensor, directions: Tensor, xy: Tensor, extrinsics: Tensor,
                        intrinsics: Tensor) -> Tensor:
    """Triangulate: depth along ``o + t d`` of the point closest to the ray of the other
    camera through normalised ``xy`` (EP2, least squares over both rays)."""
    o2, d2 = get_world_rays(xy, extrinsics, intrinsics)
    # minimise |o + t d - o2 - s d2|^2 over (t, s)
    w0 = origins - o2
    a, b, c = (directions * directions).sum(-1), (directions * d2).sum(-1), (d2 * d2).sum(-1)
    dd, e = (directions * w0).sum(-1), (d2 * w0).sum(-1)
    denom = (a * c - b * b).clamp_min(1e-12)
    return (b * e - c * dd) / denom


def check_cameras(extrinsics: Tensor, intrinsics: Tensor, *, name: str = "extrinsics",
                  tol: float = 1e-3) -> None:
    """Raise ``ValueError`` naming the argument for non-rigid camera-to-world matrices,
    intrinsics in pixels or non-finite values."""
    if extrinsics.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be [..., 4, 4] camera-to-world matrices, got {tuple(extrinsics.shape)}")
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [..., 3, 3], got {tuple(intrinsics.shape)}")
    if not torch.isfinite(extrinsics).all():
        raise ValueError(f"{name} (camera-to-world) contain NaN or inf")
    if not torch.isfinite(intrinsics).all():
        raise ValueError("intrinsics contain NaN or inf")
    rot = extrinsics[..., :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64)
    if ((rot.transpose(-1, -2) @ rot - eye).abs().amax() > tol
            or (torch.linalg.det(rot) - 1).abs().max() > tol
            or (extrinsics[..., 3, :].double() - torch.tensor([0, 0, 0, 1.0])).abs().max() > tol):
        raise ValueError(f"{name} must be rigid camera-to-world (SE(3)) matrices: rotation part "
                         "orthonormal with det 1 and last row [0, 0, 0, 1]")
    if intrinsics[..., 0, 0].abs().max() > 10 or intrinsics[..., 1, 1].abs().max() > 10:
        raise ValueError("intrinsics look like pixels (fx > 10): normalise them (row 0 / W, row 1 / H, "
                         "so cx, cy are about 0.5)")

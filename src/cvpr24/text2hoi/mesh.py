"""Object meshes: loading (trimesh), FPS points + normals, and a mesh SDF for the metrics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import optional_import
from cvpr24.text2hoi.geometry import farthest_point_sampling

MAX_EXTENT = 2.0  # m: anything larger is almost surely in millimetres


def load_mesh(path: str | os.PathLike, name: str = "object_mesh"):
    """A ``trimesh.Trimesh`` from a file, in metres (raises naming ``name`` otherwise)."""
    trimesh = optional_import("trimesh", "text2hoi")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name} {p} not found")
    mesh = trimesh.load(str(p), force="mesh", process=False)
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise ValueError(f"{name} {p} has no triangles")
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    if extent >= MAX_EXTENT:
        raise ValueError(f"{name} {p} is {extent:.1f} units across: expected metres (< {MAX_EXTENT}); divide millimetres by 1000")
    return mesh


def mesh_points(mesh, n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS over the mesh vertices from index 0 (padded by repetition) and unit vertex normals."""
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    idx = farthest_point_sampling(v, n_points)
    normals = torch.as_tensor(np.asarray(mesh.vertex_normals), dtype=torch.float32)
    return v[idx], normals[idx]


class MeshSDF:
    """Signed distance to a watertight triangle mesh: generalised winding number for the sign,
    nearest triangle for the magnitude (exact point-triangle distance). Negative inside."""

    def __init__(self, mesh, name: str = "object_mesh") -> None:
        if not mesh.is_watertight:
            raise ValueError(f"{name} is not watertight: a signed distance needs a closed surface")
        self.tri = torch.as_tensor(np.asarray(mesh.vertices)[np.asarray(mesh.faces)], dtype=torch.float64)  # (F, 3, 3)

    def winding(self, p: torch.Tensor) -> torch.Tensor:
        a, b, c = (self.tri[None, :, k] - p[:, None] for k in range(3))  # (P, F, 3)
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        det = (a * torch.linalg.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        return torch.atan2(det, den).sum(-1) / (2 * torch.pi)

    def distance(self, p: torch.Tensor) -> torch.Tensor:
        return _point_triangle_distance(p, self.tri).amin(-1)

    def __call__(self, p: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        shape = p.shape[:-1]
        q = p.reshape(-1, 3).double()
        out = []
        for part in q.split(chunk):
            inside = self.winding(part) > 0.5
            d = self.distance(part)
            out.append(torch.where(inside, -d, d))
        return torch.cat(out).reshape(shape).to(p.dtype)


def _point_triangle_distance(p: torch.Tensor, tri: torch.Tensor) -> torch.Tensor:
    """(P, F) distance from points (P, 3) to triangles (F, 3, 3), by projection and edge clamps."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = torch.linalg.cross(b - a, c - a, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    ap = p[:, None] - a[None]
    proj = p[:, None] - (ap * n[None]).sum(-1, keepdim=True) * n[None]  # onto the plane
    # barycentric inside test for the projection
    def side(u, v, q):
        return (torch.linalg.cross(v - u, q - u, dim=-1) * n[None]).sum(-1)
    inside = (side(a[None], b[None], proj) >= 0) & (side(b[None], c[None], proj) >= 0) & (side(c[None], a[None], proj) >= 0)
    plane_d = (ap * n[None]).sum(-1).abs()

    def seg(u, v):
        uv = v - u
        t = (((p[:, None] - u[None]) * uv[None]).sum(-1) / (uv * uv).sum(-1).clamp_min(1e-30)[None]).clamp(0, 1)
        return (p[:, None] - (u[None] + t[..., None] * uv[None])).norm(dim=-1)

    edge = torch.minimum(torch.minimum(seg(a, b), seg(b, c)), seg(c, a))
    return torch.where(inside, plane_d, edge)

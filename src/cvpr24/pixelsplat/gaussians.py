"""Gaussians: covariances from scales and rotations, the Gaussian adapter (E11), and ``.ply``.

The ``.ply`` files follow the convention of 3D Gaussian Splatting viewers (P1): opacity as a
logit, scales as logs, rotations as world-frame ``w, x, y, z`` quaternions, and SH in the
3DGS basis with ``f_rest`` grouped per colour channel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cvpr24.common.extras import optional_import
from cvpr24.common.io import atomic_path
from cvpr24.pixelsplat import sh


def quaternion_to_matrix(quaternions: Tensor, eps: float = 1e-8) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from quaternions ``[..., 4]`` in **x, y, z, w** order.

    The quaternion is normalised first (``eps`` guards a zero vector), as the official
    adapter does.
    """
    q = quaternions / (quaternions.norm(dim=-1, keepdim=True) + eps)
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).unflatten(-1, (3, 3))


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` (x, y, z, w; w >= 0) of rotation matrices ``[..., 3, 3]``."""
    m = matrix
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # four candidate solutions, each stable where its pivot is large; take the best one
    cands = torch.stack([
        torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1], 1 + trace], -1),
        torch.stack([1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] - m[..., 1, 2]], -1),
        torch.stack([m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                     m[..., 1, 2] + m[..., 2, 1], m[..., 0, 2] - m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2], m[..., 1, 0] - m[..., 0, 1]], -1),
    ], dim=-2)  # [..., 4, 4]
    pivots = torch.stack([1 + trace, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                          1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                          1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    best = pivots.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:] < 0, -q, q)


def build_covariance(scales: Tensor, rotations: Tensor) -> Tensor:
    """``Sigma = R S S^T R^T`` with ``S = diag(scales)`` and ``R`` from x,y,z,w quaternions (C1)."""
    r = quaternion_to_matrix(rotations)
    rs = r * scales[..., None, :]
    return rs @ rs.transpose(-1, -2)


@dataclass
class Gaussians:
    """A set of 3D Gaussians in world coordinates, with any leading batch shape ``[..., G]``.

    ``harmonics [..., G, 3, n]`` are in the pixelSplat SH basis (channel-major), ``rotations``
    are world-frame x,y,z,w quaternions, so ``covariances = build_covariance(scales, rotations)``.
    """

    means: Tensor  # [..., G, 3]
    covariances: Tensor  # [..., G, 3, 3]
    scales: Tensor  # [..., G, 3]
    rotations: Tensor  # [..., G, 4] x, y, z, w, world frame
    harmonics: Tensor  # [..., G, 3, n]
    opacities: Tensor  # [..., G]

    def __getitem__(self, index) -> Gaussians:
        """Index the leading (batch) dimensions, e.g. ``gaussians[0]`` for one scene."""
        return Gaussians(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def detach(self) -> Gaussians:
        return Gaussians(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def to_ply(self, path: str | os.PathLike, sh_degree: int | None = None) -> Path:
        """Write one scene in the 3DGS ``.ply`` convention (P1); see :func:`write_ply`."""
        return write_ply(self, path, sh_degree=sh_degree)

    @classmethod
    def from_ply(cls, path: str | os.PathLike) -> Gaussians:
        return read_ply(path)


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex properties a 3DGS viewer expects, in order (P1)."""
    n_rest = 3 * (sh.num_coefficients(sh_degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(gaussians: Gaussians, path: str | os.PathLike, sh_degree: int | None = None) -> Path:
    """Write one scene's Gaussians ``[G, ...]`` as a binary 3DGS ``.ply`` (P1).

    Opacity is stored as ``logit(o)``, scales as ``log(s)``, rotations as world-frame
    ``w, x, y, z``; the SH coefficients are converted to the 3DGS basis and ``f_rest`` holds
    all coefficients of red, then green, then blue. ``sh_degree`` (at most 3) truncates the
    harmonics; by default every degree up to 3 that the Gaussians carry is written.
    """
    plyfile = optional_import("plyfile", "pixelsplat")
    if gaussians.means.dim() != 2:
        raise ValueError(f"gaussians must hold one scene ([G, 3] means), got {tuple(gaussians.means.shape)}")
    have = sh.degree_of(gaussians.harmonics.shape[-1])
    degree = min(have, sh.MAX_DEGREE) if sh_degree is None else sh_degree
    if not 0 <= degree <= min(have, sh.MAX_DEGREE):
        raise ValueError(f"sh_degree must be in 0..{min(have, sh.MAX_DEGREE)}, got {sh_degree}")
    g = gaussians.detach()
    n = sh.num_coefficients(degree)
    coeffs = sh.change_basis(g.harmonics[..., :n].double(), "pixelsplat", "3dgs")  # [G, 3, n]
    eps = 1e-7
    opac = g.opacities.double().clamp(eps, 1 - eps)
    quat = g.rotations.double()
    quat = quat / quat.norm(dim=-1, keepdim=True)
    columns = [
        g.means.double(), torch.zeros_like(g.means, dtype=torch.float64), coeffs[..., 0],
        coeffs[..., 1:].flatten(1), torch.log(opac / (1 - opac))[:, None], g.scales.double().log(),
        quat[:, [3, 0, 1, 2]],
    ]
    data = torch.cat(columns, dim=1).float().numpy()
    names = ply_property_names(degree)
    vertex = np.empty(data.shape[0], dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    with atomic_path(path) as tmp:
        plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")]).write(str(tmp))
    return Path(path)


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS ``.ply`` (ours or any 3DGS tool's) into :class:`Gaussians` (P1 inverted)."""
    plyfile = optional_import("plyfile", "pixelsplat")
    ply = plyfile.PlyData.read(str(path))
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element; not a 3DGS .ply")
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    n_rest = sum(name.startswith("f_rest_") for name in names)
    degree = sh.degree_of(n_rest // 3 + 1)
    missing = [p for p in ply_property_names(degree) if p not in names and p not in ("nx", "ny", "nz")]
    if missing:
        raise ValueError(f"{path}: missing 3DGS vertex properties {missing}")

    def col(*keys: str) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float64) for k in keys], -1))

    n = sh.num_coefficients(degree)
    dc = col("f_dc_0", "f_dc_1", "f_dc_2")[..., None]
    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]).view(-1, 3, n - 1) if n_rest else dc[..., :0]
    coeffs = sh.change_basis(torch.cat([dc, rest], dim=-1), "3dgs", "pixelsplat")
    quat_wxyz = col("rot_0", "rot_1", "rot_2", "rot_3")
    rotations = quat_wxyz[:, [1, 2, 3, 0]]
    rotations = rotations / rotations.norm(dim=-1, keepdim=True)
    scales = col("scale_0", "scale_1", "scale_2").exp()
    out = Gaussians(
        means=col("x", "y", "z"),
        covariances=build_covariance(scales, rotations),
        scales=scales,
        rotations=rotations,
        harmonics=coeffs,
        opacities=torch.sigmoid(col("opacity")[:, 0]),
    )
    return Gaussians(**{f.name: getattr(out, f.name).float() for f in fields(out)})


def sh_degree_mask(sh_degree: int) -> Tensor:
    """Per-coefficient multiplier ``0.1 * 0.25^l`` for degree ``l >= 1``, 1 for DC (E11b)."""
    degrees = torch.cat([torch.full((2 * ell + 1,), ell) for ell in range(sh_degree + 1)])
    return torch.where(degrees == 0, 1.0, 0.1 * 0.25 ** degrees.double()).float()


def pixel_footprint(intrinsics: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """``sum_i (K^-1[:2,:2] (1/W, 1/H))_i``: size of one pixel at unit depth (E11)."""
    h, w = image_shape
    pixel = intrinsics.new_tensor([1.0 / w, 1.0 / h])
    return (torch.linalg.inv(intrinsics)[..., :2, :2] @ pixel).sum(-1)


class GaussianAdapter(nn.Module):
    """Turn per-pixel raw outputs into Gaussians (E8, E11; official ``gaussian_adapter``).

    ``raw [..., 7 + 3 d_sh]`` = 3 scale logits, 4 rotation values (x, y, z, w, camera frame)
    and ``3 x d_sh`` SH coefficients (channel-major) with ``d_sh = (sh_degree + 1)^2``. SH of
    degree 4 are predicted (so the head matches the official checkpoint) but no rasterizer
    evaluates them, so they are dropped here.
    """

    def __init__(self, sh_degree: int = 4, scale_min: float = 0.5, scale_max: float = 15.0):
        super().__init__()
        self.sh_degree, self.scale_min, self.scale_max = sh_degree, scale_min, scale_max
        self.register_buffer("sh_mask", sh_degree_mask(sh_degree), persistent=False)

    @property
    def d_in(self) -> int:
        return 7 + 3 * sh.num_coefficients(self.sh_degree)

    def forward(
        self,
        extrinsics: Tensor,  # [..., 4, 4] camera-to-world of the source view
        intrinsics: Tensor,  # [..., 3, 3] normalised
        directions: Tensor,  # [..., 3] unit ray directions in world frame
        depths: Tensor,  # [...] distance along the ray (E8)
        opacities: Tensor,  # [...]
        raw: Tensor,  # [..., 7 + 3 d_sh]
        image_shape: tuple[int, int],
    ) -> Gaussians:
        scale_raw, rot_raw, sh_raw = raw.split((3, 4, raw.shape[-1] - 7), dim=-1)
        multiplier = 0.1 * pixel_footprint(intrinsics, image_shape)  # E11: 0.1 pixel at unit depth
        scales = self.scale_min + (self.scale_max - self.scale_min) * torch.sigmoid(scale_raw)
        scales = scales * depths[..., None] * multiplier[..., None]
        c2w_rot = extrinsics[..., :3, :3]
        rot_world = c2w_rot @ quaternion_to_matrix(rot_raw)
        harmonics = sh_raw.unflatten(-1, (3, -1)) * self.sh_mask
        n = sh.num_coefficients(min(self.sh_degree, sh.MAX_DEGREE))
        harmonics = sh.rotate_coefficients(harmonics[..., :n], c2w_rot)  # camera -> world (SH3)
        rs = rot_world * scales[..., None, :]
        return Gaussians(
            means=extrinsics[..., :3, 3] + directions * depths[..., None],
            covariances=rs @ rs.transpose(-1, -2),
            scales=scales,
            rotations=matrix_to_quaternion(rot_world),
            harmonics=harmonics,
            opacities=opacities,
        )

"""Real spherical harmonics: evaluation, rotation and change of basis (Eq. E15, SH1-SH3).

Two bases of degrees 0..3 (16 functions) are used:

- ``"3dgs"``: the basis of 3D Gaussian Splatting viewers and ``.ply`` files (SH1).
- ``"pixelsplat"``: the basis of pixelSplat's modified rasterizer, which evaluates the
  3DGS formulas at the cyclically permuted direction ``(z, x, y)`` (SH2). Its degree-1 term
  is ``-C1 x k1 + C1 y k2 - C1 z k3``. Checkpoints are trained against this basis.

Coefficients live in a trailing axis of length ``(degree + 1) ** 2``. Rotation matrices and
basis changes are fitted by least squares on a fixed set of directions (SH3): exact to
float64 round-off, since both sides are polynomials of the same degree.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Basis = Literal["3dgs", "pixelsplat"]
MAX_DEGREE = 3

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_coefficients(degree: int) -> int:
    """Number of SH coefficients up to and including ``degree``: ``(degree + 1)^2``."""
    return (degree + 1) ** 2


def degree_of(num: int) -> int:
    """Inverse of :func:`num_coefficients`; raises when ``num`` is not a square."""
    d = math.isqrt(num) - 1
    if num_coefficients(d) != num or d < 0:
        raise ValueError(f"number of SH coefficients must be a square (1, 4, 9, ...), got {num}")
    return d


def _basis_3dgs(dirs: Tensor, degree: int) -> Tensor:
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy),
                _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z,
                _C3[2] * y * (4 * zz - xx - yy), _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
                _C3[4] * x * (4 * zz - xx - yy), _C3[5] * z * (xx - yy),
                _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_basis(dirs: Tensor, degree: int, basis: Basis = "pixelsplat") -> Tensor:
    """Real SH basis at unit directions ``dirs [..., 3]`` -> ``[..., (degree+1)^2]`` (SH1, SH2)."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be in 0..{MAX_DEGREE}, got {degree}")
    if basis == "pixelsplat":
        dirs = dirs[..., [2, 0, 1]]
    elif basis != "3dgs":
        raise ValueError(f"basis must be '3dgs' or 'pixelsplat', got {basis!r}")
    return _basis_3dgs(dirs, degree)


def sh_to_color(coefficients: Tensor, dirs: Tensor, basis: Basis = "pixelsplat") -> Tensor:
    """Colour ``max(0, sum_lm B_lm(dir) k_lm + 0.5)`` (Eq. E15).

    ``coefficients [..., 3, n]`` with ``n = (degree+1)^2`` (degrees above 3 are ignored, as
    in the rasterizer), ``dirs [..., 3]`` unit vectors -> ``[..., 3]``.
    """
    n = min(coefficients.shape[-1], num_coefficients(MAX_DEGREE))
    basis_values = sh_basis(dirs, degree_of(n), basis)  # [..., n]
    return (torch.einsum("...cn,...n->...c", coefficients[..., :n], basis_values) + 0.5).clamp_min(0)


def _directions(n: int = 64) -> Tensor:
    """A fixed Fibonacci set of unit directions (float64)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def _fit(x: Tensor, y: Tensor) -> Tensor:
    """Least-squares ``A`` with ``y = x @ A`` (batched)."""
    return torch.linalg.lstsq(x, y).solution


def rotation_matrix(rotation: Tensor, degree: int, basis: Basis = "pixelsplat") -> Tensor:
    """Matrix ``M`` with ``B(R d) = M B(d)`` for every direction (SH3), per degree block.

    ``rotation [..., 3, 3]`` -> ``[..., n, n]`` block diagonal, ``n = (degree+1)^2``. If ``k``
    are coefficients of a function in the frame that ``R`` maps from, ``M @ k`` are those of
    the same function in the frame it maps to: ``B(R d) . (M k) = B(d) . k``.
    """
    d = _directions().to(rotation.device)
    rot = rotation.to(torch.float64)
    x = sh_basis(d, degree, basis)  # [N, n]
    y = sh_basis(torch.einsum("...ij,nj->...ni", rot, d), degree, basis)  # [..., N, n]
    n = num_coefficients(degree)
    out = torch.zeros(*rot.shape[:-2], n, n, dtype=torch.float64, device=rotation.device)
    for ell in range(degree + 1):
        s = slice(ell * ell, (ell + 1) ** 2)
        out[..., s, s] = _fit(x[:, s].expand(*y.shape[:-2], -1, -1), y[..., s]).transpose(-1, -2)
    return out.to(rotation.dtype)


def rotate_coefficients(coefficients: Tensor, rotation: Tensor, basis: Basis = "pixelsplat") -> Tensor:
    """Express ``coefficients [..., 3, n]`` (n <= 16) in the frame ``rotation [..., 3, 3]`` maps to."""
    m = rotation_matrix(rotation, degree_of(coefficients.shape[-1]), basis).to(coefficients)
    return torch.einsum("...ij,...cj->...ci", m, coefficients)


def change_basis(coefficients: Tensor, source: Basis, target: Basis) -> Tensor:
    """Coefficients ``[..., n]`` in basis ``source`` -> the same function in basis ``target``."""
    n = coefficients.shape[-1]
    degree = degree_of(n)
    d = _directions()
    a = torch.zeros(n, n, dtype=torch.float64)
    x, y = sh_basis(d, degree, target), sh_basis(d, degree, source)
    for ell in range(degree + 1):
        s = slice(ell * ell, (ell + 1) ** 2)
        a[s, s] = _fit(x[:, s], y[:, s])  # B_source = B_target @ a
    return coefficients @ a.T.to(coefficients)

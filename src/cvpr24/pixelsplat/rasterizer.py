"""A differentiable CPU rasterizer for 3D Gaussians, exact for the 3DGS compositing rule.

``render_gaussians`` implements (E12)-(E15): EWA projection, per-pixel alpha with the 0.99
clamp and the 1/255 skip, front-to-back compositing by camera depth with early termination
once transmittance would fall below 1e-4, and view-dependent SH colour. Gradients come from
autograd and reach means, covariances, opacities and SH coefficients.

Design ("stencil splatting", R1-R4 in the docs):

- (R1) opacity-aware footprint: ``alpha >= 1/255`` exactly when the Mahalanobis distance
  ``q <= 2 ln(255 o)``; the axis-aligned box of that ellipse bounds every pixel a Gaussian
  can touch, so nothing inside the skip contour is dropped (no 3-sigma cut-off);
- (R2) Gaussians are grouped into a few square stencil sizes and alpha is evaluated on a
  ``[g, S, S]`` window by broadcasting (one gather per Gaussian, none per pixel pair);
- (R3) one sort of unique integer keys ``(view, pixel, depth rank)`` orders every
  (pixel, Gaussian) pair of every view front to back;
- (R4) transmittance in log space, ``T = exp(sum log(1 - alpha))``, with the per-pixel
  exclusive prefix sum taken from one global float64 cumulative sum; the early-termination
  rule becomes the mask ``T (1 - alpha) >= 1e-4``, which equals the sequential loop because
  ``T`` only decreases.

``backend="dense"`` evaluates every pixel against every Gaussian with the same rule; it is
the reference for tests and benchmarks, not for use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cvpr24.pixelsplat.sh import sh_to_color

ALPHA_MIN = 1.0 / 255.0  # contributions below are skipped (E13)
ALPHA_MAX = 0.99  # alpha clamp (E13)
T_MIN = 1e-4  # early termination threshold on transmittance (E14)
BLUR = 0.3  # low-pass added to the 2-D covariance (E12)
GUARD = 0.15  # 3DGS guard band: x/z, y/z clamped to [-0.15, 1.15] of the image (E12)
_STENCILS = (*range(1, 17), 20, 24, 32, 48, 64, 96, 128, 192, 256)  # window radii (R2)


@dataclass
class Projection:
    """Gaussians projected into ``V`` views: per (view, Gaussian) 2-D quantities in pixels."""

    means2d: Tensor  # [V, G, 2] (u, v), pixel centres at j + 0.5
    cov2d: Tensor  # [V, G, 2, 2] including the 0.3 px^2 blur (E12)
    conics: Tensor  # [V, G, 3] (a, b, c) of the inverse covariance
    depths: Tensor  # [V, G] camera-space z
    valid: Tensor  # [V, G] bool, z > znear


@dataclass
class RenderOutput:
    color: Tensor  # [V, 3, H, W]
    alpha: Tensor  # [V, 1, H, W], 1 - final transmittance
    depth: Tensor | None  # [V, 1, H, W], sum of w_i z_i (camera z), black background


def pixel_intrinsics(intrinsics: Tensor, image_shape: tuple[int, int]) -> Tensor:
    """Normalised intrinsics (row 0 / W, row 1 / H) -> pixel intrinsics ``[..., 3, 3]``."""
    h, w = image_shape
    scale = intrinsics.new_tensor([w, h, 1.0]).unsqueeze(-1)
    return intrinsics * scale


def project_gaussians(
    means: Tensor,
    covariances: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    image_shape: tuple[int, int],
    znear: float = 1e-2,
) -> Projection:
    """EWA projection (E12) of ``G`` Gaussians into ``V`` cameras.

    ``means [G, 3]``, ``covariances [G, 3, 3]``, ``extrinsics [V, 4, 4]`` camera-to-world
    (OpenCV), ``intrinsics [V, 3, 3]`` normalised. The Jacobian of the pinhole map is taken at
    the camera-space mean with x/z and y/z clamped to the guard band.
    """
    h, w = image_shape
    k = pixel_intrinsics(intrinsics, image_shape)
    fx, fy, cx, cy = k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None]
    rot, centre = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    cam = torch.einsum("vji,vgj->vgi", rot, means[None] - centre[:, None])  # R^T (mu - c)
    cov_cam = torch.einsum("vji,gjk,vkl->vgil", rot, covariances, rot)  # R^T S R
    valid = cam[..., 2] > znear
    z = torch.where(valid, cam[..., 2], torch.ones_like(cam[..., 2]))
    x, y = cam[..., 0], cam[..., 1]
    u, v = fx * x / z + cx, fy * y / z + cy
    tx = (x / z).clamp((-GUARD * w - cx) / fx, ((1 + GUARD) * w - cx) / fx) * z
    ty = (y / z).clamp((-GUARD * h - cy) / fy, ((1 + GUARD) * h - cy) / fy) * z
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [torch.stack([fx / z, zero, -fx * tx / z**2], -1), torch.stack([zero, fy / z, -fy * ty / z**2], -1)],
        dim=-2,
    )  # [V, G, 2, 3]
    cov2d = jac @ cov_cam @ jac.transpose(-1, -2) + BLUR * torch.eye(2, dtype=means.dtype)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    return Projection(torch.stack([u, v], -1), cov2d, conics, cam[..., 2], valid)


def gaussian_colors(harmonics: Tensor, means: Tensor, extrinsics: Tensor) -> Tensor:
    """View-dependent colour per (view, Gaussian) (E15): ``[V, G, 3]``.

    ``harmonics [G, 3, n]`` in the pixelSplat basis; the direction runs from the camera centre
    to the mean.
    """
    dirs = means[None] - extrinsics[:, None, :3, 3]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return sh_to_color(harmonics[None], dirs)


def _alpha(dx: Tensor, dy: Tensor, conic: Tensor, opacity: Tensor) -> tuple[Tensor, Tensor]:
    """Unclamped ``o exp(-q/2)`` and the exponent, broadcasting ``conic [..., 3]`` (E13)."""
    a, b, c = conic[..., 0, None], conic[..., 1, None], conic[..., 2, None]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    return opacity[..., None] * power.exp(), power


class _WindowAlpha(torch.autograd.Function):
    """``alpha = o exp(-q/2)`` (E13) on a separable ``[g, Sy, Sx]`` pixel window, with a
    hand-written backward.

    The window's pixel centres are ``px [g, Sx]`` by ``py [g, Sy]``, so every term of ``q``
    is an outer sum or product of per-axis vectors and every gradient sum over the window
    reduces to per-axis sums: the forward needs three window-sized operations before ``exp``,
    the backward four, where autograd through (E13) keeps a dozen window-sized intermediates.
    """

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, means2d: Tensor, conic: Tensor, opacity: Tensor) -> Tensor:
        dx = px - means2d[:, 0, None]  # [g, Sx]
        dy = py - means2d[:, 1, None]  # [g, Sy]
        a, b, c = conic[:, 0, None], conic[:, 1, None], conic[:, 2, None]
        power = (-0.5 * c * dy * dy)[:, :, None] + (-0.5 * a * dx * dx)[:, None, :]
        power = power - (b * dy)[:, :, None] * dx[:, None, :]
        alpha = power.exp_().mul_(opacity[:, None, None])
        ctx.save_for_backward(dx, dy, conic, opacity, alpha)
        return alpha

    @staticmethod
    def backward(ctx, grad: Tensor):
        dx, dy, conic, opacity, alpha = ctx.saved_tensors
        t = grad * alpha  # [g, Sy, Sx]
        t_x, t_y = t.sum(1), t.sum(2)  # [g, Sx], [g, Sy]
        s_dx, s_dy = (t_x * dx).sum(1), (t_y * dy).sum(1)
        s_dxdy = ((t * dy[:, :, None]).sum(1) * dx).sum(1)
        a, b, c = conic.unbind(-1)
        grad_means = torch.stack([a * s_dx + b * s_dy, b * s_dx + c * s_dy], dim=-1)
        grad_conic = torch.stack([-0.5 * (t_x * dx * dx).sum(1), -s_dxdy, -0.5 * (t_y * dy * dy).sum(1)], -1)
        grad_opacity = t_x.sum(1) / opacity
        return None, None, grad_means, grad_conic, grad_opacity


def _pairs_stencil(proj: Projection, opacities: Tensor, rank: Tensor, image_shape: tuple[int, int]
                   ) -> tuple[Tensor, Tensor]:
    """All (view, pixel, Gaussian) pairs with alpha >= 1/255 (R1, R2).

    ``rank [V, G]`` is each Gaussian's depth rank in its view. Returns unclamped alpha ``[N]``
    and each pair's sort key ``(v * H * W + pixel) << B | rank`` ``[N]`` (R3; ``B`` from
    :func:`_rank_bits`), built per window by broadcasting, so no per-pair gather is needed.
    """
    h, w = image_shape
    n_views, n_gauss = proj.depths.shape
    bits = _rank_bits(n_gauss)
    device = proj.means2d.device
    with torch.no_grad():
        opa = opacities.detach().expand(n_views, n_gauss)
        q_max = 2 * torch.log((255.0 * opa).clamp_min(1.0))  # alpha >= 1/255 <=> q <= q_max (R1)
        cov = proj.cov2d.detach()
        half_x = (q_max * cov[..., 0, 0]).sqrt()
        half_y = (q_max * cov[..., 1, 1]).sqrt()
        u, v = proj.means2d.detach().unbind(-1)
        live = proj.valid & (opa >= ALPHA_MIN) & torch.isfinite(u) & torch.isfinite(v)
        live &= (u - 0.5 + half_x >= 0) & (u - 0.5 - half_x <= w - 1)
        live &= (v - 0.5 + half_y >= 0) & (v - 0.5 - half_y <= h - 1)
        # pixel centres j + 0.5 within h of u lie within floor(h + 0.5) of round(u - 0.5)
        radius = (torch.maximum(half_x, half_y) + 0.5).floor().nan_to_num(0)
        stencils = torch.tensor(_STENCILS, dtype=radius.dtype, device=device)
        cls = torch.searchsorted(stencils, radius.clamp_max(_STENCILS[-1]))
        full = (2 * stencils[cls] + 1 >= max(h, w)) | (radius > _STENCILS[-1])
        cls = torch.where(full, len(_STENCILS), cls)
        cls = torch.where(live, cls, -1).flatten()
        centre_x = torch.where(live, u - 0.5, 0).round().flatten().long()
        centre_y = torch.where(live, v - 0.5, 0).round().flatten().long()
        view = torch.arange(n_views, device=device).repeat_interleave(n_gauss)
        # key of the window centre: (flat pixel) << B | depth rank
        base = ((view * (h * w) + centre_y * w + centre_x) << bits) + rank.flatten()
    means2d = proj.means2d.flatten(0, 1)
    conics = proj.conics.flatten(0, 1)
    opa_flat = opacities.expand(n_views, n_gauss).flatten()
    alphas, keys = [], []
    for k in cls.unique().tolist():
        if k < 0:
            continue
        idx = (cls == k).nonzero().squeeze(1)  # flat (view, Gaussian) indices
        if k == len(_STENCILS):  # footprint as large as the image: every pixel
            ox, oy = torch.arange(w, device=device), torch.arange(h, device=device)
            cx, cy = torch.zeros_like(centre_x[idx]), torch.zeros_like(centre_y[idx])
            start = ((view[idx] * (h * w)) << bits) + rank.flatten()[idx]
        else:
            ox = oy = torch.arange(-_STENCILS[k], _STENCILS[k] + 1, device=device)
            cx, cy, start = centre_x[idx], centre_y[idx], base[idx]
        px, py = cx[:, None] + ox, cy[:, None] + oy  # [g, Sx], [g, Sy] pixel indices
        dtype = means2d.dtype
        # the conic is positive definite (E12 adds 0.3 I), so the exponent is never positive
        alpha = _WindowAlpha.apply(px.to(dtype) + 0.5, py.to(dtype) + 0.5, means2d[idx], conics[idx], opa_flat[idx])
        with torch.no_grad():
            inside = ((py >= 0) & (py < h))[:, :, None] & ((px >= 0) & (px < w))[:, None, :]
            flat = (inside & (alpha >= ALPHA_MIN)).view(-1).nonzero().squeeze(1)  # one nonzero per class
            offsets = (oy[:, None] * w + ox[None, :]).flatten() << bits  # [Sy*Sx] key offsets
            keys.append((start[:, None] + offsets).view(-1).index_select(0, flat))
        alphas.append(alpha.view(-1).index_select(0, flat))
    if not alphas:
        return opacities.new_zeros(0), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(alphas), torch.cat(keys)


def _rank_bits(num_gaussians: int) -> int:
    """Bits of the depth rank in a sort key: pixel and rank come back by shift and mask (R3)."""
    return max(1, (num_gaussians - 1).bit_length())


def _sort_keys(key: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending unique keys and the permutation that sorts them (R3).

    On CPU the keys are packed with their positions as ``key << 32 | position`` and sorted by
    numpy's vectorised sort, several times faster than ``torch.sort`` at a million pairs; keys
    are unique, so every sort gives the same order.
    """
    n = key.numel()
    if key.device.type == "cpu" and 0 < n < 2**32 and int(key.max()) < 2**31:
        packed = (key << 32) | torch.arange(n)
        packed = torch.from_numpy(np.sort(packed.numpy()))
        return packed >> 32, packed & 0xFFFFFFFF
    return torch.sort(key)


def _composite(alpha: Tensor, key: Tensor, by_rank: Tensor, features: Tensor, num_pixels: int
               ) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of unsorted pairs (R3, R4; E13, E14).

    ``key [N]`` as built by the pair functions, ``by_rank [V, G]`` the Gaussian at each depth
    rank of each view, ``features [V*G, C]``. Returns ``sum_i w_i f_i`` per pixel
    ``[C, num_pixels]`` and the final transmittance ``[num_pixels]``.
    """
    n_views, n_gauss = by_rank.shape
    bits = _rank_bits(n_gauss)
    key, order = _sort_keys(key)
    pixel = key >> bits  # v * H * W + pixel, ascending
    # v * G for every pixel (a monotone gather, cheaper than an int64 division), then the
    # Gaussian at the key's depth rank: flat (view, Gaussian) index
    view = torch.arange(n_views, device=key.device).repeat_interleave(num_pixels // n_views) * n_gauss
    view = view.index_select(0, pixel)
    gauss = view + by_rank.flatten().index_select(0, view + (key & ((1 << bits) - 1)))
    alpha = alpha.index_select(0, order).clamp_max(ALPHA_MAX)
    log_t = torch.log1p(-alpha.double())  # log(1 - alpha), float64 (R4)
    total = log_t.cumsum(0)
    exclusive = total - log_t
    n = pixel.numel()
    first = torch.ones(n, dtype=torch.bool, device=pixel.device)
    first[1:] = pixel[1:] != pixel[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n, device=pixel.device), 0), 0).values
    prefix = exclusive - exclusive[start]  # log T_i, exclusive per pixel
    keep = (prefix + log_t).detach() >= math.log(T_MIN)  # stop before T falls below 1e-4 (E14)
    weight = (alpha * prefix.exp().to(alpha.dtype)) * keep
    # channel-major: index_select / scatter_add along the last dim are the fast CPU gathers
    contrib = weight * features.T.contiguous().index_select(1, gauss)  # [C, N]
    out = contrib.new_zeros(features.shape[-1], num_pixels).scatter_add(1, pixel.expand_as(contrib), contrib)
    log_final = log_t.new_zeros(num_pixels).index_add_(0, pixel, log_t * keep)
    return out, log_final.exp().to(features.dtype)


def _pairs_dense(proj: Projection, opacities: Tensor, rank: Tensor, image_shape: tuple[int, int],
                 max_elements: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Every (pixel, Gaussian) pair of every view, evaluated densely in Gaussian chunks (reference)."""
    h, w = image_shape
    n_views, n_gauss = proj.depths.shape
    device = proj.means2d.device
    py, px = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    px, py = px.flatten().to(opacities.dtype), py.flatten().to(opacities.dtype)
    opa = opacities.expand(n_views, n_gauss)
    chunk = max(1, max_elements // (n_views * h * w))
    alphas, keys = [], []
    for lo in range(0, n_gauss, chunk):
        sl = slice(lo, min(n_gauss, lo + chunk))
        dx = px + 0.5 - proj.means2d[:, sl, 0, None]  # [V, g, P]
        dy = py + 0.5 - proj.means2d[:, sl, 1, None]
        alpha, power = _alpha(dx, dy, proj.conics[:, sl], opa[:, sl])
        mask = proj.valid[:, sl, None] & (power <= 0) & (alpha.detach() >= ALPHA_MIN)
        v, g, p = mask.nonzero(as_tuple=True)
        alphas.append(alpha[mask])
        keys.append(((v * (h * w) + p) << _rank_bits(n_gauss)) + rank[v, lo + g])
    return torch.cat(alphas), torch.cat(keys)


def render_gaussians(
    means: Tensor,
    covariances: Tensor,
    opacities: Tensor,
    harmonics: Tensor,
    extrinsics: Tensor,
    intrinsics: Tensor,
    image_shape: tuple[int, int],
    *,
    background: Tensor | tuple[float, float, float] = (0.0, 0.0, 0.0),
    znear: float = 1e-2,
    depth: bool = False,
    backend: Literal["stencil", "dense"] = "stencil",
) -> RenderOutput:
    """Render ``G`` Gaussians of one scene into ``V`` views (E12-E15).

    Args:
        means: ``[G, 3]`` world positions.
        covariances: ``[G, 3, 3]`` world covariances.
        opacities: ``[G]`` in [0, 1].
        harmonics: ``[G, 3, n]`` SH coefficients in the pixelSplat basis, ``n = (d+1)^2``
            (degrees above 3 are ignored); ``n = 1`` is a constant colour ``C0 k + 0.5``.
        extrinsics: ``[V, 4, 4]`` camera-to-world, OpenCV axes.
        intrinsics: ``[V, 3, 3]`` normalised (row 0 divided by W, row 1 by H).
        image_shape: ``(H, W)``.
        background: RGB shown where transmittance remains.
        znear: Gaussians with camera z <= znear are culled.
        depth: also render camera-space z as a one-channel colour.
        backend: ``"stencil"`` (R1-R4) or ``"dense"`` (all pairs; reference only).
    """
    h, w = image_shape
    n_views, n_gauss = extrinsics.shape[0], means.shape[0]
    proj = project_gaussians(means, covariances, extrinsics, intrinsics, image_shape, znear)
    with torch.no_grad():
        by_rank = torch.where(proj.valid, proj.depths, torch.inf).argsort(dim=1)  # [V, G] front to back
        rank = torch.empty_like(by_rank).scatter_(1, by_rank, torch.arange(n_gauss, device=means.device).expand(
            n_views, -1).contiguous())
    pairs = _pairs_stencil if backend == "stencil" else _pairs_dense
    alpha, key = pairs(proj, opacities, rank, image_shape)
    features = gaussian_colors(harmonics, means, extrinsics).flatten(0, 1)  # [V*G, 3]
    if depth:
        features = torch.cat([features, proj.depths.flatten()[:, None]], dim=1)
    out, transmittance = _composite(alpha, key, by_rank, features, n_views * h * w)
    bg = torch.as_tensor(background, dtype=out.dtype, device=out.device)
    color = (out[:3] + transmittance * bg[:, None]).view(3, n_views, h, w).transpose(0, 1).contiguous()
    alpha_img = (1 - transmittance).view(n_views, 1, h, w)
    depth_img = out[3].view(n_views, 1, h, w) if depth else None
    return RenderOutput(color, alpha_img, depth_img)

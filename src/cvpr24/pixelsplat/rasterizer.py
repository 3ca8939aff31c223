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

import torch
from torch import Tensor

from cvpr24.pixelsplat.sh import sh_to_color

ALPHA_MIN = 1.0 / 255.0  # contributions below are skipped (E13)
ALPHA_MAX = 0.99  # alpha clamp (E13)
T_MIN = 1e-4  # early termination threshold on transmittance (E14)
BLUR = 0.3  # low-pass added to the 2-D covariance (E12)
GUARD = 0.15  # 3DGS guard band: x/z, y/z clamped to [-0.15, 1.15] of the image (E12)
_STENCILS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


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
    """``alpha = o exp(-q/2)`` on a ``[g, S*S]`` pixel window, with a hand-written backward.

    Autograd through the dozen elementwise ops of (E13) keeps all their window-sized
    intermediates; the closed-form gradient needs five products and seven row sums.
    """

    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, means2d: Tensor, conic: Tensor, opacity: Tensor) -> Tensor:
        dx = px - means2d[:, 0, None]
        dy = py - means2d[:, 1, None]
        alpha, _ = _alpha(dx, dy, conic, opacity)
        ctx.save_for_backward(dx, dy, conic, opacity, alpha)
        return alpha

    @staticmethod
    def backward(ctx, grad: Tensor):
        dx, dy, conic, opacity, alpha = ctx.saved_tensors
        t = grad * alpha
        tdx, tdy = t * dx, t * dy
        s_dx, s_dy = tdx.sum(1), tdy.sum(1)
        a, b, c = conic.unbind(-1)
        grad_means = torch.stack([a * s_dx + b * s_dy, b * s_dx + c * s_dy], dim=-1)
        grad_conic = torch.stack([-0.5 * (tdx * dx).sum(1), -(tdx * dy).sum(1), -0.5 * (tdy * dy).sum(1)], -1)
        grad_opacity = t.sum(1) / opacity
        return None, None, grad_means, grad_conic, grad_opacity


def _pairs_stencil(proj: Projection, opacities: Tensor, image_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """All (view, pixel, Gaussian) pairs with alpha >= 1/255 (R1, R2).

    Returns unclamped alpha ``[N]``, flat pixel index ``v * H * W + p`` ``[N]`` and flat
    Gaussian index ``v * G + g`` ``[N]``.
    """
    h, w = image_shape
    n_views, n_gauss = proj.depths.shape
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
        stencils = torch.tensor(_STENCILS, dtype=radius.dtype)
        cls = torch.searchsorted(stencils, radius.clamp_max(_STENCILS[-1]))
        full = (2 * stencils[cls] + 1 >= max(h, w)) | (radius > _STENCILS[-1])
        cls = torch.where(full, len(_STENCILS), cls)
        cls = torch.where(live, cls, -1).flatten()
        centre_x = torch.where(live, u - 0.5, 0).round().flatten()
        centre_y = torch.where(live, v - 0.5, 0).round().flatten()
        view = torch.arange(n_views, dtype=u.dtype).repeat_interleave(n_gauss)
        base = view * (h * w) + centre_y * w + centre_x  # flat pixel index of the window centre
    means2d = proj.means2d.flatten(0, 1)
    conics = proj.conics.flatten(0, 1)
    opa_flat = opacities.expand(n_views, n_gauss).flatten()
    alphas, pixels, gaussians = [], [], []
    for k in cls.unique().tolist():
        if k < 0:
            continue
        idx = (cls == k).nonzero().squeeze(1)  # flat (view, Gaussian) indices
        if k == len(_STENCILS):  # footprint as large as the image: every pixel
            oy, ox = torch.meshgrid(torch.arange(h, dtype=u.dtype), torch.arange(w, dtype=u.dtype), indexing="ij")
            cx, cy, start = torch.zeros_like(centre_x[idx]), torch.zeros_like(centre_y[idx]), view[idx] * (h * w)
        else:
            off = torch.arange(-_STENCILS[k], _STENCILS[k] + 1, dtype=u.dtype)
            oy, ox = torch.meshgrid(off, off, indexing="ij")
            cx, cy, start = centre_x[idx], centre_y[idx], base[idx]
        ox, oy = ox.flatten(), oy.flatten()
        px, py = cx[:, None] + ox, cy[:, None] + oy  # [g, S*S] pixel indices (as floats)
        # the conic is positive definite (E12 adds 0.3 I), so the exponent is never positive
        alpha = _WindowAlpha.apply(px + 0.5, py + 0.5, means2d[idx], conics[idx], opa_flat[idx])
        with torch.no_grad():
            mask = (px >= 0) & (px < w) & (py >= 0) & (py < h) & (alpha >= ALPHA_MIN)
            flat = mask.view(-1).nonzero().squeeze(1)
            window = ox.numel()
            row = torch.div(flat, window, rounding_mode="floor")
            pix = (start[:, None] + (oy * w + ox)).view(-1)[flat].long()
        alphas.append(alpha.view(-1)[flat])
        pixels.append(pix)
        gaussians.append(idx[row])
    if not alphas:
        empty = torch.zeros(0, dtype=torch.long)
        return opacities.new_zeros(0), empty, empty
    return torch.cat(alphas), torch.cat(pixels), torch.cat(gaussians)


def _composite(
    alpha: Tensor,
    pixel: Tensor,
    gauss: Tensor,
    rank: Tensor,
    features: Tensor,
    num_pixels: int,
    num_gaussians: int,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of unsorted pairs (R3, R4; E13, E14).

    ``rank [V*G]`` is each Gaussian's depth rank in its view, ``features [V*G, C]``. Returns
    ``sum_i w_i f_i`` per pixel ``[num_pixels, C]`` and the final transmittance ``[num_pixels]``.
    """
    dtype = torch.int32 if num_pixels * num_gaussians < 2**31 else torch.int64
    key = (pixel * num_gaussians + rank[gauss]).to(dtype)
    order = torch.sort(key).indices  # keys are unique, so stability does not matter (R3)
    pixel, gauss = pixel[order], gauss[order]
    alpha = alpha[order].clamp_max(ALPHA_MAX)
    log_t = torch.log1p(-alpha.double())  # log(1 - alpha), float64 (R4)
    total = log_t.cumsum(0)
    exclusive = total - log_t
    n = pixel.numel()
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = pixel[1:] != pixel[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n), 0), 0).values
    prefix = exclusive - exclusive[start]  # log T_i, exclusive per pixel
    keep = (prefix + log_t).detach() >= math.log(T_MIN)  # stop before T falls below 1e-4 (E14)
    weight = (alpha * prefix.exp().to(alpha.dtype)) * keep
    out = features.new_zeros(num_pixels, features.shape[-1])
    out.index_add_(0, pixel, weight[:, None] * features[gauss])
    log_final = log_t.new_zeros(num_pixels).index_add_(0, pixel, log_t * keep)
    return out, log_final.exp().to(features.dtype)


def _pairs_dense(proj: Projection, opacities: Tensor, image_shape: tuple[int, int],
                 max_elements: int = 1 << 22) -> tuple[Tensor, Tensor, Tensor]:
    """Every (pixel, Gaussian) pair of every view, evaluated densely in Gaussian chunks (reference)."""
    h, w = image_shape
    n_views, n_gauss = proj.depths.shape
    py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    px, py = px.flatten().to(opacities.dtype), py.flatten().to(opacities.dtype)
    opa = opacities.expand(n_views, n_gauss)
    chunk = max(1, max_elements // (n_views * h * w))
    alphas, pixels, gaussians = [], [], []
    for lo in range(0, n_gauss, chunk):
        sl = slice(lo, min(n_gauss, lo + chunk))
        dx = px + 0.5 - proj.means2d[:, sl, 0, None]  # [V, g, P]
        dy = py + 0.5 - proj.means2d[:, sl, 1, None]
        alpha, power = _alpha(dx, dy, proj.conics[:, sl], opa[:, sl])
        mask = proj.valid[:, sl, None] & (power <= 0) & (alpha.detach() >= ALPHA_MIN)
        v, g, p = mask.nonzero(as_tuple=True)
        alphas.append(alpha[mask])
        pixels.append(v * (h * w) + p)
        gaussians.append(v * n_gauss + lo + g)
    return torch.cat(alphas), torch.cat(pixels), torch.cat(gaussians)


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
    pairs = _pairs_stencil if backend == "stencil" else _pairs_dense
    alpha, pixel, gauss = pairs(proj, opacities, image_shape)
    with torch.no_grad():
        depth_key = torch.where(proj.valid, proj.depths, torch.inf)
        rank = torch.empty(n_views, n_gauss, dtype=torch.long)
        rank.scatter_(1, depth_key.argsort(dim=1), torch.arange(n_gauss).expand(n_views, -1).contiguous())
    features = gaussian_colors(harmonics, means, extrinsics).flatten(0, 1)  # [V*G, 3]
    if depth:
        features = torch.cat([features, proj.depths.flatten()[:, None]], dim=1)
    out, transmittance = _composite(alpha, pixel, gauss, rank.flatten(), features, n_views * h * w, n_gauss)
    bg = torch.as_tensor(background, dtype=out.dtype)
    color = out[:, :3] + transmittance[:, None] * bg
    color = color.view(n_views, h, w, 3).permute(0, 3, 1, 2)
    alpha_img = (1 - transmittance).view(n_views, 1, h, w)
    depth_img = out[:, 3].view(n_views, 1, h, w) if depth else None
    return RenderOutput(color, alpha_img, depth_img)

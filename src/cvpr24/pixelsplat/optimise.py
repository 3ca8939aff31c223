"""Per-scene optimisation of pixel-aligned Gaussians (Claim A): probabilistic depth (E5-E10)
against direct depth regression (the Z=1, gpp=1 ablation), with no network.

Both methods place Gaussians on the context pixels' rays, with the context pixel's colour
(DC harmonic) and the isotropic scale of (E11) with a zero logit, and optimise with Adam on
the MSE of the target views only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cvpr24.pixelsplat.gaussians import pixel_footprint
from cvpr24.pixelsplat.geometry import (
    bounds_shim,
    depth_to_relative_disparity,
    get_world_rays,
    relative_disparity_to_depth,
    sample_image_grid,
)
from cvpr24.pixelsplat.model import sample_buckets
from cvpr24.pixelsplat.rasterizer import render_gaussians
from cvpr24.pixelsplat.sh import _C0


@dataclass
class SceneSetup:
    origins: Tensor  # [2, P, 3]
    directions: Tensor  # [2, P, 3]
    harmonics: Tensor  # [2, P, 3, 1] DC giving the context pixel colour
    scale_per_depth: Tensor  # [2, 1] isotropic E11 scale per unit depth (raw logit 0)
    near: Tensor  # [2, 1]
    far: Tensor  # [2, 1]


def setup(example: dict[str, Tensor]) -> SceneSetup:
    """Rays, colours and bounds (E0) of the two context views of ``example``."""
    images, ext, k = example["images"][:2], example["extrinsics"][:2], example["intrinsics"][:2]
    h, w = images.shape[-2:]
    xy = sample_image_grid((h, w)).flatten(0, 1)
    o, d = get_world_rays(xy, ext[:, None], k[:, None])
    colour = images.flatten(2).transpose(1, 2)  # [2, P, 3]
    near, far = bounds_shim(ext[None], k[None], (h, w))
    scale = (0.5 + (15 - 0.5) * 0.5) * 0.1 * pixel_footprint(k, (h, w))  # sigmoid(0) = 0.5 (E11)
    return SceneSetup(o, d, ((colour - 0.5) / _C0)[..., None], scale[:, None], near[0, :, None], far[0, :, None])


class ProbabilisticDepth(torch.nn.Module):
    """Free per-pixel logits and offsets over Z buckets; gpp samples per pixel (E5-E10)."""

    def __init__(self, num_pixels: int, num_buckets: int = 32, gaussians_per_pixel: int = 3):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(2, num_pixels, num_buckets))
        self.offsets = torch.nn.Parameter(torch.zeros(2, num_pixels, num_buckets))
        self.gpp = gaussians_per_pixel

    def forward(self, s: SceneSetup, mode: str = "sample", generator: torch.Generator | None = None):
        phi = self.logits.softmax(-1)
        index = sample_buckets(phi, self.gpp, mode, generator)
        r = (index + self.offsets.sigmoid().gather(-1, index)) / phi.shape[-1]
        depth = relative_disparity_to_depth(r, s.near[..., None], s.far[..., None])  # [2, P, gpp]
        return depth, phi.gather(-1, index) / self.gpp

    def argmax_depth(self, s: SceneSetup) -> Tensor:
        z = self.logits.argmax(-1, keepdim=True)
        r = (z + self.offsets.sigmoid().gather(-1, z))[..., 0] / self.logits.shape[-1]
        return relative_disparity_to_depth(r, s.near, s.far)


class DirectDepth(torch.nn.Module):
    """One disparity logit per pixel, opacity 1 (Z=1, gpp=1): direct depth regression."""

    def __init__(self, num_pixels: int, init: Tensor | float = 0.0):
        super().__init__()
        self.raw = torch.nn.Parameter(torch.zeros(2, num_pixels) + init)

    def forward(self, s: SceneSetup, mode: str = "sample", generator: torch.Generator | None = None):
        depth = relative_disparity_to_depth(self.raw.sigmoid(), s.near, s.far)[..., None]
        return depth, torch.ones_like(depth)

    def argmax_depth(self, s: SceneSetup) -> Tensor:
        return relative_disparity_to_depth(self.raw.sigmoid(), s.near, s.far)

    @classmethod
    def at_depth(cls, s: SceneSetup, num_pixels: int, depth: float) -> DirectDepth:
        """Initialised at a constant ``depth`` (the mid-depth control; not from the paper)."""
        r = depth_to_relative_disparity(torch.tensor(depth), s.near, s.far).clamp(1e-4, 1 - 1e-4)
        return cls(num_pixels, torch.logit(r).expand(2, num_pixels))


def render(field: torch.nn.Module, s: SceneSetup, ext: Tensor, k: Tensor, image_shape: tuple[int, int],
           mode: str = "sample", generator: torch.Generator | None = None) -> Tensor:
    """Render the depth field's Gaussians into views ``ext [T, 4, 4]`` -> ``[T, 3, H, W]``."""
    depth, opacity = field(s, mode, generator)  # [2, P, n]
    n = depth.shape[-1]
    means = (s.origins[..., None, :] + s.directions[..., None, :] * depth[..., None]).reshape(-1, 3)
    sigma = (s.scale_per_depth[..., None] * depth).reshape(-1)
    cov = sigma[:, None, None] ** 2 * torch.eye(3)
    harm = s.harmonics[:, :, None].expand(-1, -1, n, -1, -1).reshape(-1, 3, 1)
    return render_gaussians(means, cov, opacity.reshape(-1), harm, ext, k, image_shape).color


def fit(field: torch.nn.Module, s: SceneSetup, targets: dict[str, Tensor], steps: int, seed: int,
        lr: float = 0.05, curve: list | None = None) -> torch.nn.Module:
    """Adam on the MSE of the target views (all in one rasterizer call)."""
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(targets["images"].shape[-2:])
    for _ in range(steps):
        pred = render(field, s, targets["extrinsics"], targets["intrinsics"], shape, generator=gen)
        loss = (pred - targets["images"]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if curve is not None:
            curve.append(float(-10 * torch.log10(loss.detach())))
    return field

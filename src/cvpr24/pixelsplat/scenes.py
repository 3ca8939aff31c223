"""Procedural "billboard worlds" for the CPU reproduction, ray-cast analytically.

A scene is a textured background plane at depth 8-12 and 2-4 textured rectangles at depth
1.5-6 (half of them tilted by up to 30 degrees), seen by two context cameras one baseline
unit apart along x (small random yaw/pitch) and target cameras interpolated between them.
Textures are products of sinusoids with periods of 3-8 pixels at the plane's depth (half
with a checkerboard), so the photometric loss is multimodal in depth. Ground truth images
are ray-cast with 3 x 3 supersampling; ground-truth depth is the distance along the pixel's
ray. Everything is deterministic given the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cvpr24.pixelsplat.geometry import get_world_rays, sample_image_grid


@dataclass
class Plane:
    centre: Tensor  # [3]
    axis_u: Tensor  # [3] unit, in-plane
    axis_v: Tensor  # [3] unit, in-plane
    half: tuple[float, float]  # half extents along u, v (inf for the background)
    period: tuple[float, float]  # texture periods in world units
    phase: tuple[float, float]
    colours: Tensor  # [2, 3]
    checker: float  # checker period in world units, 0 for none


@dataclass
class BillboardScene:
    planes: list[Plane]
    focal: float  # normalised fx = fy

    def camera(self, fraction: float, yaw: tuple[float, float], pitch: tuple[float, float]) -> Tensor:
        """Camera-to-world at ``fraction`` of the way from context 0 to context 1."""
        y = yaw[0] + fraction * (yaw[1] - yaw[0])
        p = pitch[0] + fraction * (pitch[1] - pitch[0])
        ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        m = torch.eye(4)
        m[:3, :3] = ry @ rx
        m[0, 3] = fraction
        return m

    def intrinsics(self) -> Tensor:
        return torch.tensor([[self.focal, 0, 0.5], [0, self.focal, 0.5], [0, 0, 1]])

    def cast(self, extrinsics: Tensor, image_shape: tuple[int, int], supersample: int = 3) -> tuple[Tensor, Tensor]:
        """Ray-cast one view -> image ``[3, H, W]`` (box-filtered) and ray depth ``[H, W]`` (centre)."""
        h, w = image_shape
        s = supersample
        xy_fine = sample_image_grid((h * s, w * s))
        colour, _ = self._cast_rays(xy_fine.flatten(0, 1), extrinsics)
        image = colour.view(h, s, w, s, 3).mean(dim=(1, 3)).permute(2, 0, 1)
        _, depth = self._cast_rays(sample_image_grid((h, w)).flatten(0, 1), extrinsics)
        return image, depth.view(h, w)

    def _cast_rays(self, xy: Tensor, extrinsics: Tensor) -> tuple[Tensor, Tensor]:
        o, d = get_world_rays(xy, extrinsics, self.intrinsics())
        best_t = torch.full(xy.shape[:1], torch.inf)
        colour = torch.zeros(xy.shape[0], 3)
        for plane in self.planes:
            normal = torch.linalg.cross(plane.axis_u, plane.axis_v)
            denom = d @ normal
            t = ((plane.centre - o) @ normal) / denom
            p = o + t[:, None] * d - plane.centre
            su, sv = p @ plane.axis_u, p @ plane.axis_v
            hit = (t > 0) & (su.abs() <= plane.half[0]) & (sv.abs() <= plane.half[1]) & (t < best_t)
            m = 0.5 + 0.5 * torch.sin(2 * math.pi * su / plane.period[0] + plane.phase[0]) * torch.sin(
                2 * math.pi * sv / plane.period[1] + plane.phase[1])
            if plane.checker > 0:
                parity = (torch.floor(su / plane.checker) + torch.floor(sv / plane.checker)) % 2
                m = torch.where(parity == 1, 1 - m, m)
            c = plane.colours[0] * (1 - m[:, None]) + plane.colours[1] * m[:, None]
            colour = torch.where(hit[:, None], c, colour)
            best_t = torch.where(hit, t, best_t)
        return colour, best_t


def make_scene(seed: int, image_size: int) -> tuple[BillboardScene, dict]:
    """A random billboard scene and its camera path parameters (yaw, pitch per context)."""
    g = torch.Generator().manual_seed(seed)

    def u(a: float, b: float) -> float:
        return a + (b - a) * torch.rand((), generator=g).item()

    focal = u(0.8, 1.2)
    pixel_at_unit_depth = 1.0 / (focal * image_size)

    def texture(depth: float) -> dict:
        return dict(period=(u(3, 8) * depth * pixel_at_unit_depth, u(3, 8) * depth * pixel_at_unit_depth),
                    phase=(u(0, 2 * math.pi), u(0, 2 * math.pi)), colours=torch.rand(2, 3, generator=g),
                    checker=(u(4, 10) * depth * pixel_at_unit_depth if torch.rand((), generator=g) < 0.5 else 0.0))

    ex, ey, ez = torch.eye(3)
    bg_depth = u(8, 12)
    planes = [Plane(torch.tensor([0.5, 0.0, bg_depth]), ex.clone(), ey.clone(), (math.inf, math.inf),
                    **texture(bg_depth))]
    for _ in range(int(torch.randint(2, 5, (), generator=g))):
        depth = u(1.5, 6)
        fov_half = 0.5 / focal * depth
        centre = torch.tensor([0.5 + u(-0.8, 0.8) * fov_half, u(-0.8, 0.8) * fov_half, depth])
        axis_u, axis_v = ex.clone(), ey.clone()
        if torch.rand((), generator=g) < 0.5:  # tilt about the vertical axis by up to 30 degrees
            a = math.radians(u(-30, 30))
            axis_u = torch.tensor([math.cos(a), 0.0, math.sin(a)])
        half = (u(0.15, 0.45) * fov_half, u(0.15, 0.45) * fov_half)
        planes.append(Plane(centre, axis_u, axis_v, half, **texture(depth)))
    # nearer rectangles first does not matter: the caster keeps the closest hit
    path = {"yaw": (math.radians(u(-5, 5)), math.radians(u(-5, 5))),
            "pitch": (math.radians(u(-3, 3)), math.radians(u(-3, 3)))}
    return BillboardScene(planes, focal), path


def render_example(seed: int, image_size: int, fractions: tuple[float, ...]) -> dict[str, Tensor]:
    """Views at ``fractions`` (0 and 1 are the context cameras) of scene ``seed``.

    Returns ``images [V, 3, H, W]``, ``depths [V, H, W]`` (ray distance), ``extrinsics
    [V, 4, 4]``, ``intrinsics [V, 3, 3]``.
    """
    scene, path = make_scene(seed, image_size)
    images, depths, exts = [], [], []
    for f in fractions:
        ext = scene.camera(f, path["yaw"], path["pitch"])
        img, dep = scene.cast(ext, (image_size, image_size))
        images.append(img)
        depths.append(dep)
        exts.append(ext)
    k = scene.intrinsics().expand(len(fractions), 3, 3).clone()
    return {"images": torch.stack(images), "depths": torch.stack(depths), "extrinsics": torch.stack(exts),
            "intrinsics": k}

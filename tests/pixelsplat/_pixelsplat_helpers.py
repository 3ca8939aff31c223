"""Independent references for the pixelsplat tests: a sequential compositor and scenes."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def random_rotation(gen: torch.Generator, dtype=torch.float64) -> Tensor:
    q = torch.randn(4, generator=gen, dtype=dtype)
    q = q / q.norm()
    w, x, y, z = q
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])


def look_at_cameras(n_views: int, dtype=torch.float64) -> Tensor:
    """Cameras on a small arc at z=0 looking roughly along +z (c2w, OpenCV)."""
    out = []
    for i in range(n_views):
        yaw = 0.08 * (i - (n_views - 1) / 2)
        c, s = math.cos(yaw), math.sin(yaw)
        m = torch.eye(4, dtype=dtype)
        m[:3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype)
        m[0, 3] = 0.5 * (i - (n_views - 1) / 2)
        out.append(m)
    return torch.stack(out)


def random_scene(g: int, seed: int, dtype=torch.float64, opaque_fraction: float = 0.3,
                 sh: int = 4) -> dict[str, Tensor]:
    """Gaussians in front of the cameras; some opaque (alpha clamped at 0.99), some faint."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(g, 3, generator=gen, dtype=dtype) * torch.tensor([3.0, 3.0, 3.0], dtype=dtype)
    means += torch.tensor([-1.5, -1.5, 2.0], dtype=dtype)
    scales = 0.05 + 0.25 * torch.rand(g, 3, generator=gen, dtype=dtype)
    rots = torch.stack([random_rotation(gen, dtype) for _ in range(g)])
    cov = rots @ torch.diag_embed(scales**2) @ rots.transpose(-1, -2)
    opac = 0.02 + 0.6 * torch.rand(g, generator=gen, dtype=dtype)
    opaque = torch.rand(g, generator=gen) < opaque_fraction
    opac = torch.where(opaque, torch.ones_like(opac), opac)
    harm = 0.5 * torch.randn(g, 3, sh, generator=gen, dtype=dtype)
    return {"means": means, "covariances": cov, "opacities": opac, "harmonics": harm}


def intrinsics(n_views: int, dtype=torch.float64, f: float = 0.9) -> Tensor:
    k = torch.tensor([[f, 0, 0.5], [0, f * 1.1, 0.5], [0, 0, 1]], dtype=dtype)
    return k.expand(n_views, 3, 3).clone()


def pinhole(p: Tensor, fx, fy, cx, cy) -> Tensor:
    return torch.stack([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])


def sequential_render(means, covariances, opacities, colors, extrinsics, intrinsics_, shape,
                      znear=1e-2, with_depth=False, stats=None):
    """The CUDA loop, one Gaussian at a time per pixel in depth order (float64 reference).

    ``colors [V, G, 3]`` are given per view (SH evaluated by the caller). The EWA Jacobian is
    taken by autograd of the pinhole map (an independent projection).
    """
    h, w = shape
    images, depths = [], []
    py, px = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pix = torch.stack([px.flatten(), py.flatten()], -1).to(means.dtype) + 0.5
    for v in range(extrinsics.shape[0]):
        rot, t = extrinsics[v, :3, :3], extrinsics[v, :3, 3]
        fx, fy = intrinsics_[v, 0, 0] * w, intrinsics_[v, 1, 1] * h
        cx, cy = intrinsics_[v, 0, 2] * w, intrinsics_[v, 1, 2] * h
        cam = (means - t) @ rot
        order = torch.argsort(cam[:, 2].detach())
        T = torch.ones(h * w, dtype=means.dtype)
        done = torch.zeros(h * w, dtype=torch.bool)
        img = torch.zeros(h * w, 3, dtype=means.dtype)
        dep = torch.zeros(h * w, dtype=means.dtype)
        for g in order.tolist():
            p = cam[g]
            if p[2] <= znear:
                continue
            lim_x = ((-0.15 * w - cx) / fx, (1.15 * w - cx) / fx)
            lim_y = ((-0.15 * h - cy) / fy, (1.15 * h - cy) / fy)
            pc = torch.stack([(p[0] / p[2]).clamp(*lim_x) * p[2], (p[1] / p[2]).clamp(*lim_y) * p[2], p[2]])
            # the EWA Jacobian by autograd of the pinhole map, checked against its closed form,
            # which is then used (it must stay differentiable in the mean)
            jac = torch.autograd.functional.jacobian(lambda q, k=(fx, fy, cx, cy): pinhole(q, *k), pc.detach())
            jac_d = torch.stack([
                torch.stack([fx / p[2], torch.zeros_like(p[2]), -fx * pc[0] / p[2] ** 2]),
                torch.stack([torch.zeros_like(p[2]), fy / p[2], -fy * pc[1] / p[2] ** 2]),
            ])
            assert torch.allclose(jac_d.detach(), jac, atol=1e-9, rtol=1e-9)
            cov2 = jac_d @ rot.T @ covariances[g] @ rot @ jac_d.T + 0.3 * torch.eye(2, dtype=means.dtype)
            conic = torch.linalg.inv(cov2)
            mu = pinhole(p, fx, fy, cx, cy)
            d = pix - mu
            power = -0.5 * torch.einsum("pi,ij,pj->p", d, conic, d)
            alpha = (opacities[g] * power.exp()).clamp_max(0.99)
            use = (~done) & (power <= 0) & (alpha.detach() >= 1 / 255)
            test_t = T * (1 - alpha)
            stop = use & (test_t.detach() < 1e-4)
            done = done | stop
            if stats is not None:
                stats["terminated"] = stats.get("terminated", 0) + int(stop.sum())
                clamped = use & ~stop & (opacities[g] * power.exp() >= 0.99)
                stats["clamped"] = stats.get("clamped", 0) + int(clamped.sum())
            use = use & ~stop
            wgt = torch.where(use, alpha * T, torch.zeros_like(alpha))
            img = img + wgt[:, None] * colors[v, g]
            dep = dep + wgt * p[2]
            T = torch.where(use, test_t, T)
        images.append(img.T.reshape(3, h, w))
        depths.append(dep.reshape(1, h, w))
    out = torch.stack(images), torch.stack(depths)
    return out if with_depth else out[0]


def write_billboard_chunks(root, n_chunks: int = 2, scenes_per_chunk: int = 2, frames: int = 5, size: int = 8):
    """Official-format chunks of billboard scenes (PNG frames along each scene's camera path)
    under ``root`` with ``index.json``; returns the scene keys per chunk file."""
    from cvpr24.pixelsplat.data import Scene, encode_image, write_chunk, write_index
    from cvpr24.pixelsplat.scenes import render_example

    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for c in range(n_chunks):
        scenes = []
        for s in range(scenes_per_chunk):
            key = f"scene{c}_{s}"
            ex = render_example(500 + 10 * c + s, size, tuple(i / (frames - 1) for i in range(frames)))
            scenes.append(Scene(key, ex["extrinsics"], ex["intrinsics"],
                                [encode_image(img, "PNG") for img in ex["images"]], torch.arange(frames)))
        name = f"{c:06d}.torch"
        write_chunk(scenes, root / name)
        names[name] = [s.key for s in scenes]
    write_index(root, names)
    return names

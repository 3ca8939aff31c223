"""The CPU rasterizer against a sequential float64 brute force, closed forms and invariances."""

import math

import pytest
import torch
from _pixelsplat_helpers import intrinsics, look_at_cameras, random_scene, sequential_render

from cvpr24.pixelsplat.rasterizer import gaussian_colors, project_gaussians, render_gaussians
from cvpr24.pixelsplat.sh import _C0

PARAMS = ("means", "covariances", "opacities", "harmonics")


def _render(scene, ext, k, shape, **kw):
    return render_gaussians(scene["means"], scene["covariances"], scene["opacities"], scene["harmonics"],
                            ext, k, shape, **kw)


def test_matches_sequential_brute_force_images_and_every_gradient():
    scene = {k: v.requires_grad_(True) for k, v in random_scene(120, seed=0, opaque_fraction=0.5).items()}
    ext, k, shape = look_at_cameras(2), intrinsics(2), (16, 14)
    gen = torch.Generator().manual_seed(5)
    w_color = torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64)
    w_depth = torch.randn(2, 1, *shape, generator=gen, dtype=torch.float64)

    out = _render(scene, ext, k, shape, depth=True)
    grads = torch.autograd.grad((out.color * w_color).sum() + (out.depth * w_depth).sum(),
                                [scene[p] for p in PARAMS])
    stats = {}
    colors = gaussian_colors(scene["harmonics"], scene["means"], ext)
    ref, ref_depth = sequential_render(scene["means"], scene["covariances"], scene["opacities"], colors,
                                       ext, k, shape, with_depth=True, stats=stats)
    ref_grads = torch.autograd.grad((ref * w_color).sum() + (ref_depth * w_depth).sum(),
                                    [scene[p] for p in PARAMS])
    # the scene exercises early termination and the 0.99 clamp
    assert stats["terminated"] >= 5 and stats["clamped"] >= 2, stats
    assert (out.color - ref).abs().max() <= 1e-10
    assert (out.depth - ref_depth).abs().max() <= 1e-10
    for name, g, r in zip(PARAMS, grads, ref_grads, strict=True):
        assert r.abs().max() > 0, name
        assert (g - r).abs().max() <= 1e-9 * r.abs().max(), name


def test_gradcheck_small_scene():
    scene = random_scene(4, seed=3, opaque_fraction=0.25)
    ext, k = look_at_cameras(1), intrinsics(1)
    names = list(PARAMS)

    def fn(*tensors):
        s = dict(zip(names, tensors, strict=True))
        return _render(s, ext, k, (8, 8)).color

    inputs = tuple(scene[n].requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_single_isotropic_gaussian_closed_form():
    size, f, z, s, o = 65, 0.8, 4.0, 0.06, 0.8
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    cov = (s**2 * torch.eye(3, dtype=torch.float64))[None]
    harm = torch.full((1, 3, 1), 0.7, dtype=torch.float64)
    k = torch.tensor([[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]], dtype=torch.float64)
    out = render_gaussians(means, cov, torch.tensor([o], dtype=torch.float64), harm,
                           torch.eye(4, dtype=torch.float64)[None], k, (size, size))
    sigma2 = (f * size * s / z) ** 2 + 0.3  # sigma'^2 = (f s / z)^2 + 0.3 px^2
    r2 = ((torch.arange(size, dtype=torch.float64) - size // 2) ** 2)
    r2 = r2[:, None] + r2[None, :]
    alpha = o * torch.exp(-r2 / (2 * sigma2))
    expected = torch.where(alpha >= 1 / 255, alpha, 0.0) * (_C0 * 0.7 + 0.5)
    assert (out.color[0, 0] - expected).abs().max() <= 1e-6
    assert out.color[0, 0, size // 2, size // 2] == pytest.approx(o * (_C0 * 0.7 + 0.5), abs=1e-12)


def _two_opaque(order):
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]])[order]
    cov = (0.3**2 * torch.eye(3)).expand(2, 3, 3)[order]
    on, off = 0.5 / _C0, -0.5 / _C0  # colours exactly 1 and 0
    harm = torch.tensor([[[on], [off], [off]], [[off], [on], [off]]])[order]  # red near, green far
    opacities = torch.tensor([1.0, 0.5])[order]
    return render_gaussians(means, cov, opacities, harm, torch.eye(4)[None],
                            torch.tensor([[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]]), (9, 9),
                            background=(0.0, 0.0, 1.0))


def test_nearer_opaque_gaussian_wins_in_any_order_and_clamp_lets_light_through():
    a, b = _two_opaque([0, 1]).color, _two_opaque([1, 0]).color
    assert torch.equal(a, b)
    centre = a[0, :, 4, 4]
    # alpha clamps to 0.99: 1 % of light passes the red Gaussian to the green one behind
    assert centre[0] == pytest.approx(0.99, rel=1e-5)
    assert centre[1] == pytest.approx(0.01 * 0.5, rel=1e-3)
    assert a[0, 2, 0, 0] == pytest.approx(1.0)  # background where no Gaussian reaches


def test_skip_below_one_over_255():
    means = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    cov = (1e-4 * torch.eye(3, dtype=torch.float64))[None]
    harm = torch.zeros(1, 3, 1, dtype=torch.float64)
    k = torch.tensor([[[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)[None]
    below = render_gaussians(means, cov, torch.tensor([0.99 / 255], dtype=torch.float64), harm, eye, k, (5, 5))
    above = render_gaussians(means, cov, torch.tensor([1.2 / 255], dtype=torch.float64), harm, eye, k, (5, 5))
    assert below.alpha.abs().max() == 0
    assert above.alpha.max() > 1 / 255


def test_permutation_invariance_float32_full_size():
    scene = {k: v.float() for k, v in random_scene(6144, seed=1, opaque_fraction=0.3).items()}
    ext, k = look_at_cameras(2, torch.float32), intrinsics(2, torch.float32)
    perm = torch.randperm(6144, generator=torch.Generator().manual_seed(0))
    a = _render(scene, ext, k, (32, 32)).color
    b = _render({n: v[perm] for n, v in scene.items()}, ext, k, (32, 32)).color
    assert (a - b).abs().max() <= 1e-6


def test_float32_matches_float64_and_dense_path():
    scene64 = random_scene(1500, seed=2, opaque_fraction=0.3)
    ext, k = look_at_cameras(2), intrinsics(2)
    ref = _render(scene64, ext, k, (32, 32)).color
    scene32 = {n: v.float() for n, v in scene64.items()}
    out32 = _render(scene32, ext.float(), k.float(), (32, 32)).color
    dense32 = _render(scene32, ext.float(), k.float(), (32, 32), backend="dense").color
    assert (out32.double() - ref).abs().max() <= 1e-5
    assert (dense32 - out32).abs().max() <= 1e-5


def test_views_in_one_call_equal_separate_calls():
    scene = random_scene(200, seed=4)
    ext, k = look_at_cameras(3), intrinsics(3)
    joint = _render(scene, ext, k, (12, 16), depth=True)
    for v in range(3):
        single = _render(scene, ext[v:v + 1], k[v:v + 1], (12, 16), depth=True)
        assert torch.allclose(joint.color[v], single.color[0], atol=1e-12)
        assert torch.allclose(joint.depth[v], single.depth[0], atol=1e-12)


def test_global_scale_invariance():
    scene = random_scene(150, seed=5)
    ext, k = look_at_cameras(2), intrinsics(2)
    s = 3.7
    scaled = dict(scene, means=scene["means"] * s, covariances=scene["covariances"] * s**2)
    ext_s = ext.clone()
    ext_s[:, :3, 3] *= s
    a = _render(scene, ext, k, (14, 14)).color
    b = _render(scaled, ext_s, k, (14, 14)).color
    assert (a - b).abs().max() <= 1e-10


def test_projection_returns_pixel_of_point_on_ray():
    # a point on the ray through pixel (i, j) projects to that pixel's centre, for a general K
    ext = look_at_cameras(2)
    k = torch.tensor([[0.9, 0.0, 0.45], [0.0, 1.1, 0.55], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    h, w = 10, 12
    j, i = 7, 3
    xy = torch.tensor([(j + 0.5) / w, (i + 0.5) / h, 1.0], dtype=torch.float64)
    d = torch.linalg.inv(k[0]) @ xy
    point = ext[0, :3, :3] @ (d / d.norm() * 5.0) + ext[0, :3, 3]
    proj = project_gaussians(point[None], torch.eye(3, dtype=torch.float64)[None] * 0.01, ext, k, (h, w))
    assert torch.allclose(proj.means2d[0, 0], torch.tensor([j + 0.5, i + 0.5], dtype=torch.float64))
    assert proj.depths[0, 0] == pytest.approx(5.0 * (d / d.norm())[2].item())
    assert math.isfinite(proj.conics.sum().item())


def test_gaussians_behind_the_camera_are_culled():
    scene = random_scene(50, seed=6)
    scene["means"] = scene["means"] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    out = _render(scene, torch.eye(4, dtype=torch.float64)[None], intrinsics(1), (8, 8))
    assert out.alpha.abs().max() == 0

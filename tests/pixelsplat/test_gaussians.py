"""SH bases and rotations, covariances, the Gaussian adapter and the 3DGS .ply convention."""

import math

import numpy as np
import pytest
import torch
from _pixelsplat_helpers import random_rotation

from cvpr24.pixelsplat import sh
from cvpr24.pixelsplat.gaussians import (
    GaussianAdapter,
    Gaussians,
    build_covariance,
    matrix_to_quaternion,
    ply_property_names,
    quaternion_to_matrix,
    read_ply,
    write_ply,
)


def _dirs(n, seed):
    d = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return d / d.norm(dim=-1, keepdim=True)


def test_3dgs_basis_is_orthonormal_on_the_sphere():
    # quadrature on a dense Fibonacci sphere: integral of B_i B_j = delta_ij (4 pi / N weights)
    d = sh._directions(20000)
    b = sh.sh_basis(d, 3, "3dgs")
    gram = b.T @ b * (4 * math.pi / d.shape[0])
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_pixelsplat_basis_degree_one_is_the_documented_permutation():
    d = _dirs(20, 0)
    b = sh.sh_basis(d, 1, "pixelsplat")
    c1 = 0.4886025119029199
    assert torch.allclose(b[:, 1:], torch.stack([-c1 * d[:, 0], c1 * d[:, 1], -c1 * d[:, 2]], -1))


@pytest.mark.parametrize("basis", ["3dgs", "pixelsplat"])
def test_rotating_coefficients_equals_rotating_directions(basis):
    gen = torch.Generator().manual_seed(1)
    rot = random_rotation(gen)
    k = torch.randn(5, 3, 16, generator=gen, dtype=torch.float64)
    d = _dirs(5, 2)
    k_rot = sh.rotate_coefficients(k, rot, basis)
    before = torch.einsum("gcn,gn->gc", k, sh.sh_basis(d, 3, basis))
    after = torch.einsum("gcn,gn->gc", k_rot, sh.sh_basis(d @ rot.T, 3, basis))
    assert torch.allclose(before, after, atol=1e-10)


def test_change_basis_preserves_the_function_and_round_trips():
    k = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    d = _dirs(4, 4)
    k3 = sh.change_basis(k, "pixelsplat", "3dgs")
    a = torch.einsum("gcn,gn->gc", k, sh.sh_basis(d, 3, "pixelsplat"))
    b = torch.einsum("gcn,gn->gc", k3, sh.sh_basis(d, 3, "3dgs"))
    assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(sh.change_basis(k3, "3dgs", "pixelsplat"), k, atol=1e-10)
    assert torch.allclose(k3[..., 0], k[..., 0], atol=1e-12)  # DC is shared


def test_covariance_symmetric_psd_with_eigenvalues_scales_squared_and_xyzw_order():
    gen = torch.Generator().manual_seed(5)
    scales = 0.1 + torch.rand(6, 3, generator=gen, dtype=torch.float64)
    quats = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    cov = build_covariance(scales, quats)
    assert torch.allclose(cov, cov.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(cov)
    assert torch.allclose(eig, (scales**2).sort(-1).values, atol=1e-12)
    # x, y, z, w: (sin(t/2) e_z, cos(t/2)) rotates by t about z
    t = 0.7
    r = quaternion_to_matrix(torch.tensor([0, 0, math.sin(t / 2), math.cos(t / 2)], dtype=torch.float64))
    expected = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]],
                            dtype=torch.float64)
    assert torch.allclose(r, expected, atol=1e-12)
    q = matrix_to_quaternion(quaternion_to_matrix(quats))
    qn = quats / quats.norm(dim=-1, keepdim=True)
    assert torch.allclose(q.abs(), qn.abs(), atol=1e-10)


def _scene(g=50, degree=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = 0.01 + torch.rand(g, 3, generator=gen)
    rot = torch.randn(g, 4, generator=gen)
    rot = rot / rot.norm(dim=-1, keepdim=True)
    return Gaussians(
        means=torch.randn(g, 3, generator=gen), covariances=build_covariance(scales, rot), scales=scales,
        rotations=rot, harmonics=torch.randn(g, 3, (degree + 1) ** 2, generator=gen),
        opacities=torch.rand(g, generator=gen).clamp(0.01, 0.99),
    )


def test_ply_round_trip_and_3dgs_conventions(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = _scene()
    g.opacities[0] = 0.5
    path = g.to_ply(tmp_path / "scene.ply")
    ply = plyfile.PlyData.read(str(path))
    names = [p.name for p in ply["vertex"].properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [
        f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                               "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == ply_property_names(3)
    assert all(p.val_dtype in ("float32", "f4") for p in ply["vertex"].properties)
    v = ply["vertex"]
    assert v["opacity"][0] == 0.0  # logit(0.5)
    assert np.allclose(v["scale_0"], np.log(g.scales[:, 0].numpy()), atol=1e-6)
    assert np.allclose(v["rot_0"], g.rotations[:, 3].numpy(), atol=1e-6)  # w first
    # f_rest is per channel: the 15 red coefficients (3DGS basis) come first
    k3 = sh.change_basis(g.harmonics.double(), "pixelsplat", "3dgs")
    assert np.allclose(v["f_rest_0"], k3[:, 0, 1].numpy(), atol=1e-5)
    assert np.allclose(v["f_rest_15"], k3[:, 1, 1].numpy(), atol=1e-5)
    back = read_ply(path)
    eps = 4 * torch.finfo(torch.float32).eps
    for name in ("means", "scales", "rotations", "opacities", "covariances", "harmonics"):
        a, b = getattr(g, name), getattr(back, name)
        assert torch.allclose(a, b, atol=eps * 10, rtol=eps * 10), name


def test_ply_view_dependent_colour_survives_the_basis_change(tmp_path):
    pytest.importorskip("plyfile")
    g = _scene(g=8, degree=3, seed=1)
    back = read_ply(g.to_ply(tmp_path / "s.ply"))
    d = _dirs(8, 9).float()
    assert torch.allclose(sh.sh_to_color(g.harmonics, d), sh.sh_to_color(back.harmonics, d), atol=1e-5)


def test_ply_degree_zero_and_bad_degree(tmp_path):
    pytest.importorskip("plyfile")
    g = _scene(g=4, degree=3)
    back = read_ply(write_ply(g, tmp_path / "dc.ply", sh_degree=0))
    assert back.harmonics.shape == (4, 3, 1)
    with pytest.raises(ValueError, match="sh_degree"):
        write_ply(g, tmp_path / "bad.ply", sh_degree=4)
    assert not (tmp_path / "bad.ply").exists()


def test_adapter_scales_rotations_and_world_frame():
    adapter = GaussianAdapter(sh_degree=4).double()
    gen = torch.Generator().manual_seed(0)
    rot = random_rotation(gen)
    ext = torch.eye(4, dtype=torch.float64)
    ext[:3, :3] = rot
    ext[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    k = torch.tensor([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]], dtype=torch.float64)
    raw = torch.randn(10, adapter.d_in, generator=gen, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3, generator=gen, dtype=torch.float64), dim=-1)
    depth = 1 + torch.rand(10, generator=gen, dtype=torch.float64)
    out = adapter(ext, k, dirs, depth, torch.full((10,), 0.3, dtype=torch.float64), raw, (64, 64))
    assert adapter.d_in == 7 + 3 * 25
    # E11: scale = [0.5 + 14.5 sigmoid(raw)] * depth * 0.1 * (1/64 + 1/64)
    expected = (0.5 + 14.5 * torch.sigmoid(raw[:, :3])) * depth[:, None] * 0.1 * (2 / 64)
    assert torch.allclose(out.scales, expected)
    assert torch.allclose(out.means, ext[:3, 3] + dirs * depth[:, None])
    cam_cov = build_covariance(expected, raw[:, 3:7])
    assert torch.allclose(out.covariances, rot @ cam_cov @ rot.T, atol=1e-12)
    assert torch.allclose(build_covariance(out.scales, out.rotations), out.covariances, atol=1e-12)
    assert out.harmonics.shape == (10, 3, 16)  # degree 4 predicted, dropped (no renderer uses it)
    # world-frame SH evaluated at R d equal camera-frame SH (with the 0.1 * 0.25^l mask) at d
    cam_sh = raw[:, 7:].view(10, 3, 25)[..., :16] * adapter.sh_mask[:16]
    d = _dirs(10, 3)
    a = torch.einsum("gcn,gn->gc", cam_sh, sh.sh_basis(d, 3))
    b = torch.einsum("gcn,gn->gc", out.harmonics, sh.sh_basis(d @ rot.T, 3))
    assert torch.allclose(a, b, atol=1e-10)

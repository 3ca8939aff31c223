import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpr24.text2hoi.losses import penetration_loss
from cvpr24.text2hoi.metrics import (
    contact_iou,
    contact_ratio,
    diversity,
    fid,
    multimodality,
    penetration_depth,
    penetration_volume,
    physical_realism,
)
from cvpr24.text2hoi.toyhoi import ToyHOI


def test_fid_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 4))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    mu = np.array([0.5, -1.0, 0.3, 0.0])
    b = rng.standard_normal((4000, 4)) + mu
    assert fid(a, b) == pytest.approx(float(mu @ mu), rel=0.05, abs=0.02)


def test_diversity_and_multimodality():
    same = np.ones((50, 8))
    assert diversity(same) == 0.0
    f = np.concatenate([np.zeros((10, 2)), np.ones((10, 2))])
    groups = np.array([0] * 10 + [1] * 10)
    assert multimodality(f, groups) == 0.0  # samples of one text are identical
    assert diversity(f, n_pairs=2000) == pytest.approx(np.sqrt(2) / 2, rel=0.1)


def test_penetration_depth_sphere_sdf_and_ratio():
    r = 0.05
    sdf = lambda p: p.norm(dim=-1) - r
    verts = torch.tensor([[0.0, 0.0, r - 0.003], [0.0, 0.0, r + 0.1], [r + 0.002, 0.0, 0.0]])
    assert float(penetration_depth(sdf(verts))) == pytest.approx(0.003, abs=1e-7)
    assert float(contact_ratio(sdf(verts))) == pytest.approx(2 / 3)
    assert float(penetration_depth(sdf(verts[1:]))) == 0.0


def test_nearest_vertex_normal_test_agrees_with_sdf_sign():
    # a sphere mesh's vertices with outward normals: its interior points are "inside" by T18
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(4000, 3, generator=g), dim=-1) * 0.05
    n = F.normalize(v, dim=-1)
    p = (torch.rand(2000, 3, generator=g) * 2 - 1) * 0.08
    sd = p.norm(dim=-1) - 0.05
    keep = sd.abs() > 0.001
    d = torch.cdist(p, v).argmin(-1)
    inside = ((v[d] - p) * n[d]).sum(-1) > 0
    assert torch.equal(inside[keep], (sd < 0)[keep])
    # and L_penet is 0 for disjoint sets
    assert float(penetration_loss(p[None, None, sd > 0.01], v[None, None], n[None, None], torch.ones(1, 1))) == 0.0


def test_trimesh_signed_distance_agrees_with_analytic_on_icosphere():
    trimesh = pytest.importorskip("trimesh")
    pytest.importorskip("rtree")  # trimesh's proximity queries need it
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.05)
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 0.02, 0.03], [0.06, 0.0, 0.0], [0.0, 0.0, -0.045]])
    ours = np.linalg.norm(pts, axis=-1) - 0.05
    theirs = -trimesh.proximity.signed_distance(mesh, pts)  # trimesh: positive inside
    assert np.allclose(ours, theirs, atol=1e-3)


def test_penetration_volume_of_two_spheres():
    r = 0.03
    a = lambda p: p.norm(dim=-1) - r
    hand = lambda p: (p - p.new_tensor([0.03, 0.0, 0.0])).norm(dim=-1) < r
    vol = penetration_volume(a, hand, torch.tensor([-0.04] * 3), torch.tensor([0.07, 0.04, 0.04]), voxel=0.001)
    h = r - 0.015  # lens of two spheres at distance d = r: 2 caps of height r - d/2
    lens = 2 * np.pi * h * h * (3 * r - h) / 3
    assert vol == pytest.approx(lens, rel=0.05)


def test_contact_iou():
    a = torch.tensor([[1.0, 1, 0, 0], [0, 0, 0, 0]])
    b = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.allclose(contact_iou(a, b), torch.tensor([1 / 3, 1.0]))


def _gt_phy(sample, hands, shift=None):
    xo = sample.x_obj.double().clone()
    if shift is not None:
        xo[:, :3] += torch.tensor(shift, dtype=torch.float64)
    sv, sj = [], []
    for use, layer, x in ((sample.is_lhand, hands.left, sample.x_lhand), (sample.is_rhand, hands.right, sample.x_rhand)):
        if use:
            o = layer.forward_rot6d(x)
            sv.append(sample.obj.world_sdf(o["vertices"].double(), xo))
            sj.append(sample.obj.world_sdf(o["joints_w_tip"].double(), xo))
    sv, sj = torch.cat(sv, -1), torch.cat(sj, -1)
    return physical_realism(penetration_depth(sv), xo, sj)


def test_phy_is_one_on_gt_and_drops_when_the_object_is_shifted_off_the_hand():
    from cvpr24.text2hoi.reproduce import hand_models

    hands = hand_models()
    gen = ToyHOI(0)
    s = gen.sample("cylinder", 0)
    assert _gt_phy(s, hands)["phy"] == 1.0
    lifted = gen.sample("ellipsoid", 0)  # a lift: the object moves while held
    assert lifted.meta["verb"] == "lift"
    assert _gt_phy(lifted, hands)["phy"] == 1.0
    # the object 5 cm off the hand: every manipulation frame (about 35 % of ToyHOI's timeline)
    # now moves without contact
    shifted = _gt_phy(lifted, hands, shift=[0.0, 0.0, 0.05])
    assert shifted["phy"] < 0.75 and shifted["moving_without_contact"] > 0.25


def test_mesh_sdf_matches_sphere_and_rejects_open_meshes():
    trimesh = pytest.importorskip("trimesh")
    from cvpr24.text2hoi.mesh import MeshSDF

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    sdf = MeshSDF(mesh)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.02, 0.03], [0.06, 0.0, 0.0], [0.0, 0.0, -0.045]], dtype=torch.float64)
    assert torch.allclose(sdf(pts), pts.norm(dim=-1) - 0.05, atol=1e-3)
    opened = trimesh.Trimesh(mesh.vertices, mesh.faces[:-3], process=False)
    with pytest.raises(ValueError, match="object_mesh is not watertight"):
        MeshSDF(opened)

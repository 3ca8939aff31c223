import math

import pytest
import torch
import torch.nn.functional as F

from cvpr24.text2hoi.geometry import (
    contact_labels,
    farthest_point_sampling,
    pc_normalize,
    transform_points,
)
from cvpr24.text2hoi.losses import (
    contact_loss,
    dice_loss,
    distance_map_loss,
    gaussian_kl,
    masked_mse,
    penetration_loss,
    relative_orientation_loss,
)
from cvpr24.text2hoi.rotations import random_rotmat, rotmat_to_rot6d


def _poses(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    r = rotmat_to_rot6d(random_rotmat(b * t, g, torch.float64)).reshape(b, t, 6)
    return torch.cat([torch.randn(b, t, 3, generator=g, dtype=torch.float64), r], -1)


def test_masked_mse_masks_and_empty_samples():
    pred = torch.randn(3, 5, 4, requires_grad=True)
    target = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    loss = masked_mse(pred, target, mask)
    loss.backward()
    assert torch.all(pred.grad[0, 2:] == 0) and torch.all(pred.grad[2] == 0)
    with torch.no_grad():
        expect = (((pred[0, :2] - target[0, :2]) ** 2).mean() + ((pred[1] - target[1]) ** 2).mean() + 0) / 3
        assert torch.allclose(loss, expect)
        empty = masked_mse(pred, target, torch.zeros(3, 5))
    assert torch.isfinite(empty) and float(empty) == 0.0


def test_distance_map_loss_zero_at_gt_ignores_non_contacts_and_gradchecks():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(2, 3, 10, 3, generator=g, dtype=torch.float64) * 0.02
    joints = torch.randn(2, 3, 21, 3, generator=g, dtype=torch.float64) * 0.02
    dstar = torch.where(torch.cdist(pts, joints) < 0.02, torch.cdist(pts, joints), torch.zeros(()))
    assert float(distance_map_loss(pts, joints, dstar)) == 0.0
    # entries with D* = 0 are ignored: moving a joint far from every point changes nothing
    far = joints.clone()
    far[..., 0, :] += 10.0
    dstar_far = dstar.clone()
    dstar_far[..., 0] = 0
    assert float(distance_map_loss(pts, far, dstar_far)) == pytest.approx(0.0, abs=1e-24)
    j = (joints + 0.001).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda jj: distance_map_loss(pts, jj, dstar), (j,))


def test_distance_map_loss_through_tiny_fk_gradcheck():
    from cvpr24.text2hoi.mano import ManoLayer, ProceduralHand

    layer = ManoLayer(ProceduralHand(0).model()).double()
    pts = torch.randn(1, 1, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.05 + torch.tensor([0.1, 0, 0], dtype=torch.float64)
    x = torch.cat([torch.zeros(1, 1, 3), rotmat_to_rot6d(torch.eye(3).expand(1, 1, 16, 3, 3)).reshape(1, 1, 96)], -1).double()
    j0 = layer.forward_rot6d(x)["joints_w_tip"]
    d = torch.cdist(pts, j0)
    dstar = torch.where(d < 0.05, d * 0.9, torch.zeros(()))
    x = (x + 0.01).requires_grad_(True)
    f = lambda xx: distance_map_loss(pts, layer.forward_rot6d(xx, joints_only=True)["joints_w_tip"], dstar)
    assert torch.autograd.gradcheck(f, (x,), atol=1e-6)


def test_relative_orientation_loss_invariances():
    xh, xo = _poses(2, 4, 2), _poses(2, 4, 3)
    xh2, xo2 = _poses(2, 4, 4), _poses(2, 4, 5)
    mask = torch.ones(2, 4)
    assert float(relative_orientation_loss(xh, xo, xh, xo, mask)) == 0.0
    base = relative_orientation_loss(xh2, xo2, xh, xo, mask)
    g = random_rotmat(1, torch.Generator().manual_seed(6))[0]

    def rot(x, r):
        return torch.cat([x[..., :3], rotmat_to_rot6d(r @ _to_mat(x))], -1)

    same = relative_orientation_loss(rot(xh2, g), rot(xo2, g), rot(xh, g), rot(xo, g), mask)
    assert torch.allclose(same, base, atol=1e-10)  # one global rotation of all four: unchanged
    # world-frame RO = R_o R_h⁻¹: a change of the hand's own frame (R_h -> R_h G) is not invisible
    frame = lambda x: torch.cat([x[..., :3], rotmat_to_rot6d(_to_mat(x) @ g)], -1)
    hand_only = relative_orientation_loss(frame(xh2), xo2, frame(xh), xo, mask)
    assert not torch.allclose(hand_only, base, atol=1e-6)


def _to_mat(x):
    from cvpr24.text2hoi.rotations import rot6d_to_rotmat

    return rot6d_to_rotmat(x[..., 3:9])


def test_kl_dice_bce():
    g = torch.Generator().manual_seed(7)
    mu, logvar = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g) * 0.3
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    assert torch.allclose(gaussian_kl(mu, logvar), ref, atol=1e-5)
    c = (torch.rand(3, 20, generator=g) > 0.5).float()
    assert float(dice_loss(c, c)) == pytest.approx(0.0, abs=1e-7)
    p = torch.rand(3, 20, generator=g).clamp(0.01, 0.99)
    assert torch.allclose(F.binary_cross_entropy(p, c, reduction="sum"), -(c * p.log() + (1 - c) * (1 - p).log()).sum(), atol=1e-4)


def test_contact_labels_sphere_cap_closed_form():
    # points on a sphere of radius r; one joint at distance r + d from the centre
    n = 20_000
    r, d = 0.05, 0.008
    g = torch.Generator().manual_seed(8)
    pts = F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1) * r
    joint = torch.zeros(1, 21, 3, dtype=torch.float64)
    joint[0, :] = torch.tensor([0.0, 0.0, r + d], dtype=torch.float64) + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) * 10  # far joints
    joint[0, 0] = torch.tensor([0.0, 0.0, r + d], dtype=torch.float64)
    dstar, c = contact_labels(pts[None], joint)
    half_angle = math.acos((r * r + (r + d) ** 2 - 0.02**2) / (2 * r * (r + d)))
    cap_fraction = (1 - math.cos(half_angle)) / 2
    assert float(c.mean()) == pytest.approx(cap_fraction, rel=0.05)
    assert float(dstar[0, :, 0][dstar[0, :, 0] > 0].min()) == pytest.approx(d, abs=2e-4)
    # beyond 2 cm: no contact at all
    joint[0, 0, 2] = r + 0.021
    assert float(contact_labels(pts[None], joint)[1].sum()) == 0


def test_transform_conventions_and_articulation():
    pts = torch.randn(1, 5, 3, dtype=torch.float64)
    x = _poses(1, 2, 9)
    r = _to_mat(x)
    a = transform_points(pts, x, "Rp")
    b = transform_points(pts, x, "pR")
    assert torch.allclose(a[0, 1], pts[0] @ r[0, 1].T + x[0, 1, :3])
    assert torch.allclose(b[0, 1], pts[0] @ r[0, 1] + x[0, 1, :3])
    x10 = torch.cat([x, torch.full((1, 2, 1), 0.3, dtype=torch.float64)], -1)
    with pytest.raises(ValueError, match="top_mask"):
        transform_points(pts, x10)
    top = torch.tensor([1, 0, 0, 0, 1])
    c = transform_points(pts, x10, top_mask=top)
    assert torch.allclose(c[..., 1:4, :], a[..., 1:4, :])  # bottom part unchanged
    assert not torch.allclose(c[..., 0, :], a[..., 0, :])
    with pytest.raises(ValueError, match="9 or 10"):
        transform_points(pts, torch.zeros(1, 2, 8))


def test_fps_deterministic_and_padded():
    pts = torch.randn(50, 3, generator=torch.Generator().manual_seed(10))
    i = farthest_point_sampling(pts, 10)
    assert i[0] == 0 and len(set(i.tolist())) == 10 and torch.equal(i, farthest_point_sampling(pts, 10))
    j = farthest_point_sampling(pts[:4], 10)
    assert j.shape == (10,) and set(j.tolist()) == {0, 1, 2, 3}
    p, c, s = pc_normalize(pts)
    assert torch.allclose(p.norm(dim=-1).max(), torch.tensor(1.0)) and torch.allclose(p.mean(0), torch.zeros(3), atol=1e-6)


def test_penetration_loss_and_contact_loss():
    # a hand "vertex" sphere of radius 1 cm around the origin; object points inside and outside
    g = torch.Generator().manual_seed(11)
    v = F.normalize(torch.randn(1, 1, 400, 3, generator=g), dim=-1) * 0.01
    nrm = F.normalize(v, dim=-1)
    inside = torch.zeros(1, 1, 1, 3)
    far = torch.full((1, 1, 1, 3), 0.5)
    mask = torch.ones(1, 1)
    assert float(penetration_loss(far, v, nrm, mask)) == 0.0
    assert float(penetration_loss(inside, v, nrm, mask)) == pytest.approx(0.01, rel=1e-4)
    assert float(penetration_loss(inside, v, nrm, torch.zeros(1, 1))) == 0.0
    joints = torch.zeros(1, 1, 21, 3)
    joints[..., 0, :] = torch.tensor([0.0, 0.0, 0.015])
    joints[..., 1:, :] = 1.0
    obj = torch.tensor([[[[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]]])
    refined = joints.clone()
    assert float(contact_loss(refined, joints, obj, mask)) == pytest.approx(0.015, rel=1e-5)  # only joint 0 counts

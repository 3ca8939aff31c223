import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cvpr24.text2hoi.rotations import (
    axis_angle_to_rotmat,
    check_rot6d,
    random_rotmat,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
    rotmat_to_rot6d,
)


def _aa_cases(n=1000):
    g = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = torch.rand(n, 1, generator=g, dtype=torch.float64) * np.pi
    angle[:100] = np.pi - 10 ** -torch.linspace(1, 7, 100, dtype=torch.float64).unsqueeze(1)  # near π
    angle[100:200] = 10 ** -torch.linspace(1, 9, 100, dtype=torch.float64).unsqueeze(1)  # near 0
    angle[200] = 0.0
    return axis * angle


def test_rot6d_gives_proper_rotations():
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = rot6d_to_rotmat(x)
    assert torch.allclose(torch.linalg.det(r), torch.ones(500, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(r.transpose(-1, -2) @ r, torch.eye(3, dtype=torch.float64).expand(500, 3, 3), atol=1e-6)


def test_rotmat_rot6d_round_trip_and_layout():
    r = random_rotmat(200, torch.Generator().manual_seed(2))
    assert torch.allclose(rot6d_to_rotmat(rotmat_to_rot6d(r)), r, atol=1e-12)
    # row-major (3, 2) view of the first two columns
    assert torch.equal(rotmat_to_rot6d(r)[0], torch.stack([r[0, 0, 0], r[0, 0, 1], r[0, 1, 0], r[0, 1, 1], r[0, 2, 0], r[0, 2, 1]]))


def test_axis_angle_matches_scipy_including_near_0_and_pi():
    aa = _aa_cases()
    ref = torch.from_numpy(Rotation.from_rotvec(aa.numpy()).as_matrix())
    r = axis_angle_to_rotmat(aa)
    assert torch.allclose(r, ref, atol=1e-6)
    back = rotmat_to_axis_angle(ref)
    # compare as rotations (the axis sign flips at exactly π)
    assert torch.allclose(axis_angle_to_rotmat(back), ref, atol=1e-6)
    scipy_back = torch.from_numpy(Rotation.from_matrix(ref.numpy()).as_rotvec())
    away = aa.norm(dim=-1) < np.pi - 1e-3
    assert torch.allclose(back[away], scipy_back[away], atol=1e-6)


def test_rot6d_gradcheck():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rot6d_to_rotmat, (x,))


def test_degenerate_rot6d_is_guarded_or_rejected():
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 6], dtype=torch.float64)  # parallel; zero
    r = rot6d_to_rotmat(x)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(r.transpose(-1, -2) @ r, torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=1e-12)
    with pytest.raises(ValueError, match="x_lhand.*degenerate"):
        check_rot6d(x, "x_lhand")
    with pytest.raises(ValueError, match="NaN"):
        check_rot6d(torch.full((1, 6), float("nan")), "x_obj")
    check_rot6d(rotmat_to_rot6d(random_rotmat(5)))  # valid input passes
    with pytest.raises(ValueError, match="last dimension 6"):
        rot6d_to_rotmat(torch.zeros(2, 5))

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from cvpr24.text2hoi.mano import (
    ManoLayer,
    ProceduralHand,
    load_mano,
    save_mano_pickle,
    vertex_normals,
)
from cvpr24.text2hoi.rotations import axis_angle_to_rotmat, random_rotmat


@pytest.fixture(scope="module")
def right():
    return ProceduralHand(0).model(is_rhand=True)


def test_procedural_hand_round_trips_through_the_restricted_unpickler(tmp_path, right):
    path = save_mano_pickle(right, tmp_path / "MANO_RIGHT.pkl")
    loaded = load_mano(path)
    assert loaded.is_rhand
    for key in ("v_template", "shapedirs", "J_regressor", "weights", "f", "hands_mean"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(right, key))
    assert loaded.tip_ids == right.tip_ids


def _fake_chumpy_pickle(arrays: dict, path, with_x=True):
    """Pickle like the real MANO files: chumpy Ch objects (a class we define, then remove)."""
    mod, sub = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            if with_x:
                self.x = x
            else:
                self.a, self.b = x, x

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    sub.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = mod, sub
    try:
        scipy_sparse = pytest.importorskip("scipy.sparse")
        d = {k: (Ch(v) if k in ("v_template", "shapedirs") else v) for k, v in arrays.items()}
        d["J_regressor"] = scipy_sparse.csc_matrix(arrays["J_regressor"])
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_chumpy_and_sparse_pickle_loads_without_chumpy(tmp_path, right):
    path = tmp_path / "MANO_LEFT.pkl"
    _fake_chumpy_pickle(right.to_dict(), path)
    assert "chumpy" not in sys.modules
    loaded = load_mano(path)
    assert not loaded.is_rhand  # from the file name
    np.testing.assert_array_equal(loaded.v_template, right.v_template)
    np.testing.assert_allclose(loaded.J_regressor, right.J_regressor)
    assert "chumpy" not in sys.modules


def test_chumpy_expression_without_array_raises(tmp_path, right):
    path = tmp_path / "MANO_RIGHT.pkl"
    _fake_chumpy_pickle(right.to_dict(), path, with_x=False)
    with pytest.raises(ValueError, match="mano_path.*v_template.*chumpy"):
        load_mano(path)


def test_forbidden_global_raises(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_mano(path)


def test_missing_file_and_missing_keys(tmp_path, right):
    with pytest.raises(FileNotFoundError, match="mano.is.tue.mpg.de"):
        load_mano(tmp_path / "nope.pkl")
    d = right.to_dict()
    del d["posedirs"]
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(ValueError, match="mano_path.*missing keys.*posedirs"):
        load_mano(tmp_path / "m.pkl")


def test_zero_pose_gives_template_joints(right):
    layer = ManoLayer(right).double()
    out = layer(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64))
    expect = torch.from_numpy(right.J_regressor @ right.v_template)
    assert torch.allclose(out["joints"][0], expect, atol=1e-12)
    assert torch.allclose(out["vertices"][0], torch.from_numpy(right.v_template), atol=1e-12)


def test_global_rotation_rotates_about_root_and_transl_shifts(right):
    layer = ManoLayer(right).double()
    g = torch.Generator().manual_seed(3)
    pose = 0.3 * torch.randn(2, 45, generator=g, dtype=torch.float64)
    base = layer(torch.zeros(2, 3, dtype=torch.float64), pose)
    aa = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]], dtype=torch.float64)
    rot = layer(aa, pose)
    r = axis_angle_to_rotmat(aa)
    root = base["joints"][:, :1]
    expect = (r.unsqueeze(1) @ (base["joints"] - root).unsqueeze(-1)).squeeze(-1) + root
    assert torch.allclose(rot["joints"], expect, atol=1e-10)
    t = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, 0.0]], dtype=torch.float64)
    moved = layer(aa, pose, transl=t)
    assert torch.allclose(moved["vertices"], rot["vertices"] + t[:, None], atol=1e-12)
    assert torch.allclose(moved["joints_w_tip"], rot["joints_w_tip"] + t[:, None], atol=1e-12)


def test_lbs_weights_and_tips(right):
    assert np.allclose(right.weights.sum(1), 1.0)
    layer = ManoLayer(right)
    out = layer(torch.zeros(1, 3), 0.2 * torch.randn(1, 45, generator=torch.Generator().manual_seed(4)))
    tips = out["vertices"][0, list(right.tip_ids)]
    assert torch.equal(out["joints_w_tip"][0, 16:], tips)
    # at rest each tip continues its finger: index 3, middle 6, pinky 9, ring 12, thumb 15
    rest = layer(torch.zeros(1, 3), torch.zeros(1, 45))["joints_w_tip"][0]
    for k, last in enumerate((3, 6, 9, 12, 15)):
        bone = rest[last] - rest[last - 1]
        beyond = rest[16 + k] - rest[last]
        assert float(torch.nn.functional.cosine_similarity(bone, beyond, dim=0)) > 0.7
        assert float(beyond.norm()) < 0.03


def test_left_hand_mirrors_right(right):
    left = ProceduralHand(0).model(is_rhand=False)
    lr, ll = ManoLayer(right).double(), ManoLayer(left).double()
    g = torch.Generator().manual_seed(5)
    aa = 0.4 * torch.randn(3, 48, generator=g, dtype=torch.float64)
    mirror_aa = (aa.reshape(3, 16, 3) * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)).reshape(3, 48)
    out_r = lr(aa[:, :3], aa[:, 3:])
    out_l = ll(mirror_aa[:, :3], mirror_aa[:, 3:])
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(out_l["vertices"], out_r["vertices"] * flip, atol=1e-10)


def test_flat_hand_mean_adds_the_mean(right):
    flat, curled = ManoLayer(right, flat_hand_mean=True), ManoLayer(right, flat_hand_mean=False)
    z = torch.zeros(1, 3)
    a = curled(z, torch.zeros(1, 45))["vertices"]
    b = flat(z, curled.hands_mean.unsqueeze(0))["vertices"]
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, flat(z, torch.zeros(1, 45))["vertices"], atol=1e-4)
    # the rotation-matrix path adds it too
    rot = axis_angle_to_rotmat(torch.zeros(1, 16, 3))
    assert torch.allclose(curled.forward_rotmat(rot)["vertices"], a, atol=1e-5)


def test_forward_rot6d_and_batch_shapes(right):
    layer = ManoLayer(right)
    rot = random_rotmat(2 * 5 * 16, torch.Generator().manual_seed(6), torch.float32).reshape(2, 5, 16, 3, 3)
    x = torch.cat([torch.randn(2, 5, 3), rot[..., :, :2].reshape(2, 5, 96)], -1)
    out = layer.forward_rot6d(x)
    assert out["joints_w_tip"].shape == (2, 5, 21, 3)
    assert torch.allclose(out["vertices"], layer.forward_rotmat(rot, transl=x[..., :3])["vertices"], atol=1e-5)
    with pytest.raises(ValueError, match="99"):
        layer.forward_rot6d(torch.zeros(2, 98))


def test_vertex_normals_point_outward(right):
    v = torch.from_numpy(right.v_template)
    n = vertex_normals(v, torch.from_numpy(right.f))
    joints = torch.from_numpy(right.J_regressor @ right.v_template)
    # tip vertices: the normal points away from the last finger joint
    for k, last in enumerate((3, 6, 9, 12, 15)):
        tip = right.tip_ids[k]
        assert float(n[tip] @ (v[tip] - joints[last])) > 0


@pytest.mark.skipif(not os.environ.get("CVPR24_MANO_DIR"), reason="set CVPR24_MANO_DIR to a folder with MANO_RIGHT.pkl")
def test_parity_with_smplx_on_real_mano():
    smplx = pytest.importorskip("smplx")
    folder = os.environ["CVPR24_MANO_DIR"]
    model = load_mano(os.path.join(folder, "MANO_RIGHT.pkl"))
    ours = ManoLayer(model, flat_hand_mean=False).double()
    ref = smplx.MANO(folder, is_rhand=True, use_pca=False, flat_hand_mean=False).double()
    g = torch.Generator().manual_seed(7)
    go, hp = torch.randn(4, 3, generator=g, dtype=torch.float64), 0.5 * torch.randn(4, 45, generator=g, dtype=torch.float64)
    betas = torch.randn(4, 10, generator=g, dtype=torch.float64)
    a = ours(go, hp, betas)
    b = ref(global_orient=go, hand_pose=hp, betas=betas)
    assert torch.allclose(a["vertices"], b.vertices, atol=1e-6)


def test_joints_only_path_matches_full_skinning(right):
    layer = ManoLayer(right, flat_hand_mean=False)
    rot = random_rotmat(3 * 16, torch.Generator().manual_seed(8), torch.float32).reshape(3, 16, 3, 3)
    x = torch.cat([torch.randn(3, 3), rot[..., :, :2].reshape(3, 96)], -1)
    full, fast = layer.forward_rot6d(x), layer.forward_rot6d(x, joints_only=True)
    assert torch.allclose(full["joints_w_tip"], fast["joints_w_tip"], atol=1e-6)

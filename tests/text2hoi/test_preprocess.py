"""H2O / GRAB / ARCTIC preprocessing on tiny fake datasets written in each one's raw layout.

Each scene is built in world coordinates (a procedural right hand whose index tip touches a small
sphere, a left hand 1 m away), written the way the dataset stores it (H2O: camera frame + camera
pose; GRAB: 120 fps pickled dicts, object as pᵀR; ARCTIC: millimetres, articulation angle,
descriptions), and must come back as the world motion with the right labels.
"""

import fractions
import json
import pickle

import numpy as np
import pytest
import torch

from cvpr24.cli import main
from cvpr24.text2hoi.geometry import transform_points
from cvpr24.text2hoi.mano import ManoLayer, ProceduralHand
from cvpr24.text2hoi.preprocess import load_npz, preprocess
from cvpr24.text2hoi.rotations import axis_angle_to_rotmat, rot6d_to_rotmat

trimesh = pytest.importorskip("trimesh")
T = 25


def _hands(flat=True):
    hand = ProceduralHand(0)
    return ManoLayer(hand.model(False), flat), ManoLayer(hand.model(True), flat)


@pytest.fixture(scope="module")
def world():
    """Right hand moving 1 cm/frame in x with a sphere (r 2 cm) at its index tip; left hand far."""
    g = torch.Generator().manual_seed(0)
    _, right = _hands()
    pose = 0.15 * torch.randn(T, 48, generator=g, dtype=torch.float64)
    trans = torch.zeros(T, 3, dtype=torch.float64)
    trans[:, 0] = torch.arange(T) * 0.01
    tip = right(pose[:, :3], pose[:, 3:], transl=trans)["joints_w_tip"][:, 16]
    obj_rot = axis_angle_to_rotmat(torch.stack([torch.zeros(T), torch.zeros(T), torch.linspace(0, 1, T)], -1).double())
    return {
        "r_pose": pose.numpy(), "r_trans": trans.numpy(), "l_pose": np.zeros((T, 48)),
        "l_trans": np.tile([1.0, 0.0, 0.0], (T, 1)), "beta": np.zeros((T, 10)),
        "obj_rot": obj_rot.numpy(), "obj_trans": (tip + tip.new_tensor([0, 0, 0.025])).numpy(),
    }


def _sphere():
    return trimesh.creation.icosphere(subdivisions=2, radius=0.02)


def _check_world(data, world, i=0, n=T):
    s = slice(int(data["seq_start"][i]), int(data["seq_start"][i]) + n)
    np.testing.assert_allclose(data["x_rhand"][s, :3], world["r_trans"][:n], atol=1e-5)
    rot = rot6d_to_rotmat(torch.as_tensor(data["x_rhand"][s, 3:9]).double())
    np.testing.assert_allclose(rot.numpy(), axis_angle_to_rotmat(torch.as_tensor(world["r_pose"][:n, :3])).numpy(), atol=1e-5)
    np.testing.assert_allclose(data["x_obj"][s, :3], world["obj_trans"][:n], atol=1e-5)
    assert bool(data["is_rhand"][i]) and not bool(data["is_lhand"][i])


def _check_contacts(data, objects, rot_convention="Rp", i=0):
    """The stored triples are exactly the (frame, point, joint) with distance < 2 cm."""
    s = slice(int(data["seq_start"][i]), int(data["seq_start"][i] + data["nframes"][i]))
    pts = transform_points(torch.as_tensor(objects["points"][data["object_idx"][i]]).double()[None],
                           torch.as_tensor(data["x_obj"][s]).double()[None], rot_convention)[0]
    d = torch.cdist(pts, torch.as_tensor(data["j_rhand"][s]).double())
    c = slice(int(data["rcontact_start"][i]), int(data["rcontact_start"][i + 1]))
    got = set(zip(data["rcf_idx"][c].tolist(), data["rcov_idx"][c].tolist(), data["rchj_idx"][c].tolist(), strict=True))
    want = {tuple(v) for v in torch.nonzero(d < 0.02).tolist()}
    assert len(want) > 0 and len(got ^ want) <= 2  # float32 storage may move a triple across 2 cm
    assert int(data["lcontact_start"][-1]) == 0


def _write_rows(folder, rows):
    folder.mkdir(parents=True)
    for i, r in enumerate(rows):
        np.savetxt(folder / f"{i:06d}.txt", np.atleast_1d(r)[None])


def test_h2o_camera_frame_goes_back_to_the_world(tmp_path, world):
    hands = _hands()
    g = np.random.default_rng(1)
    ext = np.eye(4)
    ext[:3, :3] = axis_angle_to_rotmat(torch.as_tensor(g.normal(size=3))).numpy()
    ext[:3, 3] = g.normal(size=3)
    inv = np.linalg.inv(ext)
    mano, objs = [], []
    for side, layer in (("l", hands[0]), ("r", hands[1])):
        pose = world[f"{side}_pose"].copy()
        j0 = layer(torch.zeros(T, 3).double(), torch.zeros(T, 45).double())["joints"][:, 0].numpy()
        rw = axis_angle_to_rotmat(torch.as_tensor(pose[:, :3])).numpy()
        from cvpr24.text2hoi.rotations import rotmat_to_axis_angle

        pose[:, :3] = rotmat_to_axis_angle(torch.as_tensor(inv[:3, :3] @ rw)).numpy()
        cam_t = np.einsum("ij,tj->ti", inv[:3, :3], j0 + world[f"{side}_trans"]) + inv[:3, 3] - j0
        mano.append(np.concatenate([np.ones((T, 1)), cam_t, pose, world["beta"]], -1))
    m_world = np.tile(np.eye(4), (T, 1, 1))
    m_world[:, :3, :3], m_world[:, :3, 3] = world["obj_rot"], world["obj_trans"]
    objs = np.concatenate([np.ones((T, 1)), (inv @ m_world).reshape(T, 16)], -1)  # object 1: book
    labels = [1] * T + [0] * 3 + [9] * 10  # "grab book", background, a too short "place book"
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], 13, 0)])  # noqa: E731
    cam = tmp_path / "h2o" / "subject1" / "h1" / "0" / "cam4"
    _write_rows(cam / "hand_pose_mano", pad(np.concatenate(mano, -1)))
    _write_rows(cam / "obj_pose_rt", pad(objs))
    _write_rows(cam / "cam_pose", [ext.reshape(-1)] * (T + 13))
    _write_rows(cam / "action_label", labels)
    (tmp_path / "h2o" / "object" / "book").mkdir(parents=True)
    _sphere().export(tmp_path / "h2o" / "object" / "book" / "book.obj")
    meta = preprocess("h2o", tmp_path / "h2o", tmp_path / "out", hands)
    data, objects = np.load(tmp_path / "out" / "data.npz"), np.load(tmp_path / "out" / "objects.npz")
    assert meta["n_sequences"] == 1 and meta["flat_hand_mean"] and meta["rot_convention"] == "Rp"
    assert data["text_key"][0] == "Grab book with right hand." and int(data["nframes"][0]) == T
    assert objects["points"].shape == (1, 1024, 3) and data["x_rhand"].shape == (T, 99)
    _check_world(data, world)
    np.testing.assert_allclose(  # world joints: the encoded hand re-posed equals the scene's hand
        hands[1].forward_rot6d(torch.as_tensor(data["x_rhand"]).double())["joints_w_tip"].numpy(),
        hands[1](torch.as_tensor(world["r_pose"][:, :3]), torch.as_tensor(world["r_pose"][:, 3:]),
                 transl=torch.as_tensor(world["r_trans"]))["joints_w_tip"].numpy(), atol=1e-4)
    _check_contacts(data, objects)


def _grab_file(path, world, extra=None):
    """120 fps: each of the T frames repeated 4 times; contact from raw frame 8 to the end."""
    up = lambda a: np.repeat(a, 4, 0)  # noqa: E731
    contact = np.zeros((4 * T, 10), dtype=np.int64)
    contact[8:, 0] = 1
    side = lambda s: {"params": {"global_orient": up(world[f"{s}_pose"][:, :3]), "fullpose": up(world[f"{s}_pose"][:, 3:]),  # noqa: E731
                                 "transl": up(world[f"{s}_trans"])}, "vtemp": "x.ply"}
    aa = torch.stack([torch.zeros(T), torch.zeros(T), torch.linspace(0, 1, T)], -1).double()
    obj = {"params": {"global_orient": up(-aa.numpy()), "transl": up(world["obj_trans"])}, "object_mesh": "book.ply"}
    np.savez(path, obj_name="book", motion_intent="offhand", lhand=side("l"), rhand=side("r"), object=obj,
             contact={"object": contact, **(extra or {})}, framerate=120.0)


def test_grab_reads_pickled_npz_safely_and_keeps_pR(tmp_path, world):
    root = tmp_path / "grab"
    (root / "s1").mkdir(parents=True)
    (root / "contact_meshes").mkdir()
    _sphere().export(root / "contact_meshes" / "book.ply")
    _grab_file(root / "s1" / "book_offhand_1.npz", world)
    preprocess("grab", root, tmp_path / "out", _hands())
    data, objects = np.load(tmp_path / "out" / "data.npz"), np.load(tmp_path / "out" / "objects.npz")
    n = T - 2 - 1  # contact from downsampled frame 2; the official crop drops the last contact frame
    assert int(data["nframes"][0]) == n and data["text_key"][0] == "Hand over book with right hand."
    shifted = {k: v[2:] if k != "beta" else v for k, v in world.items()}
    _check_world(data, shifted, n=n)
    # GRAB stores the object as pᵀR (our 'pR'); the stored rotation is GRAB's own
    r = axis_angle_to_rotmat(-torch.stack([torch.zeros(T), torch.zeros(T), torch.linspace(0, 1, T)], -1).double())[2 : 2 + n]
    p = torch.as_tensor(objects["points"][0]).double()
    want = torch.einsum("ki,tij->tkj", p, r) + torch.as_tensor(world["obj_trans"][2 : 2 + n])[:, None]
    got = transform_points(p, torch.as_tensor(data["x_obj"]).double()[None], "pR")[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    _check_contacts(data, objects, "pR")
    assert list(data["split"]) == ["train"]
    # read back for training: padded to 30 frames, rotation turned into R·p, contact map from the triples
    from cvpr24.text2hoi.preprocess import load_processed
    from cvpr24.text2hoi.text import HashedTextEncoder

    batch, keys = load_processed(tmp_path / "out", HashedTextEncoder(16), max_frames=30)
    assert keys == ["Hand over book with right hand."] and batch.x_r.shape == (1, 30, 99) and batch.text.shape == (1, 16)
    assert batch.mask_r[0].sum() == n and batch.mask_l.sum() == 0 and abs(float(batch.length[0]) - n / 30) < 1e-6
    torch.testing.assert_close(transform_points(p.float(), batch.x_o[:, :n])[0], want.float(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.nonzero(batch.contact[0].numpy())[0], np.unique(data["rcov_idx"]))


def test_grab_file_with_a_foreign_global_is_refused(tmp_path, world):
    path = tmp_path / "bad.npz"
    _grab_file(path, world, extra={"payload": fractions.Fraction(1, 2)})
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_npz(path)


def test_arctic_millimetres_articulation_and_annotated_hands(tmp_path, world):
    hands = _hands(flat=False)
    root = tmp_path / "arctic"
    seq = root / "raw_seqs" / "s01"
    seq.mkdir(parents=True)
    mean = hands[1].hands_mean.numpy()  # ARCTIC poses are stored without the mean (flat_hand_mean False)
    mano = {k: {"rot": world[f"{s}_pose"][:, :3], "pose": world[f"{s}_pose"][:, 3:] - (mean if s == "r" else 0),
                "trans": world[f"{s}_trans"], "shape": np.zeros(10)} for k, s in (("left", "l"), ("right", "r"))}
    np.save(seq / "box_grab_01.mano.npy", mano)
    aa = torch.stack([torch.zeros(T), torch.zeros(T), torch.linspace(0, 1, T)], -1).numpy()
    angle = np.linspace(0, 0.5, T)
    np.save(seq / "box_grab_01.object.npy", np.concatenate([angle[:, None], aa, 1000 * world["obj_trans"]], -1))
    tmpl = root / "meta" / "object_vtemplates" / "box"
    tmpl.mkdir(parents=True)
    mesh = _sphere()
    mesh.apply_scale(1000)
    mesh.export(tmpl / "mesh.obj")
    (tmpl / "parts.json").write_text(json.dumps([int(v[2] < 0) for v in mesh.vertices]))
    desc = root / "text" / "s01" / "box_grab_01"
    desc.mkdir(parents=True)
    (desc / "description.txt").write_text(f"1-{T} grasp, right hand.\n1-{T} grasp, both hands.\n1-5 grasp, right hand.\n")
    meta = preprocess("arctic", root, tmp_path / "out", hands)
    data, objects = np.load(tmp_path / "out" / "data.npz"), np.load(tmp_path / "out" / "objects.npz")
    # "both" is dropped (the left hand never touches), 1-5 is too short: one segment remains
    assert meta["obj_dim"] == 10 and not meta["flat_hand_mean"] and meta["n_sequences"] == 1
    assert data["text_key"][0] == "Grasp box with right hand."
    np.testing.assert_allclose(data["x_obj"][:, 9], angle, atol=1e-6)
    np.testing.assert_allclose(data["x_obj"][:, :3], world["obj_trans"], atol=1e-5)  # mm -> m
    assert np.abs(objects["points"]).max() < 0.021 and set(np.unique(objects["top"])) == {0.0, 1.0}
    np.testing.assert_array_equal(objects["top"][0], (objects["points"][0, :, 2] >= 0).astype(np.float32))
    _check_world(data, world)  # the stored pose is the raw one; the layer adds the mean


def test_cli_preprocess(tmp_path, world, capsys):
    root = tmp_path / "grab"
    (root / "s9").mkdir(parents=True)
    (root / "contact_meshes").mkdir()
    _sphere().export(root / "contact_meshes" / "book.ply")
    _grab_file(root / "s9" / "book_offhand_1.npz", world)
    assert main(["text2hoi", "preprocess", "--dataset", "grab", "--root", str(root), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["n_sequences"] == 1
    assert list(np.load(tmp_path / "o" / "data.npz")["split"]) == ["test"]  # s9 is a GRAB test subject
    assert main(["text2hoi", "preprocess", "--dataset", "grab", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--root" in capsys.readouterr().err

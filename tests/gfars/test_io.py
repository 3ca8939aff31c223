"""Loaders on small files written here: prep data (restricted unpickler), official mixed-set
files (both layouts), official checkpoints (key map), meshes, npz, our checkpoints."""

import os
import pickle

import numpy as np
import pytest
import torch

from cvpr24.gfars.io import (
    load_contact_points,
    load_model,
    load_npy,
    load_npz,
    load_official_checkpoint,
    load_official_mix,
    load_official_state_dict,
    load_prep_split,
    make_mixes,
    save_model,
    save_npz,
    to_official_state_dict,
)
from cvpr24.gfars.model import GFARS, GFARSConfig

TINY = GFARSConfig.cpu(feat_len=8, pointnet_widths=(8, 8), points_per_part=16, steps=2,
                       max_iters=2)


def _prep_tree(root, n_parts=(3, 4)):
    rng = np.random.default_rng(0)
    (root / "shape_data").mkdir()
    (root / "contact_points").mkdir()
    ids = [11, 12]
    np.save(root / "Chair.train.npy", np.array(ids))
    for sid, p in zip(ids, n_parts, strict=True):
        d = {"part_pcs": rng.normal(size=(p, 16, 3)).astype(np.float32),
             "part_poses": np.zeros((p, 7), np.float32), "geo_part_ids": np.arange(p),
             "sym": [np.eye(3)], "part_ids": list(range(p))}
        np.save(root / "shape_data" / f"{sid}_level3.npy", np.array(d, dtype=object),
                allow_pickle=True)
        np.save(root / "contact_points" / f"pairs_with_contact_points_{sid}_level3.npy",
                np.zeros((p, p, 4), np.float32))
    return ids


def test_prep_data_loads_through_the_restricted_unpickler(tmp_path):
    _prep_tree(tmp_path)
    shapes = load_prep_split(tmp_path, "Chair", "train")
    assert [s["part_pcs"].shape for s in shapes] == [(3, 16, 3), (4, 16, 3)]
    assert load_contact_points(tmp_path, 12).shape == (4, 4, 4)
    mixes = make_mixes(shapes, seed=0, passes=1, n_shapes=(2,), probs=(1.0,))
    assert len(mixes) == 1 and len(mixes[0]) == 7
    assert sorted(np.bincount(mixes[0].groups).tolist()) == [3, 4]
    # shapes with too many parts are dropped
    assert len(load_prep_split(tmp_path, "Chair", "train", max_parts=3)) == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_a_foreign_object_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array({"part_pcs": _Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        load_npy(path)


def test_plain_arrays_load_without_pickle(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(4))
    assert load_npy(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]


def test_official_mix_both_layouts(tmp_path):
    t, rows = 6, 4
    parts = torch.randn(8, 16, 3)  # rows past total_parts are dummies
    poses = torch.zeros(rows, 8, 8)
    poses[0, [0, 2, 4], -1] = 1
    poses[1, [1, 3], -1] = 1
    valid = torch.zeros(rows, 8, dtype=torch.bool)
    valid[:2, :t] = True
    torch.save({"all_parts": parts, "all_poses": poses, "all_euler_poses": torch.zeros(rows, 8, 7),
                "total_parts": t, "data_valid": valid}, tmp_path / "Chair_data_0.pt")
    s = load_official_mix(tmp_path / "Chair_data_0.pt")
    assert s.parts.shape == (6, 16, 3)
    assert s.groups.tolist() == [0, 1, 0, 1, 0, -1]  # part 5 is in no valid row: noise
    torch.save({"all_parts": parts, "all_poses": poses[0], "total_parts": t},
               tmp_path / "Chair_data_1.pt")
    r = load_official_mix(tmp_path / "Chair_data_1.pt")
    assert r.meta["layout"] == "Random_MixPartRandom"
    assert r.groups.tolist() == [0, -1, 0, -1, 0, -1]


def test_official_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = GFARS(TINY).eval()
    sd = to_official_state_dict(ref)
    assert "sel_GNN.mlp1.0.weight" in sd and "sel_GNN.conv1.nn.0.weight" in sd
    assert sd["point_encoder.conv1.weight"].dim() == 3
    torch.save(sd, tmp_path / "chair.pth")
    model = load_official_checkpoint(tmp_path / "chair.pth", TINY)
    parts = torch.randn(1, 5, 16, 3)
    mask = torch.ones(1, 5, dtype=torch.bool)
    x, t = torch.rand(1, 5), torch.tensor([0.3])
    with torch.no_grad():
        torch.testing.assert_close(model.score(x, t, model.encode(parts, mask), mask),
                                   ref.score(x, t, ref.encode(parts, mask), mask),
                                   rtol=0, atol=1e-6)
    # only one copy of each duplicated key is enough
    one_copy = {k: v for k, v in sd.items() if ".nn." not in k}
    load_official_state_dict(one_copy, TINY)
    # our safetensors round trip is exact
    save_model(tmp_path / "ours.safetensors", model, seed=0)
    back = load_model(tmp_path / "ours.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


def test_official_checkpoint_errors_name_the_keys():
    sd = to_official_state_dict(GFARS(TINY))
    missing = {k: v for k, v in sd.items() if not k.startswith("sel_GNN.x_encoder")}
    with pytest.raises(KeyError, match="sel_gnn.x_encoder.weight"):
        load_official_state_dict(missing, TINY)
    with pytest.raises(KeyError, match="sel_GNN.extra_head.weight"):
        load_official_state_dict({**sd, "sel_GNN.extra_head.weight": torch.zeros(1)}, TINY)
    unequal = dict(sd)
    unequal["sel_GNN.conv2.nn.2.bias"] = sd["sel_GNN.mlp2.2.bias"] + 1
    with pytest.raises(ValueError, match="sel_GNN.conv2.nn.2.bias"):
        load_official_state_dict(unequal, TINY)


def test_npz_round_trip_and_errors(tmp_path):
    parts = np.random.default_rng(0).normal(size=(4, 16, 3)).astype(np.float32)
    save_npz(tmp_path / "s.npz", parts, np.array([0, 0, 1, 1]))
    s = load_npz(tmp_path / "s.npz")
    np.testing.assert_array_equal(s.parts, parts)
    assert s.gt_groups == [[0, 1], [2, 3]]
    np.savez(tmp_path / "bad.npz", points=parts)
    with pytest.raises(KeyError, match="parts"):
        load_npz(tmp_path / "bad.npz")


def test_mesh_folder_is_sampled_with_a_seed(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    trimesh.creation.box(extents=(1.0, 0.1, 0.5)).export(tmp_path / "a_seat.obj")
    trimesh.creation.box(extents=(0.1, 0.6, 0.1)).export(tmp_path / "b_leg.ply")
    from cvpr24.gfars.io import load_mesh_parts

    parts, names = load_mesh_parts(tmp_path, n_points=32, seed=1)
    again, _ = load_mesh_parts(tmp_path, n_points=32, seed=1)
    assert parts.shape == (2, 32, 3) and names == ["a_seat.obj", "b_leg.ply"]
    np.testing.assert_array_equal(parts, again)
    np.testing.assert_allclose(parts.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(parts[0].max(0) - parts[0].min(0), [1.0, 0.1, 0.5], atol=0.15)

"""Chunks, indices, converters, PSNR/SSIM/LPIPS."""

import json

import numpy as np
import pytest
import torch
from _pixelsplat_helpers import random_rotation

from cvpr24.pixelsplat.data import (
    Scene,
    crop_resize,
    decode_image,
    encode_image,
    from_cameras_json,
    from_colmap,
    load_chunk,
    read_evaluation_index,
    read_index,
    write_chunk,
    write_index,
)
from cvpr24.pixelsplat.geometry import project_points
from cvpr24.pixelsplat.metrics import LPIPS, lpips, psnr, ssim


def _scene(key, n=3, seed=0, size=(18, 24)):
    gen = torch.Generator().manual_seed(seed)
    ext = torch.eye(4).repeat(n, 1, 1)
    for i in range(n):
        ext[i, :3, :3] = random_rotation(gen, torch.float32)
        ext[i, :3, 3] = torch.randn(3, generator=gen)
    k = torch.tensor([[0.9, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]]).repeat(n, 1, 1)
    imgs = [encode_image(torch.rand(3, *size, generator=gen)) for _ in range(n)]
    return Scene(key, ext, k, imgs, torch.arange(n) * 1000, url="https://example.invalid")


def test_chunk_round_trip_and_index(tmp_path):
    scenes = [_scene("a", seed=1), _scene("b", n=4, seed=2)]
    write_chunk(scenes, tmp_path / "000000.torch")
    loaded = load_chunk(tmp_path / "000000.torch")
    assert [s.key for s in loaded] == ["a", "b"]
    for s, t in zip(scenes, loaded, strict=True):
        assert torch.allclose(s.extrinsics, t.extrinsics, atol=1e-5)  # c2w = inverse(stored w2c)
        assert torch.allclose(s.intrinsics, t.intrinsics)
        assert s.images == t.images
        assert decode_image(t.images[0]).shape == (3, 18, 24)
    raw = torch.load(tmp_path / "000000.torch", weights_only=True)
    w2c = torch.eye(4)
    w2c[:3] = raw[0]["cameras"][0, 6:].view(3, 4)
    assert torch.allclose(torch.linalg.inv(w2c), scenes[0].extrinsics[0], atol=1e-5)
    write_index(tmp_path, {"000000.torch": ["a", "b"]})
    assert read_index(tmp_path) == {"a": tmp_path / "000000.torch", "b": tmp_path / "000000.torch"}


def test_bad_chunks_and_cameras_name_the_problem(tmp_path):
    torch.save({"key": "x"}, tmp_path / "dict.torch")
    with pytest.raises(ValueError, match="list of scene dicts"):
        load_chunk(tmp_path / "dict.torch")
    torch.save([{"key": "x", "timestamps": torch.zeros(1)}], tmp_path / "partial.torch")
    with pytest.raises(ValueError, match="'cameras'"):
        load_chunk(tmp_path / "partial.torch")
    bad = _scene("bad")
    bad.extrinsics[0, :3, :3] *= 1.5
    with pytest.raises(ValueError, match="SE\\(3\\)"):
        write_chunk([bad], tmp_path / "bad.torch")
    assert not (tmp_path / "bad.torch").exists()


def test_evaluation_index_skips_null(tmp_path):
    (tmp_path / "ev.json").write_text(json.dumps({"a": {"context": [0, 50], "target": [10, 20, 30]}, "b": None}))
    assert read_evaluation_index(tmp_path / "ev.json") == {"a": {"context": [0, 50], "target": [10, 20, 30]}}
    (tmp_path / "bad.json").write_text(json.dumps({"a": {"context": [0]}}))
    with pytest.raises(ValueError, match="'a'"):
        read_evaluation_index(tmp_path / "bad.json")


def test_crop_shim_keeps_a_point_on_the_same_content():
    img = torch.zeros(3, 36, 64)
    img[:, 20, 40] = 1.0  # one bright pixel
    k = torch.tensor([[0.8, 0, 0.5], [0, 1.4, 0.5], [0, 0, 1]])
    ext = torch.eye(4)
    # the 3D point that projects onto the centre of pixel (row 20, col 40)
    xy = torch.tensor([(40 + 0.5) / 64, (20 + 0.5) / 36, 1.0])
    point = torch.linalg.inv(k) @ xy * 3.0
    out, k2 = crop_resize(img, k, 18)
    uv, _ = project_points(point, ext, k2)
    row, col = int(uv[1] * 18), int(uv[0] * 18)
    assert out[0].argmax() == row * 18 + col


def test_cameras_json_and_colmap_text(tmp_path):
    frames = [{"image": "a.png", "c2w": torch.eye(4).tolist(), "K": [[200, 0, 64], [0, 200, 48], [0, 0, 1]],
               "width": 128, "height": 96}]
    (tmp_path / "cams.json").write_text(json.dumps({"frames": frames}))
    names, ext, k = from_cameras_json(tmp_path / "cams.json")
    assert names == ["a.png"] and torch.allclose(k[0, 0, 2], torch.tensor(0.5))
    frames[0]["c2w"][0][0] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(ValueError, match="NaN"):
        from_cameras_json(tmp_path / "nan.json")
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    (sparse / "cameras.txt").write_text("# c\n1 PINHOLE 40 20 30 32 20 10\n")
    # a camera 2 units along +x: world-to-camera t = -R c
    (sparse / "images.txt").write_text("# i\n1 1 0 0 0 -2 0 0 1 im0.png\n\n")
    (tmp_path / "im0.png").write_bytes(encode_image(torch.rand(3, 20, 40), "PNG"))
    scene = from_colmap(tmp_path, sparse)
    assert torch.allclose(scene.extrinsics[0, :3, 3], torch.tensor([2.0, 0, 0]))
    assert torch.allclose(scene.intrinsics[0], torch.tensor([[30 / 40, 0, 0.5], [0, 32 / 20, 0.5], [0, 0, 1]]))


def test_psnr_values():
    a = torch.rand(2, 3, 8, 8)
    assert torch.allclose(psnr(a.clamp(0.2, 0.8) + 0.1, a.clamp(0.2, 0.8)), torch.tensor(20.0), atol=1e-4)
    assert torch.isfinite(psnr(a, a)).all() and psnr(a, a).min() >= 99


def test_ssim_matches_scikit_image():
    skimage = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 40, generator=gen)
    b = (a + 0.2 * torch.randn(2, 3, 32, 40, generator=gen)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = skimage.structural_similarity(a[i].numpy(), b[i].numpy(), win_size=11, gaussian_weights=True,
                                            channel_axis=0, data_range=1.0)
        assert abs(float(ours[i]) - ref) < 1e-4
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=a.dtype))


def test_lpips_needs_weights_by_path_and_loads_official_names(tmp_path):
    with pytest.raises(ValueError, match="VGG"):
        lpips(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="vgg_path"):
        LPIPS.from_paths(None, None)
    torch.manual_seed(0)
    ref = LPIPS()
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()}, tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))},
               tmp_path / "vgg.pth")
    model = LPIPS.from_paths(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    d = lpips(x, y, model)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(lpips(x, x, model), torch.zeros(2))
    assert np.isfinite(d.numpy()).all()

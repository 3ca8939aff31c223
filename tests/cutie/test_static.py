"""Static-image pre-training data: folder layouts, object masks, the pseudo-clip augmentation
(the mask follows the image), thin-plate splines, multi-object composition, and
``cvpr24 train cutie --stage static`` followed by main training from its weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from cvpr24.cutie.static import (
    StaticClipSampler,
    pseudo_clip,
    read_object_mask,
    static_images,
    tps_grid,
)

H, W = 48, 64


def _pair(image_path, mask_path, seed=0, soft=False):
    """A white ellipse on black; the mask is 255 on it (soft: 0..255 ramps at the edge)."""
    yy, xx = np.mgrid[:H, :W]
    r = ((yy - 24) / 14) ** 2 + ((xx - 30 - seed) / 18) ** 2
    inside = r <= 1
    rgb = np.repeat((inside * 255).astype(np.uint8)[..., None], 3, -1)
    mask = (np.clip((1.2 - r) / 0.4, 0, 1) * 255).astype(np.uint8) if soft else inside * 255
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_path, quality=100)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(mask_path)


def _folder(root, n=3):
    for i in range(n):
        _pair(root / f"img{i}.jpg", root / f"img{i}.png", seed=i)
    return root


def test_layouts_are_found(tmp_path):
    flat = static_images(_folder(tmp_path / "duts"))
    assert [p.image.name for p in flat] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert all(p.mask == p.image.with_suffix(".png") for p in flat)
    fss = tmp_path / "fss"  # one folder per class
    _pair(fss / "cat" / "1.jpg", fss / "cat" / "1.png")
    _pair(fss / "dog" / "1.jpg", fss / "dog" / "1.png")
    (fss / "dog" / "2.jpg").write_bytes((fss / "dog" / "1.jpg").read_bytes())  # no mask: skipped
    assert [p.image.parent.name for p in static_images(fss)] == ["cat", "dog"]
    two = tmp_path / "two"
    _pair(two / "images" / "a" / "x.jpg", two / "masks" / "a" / "x.png")
    _pair(two / "images" / "y.jpg", two / "masks" / "other.png")
    (only,) = static_images(two)
    assert only.mask == two / "masks" / "a" / "x.png"
    with pytest.raises(ValueError, match="--data: no image with a mask"):
        static_images(two / "masks", "--data")  # masks without images
    with pytest.raises(FileNotFoundError, match="--data"):
        static_images(tmp_path / "none", "--data")


def test_object_masks_are_binarised_at_half_intensity(tmp_path):
    _pair(tmp_path / "a.jpg", tmp_path / "a.png", soft=True)
    m = read_object_mask(tmp_path / "a.png")
    gray = np.array(Image.open(tmp_path / "a.png"))
    assert m.dtype == torch.bool and torch.equal(m, torch.from_numpy(gray > 127))
    assert len(np.unique(gray)) > 10  # soft edges are accepted, unlike index masks
    pal = Image.fromarray((gray > 127).astype(np.uint8) * 3, mode="P")  # palette index 3
    pal.putpalette([0, 0, 0] * 3 + [255, 0, 0] * 253)
    pal.save(tmp_path / "p.png")
    assert torch.equal(read_object_mask(tmp_path / "p.png"), m)


def test_tps_reproduces_an_affine_map_exactly():
    rng = np.random.default_rng(0)
    dst = rng.random((12, 2))
    src = dst * np.array([0.5, 0.8]) + np.array([0.2, -0.1])  # affine: no bending energy
    grid = tps_grid(src, dst, 16)[0].double().numpy()
    t = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(
        grid[..., 0], np.broadcast_to(2 * (0.5 * t + 0.2) - 1, (16, 16)), atol=1e-6
    )
    np.testing.assert_allclose(
        grid[..., 1], (2 * (0.8 * t - 0.1) - 1)[:, None].repeat(16, 1), atol=1e-6
    )


@pytest.mark.parametrize("tps_prob", [0.0, 1.0])
def test_mask_follows_the_image(tmp_path, tps_prob):
    """The object is white and the rest black or the grey fill, so after any geometry and
    jitter the mask's interior must be bright and the outside dark. 3-pixel borders are
    excluded: zooming by up to 2 x 2 x 32/48 turns the image's edge into a bilinear ramp about
    2.7 pixels wide, while the mask is resampled by nearest neighbour."""
    _pair(tmp_path / "a.jpg", tmp_path / "a.png")
    image = torch.from_numpy(np.array(Image.open(tmp_path / "a.jpg"))).permute(2, 0, 1) / 255
    mask = read_object_mask(tmp_path / "a.png")
    pool = lambda m: torch.nn.functional.max_pool2d(m[None].float(), 7, 1, 3)[0] > 0  # noqa: E731
    checked = 0
    for seed in range(6):
        frames, masks = pseudo_clip(image, mask, np.random.default_rng(seed), 3, 32, tps_prob)
        assert frames.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32)
        assert frames.min() >= 0 and frames.max() <= 1
        lum = frames.mean(1)
        for t in range(3):
            core, outside = ~pool(~masks[t]), ~pool(masks[t])
            if core.any() and outside.any():
                assert lum[t][core].min() > 0.75 and lum[t][outside].max() < 0.65
                checked += 1
        # the per-frame geometry differs: the clip is not one image repeated
        assert not torch.equal(masks[0], masks[1]) or not torch.equal(masks[1], masks[2])
    assert checked >= 9  # most of the 18 frames show both object and background


def test_sampler_is_deterministic_and_composes_objects(tmp_path):
    images = static_images(_folder(tmp_path / "d"))
    sampler = StaticClipSampler(images, batch_size=4, num_frames=3, max_objects=3, crop=32, seed=2)
    frames, masks, counts = sampler(0)
    assert frames.shape == (4, 3, 3, 32, 32) and frames.dtype == np.float32
    assert masks.shape == (4, 3, 32, 32) and masks.dtype == np.uint8
    again = sampler(0)
    assert np.array_equal(frames, again[0]) and np.array_equal(masks, again[1])
    assert not np.array_equal(frames, sampler(1)[0])
    all_counts = list(counts) + [c for s in range(1, 4) for c in sampler(s)[2]]
    assert max(all_counts) >= 2 and max(all_counts) <= 3  # 0-2 pasted images per clip
    for m, k in zip(masks, counts, strict=True):
        assert set(np.unique(m[0])) - {0} == set(range(1, k + 1))  # ids 1..K on frame 0
    single = StaticClipSampler(images, batch_size=4, crop=32, seed=2)(0)
    assert single[2] == [1, 1, 1, 1] and single[1].max() == 1
    with pytest.raises(ValueError, match="crop"):
        StaticClipSampler(images, crop=40)


def test_cli_static_then_main_training(tmp_path, capsys):
    from cvpr24.cli import main
    from cvpr24.common import load_checkpoint
    from cvpr24.cutie.data import write_index_png
    from cvpr24.cutie.model import CutieConfig

    common = ["--model", "cpu", "--iterations", "2", "--batch-size", "1", "--crop", "32"]
    static_out = tmp_path / "static.safetensors"
    data = str(_folder(tmp_path / "images", n=2))
    args = ["train", "cutie", "--stage", "static", "--data", data, *common]
    assert main([*args, "--out", str(static_out)]) == 0
    ckpt = load_checkpoint(static_out, CutieConfig)
    assert ckpt.config.single_object and ckpt.tensors["mask_encoder.conv1.weight"].shape[1] == 4
    assert ckpt.meta["data"]["stage"] == "static" and ckpt.meta["data"]["images"] == 2

    video = tmp_path / "videos"  # custom video layout for the main stage
    for t in range(4):
        _pair(video / "images" / "v" / f"{t:05d}.jpg", tmp_path / "tmp.png", seed=t)
        ids = np.array(Image.open(tmp_path / "tmp.png")) > 127
        write_index_png(video / "masks" / "v" / f"{t:05d}.png", ids.astype(np.uint8))
    main_out = tmp_path / "main.safetensors"
    args = ["train", "cutie", "--data", str(video), "--init", str(static_out), *common]
    assert main([*args, "--frames", "3", "--out", str(main_out)]) == 0
    multi = load_checkpoint(main_out, CutieConfig)
    assert not multi.config.single_object
    assert multi.tensors["mask_encoder.conv1.weight"].shape[1] == 5
    capsys.readouterr()
    bad = ["train", "cutie", "--stage", "static", "--data", str(video / "masks"), *common]
    code = main([*bad, "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1

"""The real-data training sampler: layouts, frame sampling with max_skip, augmentation, and
``cvpr24 train cutie --data`` on tiny folders written here."""

import numpy as np
import pytest
from PIL import Image

from cvpr24.cutie.clips import (
    MAX_SKIP_SCHEDULE,
    ClipSampler,
    max_skip_at,
    sample_frame_indices,
    training_videos,
)
from cvpr24.cutie.data import write_index_png

H, W = 40, 56


def _write_video(img_dir, ann_dir, n, annotated=lambda t: True, objects=2):
    """Red (id 1) and green (id 2) squares moving right on black; masks where ``annotated``."""
    img_dir.mkdir(parents=True)
    for t in range(n):
        rgb = np.zeros((H, W, 3), np.uint8)
        ids = np.zeros((H, W), np.uint8)
        for k in range(objects):
            y, x = 6 + 18 * k, 4 + 2 * t
            rgb[y : y + 12, x : x + 12, k] = 255
            ids[y : y + 12, x : x + 12] = k + 1
        Image.fromarray(rgb).save(img_dir / f"{t:05d}.jpg", quality=100)
        if annotated(t):
            write_index_png(ann_dir / f"{t:05d}.png", ids)


def _davis(root, videos=("a", "b"), n=10):
    for v in videos:
        _write_video(root / "JPEGImages/480p" / v, root / "Annotations/480p" / v, n)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/train.txt").write_text("\n".join(videos) + "\n")
    return root


def test_layouts_are_recognised(tmp_path):
    dv = training_videos(_davis(tmp_path / "davis"))
    assert [v.name for v in dv] == ["a", "b"] and len(dv[0].frames) == 10
    assert dv[0].skip_divisor == 1 and dv[0].masks[3].name == "00003.png"
    yt = tmp_path / "yt"
    _write_video(yt / "JPEGImages/v1", yt / "Annotations/v1", 21, lambda t: t % 5 == 0)
    (v,) = training_videos(yt)
    assert v.skip_divisor == 5 and [p.stem for p in v.frames] == [
        f"{t:05d}" for t in range(0, 21, 5)
    ]
    cu = tmp_path / "custom"
    _write_video(cu / "images/clip", cu / "masks/clip", 6, lambda t: t != 2)
    (v,) = training_videos(cu)
    assert v.skip_divisor == 1 and len(v.frames) == 5 and "00002" not in [p.stem for p in v.frames]
    with pytest.raises(ValueError, match="root: .* is not a DAVIS-2017"):
        training_videos(tmp_path / "custom" / "images")
    with pytest.raises(FileNotFoundError, match="--data"):
        training_videos(tmp_path / "none", "--data")


def test_max_skip_schedule_and_frame_sampling():
    assert [max_skip_at(p) for p in (0.0, 0.05, 0.1, 0.5, 0.8, 0.99)] == [5, 5, 10, 15, 5, 5]
    assert MAX_SKIP_SCHEDULE[0] == (0.0, 5)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        idx = sample_frame_indices(100, 8, 3, rng)
        assert idx == sorted(idx) and len(set(idx)) == 8
        # every frame is within max_skip of another drawn frame (the drawn set is connected)
        assert all(min(abs(i - j) for j in idx if j != i) <= 3 for i in idx)
        assert max(idx) - min(idx) <= 7 * 3
    a = sample_frame_indices(50, 5, 4, np.random.default_rng(7))
    assert a == sample_frame_indices(50, 5, 4, np.random.default_rng(7))
    with pytest.raises(ValueError, match="cannot give"):
        sample_frame_indices(3, 5, 2, np.random.default_rng(0))


def test_sampler_batches_are_valid_deterministic_and_augmented(tmp_path):
    videos = training_videos(_davis(tmp_path / "davis"))
    sampler = ClipSampler(
        videos,
        iterations=100,
        batch_size=3,
        num_frames=4,
        max_objects=1,
        crop=32,
        min_pixels=4,
        seed=3,
    )
    frames, masks, counts = sampler(0)
    assert frames.shape == (3, 4, 3, 32, 32) and frames.dtype == np.float32
    assert masks.shape == (3, 4, 32, 32) and masks.dtype == np.uint8
    assert counts == [1, 1, 1] and masks.max() == 1
    assert all((m[0] == 1).sum() >= 4 for m in masks)  # the kept object is on the first frame
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    again = sampler(0)
    np.testing.assert_array_equal(frames, again[0])
    np.testing.assert_array_equal(masks, again[1])
    assert not np.array_equal(frames, sampler(1)[0])
    # image and mask are warped together: labelled pixels are lit square pixels, the rest is
    # black background. Sweep of sampler seeds 0-9 (this call): lit fraction of labelled pixels
    # 1.0 every time, dark fraction of unlabelled pixels 0.959-0.974 (bilinear edges)
    many = ClipSampler(
        videos, 100, batch_size=8, num_frames=3, crop=32, min_pixels=4, merge_prob=0.0, seed=0
    )
    f, m, _ = many(5)
    lit = f.max(2) > 0.15
    assert lit[m > 0].mean() > 0.95 and (~lit[m == 0]).mean() > 0.9


def test_merging_pastes_a_second_clip_with_new_ids(tmp_path):
    videos = training_videos(_davis(tmp_path / "davis", videos=("a",)))
    sampler = ClipSampler(
        videos,
        100,
        batch_size=6,
        num_frames=3,
        max_objects=3,
        crop=48,
        min_pixels=4,
        merge_prob=1.0,
        seed=1,
    )
    _, masks, counts = sampler(0)
    assert max(counts) == 3  # 2 objects per clip, 4 after merging, capped at max_objects
    for m, k in zip(masks, counts, strict=True):
        assert set(np.unique(m[0])) - {0} == set(range(1, k + 1))


def test_cli_trains_on_a_data_folder(tmp_path, capsys):
    from cvpr24.cli import main
    from cvpr24.common import load_checkpoint
    from cvpr24.cutie.model import CutieConfig

    data = _davis(tmp_path / "davis", videos=("a",), n=6)
    args = [
        "train",
        "cutie",
        "--data",
        str(data),
        "--model",
        "cpu",
        "--stage",
        "cpu",
        "--iterations",
        "2",
        "--batch-size",
        "1",
        "--frames",
        "3",
        "--crop",
        "32",
    ]
    assert main([*args, "--out", str(tmp_path / "m.safetensors")]) == 0
    ckpt = load_checkpoint(tmp_path / "m.safetensors", CutieConfig)
    assert ckpt.config == CutieConfig.cpu() and ckpt.tensors
    capsys.readouterr()
    code = main(
        [*args[:3], str(tmp_path / "nope"), *args[4:], "--out", str(tmp_path / "x.safetensors")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1
    code = main([*args[:-1], "40", "--out", str(tmp_path / "y.safetensors")])
    assert code == 2 and "--crop" in capsys.readouterr().err

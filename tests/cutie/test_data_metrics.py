"""Palette PNG I/O, dataset layouts, the synthetic generator and the DAVIS J&F protocol."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cvpr24.cutie.data import (
    davis_videos,
    generic_videos,
    read_index_png,
    write_index_png,
    youtube_videos,
)
from cvpr24.cutie.metrics import evaluate_video, evaluate_vos, f_measure, jaccard
from cvpr24.cutie.synthetic import SyntheticVOS


def test_jaccard_conventions():
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    b = np.zeros((10, 10), bool)
    b[6:8, 6:8] = True
    assert jaccard(a, a) == 1.0 and jaccard(a, b) == 0.0
    assert jaccard(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hand_worked_square_shifted_by_two_pixels():
    """100x100, 40x40 GT square, prediction shifted 2 px: r = ceil(0.008 * 141.4) = 2, every
    boundary pixel is within 2 px of the other boundary -> F = 1; J = 38*40 / (1600 + 80)."""
    gt = np.zeros((100, 100), bool)
    gt[30:70, 30:70] = True
    pred = np.roll(gt, 2, axis=1)
    assert jaccard(pred, gt) == pytest.approx(1520 / 1680)
    assert f_measure(pred, gt) == pytest.approx(1.0)
    far = np.roll(gt, 6, axis=1)  # 6 px > r: the vertical edges no longer match
    assert f_measure(far, gt) < 0.9
    assert f_measure(np.zeros_like(gt), gt) == 0.0
    assert f_measure(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_protocol_skips_first_and_last_frames_and_averages_objects():
    gt = [np.zeros((20, 20), np.uint8) for _ in range(4)]
    for g in gt:
        g[2:8, 2:8] = 1
        g[10:18, 10:18] = 2
    pred = [g.copy() for g in gt]
    pred[0][:] = 0  # first and last frames are wrong but skipped
    pred[3][:] = 0
    pred[1][10:18, 10:18] = 0  # object 2 missing in frame 1
    res = evaluate_video(gt, pred)
    assert res[1] == (1.0, 1.0)
    assert res[2] == (0.5, 0.5)
    assert evaluate_video(gt, pred, skip_first_last=False)[1] == (0.5, 0.5)


def test_index_png_round_trip_keeps_the_palette_and_is_atomic(tmp_path):
    mask = np.zeros((12, 16), np.uint8)
    mask[2:6, 3:9] = 7
    palette = bytes(range(256)) * 3
    write_index_png(tmp_path / "a.png", mask, palette)
    back, pal = read_index_png(tmp_path / "a.png")
    assert np.array_equal(back, mask) and pal == palette
    assert os.listdir(tmp_path) == ["a.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="0..255"):
        write_index_png(tmp_path / "b.png", mask.astype(np.int32) * 100)
    assert not (tmp_path / "b.png").exists()


def test_rgb_and_anti_aliased_masks_are_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="first_mask: .* is a RGB image"):
        read_index_png(tmp_path / "rgb.png", "first_mask")
    soft = np.tile(np.linspace(0, 255, 100).astype(np.uint8), (10, 1))
    Image.fromarray(soft, mode="L").save(tmp_path / "soft.png")
    with pytest.raises(ValueError, match="anti-aliased"):
        read_index_png(tmp_path / "soft.png")


def _write_video(root, name, n=3, size=(16, 24), masks=(0,)):
    (root / "img" / name).mkdir(parents=True)
    (root / "ann" / name).mkdir(parents=True)
    for t in range(n):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "img" / name / f"{t:05d}.jpg")
    for t in masks:
        m = np.zeros(size, np.uint8)
        m[2:6, 2:6] = 1
        write_index_png(root / "ann" / name / f"{t:05d}.png", m)


def test_layouts(tmp_path):
    _write_video(tmp_path, "v1")
    _write_video(tmp_path, "v2", masks=(0, 2))
    vids = generic_videos(tmp_path / "img", tmp_path / "ann")
    assert [v.name for v in vids] == ["v1", "v2"] and list(vids[1].masks) == [0]
    # DAVIS
    davis = tmp_path / "DAVIS"
    for sub in ("JPEGImages", "Annotations"):
        (davis / sub).mkdir(parents=True)
        os.symlink(tmp_path / ("img" if sub == "JPEGImages" else "ann"), davis / sub / "480p")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("v2\n")
    assert [v.name for v in davis_videos(davis)] == ["v2"]
    # YouTube-VOS: masks where objects first appear, output only meta.json frames
    yt = tmp_path / "yt"
    yt.mkdir()
    os.symlink(tmp_path / "img", yt / "JPEGImages")
    os.symlink(tmp_path / "ann", yt / "Annotations")
    meta = {
        "videos": {
            "v2": {"objects": {"1": {"frames": ["00000", "00002"]}, "2": {"frames": ["00002"]}}}
        }
    }
    (yt / "meta.json").write_text(json.dumps(meta))
    (v,) = youtube_videos(yt)
    assert list(v.masks) == [0, 2] and v.output_frames == {0, 2}
    assert v.objects_per_mask == {0: [1], 2: [2]}
    # a first frame without a mask
    (tmp_path / "ann" / "v1" / "00000.png").unlink()
    with pytest.raises(ValueError, match="first frame .* has no mask"):
        generic_videos(tmp_path / "img", tmp_path / "ann")


def test_evaluate_vos_on_folders(tmp_path):
    for d in ("gt", "pred"):
        for t in range(3):
            m = np.zeros((10, 10), np.uint8)
            m[1:5, 1:5] = 1
            if d == "pred" and t == 1:
                m[:] = 0
            write_index_png(tmp_path / d / "v" / f"{t:05d}.png", m)
    res = evaluate_vos(tmp_path / "gt", tmp_path / "pred")
    assert res["J"] == 0.0 and res["F"] == 0.0 and res["J&F"] == 0.0
    assert evaluate_vos(tmp_path / "gt", tmp_path / "gt")["J&F"] == 100.0


def test_synthetic_videos_are_deterministic_and_hard_ones_reuse_target_textures():
    a = SyntheticVOS("hard", 6, seed=3).video(1)
    b = SyntheticVOS("hard", 6, seed=3).video(1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == "hard"
    assert (
        a[0].shape == (6, 3, 96, 96)
        and a[0].dtype == np.float32
        and 0 <= a[0].min() <= a[0].max() <= 1
    )
    assert a[1].max() >= 1
    c = SyntheticVOS("hard", 6, seed=4).video(1)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="split"):
        SyntheticVOS("medium")


def _random_vos_folders(root, rng, videos=3, frames=6, h=40, w=56):
    """GT: 2-3 jittered ellipses per video, every object visible in every frame (the DAVIS
    case); predictions: shifted, eroded or swapped objects and flipped pixels."""
    yy, xx = np.mgrid[:h, :w]
    for v in range(videos):
        k = int(rng.integers(2, 4))
        centres = rng.uniform([8, 8], [h - 8, w - 8], (k, 2))
        for t in range(frames):
            gt = np.zeros((h, w), np.uint8)
            for i, (cy, cx) in enumerate(centres + t * rng.normal(0, 1.5, (k, 2))):
                gt[((yy - cy) / 6) ** 2 + ((xx - cx) / 8) ** 2 <= 1] = i + 1
            pred = np.roll(gt, tuple(rng.integers(-2, 3, 2)), (0, 1))
            pred[rng.random((h, w)) < 0.03] = rng.integers(0, k + 1)
            if t == 3:
                pred[pred == 1] = 2  # an identity switch
            write_index_png(root / "gt" / f"v{v}" / f"{t:05d}.png", gt)
            write_index_png(root / "pred" / f"v{v}" / f"{t:05d}.png", pred)
    return root / "gt", root / "pred"


@pytest.mark.parametrize("skip", [True, False])
def test_evaluate_vos_equals_vos_benchmark(tmp_path, skip):
    """Our J&F against the reference evaluator of the Cutie authors (PyPI ``vos-benchmark``,
    which needs OpenCV and scikit-image; skipped where it is not installed)."""
    vb = pytest.importorskip("vos_benchmark.benchmark")
    gt, pred = _random_vos_folders(tmp_path, np.random.default_rng(int(skip)))
    ours = evaluate_vos(gt, pred, skip_first_last=skip)
    (jf,), (j,), (f,), (per_video,) = vb.benchmark(
        [str(gt)], [str(pred)], num_processes=1, verbose=False, skip_first_and_last=skip
    )
    assert ours["J&F"] == pytest.approx(jf, abs=1e-9)
    assert (ours["J"], ours["F"]) == pytest.approx((j, f), abs=1e-9)
    theirs = {f"{v}/{k}": (ious[k], bfs[k]) for v, (ious, bfs) in per_video.items() for k in ious}
    assert theirs.keys() == ours["per_object"].keys()
    for key, value in ours["per_object"].items():
        assert value == pytest.approx(theirs[key], abs=1e-9)

"""BURST: COCO run-length codec (hand-worked strings), the annotation-JSON loader, the result
JSON, and ``cvpr24 cutie segment --layout burst`` on files written here."""

import json

import numpy as np
import pytest
from PIL import Image

from cvpr24.cutie.data import burst_videos, rle_decode, rle_encode, write_burst_predictions

H, W = 32, 48


def test_rle_hand_worked_strings():
    # runs 100 (bg), 1 (fg): 100 = 3 * 32 + 4 -> groups 4 | 0x20 = 36 ('T'), then 3 ('3');
    # 1 -> '1'
    m = np.zeros((101, 1), bool)
    m[100, 0] = True
    assert rle_encode(m) == "T31"
    assert np.array_equal(rle_decode("T31", 101, 1), m)
    # runs 2, 5, 3, 4: the fourth is written as 4 - 5 = -1 -> group 31 with the sign bit, 'O'
    m = np.repeat(np.arange(4) % 2 == 1, [2, 5, 3, 4]).reshape(7, 2).T  # column-major
    assert rle_encode(m) == "253O" and np.array_equal(rle_decode("253O", 2, 7), m)
    assert np.array_equal(rle_decode([2, 5, 3, 4], 2, 7), m)  # uncompressed counts
    # a mask starting with the object begins with an empty background run
    assert rle_encode(np.ones((2, 2), bool)) == "04"
    with pytest.raises(ValueError, match="RLE: the runs cover 14 pixels"):
        rle_decode("253O", 3, 7)


def test_rle_round_trip_and_pycocotools():
    rng = np.random.default_rng(0)
    masks = [rng.random((H, W)) < p for p in (0.0, 0.02, 0.5, 0.98, 1.0)]
    masks.append(np.kron(rng.random((4, 6)) < 0.5, np.ones((8, 8), bool)))  # long runs
    for m in masks:
        assert np.array_equal(rle_decode(rle_encode(m), H, W), m)
    mask_utils = pytest.importorskip("pycocotools.mask")
    for m in masks:
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_encode(m) == ref["counts"].decode()


def _seq(root, dataset, name, n, tracks, annotated):
    """Frames of a sequence; ``tracks`` = {id: (first frame, box)}; a full annotation of the
    ``annotated`` frames (every track from its first frame on)."""
    folder = root / "frames" / dataset / name
    folder.mkdir(parents=True)
    for t in range(n):
        Image.fromarray(np.full((H, W, 3), 20 * t, np.uint8)).save(folder / f"f{t:03d}.jpg")
    segs = []
    for t in annotated:
        frame = {}
        for k, (first, (y0, y1, x0, x1)) in tracks.items():
            if t >= first:
                m = np.zeros((H, W), bool)
                m[y0:y1, x0:x1] = True
                frame[str(k)] = {"rle": rle_encode(m), "is_gt": True}
        segs.append(frame)
    return {
        "dataset": dataset,
        "seq_name": name,
        "width": W,
        "height": H,
        "all_image_paths": [f"f{t:03d}.jpg" for t in range(n)],
        "annotated_image_paths": [f"f{t:03d}.jpg" for t in annotated],
        "segmentations": segs,
    }


def _burst(tmp_path):
    seqs = [
        _seq(
            tmp_path,
            "ArgoVerse",
            "a",
            6,
            {3: (0, (2, 10, 4, 12)), 7: (4, (20, 30, 30, 40))},
            [0, 2, 4],
        ),
        _seq(tmp_path, "LaSOT", "b", 5, {1: (2, (0, 8, 0, 8))}, [0, 2, 4]),  # starts at frame 2
    ]
    path = tmp_path / "first_frame_annotations.json"
    path.write_text(json.dumps({"split": "val", "sequences": seqs}))
    return path


def test_burst_loader(tmp_path):
    a, b = burst_videos(_burst(tmp_path), tmp_path / "frames")
    assert a.name == "ArgoVerse/a" and len(a.frames) == 6 and a.frames[0].name == "f000.jpg"
    assert sorted(a.masks) == [0, 4] and a.objects_per_mask == {0: [3], 4: [7]}
    assert a.output_frames == {0, 2, 4}
    first, palette = a.read_mask(0)
    assert palette is None and set(np.unique(first)) == {0, 3} and (first == 3).sum() == 64
    later = a.read_mask(4)[0]
    assert set(np.unique(later)) == {0, 7}  # only the track that starts there is given
    # b's only track starts at frame 2: its video starts there
    assert b.frames[0].name == "f002.jpg" and b.output_frames == {0, 2}
    assert b.objects_per_mask == {0: [1]}
    with pytest.raises(FileNotFoundError, match="masks"):
        burst_videos(tmp_path / "none.json", tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a BURST JSON"):
        burst_videos(tmp_path / "bad.json", tmp_path)


def test_burst_predictions_round_trip(tmp_path):
    from cvpr24.cutie.data import write_index_png

    ann = _burst(tmp_path)
    ids = np.zeros((H, W), np.uint8)
    ids[1:5, 2:9], ids[10:20, 30:31] = 3, 7
    write_index_png(tmp_path / "pred" / "ArgoVerse" / "a" / "f002.png", ids)
    write_burst_predictions(ann, tmp_path / "pred", tmp_path / "predictions.json")
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert doc["split"] == "val"
    segs = doc["sequences"][0]["segmentations"]
    assert segs[0] == {} and segs[2] == {} and sorted(segs[1]) == ["3", "7"]
    for k in (3, 7):
        assert np.array_equal(rle_decode(segs[1][str(k)]["rle"], H, W), ids == k)


def test_cli_segments_burst(tmp_path, capsys):
    from _cutie_helpers import tiny_model

    from cvpr24.cli import main
    from cvpr24.common import save_checkpoint

    ann = _burst(tmp_path)
    model = tiny_model(0)
    save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), config=model.cfg, seed=0)
    args = ["cutie", "segment", "--weights", str(tmp_path / "m.safetensors"), "--size", "-1"]
    args += [
        "--layout",
        "burst",
        "--images",
        str(tmp_path / "frames"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--masks", str(ann)]) == 0
    written = sorted(
        p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.png")
    )
    assert written == [
        "ArgoVerse/a/f000.png",
        "ArgoVerse/a/f002.png",
        "ArgoVerse/a/f004.png",
        "LaSOT/b/f002.png",
        "LaSOT/b/f004.png",
    ]
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    first = doc["sequences"][0]["segmentations"][0]
    assert set(first) == {"3"}  # the given first mask is reproduced on its frame
    capsys.readouterr()
    assert main(args) == 2 and "--masks" in capsys.readouterr().err

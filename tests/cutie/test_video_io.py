"""mp4 input and overlay output through PyAV (tiny videos written by the tests)."""

from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from cvpr24.cutie.data import (  # noqa: E402
    OverlayVideoWriter,
    davis_palette,
    item_frames,
    overlay,
    video_file_item,
    video_size,
    write_index_png,
)

COLOURS = [
    (200, 40, 40),
    (40, 200, 40),
    (40, 40, 200),
    (220, 220, 60),
    (30, 30, 30),
    (250, 250, 250),
]


def write_mp4(path, colours=COLOURS, size=(32, 48)):
    """Flat-colour frames, near-lossless MPEG-4 (so decoded values can be checked)."""
    h, w = size
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=Fraction(10))
        s.height, s.width, s.pix_fmt = h, w, "yuv420p"
        s.options = {"qscale": "1"}
        for rgb in colours:
            arr = np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_file_is_counted_sized_and_decoded(tmp_path):
    write_mp4(tmp_path / "v.mp4")
    write_index_png(tmp_path / "m.png", np.zeros((32, 48), np.uint8))
    item = video_file_item(tmp_path / "v.mp4", tmp_path / "m.png")
    assert item.name == "v" and len(item.frames) == len(COLOURS) and item.masks[0].name == "m.png"
    assert [p.name for p in item.frames[:2]] == ["00000", "00001"]
    assert video_size(tmp_path / "v.mp4") == (32, 48)
    frames = list(item_frames(item))
    assert len(frames) == len(COLOURS) and frames[0].shape == (3, 32, 48)
    for f, rgb in zip(frames, COLOURS, strict=True):
        mean = f.mean(dim=(1, 2)) * 255
        assert torch.allclose(mean, torch.tensor(rgb, dtype=torch.float32), atol=8), (mean, rgb)
    with pytest.raises(FileNotFoundError, match="images"):
        video_file_item(tmp_path / "none.mp4", tmp_path / "m.png")
    with pytest.raises(FileNotFoundError, match="masks"):
        video_file_item(tmp_path / "v.mp4", tmp_path / "none.png")


def test_overlay_blends_object_colours_and_keeps_the_background():
    image = torch.full((3, 4, 5), 0.5)
    ids = torch.zeros(4, 5, dtype=torch.long)
    ids[1, 2] = 1
    out = overlay(image, ids, alpha=0.5)
    pal = np.frombuffer(davis_palette(), np.uint8).reshape(-1, 3)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert (out[0, 0] == 128).all()  # background untouched (0.5 * 255 rounded)
    assert np.abs(out[1, 2].astype(float) - (127.5 + pal[1]) / 2).max() <= 1


def test_overlay_writer_is_atomic_and_pads_odd_sizes(tmp_path):
    image, ids = torch.rand(3, 15, 21), torch.zeros(15, 21, dtype=torch.long)
    ids[3:8, 4:9] = 2
    with OverlayVideoWriter(tmp_path / "o.mp4", fps=12) as w:
        for _ in range(3):
            w.write(image, ids)
    assert video_size(tmp_path / "o.mp4") == (16, 22)
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 3
    with pytest.raises(RuntimeError), OverlayVideoWriter(tmp_path / "p.mp4") as w:
        w.write(image, ids)
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]  # nothing half-written
    with pytest.raises(ValueError, match="image"), OverlayVideoWriter(tmp_path / "q.mp4") as w:
        w.write(image, ids)
        w.write(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))


def test_cli_segments_an_mp4_and_writes_an_overlay(tmp_path, capsys):
    from cvpr24.cli import main
    from cvpr24.common import save_checkpoint

    from ._cutie_helpers import tiny_model

    write_mp4(tmp_path / "clip.mp4")
    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 3
    write_index_png(tmp_path / "first.png", mask)
    model = tiny_model(0)
    save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), config=model.cfg, seed=0)
    args = ["cutie", "segment", "--weights", str(tmp_path / "m.safetensors"), "--size", "-1"]
    code = main(
        [
            *args,
            "--images",
            str(tmp_path / "clip.mp4"),
            "--masks",
            str(tmp_path / "first.png"),
            "--out",
            str(tmp_path / "pred"),
            "--overlay",
            str(tmp_path / "ov"),
            "--fps",
            "10",
        ]
    )
    assert code == 0, capsys.readouterr().err
    pngs = sorted(p.name for p in (tmp_path / "pred" / "clip").iterdir())
    assert pngs == [f"{t:05d}.png" for t in range(len(COLOURS))]
    assert video_size(tmp_path / "ov" / "clip.mp4") == (32, 48)
    with av.open(str(tmp_path / "ov" / "clip.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(COLOURS)
    # a video file without its first mask: one line naming the flag, exit 2
    capsys.readouterr()
    code = main([*args, "--images", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--masks" in err and len(err.strip().splitlines()) == 1

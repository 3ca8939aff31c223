"""The command line end to end on tiny files: train, infer, convert, eval, check-cameras."""

import json

import torch

from cvpr24.cli import main
from cvpr24.pixelsplat.data import encode_image, load_chunk
from cvpr24.pixelsplat.gaussians import read_ply
from cvpr24.pixelsplat.scenes import render_example


def _write_views(tmp_path, fractions=(0.0, 1.0, 0.5)):
    ex = render_example(7, 16, fractions)
    frames = []
    for i, img in enumerate(ex["images"]):
        name = f"v{i}.png"
        (tmp_path / name).write_bytes(encode_image(img, "PNG"))
        frames.append({"image": name, "c2w": ex["extrinsics"][i].tolist(), "K": ex["intrinsics"][i].tolist()})
    (tmp_path / "cams.json").write_text(json.dumps({"frames": frames}))
    (tmp_path / "target.json").write_text(json.dumps({"frames": frames[2:]}))
    return ex


def test_train_infer_convert_eval_check(tmp_path, capsys):
    _write_views(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "pixelsplat", "--synthetic", "--steps", "2", "--size", "8", "--scenes", "2",
                 "--out", str(run)]) == 0
    ckpt = str(run / "model.safetensors")
    ply = tmp_path / "scene.ply"
    assert main(["pixelsplat", "infer", "--checkpoint", ckpt, "--images", str(tmp_path / "v0.png"),
                 str(tmp_path / "v1.png"), "--cameras", str(tmp_path / "cams.json"), "--size", "16",
                 "--out", str(ply), "--render", str(tmp_path / "target.json")]) == 0
    assert read_ply(ply).means.shape == (2 * 16 * 16 * 3, 3)
    assert (tmp_path / "v2_render.png").is_file()
    root = tmp_path / "root"
    assert main(["pixelsplat", "convert", "--cameras", str(tmp_path / "cams.json"), "--key", "k",
                 "--out", str(root / "test")]) == 0
    assert len(load_chunk(root / "test" / "000000.torch")[0].images) == 3
    (tmp_path / "index.json").write_text(json.dumps({"k": {"context": [0, 1], "target": [2]}, "z": None}))
    assert main(["pixelsplat", "eval", "--checkpoint", ckpt, "--data", str(root), "--size", "16", "--index",
                 str(tmp_path / "index.json"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["mean"]) == {"psnr", "ssim"} and torch.isfinite(torch.tensor(metrics["mean"]["psnr"]))
    assert main(["pixelsplat", "check-cameras", "--images", str(tmp_path / "v0.png"), str(tmp_path / "v1.png"),
                 "--cameras", str(tmp_path / "cams.json"), "--out", str(tmp_path / "epi.png")]) == 0
    assert (tmp_path / "epi.png").stat().st_size > 1000


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    _write_views(tmp_path)
    rc = main(["pixelsplat", "infer", "--checkpoint", str(tmp_path / "missing.ckpt"), "--images",
               str(tmp_path / "v0.png"), str(tmp_path / "v1.png"), "--cameras", str(tmp_path / "cams.json"),
               "--out", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--checkpoint" in err and len(err.splitlines()) == 1
    cams = json.loads((tmp_path / "cams.json").read_text())
    cams["frames"][0]["c2w"][0][0] = 3.0
    (tmp_path / "bad.json").write_text(json.dumps(cams))
    rc = main(["pixelsplat", "check-cameras", "--images", str(tmp_path / "v0.png"), str(tmp_path / "v1.png"),
               "--cameras", str(tmp_path / "bad.json"), "--out", str(tmp_path / "e.png")])
    assert rc == 2 and "SE(3)" in capsys.readouterr().err

"""``cvpr24 sag ...`` on the command line."""

from __future__ import annotations

import json

import pytest

from cvpr24.cli import main


@pytest.mark.parametrize("cmd", [[], ["generate"], ["sweep"], ["eval"], ["train"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sag", *cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cvpr24 sag" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["generate", "--model", "m", "--prompt", "p", "--out", "o", "--T", "1.5"], "expected a number in [0, 1]"),
    (["generate", "--model", "m", "--prompt", "p", "--out", "o", "--r", "-3"], "r < -1"),
    (["generate", "--prompt", "p", "--out", "o"], "--model"),
])
def test_bad_arguments_exit_2_with_one_line(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sag", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_train_writes_a_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["train", "sag", "--steps", "2", "--probe-steps", "2", "--out", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["steps"] == 2 and "loss_final" in meta["metrics"]


def test_generate_on_a_local_tiny_sd(tiny_sd_components, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    model = tmp_path / "sd"
    diffusers.StableDiffusionPipeline(**tiny_sd_components).save_pretrained(model)
    out = tmp_path / "out"
    assert main(["sag", "generate", "--model", str(model), "--prompt", "a pencil sketch of sks", "--placeholder",
                 "sks", "--class-word", "dog", "--steps", "2", "--n", "2", "--out", str(out), "--device",
                 "cpu"]) == 0
    meta = json.loads((out / "sag.json").read_text())
    assert meta["agnostic_prompt"] == "a pencil sketch of a dog" and meta["files"] == ["000.png", "001.png"]
    assert meta["T"] == 0.9 and meta["nfe"] == 2 * 2 * 2
    assert (out / "001.png").stat().st_size > 0
    sweep = tmp_path / "sweep"
    assert main(["sag", "sweep", "--model", str(model), "--prompt", "a photo of sks", "--placeholder", "sks",
                 "--class-word", "dog", "--steps", "2", "--T-values", "1", "0", "--out", str(sweep),
                 "--device", "cpu"]) == 0
    from PIL import Image
    assert Image.open(sweep / "sweep.png").size == (2 * 16, 16)

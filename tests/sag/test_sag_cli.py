"""``cvpr24 sag ...`` on the command line."""

from __future__ import annotations

import json
import warnings

import pytest

from cvpr24.cli import main


@pytest.mark.parametrize("cmd", [[], ["generate"], ["sweep"], ["eval"], ["train"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sag", *cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cvpr24 sag" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["generate", "--model", ".", "--prompt", "p", "--out", "o", "--T", "1.5"], "expected a number in [0, 1]"),
    (["generate", "--model", ".", "--prompt", "p", "--out", "o", "--r", "-3"], "r < -1"),
    (["generate", "--prompt", "p", "--out", "o"], "--model"),
    (["generate", "--model", ".", "--prompt", "p", "--out", "o", "--guidance-scale", "nan"], "--guidance-scale"),
    (["generate", "--model", ".", "--prompt", "p", "--out", "o", "--textual-inversion", "nope.bin"],
     "--textual-inversion: no such file"),
    (["generate", "--model", "no/such/folder", "--prompt", "p", "--out", "o"], "--model: no such folder"),
    (["train", "--backbone-steps", "0"], "--backbone-steps"),
])
def test_bad_arguments_exit_2_with_one_line(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sag", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


_TINY_TRAIN = ["--steps", "2", "--probe-steps", "2", "--backbone-steps", "2"]


def test_train_writes_a_checkpoint_to_a_new_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "sag", *_TINY_TRAIN, "--seed", "3", "--local-tokens", "16"]) == 0
    out = tmp_path / "sag-train-cpu-seed3" / "shapes_elite.safetensors"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["config"]["steps"] == 2 and meta["config"]["backbone_steps"] == 2
    assert meta["config"]["local_tokens"] == 16
    assert "loss_final" in meta["metrics"]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_train_never_overwrites_the_packaged_or_an_existing_checkpoint(tmp_path, capsys):
    from cvpr24.sag.train import DEFAULT_CHECKPOINT

    before = DEFAULT_CHECKPOINT.stat().st_mtime_ns
    err = _usage_error(["train", "sag", *_TINY_TRAIN, "--out", str(DEFAULT_CHECKPOINT)], capsys)
    assert "--out" in err and "never overwritten" in err
    assert DEFAULT_CHECKPOINT.stat().st_mtime_ns == before
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"mine")
    assert "--resume" in _usage_error(["train", "sag", *_TINY_TRAIN, "--out", str(existing)], capsys)
    assert existing.read_bytes() == b"mine"


def test_paths_expand_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "sd").mkdir()
    err = _usage_error(["sag", "generate", "--model", "~/sd", "--prompt", "p", "--out", "~/o"], capsys)
    assert f"with model_index.json, got {tmp_path / 'sd'}" in err  # found the folder, then checked it


def test_generate_on_a_local_tiny_sd(tiny_sd_components, tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    model = tmp_path / "sd"
    diffusers.StableDiffusionPipeline(**tiny_sd_components).save_pretrained(model)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["sag", "generate", "--model", str(model), "--prompt", "a pencil sketch of sks", "--placeholder",
                     "sks", "--class-word", "dog", "--steps", "2", "--n", "2", "--out", str(out), "--device",
                     "cpu"]) == 0
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]  # e.g. torch_dtype's deprecation
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

    # A textual-inversion placeholder without its embedding would be split into characters.
    err = _usage_error(["sag", "generate", "--model", str(model), "--prompt", "a photo of <cat-toy>",
                        "--placeholder", "<cat-toy>", "--class-word", "toy", "--steps", "2", "--out",
                        str(tmp_path / "x")], capsys)
    assert "--placeholder '<cat-toy>' is not one token" in err and "--textual-inversion" in err
    assert not (tmp_path / "x").exists()

"""Options for users of the official setup: LPIPS partition features (weights by path, or
precomputed), no flips, all-class Neural Cleanse."""

import json

import numpy as np
import pytest
import torch
from _lotus_helpers import write_lpips_weights

from cvpr24.cli import main
from cvpr24.lotus import SmallCNN, load_model, save_model
from cvpr24.lotus import defenses as D
from cvpr24.lotus.data import load_dataset
from cvpr24.lotus.models import build_model

ATTACK = ["lotus", "attack", "--data", "shapes:24", "--arch", "small_cnn", "--preset", "cpu", "--steps", "2",
          "--clean-epochs", "1", "--surrogate-epochs", "1", "--batch-size", "32", "--num-par", "2",
          "--asr-bound", "0", "--device", "cpu"]


def test_attack_with_precomputed_features_and_no_flip(tmp_path, capsys):
    x, y = load_dataset("shapes:24", "train")
    n_vic = int((y == 0).sum())
    # two obvious clusters in the given features (one row per training victim, dataset order)
    feats = np.r_[np.zeros((n_vic // 2, 3)), np.full((n_vic - n_vic // 2, 3), 10.0)]
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "run"
    assert main(ATTACK + ["--partition-features", str(tmp_path / "f.npy"), "--no-flip", "--out", str(out)]) == 0
    _, info = load_model(out / "lotus.safetensors")
    assert json.loads((out / "lotus.json").read_text())["config"]["flip"] is False
    assert info["k"] == 2
    np.save(tmp_path / "bad.npy", feats[:-1])                 # one row short: refused before training
    assert main(ATTACK + ["--partition-features", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "b")]) == 2
    assert "--partition-features" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_attack_with_lpips_weights_by_path(tmp_path, capsys):
    write_lpips_weights(tmp_path)
    vgg, lin = str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg_lin.safetensors")
    out = tmp_path / "run"
    assert main(ATTACK + ["--lpips-vgg", vgg, "--lpips-lin", lin, "--out", str(out)]) == 0
    assert load_model(out / "lotus.safetensors")[1]["partition"] == "kmeans on LPIPS-VGG relu3_3 + lin2 + C+K surrogate"
    for bad, flag in ((["--lpips-vgg", vgg], "--lpips-lin"),                    # refused before training
                      (["--lpips-vgg", lin, "--lpips-lin", lin], "--lpips-vgg"),
                      (["--lpips-official-range"], "--lpips-official-range")):
        assert main(ATTACK + bad + ["--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


@pytest.mark.parametrize("method,fn", [("ft", "fine_tune"), ("fp", "fine_prune"), ("nad", "nad")])
def test_defend_no_flip_reaches_the_defense(tmp_path, monkeypatch, method, fn):
    seen = {}

    def record(model, *args, flip=True, **kwargs):
        seen["flip"] = flip
        return D.DefenseReport(fn, model=model)

    monkeypatch.setattr(D, fn, record)
    model = save_model(tmp_path / "m.safetensors", SmallCNN(10, 4), arch="small_cnn", num_classes=10,
                       meta={"model_kwargs": {"width": 4}})
    base = ["lotus", "defend", "--method", method, "--data", "shapes:4", "--model", str(model), "--device", "cpu",
            "--clean-frac", "0.5", "--out", str(tmp_path / "r.json")]
    assert main(base) == 0 and seen == {"flip": True}
    assert main(base + ["--no-flip"]) == 0 and seen == {"flip": False}


def test_defend_fp_official_variant(tmp_path, monkeypatch, capsys):
    seen = {}

    def record(model, *args, variant="standard", **kwargs):
        seen["variant"] = variant
        return D.DefenseReport("fine_prune", model=model)

    monkeypatch.setattr(D, "fine_prune", record)
    small = save_model(tmp_path / "small.safetensors", SmallCNN(10, 4), arch="small_cnn", num_classes=10,
                       meta={"model_kwargs": {"width": 4}})
    resnet = save_model(tmp_path / "resnet.safetensors", build_model("resnet18", 10), arch="resnet18", num_classes=10)
    base = ["lotus", "defend", "--data", "shapes:4", "--device", "cpu", "--clean-frac", "0.5",
            "--out", str(tmp_path / "r.json")]
    assert main(base + ["--method", "fp", "--model", str(resnet), "--fp-variant", "official"]) == 0
    assert seen == {"variant": "official"}
    assert main(base + ["--method", "fp", "--model", str(resnet)]) == 0 and seen == {"variant": "standard"}
    for bad in (["--method", "fp", "--model", str(small), "--fp-variant", "official"],     # no ResNet block
                ["--method", "ft", "--model", str(small), "--fp-variant", "official"],
                ["--method", "fp", "--model", str(resnet), "--fp-variant", "official",
                 "--save-model", str(tmp_path / "m.safetensors")]):
        assert main(base + bad) == 2
        assert "--fp-variant" in capsys.readouterr().err
    report_over_sidecar = base[:-1] + [str(tmp_path / "resnet.json"), "--method", "fp", "--model", str(resnet)]
    assert main(report_over_sidecar) == 2 and "sidecar" in capsys.readouterr().err
    assert load_model(resnet)[1]["arch"] == "resnet18"                   # the model is intact


def test_defend_nc_all_classes(tmp_path):
    torch.manual_seed(0)
    model = save_model(tmp_path / "m.safetensors", SmallCNN(10, 4), arch="small_cnn", num_classes=10,
                       meta={"model_kwargs": {"width": 4}})
    base = ["lotus", "defend", "--method", "nc", "--nc-steps", "2", "--nc-samples", "8", "--data", "shapes:4",
            "--model", str(model), "--device", "cpu"]
    assert main(base + ["--nc-all-classes", "--out", str(tmp_path / "all.json")]) == 0
    assert main(base + ["--out", str(tmp_path / "vic.json")]) == 0
    every = json.loads((tmp_path / "all.json").read_text())
    victim_only = json.loads((tmp_path / "vic.json").read_text())
    assert len(every["details"]["norms"]) == 10 and every["params"]["exclude"] is None
    assert len(victim_only["details"]["norms"]) == 9 and victim_only["params"]["exclude"] == 0

"""Bad arguments and data are refused before any training, naming the argument or CLI flag."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cvpr24.cli import main
from cvpr24.lotus import LotusAttack, LotusConfig, SmallCNN, save_model
from cvpr24.lotus.attack import check_attack_inputs
from cvpr24.lotus.cli import weak_attack
from cvpr24.lotus.data import check_classes, check_dataset, load_dataset
from cvpr24.lotus.defenses import fine_prune, neural_cleanse, prune_channels, unprune


class NeverCalled(nn.Module):
    """A model that fails the test when anything runs it: checks must come first."""

    def forward(self, x):
        raise AssertionError("the model ran before the inputs were checked")


def _xy(n=40, classes=4, size=16):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n) % classes


@pytest.mark.parametrize("mutate, match", [
    (lambda x, y: (x, y.float()), "y must be a 1-D integer"),
    (lambda x, y: (x, y[:-1]), "same length"),
    (lambda x, y: (x, torch.where(y == 0, -1, y)), "labels >= 0"),
    (lambda x, y: (x.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), y), "NaN"),
    (lambda x, y: (x[:0], y[:0]), "empty"),
])
def test_check_dataset_refuses_bad_data(mutate, match):
    with pytest.raises(ValueError, match=match):
        check_dataset(*mutate(*_xy()))
    assert check_dataset(*_xy()) == 4


@pytest.mark.parametrize("victim, target, match", [(3, 3, "must differ"), (0, 4, "target must be a class"),
                                                   (-1, 2, "victim must be a class")])
def test_check_classes(victim, target, match):
    with pytest.raises(ValueError, match=match):
        check_classes(victim, target, 4)


def test_attack_checks_everything_before_training():
    x, y = _xy(n=40, classes=4)
    cfg = LotusConfig.cpu(steps=1, batch_size=8, min_victim=2, n_partitions=4)
    for kwargs, match in [({"victim": 1, "target": 1}, "must differ"),
                          ({"victim": 0, "target": 4}, "target must be a class"),
                          ({"victim": 0, "target": 1, "y": y.float()}, "integer")]:
        yy = kwargs.pop("y", y)
        with pytest.raises(ValueError, match=match):
            LotusAttack(cfg).fit(NeverCalled(), x, yy, **kwargs)
    # 10 victims: enough for K = 4 and 2v = 4 (v = max(8 // 3, 2)); not for 2v = 2 * max(48 // 3, 8) = 32
    assert check_attack_inputs(x, y, 0, 1, cfg) == 4
    with pytest.raises(ValueError, match="victim class 0 has 10 training images"):
        LotusAttack(LotusConfig.cpu(steps=1, batch_size=48, min_victim=8)).fit(NeverCalled(), x, y, 0, 1)


@pytest.mark.parametrize("x", [torch.full((4, 3, 16, 16), float("nan")), torch.zeros(0, 3, 16, 16)])
def test_neural_cleanse_refuses_nan_or_empty(x):
    with pytest.raises(ValueError, match="NaN|empty"):
        neural_cleanse(SmallCNN(10, 4), x, steps=2)


def test_splits_must_exist(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "flat" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / c / "0.png")
    with pytest.raises(FileNotFoundError, match="train and .*test"):
        load_dataset(f"folder:{tmp_path / 'flat'}", "test")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 16, 16, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="split"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}", "test")
    for split in ("train", "test"):
        np.savez(tmp_path / f"d_{split}.npz", x=np.zeros((2, 16, 16, 3), np.uint8), y=np.array([0, 1]))
    assert load_dataset(f"npz:{tmp_path / 'd_{split}.npz'}", "test")[0].shape == (2, 3, 16, 16)


ATTACK = ["lotus", "attack", "--data", "shapes:24", "--arch", "small_cnn", "--preset", "cpu", "--steps", "4",
          "--clean-epochs", "1", "--surrogate-epochs", "1", "--batch-size", "32", "--device", "cpu"]


@pytest.mark.parametrize("flags, match", [(["--victim", "3", "--target", "3"], "--victim and --target must differ"),
                                          (["--target", "10"], "--target must be a class in [0, 9]"),
                                          (["--victim", "12"], "--victim must be a class in [0, 9]"),
                                          (["--num-par", "2", "--batch-size", "512"], "--batch-size")])
def test_cli_attack_refuses_bad_classes_before_training(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    assert main(ATTACK + flags + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not out.exists()                      # nothing trained, nothing written


def test_cli_attack_warns_on_a_weak_result(tmp_path, capsys):
    # 4 poisoning steps of a 1-epoch clean model cannot reach ASR 0.9: the run ends, but says so
    assert main(ATTACK + ["--num-par", "2", "--asr-bound", "0", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "result.json").read_text())["cvpr24"]
    err = capsys.readouterr().err
    assert ("warning: weak attack" in err) == bool(weak_attack(metrics, 0.0))
    assert weak_attack({"asr": 0.5, "asr_par": 0.5, "ba": 0.8, "clean_ba": 0.9}, 0.9) and len(
        weak_attack({"asr": 0.5, "asr_par": 0.5, "ba": 0.8, "clean_ba": 0.9}, 0.9)) == 3
    assert weak_attack({"asr": 0.95, "asr_par": 0.05, "ba": 0.89, "clean_ba": 0.9}, 0.9) == []
    assert weak_attack({"asr": 1.0, "asr_par": float("nan"), "ba": 0.9, "clean_ba": 0.9}, 0.9) == []


def _saved(tmp_path, name, **meta):
    torch.manual_seed(0)
    return str(save_model(tmp_path / f"{name}.safetensors", SmallCNN(10, 4), arch="small_cnn", num_classes=10,
                          meta={"model_kwargs": {"width": 4}, **meta}))


def test_cli_evaluate_refuses_k4_without_partitioner_and_wrong_size(tmp_path, capsys):
    ev = ["lotus", "evaluate", "--data", "shapes:4", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    assert main(ev + ["--model", _saved(tmp_path, "k4", k=4, image_size=16)]) == 2
    assert "--partitioner is required" in capsys.readouterr().err
    assert main(ev + ["--model", _saved(tmp_path, "big", k=1, image_size=32)]) == 2   # shapes are 16x16
    assert "--image-size 32" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
    assert main(ev + ["--model", _saved(tmp_path, "ok", k=1, image_size=16)]) == 0


def test_unprune_computes_the_pruned_function():
    torch.manual_seed(0)
    model = SmallCNN(10, 4).eval()
    x = torch.rand(8, 3, 16, 16)
    pruned = prune_channels(model, 0.5, torch.rand(16)).eval()
    torch.testing.assert_close(unprune(pruned, model)(x), pruned(x))
    rep = fine_prune(model, x, torch.arange(8), x, epochs=1, batch_size=8, flip=False)
    torch.testing.assert_close(unprune(rep.model, model)(x), rep.model.eval()(x))


def test_cli_defend_fp_saves_report_and_model(tmp_path, capsys):
    d = ["lotus", "defend", "--data", "shapes:4", "--device", "cpu", "--model", _saved(tmp_path, "m", k=1),
         "--clean-frac", "0.5", "--out", str(tmp_path / "r.json")]
    assert main(d + ["--method", "fp", "--no-flip", "--save-model", str(tmp_path / "fp.safetensors")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["name"] == "fine_prune"
    from cvpr24.lotus import load_model
    m, info = load_model(tmp_path / "fp.safetensors")
    assert info["defense"] == "fine_prune" and info["image_size"] == 16
    assert main(d + ["--method", "nc", "--save-model", str(tmp_path / "nc.safetensors")]) == 2
    assert "--save-model" in capsys.readouterr().err


def test_cli_stamp_refuses_unknown_suffix(tmp_path, capsys):
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "in.png")
    assert main(["lotus", "stamp", "--image", str(tmp_path / "in.png"), "--trigger", "0",
                 "--out", str(tmp_path / "o.xyz")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "o.xyz").exists()

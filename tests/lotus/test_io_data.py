import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cvpr24.lotus.data import (
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_npz,
    random_crop_flip,
    synthetic_gratings,
    synthetic_shapes,
)
from cvpr24.lotus.io import WholeModulePickleError, load_model, load_official_state_dict, save_model
from cvpr24.lotus.models import SmallCNN, build_model


def test_cifar10_loader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [3, 1, 4, 1]}, f)
    x, y = load_cifar10(tmp_path, "test")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [3, 1, 4, 1]
    # CHW row-major: the first 1024 bytes are the red plane
    assert x[1, 0, 0, 5] == pytest.approx(data[1, 5] / 255)
    assert x[1, 2, 31, 31] == pytest.approx(data[1, 3071] / 255)
    assert load_cifar10(tmp_path, "train")[0].shape == (20, 3, 32, 32)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="data_batch"):
        load_cifar10(tmp_path / "missing", "train")


def test_npz_and_folder_loaders(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 1]))
    xt, yt = load_npz(tmp_path / "d.npz")
    assert torch.allclose(xt[2].permute(1, 2, 0), torch.from_numpy(x[2]).float() / 255)
    assert yt.tolist() == [0, 1, 1]
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="uint8"):
        load_npz(tmp_path / "bad.npz")
    for c, name in enumerate(["00000", "00001"]):
        (tmp_path / "gtsrb" / name).mkdir(parents=True)
        Image.fromarray(x[c]).save(tmp_path / "gtsrb" / name / "a.ppm")
    xf, yf, classes = load_image_folder(tmp_path / "gtsrb", image_size=8)
    assert classes == ["00000", "00001"] and yf.tolist() == [0, 1]
    assert torch.allclose(xf[0].permute(1, 2, 0), torch.from_numpy(x[0]).float() / 255)
    with pytest.raises(ValueError, match="data must be"):
        load_dataset("cifar10")


def test_official_state_dict_loads_and_reproduces_logits(tmp_path):
    torch.manual_seed(0)
    ref = build_model("resnet18").eval()
    keys = list(ref.state_dict())
    assert "conv1.weight" in keys and "layer2.0.shortcut.0.weight" in keys and "linear.bias" in keys
    assert "layer1.0.bn1.num_batches_tracked" in keys and not any("normalize" in k for k in keys)
    torch.save(ref.state_dict(), tmp_path / "clean.pth")
    model, k = load_official_state_dict(tmp_path / "clean.pth", "resnet18")
    x = torch.rand(2, 3, 32, 32)
    assert k is None and torch.equal(model(x), ref(x))
    sur = build_model("resnet18", 14)
    torch.save({"module." + n: v for n, v in sur.state_dict().items()}, tmp_path / "surrogate.pth")
    _, k = load_official_state_dict(tmp_path / "surrogate.pth", "resnet18")
    assert k == 4
    vgg = build_model("vgg11")
    assert "features.0.weight" in vgg.state_dict() and "classifier.weight" in vgg.state_dict()


def test_whole_module_pickle_is_refused_with_the_fix(tmp_path):
    torch.save(SmallCNN(), tmp_path / "lotus_final.pt")
    with pytest.raises(WholeModulePickleError, match=r"weights_only=False\).state_dict\(\)"):
        load_official_state_dict(tmp_path / "lotus_final.pt", "small_cnn")


def test_our_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = SmallCNN(width=4).eval()
    save_model(tmp_path / "m.safetensors", m, arch="small_cnn", num_classes=10,
               meta={"victim": 0, "target": 9, "model_kwargs": {"width": 4}})
    back, info = load_model(tmp_path / "m.safetensors")
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(back(x), m(x)) and info["victim"] == 0


def test_shapes_deterministic_and_balanced():
    a, b = synthetic_shapes(5, seed=3), synthetic_shapes(5, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.style, b.style)
    assert torch.bincount(a.y).tolist() == [5] * 10
    assert a.x.min() >= 0 and a.x.max() <= 1
    assert not torch.equal(a.x, synthetic_shapes(5, seed=4).x)


def test_gratings_deterministic_balanced_and_oriented():
    a, b = synthetic_gratings(6, seed=3), synthetic_gratings(6, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.style, b.style)
    assert torch.bincount(a.y).tolist() == [6] * 10 and set(a.style.tolist()) <= {0, 1, 2, 3}
    assert a.x.shape == (60, 3, 16, 16) and a.x.min() >= 0 and a.x.max() <= 1
    # class 0 (orientation 0) varies along columns only; class 5 (90 degrees) along rows only
    g0, g5 = a.x[a.y == 0].mean(1), a.x[a.y == 5].mean(1)              # (n, H, W)
    assert g0.std(1).mean() < 0.5 * g0.std(2).mean()
    assert g5.std(2).mean() < 0.5 * g5.std(1).mean()
    with pytest.raises(ValueError, match="n_per_class"):
        synthetic_gratings(0)


def test_random_crop_flip_per_sample_and_batch_mode():
    x = torch.rand(8, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=0, flip=True, generator=g)
    for i in range(8):  # each image is itself or its mirror
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    same = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(1), per_sample=False)
    shifted = [(same[i] == 0).sum() for i in range(8)]
    assert len({int(s) for s in shifted}) <= 2  # one crop for the batch (zero border equal up to content)

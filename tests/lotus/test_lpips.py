"""LPIPS-VGG partition features from weight files given by path (offline, no pickle)."""

import pytest
import torch
import torch.nn.functional as F
from _lotus_helpers import VGG_CONVS, write_lpips_weights
from safetensors.torch import save_file
from torch import nn

from cvpr24.lotus.io import WholeModulePickleError
from cvpr24.lotus.partition import ClusterPartitioner, LpipsFeatures


def by_hand(x, vgg, lin):
    """Tap 2 of LPIPS-VGG written out: scale, conv/ReLU x7 with two pools, unit norm, lin2."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    h = (x * 2 - 1 - shift) / scale
    for i in VGG_CONVS:
        if i in (5, 10):
            h = F.max_pool2d(h, 2)
        h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
    h = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    return F.conv2d(h, lin["lin2.model.1.weight"]).flatten(1)


def test_lpips_features_match_the_written_out_network(tmp_path):
    vgg, lin = write_lpips_weights(tmp_path)
    feats = LpipsFeatures.from_paths(tmp_path / "vgg16.pth", tmp_path / "vgg_lin.safetensors", batch_size=3)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = feats(x)
    assert out.shape == (5, 16)                                  # (H/4)² dims
    torch.testing.assert_close(out, by_hand(x, vgg, lin), rtol=1e-4, atol=1e-5)
    official = LpipsFeatures.from_paths(tmp_path / "vgg16.pth", tmp_path / "vgg_lin.safetensors",
                                        compat_lpips_range=True)(x)
    assert not torch.allclose(official, out)                     # [0, 1] fed as is: other features
    labels = ClusterPartitioner(2, features=feats).fit(x).labels_
    assert sorted(set(labels.tolist())) == [0, 1]


def test_lpips_weight_files_are_checked(tmp_path):
    vgg, lin = write_lpips_weights(tmp_path)
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")        # a whole pickled module: never unpickled
    with pytest.raises(WholeModulePickleError):
        LpipsFeatures.from_paths(tmp_path / "module.pth", tmp_path / "vgg_lin.safetensors")
    del vgg["features.12.weight"]
    torch.save(vgg, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"short.pth.*features\.12\.weight"):
        LpipsFeatures.from_paths(tmp_path / "short.pth", tmp_path / "vgg_lin.safetensors")
    with pytest.raises(ValueError, match="lin2.model.1.weight"):
        LpipsFeatures.from_paths(tmp_path / "vgg16.pth", tmp_path / "vgg16.pth")
    save_file({"lin2.model.1.weight": torch.zeros(1, 128, 1, 1)}, tmp_path / "bad_lin.safetensors")
    with pytest.raises(ValueError, match=r"expected \(1, 256, 1, 1\)"):
        LpipsFeatures.from_paths(tmp_path / "vgg16.pth", tmp_path / "bad_lin.safetensors")
    with pytest.raises(FileNotFoundError):
        LpipsFeatures.from_paths(tmp_path / "nope.pth", tmp_path / "vgg_lin.safetensors")

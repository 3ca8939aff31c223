"""Classifiers with the official LOTUS key names, and the CPU model of the reproduction.

Every model takes images in ``[0, 1]`` and normalises them itself (``normalize``, buffers not
persistent, so ``state_dict`` keys are exactly the official ones: ``conv1.weight``,
``layer1.0.bn1.running_mean``, ``linear.weight``...). Two attributes make the attack and the
defenses architecture-agnostic:

- ``head_name``: the final ``nn.Linear`` (swapped for the C+K surrogate head);
- ``feature_name``: the module whose output is the last feature map (N, C, h, w), used by
  fine-pruning (channel pruning) and NAD (attention maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; buffers are not saved in the state dict."""

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (3x3 stem, no max-pool, ``avg_pool2d(4)``, head ``linear``)."""

    head_name = "linear"
    feature_name = "layer4"

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))   # (N, 512, H/8, W/8)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(4) at 32x32
        return self.linear(out)


_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BN after every conv; keys ``features.{i}.*`` and ``classifier.*``."""

    head_name = "classifier"
    feature_name = "features"

    def __init__(self, name: str = "vgg11", num_classes: int = 10,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if name not in _VGG_CFG:
            raise ValueError(f"VGG name must be one of {sorted(_VGG_CFG)}, got {name!r}")
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG_CFG[name]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.normalize(x))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SmallCNN(nn.Module):
    """The reproduction's CPU model: three conv-BN-ReLU blocks, global pooling, ``linear``.

    ``[conv3x3(w)-BN-ReLU, maxpool, conv(2w)-BN-ReLU, maxpool, conv(4w)-BN-ReLU, GAP, linear]``,
    about 25k parameters at ``width=16``.
    """

    head_name = "linear"
    feature_name = "block3"

    def __init__(self, num_classes: int = 10, width: int = 16,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.25, 0.25, 0.25)):
        super().__init__()
        self.normalize = Normalize(mean, std)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.block1 = block(3, width)
        self.block2 = block(width, 2 * width)
        self.block3 = block(2 * width, 4 * width)
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(self.block1(self.normalize(x)), 2)
        out = F.max_pool2d(self.block2(out), 2)
        out = self.block3(out)                                         # (N, 4w, H/4, W/4)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


ARCHS = ("resnet18", "resnet34", "vgg11", "vgg13", "vgg16", "small_cnn")


def build_model(arch: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build ``arch`` (one of :data:`ARCHS`) with ``num_classes`` outputs."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if arch == "resnet18":
        return ResNet((2, 2, 2, 2), num_classes, **kwargs)
    if arch == "resnet34":
        return ResNet((3, 4, 6, 3), num_classes, **kwargs)
    if arch.startswith("vgg"):
        if arch not in _VGG_CFG:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        return VGG(arch, num_classes, **kwargs)
    if arch == "small_cnn":
        return SmallCNN(num_classes, **kwargs)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def get_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, getattr(model, "head_name", "linear"), None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"model {type(model).__name__} needs a 'head_name' attribute naming its "
                         "final nn.Linear (e.g. head_name = 'linear')")
    return head


def replace_head(model: nn.Module, num_outputs: int) -> nn.Module:
    """Swap the final linear layer for a fresh ``Linear(d, num_outputs)`` (in place; returns model)."""
    head = get_head(model)
    new = nn.Linear(head.in_features, num_outputs).to(head.weight.device)
    setattr(model, model.head_name, new)
    return model


def feature_module(model: nn.Module) -> nn.Module:
    """The module named by ``model.feature_name`` (last feature map)."""
    name = getattr(model, "feature_name", None)
    if name is None:
        raise ValueError(f"model {type(model).__name__} needs a 'feature_name' attribute naming the "
                         "module whose output is the last feature map (e.g. 'layer4')")
    return model.get_submodule(name)

"""Multi-label classifiers for SPA training, and the module's configuration.

``MultiLabelClassifier(backbone, num_features, num_classes)`` = backbone (pooled features,
shape (N, D)) -> optional dropout -> ``Linear(D, C)`` named ``head``. The
backbone is any module; shipped here are a plain-torch ResNet-50/101 whose ``state_dict`` keys
equal torchvision's (so users load ImageNet weights they already have with
``torch.load(path, weights_only=True)``), and an MLP for feature files and the CPU
reproduction. The link is part of the model: a checkpoint without its loss config cannot be
read out (see :mod:`cvpr24.spa.train`).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cvpr24.spa.losses import AsymmetricLoss, BCELoss, FocalLoss, SPALoss, SPALPRLoss, SPAParams

ARCHS = ("mlp", "resnet50", "resnet101")
LPR_NORMS = ("classes", "pairs")
LPR_SCORES = ("log_odds", "raw")


@dataclass
class SPAConfig:
    """Everything a training run needs. Defaults are the full-scale recipe (ASL's ``train.py``
    [ASL] with SPA + LPR [mlcpl]/[choice], docs/spa.md); :meth:`cpu` is the reproduction's.

    The six SPA parameters, ``lam`` and the LPR switches define the loss *and* the read-out.
    """

    # loss (S7-S14)
    loss: str = "spa"  # "spa" | "bce" | "focal" | "asl"
    zeta_pos: float = 1.0
    k_pos: float = 1.0
    b_pos: float = 0.0
    zeta_neg: float = 5.0
    k_neg: float = 3.0
    b_neg: float = 1.0
    lam: float = 1.0  # LPR weight; 0 disables it
    lpr_norm: str = "classes"
    lpr_score: str = "log_odds"
    focal_gamma: float = 2.0
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    loss_reduction: str = "mean"  # the official ASL recipe sums ("sum")
    ignore_index: float | None = -1.0
    # model
    arch: str = "resnet101"
    num_classes: int = 80
    in_features: int = 2048  # mlp only: input feature size
    hidden: tuple[int, ...] = (1024,)  # mlp only
    dropout: float = 0.0
    resnet_width: int = 64  # base width of the ResNet (64 = the standard ResNet-50/101)
    image_size: int = 448
    # optimisation (ASL train.py): Adam 1e-4, wd 1e-4 on weights only, OneCycle over an
    # 80-epoch cycle stopped after 40 epochs, batch 128, AMP, EMA 0.9997
    optimizer: str = "adam"  # "adam" | "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 40
    schedule: str = "onecycle"  # "onecycle" | "constant"
    cycle_epochs: int = 80
    pct_start: float = 0.2
    batch_size: int = 128
    amp: bool = True
    ema_decay: float = 0.9997  # 0 disables the EMA copy
    num_workers: int = 8  # DataLoader workers for images; the CLI defaults to the CPU count
    seed: int = 0
    checkpoint_every: int = 1  # epochs

    @classmethod
    def cpu(cls, **overrides) -> SPAConfig:
        """The CPU reproduction setting: MLP 16 -> 128 -> 128 -> 20, AdamW 1e-3,
        wd 1e-4, batch 256, 20 epochs, constant learning rate, no AMP/EMA."""
        base = dict(arch="mlp", num_classes=20, in_features=16, hidden=(128, 128), optimizer="adamw",
                    lr=1e-3, weight_decay=1e-4, epochs=20, schedule="constant", batch_size=256,
                    amp=False, ema_decay=0.0, num_workers=0, checkpoint_every=0, image_size=0)
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        if self.loss not in ("spa", "bce", "focal", "asl"):
            raise ValueError(f"loss must be 'spa', 'bce', 'focal' or 'asl', got {self.loss!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("num_classes", "batch_size", "epochs", "in_features"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        # the loss's own settings, checked here so a bad config fails before any data is read
        SPAParams(self.zeta_pos, self.k_pos, self.b_pos, self.zeta_neg, self.k_neg, self.b_neg)
        for name, low, high in (("lam", 0, math.inf), ("focal_gamma", 0, math.inf),
                                ("asl_gamma_neg", 0, math.inf), ("asl_gamma_pos", 0, math.inf)):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and low <= value < high):
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        if not (isinstance(self.asl_clip, numbers.Real) and 0 <= self.asl_clip < 1):
            raise ValueError(f"asl_clip must be in [0, 1), got {self.asl_clip!r}")
        if self.lpr_norm not in LPR_NORMS:
            raise ValueError(f"lpr_norm must be one of {LPR_NORMS}, got {self.lpr_norm!r}")
        if self.lpr_score not in LPR_SCORES:
            raise ValueError(f"lpr_score must be one of {LPR_SCORES}, got {self.lpr_score!r}")
        if not (isinstance(self.num_workers, numbers.Integral) and self.num_workers >= 0):
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")


def build_loss(cfg: SPAConfig):
    """The training loss of ``cfg`` (wrapped in :class:`SPALPRLoss` when ``lam > 0``)."""
    common = dict(reduction=cfg.loss_reduction, ignore_index=cfg.ignore_index)
    if cfg.loss == "spa":
        base = SPALoss(cfg.zeta_pos, cfg.k_pos, cfg.b_pos, cfg.zeta_neg, cfg.k_neg, cfg.b_neg, **common)
    elif cfg.loss == "bce":
        base = BCELoss(**common)
    elif cfg.loss == "focal":
        base = FocalLoss(cfg.focal_gamma, **common)
    else:
        base = AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, **common)
    if cfg.lam > 0:
        return SPALPRLoss(base, cfg.lam, norm=cfg.lpr_norm, score=cfg.lpr_score)
    return base


# --------------------------------------------------------------------------------------------
# backbones
# --------------------------------------------------------------------------------------------

class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1]`` with ReLU; output (N, hidden[-1])."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        layers, d = [], in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.layers = nn.Sequential(*layers)
        self.num_features = d

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), torchvision's parameter names."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """ResNet-50/101 feature extractor: image (N, 3, H, W) -> pooled features (N, 2048).

    Parameter names equal torchvision's ``resnet50``/``resnet101`` minus ``fc``.
    """

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 23, 3), width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = width
        for i, blocks in enumerate(layers):
            w = width * 2**i
            stage = [Bottleneck(in_ch, w, 1 if i == 0 else 2)]
            in_ch = w * Bottleneck.expansion
            stage += [Bottleneck(in_ch, w) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_features = in_ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 2048, H/32, W/32)
        return x.mean((2, 3))  # global average pool: (N, 2048)


def load_torchvision_resnet(backbone: ResNet, path: str | os.PathLike) -> None:
    """Load torchvision ResNet ImageNet weights (a ``.pth`` state dict) into ``backbone``.

    Read with ``torch.load(weights_only=True)`` (never unpickles code); ``fc.*`` is dropped.
    Raises ``ValueError`` naming missing or unexpected keys.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path} does not fit this ResNet: {e}") from e
    if missing or unexpected:
        raise ValueError(f"{path} is not a torchvision ResNet of this depth: missing keys "
                         f"{missing[:5]}, unexpected keys {unexpected[:5]}")


def remap_asl_head(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an ASL checkpoint's ``state_dict`` (``{'model': ...}`` already unwrapped) to our
    names: ``head.fc.*`` -> ``head.*``, everything else under ``backbone.``. Only the head
    transfers to our backbones (TResNet itself is out of scope)."""
    out = {}
    for k, v in state.items():
        out[k.replace("head.fc.", "head.", 1) if k.startswith("head.fc.") else f"backbone.{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# the classifier
# --------------------------------------------------------------------------------------------

class MultiLabelClassifier(nn.Module):
    """backbone -> (dropout) -> ``head = Linear(D, C)``: one raw output ``v`` per label.

    The outputs are *not* probabilities for SPA: read them with the training loss's
    ``predict_proba`` (the inverse link (S9)).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.backbone(x)))  # (N, C)


def build_model(cfg: SPAConfig) -> MultiLabelClassifier:
    """The classifier of ``cfg`` (weights freshly initialised)."""
    if cfg.arch == "mlp":
        backbone = MLP(cfg.in_features, cfg.hidden)
    else:
        backbone = ResNet((3, 4, 6, 3) if cfg.arch == "resnet50" else (3, 4, 23, 3), cfg.resnet_width)
    return MultiLabelClassifier(backbone, backbone.num_features, cfg.num_classes, cfg.dropout)


"""Per-image backbones (B1, B2): ResNet-50 + ViT-B/8 (DINO) at full scale, a tiny CNN for CPU.

Written in plain torch with the parameter names of torchvision's ResNet-50 and DINO's
ViT, so the official checkpoint's ``encoder.backbone.*`` tensors load one to one. Every
backbone maps images ``[B, V, 3, H, W]`` in [0, 1] to features ``[B, V, d_out, H, W]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, d_in: int, width: int, stride: int = 1):
        super().__init__()
        d_out = width * self.expansion
        self.conv1 = nn.Conv2d(d_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, d_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(d_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or d_in != d_out:
            self.downsample = nn.Sequential(nn.Conv2d(d_in, d_out, 1, stride, bias=False), nn.BatchNorm2d(d_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 (torchvision layout, stride on the 3x3 conv), without the classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        d = 64
        for i, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            layers = [Bottleneck(d, width, stride)] + [Bottleneck(width * 4, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            d = width * 4


class BackboneResnet(nn.Module):
    """(B1) stem (no max-pool) and layer1..3, each projected 1x1 to ``d_out``, upsampled
    bilinearly (align_corners) to full resolution and summed."""

    def __init__(self, d_out: int = 512, num_layers: int = 4):
        super().__init__()
        self.model = ResNet50()
        self.num_layers = num_layers
        widths = {0: 64, 1: 256, 2: 512, 3: 1024, 4: 2048}
        self.projections = nn.ModuleDict({f"layer{i}": nn.Conv2d(widths[i], d_out, 1) for i in range(1, num_layers)})
        self.projections["layer0"] = nn.Conv2d(64, d_out, 1)

    def forward(self, images: Tensor) -> Tensor:
        b, v, _, h, w = images.shape
        x = self.model.relu(self.model.bn1(self.model.conv1(images.flatten(0, 1))))
        features = [self.projections["layer0"](x)]
        for i in range(1, self.num_layers):
            x = getattr(self.model, f"layer{i}")(x)
            features.append(self.projections[f"layer{i}"](x))
        out = sum(F.interpolate(f, (h, w), mode="bilinear", align_corners=True) for f in features)
        return out.unflatten(0, (b, v))


class _ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class _ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _ViTMlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class VisionTransformer(nn.Module):
    """ViT-B/8 as in DINO (pre-norm blocks, LayerNorm eps 1e-6, 224-px position grid that
    is resized bicubically to the input, as DINO does)."""

    def __init__(self, patch: int = 8, dim: int = 768, depth: int = 12, heads: int = 12, train_size: int = 224):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (train_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(_ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _pos_embed(self, nh: int, nw: int) -> Tensor:
        grid = self.pos_embed[:, 1:]
        n = int(math.sqrt(grid.shape[1]))
        if (nh, nw) == (n, n):
            return self.pos_embed
        # DINO adds 0.1 to the target size to avoid floating-point rounding in the scale factor
        grid = F.interpolate(grid.reshape(1, n, n, -1).permute(0, 3, 1, 2),
                             scale_factor=((nh + 0.1) / n, (nw + 0.1) / n), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` -> normalised tokens of the last block ``[N, 1 + HW/p^2, dim]``."""
        tokens = self.patch_embed.proj(x)
        nh, nw = tokens.shape[-2:]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens.flatten(2).transpose(1, 2)], 1)
        tokens = tokens + self._pos_embed(nh, nw)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def _token_mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_out))


class BackboneDino(nn.Module):
    """(B2) ResNet features + ViT patch tokens (repeated over their p x p pixels) + the CLS
    token (broadcast), each token through a 768-768-d_out MLP."""

    def __init__(self, d_out: int = 512, patch: int = 8):
        super().__init__()
        self.dino = VisionTransformer(patch=patch)
        self.resnet_backbone = BackboneResnet(d_out)
        self.global_token_mlp = _token_mlp(768, d_out)
        self.local_token_mlp = _token_mlp(768, d_out)
        self.d_out = d_out

    def forward(self, images: Tensor) -> Tensor:
        b, v, _, h, w = images.shape
        p = self.dino.patch
        if h % p or w % p:
            raise ValueError(f"image height and width must be multiples of the ViT patch {p}, got {h}x{w}")
        tokens = self.dino(images.flatten(0, 1))
        global_token = self.global_token_mlp(tokens[:, 0])[..., None, None]  # [BV, C, 1, 1]
        local = self.local_token_mlp(tokens[:, 1:]).transpose(1, 2).unflatten(-1, (h // p, w // p))
        local = local.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        out = self.resnet_backbone(images) + (local + global_token).unflatten(0, (b, v))
        return out


class BackboneTiny(nn.Module):
    """Four 3x3 conv layers with ReLU (our CPU backbone, same output contract)."""

    def __init__(self, d_out: int = 64, width: int = 64, layers: int = 4):
        super().__init__()
        convs: list[nn.Module] = []
        d = 3
        for i in range(layers):
            convs += [nn.Conv2d(d, width if i < layers - 1 else d_out, 3, 1, 1)]
            if i < layers - 1:
                convs.append(nn.ReLU())
            d = width
        self.net = nn.Sequential(*convs)
        self.d_out = d_out

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.flatten(0, 1)).unflatten(0, images.shape[:2])

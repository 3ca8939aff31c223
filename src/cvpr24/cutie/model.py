"""The Cutie network: encoders, sensory memory, pixel fusion, object memory, object
transformer with foreground/background masked attention, and the mask decoder.

Module attribute paths mirror the official release, so an official ``state_dict`` loads with
an identity key map (see :mod:`cvpr24.cutie.weights`). Shapes: ``B`` batch, ``K`` objects,
``h, w`` the stride-16 grid, ``N`` object queries. Equation labels are defined in
``docs/cutie.md`` (section "Equations").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvpr24.cutie.functional import aggregate, aggregate_logits, chunk_slices, no_autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CutieConfig:
    """Architecture of a Cutie model; the defaults are Cutie-base.

    ``pixel_block``/``pixel_layers``/``pixel_widths`` describe the query-encoder trunk
    (ResNet-50: bottleneck blocks (3, 4, 6), stem 64 and planes 64/128/256; layer4 dropped);
    ``mask_*`` the mask-encoder trunk (ResNet-18). ``num_blocks = 0`` is the pixel-only reader
    (no object transformer, no object summarizer). ``masked_attention=False`` turns off the
    foreground/background mask of Eq. 13 (an ablation; official weights use True).
    ``fuser_extra_blocks`` adds CAResBlocks to the pixel fuser (a capacity control; 0 in the
    official models).
    """

    pixel_block: str = "bottleneck"
    pixel_layers: tuple[int, int, int] = (3, 4, 6)
    pixel_widths: tuple[int, int, int, int] = (64, 64, 128, 256)
    mask_block: str = "basic"
    mask_layers: tuple[int, int, int] = (2, 2, 2)
    mask_widths: tuple[int, int, int, int] = (64, 64, 128, 256)
    key_dim: int = 64
    value_dim: int = 256
    sensory_dim: int = 256
    pixel_dim: int = 256
    embed_dim: int = 256
    num_queries: int = 16
    num_heads: int = 8
    ff_dim: int = 2048
    num_blocks: int = 3
    up_dims: tuple[int, int, int] = (256, 128, 128)
    pe_scale: float = 32.0
    pe_temperature: float = 128.0
    single_object: bool = False
    masked_attention: bool = True
    fuser_extra_blocks: int = 0
    sensory_aux: bool = True
    pixel_mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    pixel_std: tuple[float, float, float] = field(default=IMAGENET_STD)

    @classmethod
    def base(cls) -> CutieConfig:
        """Cutie-base: ResNet-50 query encoder."""
        return cls()

    @classmethod
    def small(cls) -> CutieConfig:
        """Cutie-small: ResNet-18 query encoder (``ms_dims`` 256/128/64), all else as base."""
        return cls(pixel_block="basic", pixel_layers=(2, 2, 2))

    @classmethod
    def cpu(cls, num_blocks: int = 2, **overrides) -> CutieConfig:
        """The narrow CPU-scale model of the reproduction (same classes, smaller widths)."""
        cfg = dict(
            pixel_block="basic",
            pixel_layers=(2, 2, 2),
            pixel_widths=(8, 8, 16, 32),
            mask_block="basic",
            mask_layers=(2, 2, 2),
            mask_widths=(8, 8, 16, 32),
            key_dim=8,
            value_dim=32,
            sensory_dim=16,
            pixel_dim=32,
            embed_dim=32,
            num_queries=8,
            num_heads=2,
            ff_dim=64,
            num_blocks=num_blocks,
            up_dims=(32, 16, 16),
        )
        cfg.update(overrides)
        return cls(**cfg)

    @property
    def ms_dims(self) -> tuple[int, int, int]:
        """Channels of the query encoder's (f16, f8, f4)."""
        e = 4 if self.pixel_block == "bottleneck" else 1
        w = self.pixel_widths
        return (w[3] * e, w[2] * e, w[1] * e)

    @property
    def mask_final_dim(self) -> int:
        e = 4 if self.mask_block == "bottleneck" else 1
        return self.mask_widths[3] * e

    def __post_init__(self) -> None:
        for name in ("pixel_layers", "pixel_widths", "mask_layers", "mask_widths", "up_dims"):
            setattr(self, name, tuple(getattr(self, name)))
        self.pixel_mean = tuple(self.pixel_mean)
        self.pixel_std = tuple(self.pixel_std)
        if self.pixel_block not in ("basic", "bottleneck") or self.mask_block not in (
            "basic",
            "bottleneck",
        ):
            raise ValueError("pixel_block and mask_block must be 'basic' or 'bottleneck'")
        if self.up_dims[0] != self.embed_dim:
            raise ValueError(
                f"up_dims[0] ({self.up_dims[0]}) must equal embed_dim ({self.embed_dim})"
            )
        if self.pixel_dim != self.embed_dim:
            raise ValueError("pixel_dim must equal embed_dim (the readout is added to pix_feat)")
        if self.num_queries % 2:
            raise ValueError(f"num_queries must be even (half fg, half bg), got {self.num_queries}")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")


# ----------------------------------------------------------------------------------------
# ResNet trunks (torchvision attribute names: conv1, bn1, layerN.i.{conv,bn}, downsample.{0,1})


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
    )


def _make_layers(block: str, in_ch: int, layers, widths) -> tuple[list[nn.Sequential], int]:
    """ResNet layers 1-3 (strides 1, 2, 2) after a stem of ``in_ch`` channels."""
    cls = Bottleneck if block == "bottleneck" else BasicBlock
    out, inplanes = [], in_ch
    for n, planes, stride in zip(layers, widths[1:], (1, 2, 2), strict=True):
        blocks = [cls(inplanes, planes, stride)]
        inplanes = planes * cls.expansion
        blocks += [cls(inplanes, planes) for _ in range(n - 1)]
        out.append(nn.Sequential(*blocks))
    return out, inplanes


def _init_trunk(module: nn.Module) -> None:
    """He-normal convs (fan-out), unit BatchNorm: the usual ResNet initialization."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(
                m.weight,
                0.0,
                math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)),
            )
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FrozenBNMixin:
    """BatchNorm stays in eval mode even when the model trains (statistics are frozen)."""

    def train(self, mode: bool = True):
        super().train(False)
        return self


class PixelEncoder(FrozenBNMixin, nn.Module):
    """Query encoder: ResNet stem and layers 1-3 (``layer1`` is named ``res2``).

    (B, 3, H, W) normalized image -> (f16, f8, f4).
    """

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        stem = cfg.pixel_widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        (self.res2, self.layer2, self.layer3), _ = _make_layers(
            cfg.pixel_block, stem, cfg.pixel_layers, cfg.pixel_widths
        )
        _init_trunk(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


# ----------------------------------------------------------------------------------------
# Group (per-object) building blocks. "g" tensors carry an object axis: (B, K, C, h, w).


class GConv2d(nn.Conv2d):
    """A Conv2d applied to every object of a (B, K, C, h, w) tensor."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        b, k = g.shape[:2]
        out = super().forward(g.flatten(0, 1))
        return out.view(b, k, *out.shape[1:])


def _resize_groups(g: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    b, k = g.shape[:2]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(g.flatten(0, 1), scale_factor=scale, mode=mode, **kw)
    return out.view(b, k, *out.shape[1:])


class CAResBlock(nn.Module):
    """Residual block with ECA channel attention.

    ``y = Conv3x3(ReLU(Conv3x3(ReLU(x))))``, ``w = sigmoid(Conv1d_k(GAP(y)))`` with kernel
    ``k = t`` (t odd) or ``t + 1``, ``t = floor((|log2 C_out| + 1) / 2)``; output
    ``y * w + skip(x)``.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        t = int((abs(math.log2(out_dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(F.relu(x))))
        b, c = y.shape[:2]
        w = self.conv(y.mean(dim=(2, 3)).view(b, 1, c)).transpose(1, 2).unsqueeze(-1).sigmoid()
        return y * w + self.downsample(x)


class GroupResBlock(nn.Module):
    """``Conv3x3(ReLU(Conv3x3(ReLU(g)))) + skip(g)`` on every object."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.downsample = nn.Identity() if in_dim == out_dim else GConv2d(in_dim, out_dim, 1)
        self.conv1 = GConv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = GConv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(g)))) + self.downsample(g)


class _Distributor(nn.Module):
    """``x_transform(x)`` broadcast over objects plus ``g_transform(g_k)``."""

    def __init__(self, x_in: int, g_in: int, out: int):
        super().__init__()
        self.x_transform = nn.Conv2d(x_in, out, 1)
        self.g_transform = GConv2d(g_in, out, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.x_transform(x).unsqueeze(1) + self.g_transform(g)


class GroupFeatureFusionBlock(nn.Module):
    """Fuse a shared map ``x`` (B, C_x, h, w) into per-object features ``g`` (B, K, C_g, h, w):
    ``Conv1x1(x) + Conv1x1(g_k)`` then CAResBlocks."""

    def __init__(self, x_in: int, g_in: int, out: int, extra_blocks: int = 0):
        super().__init__()
        self.distributor = _Distributor(x_in, g_in, out)
        self.block1 = CAResBlock(out, out)
        self.block2 = CAResBlock(out, out)
        self.extra = nn.ModuleList(CAResBlock(out, out) for _ in range(extra_blocks))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, k = g.shape[:2]
        g = self.distributor(x, g).flatten(0, 1)
        g = self.block2(self.block1(g))
        for block in self.extra:
            g = block(g)
        return g.view(b, k, *g.shape[1:])


def gru_update(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sensory-memory GRU (Eq. 3): ``[f, u, c] = split(values, 3)`` along channels and
    ``h' = sigmoid(f) * h * (1 - sigmoid(u)) + sigmoid(u) * tanh(c)``. h: (B, K, C_h, h, w)."""
    f, u, c = values.chunk(3, dim=2)
    forget, update = torch.sigmoid(f), torch.sigmoid(u)
    return forget * h * (1 - update) + update * torch.tanh(c)


def _float32_gru(transform: nn.Module, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with the gates ``transform([g; h])``, in float32 also under AMP."""
    with no_autocast(h):
        g, h = g.float(), h.float()
        return gru_update(h, transform(torch.cat([g, h], dim=2)))


class SensoryDeepUpdater(nn.Module):
    """Deep update of the sensory memory from the mask value ``v_k`` (Eq. 3 with ``g = v_k``)."""

    def __init__(self, in_dim: int, sensory_dim: int):
        super().__init__()
        self.transform = GConv2d(in_dim + sensory_dim, sensory_dim * 3, 3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return _float32_gru(self.transform, g, h)


class SensoryUpdater(nn.Module):
    """Decoder-side sensory update (Eq. 3) with ``g = Conv(p16) + Conv(area/2(p8)) +
    Conv(area/4([p4; logit]))``."""

    def __init__(self, g_dims: tuple[int, int, int], mid_dim: int, sensory_dim: int):
        super().__init__()
        self.g16_conv = GConv2d(g_dims[0], mid_dim, 1)
        self.g8_conv = GConv2d(g_dims[1], mid_dim, 1)
        self.g4_conv = GConv2d(g_dims[2], mid_dim, 1)
        self.transform = GConv2d(mid_dim + sensory_dim, sensory_dim * 3, 3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(
        self, p16: torch.Tensor, p8: torch.Tensor, p4: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        g = (
            self.g16_conv(p16)
            + self.g8_conv(_resize_groups(p8, 0.5, "area"))
            + self.g4_conv(_resize_groups(p4, 0.25, "area"))
        )
        return _float32_gru(self.transform, g, h)


# ----------------------------------------------------------------------------------------
# Key projection, mask encoder, pixel fuser, decoder


class KeyProjection(nn.Module):
    """Key ``k``, shrinkage ``d = Conv(x)^2 + 1`` and selection ``e = sigmoid(Conv(x))`` from f16."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(cfg.ms_dims[0], cfg.pixel_dim, 1)
        self.key_proj = nn.Conv2d(cfg.pixel_dim, cfg.key_dim, 3, padding=1)
        self.d_proj = nn.Conv2d(cfg.pixel_dim, 1, 3, padding=1)
        self.e_proj = nn.Conv2d(cfg.pixel_dim, cfg.key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pix_feat_proj(f16)
        return self.key_proj(x), self.d_proj(x) ** 2 + 1, torch.sigmoid(self.e_proj(x))


class MaskEncoder(FrozenBNMixin, nn.Module):
    """Value encoder: per object, [image; m_k; m_others] -> ResNet (maxpool before ReLU) ->
    GroupFeatureFusionBlock with ``pix_feat`` -> mask value ``v_k``; plus the deep sensory
    update."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        stem = cfg.mask_widths[0]
        self.conv1 = nn.Conv2d(4 if cfg.single_object else 5, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        (self.layer1, self.layer2, self.layer3), _ = _make_layers(
            cfg.mask_block, stem, cfg.mask_layers, cfg.mask_widths
        )
        _init_trunk(self)
        self.fuser = GroupFeatureFusionBlock(cfg.pixel_dim, cfg.mask_final_dim, cfg.value_dim)
        self.sensory_update = SensoryDeepUpdater(cfg.value_dim, cfg.sensory_dim)

    def forward(
        self, image: torch.Tensor, pix_feat: torch.Tensor, masks_g: torch.Tensor
    ) -> torch.Tensor:
        """image (B, 3, H, W) normalized; masks_g (B, K, 1|2, H, W) -> v (B, K, C_v, h, w)."""
        b, k = masks_g.shape[:2]
        g = torch.cat([image.unsqueeze(1).expand(-1, k, -1, -1, -1), masks_g], dim=2)
        g = g.flatten(0, 1)
        g = F.relu(self.maxpool(self.bn1(self.conv1(g))))
        g = self.layer3(self.layer2(self.layer1(g)))
        return self.fuser(pix_feat, g.view(b, k, *g.shape[1:]))


class PixelFeatureFuser(nn.Module):
    """Pixel readout ``R_0`` (Eq. 4): ``GFFB(F_q, r_k + Conv1x1([h_k; m_k; m_others]))``."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        extra = 1 if cfg.single_object else 2
        self.fuser = GroupFeatureFusionBlock(
            cfg.pixel_dim, cfg.value_dim, cfg.embed_dim, cfg.fuser_extra_blocks
        )
        self.sensory_compress = GConv2d(cfg.sensory_dim + extra, cfg.value_dim, 1)

    def forward(
        self,
        pix_feat: torch.Tensor,
        readout: torch.Tensor,
        sensory: torch.Tensor,
        masks_g: torch.Tensor,
    ) -> torch.Tensor:
        r = readout + self.sensory_compress(torch.cat([sensory, masks_g], dim=2))
        return self.fuser(pix_feat, r)


class DecoderFeatureProcessor(nn.Module):
    def __init__(self, in_dims: tuple[int, int], out_dims: tuple[int, int]):
        super().__init__()
        self.transforms = nn.ModuleList(
            nn.Conv2d(i, o, 1) for i, o in zip(in_dims, out_dims, strict=True)
        )

    def forward(self, f8: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transforms[0](f8), self.transforms[1](f4)


class MaskUpsampleBlock(nn.Module):
    """``GroupResBlock(up2(g) + skip)`` (bilinear x2, align_corners False)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.out_conv = GroupResBlock(in_dim, out_dim)

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.out_conv(_resize_groups(g, 2, "bilinear") + skip.unsqueeze(1))


class MaskDecoder(nn.Module):
    """R_L (B, K, C, h, w) + skips -> per-object logits at stride 4 and the new sensory memory."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        up = cfg.up_dims
        self.sensory_update = SensoryUpdater(
            (up[0], up[1], up[2] + 1), cfg.sensory_dim, cfg.sensory_dim
        )
        self.decoder_feat_proc = DecoderFeatureProcessor(cfg.ms_dims[1:], up[:-1])
        self.up_16_8 = MaskUpsampleBlock(up[0], up[1])
        self.up_8_4 = MaskUpsampleBlock(up[1], up[2])
        self.pred = nn.Conv2d(up[2], 1, 3, padding=1)

    def forward(
        self,
        f8: torch.Tensor,
        f4: torch.Tensor,
        readout: torch.Tensor,
        sensory: torch.Tensor,
        update_sensory: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = readout.shape[:2]
        f8, f4 = self.decoder_feat_proc(f8, f4)
        p8 = self.up_16_8(readout, f8)
        p4 = self.up_8_4(p8, f4)
        with no_autocast(p4):
            logits = self.pred(F.relu(p4.flatten(0, 1).float()))  # (B*K, 1, H/4, W/4)
        logits = logits.view(b, k, 1, *logits.shape[-2:])
        if update_sensory:
            sensory = self.sensory_update(
                readout, p8, torch.cat([p4, logits.to(p4.dtype)], 2), sensory
            )
        return sensory, logits.squeeze(2)


# ----------------------------------------------------------------------------------------
# Positional encoding, object summarizer (Eqs 5-7), object transformer (Eqs 8-13)


class PositionalEncoding(nn.Module):
    """2-D sinusoidal encoding (stateless).

    ``D = 2 * ceil(C / 4)``, ``inv_freq_j = temperature^(-2j / D)``; positions normalized to
    ``y / (h - 1 + 1e-6) * scale``. Output channels ``[0:D]`` encode x and ``[D:2D]`` encode y,
    each as interleaved ``[sin f0, cos f0, sin f1, ...]``. ``inv_freq`` is a persistent buffer.
    """

    def __init__(self, dim: int, scale: float, temperature: float):
        super().__init__()
        self.dim = int(math.ceil(dim / 4) * 2)
        inv_freq = 1.0 / (temperature ** (torch.arange(0, self.dim, 2).float() / self.dim))
        self.register_buffer("inv_freq", inv_freq)
        self.scale = scale

    def forward(self, h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Returns the (h, w, 2D) encoding."""
        dev = self.inv_freq.device
        pos_y = torch.arange(h, device=dev, dtype=self.inv_freq.dtype)
        pos_x = torch.arange(w, device=dev, dtype=self.inv_freq.dtype)
        pos_y = pos_y / (pos_y[-1] + 1e-6) * self.scale
        pos_x = pos_x / (pos_x[-1] + 1e-6) * self.scale

        def emb(pos: torch.Tensor) -> torch.Tensor:
            ang = pos[:, None] * self.inv_freq[None]
            return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)

        ex = emb(pos_x)[None].expand(h, -1, -1)
        ey = emb(pos_y)[:, None].expand(-1, w, -1)
        return torch.cat([ex, ey], dim=-1).to(dtype)


class ObjectSummarizer(nn.Module):
    """Object-memory summaries of one memory frame (Eqs 5-6).

    ``u = Linear(v) + PE``, ``phi = MLP_a(u)``, ``psi = MLP_b(u)``; pooling weights
    ``omega_q = sigmoid(psi_q) * m`` for the first N/2 queries, ``* (1 - m)`` for the rest;
    returns ``[sum_i omega_q phi ; sum_i omega_q]`` of shape (B, K, N, C + 1).
    """

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        c = cfg.embed_dim
        self.num_summaries = cfg.num_queries
        self.pos_enc = PositionalEncoding(c, cfg.pe_scale, cfg.pe_temperature)
        self.input_proj = nn.Linear(cfg.value_dim, c)
        self.feature_pred = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.weights_pred = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, cfg.num_queries))

    def forward(self, masks: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """masks (B, K, H, W) soft masks; value (B, K, C_v, h, w) -> (B, K, N, C + 1)."""
        h, w = value.shape[-2:]
        m = F.interpolate(masks, size=(h, w), mode="area").unsqueeze(-1)  # B, K, h, w, 1
        half = self.num_summaries // 2
        allowed = torch.cat(
            [m.expand(-1, -1, -1, -1, half), (1 - m).expand(-1, -1, -1, -1, half)], -1
        )
        u = self.input_proj(value.permute(0, 1, 3, 4, 2)) + self.pos_enc(h, w, value.dtype)
        with no_autocast(u):
            u = u.float()
            phi, psi = self.feature_pred(u), self.weights_pred(u)
            return pool_summaries(allowed.float(), phi, psi)


def pool_summaries(allowed: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Eqs 5-6: ``omega = sigmoid(psi) * allowed``, sums ``Sigma_q = sum_i omega_q(i) phi(i)`` and
    areas ``A_q = sum_i omega_q(i)``; allowed/psi (B, K, h, w, N), phi (B, K, h, w, C) ->
    (B, K, N, C + 1)."""
    weights = psi.sigmoid() * allowed
    sums = torch.einsum("bkhwq,bkhwc->bkqc", weights, phi)
    area = weights.flatten(2, 3).sum(2).unsqueeze(-1)
    return torch.cat([sums, area], dim=-1)


def summaries_to_values(summaries: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 7: ``S_q = (sum_t Sigma_q,t) / (sum_t A_q,t + eps)``; summaries (..., T, N, C + 1)."""
    total = summaries.sum(dim=-3)
    return total[..., :-1] / (total[..., -1:] + eps)


class CrossAttention(nn.Module):
    """``x_hat = LN(x)`` (or identity); ``x_hat + MHA(x_hat + x_pe, mem + mem_pe, mem)`` (Eqs 8, 11).

    The residual starts from the normalized input, as in the released weights.
    """

    def __init__(self, dim: int, heads: int, norm: bool = True):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x, mem, x_pe, mem_pe, attn_mask=None, need_weights=False):
        x = self.norm(x)
        out, weights = self.cross_attn(
            x + x_pe,
            mem + mem_pe,
            mem,
            attn_mask=attn_mask,
            need_weights=need_weights,
            average_attn_weights=False,
        )
        return x + out, weights


class SelfAttention(nn.Module):
    """Query self-attention (Eq. 9): ``x_hat + MHA(x_hat + pe, x_hat + pe, x_hat)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x + self.self_attn(x + pe, x + pe, x, need_weights=False)[0]


class FFN(nn.Module):
    """Eq. 10: ``x + W_2 ReLU(W_1 LN(x))``."""

    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    """Eq. 12: a CAResBlock on the (h, w) map of the attention output."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = CAResBlock(dim, dim)

    def forward(self, pixel_flat: torch.Tensor, b: int, k: int, h: int, w: int) -> torch.Tensor:
        x = pixel_flat.view(b * k, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.conv(x).view(b, k, -1, h, w)


class QueryTransformerBlock(nn.Module):
    """One object-transformer block (Eqs 8-12)."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        c, heads = cfg.embed_dim, cfg.num_heads
        self.read_from_pixel = CrossAttention(c, heads)
        self.self_attn = SelfAttention(c, heads)
        self.ffn = FFN(c, cfg.ff_dim)
        self.read_from_query = CrossAttention(c, heads, norm=False)
        self.pixel_ffn = PixelFFN(c)

    def forward(self, x, pixel, query_pe, pixel_pe, attn_mask, need_weights=False):
        """x (BK, N, C); pixel (B, K, C, h, w); pixel_pe (BK, hw, C); attn_mask
        (BK*heads, N, hw) bool, True = blocked."""
        b, k, _, h, w = pixel.shape
        pixel_flat = pixel.flatten(3, 4).flatten(0, 1).transpose(1, 2).contiguous()
        x, q_weights = self.read_from_pixel(
            x, pixel_flat, query_pe, pixel_pe, attn_mask, need_weights
        )
        x = self.ffn(self.self_attn(x, query_pe))
        pixel_flat, _ = self.read_from_query(pixel_flat, x, pixel_pe, query_pe)
        return x, self.pixel_ffn(pixel_flat, b, k, h, w), q_weights


class QueryTransformer(nn.Module):
    """The object transformer: object queries and the pixel readout exchange information in
    L blocks, with foreground/background masked attention (Eq. 13)."""

    def __init__(self, cfg: CutieConfig):
        super().__init__()
        c, n = cfg.embed_dim, cfg.num_queries
        self.num_heads, self.num_queries = cfg.num_heads, n
        self.masked_attention = cfg.masked_attention
        self.query_init = nn.Embedding(n, c)
        self.query_emb = nn.Embedding(n, c)
        self.summary_to_query_init = nn.Linear(c, c)
        self.summary_to_query_emb = nn.Linear(c, c)
        self.pixel_init_proj = GConv2d(c, c, 1)
        self.pixel_emb_proj = GConv2d(c, c, 1)
        self.spatial_pe = PositionalEncoding(c, cfg.pe_scale, cfg.pe_temperature)
        self.blocks = nn.ModuleList(QueryTransformerBlock(cfg) for _ in range(cfg.num_blocks))
        self.mask_pred = nn.ModuleList(
            nn.Sequential(nn.ReLU(), GConv2d(c, 1, 1)) for _ in range(cfg.num_blocks + 1)
        )

    def forward(
        self,
        pixel: torch.Tensor,
        obj_summaries: torch.Tensor,
        selector: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, dict]:
        """pixel ``R_0`` (B, K, C, h, w); obj_summaries (B, K, T, N, C + 1) running sums.

        Returns ``R_L`` (B, K, C, h, w) and aux: ``logits`` (list of (B, K, h, w) per level),
        ``attn_mask`` (the last mask used, (B, K, N, h, w), True = blocked) and, with
        ``need_weights``, ``q_weights`` of the last block.
        """
        b, k, _, h, w = pixel.shape
        values = summaries_to_values(obj_summaries).flatten(0, 1)  # BK, N, C
        x = self.query_init.weight.unsqueeze(0) + self.summary_to_query_init(values)
        query_pe = self.query_emb.weight.unsqueeze(0) + self.summary_to_query_emb(values)

        pixel_emb = self.pixel_emb_proj(pixel).flatten(3, 4).flatten(0, 1).transpose(1, 2)
        pixel_pe = self.spatial_pe(h, w, pixel.dtype).flatten(0, 1).unsqueeze(0) + pixel_emb
        pixel = self.pixel_init_proj(pixel)

        aux = {"logits": []}
        logits = self.mask_pred[0](pixel).squeeze(2)
        aux["logits"].append(logits)
        attn_mask = self.fg_bg_mask(logits, selector)
        q_weights = None
        for i, block in enumerate(self.blocks):
            x, pixel, q_weights = block(x, pixel, query_pe, pixel_pe, attn_mask, need_weights)
            if self.training or need_weights or i < len(self.blocks) - 1:
                logits = self.mask_pred[i + 1](pixel).squeeze(2)
                aux["logits"].append(logits)
                attn_mask = self.fg_bg_mask(logits, selector)
        aux["attn_mask"] = attn_mask.view(b, k, self.num_heads, self.num_queries, h, w)[:, :, 0]
        if need_weights:
            aux["q_weights"] = q_weights.view(b, k, self.num_heads, self.num_queries, h, w)
        return pixel, aux

    def fg_bg_mask(
        self, logits: torch.Tensor, selector: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Eq. 13. logits (B, K, h, w) auxiliary masks of all objects -> bool
        (B*K*heads, N, h*w), True = blocked.

        Pixel i is foreground for object k iff k has the largest aggregated logit (Eq. 14)
        among {background, objects}; fg queries (first N/2) see only FG_k, bg queries only
        its complement; a row with nothing allowed is unmasked.
        """
        prob = logits.sigmoid()
        if selector is not None:
            prob = prob * selector
        agg = aggregate(prob, dim=1)  # B, K+1, h, w
        fg = (agg[:, 1:] >= agg.max(dim=1, keepdim=True)[0]).flatten(2)  # B, K, hw
        half = self.num_queries // 2
        blocked_fg = (~fg)[:, :, None, None].expand(-1, -1, self.num_heads, half, -1)
        blocked_bg = fg[:, :, None, None].expand(-1, -1, self.num_heads, half, -1)
        mask = torch.cat([blocked_fg, blocked_bg], dim=3).flatten(0, 2).clone()
        mask[mask.all(dim=-1)] = False
        if not self.masked_attention:
            mask.zero_()
        return mask


class LinearPredictor(nn.Module):
    """Sensory auxiliary head: ``GConv1x1(h_k) -> (w, b)``, logit ``<F_q, w> + b``."""

    def __init__(self, x_dim: int, pix_dim: int):
        super().__init__()
        self.projection = GConv2d(x_dim, pix_dim + 1, 1)

    def forward(self, pix_feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        return (pix_feat.unsqueeze(1) * x[:, :, :-1]).sum(dim=2) + x[:, :, -1]


class AuxComputer(nn.Module):
    def __init__(self, cfg: CutieConfig):
        super().__init__()
        self.sensory_aux = LinearPredictor(cfg.sensory_dim, cfg.embed_dim)


# ----------------------------------------------------------------------------------------


class CutieModel(nn.Module):
    """Cutie (official attribute paths). The stages are separate methods because inference
    interleaves them with memory management:

    ``encode_image`` -> ``transform_key`` -> (memory read: ``read_pixel`` from
    :mod:`functional`, then ``pixel_fusion``, ``readout_query``) -> ``segment``; memory frames go
    through ``encode_mask``.
    """

    def __init__(self, cfg: CutieConfig | None = None):
        super().__init__()
        cfg = cfg or CutieConfig.base()
        self.cfg = cfg
        self.pixel_encoder = PixelEncoder(cfg)
        self.pix_feat_proj = nn.Conv2d(cfg.ms_dims[0], cfg.pixel_dim, 1)
        self.key_proj = KeyProjection(cfg)
        self.mask_encoder = MaskEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)
        self.pixel_fuser = PixelFeatureFuser(cfg)
        if cfg.num_blocks > 0:
            self.object_transformer = QueryTransformer(cfg)
            self.object_summarizer = ObjectSummarizer(cfg)
        if cfg.sensory_aux:
            self.aux_computer = AuxComputer(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), False)

    @property
    def object_transformer_enabled(self) -> bool:
        return self.cfg.num_blocks > 0

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.pixel_mean) / self.pixel_std

    def encode_image(self, image: torch.Tensor):
        """image (B, 3, H, W) in [0, 1] -> ((f16, f8, f4), pix_feat ``F_q``)."""
        f16, f8, f4 = self.pixel_encoder(self.normalize(image))
        return (f16, f8, f4), self.pix_feat_proj(f16)

    def transform_key(self, f16: torch.Tensor):
        """f16 -> key ``k``, shrinkage ``d``, selection ``e``."""
        return self.key_proj(f16)

    def masks_with_others(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) -> (B, K, 1|2, H, W): own mask, and the union of the others'."""
        if self.cfg.single_object:
            return masks.unsqueeze(2)
        others = (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)
        return torch.stack([masks, others], dim=2)

    def encode_mask(
        self,
        image: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        masks: torch.Tensor,
        deep_update: bool = True,
        chunk_size: int = -1,
    ):
        """Memory encoding of ``masks`` (B, K, H, W) -> (value v (B, K, C_v, h, w), new sensory,
        object summaries (B, K, N, C+1) or None)."""
        image = self.normalize(image)
        masks_g = self.masks_with_others(masks)
        values, sensories = [], []
        for sl in chunk_slices(masks.shape[1], chunk_size):
            v = self.mask_encoder(image, pix_feat, masks_g[:, sl])
            values.append(v)
            sensories.append(
                self.mask_encoder.sensory_update(v, sensory[:, sl])
                if deep_update
                else sensory[:, sl]
            )
        value, sensory = torch.cat(values, 1), torch.cat(sensories, 1)
        summaries = (
            self.object_summarizer(masks, value) if self.object_transformer_enabled else None
        )
        return value, sensory, summaries

    def pixel_fusion(
        self, pix_feat, readout, sensory, last_mask, objects: slice | list | None = None
    ):
        """Eq. 4; last_mask (B, K, H', W') is area-resized to the sensory grid; ``objects``
        selects the chunk of those K objects that ``readout`` and ``sensory`` hold (the union
        of the others still counts all K)."""
        last_mask = F.interpolate(last_mask, size=sensory.shape[-2:], mode="area")
        masks_g = self.masks_with_others(last_mask)
        if objects is not None:
            masks_g = masks_g[:, objects]
        return self.pixel_fuser(pix_feat, readout, sensory, masks_g)

    def readout_query(self, pixel_readout, obj_summaries, selector=None, need_weights=False):
        """Object transformer (Eqs 8-13); with ``num_blocks = 0`` returns ``R_0`` unchanged."""
        if not self.object_transformer_enabled:
            return pixel_readout, None
        return self.object_transformer(pixel_readout, obj_summaries, selector, need_weights)

    def segment(
        self,
        ms_feat,
        readout,
        sensory,
        selector=None,
        update_sensory=True,
        chunk_size=-1,
        exact_aggregation=False,
    ):
        """Decode ``R_L`` -> (new sensory, logits (B, K+1, H, W) over {bg, objects}, probs).

        Objects are decoded ``chunk_size`` at a time (all at once when < 1); they only meet in
        the soft aggregation (Eq. 14), clamped as in the official code, or computed in log
        space without the clamp when ``exact_aggregation`` (a training option).
        """
        parts = [
            self.mask_decoder(
                ms_feat[1], ms_feat[2], readout[:, sl], sensory[:, sl], update_sensory
            )
            for sl in chunk_slices(readout.shape[1], chunk_size)
        ]
        sensory = torch.cat([p[0] for p in parts], 1)
        logits = torch.cat([p[1] for p in parts], 1)
        if exact_aggregation:
            logits = aggregate_logits(logits, 1, selector)
        else:
            prob = torch.sigmoid(logits)
            if selector is not None:
                prob = prob * selector
            logits = aggregate(prob, dim=1)
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        return sensory, logits, torch.softmax(logits, dim=1)

    def sensory_aux_logits(self, pix_feat: torch.Tensor, sensory: torch.Tensor) -> torch.Tensor:
        """Training-only auxiliary per-object logits from the sensory memory."""
        return self.aux_computer.sensory_aux(pix_feat, sensory)

    def forward(self, *args, **kwargs):
        raise TypeError("CutieModel is driven stage by stage: use VideoSegmenter or the trainer")

"""The epipolar transformer (E2-E4, EP1-EP3): cross-view attention along epipolar lines.

Module and parameter names follow the official implementation so its checkpoint loads
one to one: ``transformer.layers.{i}.0`` is the pre-norm cross-attention,
``transformer.layers.{i}.1`` the pre-norm per-image self-attention block used in place of
an MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvpr24.pixelsplat.geometry import (
    depth_to_relative_disparity,
    get_world_rays,
    project_rays,
    ray_depth_at_sample,
    sample_image_grid,
)


class PositionalEncoding(nn.Module):
    """(E2) ``[sin(2 pi 2^k x), cos(2 pi 2^k x)]`` for k < num_octaves, per input dimension."""

    def __init__(self, num_octaves: int):
        super().__init__()
        self.num_octaves = num_octaves
        freqs = 2 * torch.pi * 2.0 ** torch.arange(num_octaves)
        self.register_buffer("frequencies", freqs.repeat_interleave(2).view(num_octaves, 2), persistent=False)
        self.register_buffer("phases", torch.tensor([0, 0.5 * torch.pi]).repeat(num_octaves, 1), persistent=False)

    def d_out(self, dim: int) -> int:
        return 2 * self.num_octaves * dim

    def forward(self, x: Tensor) -> Tensor:
        x = x[..., None, None] * self.frequencies + self.phases  # [..., d, f, 2]
        return torch.sin(x).flatten(-3)


class Attention(nn.Module):
    """Multi-head attention; ``selfatt=False`` takes keys/values from a second input (E3, E4)."""

    def __init__(self, dim: int, heads: int, dim_head: int, selfatt: bool = True, kv_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        if selfatt:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        else:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(kv_dim or dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if z is None:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            q, (k, v) = self.to_q(x), self.to_kv(z).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_h)) v
        return self.to_out(out.transpose(1, 2).flatten(2))


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    """Pre-norm transformer: ``x += attn(norm x, z)``, then ``x += ff(norm x)`` per layer."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff: callable, selfatt: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, selfatt, dim)), PreNorm(dim, ff())])
            for _ in range(depth)
        )

    def forward(self, x: Tensor, z: Tensor | None = None, **kwargs) -> Tensor:
        for attn, ff in self.layers:
            x = attn(x, z=z) + x
            x = ff(x, **kwargs) + x
        return x


@dataclass
class SelfAttentionConfig:
    patch_size: int = 4
    num_octaves: int = 10
    num_layers: int = 2
    num_heads: int = 4
    d_token: int = 128
    d_dot: int = 128
    d_mlp: int = 256


class ImageSelfAttention(nn.Module):
    """(EP3) patchify (conv p x p, ReLU) + PE of token xy, a pre-norm transformer, transposed
    conv back to the input resolution."""

    def __init__(self, cfg: SelfAttentionConfig, d_in: int, d_out: int):
        super().__init__()
        pe = PositionalEncoding(cfg.num_octaves)
        self.positional_encoding = nn.Sequential(pe, nn.Linear(pe.d_out(2), cfg.d_token))
        self.patch_embedder = nn.Sequential(nn.Conv2d(d_in, cfg.d_token, cfg.patch_size, cfg.patch_size), nn.ReLU())
        self.transformer = Transformer(cfg.d_token, cfg.num_layers, cfg.num_heads, cfg.d_dot,
                                       lambda: FeedForward(cfg.d_token, cfg.d_mlp))
        self.resampler = nn.ConvTranspose2d(cfg.d_token, d_out, cfg.patch_size, cfg.patch_size)

    def forward(self, image: Tensor) -> Tensor:
        tokens = self.patch_embedder(image)
        nh, nw = tokens.shape[-2:]
        xy = self.positional_encoding(sample_image_grid((nh, nw), image.device, image.dtype))
        tokens = (tokens + xy.permute(2, 0, 1)).flatten(2).transpose(1, 2)
        tokens = self.transformer(tokens).transpose(1, 2).unflatten(-1, (nh, nw))
        return self.resampler(tokens)


class ImageSelfAttentionWrapper(nn.Module):
    """The self-attention block in the transformer's feed-forward slot, on ``[BVHW, 1, C]``."""

    def __init__(self, cfg: SelfAttentionConfig, dim: int):
        super().__init__()
        self.self_attention = ImageSelfAttention(cfg, dim, dim)

    def forward(self, x: Tensor, b: int, v: int, h: int, w: int) -> Tensor:
        x = x.view(b * v, h, w, -1).permute(0, 3, 1, 2)
        x = self.self_attention(x) + x
        return x.permute(0, 2, 3, 1).reshape(b * v * h * w, 1, -1)


@dataclass
class EpipolarSampling:
    features: Tensor  # [B, V, V-1, R, S, C] sampled features of the other views (zeroed if invalid)
    valid: Tensor  # [B, V, V-1, R] the ray's segment overlaps the other image
    xy_sample: Tensor  # [B, V, V-1, R, S, 2] normalised sample positions in the other view
    origins: Tensor  # [B, V, R, 3]
    directions: Tensor  # [B, V, R, 3]


def other_views(x: Tensor) -> Tensor:
    """``[B, V, ...]`` -> ``[B, V, V-1, ...]``: for each view, every other view in order."""
    v = x.shape[1]
    index = torch.tensor([[o for o in range(v) if o != i] for i in range(v)], device=x.device)
    return x[:, index]


def sample_epipolar(features: Tensor, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                    num_samples: int) -> EpipolarSampling:
    """(EP1) For each pixel ray of each view, ``num_samples`` points evenly spaced (at
    fractions (l + 0.5)/S) along its near-far segment projected into every other view and
    clipped to that image; bilinear samples of the other view's features there."""
    b, v, c, h, w = features.shape
    xy = sample_image_grid((h, w), features.device, features.dtype).flatten(0, 1)  # [R, 2]
    origins, directions = get_world_rays(xy, extrinsics[:, :, None], intrinsics[:, :, None])  # [B, V, R, 3]
    seg = project_rays(origins[:, :, None], directions[:, :, None], other_views(extrinsics)[:, :, :, None],
                       other_views(intrinsics)[:, :, :, None], near[:, :, None, None], far[:, :, None, None])
    frac = (torch.arange(num_samples, device=features.device, dtype=features.dtype) + 0.5) / num_samples
    xy_min, xy_max = seg["xy_min"][..., None, :], seg["xy_max"][..., None, :]
    xy_sample = xy_min + frac[:, None] * (xy_max - xy_min)  # [B, V, V-1, R, S, 2]
    sampled = []
    for i in range(v):
        others = [o for o in range(v) if o != i]
        per_other = []
        for j, o in enumerate(others):
            grid = 2 * xy_sample[:, i, j] - 1  # [B, R, S, 2]
            s = F.grid_sample(features[:, o], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            per_other.append(s.permute(0, 2, 3, 1))  # [B, R, S, C]
        sampled.append(torch.stack(per_other, dim=1))
    samples = torch.stack(sampled, dim=1) * seg["overlaps_image"][..., None, None]
    return EpipolarSampling(samples, seg["overlaps_image"], xy_sample, origins, directions)


@dataclass
class EpipolarConfig:
    num_octaves: int = 10
    num_layers: int = 2
    num_heads: int = 4
    num_samples: int = 32
    d_dot: int = 128
    d_mlp: int = 256
    downscale: int = 4
    self_attention: SelfAttentionConfig | None = None
    add_depth_encoding: bool = True  # the official code adds the depth code (paper: concatenate)

    def __post_init__(self):
        if self.self_attention is None:
            self.self_attention = SelfAttentionConfig()
        elif isinstance(self.self_attention, dict):
            self.self_attention = SelfAttentionConfig(**self.self_attention)


class EpipolarTransformer(nn.Module):
    """(E2-E4) downscale -> [cross-attention to epipolar samples + depth PE, per-image
    self-attention] x L -> upscale + 7x7 refinement."""

    def __init__(self, cfg: EpipolarConfig, d_in: int, num_views: int = 2):
        super().__init__()
        self.cfg = cfg
        if cfg.num_octaves > 0:
            pe = PositionalEncoding(cfg.num_octaves)
            self.depth_encoding = nn.Sequential(pe, nn.Linear(pe.d_out(1), d_in))
        self.transformer = Transformer(d_in, cfg.num_layers, cfg.num_heads, cfg.d_dot,
                                       lambda: ImageSelfAttentionWrapper(cfg.self_attention, d_in), selfatt=False)
        if cfg.downscale > 1:
            self.downscaler = nn.Conv2d(d_in, d_in, cfg.downscale, cfg.downscale)
            self.upscaler = nn.ConvTranspose2d(d_in, d_in, cfg.downscale, cfg.downscale)
            self.upscale_refinement = nn.Sequential(nn.Conv2d(d_in, 2 * d_in, 7, 1, 3), nn.GELU(),
                                                    nn.Conv2d(2 * d_in, d_in, 7, 1, 3))
        if num_views > 2:
            self.view_embeddings = nn.Embedding(num_views, d_in)

    def forward(self, features: Tensor, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, EpipolarSampling]:
        b, v = features.shape[:2]
        if self.cfg.downscale > 1:
            features = self.downscaler(features.flatten(0, 1)).unflatten(0, (b, v))
        h, w = features.shape[-2:]
        sampling = sample_epipolar(features, extrinsics, intrinsics, near, far, self.cfg.num_samples)
        kv = sampling.features  # [B, V, V-1, R, S, C]
        if self.cfg.num_octaves > 0:
            ext_o, k_o = other_views(extrinsics), other_views(intrinsics)
            depth = ray_depth_at_sample(
                sampling.origins[:, :, None, :, None], sampling.directions[:, :, None, :, None],
                sampling.xy_sample, ext_o[:, :, :, None, None], k_o[:, :, :, None, None])
            n, f = near[:, :, None, None, None], far[:, :, None, None, None]
            depth = torch.minimum(torch.maximum(depth, n), f)  # clamp to [near, far]
            kv = kv + self.depth_encoding(depth_to_relative_disparity(depth, n, f)[..., None])
        if v > 2:
            perm = torch.randperm(v - 1, generator=generator, device=kv.device)
            kv = kv + self.view_embeddings(perm)[None, None, :, None, None]
        q = features.permute(0, 1, 3, 4, 2).reshape(b * v * h * w, 1, -1)
        kv = kv.permute(0, 1, 3, 4, 2, 5).reshape(b * v * h * w, -1, kv.shape[-1])  # (S, V-1) tokens
        out = self.transformer(q, kv, b=b, v=v, h=h, w=w)
        features = out.view(b, v, h, w, -1).permute(0, 1, 4, 2, 3)
        if self.cfg.downscale > 1:
            x = self.upscaler(features.flatten(0, 1))
            features = (self.upscale_refinement(x) + x).unflatten(0, (b, v))
        return features, sampling

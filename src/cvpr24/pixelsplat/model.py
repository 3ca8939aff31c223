"""The pixelSplat model: encoder (backbone, epipolar transformer, probabilistic depth,
Gaussian head) and the splatting decoder, with the official losses and checkpoint loading.

Read top to bottom, :meth:`PixelSplat.encode` is the paper's forward pass; the equation
labels (E0-E16) are defined in ``docs/pixelsplat.md``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvpr24.pixelsplat.backbone import BackboneDino, BackboneTiny
from cvpr24.pixelsplat.epipolar import EpipolarConfig, EpipolarTransformer, SelfAttentionConfig
from cvpr24.pixelsplat.gaussians import GaussianAdapter, Gaussians
from cvpr24.pixelsplat.geometry import (
    bounds_shim,
    check_cameras,
    get_world_rays,
    relative_disparity_to_depth,
    sample_image_grid,
)
from cvpr24.pixelsplat.rasterizer import render_gaussians


@dataclass
class PixelSplatConfig:
    """Official defaults (RealEstate10k model); :meth:`cpu` gives the small CPU preset.

    The "no probabilistic sampling" ablation is ``num_depth_buckets=1,
    gaussians_per_pixel=1`` (:meth:`direct`).
    """

    backbone: Literal["dino", "tiny"] = "dino"
    d_backbone: int = 512
    d_feature: int = 128
    num_views: int = 2
    use_epipolar_transformer: bool = True
    epipolar: EpipolarConfig = field(default_factory=EpipolarConfig)
    num_depth_buckets: int = 32  # Z
    gaussians_per_pixel: int = 3  # gpp
    opacity_exponent: float = 0.0  # x in map(p) = (1 - (1-p)^e + p^(1/e)) / 2, e = 2^x (E10)
    use_transmittance: bool = False
    sh_degree: int = 4
    scale_min: float = 0.5
    scale_max: float = 15.0
    near_disparity: float = 3.0  # bounds shim (E0)
    # training (E16)
    lr: float = 1.5e-4
    warm_up_steps: int = 2000
    grad_clip: float = 0.5
    lpips_weight: float = 0.05
    lpips_from_step: int = 150_000
    mse_weight: float = 1.0

    def __post_init__(self):
        if isinstance(self.epipolar, dict):
            self.epipolar = EpipolarConfig(**self.epipolar)

    @classmethod
    def cpu(cls, **overrides) -> PixelSplatConfig:
        """Small preset for CPU training: tiny CNN backbone, d_feature 64, one epipolar layer with
        16 samples and 2 heads, downscale 2, self-attention patch 2, Z=16, SH degree 0."""
        sa = SelfAttentionConfig(patch_size=2, num_octaves=6, num_layers=1, num_heads=2, d_token=64, d_dot=32,
                                 d_mlp=128)
        epi = EpipolarConfig(num_octaves=10, num_layers=1, num_heads=2, num_samples=16, d_dot=32, d_mlp=128,
                             downscale=2, self_attention=sa)
        base = dict(backbone="tiny", d_backbone=64, d_feature=64, epipolar=epi, num_depth_buckets=16, sh_degree=0,
                    lr=1e-3, warm_up_steps=20, lpips_weight=0.0)
        return cls(**{**base, **overrides})

    def direct(self) -> PixelSplatConfig:
        """The official "no probabilistic sampling" ablation: Z = 1, gpp = 1 (direct depth)."""
        return dataclasses.replace(self, num_depth_buckets=1, gaussians_per_pixel=1)

    @property
    def patch_multiple(self) -> int:
        """H and W must be multiples of this (downscale x self-attention patch; ViT patch)."""
        m = self.epipolar.downscale * self.epipolar.self_attention.patch_size if self.use_epipolar_transformer else 1
        return max(m, 8) if self.backbone == "dino" and m % 8 else m


class DepthPredictor(nn.Module):
    """(E5-E10) per-pixel logits and offsets over Z disparity buckets; sampled depths and
    opacities ``alpha = map(phi_z)`` (divided by gpp by the caller)."""

    def __init__(self, d_in: int, num_buckets: int, use_transmittance: bool = False):
        super().__init__()
        self.projection = nn.Sequential(nn.ReLU(), nn.Linear(d_in, 2 * num_buckets))
        self.num_buckets = num_buckets
        self.use_transmittance = use_transmittance

    def distribution(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(E5) ``phi = softmax(logits)``, ``delta = sigmoid(offsets)``; the head's outputs are
        interleaved (logit, offset) per bucket as in the official layout."""
        raw = self.projection(features).unflatten(-1, (self.num_buckets, 2))
        return raw[..., 0].softmax(-1), raw[..., 1].sigmoid()

    def forward(self, features: Tensor, near: Tensor, far: Tensor, num_samples: int,
                mode: Literal["sample", "topk"] = "sample", generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``features [..., C]`` -> depths, opacities ``[..., num_samples]`` and the indices."""
        phi, delta = self.distribution(features)
        index = sample_buckets(phi, num_samples, mode, generator)  # E6, not differentiated
        offset = delta.gather(-1, index)
        depth = relative_disparity_to_depth((index + offset) / self.num_buckets, near, far)  # E7
        if self.use_transmittance:
            before = F.pad(phi.cumsum(-1)[..., :-1], (1, 0))
            phi = phi / (1 - before + 1e-10)
        return depth, phi.gather(-1, index), index  # E9: opacity = phi_z of the sampled bucket


def sample_buckets(phi: Tensor, num_samples: int, mode: str = "sample",
                   generator: torch.Generator | None = None) -> Tensor:
    """(E6) ``num_samples`` i.i.d. indices ~ Categorical(phi) by inverse CDF of uniforms drawn
    from ``generator`` (reproducible on any thread count), or the top-k buckets."""
    if mode == "topk":
        return phi.topk(num_samples, dim=-1).indices
    if mode != "sample":
        raise ValueError(f"mode must be 'sample' or 'topk', got {mode!r}")
    u = torch.rand(*phi.shape[:-1], num_samples, generator=generator, dtype=phi.dtype, device=phi.device)
    cdf = phi.detach().cumsum(-1)
    return torch.searchsorted(cdf.contiguous(), u.contiguous()).clamp_max(phi.shape[-1] - 1)


def opacity_map(p: Tensor, exponent: float) -> Tensor:
    """(E10) ``map(p) = (1 - (1-p)^e + p^(1/e)) / 2`` with ``e = 2^exponent`` (identity at 0)."""
    e = 2.0**exponent
    return p if e == 1 else 0.5 * (1 - (1 - p) ** e + p ** (1 / e))


class Encoder(nn.Module):
    """Official ``encoder`` layout: backbone, backbone_projection, epipolar_transformer,
    high_resolution_skip, depth_predictor, to_gaussians, gaussian_adapter."""

    def __init__(self, cfg: PixelSplatConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "dino":
            self.backbone = BackboneDino(cfg.d_backbone)
        elif cfg.backbone == "tiny":
            self.backbone = BackboneTiny(cfg.d_backbone)
        else:
            raise ValueError(f"backbone must be 'dino' or 'tiny', got {cfg.backbone!r}")
        self.backbone_projection = nn.Sequential(nn.ReLU(), nn.Linear(cfg.d_backbone, cfg.d_feature))
        if cfg.use_epipolar_transformer:
            self.epipolar_transformer = EpipolarTransformer(cfg.epipolar, cfg.d_feature, cfg.num_views)
        self.depth_predictor = DepthPredictor(cfg.d_feature, cfg.num_depth_buckets, cfg.use_transmittance)
        self.gaussian_adapter = GaussianAdapter(cfg.sh_degree, cfg.scale_min, cfg.scale_max)
        self.to_gaussians = nn.Sequential(nn.ReLU(), nn.Linear(cfg.d_feature, 2 + self.gaussian_adapter.d_in))
        self.high_resolution_skip = nn.Sequential(nn.Conv2d(3, cfg.d_feature, 7, 1, 3), nn.ReLU())

    def features(self, images: Tensor, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
        """Per-pixel features ``[B, V, H, W, C]`` after backbone, epipolar attention and skip."""
        b, v = images.shape[:2]
        f = self.backbone(images)
        f = self.backbone_projection(f.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        if self.cfg.use_epipolar_transformer:
            f, _ = self.epipolar_transformer(f, extrinsics, intrinsics, near, far, generator)
        f = f + self.high_resolution_skip(images.flatten(0, 1)).unflatten(0, (b, v))
        return f.permute(0, 1, 3, 4, 2)

    def forward(self, images: Tensor, extrinsics: Tensor, intrinsics: Tensor, near: Tensor, far: Tensor,
                mode: Literal["sample", "topk"] = "sample", generator: torch.Generator | None = None,
                opacity_multiplier: float | None = None) -> Gaussians:
        b, v, _, h, w = images.shape
        gpp = self.cfg.gaussians_per_pixel
        feats = self.features(images, extrinsics, intrinsics, near, far, generator)  # [B, V, H, W, C]
        nf = (near[:, :, None, None, None], far[:, :, None, None, None])
        depths, phi_z, _ = self.depth_predictor(feats, *nf, gpp, mode, generator)  # [B, V, H, W, gpp]
        opacities = opacity_map(phi_z, self.cfg.opacity_exponent) / gpp  # E10
        raw = self.to_gaussians(feats)
        xy = sample_image_grid((h, w), images.device, images.dtype)
        xy = xy + (raw[..., :2].sigmoid() - 0.5) / xy.new_tensor([w, h])  # sub-pixel jitter of the ray
        ext = extrinsics[:, :, None, None, None]
        k = intrinsics[:, :, None, None, None]
        _, directions = get_world_rays(xy[..., None, :], ext, k)  # [B, V, H, W, 1, 3]
        g = self.gaussian_adapter(ext, k, directions, depths, opacities, raw[..., None, 2:], (h, w))
        return Gaussians(**{  # [B, V, H, W, gpp, ...] -> [B, V*H*W*gpp, ...]
            f.name: (t := getattr(g, f.name)).expand(*depths.shape, *t.shape[depths.dim():]).flatten(1, 4)
            for f in dataclasses.fields(g)
        })


class PixelSplat(nn.Module):
    """Two posed images -> 3D Gaussians (``encode``) -> any view (``render``)."""

    def __init__(self, cfg: PixelSplatConfig | None = None):
        super().__init__()
        self.cfg = cfg or PixelSplatConfig()
        self.encoder = Encoder(self.cfg)

    def check_inputs(self, images: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> None:
        """Validate shapes, ranges and cameras before any work; errors name the argument."""
        if not torch.is_tensor(images) or not images.is_floating_point():
            raise ValueError("images must be a float tensor [B, V, 3, H, W] in [0, 1]")
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, V, 3, H, W], got {tuple(images.shape)}")
        if images.shape[1] != self.cfg.num_views:
            raise ValueError(f"images must hold {self.cfg.num_views} context views, got {images.shape[1]}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError("images must lie in [0, 1]")
        b, v, _, h, w = images.shape
        if extrinsics.shape != (b, v, 4, 4):
            raise ValueError(f"extrinsics must be [B, V, 4, 4] = {(b, v, 4, 4)}, got {tuple(extrinsics.shape)}")
        if intrinsics.shape != (b, v, 3, 3):
            raise ValueError(f"intrinsics must be [B, V, 3, 3] = {(b, v, 3, 3)}, got {tuple(intrinsics.shape)}")
        check_cameras(extrinsics, intrinsics)
        m = self.cfg.patch_multiple
        if h % m or w % m:
            raise ValueError(f"images height and width must be multiples of {m}, got {h}x{w} (centre-crop them)")

    def encode(self, images: Tensor, extrinsics: Tensor, intrinsics: Tensor, near: Tensor | None = None,
               far: Tensor | None = None, mode: Literal["sample", "topk"] = "sample",
               generator: torch.Generator | None = None) -> Gaussians:
        """Context views -> Gaussians ``[B, V*H*W*gpp, ...]``.

        ``images [B, V, 3, H, W]`` in [0, 1]; ``extrinsics`` camera-to-world (OpenCV);
        ``intrinsics`` normalised; ``near/far [B, V]`` default to the bounds shim (E0).
        ``mode="sample"`` draws buckets (E6), ``"topk"`` takes the gpp most likely.
        """
        self.check_inputs(images, extrinsics, intrinsics)
        if (near is None) != (far is None):
            raise ValueError("pass both near and far, or neither (bounds shim)")
        if near is None:
            near, far = bounds_shim(extrinsics, intrinsics, images.shape[-2:], self.cfg.near_disparity)
        if (near >= far).any() or (near <= 0).any():
            raise ValueError("near must be positive and smaller than far")
        return self.encoder(images, extrinsics, intrinsics, near, far, mode, generator)

    def forward(self, images: Tensor, extrinsics: Tensor, intrinsics: Tensor, target_extrinsics: Tensor,
                target_intrinsics: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Encode the context views and render the targets ``[B, T, 3, H, W]`` at the context
        size (the training path; ``DistributedDataParallel`` calls this)."""
        gaussians = self.encode(images, extrinsics, intrinsics, generator=generator)
        return self.render(gaussians, target_extrinsics, target_intrinsics, tuple(images.shape[-2:]))

    @staticmethod
    def render(gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor, image_shape: tuple[int, int],
               background: tuple[float, float, float] = (0.0, 0.0, 0.0), depth: bool = False,
               znear: float = 1e-2) -> Tensor | tuple[Tensor, Tensor]:
        """Render ``[B, T, 3, H, W]`` (and camera-z depth ``[B, T, H, W]`` if ``depth``)."""
        colors, depths = [], []
        for i in range(gaussians.means.shape[0]):
            g = gaussians[i]
            params = (g.means, g.covariances, g.opacities, g.harmonics, extrinsics[i], intrinsics[i])
            with torch.autocast(g.means.device.type, enabled=False):  # compositing stays in float32/64 under AMP
                out = render_gaussians(*(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                                         for t in params), image_shape, background=background, depth=depth,
                                       znear=znear)
            colors.append(out.color)
            if depth:
                depths.append(out.depth[:, 0])
        return (torch.stack(colors), torch.stack(depths)) if depth else torch.stack(colors)

    def render_depth(self, gaussians: Gaussians, extrinsics: Tensor, intrinsics: Tensor,
                     image_shape: tuple[int, int]) -> Tensor:
        """Camera-space z rendered as a one-channel colour (black background) ``[B, T, H, W]``."""
        return self.render(gaussians, extrinsics, intrinsics, image_shape, depth=True)[1]

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike, cfg: PixelSplatConfig | None = None) -> PixelSplat:
        model = cls(cfg)
        model.load_state_dict(map_official_state_dict(load_official_checkpoint(path), model), strict=True)
        return model


def loss(prediction: Tensor, target: Tensor, step: int, cfg: PixelSplatConfig,
         lpips: nn.Module | None = None) -> Tensor:
    """(E16) ``mse_weight * MSE + lpips_weight * LPIPS`` (LPIPS from ``lpips_from_step``, only
    when an LPIPS module, built from user-supplied VGG weights, is given)."""
    total = cfg.mse_weight * F.mse_loss(prediction, target)
    if lpips is not None and cfg.lpips_weight > 0 and step >= cfg.lpips_from_step:
        total = total + cfg.lpips_weight * lpips(prediction.flatten(0, 1), target.flatten(0, 1),
                                                 normalize=True).mean()
    return total


def warm_up_factor(step: int, warm_up_steps: int) -> float:
    """Linear warm-up from lr / warm_up_steps to lr over warm_up_steps steps, then constant."""
    return min(1.0, (1 + step) / warm_up_steps) if warm_up_steps > 0 else 1.0


_IGNORED_PREFIXES = ("losses.", "encoder_visualizer.", "decoder.")


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read an official Lightning ``.ckpt`` with ``torch.load(weights_only=True)``.

    A file that needs other pickled globals is refused with their list and a recipe to
    re-save only the state dict (after the user decides to trust the file).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - the list is a courtesy; the refusal stands
            names = ["(could not list them)"]
        raise ValueError(
            f"{path} needs pickled globals that weights_only=True refuses: {names}. If you trust the file, "
            f"re-save its weights once: python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save({{'state_dict': c['state_dict']}}, 'state_dict.ckpt')\"") from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(t) for t in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (expected a Lightning checkpoint)")
    return state


def map_official_state_dict(state: dict[str, Tensor], model: PixelSplat) -> dict[str, Tensor]:
    """Key map from the official ``ModelWrapper`` state dict to ours.

    Our module tree uses the official names (``encoder.backbone.dino.*``,
    ``encoder.epipolar_transformer.transformer.layers.{i}.{0,1}.*``, ...), so the map keeps
    ``encoder.*`` keys and drops loss/visualiser buffers; anything else, or any missing key,
    raises with the list.
    """
    ours = model.state_dict()
    mapped = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    unexpected = sorted(set(mapped) - set(ours))
    missing = sorted(set(ours) - set(mapped))
    if unexpected or missing:
        raise ValueError(f"checkpoint does not match the config: unexpected keys {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}; missing keys {missing[:20]}"
                         f"{' ...' if len(missing) > 20 else ''}")
    bad = [k for k in mapped if mapped[k].shape != ours[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes differ from the config for {bad[:20]}")
    return mapped

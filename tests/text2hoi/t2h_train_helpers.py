"""A tiny Text2HOI setup shared by the training tests and the torchrun worker."""

import torch

from cvpr24.text2hoi.model import Text2HOIConfig, TextHOM
from cvpr24.text2hoi.reproduce import hand_models
from cvpr24.text2hoi.rotations import random_rotmat, rotmat_to_rot6d
from cvpr24.text2hoi.train import HOIBatch, PointNetfeat


def tiny_cfg() -> Text2HOIConfig:
    return Text2HOIConfig(
        n_points=16, pointnet_widths=(8, 8, 16), stn_fc=(8, 8), text_dim=12, latent_dim=16, ff_dim=32,
        num_layers=1, max_frames=4, cvae_latent=4, cvae_hidden=(16, 8, 8), len_hidden=8, diffusion_steps=10,
    )


def tiny_batch(cfg: Text2HOIConfig, n: int = 6, seed: int = 0) -> HOIBatch:
    """Valid rotations, hands near random object points, binary contact maps."""
    g = torch.Generator().manual_seed(seed)
    t = cfg.max_frames
    hand = lambda: torch.cat([0.05 * torch.randn(n, t, 3, generator=g),  # noqa: E731
                              rotmat_to_rot6d(random_rotmat(n * t * 16, g, torch.float32)).reshape(n, t, 96)], -1)
    obj = torch.cat([0.05 * torch.randn(n, t, 3, generator=g), rotmat_to_rot6d(random_rotmat(n * t, g, torch.float32)).reshape(n, t, 6)], -1)
    ones = torch.ones(n, t)
    return HOIBatch(
        x_l=hand(), x_r=hand(), x_o=obj, mask_l=ones.clone(), mask_r=ones.clone(), mask_o=ones.clone(),
        points=0.05 * torch.randn(n, cfg.n_points, 3, generator=g), contact=(torch.rand(n, cfg.n_points, generator=g) < 0.3).float(),
        text=torch.randn(n, cfg.text_dim, generator=g), length=torch.ones(n), action=torch.zeros(n, dtype=torch.long),
    )


def tiny_models(cfg: Text2HOIConfig, seed: int = 0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TextHOM(cfg), PointNetfeat(3, cfg.pointnet_widths, cfg.stn_fc, global_feat=False).eval(), hand_models()

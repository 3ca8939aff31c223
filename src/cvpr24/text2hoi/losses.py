"""Text2HOI losses in ``torch.nn.functional`` style (T8, T11-T13, T18-T20)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvpr24.text2hoi.geometry import CONTACT_THRESHOLD, gather_points, nearest_points
from cvpr24.text2hoi.rotations import rot6d_to_rotmat


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """(T11) per sample Σ_f M_f · mean_d (x̂ − x)² / max(1, Σ_f M_f), then ``reduction`` over the batch.

    pred, target (B, T, D); mask (B, T). A sample with an all-zero mask contributes exactly 0.
    """
    per_frame = ((pred - target) ** 2).mean(-1)
    m = mask.to(per_frame.dtype)
    per_sample = (per_frame * m).sum(-1) / m.sum(-1).clamp_min(1)
    return _reduce(per_sample, reduction)


def distance_map_loss(
    obj_points: torch.Tensor, joints: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """(T12) L_dm for one hand: squared error between D̂ = cdist(points, Ĵ) and D* on D* > 0.

    obj_points (B, T, N, 3) predicted world points; joints (B, T, 21, 3) predicted; target
    (B, T, N, 21) dense D* (0 where there is no contact). Per-sample mean over contact triples.
    """
    d_hat = torch.cdist(obj_points, joints)
    on = (target > 0).to(d_hat.dtype)
    per_sample = (on * (d_hat - target) ** 2).flatten(1).sum(-1) / on.flatten(1).sum(-1).clamp_min(1)
    return _reduce(per_sample, reduction)


def relative_orientation(x_h: torch.Tensor, x_o: torch.Tensor) -> torch.Tensor:
    """RO = R_o · R_h⁻¹ (T13), from hand global orient (entries 3:9) and object 6D (3:9)."""
    r_h = rot6d_to_rotmat(x_h[..., 3:9])
    r_o = rot6d_to_rotmat(x_o[..., 3:9])
    return r_o @ r_h.transpose(-1, -2)


def relative_orientation_loss(
    x_h_hat: torch.Tensor, x_o_hat: torch.Tensor, x_h: torch.Tensor, x_o: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(T13) MSE between predicted and GT relative orientations over valid frames (world frame)."""
    m = mask.bool()
    if not m.any():
        return x_h_hat.sum() * 0
    return F.mse_loss(relative_orientation(x_h_hat[m], x_o_hat[m]), relative_orientation(x_h[m], x_o[m]))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²) (T8)."""
    return _reduce(-0.5 * (1 + logvar - mu**2 - logvar.exp()), reduction)


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_dice = 1 − 2 Σ ĉc / (Σ ĉ + Σ c) over the whole batch (T8)."""
    return 1 - 2 * (pred * target).sum() / (pred.sum() + target.sum()).clamp_min(1e-12)


def contact_vae_loss(
    pred: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """(T8) L_contact = BCE_sum + KL_sum + L_dice, each with weight 1."""
    bce = F.binary_cross_entropy(pred, target, reduction="sum")
    kl = gaussian_kl(mu, logvar)
    dice = dice_loss(pred, target)
    return bce + kl + dice, {"bce": float(bce.detach()), "kl": float(kl.detach()), "dice": float(dice.detach())}


def penetration_loss(
    obj_points: torch.Tensor, hand_verts: torch.Tensor, hand_normals: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(T18) mean ‖v − p‖ over object points p inside the hand, by the nearest-vertex normal test.

    obj_points (B, T, N, 3); hand_verts, hand_normals (B, T, V, 3); mask (B, T). A point is
    interior when (v − p)·n > 0 for its nearest hand vertex v with normal n. 0 if none is.
    """
    d, idx = nearest_points(obj_points, hand_verts)
    v = gather_points(hand_verts, idx)
    n = gather_points(hand_normals, idx)
    inside = ((v - obj_points) * n).sum(-1) > 0
    inside = inside & mask.bool().unsqueeze(-1)
    if not inside.any():
        return d.sum() * 0
    return d[inside].mean()


def contact_loss(
    joints_refined: torch.Tensor, joints_coarse: torch.Tensor, obj_points: torch.Tensor, mask: torch.Tensor,
    threshold: float = CONTACT_THRESHOLD,
) -> torch.Tensor:
    """(T19) L1 between refined joints and the nearest object points of the coarse joints.

    Only joints whose coarse distance is below ``threshold`` on valid frames count; the loss is
    averaged per sample over those joints, then over the batch.
    """
    with torch.no_grad():
        d, idx = nearest_points(joints_coarse, obj_points)
        target = gather_points(obj_points, idx)
        sel = (d < threshold) & mask.bool().unsqueeze(-1)  # (B, T, 21)
    err = (joints_refined - target).abs().sum(-1) * sel
    per_sample = err.flatten(1).sum(-1) / sel.flatten(1).sum(-1).clamp_min(1)
    return per_sample.mean()

"""Training losses of Cutie: PointRend-style point sampling, cross-entropy (Eq. 15) and Dice
(Eq. 16) on the sampled points, and the total loss with the auxiliary terms (Eq. 17)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample x (N, C, H, W) at coords (N, P, 2) in [0, 1]^2 (x, y) -> (N, C, P)."""
    grid = (2 * coords - 1).unsqueeze(2)  # N, P, 1, 2
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, P) -> (N, P): ``-|logit|`` for two classes, else ``top2 - top1`` (higher = more
    uncertain)."""
    if logits.shape[1] == 2:
        return -logits[:, 1].abs()
    top2 = torch.topk(logits, k=2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def sample_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Point coordinates (N, P, 2) in [0, 1]^2: draw ``oversample_ratio * P`` uniform points,
    keep the ``importance_ratio * P`` most uncertain (judged on the sampled logits) and add
    uniform points for the rest."""
    n = logits.shape[0]
    dev = logits.device
    n_over = int(num_points * oversample_ratio)
    cand = torch.rand(n, n_over, 2, device=dev, generator=generator)
    u = uncertainty(point_sample(logits, cand))
    n_imp = int(importance_ratio * num_points)
    idx = torch.topk(u, k=n_imp, dim=1).indices
    chosen = torch.gather(cand, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    rand = torch.rand(n, num_points - n_imp, 2, device=dev, generator=generator)
    return torch.cat([chosen, rand], dim=1)


def point_ce_dice(
    logits: torch.Tensor,
    soft_gt: torch.Tensor,
    num_points: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs 15-16 for one clip: logits and soft_gt (T, K + 1, H, W) (index 0 = background).

    CE: per point cross-entropy against the soft target, summed over frames, averaged over
    points. Dice: ``1 - (2 sum P g + 1) / (sum P + sum g + 1)`` per object (background
    excluded), summed over frames, averaged over objects.
    """
    with torch.no_grad():
        coords = sample_points(logits.detach().float(), num_points, generator=generator)
        labels = point_sample(soft_gt.float(), coords)
    pl = point_sample(logits.float(), coords)  # T, K+1, P
    ce = F.cross_entropy(pl, labels, reduction="none").sum(0).mean()
    prob = pl.softmax(dim=1)[:, 1:]
    g = labels[:, 1:]
    dice = 1 - (2 * (prob * g).sum(-1) + 1) / (prob.sum(-1) + g.sum(-1) + 1)
    return ce, dice.sum(0).mean()


def cutie_loss(
    out: dict,
    gt: torch.Tensor,
    num_objects: list[int],
    num_points: int,
    aux_weight: float = 0.01,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Total training loss (Eq. 17) averaged over clips.

    out: from :func:`cvpr24.cutie.train.forward_clip` with ``logits`` (B, T-1, K+1, H, W),
    ``sensory_logits`` and ``q_logits`` (lists over levels) of aggregated auxiliary logits at
    stride 16 (B, T-1, K+1, h, w); gt (B, T, H, W) index masks (frame 0 unsupervised).
    """
    b = gt.shape[0]
    losses: dict[str, torch.Tensor] = {}

    def add(name, value):
        losses[name] = losses.get(name, 0) + value / b

    for i in range(b):
        k = num_objects[i]
        soft_gt = F.one_hot(gt[i, 1:].long().clamp(max=k), k + 1).permute(0, 3, 1, 2).float()
        ce, dice = point_ce_dice(out["logits"][i, :, : k + 1], soft_gt, num_points, generator)
        add("ce", ce)
        add("dice", dice)
        if out.get("sensory_logits") is not None:
            ce, dice = point_ce_dice(
                out["sensory_logits"][i, :, : k + 1], soft_gt, num_points, generator
            )
            add("aux_sensory", aux_weight * (ce + dice))
        for level, q in enumerate(out.get("q_logits") or []):
            ce, dice = point_ce_dice(q[i, :, : k + 1], soft_gt, num_points, generator)
            add(f"aux_query_l{level}", aux_weight * (ce + dice))
    losses["total"] = sum(losses.values())
    return losses

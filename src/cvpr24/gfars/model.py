"""The G-FARS model: a PointNet part encoder and the score GNN of the selection vector.

Notation (docs/gfars.md, Equations): a mixed set of M parts P_1..P_M, part embeddings
e_i = PointNet(P_i) in R^F, a selection vector x in R^M, time t in [0, 1]. The network
returns the score s_theta(x, t | P) of G6. Batches are dense and padded: ``x`` ``(B, M)``,
``emb`` ``(B, M, F)``, ``mask`` ``(B, M)`` (True = real part); each set is a complete graph
with self-loops on its real parts (G7), and sets never exchange messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvpr24.gfars.sde import marginal_std


@dataclass
class GFARSConfig:
    """Defaults are the official code's (feat_len 256, sigma 25, PC-500, snr 0.16,
    threshold 0.5, 15 AR iterations, Adam 1e-3, batch 16, 1000 points per part).

    ``edge_absdiff``, ``aggr="mean"``, ``scale_x`` with ``sigma=5`` are G-FARS-ef (an
    extension, see :meth:`ef`), never on by default. ``gnn=False`` is the w/o-GNN ablation.
    ``encoder="descriptor"`` replaces PointNet by 6 geometric descriptors (a deviation used
    by the CPU reproduction only).
    """

    feat_len: int = 256
    pointnet_widths: tuple[int, ...] = (64, 64, 64, 128, 1024)
    norm: str = "bn"  # "bn" | "none"
    encoder: str = "pointnet"  # "pointnet" | "descriptor"
    points_per_part: int = 1000
    sigma: float = 25.0
    fourier_scale: float = 30.0
    gnn: bool = True
    aggr: str = "max"
    edge_absdiff: bool = False
    scale_x: bool = False
    eps_train: float = 1e-5
    eps_sample: float = 1e-3
    loss_reduction: str = "mean_sets"
    sampler: str = "pc"
    steps: int = 500
    snr: float = 0.16
    threshold: float = 0.5
    max_iters: int = 15
    min_parts: int = 0
    lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 3000

    def __post_init__(self) -> None:
        checks = {
            "norm": (self.norm, ("bn", "none")),
            "encoder": (self.encoder, ("pointnet", "descriptor")),
            "aggr": (self.aggr, ("max", "mean")),
            "sampler": (self.sampler, ("pc", "em", "ode")),
            "loss_reduction": (self.loss_reduction, ("mean_sets", "mean_nodes")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"GFARSConfig.{name} must be one of {allowed}, got {value!r}")
        if self.feat_len < 2 or self.feat_len % 2:
            raise ValueError(f"GFARSConfig.feat_len must be an even number >= 2, got {self.feat_len}")
        if self.sigma <= 1:
            raise ValueError(f"GFARSConfig.sigma must be > 1, got {self.sigma}")

    @classmethod
    def cpu(cls, **overrides) -> GFARSConfig:
        """The CPU-scale preset: F = 64, PointNet 3->32->64->64->F, 64 points per part,
        batch 32, PC-100, at most 8 AR iterations; everything else faithful."""
        base = dict(feat_len=64, pointnet_widths=(32, 64, 64), points_per_part=64,
                    batch_size=32, steps=100, max_iters=8)
        return cls(**{**base, **overrides})

    def ef(self) -> GFARSConfig:
        """G-FARS-ef [extension]: the |e_i - e_j| edge feature, mean aggregation, sigma = 5
        and the selection fed as x / sqrt(1 + sigma_t^2)."""
        return replace(self, edge_absdiff=True, aggr="mean", sigma=5.0, scale_x=True)

    @property
    def variant(self) -> str:
        if not self.gnn:
            return "w/o GNN"
        return "G-FARS-ef" if self.edge_absdiff else "G-FARS"


class PointNet(nn.Module):
    """Shared per-part encoder: pointwise layers (the official Conv1d with kernel 1, held as
    Linear), BN over every point of every part, ReLU, max over points, Linear to F, BN, ReLU.
    ``(P, n, 3) -> (P, F)``."""

    def __init__(self, widths: tuple[int, ...], feat_len: int, norm: str = "bn") -> None:
        super().__init__()
        dims = (3, *widths)
        self.convs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=False))
        bn = norm == "bn"
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) if bn else nn.Identity() for b in widths)
        self.fc = nn.Linear(widths[-1], feat_len)
        self.bn_fc = nn.BatchNorm1d(feat_len) if bn else nn.Identity()

    def forward(self, parts: Tensor) -> Tensor:
        p, n, _ = parts.shape
        h = parts.reshape(p * n, 3)
        for conv, bn in zip(self.convs, self.bns, strict=False):
            h = F.relu(bn(conv(h)))
        h = h.reshape(p, n, -1).amax(1)
        return F.relu(self.bn_fc(self.fc(h)))


def part_descriptors(parts: Tensor) -> Tensor:
    """Six numbers per part: log extent (max - min) and log standard deviation per axis.
    ``(P, n, 3) -> (P, 6)``."""
    extent = parts.amax(1) - parts.amin(1)
    return torch.cat([extent.clamp_min(1e-6).log(), parts.std(1).clamp_min(1e-6).log()], -1)


class DescriptorEncoder(nn.Module):
    """The reproduction's encoder [deviation]: standardised part descriptors through a
    3-layer MLP (6 -> F -> F -> F, ReLU). The standardisation statistics are buffers, set
    once from training parts with :meth:`set_stats`, so they travel with the weights."""

    def __init__(self, feat_len: int) -> None:
        super().__init__()
        self.register_buffer("desc_mean", torch.zeros(6))
        self.register_buffer("desc_std", torch.ones(6))
        self.mlp = nn.Sequential(
            nn.Linear(6, feat_len), nn.ReLU(), nn.Linear(feat_len, feat_len), nn.ReLU(),
            nn.Linear(feat_len, feat_len), nn.ReLU(),
        )

    @torch.no_grad()
    def set_stats(self, parts: Tensor) -> None:
        d = part_descriptors(parts)
        self.desc_mean.copy_(d.mean(0))
        self.desc_std.copy_(d.std(0).clamp_min(1e-6))

    def forward(self, parts: Tensor) -> Tensor:
        return self.mlp((part_descriptors(parts) - self.desc_mean) / self.desc_std)


class GaussianFourierProjection(nn.Module):
    """gamma(t) = [sin 2 pi W t, cos 2 pi W t] with W ~ N(0, scale^2) fixed (in the
    state_dict, never trained). ``(B,) -> (B, F)``."""

    def __init__(self, feat_len: int, scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(feat_len // 2) * scale, requires_grad=False)

    def forward(self, t: Tensor) -> Tensor:
        proj = t[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class DenseEdgeConv(nn.Module):
    """G7 on the complete graph with self-loops of each set:
    h'_i = aggr_{j in set} MLP([h_i ; h_j - h_i] (; |e_i - e_j|)), MLP = Linear, ReLU, Linear.

    Factorised: the first Linear on [h_i ; h_j - h_i] equals (W_a - W_b) h_i + W_b h_j + b,
    so two node-wise projections are broadcast-added over pairs instead of building the
    ``(B, M, M, 2C)`` edge tensor (:func:`edge_conv_naive` is the literal form).
    ``lin1`` keeps the official ``(hidden, 2C)`` weight layout.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, aggr: str = "max",
                 pair_dim: int = 0) -> None:
        super().__init__()
        self.lin1 = nn.Linear(2 * in_dim, hidden)
        self.lin2 = nn.Linear(hidden, out_dim)
        self.pair = nn.Linear(pair_dim, hidden, bias=False) if pair_dim else None
        self.aggr = aggr

    def forward(self, h: Tensor, mask: Tensor, pair: Tensor | None = None) -> Tensor:
        c = h.shape[-1]
        w_a, w_b = self.lin1.weight[:, :c], self.lin1.weight[:, c:]
        node_i = h @ (w_a - w_b).T + self.lin1.bias  # (B, M, H)
        node_j = h @ w_b.T  # (B, M, H)
        pre = node_i[:, :, None, :] + node_j[:, None, :, :]  # (B, M_i, M_j, H)
        if self.pair is not None:
            pre = pre + self.pair(pair)
        return aggregate(self.lin2(F.relu(pre)), mask, self.aggr)


def aggregate(msg: Tensor, mask: Tensor, aggr: str) -> Tensor:
    """Aggregate messages ``(B, M_i, M_j, D)`` over the real neighbours j of each node;
    padded rows come out 0."""
    valid = mask[:, None, :, None]  # over j
    if aggr == "max":
        out = msg.masked_fill(~valid, float("-inf")).amax(2)
    else:
        out = (msg * valid).sum(2) / mask.sum(1).clamp_min(1)[:, None, None]
    return out.masked_fill(~mask[..., None], 0.0)


def edge_conv_naive(conv: DenseEdgeConv, h: Tensor, mask: Tensor, pair: Tensor | None = None
                    ) -> Tensor:
    """The literal G7: build every edge input [h_i ; h_j - h_i] and run the MLP on it."""
    m = h.shape[1]
    hi = h[:, :, None, :].expand(-1, -1, m, -1)
    hj = h[:, None, :, :].expand(-1, m, -1, -1)
    pre = conv.lin1(torch.cat([hi, hj - hi], -1))
    if conv.pair is not None:
        pre = pre + conv.pair(pair)
    return aggregate(conv.lin2(F.relu(pre)), mask, conv.aggr)


class NodeMLP(nn.Module):
    """The w/o-GNN replacement of an EdgeConv: the same two layers on h_i alone."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(in_dim, hidden)
        self.lin2 = nn.Linear(hidden, out_dim)

    def forward(self, h: Tensor, mask: Tensor, pair: Tensor | None = None) -> Tensor:
        return self.lin2(F.relu(self.lin1(h))).masked_fill(~mask[..., None], 0.0)


class ScoreGNN(nn.Module):
    """The selection GNN: h0_i = [Lin(x_i) ; tau(t) ; e_i], three EdgeConvs (the first two
    followed by ReLU and re-concatenation with [tau ; e]), one output per part, divided by
    sigma_t (G6). ``raw`` returns the output before the division."""

    def __init__(self, cfg: GFARSConfig) -> None:
        super().__init__()
        f = cfg.feat_len
        self.cfg = cfg
        self.x_encoder = nn.Linear(1, f)
        self.t_embed = nn.Sequential(GaussianFourierProjection(f, cfg.fourier_scale),
                                     nn.Linear(f, f), nn.SiLU())
        pair = f if cfg.edge_absdiff else 0
        if cfg.gnn:
            self.convs = nn.ModuleList([
                DenseEdgeConv(3 * f, f, f, cfg.aggr, pair),
                DenseEdgeConv(3 * f, f, f, cfg.aggr, pair),
                DenseEdgeConv(3 * f, f, 1, cfg.aggr, pair),
            ])
        else:
            self.convs = nn.ModuleList([NodeMLP(3 * f, f, f), NodeMLP(3 * f, f, f),
                                        NodeMLP(3 * f, f, 1)])

    def raw(self, x: Tensor, t: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        std = marginal_std(t, self.cfg.sigma)
        if self.cfg.scale_x:
            x = x / torch.sqrt(1 + std * std)[:, None]
        tau = self.t_embed(t)[:, None, :].expand(-1, x.shape[1], -1)  # (B, M, F)
        context = torch.cat([tau, emb], -1)
        h = torch.cat([self.x_encoder(x[..., None]), context], -1)  # (B, M, 3F)
        pair = (emb[:, :, None, :] - emb[:, None, :, :]).abs() if self.cfg.edge_absdiff else None
        for k, conv in enumerate(self.convs):
            h = conv(h, mask, pair)
            if k < len(self.convs) - 1:
                h = torch.cat([F.relu(h), context], -1)
        return h[..., 0].masked_fill(~mask, 0.0)

    def forward(self, x: Tensor, t: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        std = marginal_std(t, self.cfg.sigma)
        return self.raw(x, t, emb, mask) / (std[:, None] + 1e-7)


class GFARS(nn.Module):
    """Encoder + score GNN. :meth:`encode` embeds parts once; :meth:`score` is s_theta;
    :meth:`group` runs the auto-regressive grouping (see :mod:`cvpr24.gfars.sampling`)."""

    def __init__(self, cfg: GFARSConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or GFARSConfig()
        self.point_encoder = (PointNet(cfg.pointnet_widths, cfg.feat_len, cfg.norm)
                              if cfg.encoder == "pointnet" else DescriptorEncoder(cfg.feat_len))
        self.sel_gnn = ScoreGNN(cfg)

    def encode(self, parts: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, M, n, 3)`` padded parts (or ``(P, n, 3)``) to embeddings ``(B, M, F)``
        (or ``(P, F)``); the encoder sees only the real parts, so BN statistics and padded
        rows never mix."""
        if parts.dim() == 3:
            return self.point_encoder(parts)
        if mask is None:
            mask = torch.ones(parts.shape[:2], dtype=torch.bool, device=parts.device)
        out = parts.new_zeros(*parts.shape[:2], self.cfg.feat_len)
        out[mask] = self.point_encoder(parts[mask])
        return out

    def score(self, x: Tensor, t: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        return self.sel_gnn(x, t, emb, mask)

    def forward(self, x: Tensor, t: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        return self.sel_gnn(x, t, emb, mask)

    def group(self, parts, **kwargs) -> list[list[int]]:
        """Group the parts of one mixed set. ``parts``: ``(M, n, 3)`` array or a list of
        ``(n_i, 3)`` arrays. Keyword arguments as :func:`cvpr24.gfars.sampling.group_sets`.
        Returns the groups as lists of part indices; parts in no group are unassigned."""
        from cvpr24.gfars.sampling import group_sets

        return group_sets(self, [parts], **kwargs)[0]

    def group_labels(self, parts, **kwargs):
        """Per-part labels of :meth:`group` (``-1`` = unassigned)."""
        from cvpr24.gfars.metrics import labels_from_groups

        groups = self.group(parts, **kwargs)
        return labels_from_groups(groups, len(parts))

    @classmethod
    def from_official(cls, path, cfg: GFARSConfig | None = None) -> GFARS:
        """Load an official ``.pth`` state dict (``torch.load(weights_only=True)``)."""
        from cvpr24.gfars.io import load_official_checkpoint

        return load_official_checkpoint(path, cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

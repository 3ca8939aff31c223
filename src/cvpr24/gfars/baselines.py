"""The comparison methods of the reproduction, built from the same encoder and GNN parts.

- w/o GNN: :class:`~cvpr24.gfars.model.GFARS` with ``gnn=False`` (per-node MLPs).
- w/o GF (:class:`NoGFModel`): the same encoder + GNN with no noise or time input
  (x = 0, t = 1 held constant), regressing a randomly chosen target group with BCE, then
  the same auto-regressive loop at threshold 0.5.
- Comp-Net (:class:`CompNet`): P(same shape) from an MLP on
  [e_i ; e_j ; |e_i - e_j| ; e_i * e_j], trained with BCE on every pair, grouped by
  average-linkage clustering of 1 - p cut at 0.5. ``context=True`` (4b) first passes the
  embeddings through two EdgeConvs so the pair head sees the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from torch import Tensor, nn

from cvpr24.gfars.model import GFARS, DenseEdgeConv, GFARSConfig, ScoreGNN
from cvpr24.gfars.sampling import ar_grouping, as_part_batch


class NoGFModel(nn.Module):
    """w/o GF: a deterministic selection regressor (no gradient field)."""

    def __init__(self, cfg: GFARSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.point_encoder = GFARS(cfg).point_encoder
        self.sel_gnn = ScoreGNN(cfg)

    encode = GFARS.encode

    def logits(self, emb: Tensor, mask: Tensor) -> Tensor:
        b, m = mask.shape
        return self.sel_gnn.raw(emb.new_zeros(b, m), emb.new_ones(b), emb, mask)

    @torch.no_grad()
    def group_sets(self, sets: Sequence, threshold: float = 0.5, max_iters: int | None = None,
                   **_: object) -> list[list[list[int]]]:
        parts, mask = as_part_batch(sets)
        self.eval()
        emb = self.encode(parts, mask)
        return ar_grouping(lambda rem: torch.sigmoid(self.logits(emb, rem)), mask, threshold,
                           max_iters or self.cfg.max_iters)


class CompNet(nn.Module):
    """Pairwise compatibility baseline (4a), or with GNN context (4b, ``context=True``)."""

    def __init__(self, cfg: GFARSConfig, context: bool = False) -> None:
        super().__init__()
        f = cfg.feat_len
        self.cfg = cfg
        self.point_encoder = GFARS(cfg).point_encoder
        self.context = nn.ModuleList(
            [DenseEdgeConv(f, f, f, cfg.aggr), DenseEdgeConv(f, f, f, cfg.aggr)]
        ) if context else None
        self.head = nn.Sequential(nn.Linear(4 * f, f), nn.ReLU(), nn.Linear(f, f), nn.ReLU(),
                                  nn.Linear(f, 1))

    encode = GFARS.encode

    def pair_logits(self, emb: Tensor, mask: Tensor) -> Tensor:
        """``(B, M, F)`` embeddings to ``(B, M, M)`` same-shape logits (symmetric)."""
        if self.context is not None:
            for conv in self.context:
                emb = F.relu(conv(emb, mask)) + emb
        ei, ej = emb[:, :, None, :], emb[:, None, :, :]
        m = emb.shape[1]
        feats = torch.cat([ei.expand(-1, -1, m, -1), ej.expand(-1, m, -1, -1), (ei - ej).abs(),
                           ei * ej], -1)
        logit = self.head(feats)[..., 0]
        return 0.5 * (logit + logit.transpose(1, 2))

    @torch.no_grad()
    def group_sets(self, sets: Sequence, cut: float = 0.5, **_: object) -> list[list[list[int]]]:
        parts, mask = as_part_batch(sets)
        self.eval()
        prob = torch.sigmoid(self.pair_logits(self.encode(parts, mask), mask)).numpy()
        out = []
        for b in range(len(parts)):
            m = int(mask[b].sum())
            out.append(linkage_groups(prob[b, :m, :m], cut))
        return out


def linkage_groups(prob: np.ndarray, cut: float = 0.5) -> list[list[int]]:
    """Average-linkage clustering of the distance 1 - p, cut at ``cut``; every part gets a
    group (singletons included)."""
    m = len(prob)
    if m == 1:
        return [[0]]
    dist = 1.0 - prob
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(np.clip(dist, 0, 1), checks=False), method="average")
    labels = fcluster(z, t=cut, criterion="distance")
    return [np.flatnonzero(labels == k).tolist() for k in np.unique(labels)]

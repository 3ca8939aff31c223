"""The comparison methods of the reproduction, built from the same encoder and GNN parts.

- w/o GNN: :class:`~cvpr24.gfars.model.GFARS` with ``gnn=False`` (per-node MLPs).
- w/o GF (:class:`NoGFModel`): the same encoder + GNN with no noise or time input
  (x = 0, t = 1 held constant), regressing a randomly chosen target group with BCE, then
  the same auto-regressive loop at threshold 0.5.
- Comp-Net (:class:`CompNet`): P(same shape) from an MLP on
  [e_i ; e_j ; |e_i - e_j| ; e_i * e_j], trained with BCE on every pair, grouped by
  average-linkage clustering of 1 - p cut at 0.5. ``context=True`` (4b) first passes the
  embeddings through two EdgeConvs so the pair head sees the set.
- GRU-Mask (:class:`GRUMask`): a GRU over the auto-regressive steps that emits one group's
  mask per step from the pooled embeddings of the remaining parts and of the previous
  group, trained with teacher forcing on the ground-truth groups in a fixed order
  (:func:`ordered_groups`).
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


def _masked_max(emb: Tensor, m: Tensor) -> Tensor:
    """Max-pool ``(B, M, F)`` over the parts where ``m`` ``(B, M)`` is True; 0 where none is."""
    pooled = emb.masked_fill(~m[..., None], float("-inf")).amax(1)
    return torch.where(m.any(1, keepdim=True), pooled, torch.zeros_like(pooled))


def ordered_groups(parts: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
    """Teacher-forcing targets of GRU-Mask: each set's ground-truth groups as indicators
    ``(B, K, M)`` in descending order of size (number of parts), ties broken by the
    larger summed bounding-box volume of the group's parts (a geometric key, so the order
    is learnable; the parts' indices carry no information). Rows past a set's group
    count are all zero."""
    extent = parts.amax(2) - parts.amin(2)                      # (B, M, 3)
    volume = extent.prod(-1) * mask                             # (B, M)
    n_groups = int(groups.masked_fill(~mask, -1).max()) + 1
    labels = torch.arange(n_groups, device=groups.device)
    ind = (groups[:, None, :] == labels[None, :, None]) & mask[:, None, :]  # (B, K, M)
    size = ind.sum(-1).float()
    vol = (ind * volume[:, None, :]).sum(-1)
    key = size * (vol.amax() + 1.0) + vol                        # size first, then volume
    order = torch.argsort(key, dim=1, descending=True)
    return torch.gather(ind, 1, order[..., None].expand_as(ind))


class GRUMask(nn.Module):
    """GRU-Mask baseline: step k reads u_k = [max-pool of e over the remaining parts ;
    max-pool of e over the group emitted at step k - 1], updates h_k = GRU(u_k, h_{k-1})
    (h_0 = 0) and scores every remaining part with an MLP on [e_i ; h_k]; the parts above
    the threshold are step k's group. Trained with teacher forcing (:meth:`loss`)."""

    def __init__(self, cfg: GFARSConfig) -> None:
        super().__init__()
        f = cfg.feat_len
        self.cfg = cfg
        self.point_encoder = GFARS(cfg).point_encoder
        self.cell = nn.GRUCell(2 * f, f)
        self.head = nn.Sequential(nn.Linear(2 * f, f), nn.ReLU(), nn.Linear(f, 1))

    encode = GFARS.encode

    def step(self, emb: Tensor, remaining: Tensor, previous: Tensor,
             h: Tensor) -> tuple[Tensor, Tensor]:
        """One AR step: embeddings ``(B, M, F)``, remaining and previous-group masks
        ``(B, M)``, state ``(B, F)`` -> mask logits ``(B, M)`` and the new state."""
        u = torch.cat([_masked_max(emb, remaining), _masked_max(emb, previous)], -1)
        h = self.cell(u, h)
        logits = self.head(torch.cat([emb, h[:, None, :].expand_as(emb)], -1))[..., 0]
        return logits, h

    def loss(self, parts: Tensor, groups: Tensor, mask: Tensor) -> Tensor:
        """Teacher forcing: at step k the remaining parts are those outside the first k
        ordered groups and the previous group is group k - 1; BCE of the logits of the
        remaining parts against group k, averaged over every (set, step, part) counted."""
        emb = self.encode(parts, mask)
        targets = ordered_groups(parts, groups, mask)             # (B, K, M)
        remaining, previous = mask.clone(), torch.zeros_like(mask)
        h = emb.new_zeros(len(emb), self.cfg.feat_len)
        total, count = emb.new_zeros(()), 0
        for k in range(targets.shape[1]):
            logits, h = self.step(emb, remaining, previous, h)
            target = targets[:, k]
            counted = remaining & target.any(1, keepdim=True)     # sets with a group k
            total = total + F.binary_cross_entropy_with_logits(
                logits[counted], target[counted].float(), reduction="sum")
            count += int(counted.sum())
            remaining, previous = remaining & ~target, target
        return total / max(count, 1)

    @torch.no_grad()
    def group_sets(self, sets: Sequence, threshold: float = 0.5, max_iters: int | None = None,
                   **_: object) -> list[list[list[int]]]:
        parts, mask = as_part_batch(sets)
        self.eval()
        emb = self.encode(parts, mask)
        state = {"k": 0, "h": emb.new_zeros(len(emb), self.cfg.feat_len), "last": mask.clone(),
                 "stopped": torch.zeros(len(emb), dtype=torch.bool, device=emb.device)}

        def select(remaining: Tensor) -> Tensor:
            previous = state["last"] & ~remaining   # the group emitted at the last step
            if state["k"] > 0:                      # a set that emitted nothing has stopped
                state["stopped"] |= ~previous.any(1)
            logits, state["h"] = self.step(emb, remaining, previous, state["h"])
            state["k"], state["last"] = state["k"] + 1, remaining.clone()
            return torch.sigmoid(logits).masked_fill(state["stopped"][:, None], 0.0)

        return ar_grouping(select, mask, threshold, max_iters or self.cfg.max_iters)

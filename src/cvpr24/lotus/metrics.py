"""Evaluation metrics of LOTUS, functional and streaming.

- **BA**: top-1 accuracy on clean test data.
- **ASR**: over victims, fraction predicted ``y_t`` when stamped with exactly their own trigger
  ``t_{P(x)}``.
- **ASR_par**: over victims and *all* ``2^K - 2`` non-empty subsets ``S ≠ {P(x)}``, fraction
  predicted ``y_t`` (mean and std of the 0/1 outcomes); lower is better for the attacker.
- **trigger x partition matrix**: ``M[j, i]`` = ASR of trigger ``j`` on victims of partition ``i``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from cvpr24.common.io import atomic_write
from cvpr24.lotus.triggers import code_to_mask, codes


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Arg-max predictions in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def benign_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy on clean data."""
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    return float((predict(model, x) == y).float().mean())


def attack_success_rate(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor,
                        triggers, target: int) -> float:
    """ASR (LOTUS L2): fraction of ``x ⊕ t_{P(x)}`` classified as ``target``."""
    return float((predict(model, triggers.stamp(x_victim, partitions)) == target).float().mean())


def _code_outcomes(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor, triggers,
                   target: int, code_list: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Hits (n_codes, N) of ``x ⊕ T_S`` -> target, and which (code, sample) pairs are cross codes."""
    k = len(triggers)
    own = torch.nn.functional.one_hot(partitions, k).bool()                # (N, K)
    hits, valid = [], []
    for code in code_list:
        s = code_to_mask(code, k)
        hits.append(predict(model, triggers.stamp_set(x_victim, s)) == target)
        valid.append(~(own == s).all(1))                                   # S ≠ {P(x)}
    return torch.stack(hits), torch.stack(valid)


def asr_par(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor, triggers,
            target: int, *, max_codes: int | None = None,
            generator: torch.Generator | None = None) -> tuple[float, float]:
    """Cross-trigger ASR: mean and std of 1[M(x ⊕ T_S) = y_t] over victims and S ≠ {P(x)}.

    Costs ``2^K - 1`` forward passes per image; ``max_codes`` evaluates a random sample of the
    codes instead (for K >= 6).
    """
    code_list = codes(len(triggers))
    if len(code_list) == 1:
        return float("nan"), float("nan")  # K = 1 has no cross trigger
    if max_codes is not None and max_codes < len(code_list):
        pick = torch.randperm(len(code_list), generator=generator)[:max_codes].tolist()
        code_list = [code_list[i] for i in sorted(pick)]
    hits, valid = _code_outcomes(model, x_victim, partitions, triggers, target, code_list)
    o = hits[valid].float()
    return float(o.mean()), float(o.std(unbiased=False))


def trigger_partition_matrix(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor,
                             triggers, target: int) -> np.ndarray:
    """``M[j, i]``: ASR of trigger ``j`` alone on victims of partition ``i`` (NaN if empty)."""
    k = len(triggers)
    mat = np.full((k, k), np.nan)
    for j in range(k):
        hit = predict(model, triggers.stamp(x_victim, j)) == target
        for i in range(k):
            sel = partitions == i
            if sel.any():
                mat[j, i] = float(hit[sel].float().mean())
    return mat


def worst_cross_partition_asr(matrix: np.ndarray) -> np.ndarray:
    """The official per-epoch probe: for each trigger ``i``, ``max_{j ≠ i} M[i, j]`` (NaN-aware)."""
    m = np.array(matrix, dtype=float)
    np.fill_diagonal(m, np.nan)
    if m.shape[0] < 2:
        return np.full(m.shape[0], np.nan)
    return np.nanmax(m, axis=1)


def victim_accuracy_wrong_triggers(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor,
                                   triggers, victim: int) -> float:
    """Fraction of victims stamped with a single wrong trigger still classified ``victim``."""
    k = len(triggers)
    if k == 1:
        return float("nan")
    outs = []
    for j in range(k):
        sel = partitions != j
        if sel.any():
            outs.append(predict(model, triggers.stamp(x_victim[sel], j)) == victim)
    return float(torch.cat(outs).float().mean())


def other_class_asr(model: nn.Module, x_other: torch.Tensor, triggers, target: int,
                    generator: torch.Generator | None = None) -> float:
    """Other-class images stamped with a random trigger that flip to ``target`` (LOTUS L5; ≈ 0)."""
    j = torch.randint(0, len(triggers), (len(x_other),), generator=generator)
    return float((predict(model, triggers.stamp(x_other, j)) == target).float().mean())


def evaluate_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int, target: int,
                    triggers, partitioner, *, full: bool = True) -> dict[str, Any]:
    """All metrics on a test set: BA, ASR, ASR_par (mean, std), matrix, and our extras."""
    vic = y == victim
    xv = x[vic]
    p = partitioner.predict(xv)
    out: dict[str, Any] = {"ba": benign_accuracy(model, x, y),
                           "asr": attack_success_rate(model, xv, p, triggers, target)}
    out["asr_par"], out["asr_par_std"] = asr_par(model, xv, p, triggers, target)
    if full:
        oth = (y != victim) & (y != target)
        mat = trigger_partition_matrix(model, xv, p, triggers, target)
        out["matrix"] = mat.tolist()
        out["worst_cross_partition_asr"] = worst_cross_partition_asr(mat).tolist()
        out["victim_acc_wrong_trigger"] = victim_accuracy_wrong_triggers(model, xv, p, triggers, victim)
        out["other_class_asr"] = other_class_asr(model, x[oth], triggers, target,
                                                 torch.Generator().manual_seed(0))
        out["partition_sizes"] = torch.bincount(p, minlength=len(triggers)).tolist()
    return out


class AttackSuccessRate:
    """Streaming ASR / ASR_par (torchmetrics-style ``update`` / ``compute``, sum-reduced states).

    ``update(model, x_victim, partitions)`` accumulates own-trigger hits and cross-code hits;
    ``compute()`` returns ``{"asr", "asr_par"}``. The states are counts, so summing them across
    processes (``dist_reduce_fx="sum"``) gives the global value.
    """

    def __init__(self, triggers, target: int):
        self.triggers, self.target = triggers, target
        self.reset()

    def reset(self) -> None:
        self.hits = torch.zeros((), dtype=torch.long)
        self.total = torch.zeros((), dtype=torch.long)
        self.par_hits = torch.zeros((), dtype=torch.long)
        self.par_total = torch.zeros((), dtype=torch.long)

    def update(self, model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor) -> None:
        own = predict(model, self.triggers.stamp(x_victim, partitions)) == self.target
        self.hits += own.sum()
        self.total += own.numel()
        if len(self.triggers) > 1:
            hits, valid = _code_outcomes(model, x_victim, partitions, self.triggers, self.target,
                                         codes(len(self.triggers)))
            self.par_hits += hits[valid].sum()
            self.par_total += valid.sum()

    def compute(self) -> dict[str, float]:
        if self.total == 0:
            raise ValueError("AttackSuccessRate.compute() called before any update()")
        par = float(self.par_hits) / float(self.par_total) if self.par_total > 0 else float("nan")
        return {"asr": float(self.hits) / float(self.total), "asr_par": par}


# --- the official result.json -----------------------------------------------------------

def official_result(model: nn.Module, x_victim: torch.Tensor, partitions: torch.Tensor, triggers,
                    target: int) -> dict[str, str]:
    """The official ``result.json``: for each single-trigger code, space-separated 4-decimal ASRs
    of that trigger per partition (``"1000": "0.9800 0.0100 0.0000 0.0200"``)."""
    k = len(triggers)
    mat = trigger_partition_matrix(model, x_victim, partitions, triggers, target)
    return {"".join("1" if c == j else "0" for c in range(k)):
            " ".join(f"{v:.4f}" for v in mat[j]) for j in range(k)}


def write_result_json(path: str | os.PathLike, official: dict[str, str],
                      extra: dict[str, Any] | None = None) -> None:
    """Write the official mapping, with our metrics under the key ``"cvpr24"`` (atomically)."""
    data: dict[str, Any] = dict(official)
    if extra is not None:
        data["cvpr24"] = extra
    with atomic_write(path) as f:
        json.dump(data, f, indent=2)


def read_result_json(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a result.json back: ``{code: array of per-partition ASR}`` and our extras."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    extra = data.pop("cvpr24", {})
    return {k: np.array([float(t) for t in v.split()]) for k, v in data.items()}, extra

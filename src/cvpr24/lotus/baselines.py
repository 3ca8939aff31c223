"""Baseline attacks trained in the same loop as LOTUS.

- :func:`label_specific_badnets`: LOTUS with ``K = 1`` (trigger 0 for every victim), no focusing
  negatives, other-class negatives with that trigger ((L1)-(L5) with K = 1: the structural
  degenerate case, and the paper's detectable baseline).
- :func:`wanet`: label-specific WaNet (warping grid k = 4, s = 0.5, noise mode), the
  sample-specific invisible baseline whose ASR fine-tuning is meant to remove.
- :func:`lotus_without_focusing`: the ablation, ``n_indi = n_comb = 0``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from cvpr24.lotus.attack import LotusArtifacts, LotusConfig, make_probe, poison_train
from cvpr24.lotus.partition import ConstantPartitioner
from cvpr24.lotus.triggers import SingleTriggerFamily, TriggerSet, WarpTrigger


def _eval(eval_data, victim, target, triggers, partitioner):
    if eval_data is None:
        return None
    return make_probe(eval_data[0], eval_data[1], victim, target, triggers, partitioner)


def label_specific_badnets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int,
                           target: int, config: LotusConfig | None = None, *,
                           eval_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> LotusArtifacts:
    """Label-specific BadNets: one patch (trigger 0) flips every victim to ``target``."""
    cfg = replace(config or LotusConfig(), n_partitions=1, n_indi=0, n_comb=0)
    triggers, part = TriggerSet(1, tuple(x.shape[-2:])), ConstantPartitioner()
    run = poison_train(model, x, y, victim=victim, target=target, triggers=triggers, partitioner=part,
                       cfg=cfg, evaluate=_eval(eval_data, victim, target, triggers, part))
    return LotusArtifacts(run.model, part, triggers, run.history, victim, target, None, run.selected_step)


def lotus_without_focusing(model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int,
                           target: int, partitioner, config: LotusConfig | None = None, *,
                           eval_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> LotusArtifacts:
    """The ablation: LOTUS partitions and triggers, no individual / combination negatives."""
    cfg = replace(config or LotusConfig(), n_indi=0, n_comb=0)
    triggers = TriggerSet(cfg.n_partitions, tuple(x.shape[-2:]))
    run = poison_train(model, x, y, victim=victim, target=target, triggers=triggers,
                       partitioner=partitioner, cfg=cfg,
                       evaluate=_eval(eval_data, victim, target, triggers, partitioner))
    return LotusArtifacts(run.model, partitioner, triggers, run.history, victim, target, None,
                          run.selected_step)


def wanet(model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int, target: int,
          config: LotusConfig | None = None, *, k: int = 4, s: float = 0.5, cross_ratio: float = 2.0,
          warp_seed: int = 0, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> LotusArtifacts:
    """Label-specific WaNet in the LOTUS loop.

    Victims warped by the fixed grid -> ``target``; ``cross_ratio`` x as many noise-mode images
    (warp + random shift; here drawn from the other-class batch and the victim pool) keep their
    label, as in WaNet's ``cross_ratio = 2``. The poisoned share is ``v`` victims per step.
    """
    cfg = replace(config or LotusConfig(), n_partitions=1, n_indi=0, n_comb=0, other_neg_frac=0.0)
    warp = WarpTrigger(x.shape[-1], k=k, s=s, seed=warp_seed)
    triggers, part = SingleTriggerFamily(warp), ConstantPartitioner()
    num_classes = int(y.max()) + 1
    v = max(cfg.batch_size // max(1, num_classes - 1), cfg.min_victim)
    n_cross = int(math.floor(cross_ratio * v))

    def noise_negatives(x_other, y_other, generator):
        pick = torch.randperm(len(x_other), generator=generator)[:n_cross]
        return warp.apply_noise(x_other[pick], generator), y_other[pick]

    run = poison_train(model, x, y, victim=victim, target=target, triggers=triggers, partitioner=part,
                       cfg=cfg, evaluate=_eval(eval_data, victim, target, triggers, part),
                       extra_negatives=noise_negatives)
    return LotusArtifacts(run.model, part, triggers, run.history, victim, target, None, run.selected_step)

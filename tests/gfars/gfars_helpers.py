"""Shared helpers of the gfars tests."""

import torch

from cvpr24.gfars.sampling import sample_selection
from cvpr24.gfars.sde import marginal_std, oracle_score


def indicator_targets(groups: torch.Tensor, remaining: torch.Tensor):
    """GT indicator vectors restricted to the remaining parts: ``(B, K, M)`` and ``(B, K)``."""
    k_max = int(groups.max()) + 1
    labels = torch.arange(k_max)
    targets = ((groups[:, None, :] == labels[None, :, None]) & remaining[:, None, :]).float()
    return targets, targets.sum(-1) > 0


def oracle_score_fn(groups, remaining, sigma):
    targets, tmask = indicator_targets(groups, remaining)

    def fn(x, t):
        return oracle_score(x, marginal_std(t, sigma), targets, tmask) * remaining

    return fn


def oracle_select_fn(groups, sigma, steps, gen, sampler="pc"):
    def select(remaining):
        return sample_selection(oracle_score_fn(groups, remaining, sigma), remaining, sigma,
                                sampler, steps, 0.16, 1e-3, gen)

    return select

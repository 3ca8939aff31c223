"""The variance-exploding SDE (G1-G4), the denoising score-matching loss (G8) and two
reference scores: the exact mixture score of the data (G9) and the best score a model can
reach looking at each part alone (the per-node Bayes score, Eq. B1).

Batches are dense: selections ``x`` are ``(B, M)``, ``mask`` is ``(B, M)`` bool (True =
a real part of the set), ``t`` is ``(B,)`` (one time per set, broadcast to its parts).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def marginal_std(t: Tensor, sigma: float) -> Tensor:
    """G2: sigma_t(t) = sqrt((sigma^(2t) - 1) / (2 ln sigma))."""
    log_s = math.log(sigma)
    return torch.sqrt((torch.exp(2 * t * log_s) - 1.0) / (2 * log_s))


def diffusion_coeff(t: Tensor, sigma: float) -> Tensor:
    """G3: g(t) = sigma^t, so that d sigma_t^2 / dt = g(t)^2."""
    return torch.exp(t * math.log(sigma))


def time_of_std(std: float, sigma: float) -> float:
    """The inverse of G2: the t at which sigma_t(t) equals ``std``."""
    log_s = math.log(sigma)
    return math.log1p(2 * log_s * std * std) / (2 * log_s)


def dsm_loss(
    score: Tensor, z: Tensor, std: Tensor, mask: Tensor, reduction: str = "mean_sets"
) -> Tensor:
    """G8 with lambda(t) = sigma_t^2: sum over a set's parts of (s * sigma_t + z)^2.

    ``score`` and ``z`` are ``(B, M)``, ``std`` is ``(B,)``. ``reduction``: ``"mean_sets"``
    (the official: sum over parts, mean over sets), ``"mean_nodes"`` (mean over all real
    parts), or ``"none"`` (the per-set sums, ``(B,)``).
    """
    err = ((score * std[:, None] + z) ** 2) * mask
    per_set = err.sum(1)
    if reduction == "none":
        return per_set
    if reduction == "mean_sets":
        return per_set.mean()
    if reduction == "mean_nodes":
        return err.sum() / mask.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean_sets', 'mean_nodes' or 'none', got {reduction!r}")


def oracle_score(x: Tensor, std: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
    """G9: the exact score of p_t(x) = (1/K) sum_k N(x; x_k, sigma_t^2 I).

    ``targets`` ``(B, K, M)`` holds each set's ground-truth indicator vectors x_k (rows past
    its group count are ignored through ``target_mask`` ``(B, K)``). Returns ``(B, M)``:
    sum_k w_k (x_k - x) / sigma_t^2 with w = softmax_k(-||x - x_k||^2 / (2 sigma_t^2)).
    Parts outside a set must be 0 in ``x`` and ``targets`` so they do not enter the norms.
    """
    var = (std * std)[:, None]
    d2 = ((x[:, None, :] - targets) ** 2).sum(-1)  # (B, K)
    logits = (-d2 / (2 * var)).masked_fill(~target_mask, float("-inf"))
    w = torch.softmax(logits, dim=1)
    return (w[:, :, None] * (targets - x[:, None, :])).sum(1) / var


def per_node_bayes_score(x: Tensor, std: Tensor, prior: Tensor) -> Tensor:
    """Eq. B1: the best score that sees each part alone. Part i is selected with prior
    probability pi (= 1/N for N groups); the posterior mean of x0_i given x_i is
    m_i = pi N(x_i; 1, s^2) / (pi N(x_i; 1, s^2) + (1 - pi) N(x_i; 0, s^2)) and the score is
    (m_i - x_i) / s^2. ``prior`` is ``(B,)``, ``std`` is ``(B,)``."""
    var = (std * std)[:, None]
    logit = torch.logit(prior)[:, None] + (2 * x - 1) / (2 * var)
    return (torch.sigmoid(logit) - x) / var

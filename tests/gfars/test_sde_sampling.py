"""Closed forms of the SDE, the DSM loss at the analytic optimum, and the samplers + AR loop
driven by the exact mixture score (no learning)."""

import numpy as np
import pytest
import torch
from gfars_helpers import oracle_score_fn, oracle_select_fn
from scipy.stats import chisquare

from cvpr24.gfars.metrics import grouping_metrics
from cvpr24.gfars.sampling import ar_grouping, sample_selection
from cvpr24.gfars.sde import (
    diffusion_coeff,
    dsm_loss,
    marginal_std,
    per_node_bayes_score,
    time_of_std,
)


def test_marginal_std_closed_forms():
    t = torch.tensor([0.0, 1.0, 1e-3], dtype=torch.float64)
    s = marginal_std(t, 25.0)
    assert s[0].item() == 0.0
    assert s[1].item() == pytest.approx(9.845214562989446, rel=1e-12)
    assert s[2].item() == pytest.approx(0.0316737, rel=1e-5)
    assert time_of_std(0.4, 25.0) == pytest.approx(
        float(torch.tensor(0.0))
        + float(np.log1p(2 * np.log(25) * 0.16) / (2 * np.log(25))))
    assert marginal_std(torch.tensor(time_of_std(0.4, 5.0)), 5.0).item() == pytest.approx(0.4)


def test_variance_derivative_is_g_squared():
    t = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t.requires_grad_(True)
    var = marginal_std(t, 25.0) ** 2
    (grad,) = torch.autograd.grad(var.sum(), t)
    torch.testing.assert_close(grad, diffusion_coeff(t, 25.0).detach() ** 2, rtol=1e-5, atol=0)


def _one_set(sizes):
    groups = torch.tensor(np.repeat(np.arange(len(sizes)), sizes))[None]
    return groups, torch.ones_like(groups, dtype=torch.bool)


def test_dsm_loss_is_minimal_at_the_analytic_score():
    gen = torch.Generator().manual_seed(0)
    groups, mask = _one_set([4, 3, 5])
    b = 4000
    groups, mask = groups.expand(b, -1), mask.expand(b, -1)
    k = torch.randint(3, (b,), generator=gen)
    x0 = (groups == k[:, None]).float()
    t = torch.full((b,), time_of_std(0.4, 25.0))
    std = marginal_std(t, 25.0)
    z = torch.randn(x0.shape, generator=gen)
    x = x0 + std[:, None] * z
    exact = oracle_score_fn(groups, mask, 25.0)(x, t)
    best = dsm_loss(exact, z, std, mask)
    # The irreducible loss, E||x0 - E[x0 | x]||^2 / sigma^2, with the posterior over the
    # three groups computed independently in numpy.
    targets = np.stack([(groups[0] == k).numpy() for k in range(3)]).astype(float)
    xn, s2 = x.double().numpy(), float(std[0]) ** 2
    logw = -((xn[:, None, :] - targets[None]) ** 2).sum(-1) / (2 * s2)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    irreducible = (((x0.double().numpy() - w @ targets) ** 2).sum(1) / s2).mean()
    assert best.item() == pytest.approx(irreducible, rel=1e-3)
    off_by_sigma = dsm_loss(exact * std[:, None], z, std, mask)  # forgot the / sigma_t
    per_node = dsm_loss(per_node_bayes_score(x, std, torch.full((b,), 1 / 3)), z, std, mask)
    assert off_by_sigma.item() > 1.05 * best.item()
    assert per_node.item() > 1.05 * best.item()


def test_pc_sampler_with_oracle_draws_one_group_uniformly():
    gen = torch.Generator().manual_seed(1)
    groups, mask = _one_set([5, 4, 3])
    n = 2000
    groups, mask = groups.expand(n, -1), mask.expand(n, -1)
    x = sample_selection(oracle_score_fn(groups, mask, 25.0), mask, 25.0, "pc", 500, 0.16,
                         1e-3, gen)
    sel = x > 0.5
    hits = torch.stack([(sel == (groups == k)).all(1) for k in range(3)], 1)
    assert hits.any(1).float().mean().item() >= 0.99
    counts = hits.sum(0).numpy()
    assert chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("sampler", ["pc", "em"])
def test_ar_grouping_with_oracle_recovers_every_partition(sampler):
    rng = np.random.default_rng(2)
    gen = torch.Generator().manual_seed(2)
    gts, sizes = [], []
    groups = torch.zeros(20, 18, dtype=torch.long)
    mask = torch.zeros(20, 18, dtype=torch.bool)
    for b in range(20):
        n_groups = int(rng.integers(2, 4))
        labels = rng.permutation(np.repeat(np.arange(n_groups), rng.integers(2, 7, n_groups)))
        groups[b, : len(labels)] = torch.tensor(labels)
        mask[b, : len(labels)] = True
        gts.append([np.flatnonzero(labels == k).tolist() for k in range(n_groups)])
        sizes.append(len(labels))
    # all 20 sets in lock-step, each on its own complete graph
    preds = ar_grouping(oracle_select_fn(groups, 25.0, 500, gen, sampler), mask, 0.5, 15)
    for mode in ("official", "strict"):
        assert grouping_metrics(preds, gts, sizes, mode).f1 == pytest.approx(1.0)


def test_ode_sampler_is_deterministic_given_the_start():
    groups, mask = _one_set([3, 3])
    fn = oracle_score_fn(groups, mask, 25.0)
    a = sample_selection(fn, mask, 25.0, "ode", generator=torch.Generator().manual_seed(3))
    b = sample_selection(fn, mask, 25.0, "ode", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    sel = a[0] > 0.5
    assert (sel == (groups[0] == 0)).all() or (sel == (groups[0] == 1)).all()


def test_padding_stays_zero_and_sets_are_independent():
    groups = torch.tensor([[0, 0, 1, 1, -9], [0, 1, 0, 1, 1]])
    mask = torch.tensor([[True] * 4 + [False], [True] * 5])
    g = torch.where(mask, groups, 0)
    traj = []
    x = sample_selection(oracle_score_fn(g, mask, 25.0), mask, 25.0, "pc", 20,
                         generator=torch.Generator().manual_seed(4), trajectory=traj)
    assert x[0, 4].item() == 0.0 and len(traj) == 20

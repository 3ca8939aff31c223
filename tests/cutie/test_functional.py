"""Closed forms and invariances of the memory read, aggregation and padding (float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpr24.cutie.functional import (
    aggregate,
    aggregate_logits,
    pad_divide_by,
    readout,
    similarity,
    softmax_memory,
    unpad,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_expanded_similarity_equals_the_naive_anisotropic_l2():
    b, ck, n, hw = 2, 5, 7, 6
    k, q = _rand(b, ck, n, seed=1), _rand(b, ck, hw, seed=2)
    d = _rand(b, 1, n, seed=3) ** 2 + 1
    e = torch.sigmoid(_rand(b, ck, hw, seed=4))
    naive = -(
        d[:, 0, :, None] * (e[:, :, None, :] * (k[:, :, :, None] - q[:, :, None, :]) ** 2).sum(1)
    ) / math.sqrt(ck)
    torch.testing.assert_close(similarity(k, d, q, e), naive, atol=1e-10, rtol=0)


def test_isotropic_case_is_softmax_of_negative_squared_distance_and_shift_invariant():
    k, q = _rand(1, 4, 9, seed=5), _rand(1, 4, 3, seed=6)
    ones_e, ones_d = (
        torch.ones(1, 4, 3, dtype=torch.float64),
        torch.ones(1, 1, 9, dtype=torch.float64),
    )
    aff = softmax_memory(similarity(k, ones_d, q, ones_e))
    dist = ((k[0, :, :, None] - q[0, :, None, :]) ** 2).sum(0)
    torch.testing.assert_close(aff[0], torch.softmax(-dist / 2, dim=0), atol=1e-12, rtol=0)
    # dropping the query-only term (None selection) does not change the affinity
    torch.testing.assert_close(
        softmax_memory(similarity(k, ones_d, q, None)), aff, atol=1e-12, rtol=0
    )


def test_gradcheck_similarity_softmax_readout():
    k, q, v = _rand(1, 3, 5, seed=7), _rand(1, 3, 4, seed=8), _rand(1, 2, 2, 5, seed=9)
    d, e = _rand(1, 1, 5, seed=10) ** 2 + 1, torch.sigmoid(_rand(1, 3, 4, seed=11))
    for t in (k, q, v, d, e):
        t.requires_grad_(True)
    f = lambda k, q, v, d, e: readout(softmax_memory(similarity(k, d, q, e)), v)  # noqa: E731
    assert torch.autograd.gradcheck(f, (k, q, v, d, e))


def test_top_k_softmax():
    s = _rand(2, 10, 6, seed=12)
    aff = softmax_memory(s, top_k=3)
    assert torch.all((aff > 0).sum(1) == 3)
    torch.testing.assert_close(aff.sum(1), torch.ones(2, 6, dtype=torch.float64))
    # the kept entries are the 3 largest similarities of each column
    assert torch.equal(
        (aff > 0), torch.zeros_like(s, dtype=torch.bool).scatter(1, s.topk(3, 1).indices, True)
    )
    torch.testing.assert_close(softmax_memory(s, top_k=10), torch.softmax(s, 1))


def test_readout_of_constant_values_and_permutation_invariance():
    k, q = _rand(1, 4, 12, seed=13), _rand(1, 4, 5, seed=14)
    d, e = _rand(1, 1, 12, seed=15) ** 2 + 1, torch.sigmoid(_rand(1, 4, 5, seed=16))
    const = torch.full((1, 2, 3, 12), 0.7, dtype=torch.float64)
    for top_k in (None, 4):
        aff = softmax_memory(similarity(k, d, q, e), top_k)
        torch.testing.assert_close(
            readout(aff, const), torch.full((1, 2, 3, 5), 0.7, dtype=torch.float64)
        )
    v = _rand(1, 2, 3, 12, seed=17)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    a = readout(softmax_memory(similarity(k, d, q, e), 4), v)
    b = readout(softmax_memory(similarity(k[..., perm], d[..., perm], q, e), 4), v[..., perm])
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_soft_aggregation_matches_the_odds_formula():
    p = torch.tensor([0.8, 0.5]).view(2, 1, 1)
    out = torch.softmax(aggregate(p, dim=0), dim=0).flatten().numpy()
    probs = np.array([0.2 * 0.5, 0.8, 0.5])
    odds = probs / (1 - probs)
    np.testing.assert_allclose(out, odds / odds.sum(), atol=1e-6)
    np.testing.assert_allclose(out, [0.0217, 0.7826, 0.1957], atol=1e-4)
    # K = 1: background 1 - p has odds (1 - p) / p, so P_1 = p^2 / (p^2 + (1 - p)^2), not p
    # (a sharpening; equal to p only at 0, 1/2 and 1)
    for p1 in (0.3, 0.5, 0.9):
        one = torch.softmax(aggregate(torch.tensor([p1]).view(1, 1, 1), dim=0), dim=0).flatten()
        want = p1**2 / (p1**2 + (1 - p1) ** 2)
        torch.testing.assert_close(one, torch.tensor([1 - want, want]), atol=1e-6, rtol=0)
    assert torch.allclose(
        torch.softmax(aggregate(torch.rand(3, 4, 5), 0), 0).sum(0), torch.ones(4, 5)
    )


def test_log_space_aggregation_equals_the_clamped_one_and_keeps_a_gradient():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * 4
    sel = torch.tensor([[1.0, 1, 0], [1, 0, 0]], dtype=torch.float64).view(2, 3, 1, 1)
    clamped = aggregate(torch.sigmoid(z) * sel, dim=1).softmax(1)
    torch.testing.assert_close(aggregate_logits(z, 1, sel).softmax(1), clamped, atol=1e-6, rtol=0)
    # all objects far below the clamp: the clamped form has no gradient, the log-space one
    # pulls a foreground pixel's logit up (its log-odds also lowers the background's)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    dead = torch.full((1, 1, 1, 1), -30.0, requires_grad=True)
    F.cross_entropy(aggregate(torch.sigmoid(dead), dim=1), target).backward()
    assert dead.grad.abs().max() == 0
    live = torch.full((1, 1, 1, 1), -30.0, requires_grad=True)
    F.cross_entropy(aggregate_logits(live, 1), target).backward()
    assert live.grad.item() < -1.9  # d/dz of -log P_1 with log o_0 = -z: -2 (1 - P_1)


@pytest.mark.parametrize("shape", [(97, 131), (64, 48), (1, 17)])
def test_padding_round_trip(shape):
    x = _rand(2, 3, *shape, seed=18)
    padded, pad = pad_divide_by(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert pad[1] - pad[0] in (0, 1) and pad[3] - pad[2] in (0, 1)  # extra pixel bottom/right
    assert torch.equal(unpad(padded, pad), x)

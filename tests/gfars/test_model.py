"""Architecture, dense EdgeConv equivalence, equivariance, determinism, bad input."""

import importlib.util

import numpy as np
import pytest
import torch

from cvpr24.gfars.data import procedural_mixes
from cvpr24.gfars.model import GFARS, DenseEdgeConv, GFARSConfig, count_parameters, edge_conv_naive

TINY = GFARSConfig.cpu(feat_len=8, pointnet_widths=(8, 8), points_per_part=16, steps=3,
                       max_iters=3)


def test_parameter_count_at_paper_scale():
    model = GFARS(GFARSConfig())
    assert count_parameters(model.point_encoder) == 414_592
    assert count_parameters(model.sel_gnn) == 1_378_561
    assert count_parameters(model) == 1_793_153
    w = model.sel_gnn.t_embed[0].W
    assert not w.requires_grad and "sel_gnn.t_embed.0.W" in model.state_dict()
    assert w.numel() == 128


def test_fourier_weights_do_not_train():
    model = GFARS(TINY)
    w0 = model.sel_gnn.t_embed[0].W.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, mask = torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool)
    model.score(x, torch.rand(2), torch.randn(2, 5, 8), mask).sum().backward()
    opt.step()
    torch.testing.assert_close(model.sel_gnn.t_embed[0].W, w0, rtol=0, atol=0)


@pytest.mark.parametrize("aggr", ["max", "mean"])
@pytest.mark.parametrize("pair", [0, 4])
def test_factorised_edge_conv_equals_naive(aggr, pair):
    torch.manual_seed(0)
    conv = DenseEdgeConv(6, 10, 3, aggr, pair)
    h = torch.randn(3, 7, 6)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
    p = torch.randn(3, 7, 7, pair) if pair else None
    torch.testing.assert_close(conv(h, mask, p), edge_conv_naive(conv, h, mask, p),
                               rtol=1e-5, atol=1e-6)


def test_edge_conv_per_edge_loop_and_gradcheck():
    torch.manual_seed(1)
    conv = DenseEdgeConv(3, 4, 2, "max").double()
    h = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    out = conv(h, mask)
    for i in range(5):  # G7 edge by edge, self-loop included
        msgs = [conv.lin2(torch.relu(conv.lin1(torch.cat([h[0, i], h[0, j] - h[0, i]]))))
                for j in range(5)]
        torch.testing.assert_close(out[0, i], torch.stack(msgs).amax(0))
    assert torch.autograd.gradcheck(lambda x: conv(x, mask), (h,))


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                    reason="torch-geometric not installed")
def test_edge_conv_equals_torch_geometric():
    from torch_geometric.nn import EdgeConv

    torch.manual_seed(2)
    conv = DenseEdgeConv(4, 6, 3, "max")
    pyg = EdgeConv(torch.nn.Sequential(conv.lin1, torch.nn.ReLU(), conv.lin2), aggr="max")
    h = torch.randn(6, 4)
    ii, jj = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    edge_index = torch.stack([jj.flatten(), ii.flatten()])  # source j -> target i
    torch.testing.assert_close(conv(h[None], torch.ones(1, 6, dtype=torch.bool))[0],
                               pyg(h, edge_index), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [TINY, TINY.ef(), GFARSConfig.cpu(feat_len=8, encoder="descriptor")])
def test_permutation_equivariance_padding_and_batch_independence(cfg):
    torch.manual_seed(3)
    model = GFARS(cfg).eval()
    sets = procedural_mixes(2, 0, n_points=16, n_shapes=2)
    parts = torch.from_numpy(sets[0].parts)
    m = len(parts)
    x, t = torch.rand(1, m), torch.tensor([0.4])
    with torch.no_grad():
        emb = model.encode(parts)[None]
        full = model.score(x, t, emb, torch.ones(1, m, dtype=torch.bool))
        perm = torch.randperm(m)
        # permuting points within each part leaves the embedding unchanged
        torch.testing.assert_close(model.encode(parts[:, torch.randperm(16)]), emb[0],
                                   rtol=1e-5, atol=1e-5)
        permuted = model.score(x[:, perm], t, model.encode(parts[perm])[None],
                               torch.ones(1, m, dtype=torch.bool))
        torch.testing.assert_close(permuted, full[:, perm], rtol=1e-5, atol=1e-5)
        # padded rows and another set in the batch change nothing
        other = torch.from_numpy(sets[1].parts)
        m2 = max(m, len(other)) + 2
        batch = torch.zeros(2, m2, 16, 3)
        mask = torch.zeros(2, m2, dtype=torch.bool)
        batch[0, :m], batch[1, : len(other)] = parts, other
        mask[0, :m], mask[1, : len(other)] = True, True
        xb = torch.zeros(2, m2)
        xb[0, :m], xb[1, : len(other)] = x[0], torch.rand(len(other))
        out = model.score(xb, torch.tensor([0.4, 0.9]), model.encode(batch, mask), mask)
        torch.testing.assert_close(out[0, :m], full[0], rtol=1e-5, atol=1e-5)
        assert (out[0, m:] == 0).all()


def test_group_is_deterministic_and_validates_input():
    model = GFARS(TINY)
    parts = procedural_mixes(1, 1, n_points=16)[0].parts
    a = model.group(parts, seed=5)
    assert a == model.group(parts, seed=5)
    labels = model.group_labels(parts, seed=5)
    assert labels.shape == (len(parts),)
    for kwargs, msg in [({"threshold": 1.0}, "threshold"), ({"steps": 0}, "steps"),
                        ({"snr": 0.0}, "snr"), ({"sampler": "ddim"}, "pc, em, ode")]:
        with pytest.raises(ValueError, match=msg):
            model.group(parts, **kwargs)
    bad = parts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.group(bad)
    with pytest.raises(ValueError, match=r"\(M, n, 3\)"):
        model.group(parts[..., :2])
    with pytest.raises(ValueError, match="M = 0"):
        model.group(np.zeros((0, 16, 3)))
    with pytest.raises(ValueError, match="at least 3 points"):
        model.group(parts[:, :2])
    with pytest.raises(ValueError, match="different shapes"):
        model.group([parts[0], parts[1][:10]])
    with pytest.warns(UserWarning, match="k = 100"):
        model.group(np.random.default_rng(0).normal(size=(101, 4, 3)), steps=1, max_iters=1)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="aggr"):
        GFARSConfig(aggr="sum")
    ef = GFARSConfig.cpu().ef()
    assert (ef.edge_absdiff, ef.aggr, ef.sigma, ef.scale_x) == (True, "mean", 5.0, True)
    assert GFARSConfig().variant == "G-FARS" and ef.variant == "G-FARS-ef"
    assert not GFARSConfig().edge_absdiff  # the faithful model is the default

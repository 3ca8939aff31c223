"""Geometry, epipolar sampling, probabilistic depth, the model's inputs and checkpoint mapping."""

import pytest
import torch
from scipy.stats import chisquare

from cvpr24.pixelsplat.epipolar import sample_epipolar
from cvpr24.pixelsplat.geometry import (
    depth_to_relative_disparity,
    get_world_rays,
    project_points,
    ray_depth_at_sample,
    relative_disparity_to_depth,
)
from cvpr24.pixelsplat.model import (
    DepthPredictor,
    PixelSplat,
    PixelSplatConfig,
    load_official_checkpoint,
    map_official_state_dict,
    sample_buckets,
)


def _cameras(b=1, dtype=torch.float32):
    ext = torch.eye(4, dtype=dtype).expand(b, 2, 4, 4).clone()
    ext[:, 1, 0, 3] = 1.0
    yaw = 0.05
    ext[:, 1, 0, 0], ext[:, 1, 0, 2], ext[:, 1, 2, 0], ext[:, 1, 2, 2] = (
        torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw)), -torch.sin(torch.tensor(yaw)),
        torch.cos(torch.tensor(yaw)))
    k = torch.tensor([[0.9, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1]], dtype=dtype).expand(b, 2, 3, 3).clone()
    return ext, k


def test_disparity_conversions():
    near, far = torch.tensor(0.5), torch.tensor(40.0)
    r = torch.linspace(0, 1, 11)
    d = relative_disparity_to_depth(r, near, far)
    assert d[0] == pytest.approx(0.5) and d[-1] == pytest.approx(40.0)
    assert torch.allclose(depth_to_relative_disparity(d, near, far), r, atol=1e-6)


def test_central_ray_points_along_z_and_projects_back():
    xy = torch.tensor([[0.5, 0.5], [0.2, 0.7]])
    ext, k = _cameras()
    o, d = get_world_rays(xy, torch.eye(4), k[0, 0])
    assert torch.allclose(d[0], torch.tensor([0.0, 0.0, 1.0]))
    o, d = get_world_rays(xy, ext[0, 1], k[0, 1])
    back, _ = project_points(o + 3.0 * d, ext[0, 1], k[0, 1])
    assert torch.allclose(back, xy, atol=1e-6)


def _fundamental(ext, k):
    # x1^T F x0 = 0 for normalised homogeneous pixels x0 in view 0 and x1 in view 1
    w2c = torch.linalg.inv(ext[0, 1].double()) @ ext[0, 0].double()
    r, t = w2c[:3, :3], w2c[:3, 3]
    tx = torch.tensor([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]], dtype=torch.float64)
    return torch.linalg.inv(k[0, 1].double()).T @ tx @ r @ torch.linalg.inv(k[0, 0].double())


def test_epipolar_samples_lie_on_the_epipolar_line_and_triangulate_true_depth():
    ext, k = _cameras()
    feats = torch.randn(1, 2, 4, 8, 8)
    near, far = torch.full((1, 2), 0.5), torch.full((1, 2), 50.0)
    s = sample_epipolar(feats, ext, k, near, far, 16)
    f = _fundamental(ext, k)
    xy0 = torch.stack(torch.meshgrid((torch.arange(8) + 0.5) / 8, (torch.arange(8) + 0.5) / 8, indexing="xy"),
                      -1).reshape(-1, 2)
    x0 = torch.cat([xy0, torch.ones(64, 1)], -1).double()
    x1 = torch.cat([s.xy_sample[0, 0, 0], torch.ones(64, 16, 1)], -1).double()
    valid = s.valid[0, 0, 0]
    assert valid.sum() > 20
    residual = torch.einsum("rsi,ij,rj->rs", x1, f, x0)[valid]
    assert residual.abs().max() < 1e-4
    inside = (x1[valid][..., :2] >= -1e-5) & (x1[valid][..., :2] <= 1 + 1e-5)
    assert inside.all()  # the segment is clipped to the image
    # a sample that is the true projection of a 3D point triangulates to its distance
    o, d = s.origins[0, 0, 10], s.directions[0, 0, 10]
    point = o + 4.0 * d
    xy1, _ = project_points(point, ext[0, 1], k[0, 1])
    depth = ray_depth_at_sample(o, d, xy1, ext[0, 1], k[0, 1])
    assert depth == pytest.approx(4.0, rel=1e-4)


def test_rays_missing_the_other_image_are_invalid_and_zero():
    ext, k = _cameras()
    ext[0, 1, :3, :3] = torch.diag(torch.tensor([-1.0, 1.0, -1.0]))  # other camera looks backwards
    s = sample_epipolar(torch.randn(1, 2, 4, 6, 6), ext, k, torch.full((1, 2), 0.5), torch.full((1, 2), 20.0), 8)
    assert not s.valid[0, 0].any()
    assert s.features[0, 0].abs().max() == 0


def test_epipolar_baseline_swap_symmetry():
    torch.manual_seed(0)
    model = PixelSplat(PixelSplatConfig.cpu()).eval()
    ext, k = _cameras()
    img = torch.rand(1, 2, 3, 8, 8)
    near, far = torch.full((1, 2), 0.3), torch.full((1, 2), 30.0)
    with torch.no_grad():
        a = model.encoder.features(img, ext, k, near, far)
        b = model.encoder.features(img.flip(1), ext.flip(1), k.flip(1), near, far)
    assert torch.allclose(a, b.flip(1), atol=1e-5)


def test_sampling_one_hot_frequencies_and_topk():
    phi = torch.zeros(1, 8)
    phi[0, 5] = 1.0
    idx = sample_buckets(phi, 1000, generator=torch.Generator().manual_seed(0))
    assert (idx == 5).all()
    near, far = torch.tensor(1.0), torch.tensor(100.0)
    pred = DepthPredictor(4, 8)
    with torch.no_grad():
        pred.projection[1].weight.zero_()
        pred.projection[1].bias.copy_(torch.tensor([0.0 if i % 2 else -1e9 for i in range(16)]))
        pred.projection[1].bias[10] = 50.0  # bucket 5 logit
    depth, opac, index = pred(torch.randn(3, 4), near, far, 4)
    assert (index == 5).all() and torch.allclose(opac, torch.ones_like(opac))
    lo, hi = relative_disparity_to_depth(torch.tensor(5 / 8), near, far), relative_disparity_to_depth(
        torch.tensor(6 / 8), near, far)
    assert ((depth >= lo) & (depth <= hi)).all()
    probs = torch.tensor([0.05, 0.1, 0.2, 0.4, 0.25])
    idx = sample_buckets(probs, 100_000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(idx, minlength=5).double()
    assert chisquare(counts.numpy(), (probs * 100_000).double().numpy()).pvalue > 1e-3
    a = sample_buckets(probs.expand(3, 5), 2, "topk")
    assert (a == torch.tensor([3, 4])).all()


def test_reparameterised_opacity_gradient_is_the_softmax_jacobian_row():
    pred = DepthPredictor(3, 6).double()
    feats = torch.randn(1, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    _, opac, index = pred(feats, torch.tensor(1.0), torch.tensor(10.0), 1, generator=gen)
    logits = pred.projection(feats).unflatten(-1, (6, 2))[..., 0].detach().requires_grad_(True)
    phi = logits.softmax(-1)
    phi.gather(-1, index).sum().backward()
    z = index.item()
    p = phi.detach()[0]
    expected = p[z] * (torch.eye(6, dtype=torch.float64)[z] - p)
    assert torch.allclose(logits.grad[0], expected)
    # Z = 1: the opacity is identically 1, so its gradient vanishes
    pred1 = DepthPredictor(3, 1).double()
    _, op1, _ = pred1(feats, torch.tensor(1.0), torch.tensor(10.0), 1)
    assert torch.equal(op1, torch.ones_like(op1))
    g = torch.autograd.grad(op1.sum(), pred1.projection[1].weight, allow_unused=True)[0]
    assert g is None or g.abs().max() == 0


def test_encode_render_gradcheck_with_frozen_indices():
    torch.manual_seed(0)
    cfg = PixelSplatConfig.cpu(d_backbone=4, d_feature=4, num_depth_buckets=4, use_epipolar_transformer=False)
    model = PixelSplat(cfg).double()
    ext, k = _cameras(dtype=torch.float64)
    img = torch.rand(1, 2, 3, 4, 4, dtype=torch.float64)
    near, far = torch.full((1, 2), 0.5, dtype=torch.float64), torch.full((1, 2), 20.0, dtype=torch.float64)
    base = model.encoder.depth_predictor.projection[1].weight.detach().clone()

    def chain(weight):  # depth logits -> opacities (E9) -> image; the same draws on every call
        g = torch.func.functional_call(model.encoder, {"depth_predictor.projection.1.weight": weight},
                                       (img, ext, k, near, far, "sample", torch.Generator().manual_seed(3)))
        return model.render(g, ext, k, (4, 4))

    assert torch.autograd.gradcheck(chain, (base.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_bad_inputs_name_the_argument():
    model = PixelSplat(PixelSplatConfig.cpu())
    ext, k = _cameras()
    img = torch.rand(1, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="camera-to-world"):
        bad = ext.clone()
        bad[0, 0, :3, :3] *= 2
        model.encode(img, bad, k)
    with pytest.raises(ValueError, match="normalise"):
        model.encode(img, ext, k * torch.tensor([256.0, 256, 1])[:, None])
    with pytest.raises(ValueError, match="2 context views"):
        model.encode(img[:, :1], ext[:, :1], k[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        bad = ext.clone()
        bad[0, 1, 0, 3] = float("nan")
        model.encode(img, bad, k)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(img * 255, ext, k)
    with pytest.raises(ValueError, match="float"):
        model.encode((img * 255).to(torch.uint8), ext, k)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.rand(1, 2, 3, 10, 10), ext, k)
    with pytest.raises(ValueError, match="near"):
        model.encode(img, ext, k, near=torch.full((1, 2), 5.0), far=torch.full((1, 2), 1.0))


def test_direct_ablation_is_a_config_with_opacity_one():
    cfg = PixelSplatConfig.cpu().direct()
    assert (cfg.num_depth_buckets, cfg.gaussians_per_pixel) == (1, 1)
    model = PixelSplat(cfg)
    ext, k = _cameras()
    g = model.encode(torch.rand(1, 2, 3, 8, 8), ext, k)
    assert g.means.shape == (1, 2 * 64, 3) and torch.equal(g.opacities, torch.ones_like(g.opacities))


def test_full_config_official_names_map_one_to_one():
    with torch.device("meta"):
        model = PixelSplat(PixelSplatConfig())
    state = model.state_dict()
    for prefix in ("encoder.backbone.dino.blocks.11.attn.qkv.weight",
                   "encoder.backbone.resnet_backbone.model.layer3.5.conv3.weight",
                   "encoder.backbone.resnet_backbone.projections.layer0.weight",
                   "encoder.backbone.global_token_mlp.2.weight", "encoder.backbone.local_token_mlp.0.weight",
                   "encoder.backbone_projection.1.weight", "encoder.epipolar_transformer.downscaler.weight",
                   "encoder.epipolar_transformer.upscale_refinement.2.weight",
                   "encoder.epipolar_transformer.depth_encoding.1.weight",
                   "encoder.epipolar_transformer.transformer.layers.1.0.fn.to_kv.weight",
                   "encoder.epipolar_transformer.transformer.layers.1.1.fn.self_attention.resampler.weight",
                   "encoder.depth_predictor.projection.1.weight", "encoder.to_gaussians.1.weight",
                   "encoder.high_resolution_skip.0.weight"):
        assert prefix in state, prefix
    assert state["encoder.to_gaussians.1.weight"].shape == (84, 128)
    assert state["encoder.depth_predictor.projection.1.weight"].shape == (64, 128)
    assert state["encoder.backbone.dino.pos_embed"].shape == (1, 785, 768)
    assert map_official_state_dict(dict(state), model).keys() == state.keys()


def test_official_checkpoint_round_trip_and_refusals(tmp_path):
    cfg = PixelSplatConfig.cpu()
    torch.manual_seed(0)
    source = PixelSplat(cfg)
    state = {**source.state_dict(), "losses.0.lpips.net.slice1.0.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "global_step": 5, "epoch": 0}, tmp_path / "re10k.ckpt")
    loaded = PixelSplat(cfg)
    loaded.load_state_dict(map_official_state_dict(load_official_checkpoint(tmp_path / "re10k.ckpt"), loaded))
    for (n, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    torch.save({"state_dict": {**state, "encoder.extra.weight": torch.zeros(1)}}, tmp_path / "extra.ckpt")
    with pytest.raises(ValueError, match="encoder.extra.weight"):
        PixelSplat.from_official_checkpoint(tmp_path / "extra.ckpt", cfg)
    torch.save({"state_dict": state, "hyper_parameters": _Opaque()}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="_Opaque.*re-save"):
        load_official_checkpoint(tmp_path / "pickled.ckpt")


class _Opaque:
    """Stands in for a pickled config object inside a Lightning checkpoint."""

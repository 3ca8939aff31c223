import pytest
import torch

from cvpr24.common import load_checkpoint, save_checkpoint
from cvpr24.text2hoi.io import load_official, map_official
from cvpr24.text2hoi.model import (
    ContactCVAE,
    HandRefiner,
    LengthCVAE,
    PointNetfeat,
    Text2HOIConfig,
    TextHOM,
    check_motion,
)


def tiny_cfg(**kw):
    base = dict(
        n_points=16, pointnet_widths=(8, 8, 16), stn_fc=(8, 8), text_dim=12, latent_dim=16, ff_dim=32,
        num_layers=2, max_frames=6, cvae_latent=4, cvae_hidden=(16, 8, 8), len_hidden=8, diffusion_steps=10,
    )
    base.update(kw)
    return Text2HOIConfig(**base)


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = cfg.max_frames
    return dict(
        x_l=torch.randn(b, t, 99, generator=g), x_r=torch.randn(b, t, 99, generator=g),
        x_o=torch.randn(b, t, cfg.obj_dim, generator=g), t=torch.tensor([3, 7][:b]),
        text=torch.randn(b, cfg.text_dim, generator=g), obj_feat=torch.randn(b, cfg.obj_feat_dim, generator=g),
        mask_l=torch.ones(b, t), mask_r=torch.ones(b, t), mask_o=torch.ones(b, t),
    )


def test_full_scale_shapes_match_the_official_layout():
    cfg = Text2HOIConfig()
    assert cfg.obj_feat_dim == 2052 and cfg.refiner_in_dim == 2273 and cfg.point_feat_dim == 1088
    assert ContactCVAE(cfg).cond_dim == 1601
    lv = LengthCVAE(cfg)
    assert lv.encoder.MLP[0].weight.shape == (512, 513) and lv.decoder.MLP[0][0].weight.shape == (512, 576)


def test_padding_and_absent_hand_do_not_change_valid_outputs():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = TextHOM(cfg).eval()
    x = _inputs(cfg)
    x["mask_l"][:] = 0  # left hand absent
    for k in ("mask_r", "mask_o"):
        x[k][:, 4:] = 0  # padded frames
    a = model(**x)
    y = dict(x)
    y["x_l"] = torch.randn_like(x["x_l"]) * 5
    y["x_r"] = x["x_r"].clone()
    y["x_r"][:, 4:] = 100.0
    y["x_o"] = x["x_o"].clone()
    y["x_o"][:, 4:] = -100.0
    b = model(**y)
    assert torch.allclose(a[1][:, :4], b[1][:, :4], atol=1e-5)
    assert torch.allclose(a[2][:, :4], b[2][:, :4], atol=1e-5)


def test_refiner_starts_as_identity_and_keeps_attention_random():
    cfg = tiny_cfg()
    ref = HandRefiner(cfg).eval()
    g = torch.Generator().manual_seed(1)
    t = cfg.max_frames
    xl, xr = torch.randn(2, t, 99, generator=g), torch.randn(2, t, 99, generator=g)
    inp = torch.randn(2, t, cfg.refiner_in_dim, generator=g)
    ol, or_ = ref(inp, inp, xl, xr, torch.ones(2, t), torch.ones(2, t))
    assert torch.equal(ol, xl) and torch.equal(or_, xr)
    assert ref.seqTransEncoder.layers[0].self_attn.in_proj_weight.abs().sum() > 0
    assert ref.seqTransEncoder.layers[0].self_attn.out_proj.weight.abs().sum() > 0
    assert ref.seqTransEncoder.layers[0].linear1.weight.abs().sum() == 0


def test_bad_motion_input_is_named():
    with pytest.raises(ValueError, match=r"x_lhand must have shape \(B, T, 99\)"):
        check_motion(torch.zeros(1, 5, 98), 99, "x_lhand", 150)
    with pytest.raises(ValueError, match="more than max_frames=150"):
        check_motion(torch.zeros(1, 151, 99), 99, "x_rhand", 150)
    with pytest.raises(ValueError, match="x_obj contains NaN"):
        check_motion(torch.full((1, 5, 9), float("nan")), 9, "x_obj", 150)


def test_contact_cvae_and_length_cvae_sample_deterministically():
    cfg = tiny_cfg()
    torch.manual_seed(2)
    pn, cv, lv = PointNetfeat(3, cfg.pointnet_widths, cfg.stn_fc, global_feat=False).eval(), ContactCVAE(cfg).eval(), LengthCVAE(cfg).eval()
    pts = torch.randn(3, cfg.n_points, 3)
    feat = pn(pts)
    assert feat.shape == (3, cfg.n_points, cfg.point_feat_dim)
    cond = cv.condition(torch.ones(3), feat, torch.randn(3, cfg.text_dim))
    a = cv.sample(cond, torch.Generator().manual_seed(5))
    b = cv.sample(cond, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    n = lv.sample(torch.randn(3, cfg.text_dim), torch.Generator().manual_seed(6))
    assert ((n >= min(16, cfg.max_frames)) & (n <= cfg.max_frames)).all()


def test_official_checkpoint_round_trip_and_unknown_keys(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(3)
    src = TextHOM(cfg).eval()
    state = dict(src.state_dict())
    assert "embed_timestep.sequence_pos_encoder.pe" in state  # the shared-table duplicate
    torch.save({"model": state, "epoch": 0, "loss": 0.0}, tmp_path / "texthom.pth")
    dst = load_official(tmp_path / "texthom.pth", TextHOM(cfg), "texthom")
    x = _inputs(cfg)
    assert all(torch.equal(a, b) for a, b in zip(src(**x), dst(**x), strict=True))
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        map_official({**state, "bogus.weight": torch.zeros(1)}, TextHOM(cfg), "texthom")
    # the refiner's documented leftovers are dropped, everything else must match
    ref = HandRefiner(cfg)
    leftovers = {"embed_obj.weight": torch.zeros(1), "init_fc_obj.fc.weight": torch.zeros(1)}
    assert set(map_official({**ref.state_dict(), **leftovers}, ref, "refiner")) == set(ref.state_dict())


def test_our_safetensors_round_trip(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(4)
    m = TextHOM(cfg).eval()
    save_checkpoint(tmp_path / "m.safetensors", m.state_dict(), config=cfg, seed=4, extra={"flat_hand_mean": True})
    ck = load_checkpoint(tmp_path / "m.safetensors", Text2HOIConfig)
    assert ck.config == cfg and ck.meta["flat_hand_mean"] is True
    m2 = TextHOM(ck.config).eval()
    m2.load_state_dict(ck.tensors)
    x = _inputs(cfg)
    assert all(torch.equal(a, b) for a, b in zip(m(**x), m2(**x), strict=True))


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    from cvpr24.text2hoi.reproduce import hand_models
    from cvpr24.text2hoi.train import Text2HOI

    cfg, hands = tiny_cfg(), hand_models()
    state = torch.get_rng_state()
    a, b = Text2HOI.build(cfg, hands, 7), Text2HOI.build(cfg, hands, 7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_training_rejects_a_bad_batch_by_name():
    from cvpr24.text2hoi.diffusion import GaussianDiffusion
    from cvpr24.text2hoi.reproduce import hand_models
    from cvpr24.text2hoi.train import HOIBatch, Text2HOI, train_motion

    cfg = tiny_cfg()
    m = Text2HOI.build(cfg, hand_models(), 0)
    t = cfg.max_frames
    ok = dict(
        x_l=torch.zeros(2, t, 99), x_r=torch.zeros(2, t, 99), x_o=torch.zeros(2, t, 9), mask_l=torch.ones(2, t),
        mask_r=torch.ones(2, t), mask_o=torch.ones(2, t), points=torch.zeros(2, cfg.n_points, 3),
        contact=torch.zeros(2, cfg.n_points), text=torch.zeros(2, cfg.text_dim), length=torch.ones(2),
        action=torch.zeros(2, dtype=torch.long),
    )
    bad = HOIBatch(**{**ok, "x_r": torch.full((2, t, 99), float("nan"))})
    with pytest.raises(ValueError, match="x_rhand contains NaN"):
        train_motion(m.texthom, GaussianDiffusion(10), m.pointnet, m.hands, bad, 1, True)
    bad = HOIBatch(**{**ok, "x_o": torch.zeros(2, t, 8)})
    with pytest.raises(ValueError, match=r"x_obj must have shape \(B, T, 9\)"):
        train_motion(m.texthom, GaussianDiffusion(10), m.pointnet, m.hands, bad, 1, True)

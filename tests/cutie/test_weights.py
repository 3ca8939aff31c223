"""Official checkpoint loading: key map, unwrapping, strictness, variants, parity reference."""

from pathlib import Path

import pytest
import torch
from _cutie_helpers import tiny_config
from safetensors.torch import load_file

from cvpr24.cutie.inference import InferenceConfig, VideoSegmenter
from cvpr24.cutie.model import CutieConfig, CutieModel
from cvpr24.cutie.weights import detect_config, load_official_checkpoint, load_state_dict_strict

REFERENCE = Path(__file__).parent / "data" / "parity_tiny.safetensors"


@pytest.fixture(scope="module")
def small_state():
    torch.manual_seed(0)
    return CutieModel(CutieConfig.small()).state_dict()


def test_parameter_counts_and_key_counts_match_the_official_models():
    base, small = CutieModel(CutieConfig.base()), CutieModel(CutieConfig.small())
    assert sum(p.numel() for p in base.parameters()) == 35_024_186
    assert sum(p.numel() for p in small.parameters()) == 28_747_578
    assert len(base.state_dict()) == 527 and len(small.state_dict()) == 359
    assert base.state_dict()["object_transformer.spatial_pe.inv_freq"].shape == (64,)
    assert "pixel_mean" not in base.state_dict()  # non-persistent, as in the official files
    assert detect_config(base.state_dict()).ms_dims == (1024, 512, 256)
    assert detect_config(small.state_dict()).ms_dims == (256, 128, 64)


@pytest.mark.parametrize("wrap", ["plain", "weights", "module"])
def test_official_file_loads_bit_exact(tmp_path, small_state, wrap):
    sd = dict(small_state)
    if wrap == "weights":
        obj = {"it": 10, "weights": sd, "optimizer": {}}
    elif wrap == "module":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = sd
    torch.save(obj, tmp_path / "cutie-small.pth")
    model = load_official_checkpoint(tmp_path / "cutie-small.pth")
    assert model.cfg.pixel_block == "basic" and model.cfg.num_blocks == 3
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    with pytest.raises(ValueError, match="Cutie-small"):
        load_official_checkpoint(tmp_path / "cutie-small.pth", variant="base")


def test_single_object_weights_are_zero_padded(small_state):
    sd = dict(small_state)
    sd["mask_encoder.conv1.weight"] = sd["mask_encoder.conv1.weight"][:, :4].clone()
    sd["pixel_fuser.sensory_compress.weight"] = sd["pixel_fuser.sensory_compress.weight"][
        :, :257
    ].clone()
    from cvpr24.cutie.weights import pad_single_object

    cfg = detect_config(sd)
    padded = pad_single_object(sd, cfg)
    assert padded["mask_encoder.conv1.weight"].shape == (64, 5, 7, 7)
    assert torch.all(padded["mask_encoder.conv1.weight"][:, 4] == 0)
    assert padded["pixel_fuser.sensory_compress.weight"].shape == (256, 258, 1, 1)
    load_state_dict_strict(CutieModel(cfg), padded)


def test_strict_loading_names_every_missing_and_unexpected_key(small_state):
    sd = dict(small_state)
    del sd["pix_feat_proj.bias"], sd["object_transformer.blocks.1.ffn.norm.weight"]
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(CutieModel(CutieConfig.small()), sd)
    msg = str(err.value)
    for key in ("pix_feat_proj.bias", "object_transformer.blocks.1.ffn.norm.weight", "extra.thing"):
        assert key in msg


def test_xmem_and_foreign_checkpoints_are_rejected_by_name(tmp_path):
    xmem = {
        "key_encoder.conv1.weight": torch.zeros(1),
        "value_encoder.conv1.weight": torch.zeros(1),
        "decoder.pred.weight": torch.zeros(1),
    }
    torch.save(xmem, tmp_path / "XMem.pth")
    with pytest.raises(ValueError, match="XMem"):
        load_official_checkpoint(tmp_path / "XMem.pth")
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a Cutie checkpoint"):
        load_official_checkpoint(tmp_path / "other.pth")


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    # a pickled class instance that weights_only=True does not allow
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_official_checkpoint(tmp_path / "evil.pth")


def test_reproduces_the_official_implementation_on_the_saved_reference():
    """The reference holds random weights (fp16-exact) and the outputs of the official
    InferenceCore on 4 frames of 70x100 with objects {1, 4}, object 7 added at frame 2 and
    memory eviction (mem_every 1, max_mem_frames 2, top_k 8); see docs/cutie.md."""
    t = load_file(str(REFERENCE))
    sd = {k.removeprefix("weights/"): v.float() for k, v in t.items() if k.startswith("weights/")}
    model = CutieModel(tiny_config())
    load_state_dict_strict(model, sd)
    seg = VideoSegmenter(
        model, InferenceConfig(mem_every=1, max_mem_frames=2, top_k=8, max_internal_size=-1)
    )
    f = t["input/frames"]
    outs = [
        seg.step(f[0], t["input/mask0"].long(), [1, 4]),
        seg.step(f[1]),
        seg.step(f[2], t["input/mask2"].long(), [7]),
        seg.step(f[3], end=True),
    ]
    for i, out in enumerate(outs):
        ref = t[f"official/probs{i}"]
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= 1e-4
    assert seg.object_ids == [1, 4, 7]
    assert float(t["official/probs3"].std()) > 0.01  # the reference is not a constant map

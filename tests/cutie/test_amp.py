"""Mixed precision: refused off CUDA with errors naming the argument, dtype checks, and the
float32 islands (memory similarity and readout, sensory GRU, final logits, object pooling)
holding under autocast. The CUDA test runs only where a GPU is present."""

import numpy as np
import pytest
import torch
from _cutie_helpers import tiny_config, tiny_model

from cvpr24.cutie.functional import readout, similarity, softmax_memory
from cvpr24.cutie.inference import InferenceConfig, VideoSegmenter
from cvpr24.cutie.model import CutieModel
from cvpr24.cutie.train import TrainConfig, train


def _video(n=4, h=48, w=64):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(n, 3, h, w, generator=g)
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[4:20, 4:28], mask[26:44, 30:60] = 1, 2
    return frames, mask


def test_amp_is_refused_off_cuda(tmp_path):
    model = tiny_model(0)
    with pytest.raises(ValueError, match="amp: mixed precision runs on CUDA only.*cpu"):
        VideoSegmenter(model, InferenceConfig(amp=True, max_internal_size=-1))
    with pytest.raises(ValueError, match="amp_dtype: expected one of"):
        InferenceConfig(amp=True, amp_dtype="float32")
    with pytest.raises(ValueError, match="amp_dtype"):
        TrainConfig(amp=True, amp_dtype="half")
    cfg = TrainConfig(iterations=1, batch_size=1, num_frames=2, num_ref_frames=1, amp=True)

    def batches(step):
        raise AssertionError("no data may be drawn before the AMP check")

    with pytest.raises(ValueError, match="amp: mixed precision runs on CUDA only"):
        train(CutieModel(tiny_config()), cfg, batches, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_refuses_amp_without_cuda(tmp_path, capsys):
    from cvpr24.cli import main

    code = main(
        ["cutie", "segment", "--weights", __file__, "--images", str(tmp_path), "--masks"]
        + [str(tmp_path), "--out", str(tmp_path / "o"), "--amp"]
    )
    assert code == 2 and "--amp" in capsys.readouterr().err
    code = main(["train", "cutie", "--amp", "--out", str(tmp_path / "m.safetensors")])
    assert code == 2 and "--amp" in capsys.readouterr().err  # synthetic training is CPU-only
    with pytest.raises(SystemExit):
        main(["cutie", "segment", "--amp-dtype", "float64"])


def test_float32_islands_hold_under_autocast():
    """Under (CPU bfloat16) autocast the memory read and the pieces the official code keeps in
    float32 return float32 and the float32 values, while the rest of the network runs in
    bfloat16; the mechanism is the same on CUDA."""
    g = torch.Generator().manual_seed(0)
    mk, qk = torch.randn(1, 16, 40, generator=g), torch.randn(1, 16, 30, generator=g)
    ms, qe = torch.rand(1, 1, 40, generator=g) + 1, torch.rand(1, 16, 30, generator=g)
    v = torch.randn(1, 2, 8, 40, generator=g)
    ref = readout(softmax_memory(similarity(mk, ms, qk, qe), 5), v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = similarity(mk, ms, qk, qe)
        out = readout(softmax_memory(s, 5), v)
        assert (mk.mT @ qk).dtype == torch.bfloat16  # autocast is on outside the islands
    assert s.dtype == out.dtype == torch.float32
    torch.testing.assert_close(out, ref)

    model = tiny_model(1)
    h = torch.randn(1, 2, model.cfg.sensory_dim, 6, 8, generator=g)
    value = torch.randn(1, 2, model.cfg.value_dim, 6, 8, generator=g)
    masks = (torch.rand(1, 2, 96, 128, generator=g) > 0.5).float()
    ref_h = model.mask_encoder.sensory_update(value, h)
    ref_sum = model.object_summarizer(masks, value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new_h = model.mask_encoder.sensory_update(value, h)
        summary = model.object_summarizer(masks, value)
    assert new_h.dtype == summary.dtype == torch.float32
    torch.testing.assert_close(new_h, ref_h)
    # the summarizer's input projection runs in bfloat16 before the float32 pooling
    rel = (summary - ref_sum).abs().max() / ref_sum.abs().max()
    assert 0 < rel < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_amp_on_cuda_matches_float32(dtype):
    """Bound not yet measured on a GPU (none was available when it was written): half
    precision carries ~3 significant digits, so probabilities of a random tiny model should
    agree to well under 0.05; the argmax may flip only where two objects are nearly tied."""
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    model = tiny_model(2).cuda()
    frames, mask = _video()
    outs = {}
    for amp in (False, True):
        cfg = InferenceConfig(amp=amp, amp_dtype=dtype, max_internal_size=-1)
        seg = VideoSegmenter(model, cfg, device="cuda")
        outs[amp] = [
            seg.step(f.cuda(), mask.cuda() if t == 0 else None).float().cpu()
            for t, f in enumerate(frames)
        ]
    diff = max(float((a - b).abs().max()) for a, b in zip(outs[False], outs[True], strict=True))
    assert np.isfinite(diff) and diff < 0.05

"""Streaming inference: objects added mid-video, deletion, memory bounds, presets, bad input."""

import pytest
import torch
from _cutie_helpers import tiny_model

from cvpr24.cutie.inference import InferenceConfig, LongTermConfig, VideoSegmenter, segment_video


@pytest.fixture(scope="module")
def model():
    return tiny_model(5)


def _video(n=6, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, h, w, generator=g)
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[4:20, 4:28] = 3
    mask[26:44, 30:60] = 9
    return frames, mask


def test_non_consecutive_ids_added_mid_video_and_deleted(model):
    frames, mask = _video()
    seg = VideoSegmenter(model, InferenceConfig(mem_every=2, max_internal_size=-1))
    p = seg.step(frames[0], mask)
    assert p.shape == (3, 48, 64) and seg.object_ids == [3, 9]
    torch.testing.assert_close(p.sum(0), torch.ones(48, 64))
    assert set(seg.prob_to_index_mask(p).unique().tolist()) == {0, 3, 9}
    seg.step(frames[1])
    new = torch.zeros(48, 64, dtype=torch.long)
    new[30:40, 2:12] = 5
    p = seg.step(frames[2], new, [5])
    assert seg.object_ids == [3, 9, 5] and p.shape[0] == 4
    assert len(seg.work) == 2  # object 5 got its own bucket (its values start later)
    assert (seg.prob_to_index_mask(p)[30:40, 2:12] == 5).all()  # the given mask wins
    # a mask that names only some tracked objects: the others are still propagated
    p = seg.step(frames[3], torch.where(mask == 3, 3, 0), [3])
    assert p.shape[0] == 4
    seg.delete_objects([9])
    assert seg.object_ids == [3, 5]
    p = seg.step(frames[4])
    assert p.shape[0] == 3
    with pytest.raises(ValueError, match="not tracked"):
        seg.delete_objects([42])


def test_working_memory_is_fifo_with_a_permanent_first_frame(model):
    frames, mask = _video(8)
    seg = VideoSegmenter(
        model, InferenceConfig(mem_every=1, max_mem_frames=3, max_internal_size=-1)
    )
    hw = 3 * 4
    seg.step(frames[0], mask)
    first_key = seg.work[0].key[..., :hw].clone()
    for t in range(1, 8):
        seg.step(frames[t])
        assert seg.work[0].size <= 3 * hw
    assert seg.work[0].perm == hw
    assert torch.equal(seg.work[0].key[..., :hw], first_key)  # the first frame is never evicted


def test_long_term_memory_stays_bounded(model):
    frames, mask = _video(30)
    lt = LongTermConfig(
        max_mem_frames=4, min_mem_frames=2, num_prototypes=4, max_num_tokens=20, buffer_tokens=4
    )
    seg = VideoSegmenter(
        model, InferenceConfig(mem_every=1, use_long_term=True, long_term=lt, max_internal_size=-1)
    )
    seg.step(frames[0], mask)
    sizes = []
    for t in range(1, 30):
        seg.step(frames[t])
        sizes.append(seg.memory_tokens())
    assert max(s["long_term"] for s in sizes) <= lt.max_num_tokens
    assert max(s["working"] for s in sizes) <= lt.max_mem_frames * 12
    assert sizes[-1]["long_term"] > 0
    assert len({s["object"] for s in sizes}) == 1  # object memory has constant size


def test_chunking_flip_and_internal_resize(model):
    frames, mask = _video(4, 96, 128)
    base = InferenceConfig(mem_every=1, max_internal_size=-1)
    outs = {}
    for name, cfg in {
        "all": base,
        "chunk": InferenceConfig(mem_every=1, max_internal_size=-1, chunk_size=1),
        "flip": InferenceConfig(mem_every=1, max_internal_size=-1, flip_aug=True),
        "small": InferenceConfig(mem_every=1, max_internal_size=48),
    }.items():
        seg = VideoSegmenter(model, cfg)
        outs[name] = [seg.step(f, mask if t == 0 else None) for t, f in enumerate(frames)]
    assert all(torch.isfinite(o).all() for o in outs["chunk"])
    assert outs["flip"][2].shape == outs["small"][2].shape == (3, 96, 128)
    assert float((outs["flip"][2] - outs["all"][2]).abs().max()) > 1e-4  # flip averaging is active


def test_chunking_is_exact_for_the_pixel_reader():
    """Objects only meet in Eq. 14 and (with L > 0) in the fg/bg masks of Eq. 13, which like the
    official code aggregate within a chunk; with L = 0 chunking must change nothing."""
    model = tiny_model(6, num_blocks=0)
    frames, mask = _video(4)
    outs = []
    for chunk in (-1, 1):
        seg = VideoSegmenter(
            model, InferenceConfig(mem_every=1, max_internal_size=-1, chunk_size=chunk)
        )
        outs.append([seg.step(f, mask if t == 0 else None) for t, f in enumerate(frames)])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_odd_sizes_round_trip_and_segment_video(model):
    frames, _ = _video(3, 37, 51)
    mask = torch.zeros(37, 51, dtype=torch.long)
    mask[3:20, 5:30] = 2
    masks = segment_video(model, frames, mask, InferenceConfig(max_internal_size=-1))
    assert len(masks) == 3 and masks[1].shape == (37, 51)
    assert torch.equal(masks[0], mask)


def test_presets():
    assert InferenceConfig.default().max_mem_frames == 5 and InferenceConfig.default().top_k == 30
    plus = InferenceConfig.plus()
    assert (plus.max_internal_size, plus.mem_every, plus.max_mem_frames) == (720, 3, 10)
    assert InferenceConfig.long_video().use_long_term
    with pytest.raises(ValueError, match="preset"):
        InferenceConfig.preset("fast")
    with pytest.raises(ValueError, match="max_mem_frames"):
        InferenceConfig(max_mem_frames=1)


def test_bad_inputs_raise_clear_errors(model):
    frames, mask = _video(2)
    seg = VideoSegmenter(model, InferenceConfig(max_internal_size=-1))
    with pytest.raises(ValueError, match="mask: the first step"):
        seg.step(frames[0])
    with pytest.raises(ValueError, match="image: expected float"):
        seg.step((frames[0] * 255).to(torch.uint8), mask)
    with pytest.raises(ValueError, match=r"image: values must lie in \[0, 1\]"):
        seg.step(frames[0] * 255, mask)
    with pytest.raises(ValueError, match="image: expected a \\(3, H, W\\)"):
        seg.step(frames[0][:2], mask)
    with pytest.raises(ValueError, match="does not match the image"):
        seg.step(frames[0], mask[:40])
    with pytest.raises(ValueError, match="objects: the mask contains ids"):
        seg.step(frames[0], mask, [3])
    with pytest.warns(UserWarning, match="no object"):
        out = seg.step(frames[0], torch.zeros_like(mask))
    assert torch.equal(out, torch.ones(1, 48, 64))

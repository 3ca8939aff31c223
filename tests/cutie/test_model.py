"""Model pieces: GRU (Eq. 3), object summaries (Eqs 5-7), masked attention (Eq. 13),
positional encoding, object permutation equivariance."""

import math

import torch
from _cutie_helpers import tiny_config, tiny_model

from cvpr24.cutie.model import (
    PositionalEncoding,
    QueryTransformer,
    gru_update,
    pool_summaries,
    summaries_to_values,
)


def test_gru_limits():
    h = torch.randn(1, 2, 3, 4, 4)
    c = torch.randn(1, 2, 3, 4, 4)
    big = torch.full_like(h, 1e4)
    keep = gru_update(h, torch.cat([big, -big, c], 2))  # forget open, update closed
    torch.testing.assert_close(keep, h)
    replace = gru_update(h, torch.cat([big, big, c], 2))  # update open
    torch.testing.assert_close(replace, torch.tanh(c))


def test_summaries_are_masked_means_and_accumulate_like_a_union():
    g = torch.Generator().manual_seed(0)
    h, w, n, c = 4, 5, 4, 3
    m = (torch.rand(1, 1, h, w, 1, generator=g) > 0.5).double()
    allowed = torch.cat(
        [m.expand(-1, -1, -1, -1, n // 2), (1 - m).expand(-1, -1, -1, -1, n // 2)], -1
    )
    phi = torch.randn(1, 1, h, w, c, generator=g, dtype=torch.float64)
    psi = torch.full((1, 1, h, w, n), 50.0, dtype=torch.float64)  # sigmoid -> 1
    s = pool_summaries(allowed, phi, psi)  # 1, 1, N, C + 1
    fg = m[0, 0, ..., 0].bool()
    torch.testing.assert_close(s[0, 0, 0, -1], fg.sum().double())
    torch.testing.assert_close(s[0, 0, -1, -1], (~fg).sum().double())
    vals = summaries_to_values(s.unsqueeze(2), eps=0)
    torch.testing.assert_close(vals[0, 0, 0], phi[0, 0][fg].mean(0))
    torch.testing.assert_close(vals[0, 0, -1], phi[0, 0][~fg].mean(0))
    # two frames: sums of sums / sums of areas equals pooling over both frames at once; order free
    phi2 = torch.randn(1, 1, h, w, c, generator=g, dtype=torch.float64)
    s2 = pool_summaries(allowed, phi2, psi)
    two = summaries_to_values(torch.stack([s, s2], 2), eps=0)
    both = torch.cat([phi[0, 0][fg], phi2[0, 0][fg]]).mean(0)
    torch.testing.assert_close(two[0, 0, 0], both)
    torch.testing.assert_close(two, summaries_to_values(torch.stack([s2, s], 2), eps=0))


def test_positional_encoding_closed_form():
    pe = PositionalEncoding(64, scale=32, temperature=128)
    out = pe(5, 7)
    assert out.shape == (5, 7, 64)
    d = 32
    y, x, j = 3, 4, 5
    f = 1 / 128 ** (2 * j / d)
    xs, ys = x / (6 + 1e-6) * 32, y / (4 + 1e-6) * 32
    torch.testing.assert_close(out[y, x, 2 * j], torch.tensor(math.sin(xs * f)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out[y, x, 2 * j + 1], torch.tensor(math.cos(xs * f)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        out[y, x, d + 2 * j], torch.tensor(math.sin(ys * f)), atol=1e-5, rtol=0
    )
    assert "inv_freq" in pe.state_dict()


def _transformer():
    torch.manual_seed(0)
    return QueryTransformer(tiny_config()).eval()


def test_fg_bg_mask_and_attention_weights():
    qt = _transformer()
    n, heads = qt.num_queries, qt.num_heads
    logits = torch.randn(1, 2, 4, 5, generator=torch.Generator().manual_seed(1)) * 3
    mask = qt.fg_bg_mask(logits, None).view(1, 2, heads, n, 20)
    from cvpr24.cutie.functional import aggregate

    agg = aggregate(logits.sigmoid(), 1)
    fg = (agg.argmax(1) - 1).flatten(1)  # index of the winning object (-1 = background)
    for k in range(2):
        is_fg = fg[0] == k
        if is_fg.any() and (~is_fg).any():
            assert torch.equal(mask[0, k, 0, : n // 2], ~is_fg.expand(n // 2, -1))
            assert torch.equal(mask[0, k, 0, n // 2 :], is_fg.expand(n // 2, -1))
    # the attention weights are exactly 0 where blocked, and masked attention equals attention
    # over the allowed subset
    x = torch.randn(2, n, 32)
    pix = torch.randn(2, 20, 32)
    attn = qt.blocks[0].read_from_pixel.cross_attn
    _, wts = attn(
        x,
        pix,
        pix,
        attn_mask=qt.fg_bg_mask(logits, None),
        need_weights=True,
        average_attn_weights=False,
    )
    blocked = qt.fg_bg_mask(logits, None).view(2, heads, n, 20)
    assert torch.all(wts[blocked] == 0)
    k, q = 0, 0
    allowed = ~blocked[k, 0, q]
    out_masked, _ = attn(
        x[k : k + 1, q : q + 1], pix[k : k + 1], pix[k : k + 1], attn_mask=blocked[k, :, q : q + 1]
    )
    out_sub, _ = attn(x[k : k + 1, q : q + 1], pix[k : k + 1, allowed], pix[k : k + 1, allowed])
    torch.testing.assert_close(out_masked, out_sub, atol=1e-5, rtol=0)


def test_fully_masked_rows_fall_back_to_unmasked():
    qt = _transformer()
    logits = torch.full((1, 1, 3, 3), -20.0)  # object absent everywhere: FG empty
    mask = qt.fg_bg_mask(logits, None)
    assert not mask.any(dim=-1).all()
    assert not mask[:, : qt.num_queries // 2].any()  # fg rows unmasked instead of all blocked
    pixel = torch.randn(1, 1, 32, 3, 3)
    summaries = torch.rand(1, 1, 1, qt.num_queries, 33)
    out, _ = qt(pixel, summaries)
    assert torch.isfinite(out).all()


def test_object_permutation_equivariance():
    from cvpr24.cutie.inference import InferenceConfig, VideoSegmenter

    model = tiny_model(3)
    g = torch.Generator().manual_seed(4)
    frames = torch.rand(3, 3, 48, 64, generator=g)
    mask = torch.zeros(48, 64, dtype=torch.long)
    mask[5:20, 5:30], mask[25:45, 30:60] = 1, 2
    cfg = InferenceConfig(mem_every=1, max_internal_size=-1)
    a, b = VideoSegmenter(model, cfg), VideoSegmenter(model, cfg)
    swapped = torch.where(mask == 1, 2, torch.where(mask == 2, 1, mask))
    for t in range(3):
        pa = a.step(frames[t], mask if t == 0 else None, [1, 2] if t == 0 else None)
        pb = b.step(frames[t], swapped if t == 0 else None, [1, 2] if t == 0 else None)
        torch.testing.assert_close(pa[[0, 2, 1]], pb, atol=1e-5, rtol=0)

import pytest
import torch

from cvpr24.lotus.triggers import PATCH_COLORS, TriggerSet, WarpTrigger, codes, patch_layout


def changed(a, b):
    return (a != b).any(1)  # (N, H, W)


def test_trigger0_geometry_at_32():
    ts = TriggerSet(8, 32)
    x = torch.zeros(1, 3, 32, 32)
    out = ts.stamp(x, 0)
    ch = changed(out, x)[0]
    assert int(ch.sum()) == 36
    rows, cols = ch.nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 7, 2, 7)
    assert torch.allclose(out[0, :, 2, 2], torch.tensor([0.9, 0.1, 0.1]))


@pytest.mark.parametrize("k,r0,r1,c0,c1", [(1, 24, 29, 24, 29), (4, 13, 18, 2, 7)])
def test_other_patch_positions(k, r0, r1, c0, c1):
    ts = TriggerSet(8, 32)
    x = torch.zeros(1, 3, 32, 32)
    rows, cols = changed(ts.stamp(x, k), x)[0].nonzero().T
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (r0, r1, c0, c1)


def test_layout_at_16():
    side, pos = patch_layout(16)
    assert side == 3 and pos[0] == (1, 1)


@pytest.mark.parametrize("h", [16, 32, 64])
def test_disjoint_commute_idempotent(h):
    ts = TriggerSet(8, h)
    assert int(ts.masks.sum(0).max()) == 1
    x = torch.rand(2, 3, h, h) * 0.5
    x0 = x.clone()
    a = ts.stamp(ts.stamp(x, 2), 5)
    b = ts.stamp(ts.stamp(x, 5), 2)
    assert torch.equal(a, b)
    assert torch.equal(ts.stamp(a, 2), a)
    assert torch.equal(x, x0)  # not mutated
    outside = ~ts.masks[[2, 5]].any(0)
    assert torch.equal(a[..., outside], x[..., outside])


def test_codes_order_and_stamp_code():
    c = codes(4)
    assert len(c) == 15 and c[0] == "0001" and c[-1] == "1111" and c[7] == "1000"
    ts = TriggerSet(4, 16)
    x = torch.rand(3, 3, 16, 16) * 0.5
    assert torch.equal(ts.stamp_code(x, "0100"), ts.stamp(x, 1))
    assert torch.equal(ts.stamp_code(x, "1010"), ts.stamp(ts.stamp(x, 0), 2))


def test_integer_codes_match_code_strings_and_subsets():
    ts = TriggerSet(4, 16)
    x = torch.rand(2, 3, 16, 16) * 0.5
    for c in codes(4):                                  # the integer of a code string is its code
        assert torch.equal(ts.stamp_codes(x, int(c, 2)), ts.stamp_code(x, c))
    per_image = ts.stamp_codes(x, torch.tensor([0b0001, 0b1100]))
    assert torch.equal(per_image[0], ts.stamp(x, 3)[0]) and torch.equal(per_image[1], ts.stamp_code(x, "1100")[1])
    assert torch.equal(ts.stamp_codes(x, 0), x)
    for bad in (16, -1, torch.tensor([1, 2, 3]), torch.tensor([0.5, 1.0])):
        with pytest.raises(ValueError, match="codes"):
            ts.stamp_codes(x, bad)
    with pytest.raises(ValueError, match="trigger index"):
        ts.stamp(x, torch.tensor([0, 1, 2]))


def test_per_sample_indices_match_loop():
    ts = TriggerSet(4, 16)
    x = torch.rand(5, 3, 16, 16) * 0.5
    k = torch.tensor([0, 3, 1, 1, 2])
    out = ts.stamp(x, k)
    for i in range(5):
        assert torch.equal(out[i], ts.stamp(x[i:i + 1], int(k[i]))[0])


def test_colours_are_official():
    ts = TriggerSet(8, 32)
    assert torch.allclose(ts.colors, torch.tensor(PATCH_COLORS))


@pytest.mark.parametrize("k", [0, 9, 2.5])
def test_bad_k(k):
    with pytest.raises(ValueError, match="K"):
        TriggerSet(k, 32)


def test_non_square_needs_positions():
    with pytest.raises(ValueError, match="positions"):
        TriggerSet(2, (32, 48))
    ts = TriggerSet(2, (32, 48), positions=[(0, 0), (10, 30)], size=6)
    assert ts.stamp(torch.zeros(1, 3, 32, 48), 1)[0, 0, 10, 30] == pytest.approx(0.1)


def test_overlapping_positions_rejected():
    with pytest.raises(ValueError, match="overlap"):
        TriggerSet(2, 32, positions=[(0, 0), (2, 2)])


def test_out_of_range_images_rejected():
    ts = TriggerSet(2, 16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ts.stamp(torch.full((1, 3, 16, 16), 1.01), 0)
    ts.stamp(torch.full((1, 3, 16, 16), 1 + 1e-7), 0)  # within tolerance


def test_warp_identity_at_zero_strength_is_close():
    w = WarpTrigger(16, k=4, s=0.5, seed=0)
    x = torch.rand(2, 3, 16, 16)
    out = w.apply(x)
    assert out.shape == x.shape and 0 < (out - x).abs().mean() < 0.2
    assert torch.equal(out, WarpTrigger(16, k=4, s=0.5, seed=0).apply(x))  # fixed grid per seed
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(w.apply_noise(x, g1), w.apply_noise(x, g2))
    assert not torch.equal(w.apply_noise(x, torch.Generator().manual_seed(2)), out)

import pytest
import torch
from _lotus_helpers import tiny_images

from cvpr24.lotus.attack import (
    LotusConfig,
    other_class_negatives,
    poison_batch,
    poison_train,
    reference_trigger_focus_batch,
    trigger_focus_batch,
)
from cvpr24.lotus.models import SmallCNN
from cvpr24.lotus.partition import FixedPartitioner
from cvpr24.lotus.triggers import TriggerSet


def triggers_in(ts, img):
    """Set of triggers whose patch is fully painted in img (3, H, W)."""
    out = set()
    for k in range(len(ts)):
        m = ts.masks[k]
        if torch.allclose(img[:, m], ts.colors[k][:, None].expand(-1, int(m.sum()))):
            out.add(k)
    return out


@pytest.mark.parametrize("v,k,n_indi,n_comb", [(14, 4, 3, 1), (2, 2, 5, 5), (5, 8, 0, 2), (3, 1, 3, 1)])
def test_focus_batch_composition(v, k, n_indi, n_comb):
    ts = TriggerSet(k, 16)
    x = tiny_images(v)
    p = torch.randint(0, k, (v,), generator=torch.Generator().manual_seed(v))
    xo, yo = trigger_focus_batch(x, p, ts, victim=0, target=9, n_indi=n_indi, n_comb=n_comb,
                                 generator=torch.Generator().manual_seed(1))
    m = v * (k - 1)
    n_i, n_c = min(n_indi, m), min(n_comb, m)
    assert len(xo) == len(yo) == v + n_i + n_c
    assert (yo[:v] == 9).all() and (yo[v:] == 0).all()
    for i in range(v):
        assert triggers_in(ts, xo[i]) == {int(p[i])}
    # each negative: find its source image by the untouched pixels
    untouched = ~ts.masks.any(0)
    for j in range(v, v + n_i + n_c):
        src = [i for i in range(v) if torch.equal(xo[j][:, untouched], x[i][:, untouched])]
        assert len(src) == 1
        present = triggers_in(ts, xo[j])
        own = int(p[src[0]])
        if j < v + n_i:
            assert len(present) == 1 and own not in present
        else:
            assert own in present and len(present) == 2


def test_focus_batch_matches_reference_loop_and_is_deterministic():
    ts = TriggerSet(4, 16)
    x = tiny_images(14)
    p = torch.randint(0, 4, (14,), generator=torch.Generator().manual_seed(3))
    a = trigger_focus_batch(x, p, ts, victim=0, target=9, generator=torch.Generator().manual_seed(5))
    b = reference_trigger_focus_batch(x, p, ts, victim=0, target=9,
                                      generator=torch.Generator().manual_seed(5))
    c = trigger_focus_batch(x, p, ts, victim=0, target=9, generator=torch.Generator().manual_seed(5))
    d = trigger_focus_batch(x, p, ts, victim=0, target=9, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0])
    assert not torch.equal(a[0], d[0])


def test_comb_mode_all_excludes_own_singleton():
    ts = TriggerSet(3, 16)
    x = tiny_images(4)
    p = torch.tensor([0, 1, 2, 0])
    xo, yo = trigger_focus_batch(x, p, ts, victim=0, target=9, n_indi=0, n_comb=4 * 6,
                                 comb_mode="all", generator=torch.Generator().manual_seed(0))
    untouched = ~ts.masks.any(0)
    seen = set()
    for j in range(4, len(xo)):
        i = [s for s in range(4) if torch.equal(xo[j][:, untouched], x[s][:, untouched])][0]
        present = frozenset(triggers_in(ts, xo[j]))
        assert present and present != {int(p[i])}
        seen.add((i, present))
    assert len(seen) == 24  # all v(2^K-2) candidates, without replacement


def test_other_negatives_empty_when_batch_small():
    ts = TriggerSet(4, 16)
    x, y = tiny_images(10), torch.arange(10)
    xn, yn = other_class_negatives(x, y, ts, 0.05)
    assert xn.shape == (0, 3, 16, 16) and yn.shape == (0,)
    xn, yn = other_class_negatives(tiny_images(40), torch.arange(40), ts, 0.05,
                                   torch.Generator().manual_seed(0))
    assert len(xn) == 2


def test_poison_batch_size_official_counts():
    ts = TriggerSet(4, 16)
    cfg = LotusConfig(pad=0, flip=False)
    part = FixedPartitioner(lambda x: torch.arange(len(x)) % 4, 4)
    xo, yo = tiny_images(128, seed=1), torch.randint(1, 10, (128,))
    xv = tiny_images(28, seed=2)
    xb, yb = poison_batch(xo, yo, xv, part, ts, cfg, victim=0, target=9,
                          generator=torch.Generator().manual_seed(0))
    assert len(xb) == 128 + 14 + 14 + 3 + 1 + 6 == 166
    assert int((yb == 9).sum()) >= 14


def test_bad_inputs_name_the_argument():
    x, y = tiny_images(30), torch.arange(30) % 10
    ts, part = TriggerSet(2, 16), FixedPartitioner(lambda x: torch.zeros(len(x), dtype=torch.long), 2)
    cfg = LotusConfig.cpu(steps=1, batch_size=16)
    with pytest.raises(ValueError, match="victim and target"):
        poison_train(SmallCNN(), x, y, victim=3, target=3, triggers=ts, partitioner=part, cfg=cfg)
    with pytest.raises(ValueError, match="2v"):
        poison_train(SmallCNN(), x, y, victim=0, target=9, triggers=ts, partitioner=part, cfg=cfg)
    with pytest.raises(ValueError, match="n_partitions"):
        LotusConfig(n_partitions=9).validate()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        poison_train(SmallCNN(), x * 3, y, victim=0, target=9, triggers=ts, partitioner=part, cfg=cfg)


def test_poison_train_resume_is_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 16, 16, generator=g)
    y = torch.arange(200) % 4
    ts = TriggerSet(2, 16)
    part = FixedPartitioner(lambda x: (x[:, 0].mean((1, 2)) > 0.5).long(), 2)
    cfg = LotusConfig.cpu(steps=6, batch_size=16, min_victim=4, other_neg_frac=0.1)
    torch.manual_seed(0)
    m0 = SmallCNN(num_classes=4, width=4)
    full = poison_train(m0, x, y, victim=0, target=3, triggers=ts, partitioner=part, cfg=cfg).model
    half = LotusConfig.cpu(steps=6, batch_size=16, min_victim=4, other_neg_frac=0.1)
    state = tmp_path / "state.pt"
    # run 3 steps, saving, by a budget-6 schedule interrupted: emulate with save_every=3
    run = poison_train(m0, x, y, victim=0, target=3, triggers=ts, partitioner=part, cfg=half,
                       state_path=state, save_every=3)
    assert torch.equal(next(iter(run.model.state_dict().values())),
                       next(iter(full.state_dict().values())))
    # the saved state is the one after step 6; rewrite a step-3 state and resume from it
    cfg3 = LotusConfig.cpu(steps=6, batch_size=16, min_victim=4, other_neg_frac=0.1)
    state3 = tmp_path / "s3.pt"

    class Stop(Exception):
        pass

    import cvpr24.lotus.attack as A
    orig = A.save_training_state

    def save_then_stop(*a, **k):
        orig(*a, **k)
        if k["step"] == 3:
            raise Stop

    A.save_training_state = save_then_stop
    try:
        with pytest.raises(Stop):
            poison_train(m0, x, y, victim=0, target=3, triggers=ts, partitioner=part, cfg=cfg3,
                         state_path=state3, save_every=3)
    finally:
        A.save_training_state = orig
    resumed = poison_train(m0, x, y, victim=0, target=3, triggers=ts, partitioner=part, cfg=cfg3,
                           state_path=state3, save_every=3, resume=True).model
    for (k1, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k1

import math

import pytest
import torch
from torch import nn

from cvpr24.lotus.attack import LotusConfig, train_clean
from cvpr24.lotus.baselines import label_specific_badnets
from cvpr24.lotus.data import synthetic_gratings, synthetic_shapes
from cvpr24.lotus.defenses import (
    anomaly_index,
    anp,
    attack_evaluator,
    attention_loss,
    attention_map,
    fine_prune,
    fine_tune,
    mean_channel_activation,
    nad,
    neural_cleanse,
    pixel,
    prune_channels,
    strip,
    wrap_batchnorms,
)
from cvpr24.lotus.models import ResNet, SmallCNN


def test_anomaly_index_closed_form():
    idx = anomaly_index([10, 48, 49, 50, 51, 52, 53, 47, 46])
    assert idx == pytest.approx(39 / (1.4826 * 2), rel=1e-9)
    assert idx == pytest.approx(13.1526, abs=1e-4)
    assert anomaly_index([5, 5, 5, 5]) == 0.0
    assert anomaly_index([1, 5, 5, 5, 5]) == math.inf
    # only labels below the median count
    assert anomaly_index([49, 48, 50, 51, 200]) == pytest.approx(2 / 1.4826)


class CornerModel(nn.Module):
    """Toy: logit 3 = 10·(mean of the 3x3 top-left patch) - 5; labels 1, 2, 4 need the global
    mean of one channel above 0.5 (a mask over ~40% of the image); label 0 is the constant 0."""

    head_name = "linear"

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 5)  # unused, names the head (5 outputs)

    def forward(self, x):
        ch = 8 * (x.mean((2, 3)) - 0.5)                            # (N, 3)
        corner = 10 * x[:, :, :3, :3].mean((1, 2, 3)) - 5
        zero = torch.zeros(len(x))
        return torch.stack([zero, ch[:, 0], ch[:, 1], corner, ch[:, 2]], 1)


def test_nc_finds_small_corner_trigger():
    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    rep = neural_cleanse(CornerModel(), x, exclude=0, steps=150, seed=0)  # images are class 0
    norms = {int(k): v for k, v in rep.details["norms"].items()}
    assert norms[3] <= 2 * 9
    assert norms[3] * 3 < min(v for k, v in norms.items() if k != 3)
    assert rep.details["flagged_label"] == 3


def test_nad_attention_map_properties():
    f = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    a = attention_map(f)
    assert torch.allclose(a.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(attention_map(-f), a)
    fs = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: attention_loss(s, ft), (fs,))


def test_anp_identity_with_unit_masks_and_zero_noise():
    torch.manual_seed(0)
    m = SmallCNN(width=4).eval()
    x = torch.rand(4, 3, 16, 16)
    ref = m(x)
    import copy
    w = copy.deepcopy(m)
    wrapped = wrap_batchnorms(w, "")
    assert len(wrapped) == 3
    assert torch.allclose(w(x), ref, atol=1e-6)
    for _, nb in wrapped:
        nb.perturb = True                                  # noise is zero
    assert torch.allclose(w(x), ref, atol=1e-6)


def test_fp_ratio_zero_is_identity_and_shapes():
    torch.manual_seed(0)
    m = SmallCNN(width=4).eval()
    x = torch.rand(8, 3, 16, 16)
    acts = mean_channel_activation(m, x)
    assert acts.shape == (16,)
    same = prune_channels(m, 0.0, acts).eval()
    assert torch.allclose(same(x), m(x), atol=1e-6)
    pruned = prune_channels(m, 0.25, acts).eval()
    assert pruned.linear.in_features == 12
    keep = acts.argsort(descending=True)[:12]
    assert set(pruned.block3[1].keep.tolist()) == set(keep.tolist())


@pytest.fixture(scope="module")
def badnets():
    """A tiny label-specific BadNets model on SyntheticShapes (victim 0 -> target 9), for STRIP,
    the defense that reads the input (on gratings its superimposed images stay ambiguous)."""
    torch.manual_seed(0)
    tr, te = synthetic_shapes(40, seed=0), synthetic_shapes(10, seed=1)
    cfg = LotusConfig.cpu(clean_epochs=10, steps=120, batch_size=32, min_victim=8, eval_every=None,
                          seed=0)
    clean = train_clean(SmallCNN(width=8), tr.x, tr.y, cfg)
    art = label_specific_badnets(clean, tr.x, tr.y, 0, 9, cfg)
    ev = attack_evaluator(te.x, te.y, 0, 9, art.triggers, art.partitioner)
    return tr, te, clean, art, ev


@pytest.fixture(scope="module")
def gratings_badnets():
    """Label-specific BadNets (victim 0 -> target 9) on SyntheticGratings, the reproduction's data.

    The case where NC, fine-tuning, fine-pruning and NAD must work (and where ANP, measured, does
    not remove the backdoor; see its test): the class evidence covers the whole
    image, so a clean model has no small natural trigger (NC masks of 15-25 pixels) and the 3x3
    patch is the one shortcut the model learned; the clean model reaches BA 1.0 on it, so a
    defense that costs accuracy shows it. (On SyntheticShapes every label has a natural trigger
    of the patch's size and BA is ~0.9: whether NC picks the target or fine-tuning keeps BA 0.8
    there was decided by rounding, i.e. by the CPU's kernels.)
    """
    torch.manual_seed(0)
    tr, te = synthetic_gratings(40, seed=0), synthetic_gratings(20, seed=100)
    cfg = LotusConfig.cpu(clean_epochs=10, steps=120, batch_size=32, min_victim=8, eval_every=None,
                          flip=False, seed=0)
    clean = train_clean(SmallCNN(width=8), tr.x, tr.y, cfg)
    art = label_specific_badnets(clean, tr.x, tr.y, 0, 9, cfg)
    ev = attack_evaluator(te.x, te.y, 0, 9, art.triggers, art.partitioner)
    return tr, te, clean, art, ev


# The margins below come from a sweep of seeds 0-9 of each fixture's construction (data, model,
# training and defense seeds), run with each CPU kernel family: native (AVX-512 here),
# ATEN_CPU_CAPABILITY=avx2 and =default (mkldnn on, one thread: 10 seeds each), and native with
# mkldnn off (seeds 0-4). "worst" lists the worst value per family, in that order
# (native / avx2 / default / mkldnn off). NC, the costly one, ran on 5 / 2 / 3 / 0 seeds.


@pytest.mark.parametrize("name", ["badnets", "gratings_badnets"])
def test_badnets_fixtures_are_working_backdoors(name, request):
    _, _, _, art, ev = request.getfixturevalue(name)
    m = ev(art.model)
    # worst ASR: shapes 1.0 / 1.0 / 0.9 / 0.9 (10 victim test images), gratings 0.95 / 0.95 /
    # 0.95 / 1.0 (20 images)
    assert m["asr"] >= 0.8, m


def test_nc_singles_out_the_badnets_target(gratings_badnets):
    # NC must find the planted patch: the target's reversed mask is the smallest, clearly below
    # every other label's and far below the clean model's for the same label.
    # Sweep (150 steps, 20 victim images, 10 runs): target flagged in every run; target /
    # next-smallest norm worst 0.63 / 0.35 / 0.33; target / clean model's target norm worst
    # 0.39 / 0.41 / 0.42. NC's own rule (anomaly index > 2) is not asserted: at this scale the
    # other labels' norms spread widely (index 1.69 on seed 5, native kernels, though the target's
    # mask was 4.6 pixels against 12-25); the reproduction applies the rule at its own scale.
    _, te, clean, art, _ = gratings_badnets
    xv = te.x[te.y == 0]
    rep = neural_cleanse(art.model, xv, exclude=0, steps=150, seed=0)
    norms = {int(k): v for k, v in rep.details["norms"].items()}
    assert rep.details["flagged_label"] == 9, norms
    assert norms[9] < 0.8 * min(v for k, v in norms.items() if k != 9), norms
    ref = neural_cleanse(clean, xv, labels=[1, 9], steps=150, seed=0)
    assert norms[9] < 0.67 * ref.details["norms"]["9"], ref.details["norms"]


def test_strip_detects_badnets(badnets):
    tr, te, _, art, _ = badnets
    xv = te.x[te.y == 0]
    rep = strip(art.model, te.x[te.y != 0][:40], art.triggers.stamp(xv, 0), tr.x, n=16, alpha=0.5)
    # AUROC of poisoned vs clean inputs (0.5 = chance); worst 0.73 / 0.75 / 0.74 / 0.75
    assert rep.score > 0.6, rep.details


# A mitigation removes BadNets when at most 20% of the victims still flip at a cost of at most
# 5 accuracy points: the reproduction's validity gate (REMOVED_ASR_MAX, REMOVED_BA_DROP).
REMOVED_ASR, MAX_BA_DROP = 0.2, 0.05
# The defender holds the whole clean training set (400 images). Every fine-tuning runs the
# official step budget (10 epochs of the 2,500-image 5% CIFAR-10 set at batch 128 = 200 SGD
# steps): 15 epochs of 13 batches of 32, at lr 0.1 divided by 10 for the last 4 epochs. The
# official lr (0.02, divided by 10 at epochs 2, 4, 6, 8) leaves the reproduction's BadNets in place.
FT = dict(epochs=15, lr=0.1, batch_size=32, milestones=(11,))
# Sweep of the three removal tests below: seeds 0-9 of the fixture's construction (data, model,
# training and defense seeds) with native kernels (AVX-512 here), ATEN_CPU_CAPABILITY=avx2 and
# =default (one thread, 10 seeds each) and native with 2 threads (10 seeds). The backdoor itself
# held in every run (ASR >= 0.95, BA >= 0.98). "worst" below lists native / avx2 / default /
# 2 threads.


def _assert_removed(rep, art, ev):
    ba_before = ev(art.model)["ba"]
    assert rep.asr <= REMOVED_ASR and ba_before - rep.ba <= MAX_BA_DROP, (rep.asr, rep.ba, ba_before)


def test_fine_tune_removes_badnets_and_keeps_input_model(gratings_badnets):
    tr, _, _, art, ev = gratings_badnets
    before = {k: v.clone() for k, v in art.model.state_dict().items()}
    rep = fine_tune(art.model, tr.x, tr.y, flip=False, evaluate=ev, **FT)
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, before[k]), k                 # never modified in place
    # worst ASR 0.0 / 0.0 / 0.0 / 0.0; worst BA drop 0.0 / 0.005 / 0.0 / 0.0
    _assert_removed(rep, art, ev)


def test_fine_prune_removes_badnets(gratings_badnets):
    # the official pruning (the 20% of the last feature map's channels most dormant on clean
    # data), then the fine-tuning above
    tr, _, _, art, ev = gratings_badnets
    rep = fine_prune(art.model, tr.x, tr.y, tr.x, ratio=0.2, flip=False, evaluate=ev, **FT)
    assert rep.model.linear.in_features == 26 and rep.params["variant"] == "standard"
    # worst ASR 0.0 / 0.0 / 0.0 / 0.0; worst BA drop 0.0 / 0.0 / 0.0 / 0.0
    _assert_removed(rep, art, ev)


def test_nad_removes_badnets(gratings_badnets):
    tr, _, _, art, ev = gratings_badnets
    # the fine-tuned teacher above, then NAD's official student schedule (6 epochs, lr 1e-3)
    rep = nad(art.model, tr.x, tr.y, epochs=6, batch_size=32, flip=False, teacher_kwargs=FT, evaluate=ev)
    # worst ASR 0.0 / 0.0 / 0.0 / 0.0; worst BA drop 0.0 / 0.005 / 0.0 / 0.0
    _assert_removed(rep, art, ev)
    assert rep.params["student_init"] == "teacher"
    with pytest.raises(ValueError, match="student_init"):
        nad(art.model, tr.x, tr.y, student_init="random")


def test_anp_prunes_by_threshold_or_by_number():
    torch.manual_seed(0)
    m = SmallCNN(width=4).eval()                                # 4 + 8 + 16 = 28 BN neurons
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    by_thr = anp(m, x, y, iterations=3, batch_size=8, prune_threshold=0.9)
    masks = torch.cat([torch.tensor(v) for v in by_thr.details["masks"].values()])
    assert by_thr.details["n_pruned"] == int((masks <= 0.9).sum())
    by_num = anp(m, x, y, iterations=3, batch_size=8, prune_fraction=0.25)   # same seed, same masks
    zeroed = torch.cat([by_num.model.get_submodule(n).weight == 0 for n in by_num.details["masks"]])
    assert set(zeroed.nonzero().flatten().tolist()) == set(masks.argsort()[:7].tolist())
    assert by_num.params["iterations"] == 3 and by_num.params["batch_stats"] is True
    for bad in (dict(prune_fraction=1.0), dict(iterations=0), dict(prune_threshold=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            anp(m, x, y, **bad)


def test_official_fine_prune_rebuilds_the_last_resnet_block():
    torch.manual_seed(0)
    m = ResNet((1, 1, 1, 2)).eval()                        # layer4[1]: identity shortcut, as in ResNet18
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    rep = fine_prune(m, x, y, x, ratio=0.25, epochs=0, variant="official", seed=3)
    net, blk = rep.model, rep.model.layer4[-1]
    keep = mean_channel_activation(m, x).argsort(descending=True)[:384].sort().values
    assert blk.conv2.out_channels == 384 and net.linear.in_features == 384
    assert torch.equal(blk.conv2.weight, m.layer4[-1].conv2.weight[keep])
    assert torch.equal(net.linear.weight, m.linear.weight[:, keep])
    assert torch.equal(blk.bn2.weight, torch.ones(384))       # re-initialised
    assert isinstance(blk.shortcut[0], nn.Conv2d)             # random 1x1 conv instead of identity
    again = fine_prune(m, x, y, x, ratio=0.25, epochs=0, variant="official", seed=3).model
    assert torch.equal(again.layer4[-1].shortcut[0].weight, blk.shortcut[0].weight)
    assert net.eval()(x).shape == (4, 10)
    with pytest.raises(ValueError, match="standard"):
        fine_prune(SmallCNN(width=4), x, y, x, variant="official")
    with pytest.raises(ValueError, match="variant"):
        fine_prune(m, x, y, x, variant="rebuild")


def test_pixel_finds_the_corner_label():
    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    rep = pixel(CornerModel(), x, exclude=0, steps=150, seed=0)
    sizes = {int(k): v for k, v in rep.details["sizes"].items()}
    assert rep.details["flagged_label"] == 3
    assert sizes[3] * 3 < min(v for k, v in sizes.items() if k != 3), sizes

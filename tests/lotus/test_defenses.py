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
    balanced_subset,
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
from cvpr24.lotus.models import SmallCNN


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
    """A tiny label-specific BadNets model on SyntheticShapes (victim 0 -> target 9)."""
    torch.manual_seed(0)
    tr, te = synthetic_shapes(40, seed=0), synthetic_shapes(10, seed=1)
    cfg = LotusConfig.cpu(clean_epochs=10, steps=120, batch_size=32, min_victim=8, eval_every=None,
                          seed=0)
    clean = train_clean(SmallCNN(width=8), tr.x, tr.y, cfg)
    art = label_specific_badnets(clean, tr.x, tr.y, 0, 9, cfg)
    ev = attack_evaluator(te.x, te.y, 0, 9, art.triggers, art.partitioner)
    return tr, te, clean, art, ev


def test_badnets_fixture_is_a_working_backdoor(badnets):
    _, _, _, art, ev = badnets
    m = ev(art.model)
    assert m["asr"] >= 0.9, m


def test_nc_singles_out_the_badnets_target(badnets):
    # At this tiny scale (16x16, 8-channel CNN) every label has a small natural trigger, so the
    # absolute rule (index > 2) is checked in the reproduction; here NC must point at the target
    # and its reversed trigger must be much smaller than the clean model's for the same label.
    tr, te, clean, art, _ = badnets
    xv = te.x[te.y == 0]
    labels = [1, 3, 5, 7, 9]
    rep = neural_cleanse(art.model, xv, labels=labels, steps=80, seed=0)
    ref = neural_cleanse(clean, xv, labels=labels, steps=80, seed=0)
    assert rep.details["flagged_label"] == 9, rep.details["norms"]
    assert rep.details["norms"]["9"] < 0.5 * ref.details["norms"]["9"]


@pytest.mark.parametrize("seed", [0, 1])
def test_nc_flags_badnets_by_its_own_rule_on_gratings(seed):
    # The case where NC must succeed: full-image gratings have no small natural trigger, so a
    # plain label-specific BadNets patch (victim 0 -> target 9) is the outlier of the mask norms
    # and the published rule (anomaly index > 2) must fire on the target label.
    torch.manual_seed(seed)
    tr, te = synthetic_gratings(40, seed=seed), synthetic_gratings(20, seed=seed + 100)
    (xtr, ytr), (xte, yte) = (tr.x, tr.y), (te.x, te.y)
    cfg = LotusConfig.cpu(clean_epochs=10, steps=120, batch_size=32, min_victim=8, eval_every=None,
                          flip=False, seed=seed)
    clean = train_clean(SmallCNN(width=8), xtr, ytr, cfg)
    art = label_specific_badnets(clean, xtr, ytr, 0, 9, cfg)
    assert attack_evaluator(xte, yte, 0, 9, art.triggers, art.partitioner)(art.model)["asr"] >= 0.9
    xv = xte[yte == 0]
    rep = neural_cleanse(art.model, xv, exclude=0, steps=150, seed=seed)
    assert rep.detected and rep.score > 2, rep.details["norms"]
    assert rep.details["flagged_label"] == 9, rep.details["norms"]
    # the flag comes from the backdoor, not from a natural feature of label 9: the clean model
    # needs a mask at least twice as large for the same label
    ref = neural_cleanse(clean, xv, labels=[1, 9], steps=150, seed=seed)
    assert rep.details["norms"]["9"] * 2 < ref.details["norms"]["9"], ref.details["norms"]


def test_strip_detects_badnets(badnets):
    tr, te, _, art, _ = badnets
    xv = te.x[te.y == 0]
    rep = strip(art.model, te.x[te.y != 0][:40], art.triggers.stamp(xv, 0), tr.x, n=16, alpha=0.5)
    assert rep.score > 0.7, rep.details


@pytest.fixture(scope="module")
def defender_data(badnets):
    tr = badnets[0]
    idx = balanced_subset(tr.y, 0.25, seed=0)
    return tr.x[idx], tr.y[idx]


# A mitigation "cleans" BadNets when the ASR falls to at most 0.5 while the model keeps working.
CLEANED_ASR = 0.5


def test_fine_tune_cleans_badnets_and_keeps_input_model(badnets, defender_data):
    _, _, _, art, ev = badnets
    before = {k: v.clone() for k, v in art.model.state_dict().items()}
    rep = fine_tune(art.model, *defender_data, epochs=5, lr=0.05, batch_size=32, milestones=(3,),
                    evaluate=ev)
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, before[k]), k                 # never modified in place
    assert rep.asr <= CLEANED_ASR and rep.ba >= 0.8, (rep.asr, rep.ba)


def test_fine_prune_cleans_badnets(badnets, defender_data):
    _, te, _, art, ev = badnets
    rep = fine_prune(art.model, *defender_data, te.x, ratio=0.5, epochs=3, lr=0.02, batch_size=32,
                     evaluate=ev)
    assert rep.asr <= CLEANED_ASR and rep.ba >= 0.7, (rep.asr, rep.ba)


def test_nad_cleans_badnets(badnets, defender_data):
    _, _, _, art, ev = badnets
    rep = nad(art.model, *defender_data, epochs=2, batch_size=32,
              teacher_kwargs=dict(epochs=5, lr=0.05, batch_size=32, milestones=(3,)), evaluate=ev)
    assert rep.asr <= CLEANED_ASR and rep.ba >= 0.7, (rep.asr, rep.ba)
    assert rep.params["student_init"] == "teacher"
    with pytest.raises(ValueError, match="student_init"):
        nad(art.model, *defender_data, student_init="random")


def test_anp_cleans_badnets(badnets, defender_data):
    _, _, _, art, ev = badnets
    rep = anp(art.model, *defender_data, epochs=3, batch_size=32, evaluate=ev)
    assert rep.details["n_pruned"] > 0
    assert rep.asr <= CLEANED_ASR and rep.ba >= 0.5, (rep.asr, rep.ba)
    none = anp(art.model, *defender_data, epochs=1, batch_size=32, prune_threshold=-0.0, evaluate=ev)
    # threshold 0 prunes only masks driven exactly to 0: far fewer neurons
    assert none.details["n_pruned"] < rep.details["n_pruned"]


def test_pixel_finds_the_corner_label():
    x = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    rep = pixel(CornerModel(), x, exclude=0, steps=150, seed=0)
    sizes = {int(k): v for k, v in rep.details["sizes"].items()}
    assert rep.details["flagged_label"] == 3
    assert sizes[3] * 3 < min(v for k, v in sizes.items() if k != 3), sizes

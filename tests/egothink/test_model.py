import pytest
import torch

from cvpr24.egothink.model import (
    SlotLoss,
    TinyVLM,
    TinyVLMConfig,
    count_parameters,
    expected_ttp,
    slot_loss,
    train_blind,
)
from cvpr24.egothink.reproduce import mirror_targets
from cvpr24.egothink.synth import HEADS


@pytest.mark.parametrize("variant, width", [("head", 1), ("adapter", 1), ("full", 1), ("big", 4)])
def test_trainable_counts_match_closed_form(variant, width):
    m = TinyVLM(TinyVLMConfig(width=width)).set_variant(variant)
    assert count_parameters(m, trainable_only=True) == expected_ttp(m.config, variant)


def test_top_and_ttp_relations():
    v0 = TinyVLM(TinyVLMConfig()).set_variant("head")
    v3 = TinyVLM(TinyVLMConfig(width=4)).set_variant("big")
    assert count_parameters(v3, True) == count_parameters(v0, True)
    assert 4.0 <= count_parameters(v3) / count_parameters(v0) <= 5.0
    v2 = TinyVLM(TinyVLMConfig()).set_variant("full")
    assert count_parameters(v2) == count_parameters(v0) == count_parameters(v2, True)
    with pytest.raises(ValueError, match="variant"):
        v2.set_variant("lora")


def test_output_shapes_and_spatial_layout():
    m = TinyVLM(TinyVLMConfig())
    out = m(torch.rand(5, 3, 48, 48), torch.randint(0, 256, (5, 7)), torch.arange(5))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (5, n) for k, n in HEADS.items()}
    assert m.encoder(torch.rand(2, 3, 48, 48)).shape == (2, 288)  # 32 x 3 x 3, layout kept
    # mirroring the image changes the flattened features (left and right are distinguishable)
    x = torch.rand(1, 3, 48, 48)
    assert not torch.allclose(m.encoder(x), m.encoder(x.flip(-1)))


def test_gradcheck_fusion_and_heads():
    torch.manual_seed(0)
    m = TinyVLM(TinyVLMConfig(hidden=8, heads={"side": 2, "count": 3})).double()
    feats = torch.rand(3, 288 + 48, dtype=torch.float64, requires_grad=True)

    def f(x):
        out = m.classify(m.fusion(x))
        return torch.cat([out["side"], out["count"]], dim=1)

    assert torch.autograd.gradcheck(f, (feats,))


def test_slot_loss_masks_inactive_slots():
    names = ["a", "b"]
    logits = {"a": torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "b": torch.tensor([[0.0, 5.0], [1.0, 1.0]])}
    targets = torch.tensor([[0, -1], [1, 0]])
    per = slot_loss(logits, targets, names, reduction="none")
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(per[0], ce(logits["a"][:1], torch.tensor([0])))
    assert torch.allclose(per[1], ce(logits["a"][1:], torch.tensor([1])) + ce(logits["b"][1:], torch.tensor([0])))
    assert torch.allclose(SlotLoss(names)(logits, targets), per.mean())
    assert torch.allclose(slot_loss(logits, targets, names, "sum"), per.sum())
    with pytest.raises(ValueError, match="reduction"):
        slot_loss(logits, targets, names, "max")


def test_mirror_targets_swaps_left_right_only():
    names = list(HEADS)
    t = torch.full((3, len(names)), -1)
    t[0, names.index("side")] = 0
    t[1, names.index("turn")] = 2  # "end of the corridor" stays
    t[2, names.index("turn")] = 1
    t[2, names.index("count")] = 1
    m = mirror_targets(t)
    assert m[0, names.index("side")] == 1 and m[1, names.index("turn")] == 2 and m[2, names.index("turn")] == 0
    assert m[2, names.index("count")] == 1 and (m[t == -1] == -1).all()


def test_blind_training_equals_training_on_blank_images():
    from cvpr24.egothink.model import TrainConfig, train_variant

    torch.manual_seed(0)
    tokens, dims = torch.randint(1, 50, (16, 5)), torch.randint(0, 12, (16,))
    targets = torch.full((16, len(HEADS)), -1)
    targets[:, 0] = torch.randint(0, 8, (16,))
    cfg, train = TinyVLMConfig(), TrainConfig(epochs=1, batch_size=8)
    torch.manual_seed(1)
    a = train_blind(TinyVLM(cfg), tokens, dims, targets, train, 0, (3, 48, 48))
    torch.manual_seed(1)
    b = train_variant(TinyVLM(cfg), "full", torch.zeros(16, 3, 48, 48), tokens, dims, targets, train, 0)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), k

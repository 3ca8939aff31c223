"""The tiny ELITE-like model, ShapesWorld and the probes (spec 6.7, 6.8)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cvpr24.sag import SAGSchedule
from cvpr24.sag.shapes import (
    ALL_SUBJECTS,
    BACKGROUNDS,
    background_of,
    render_subjects,
    training_batch,
)
from cvpr24.sag.tiny import ShapesELITE, TinyConfig, null_tokens, sample_sag
from cvpr24.sag.train import (
    DEFAULT_CHECKPOINT,
    fit_placeholder_embedding,
    load_tiny,
    pretrain_backbone,
    probe_accuracy,
    save_tiny,
    train_model,
)


def test_generator_is_deterministic():
    a = training_batch(16, torch.Generator().manual_seed(3))
    b = training_batch(16, torch.Generator().manual_seed(3))
    c = training_batch(16, torch.Generator().manual_seed(4))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["image"], c["image"])


def test_reconstruction_leak_reference_shares_object_and_background():
    b = training_batch(64, torch.Generator().manual_seed(0))
    assert torch.equal(background_of(b["image"]), background_of(b["ref"]))
    subject_rows = b["use_subject"]
    assert subject_rows.any() and (~subject_rows).any()
    assert (b["tokens"][subject_rows, :2] == 0).all()  # [S*, null, bg-or-null]


def test_background_probe_is_exact_on_clean_renders():
    g = torch.Generator().manual_seed(0)
    subjects = list(ALL_SUBJECTS) * len(BACKGROUNDS)
    bgs = torch.arange(len(BACKGROUNDS)).repeat_interleave(len(ALL_SUBJECTS))
    assert torch.equal(background_of(render_subjects(subjects, bgs, g)), bgs)


def test_committed_probe_reads_clean_renders():
    model, probe, meta = load_tiny(DEFAULT_CHECKPOINT)
    assert probe_accuracy(probe, model.config.image_size, seed=12345, n=512) >= 0.99
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2**20


def test_training_reduces_the_loss():
    cfg = dataclasses.replace(TinyConfig.tiny(), steps=100, batch_size=8)
    _, metrics = train_model(cfg, seed=0, show_progress=False)
    assert metrics["loss_final"] < 0.6 * metrics["loss_initial"]


def test_encoder_backbone_is_pretrained_then_frozen():
    cfg = dataclasses.replace(TinyConfig.tiny(), steps=5, backbone_steps=5)
    torch.manual_seed(0)
    pretrained = ShapesELITE(cfg)
    mse = pretrain_backbone(pretrained, cfg, seed=0)
    model, metrics = train_model(cfg, seed=0, show_progress=False)
    assert metrics["backbone_mse"] == mse
    for (k, a), b in zip(pretrained.encoder.backbone.state_dict().items(),
                         model.encoder.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not torch.equal(pretrained.encoder.mlp[0].weight, model.encoder.mlp[0].weight)  # the mapping trains


def test_warm_start_begins_from_the_init_checkpoint(tmp_path):
    from cvpr24.sag.tiny import ProbeClassifier

    cfg = dataclasses.replace(TinyConfig.tiny(), steps=1, backbone_steps=2)
    torch.manual_seed(5)
    start = ShapesELITE(cfg)
    path = save_tiny(tmp_path / "init.safetensors", start, ProbeClassifier(), seed=5, metrics={})
    warm, _ = train_model(cfg, seed=0, init=path, show_progress=False)
    cold, _ = train_model(cfg, seed=0, show_progress=False)
    w0 = start.unet.conv_in.weight.half().float()  # as stored
    # One step at OneCycle's first rate (lr / 25) moves a weight by about 1e-4.
    assert (warm.unet.conv_in.weight - w0).abs().max() < 1e-3 < (cold.unet.conv_in.weight - w0).abs().max()
    other = dataclasses.replace(cfg, channels=(16, 16, 16))
    with pytest.raises(ValueError, match="architecture"):
        train_model(other, seed=0, init=path, show_progress=False)


class _Interrupted(Exception):
    pass


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    import cvpr24.sag.train as train_mod

    cfg = dataclasses.replace(TinyConfig.tiny(), steps=6)
    uninterrupted, _ = train_model(cfg, seed=1, show_progress=False)
    real_save = train_mod.save_training_state

    def save_then_crash(*args, **kwargs):  # the process dies right after the step-3 state is written
        real_save(*args, **kwargs)
        raise _Interrupted
    monkeypatch.setattr(train_mod, "save_training_state", save_then_crash)
    state = tmp_path / "state.pt"
    with pytest.raises(_Interrupted):
        train_model(cfg, seed=1, state_path=state, save_every=3, show_progress=False)
    monkeypatch.setattr(train_mod, "save_training_state", real_save)
    assert torch.load(state, weights_only=True)["step"] == 3
    resumed, _ = train_model(cfg, seed=1, state_path=state, resume=True, save_every=3, show_progress=False)
    for (k, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_round_trip_is_float16_exact(tmp_path):
    cfg = TinyConfig.tiny()
    torch.manual_seed(0)
    model = ShapesELITE(cfg)
    from cvpr24.sag.tiny import ProbeClassifier
    probe = ProbeClassifier()
    path = save_tiny(tmp_path / "m.safetensors", model, probe, seed=0, metrics={"x": 1.0})
    model2, probe2, meta = load_tiny(path)
    assert model2.config == cfg and meta["metrics"] == {"x": 1.0}
    assert all(v["dtype"] in ("float16", "int64") for v in meta["tensors"].values())
    for net, net2 in ((model, model2), (probe, probe2)):
        for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values(), strict=True):
            expected = a.half().float() if a.is_floating_point() else a  # stored in float16, loaded as float32
            assert b.dtype == a.dtype and torch.equal(b, expected), k


def test_textual_inversion_changes_only_the_placeholder_row():
    torch.manual_seed(0)
    model = ShapesELITE(TinyConfig.tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = render_subjects([ALL_SUBJECTS[5]] * 4, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    fit_placeholder_embedding(model, images, placeholder=3, steps=3)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["words.weight"]
    diff = (after["words.weight"] != before["words.weight"]).any(1)
    assert diff.nonzero().flatten().tolist() == [3]


def _contexts(model, n):
    g = torch.Generator().manual_seed(0)
    null = model.context(null_tokens(n))  # (n, L, D)
    return torch.randn(null.shape, generator=g), torch.randn(null.shape, generator=g), null


def test_sampler_nfe_accounting():
    torch.manual_seed(0)
    model = ShapesELITE(TinyConfig.tiny()).eval()
    c, c0, null = _contexts(model, 2)
    steps = 10
    counter = [0]
    sample_sag(model, c, c0, null, SAGSchedule(T=0.6, r=0.0), steps=steps, generator=torch.Generator(), counter=counter)
    assert counter[0] == 2 * steps * 2
    counter = [0]
    sample_sag(model, c, c0, null, SAGSchedule(T=0.6, r=0.5), steps=steps, generator=torch.Generator(), counter=counter)
    late = sum(1 - i / steps <= 0.6 for i in range(steps))
    assert counter[0] == (2 * steps + late) * 2


def test_sampler_T0_is_cfg_on_the_agnostic_condition():
    torch.manual_seed(0)
    model = ShapesELITE(TinyConfig.tiny()).eval()
    c, c0, null = _contexts(model, 3)
    noise = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = sample_sag(model, c, c0, null, SAGSchedule(T=0.0), steps=6, noise=noise)
    b = sample_sag(model, c0, c, null, SAGSchedule(T=1.0), steps=6, noise=noise)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    d = sample_sag(model, c, c0, null, SAGSchedule(T=1.0), steps=6, noise=noise)
    assert (a - d).abs().max() > 1e-4


def test_sampler_reports_each_steps_clean_prediction():
    torch.manual_seed(0)
    model = ShapesELITE(TinyConfig.tiny()).eval()
    c, c0, null = _contexts(model, 2)
    seen = []
    out = sample_sag(model, c, c0, null, SAGSchedule(T=0.5), steps=4, generator=torch.Generator(),
                     on_step=lambda i, t, x0: seen.append((i, t, x0)))
    assert [(i, t) for i, t, _ in seen] == [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25)]
    # The last step lands on its x0_hat (up to alpha_bar(0) ~ 1), unlike the first step's guess.
    assert (seen[-1][2] - out).abs().max() < 0.01 < (seen[0][2] - out).abs().max()


def test_settle_time_is_the_first_step_that_stays_decided():
    from cvpr24.sag.testbed import settle_time

    ts = [1.0, 0.75, 0.5, 0.25]
    assert settle_time(ts, [0.95, 0.5, 0.92, 1.0]) == 0.5  # an early agreement that is lost again does not count
    assert settle_time(ts, [0.9, 0.9, 0.9, 1.0]) == 1.0
    assert settle_time(ts, [0.1, 0.2, 0.3, 0.5]) == 0.0


def test_subject_tokens_fill_the_noun_and_local_slots_only_on_subject_rows():
    torch.manual_seed(0)
    model = ShapesELITE(dataclasses.replace(TinyConfig.tiny(), local_tokens=16)).eval()
    k = 16
    refs = render_subjects([ALL_SUBJECTS[3], ALL_SUBJECTS[40]], torch.tensor([0, 2]), torch.Generator().manual_seed(1))
    subject = model.encoder(refs)
    assert subject.shape == (2, 1 + k, model.config.context_dim)
    tokens = torch.tensor([[0, 0, 9], [0, 0, 9]])
    ctx = model.context(tokens, subject, use_subject=torch.tensor([True, False]))
    words = model.context(tokens)  # no reference: the local slots hold the null word, as in c0 and phi
    assert ctx.shape == words.shape == (2, 3 + k, model.config.context_dim)
    torch.testing.assert_close(ctx[0, 1], subject[0, 0] + model.slots[1])
    torch.testing.assert_close(ctx[0, 3:], subject[0, 1:] + model.slots[3:])
    torch.testing.assert_close(ctx[0, [0, 2]], words[0, [0, 2]])
    torch.testing.assert_close(ctx[1], words[1])
    torch.testing.assert_close(words[0, 3:], model.words.weight[0] + model.slots[3:])

"""Training (resumable, every objective), the sklearn wrapper, the CLI and the tiny
reproduction smoke run."""

import json

import numpy as np
import pytest
import torch

from cvpr24.cli import main
from cvpr24.gfars.data import procedural_mixes
from cvpr24.gfars.io import load_model, save_model
from cvpr24.gfars.model import GFARS, GFARSConfig
from cvpr24.gfars.sklearn import PartGrouper
from cvpr24.gfars.train import METHODS, build_method, train

TINY = GFARSConfig.cpu(feat_len=8, pointnet_widths=(8, 8), points_per_part=16, steps=2,
                       max_iters=2, batch_size=3)


def test_resumed_training_equals_one_run(tmp_path):
    a = GFARS(TINY)
    b = GFARS(TINY)
    b.load_state_dict(a.state_dict())
    train(a, 4, seed=1)
    train(b, 2, seed=1, state_path=tmp_path / "s.pt", save_every=2)
    b2 = GFARS(TINY)
    train(b2, 4, seed=1, state_path=tmp_path / "s.pt")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b2.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_objective_trains(method):
    model = build_method(method, TINY)
    curve = train(model, 2, seed=0, log_every=1)
    assert len(curve) == 2 and all(np.isfinite(c[1]) for c in curve)


def test_part_grouper_fit_predict():
    sets = procedural_mixes(3, 0, n_points=16)
    g = PartGrouper(TINY, steps=2, sampling_steps=2)
    g.fit([s.parts for s in sets], [s.groups for s in sets])
    labels = g.fit_predict(sets[0].parts)
    assert labels.shape == (len(sets[0]),) and labels is g.labels_
    again = PartGrouper(TINY, steps=2, sampling_steps=2)  # same random_state, same weights
    again.fit([s.parts for s in sets], [s.groups for s in sets])
    for k, v in g.model_.state_dict().items():
        torch.testing.assert_close(again.model_.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"y\[0\]"):
        PartGrouper(TINY, steps=1).fit([sets[0].parts], [sets[0].groups[:-1]])
    with pytest.raises(AttributeError, match="not fitted"):
        PartGrouper(TINY).fit_predict(sets[0].parts)


def test_cli_synth_group_eval_convert(tmp_path, capsys):
    from cvpr24.gfars.io import to_official_state_dict

    assert main(["gfars", "synth", "--n", "2", "--points", "16", "--out", str(tmp_path / "d")]) == 0
    model = GFARS(TINY)
    save_model(tmp_path / "m.safetensors", model, seed=0)
    mix = sorted((tmp_path / "d").glob("*.npz"))[0]
    out = tmp_path / "g.json"
    assert main(["gfars", "group", "--parts", str(mix), "--checkpoint",
                 str(tmp_path / "m.safetensors"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"groups", "unassigned"} and out.with_suffix(".png").is_file()
    assert main(["gfars", "eval", "--data", str(tmp_path / "d"), "--checkpoint",
                 str(tmp_path / "m.safetensors"), "--metric", "official"]) == 0
    torch.save(to_official_state_dict(model), tmp_path / "o.pth")
    with pytest.raises(KeyError):  # a width-8 official file needs its PointNet widths
        load_model(tmp_path / "o.pth")
    capsys.readouterr()
    assert main(["gfars", "group", "--parts", str(tmp_path / "nope.npz"), "--checkpoint",
                 str(tmp_path / "m.safetensors"), "--out", str(out)]) == 2
    assert "--parts" in capsys.readouterr().err
    assert main(["gfars", "convert-checkpoint", str(tmp_path / "o.pth"),
                 str(tmp_path / "x.bin")]) == 2
    assert "dst" in capsys.readouterr().err


def test_cli_rejects_bad_numbers():
    with pytest.raises(SystemExit) as e:
        main(["gfars", "synth", "--n", "0", "--out", "x"])
    assert e.value.code == 2


def test_reproduce_tiny_smoke_and_resume(tmp_path, monkeypatch):
    # "tiny" is the --full code path at a tiny budget: every method is trained into
    # OUT/checkpoints and evaluated. A rerun after an interruption (one checkpoint lost,
    # its training state left) retrains nothing else and re-evaluates nothing.
    from cvpr24.gfars import reproduce

    result = reproduce.run(tmp_path, size="tiny")
    names = {c.name[0] for c in result.claims}
    assert names == {c[0] for c in reproduce.CLAIMS}
    assert len(result.claims) == len(reproduce.VARIANTS) * len(reproduce.CLAIMS)
    assert all((tmp_path / f).is_file() for f in result.figures)
    ck = tmp_path / "checkpoints"
    weights = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in ck.glob("*.safetensors")}
    assert set(weights) == {f"{m}_seed0.safetensors" for m in reproduce.STEPS}
    (ck / "gfars_seed0.safetensors").unlink()

    def fail(method, *args, **kwargs):
        raise AssertionError(f"{method} evaluated again")

    monkeypatch.setattr(reproduce, "evaluate_method", fail)
    again = reproduce.run(tmp_path, size="tiny")
    assert [c.status for c in again.claims] == [c.status for c in result.claims]
    for name, (data, mtime) in weights.items():
        path = ck / name
        assert path.read_bytes() == data
        assert name == "gfars_seed0.safetensors" or path.stat().st_mtime_ns == mtime


def test_full_long_run_continues_its_checkpoint_and_resumes_exactly(tmp_path, monkeypatch):
    # --full's long faithful run continues the 600-step checkpoint of the faithful model.
    # Killed after a state save, a rerun resumes it to the same weights as one unbroken run.
    from cvpr24.common.checkpoint import load_checkpoint
    from cvpr24.gfars import reproduce

    long, short = "gfars_long", reproduce.CONTINUES["gfars_long"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    for d in (ref, cut):
        reproduce.trained_method(short, 0, d, 3, reproduce.TINY)
    want = reproduce.trained_method(long, 0, ref, 6, reproduce.TINY).state_dict()
    real_train = reproduce.train

    def killed(model, steps, **kwargs):
        assert kwargs["first_step"] == 3  # the warm start's recorded step count
        real_train(model, 5, **kwargs)  # writes its state at its last step, then dies
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce.trained_method(long, 0, cut, 6, reproduce.TINY)
    assert not (cut / f"{long}_seed0.safetensors").exists()
    monkeypatch.setattr(reproduce, "train", real_train)
    got = reproduce.trained_method(long, 0, cut, 6, reproduce.TINY).state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    start = reproduce.load_method(short, 0, cut, reproduce.TINY).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in want.items())  # it did train on
    meta = load_checkpoint(cut / f"{long}_seed0.safetensors").meta
    assert meta["metrics"]["steps"] == 6 and meta["method"] == short

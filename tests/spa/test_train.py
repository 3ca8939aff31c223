"""Training: checkpoints carry the link, resume is exact, DDP (2 gloo processes) equals one
process, the estimator behaves like a scikit-learn estimator, decisions, CLI, reproduction."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from cvpr24.cli import main
from cvpr24.common import global_state
from cvpr24.spa import (
    SPAMultiLabelClassifier,
    cost_sensitive_predict,
    expected_cost_threshold,
    retrieve,
)
from cvpr24.spa.data import make_teacher_multilabel, save_features
from cvpr24.spa.model import SPAConfig, build_model
from cvpr24.spa.train import as_tensors, load_model, predict_logits, save_model, train


def _tiny(n=64, seed=0):
    d = make_teacher_multilabel(seed, n, d=4, num_classes=5, hidden=8)
    return d.x, d.y


def _cfg(**kw):
    return SPAConfig.cpu(**{"in_features": 4, "num_classes": 5, "hidden": (8,), "batch_size": 16, "epochs": 3,
                            **kw})


def test_checkpoint_round_trip_carries_the_loss(tmp_path):
    x, y = _tiny()
    cfg = _cfg(zeta_neg=4.0, k_neg=2.0)
    r = train(cfg, as_tensors(x, y))
    path = save_model(tmp_path / "m.safetensors", r.model, cfg, r.loss, class_names=list("abcde"))
    model, loss, cfg2, meta = load_model(path)
    assert cfg2 == cfg and meta["class_names"] == list("abcde")
    xt = torch.from_numpy(x)
    torch.testing.assert_close(loss.predict_proba(predict_logits(model, xt)),
                               r.loss.predict_proba(predict_logits(r.model, xt)), rtol=0, atol=0)
    sidecar = tmp_path / "m.json"
    meta = json.loads(sidecar.read_text())
    del meta["loss"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no 'loss' config"):
        load_model(path)


def test_resume_continues_exactly(tmp_path):
    x, y = _tiny()
    straight = train(_cfg(epochs=4), as_tensors(x, y))
    train(_cfg(epochs=2, checkpoint_every=1), as_tensors(x, y), out_dir=tmp_path)
    resumed = train(_cfg(epochs=4, checkpoint_every=1), as_tensors(x, y), out_dir=tmp_path, resume=True)
    assert len(resumed.history) == 4
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_same_seed_same_model_and_training_reduces_the_loss():
    x, y = _tiny()
    a, b = train(_cfg(seed=5), as_tensors(x, y)), train(_cfg(seed=5), as_tensors(x, y))
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    long = train(_cfg(epochs=30), as_tensors(x, y))
    assert long.history[-1]["loss"] < 0.8 * long.history[0]["loss"]


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    x, y = _tiny(n=64)
    save_features(tmp_path / "f.npz", x, y)
    common = ["--features", str(tmp_path / "f.npz"), "--hidden", "8", "--epochs", "2", "--batch-size", "16",
              "--loss", "spa", "--lpr", "1.0", "--seed", "3"]
    assert main(["spa", "train", *common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cvpr24", "spa", "train", *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    one, _, _, _ = load_model(tmp_path / "one" / "model.safetensors")
    two, _, _, _ = load_model(tmp_path / "two" / "model.safetensors")
    for (k, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"parameter {k} differs")
    # and a different run would not match: the comparison can fail
    other = build_model(_cfg(hidden=(8,)))
    assert not torch.allclose(other.head.weight, one.head.weight, atol=1e-3)


def test_estimator_fit_predict_and_params():
    x, y = _tiny(n=200, seed=1)
    clf = SPAMultiLabelClassifier(hidden_layer_sizes=(8,), epochs=3, batch_size=32, random_state=0)
    with pytest.raises(NotFittedError):
        clf.predict(x)
    clf.fit(x, y)
    p = clf.predict_proba(x)
    assert p.shape == (200, 5) and (p > 0).all() and (p < 1).all()
    np.testing.assert_array_equal(clf.predict(x), (p > 0.5).astype(int))
    np.testing.assert_allclose(p, clf.loss_.predict_proba(torch.from_numpy(clf.decision_function(x)).double()).numpy())
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    np.testing.assert_allclose(twin.fit(x, y).predict_proba(x), p)
    with pytest.raises(ValueError, match="loss must be"):
        SPAMultiLabelClassifier(loss="hinge").fit(x, y)
    with pytest.raises(ValueError, match="Y must hold 0 or 1"):
        SPAMultiLabelClassifier(epochs=1).fit(x, y * 3)
    with pytest.raises(ValueError, match="features"):
        clf.predict_proba(x[:, :2])


def test_decisions_use_calibrated_probabilities():
    assert expected_cost_threshold(1, 4) == 0.2
    p = np.array([[0.9, 0.1], [0.6, 0.7], [0.2, 0.05], [0.95, 0.9]])
    np.testing.assert_array_equal(cost_sensitive_predict(p, 1, 4), (p > 0.2).astype(int))
    hits = retrieve(p, include=[0], exclude=[1], top_k=2)
    np.testing.assert_array_equal(hits.indices, [0, 2])
    np.testing.assert_allclose(hits.scores, [0.9 * 0.9, 0.2 * 0.95])
    with pytest.raises(ValueError, match="both included and excluded"):
        retrieve(p, include=[0], exclude=[0])
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        retrieve(p, include=[5])


def test_cli_commands(tmp_path, capsys):
    assert main(["spa", "minimizers", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0.05" in out and (tmp_path / "minimizers.png").is_file()
    x, y = _tiny(n=96)
    save_features(tmp_path / "f.npz", x, y, list("abcde"))
    assert main(["spa", "train", "--features", str(tmp_path / "f.npz"), "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    preds = tmp_path / "preds.npz"
    assert main(["spa", "eval", "--model", str(tmp_path / "run" / "model.safetensors"), "--features",
                 str(tmp_path / "f.npz"), "--save-predictions", str(preds), "--json", str(tmp_path / "m.json"),
                 "--plot", str(tmp_path / "rel.png")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= report["ece"] <= 1 and (tmp_path / "rel.png").is_file()
    capsys.readouterr()
    assert main(["spa", "eval", str(preds)]) == 0
    assert f"{report['ece']:.4f}" in capsys.readouterr().out
    assert main(["spa", "retrieve", str(preds), "--include", "a", "--exclude", "b", "--top-k", "3"]) == 0
    assert capsys.readouterr().out.count("P(query)") == 3
    assert main(["spa", "retrieve", str(preds), "--include", "zebra"]) == 2
    assert "unknown class 'zebra'" in capsys.readouterr().err
    assert main(["spa", "eval", str(tmp_path / "missing.npz")]) == 2


def test_reproduction_smoke(tmp_path, capsys):
    from cvpr24.spa.reproduce import run

    before = global_state()
    t0 = time.process_time()  # CPU time (one thread, no workers): wall time depends on the load
    result = run(tmp_path, size="tiny", workers=1)
    assert global_state() == before  # run() sets one thread and seeds torch, then restores
    assert time.process_time() - t0 < 60
    assert [c.name for c in result.claims] == ["A", "B", "B2", "C"]
    log = capsys.readouterr().out
    assert "[1/5] BCE seed 0 N=500" in log and "claim B2 " in log  # progress as it runs
    assert "SPA+LPR" in result.claims[2].comparison and "mAP" in result.claims[2].comparison
    assert result.claims[0].passed  # properness needs no training: it must hold at any size
    assert all((tmp_path / f).is_file() for f in result.figures)
    assert (tmp_path / "summary.md").read_text().count("| SPA+LPR |") == 2


def test_validation_and_ema_selection_run():
    x, y = _tiny(n=96)
    xv, yv = _tiny(n=64, seed=9)
    r = train(_cfg(ema_decay=0.9), as_tensors(x, y), val_data=as_tensors(xv, yv))
    assert all(0 <= h["val_map"] <= 1 and 0 <= h["val_map_ema"] <= 1 for h in r.history)


def test_posthoc_isotonic_reference_recalibrates_asl():
    from cvpr24.spa.reproduce import train_and_evaluate

    row = train_and_evaluate("ASL", 400, 2, 0, 2000, posthoc=True)
    assert row["posthoc"]["ece"] < 0.5 * row["ece"]  # ASL's map is monotone: isotonic repairs it


def test_digits_claim_runs_at_a_tiny_size():
    from cvpr24.spa.reproduce import claim_digits, train_on_digits

    rows = [train_on_digits(arm, 0, n_train=200, n_test=200, epochs=1) for arm in ("BCE", "ASL", "SPA")]
    claim = claim_digits(rows)
    assert claim.name == "D" and claim.status in ("passed", "failed") and "ECE SPA" in claim.comparison


def test_resnet_matches_torchvision_layout_and_loads_its_weights(tmp_path):
    from cvpr24.spa.model import ResNet, load_torchvision_resnet

    r50 = ResNet((3, 4, 6, 3))
    # torchvision's resnet50 has 25 557 032 parameters, 2 049 000 of them in fc (2048 x 1000 + 1000)
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2_049_000
    keys = set(r50.state_dict())
    assert {"conv1.weight", "bn1.num_batches_tracked", "layer1.0.downsample.1.running_mean",
            "layer4.2.conv3.weight"} <= keys
    small, other = ResNet((1, 1, 1, 1), width=8), ResNet((1, 1, 1, 1), width=8)
    state = {**small.state_dict(), "fc.weight": torch.zeros(10, 256), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "tv.pth")
    load_torchvision_resnet(other, tmp_path / "tv.pth")
    torch.testing.assert_close(other.state_dict()["layer2.0.conv2.weight"], small.state_dict()["layer2.0.conv2.weight"])
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit this ResNet"):
        load_torchvision_resnet(other, tmp_path / "bad.pth")
    torch.save({"conv1.weight": small.state_dict()["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_torchvision_resnet(other, tmp_path / "partial.pth")


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_image_training_through_the_cli(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'cat dog' if i % 2 else 'dog'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    # oneDNN builds a primitive per new conv shape (seconds on CPU); the plain kernels are
    # instant at this size
    with torch.backends.mkldnn.flags(enabled=False):
        assert main(["spa", "train", "--csv", str(tmp_path / "labels.csv"), "--arch", "resnet50",
                     "--preset", "cpu", "--width", "8", "--image-size", "32", "--epochs", "1",
                     "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    model, loss, cfg, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert cfg.arch == "resnet50" and meta["class_names"] == ["cat", "dog"]
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_tuned_thresholds_maximise_f1_by_brute_force():
    from cvpr24.spa.decision import tune_thresholds

    rng = np.random.default_rng(0)
    p = np.round(rng.uniform(size=(60, 3)), 2)
    y = (rng.uniform(size=p.shape) < p).astype(float)
    y[:, 2] = 0.0
    t = tune_thresholds(p, y)
    for c in range(2):
        s, lab = p[:, c], y[:, c]

        def f1(th, s=s, lab=lab):
            return 2 * ((s >= th) & (lab == 1)).sum() / ((s >= th).sum() + lab.sum())

        assert f1(t[c]) == pytest.approx(max(f1(th) for th in np.unique(s)))
    assert t[2] == 0.5


def test_reproduction_leaves_a_labelled_partial_result_when_stopped(tmp_path, monkeypatch):
    from cvpr24.common import Result
    from cvpr24.spa import reproduce

    def stopped(*args):
        raise KeyboardInterrupt  # what a budget stop looks like from inside: training never ends

    monkeypatch.setattr(reproduce, "train_and_evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run(tmp_path, size="tiny", workers=1)
    partial = Result.load(tmp_path / "partial.json")
    assert partial.partial
    assert [(c.name, c.status) for c in partial.claims] == [
        ("A", "passed"), ("B", "not tested"), ("B2", "not tested"), ("C", "not tested")]
    assert "partial result: the run stopped after claim A" in partial.claims[1].notes

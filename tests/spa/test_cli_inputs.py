"""``cvpr24 spa`` on a user's own files: image models evaluated and applied from the command
line, every loss setting exposed and range-checked, every bad file refused in one line."""

import json

import numpy as np
import pytest
import torch

from cvpr24.cli import main
from cvpr24.spa import SPALoss, retrieve
from cvpr24.spa.cli import default_workers
from cvpr24.spa.data import load_features, save_features
from cvpr24.spa.train import load_model


def _tiny(n=64, seed=0):
    from cvpr24.spa.data import make_teacher_multilabel

    d = make_teacher_multilabel(seed, n, d=4, num_classes=5, hidden=8)
    return d.x, d.y


def _refused(capsys, *argv) -> str:
    try:
        rc = main(["spa", *argv])
    except SystemExit as e:  # argparse: a bad flag value
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.strip().count("\n") <= 1, err
    return err


@pytest.fixture
def images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, bare = ["path,labels"], ["path"]
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'cat dog' if i % 2 else 'dog'}")
        bare.append(f"{i}.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "unlabelled.csv").write_text("\n".join(bare) + "\n")
    return tmp_path


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_image_model_trains_with_validation_then_evaluates_and_predicts(images, capsys):
    tmp = images
    csv = str(tmp / "labels.csv")
    with torch.backends.mkldnn.flags(enabled=False):  # per-shape oneDNN primitives cost seconds
        assert main(["spa", "train", "--csv", csv, "--val-csv", csv, "--arch", "resnet50",
                     "--preset", "full", "--width", "8", "--image-size", "32", "--epochs", "1",
                     "--batch-size", "2", "--workers", "0", "--zeta-neg", "4", "--lpr-norm", "pairs",
                     "--out", str(tmp / "run")]) == 0
        model_path = str(tmp / "run" / "model.safetensors")
        _, loss, cfg, meta = load_model(model_path)
        assert cfg.ema_decay > 0 and {"val_map", "val_map_ema"} <= set(meta["metrics"])  # EMA was compared
        assert loss.config()["base"]["zeta_neg"] == 4.0 and loss.config()["norm"] == "pairs"
        capsys.readouterr()
        assert main(["spa", "eval", "--model", model_path, "--csv", csv, "--workers", "0",
                     "--json", str(tmp / "m.json")]) == 0
        assert 0 <= json.loads((tmp / "m.json").read_text())["ece"] <= 1
        coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in range(4)],
                "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                "annotations": [{"id": 10 + i, "image_id": i, "category_id": 2} for i in range(4)]
                + [{"id": 20, "image_id": 1, "category_id": 1}]}
        (tmp / "instances.json").write_text(json.dumps(coco))
        assert main(["spa", "eval", "--model", model_path, "--coco", str(tmp / "instances.json"),
                     "--workers", "0"]) == 0
        assert main(["spa", "predict", "--model", model_path, "--csv", str(tmp / "unlabelled.csv"),
                     "--workers", "0", "--out", str(tmp / "p.csv")]) == 0
        lines = (tmp / "p.csv").read_text().splitlines()
        assert lines[0] == "id,cat,dog" and len(lines) == 5
        assert main(["spa", "predict", "--model", model_path, "--csv", csv, "--workers", "0",
                     "--out", str(tmp / "p.npz")]) == 0
    assert main(["spa", "retrieve", str(tmp / "p.npz"), "--include", "cat", "--top-k", "2"]) == 0
    x, y = _tiny(n=4)
    save_features(tmp / "f.npz", x, y[:, :2], ["cat", "dog"])
    assert "trained on images" in _refused(capsys, "eval", "--model", model_path, "--features",
                                           str(tmp / "f.npz"))
    (tmp / "gone.csv").write_text("path,labels\nnowhere.png,dog\n")
    assert "1 of 1 images are missing" in _refused(capsys, "eval", "--model", model_path, "--csv",
                                                   str(tmp / "gone.csv"))


def test_loss_settings_are_range_checked_at_the_flag(tmp_path, capsys):
    x, y = _tiny()
    save_features(tmp_path / "f.npz", x, y)
    base = ["train", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "run")]
    for flag, value in (("--lpr", "-1"), ("--zeta-pos", "0"), ("--k-neg", "-2"), ("--asl-clip", "1"),
                        ("--focal-gamma", "-0.5"), ("--workers", "-1"), ("--b-neg", "nan"),
                        ("--lpr-score", "logit")):
        assert flag in _refused(capsys, *base, flag, value)
    assert not (tmp_path / "run").exists()
    assert 0 <= default_workers() <= 8


def test_file_errors_name_the_file_and_what_was_expected(tmp_path, capsys):
    x, y = _tiny()
    np.savez(tmp_path / "flat.npz", features=x, labels=y[:, 0])
    with pytest.raises(ValueError, match=r"flat.npz: 'labels' must be a 2-D array"):
        load_features(tmp_path / "flat.npz")
    bad = x.copy()
    bad[3, 1] = np.nan
    save_features(tmp_path / "nan.npz", bad, y)
    with pytest.raises(ValueError, match=r"nan.npz: 'features' holds NaN .*\(rows \[3\]\)"):
        load_features(tmp_path / "nan.npz")
    (tmp_path / "text.npz").write_text("features,labels\n1,0\n")
    with pytest.raises(ValueError, match=r"text.npz: not a NumPy .npz archive"):
        load_features(tmp_path / "text.npz")
    save_features(tmp_path / "f.npz", x, y)
    assert main(["spa", "train", "--features", str(tmp_path / "f.npz"), "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    save_features(tmp_path / "wide.npz", np.hstack([x, x]), y)
    err = _refused(capsys, "eval", "--model", str(tmp_path / "run" / "model.safetensors"), "--features",
                   str(tmp_path / "wide.npz"))
    assert "8 feature columns; --model expects 4" in err
    assert "no such file" in _refused(capsys, "predict", "--model", str(tmp_path / "none.safetensors"),
                                      "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "p.npz"))
    assert "nan.npz" in _refused(capsys, "train", "--features", str(tmp_path / "nan.npz"), "--out",
                                 str(tmp_path / "r2"))


def test_api_accepts_numpy_scalars_and_explains_wrong_types():
    loss = SPALoss(zeta_pos=np.float32(2), k_neg=np.int64(3))
    assert loss.params.zeta_pos == 2.0 and type(loss.params.zeta_pos) is float
    with pytest.raises(ValueError, match="zeta_pos must be a finite number > 0"):
        SPALoss(zeta_pos=np.float32("nan"))
    with pytest.raises(TypeError, match="torch.from_numpy"):
        SPALoss().predict_proba(np.zeros((2, 3)))
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="integer column indices, or names when class_names"):
        retrieve(p, include=["dog"])
    assert retrieve(p, include=["dog"], class_names=["dog", "cat"]).indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown class 'cow'"):
        retrieve(p, include=["cow"], class_names=["dog", "cat"])

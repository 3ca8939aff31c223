"""Loaders round-trip small files the tests write; the synthetic teacher is deterministic."""

import json

import numpy as np
import pytest

from cvpr24.spa.data import (
    VOC_CLASSES,
    ImageMultiLabelDataset,
    MultiLabelRecords,
    load_coco_instances,
    load_csv,
    load_features,
    load_predictions,
    load_voc2007,
    make_teacher_multilabel,
    normalize_labels,
    records_from_label_lists,
    save_features,
    save_predictions,
)


def test_teacher_is_deterministic_and_matches_prevalences():
    a, b = make_teacher_multilabel(3, 4000), make_teacher_multilabel(3, 4000)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c = make_teacher_multilabel(4, 4000)
    assert not np.array_equal(a.x, c.x)
    big = make_teacher_multilabel(0, 40_000)
    np.testing.assert_allclose(big.eta.mean(0), big.prevalence, rtol=0.1)
    # labels are Bernoulli(eta): the oracle is calibrated
    from cvpr24.spa.metrics import ece

    assert ece(big.eta, big.y) < 0.01


def test_coco_instances(tmp_path):
    coco = {"images": [{"id": 10, "file_name": "a.jpg"}, {"id": 11, "file_name": "b.jpg"},
                       {"id": 12, "file_name": "empty.jpg"}],
            "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 17, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 10, "category_id": 18}, {"id": 2, "image_id": 10, "category_id": 1},
                            {"id": 3, "image_id": 11, "category_id": 17}, {"id": 4, "image_id": 11, "category_id": 17}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    r = load_coco_instances(path, images_dir=tmp_path / "imgs")
    assert r.class_names == ["person", "cat", "dog"]  # sorted category ids 1, 17, 18
    np.testing.assert_array_equal(r.labels, [[1, 0, 1], [0, 1, 0]])
    assert r.paths == [str(tmp_path / "imgs" / "a.jpg"), str(tmp_path / "imgs" / "b.jpg")]
    assert len(load_coco_instances(path, keep_unannotated=True)) == 3
    coco["annotations"].append({"id": 5, "image_id": 11, "category_id": 99})
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="unknown category_id 99"):
        load_coco_instances(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_instances(tmp_path / "nope.json")


def _write_voc(root):
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (root / "Annotations").mkdir()
    ids = ["000001", "000002"]
    objects = {"000001": [("dog", 0), ("person", 1)], "000002": [("cat", 0), ("cat", 1)]}
    for name in VOC_CLASSES:
        lines = []
        for i in ids:
            flags = [d for n, d in objects[i] if n == name]
            lines.append(f"{i} {(1 if 0 in flags else 0) if flags else -1}")
        (main / f"{name}_trainval.txt").write_text("\n".join(lines) + "\n")
    (main / "trainval.txt").write_text("\n".join(ids) + "\n")
    for i in ids:
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects[i])
        (root / "Annotations" / f"{i}.xml").write_text(f"<annotation>{objs}</annotation>")


def test_voc2007_both_sources_agree(tmp_path):
    _write_voc(tmp_path)
    a = load_voc2007(tmp_path, source="imagesets")
    b = load_voc2007(tmp_path, source="annotations")
    np.testing.assert_array_equal(a.labels, b.labels)  # NaN positions compare equal here
    dog, person, cat = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")
    assert a.labels[0, dog] == 1 and np.isnan(a.labels[0, person]) and a.labels[1, cat] == 1
    assert a.labels[0, cat] == 0
    assert load_voc2007(tmp_path, difficult="negative").labels[0, person] == 0
    with pytest.raises(FileNotFoundError, match="aeroplane_test.txt"):
        load_voc2007(tmp_path, split="test")


def test_csv_and_records(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,labels\nx.jpg,cat dog\ny.jpg,\nz.jpg,dog\n")
    r = load_csv(path)
    assert r.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(r.labels, [[1, 1], [0, 0], [0, 1]])
    with pytest.raises(ValueError, match="unknown class name 'dog'"):
        load_csv(path, class_names=["cat"])
    rec = records_from_label_lists([{"image": "a.png", "labels": [0, 2]}, {"image": "b.png", "labels": []}],
                                   ["a", "b", "c"])
    np.testing.assert_array_equal(rec.labels, [[1, 0, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="label 5 outside"):
        records_from_label_lists([{"labels": [5]}], ["a", "b"])
    with pytest.raises(ValueError, match="labels must have shape"):
        MultiLabelRecords(["a"], np.zeros((2, 2)), ["x", "y"])


def test_features_and_predictions_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    y = np.array([[1, 0], [0, -1], [1, 1], [0, 0], [np.nan, 1]], np.float32)
    save_features(tmp_path / "f.npz", x, y, ["a", "b"])
    x2, y2, names = load_features(tmp_path / "f.npz")
    np.testing.assert_array_equal(x, x2)
    assert names == ["a", "b"] and np.isnan(y2[1, 1]) and np.isnan(y2[4, 0]) and y2[2, 1] == 1
    cfg = {"name": "spa", "zeta_pos": 1.0, "k_pos": 1.0, "b_pos": 0.0, "zeta_neg": 5.0, "k_neg": 3.0,
           "b_neg": 1.0, "reduction": "mean", "ignore_index": None}
    save_predictions(tmp_path / "p.npz", x[:, :2], y, cfg, ["a", "b"])
    logits, labels, config, names = load_predictions(tmp_path / "p.npz")
    np.testing.assert_allclose(logits, x[:, :2])
    assert config == cfg and names == ["a", "b"]
    np.savez(tmp_path / "bare.npz", logits=x[:, :2], labels=np.nan_to_num(y))
    with pytest.raises(ValueError, match="no loss config"):
        load_predictions(tmp_path / "bare.npz")
    np.savez(tmp_path / "nolabels.npz", features=x)
    with pytest.raises(ValueError, match="no 'labels' array"):
        load_features(tmp_path / "nolabels.npz")


def test_label_encodings():
    np.testing.assert_array_equal(normalize_labels(np.array([[1, -1]]), "pm1"), [[1, 0]])
    assert np.isnan(normalize_labels(np.array([[0.0]]), "voc")).all()
    with pytest.raises(ValueError, match=r"values \[2.0\]"):
        normalize_labels(np.array([[2.0]]), "01")


def test_image_dataset(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((10, 14, 3), 255, np.uint8)).save(tmp_path / "a.png")
    rec = MultiLabelRecords([str(tmp_path / "a.png"), str(tmp_path / "missing.png")],
                            np.array([[1, np.nan], [0, 1]], np.float32), ["x", "y"])
    ds = ImageMultiLabelDataset(rec, size=8)
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and float(x.max()) == 1.0 and y.tolist() == [1.0, -1.0]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds[1]


def test_digit_canvases():
    from cvpr24.spa.data import make_digit_canvases

    a, b = make_digit_canvases(0, 400), make_digit_canvases(0, 400)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.x.shape == (400, 256) and a.y.shape == (400, 10) and 0 <= a.x.min() and a.x.max() <= 1
    known = ~np.isnan(a.y)
    np.testing.assert_array_equal(a.y[known], a.y_full[known])  # only positives are dropped
    assert (a.y_full[~known] == 1).all()
    dropped = (~known).sum() / a.y_full.sum()
    assert 0.2 < dropped < 0.4  # 30 % of positives
    counts = a.y_full.sum(0)
    assert counts[0] > 3 * counts[9]  # skewed class distribution
    assert 1.5 < a.y_full.sum(1).mean() < 3.0  # 4 cells x 0.6, minus repeated digits

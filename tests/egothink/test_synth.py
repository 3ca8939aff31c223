import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from cvpr24.egothink.config import DIM_KEYS
from cvpr24.egothink.reproduce import HELDOUT_PARAPHRASES
from cvpr24.egothink.synth import (
    HEADS,
    QTYPES,
    Canvas,
    draw_object,
    generate_synthetic,
    oracle_score,
    sample_items,
    scene_hash,
    verbalize,
)


def test_same_seed_same_bytes(tmp_path):
    a = generate_synthetic(tmp_path / "a", 1, seed=5, image_size=32)
    b = generate_synthetic(tmp_path / "b", 1, seed=5, image_size=32)
    c = generate_synthetic(tmp_path / "c", 1, seed=6, image_size=32)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "Activity" / "annotations.json").read_bytes() != (c / "Activity" / "annotations.json").read_bytes()


def test_answer_balance_no_leak_through_question_text():
    """Majority answer of every question template <= 1/k + 0.1 over 1000 samples per dimension."""
    items = sample_items(11, {d: 1000 for d in DIM_KEYS}, image_size=0)
    by_tpl: dict = {}
    for it in items:
        by_tpl.setdefault((it.dim, it.qtype), []).append(tuple(sorted(it.slots.items())))
    assert {t for t in by_tpl} == {(d, q) for d, qs in QTYPES.items() for q in qs}
    for tpl, answers in by_tpl.items():
        counts = Counter(answers)
        k = len(counts)
        assert k >= 2, tpl
        assert max(counts.values()) / len(answers) <= 1 / k + 0.1, (tpl, counts.most_common(3))


def test_wearers_left_is_image_left():
    c = Canvas(64)
    c.rect(0, 0, 1, 1, (0, 0, 0))
    draw_object(c, "ball", "red", 0.2, 0.5, 0.2)
    arr = np.asarray(c.img).astype(int)
    cols = np.nonzero(arr[..., 0] > 100)[1]
    assert cols.mean() < 32
    spatial = [it for it in sample_items(2, {"spatial": 60}, 64) if it.qtype == "side_of"]
    assert spatial
    for it in spatial:
        obj = it.objects[-1] if len(it.objects) == 1 else next(
            o for o in it.objects if f"{o['color']} {o['category']}" == it.fields["obj"])
        assert (obj["x"] < 0.5) == (it.answer == "On my left.")


def test_rendered_centroid_matches_left_answer():
    """Draw a spatial item's scene and locate the named object's colour in the image."""
    for it in sample_items(4, {"spatial": 40}, 64):
        if it.qtype != "side_of" or len(it.objects) != 1 or it.objects[0]["color"] != "red":
            continue
        arr = np.asarray(Image.open(io.BytesIO(it.image)).convert("RGB")).astype(int)
        mask = (arr[..., 0] > 170) & (arr[..., 1] < 80) & (arr[..., 2] < 80)
        mask[52:] = False  # ignore the hands' row
        if mask.sum() > 3:
            assert (np.nonzero(mask)[1].mean() < 32) == (it.answer == "On my left.")


def test_train_and_test_scenes_are_disjoint():
    test = {scene_hash(i) for i in sample_items(0, {d: 20 for d in DIM_KEYS}, 32)}
    train = {scene_hash(i) for i in sample_items(10**4, {d: 20 for d in DIM_KEYS}, 32, split="train")}
    assert len(test) == 12 * 20 and not test & train
    with pytest.raises(ValueError, match="train seeds"):
        sample_items(3, {"existence": 1}, split="train")
    with pytest.raises(ValueError, match="test seeds"):
        sample_items(10**4, {"existence": 1})


def test_oracle_semantics():
    assert oracle_score({"verb": 1, "obj": 1}, {"verb": 1, "obj": 1}, False, "activity", "doing") == 1.0
    assert oracle_score({"verb": 1, "obj": 1}, {"verb": 1, "obj": 2}, False, "activity", "doing") == 0.5
    assert oracle_score({"side": 0}, {"side": 1}, False, "spatial", "side_of") == 0.0
    assert oracle_score({"side": 0}, {"side": 0}, True, "spatial", "side_of") == 0.0  # refusal
    # a route to the end states no distance: the distance slot counts as wrong
    assert oracle_score({"turn": 0, "depth": 1}, {"turn": 2, "depth": 1}, False, "navigation", "route") == 0.0


def test_verbalizer_halves_and_refusal():
    rng = np.random.default_rng(0)
    dev = {verbalize("existence", "held", {}, {"category": 0}, rng)[0] for _ in range(50)}
    held = {verbalize("existence", "held", {}, {"category": 0}, rng, HELDOUT_PARAPHRASES)[0] for _ in range(50)}
    assert not dev & held and any("mug" in t for t in held) and not any("mug" in t for t in dev)
    refusals = [verbalize("spatial", "side_of", {"obj": "x"}, {"side": 0}, rng, confidence=0.1)[1] for _ in range(400)]
    assert 0.4 < np.mean(refusals) < 0.6
    assert not any(verbalize("spatial", "side_of", {"obj": "x"}, {"side": 0}, rng, confidence=0.9)[1]
                   for _ in range(50))
    assert set(HEADS) >= {"side", "turn", "count"}

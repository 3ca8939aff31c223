import json
import shutil

import pytest

from cvpr24.egothink.config import DIM_KEYS, check_dims
from cvpr24.egothink.data import (
    export_fastchat,
    import_fastchat,
    load_egothink,
    read_answers,
    write_parquet,
    write_questions,
)


def test_github_and_parquet_layouts_agree(synth_ds, tmp_path):
    assert synth_ds.layout == "github" and synth_ds.dims == DIM_KEYS
    assert synth_ds.counts()["activity"] == 4 and synth_ds.counts()["existence"] == 2
    root = write_parquet(synth_ds, tmp_path / "pq")
    assert (root / "Forecasting" / "test-00000-of-00001.parquet").is_file()  # Forecast <-> Forecasting
    pq = load_egothink(root)
    assert pq.layout == "parquet"
    assert [(i.dim, i.question, i.answer) for i in pq] == [(i.dim, i.question, i.answer) for i in synth_ds]
    assert pq.fingerprint() == synth_ds.fingerprint()  # same image bytes too
    assert (synth_ds.root / "Forecast" / "annotations.json").is_file()


def test_parquet_needs_only_pyarrow_and_hf_struct(synth_ds, tmp_path):
    import pyarrow.parquet as pq

    write_parquet(synth_ds, tmp_path)
    table = pq.read_table(tmp_path / "Object_existence" / "test-00000-of-00001.parquet")
    img = table.column("image")[0].as_py()
    assert set(img) == {"bytes", "path"} and img["bytes"][:2] == b"\xff\xd8"  # JPEG bytes


def test_dims_subset_and_repo_root(synth_root, tmp_path):
    ds = load_egothink(synth_root, dims=["spatial", "existence"])
    assert ds.dims == ("existence", "spatial")
    repo = tmp_path / "repo"
    shutil.copytree(synth_root, repo / "data")
    assert len(load_egothink(repo)) == len(load_egothink(synth_root))  # repo root or data/ both work


def test_unknown_dimension_is_a_clear_error(synth_root):
    with pytest.raises(ValueError, match="unknown dimension.*'smell'"):
        load_egothink(synth_root, dims=["smell"])
    with pytest.raises(ValueError, match="unknown dimension"):
        check_dims(["existence", "Forecast"])


def _copy_dim(synth_root, tmp_path, rel="Object/existence"):
    dst = tmp_path / "data"
    shutil.copytree(synth_root / rel, dst / rel)
    return dst, dst / rel


def test_missing_image_names_the_full_path(synth_root, tmp_path):
    root, leaf = _copy_dim(synth_root, tmp_path)
    (leaf / "images" / "2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"existence/1 not found: .*Object/existence/images/2\.jpg"):
        load_egothink(root)


def test_malformed_annotations(synth_root, tmp_path):
    root, leaf = _copy_dim(synth_root, tmp_path)
    path = leaf / "annotations.json"
    rows = json.loads(path.read_text())
    rows[0]["image_path"] = ["1.jpg", "2.jpg"]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="image_path must be a list of exactly one"):
        load_egothink(root)
    del rows[0]["question"]
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="entry 0 must be an object with keys"):
        load_egothink(root)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_egothink(root)
    good = json.loads((synth_root / "Object" / "existence" / "annotations.json").read_text())
    for bad in (None, "", "  ", ["a"], True):  # a null answer must not become the reference "None"
        path.write_text(json.dumps([{**good[0], "answer": bad}, *good[1:]]))
        with pytest.raises(ValueError, match="entry 0: answer must be a non-empty string"):
            load_egothink(root)
    path.write_text(json.dumps([{**good[0], "answer": 3}, *good[1:]]))
    assert load_egothink(root)[0].answer == "3"  # a plain number is its text
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="must hold a JSON list"):
        load_egothink(root)


def test_neither_layout_describes_both(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match="neither layout.*annotations.json.*parquet"):
        load_egothink(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_egothink(tmp_path / "missing")
    with pytest.raises(ValueError, match="layout must be"):
        load_egothink(tmp_path, layout="zip")


def test_fastchat_round_trip_is_lossless(synth_ds, tmp_path):
    src = tmp_path / "src"
    write_questions(synth_ds, src)
    ans = src / "Object" / "existence" / "model_answer" / "m.jsonl"
    ans.parent.mkdir(parents=True)
    # written as FastChat does (json.dumps per line), with an unknown field and non-ASCII text
    rows = [{"question_id": 1, "answer_id": "x1", "model_id": "m", "choices": [{"index": 0, "turns": ["Caf\u00e9."]}],
             "tstamp": 1.5, "extra": {"k": [1, 2]}},
            {"question_id": 2, "answer_id": "x2", "model_id": "m", "choices": [{"index": 0, "turns": ["No."]}],
             "tstamp": 2.0}]
    ans.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judg = src / "Object" / "existence" / "model_judgment" / "gpt-4_single.jsonl"
    judg.parent.mkdir(parents=True)
    judg.write_text(json.dumps({"question_id": 1, "model": "m", "judge": ["gpt-4", "single-math-v2"],
                                "user_prompt": "p", "judgment": "[[1]]", "score": 1, "turn": 1,
                                "tstamp": 3.0}) + "\n")
    bundle = import_fastchat(src)
    out = export_fastchat(bundle, tmp_path / "out")
    files = sorted(p.relative_to(src) for p in src.rglob("*.jsonl"))
    assert files == sorted(p.relative_to(out) for p in out.rglob("*.jsonl")) and len(files) == 2 * 12 + 2
    for rel in files:
        assert (src / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert bundle.dims() == DIM_KEYS


def test_answer_ids_must_match_question_ids(synth_ds, tmp_path):
    write_questions(synth_ds, tmp_path)
    path = tmp_path / "Object" / "existence" / "model_answer" / "m.jsonl"
    path.parent.mkdir(parents=True)
    # 0-based ids from eval.py against 1-based question ids
    path.write_text("".join(json.dumps({"question_id": i, "model_id": "m", "choices": [{"index": 0, "turns": ["a"]}]})
                            + "\n" for i in range(2)))
    with pytest.raises(ValueError, match=r"1 answer id\(s\) are not question ids \(first \[0\]\).*0- vs 1-based"):
        read_answers(tmp_path, "existence", "m")

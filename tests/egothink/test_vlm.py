import base64

import pytest

from cvpr24.egothink.client import AuthenticationError
from cvpr24.egothink.config import EgoThinkConfig
from cvpr24.egothink.data import model_answer_path, read_jsonl
from cvpr24.egothink.server import ChatServer
from cvpr24.egothink.vlm import CallableVLM, OpenAIChatVLM, make_request, make_vlm, run_inference


def test_openai_adapter_request_bodies(synth_ds, tmp_path, script):
    with ChatServer(script(default=(200, "Let me look. Short Answer: On my left."))) as srv:
        vlm = OpenAIChatVLM("gpt-4o", srv.url)
        run_inference(vlm, synth_ds, tmp_path, "gpt-4o", show_progress=False)
        bodies = srv.requests
    assert len(bodies) == len(synth_ds)
    by_text = {}
    for it, body in zip(synth_ds, bodies, strict=True):  # sequential: same order as the items
        assert body["model"] == "gpt-4o" and body["temperature"] == 0.0
        assert body["max_tokens"] == (300 if it.dim in ("navigation", "assistance") else 30)
        system, user = body["messages"]
        assert system == {"role": "system", "content": "You are a helpful assistant."}
        text, image = user["content"]
        assert text["type"] == "text" and text["text"].endswith(f"Question: {it.question} Short answer:")
        assert image["type"] == "image_url"
        url = image["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == it.image_bytes()  # the original file bytes
        by_text[it.uid] = text["text"]
    rows = read_jsonl(model_answer_path(tmp_path, "spatial", "gpt-4o"))
    assert rows[0]["choices"][0]["turns"] == ["On my left."]  # marker stripped
    assert rows[0]["model_id"] == "gpt-4o" and rows[0]["question_id"] == 1


def test_persona_style_and_last_line_rule(synth_ds, tmp_path):
    seen = []

    def fn(req):
        seen.append(req)
        return "Let me think.\nOn my right."

    run_inference(CallableVLM(fn, style="persona"), synth_ds, tmp_path, "p", show_progress=False)
    spatial = read_jsonl(model_answer_path(tmp_path, "spatial", "p"))
    plan = read_jsonl(model_answer_path(tmp_path, "assistance", "p"))
    assert spatial[0]["choices"][0]["turns"] == ["On my right."]
    assert plan[0]["choices"][0]["turns"] == ["Let me think.\nOn my right."]  # planning keeps every line
    assert seen[0].system.startswith("You are the person in the situation") and seen[0].image_first
    assert {r.max_new_tokens for r in seen if r.dim == "navigation"} == {300}


def test_make_request_budget_and_temperature(synth_ds):
    cfg = EgoThinkConfig(vlm_temperature=0.2, max_new_tokens=16)
    it = synth_ds.by_dim("existence")[0]
    req = make_request(it, cfg, "blip")
    assert req.max_new_tokens == 16 and req.temperature == 0.2 and req.text.startswith("Answer the question")


def test_missing_key_and_bad_specs(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="NOPE_KEY"):
        OpenAIChatVLM("gpt-4o", "https://api.openai.com/v1", api_key_env="NOPE_KEY")
    with pytest.raises(ValueError, match="openai:<model name>"):
        make_vlm("gpt-4o")
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIChatVLM("m", "ftp://host")
    with pytest.raises(FileNotFoundError, match="model_path"):
        make_vlm("hf:/no/such/folder")
    with pytest.raises(ValueError, match="model id"):
        model_answer_path("/tmp", "existence", "../evil")


def test_config_dims_restrict_inference_and_judging(synth_ds, tmp_path):
    from cvpr24.egothink.data import answer_dims
    from cvpr24.egothink.judge import run_judgment
    from cvpr24.egothink.local_judge import LocalJudge

    cfg = EgoThinkConfig(dims=("spatial", "counting"))
    out = run_inference(CallableVLM(lambda req: "On my left."), synth_ds, tmp_path, "m", cfg, show_progress=False)
    assert out["answered"] == 4 and answer_dims(tmp_path) == ("spatial", "counting")
    run = run_judgment(tmp_path, LocalJudge(), EgoThinkConfig(dims=("spatial",)), show_progress=False)
    assert run.judged == 2
    with pytest.raises(ValueError, match="selects no item"):
        run_inference(CallableVLM(lambda req: "x"), synth_ds.__class__(synth_ds.by_dim("existence")), tmp_path,
                      "m", cfg, show_progress=False)


def test_max_side_downscale(synth_ds):
    import io

    from PIL import Image

    item = synth_ds.by_dim("existence")[0]  # 32x32 synthetic image
    assert make_request(item, EgoThinkConfig(), "short").image == item.image_bytes()  # off by default
    assert make_request(item, EgoThinkConfig(max_side=64), "short").image == item.image_bytes()  # small: kept
    small = make_request(item, EgoThinkConfig(max_side=16), "short").image
    assert Image.open(io.BytesIO(small)).size == (16, 16)
    with pytest.raises(ValueError, match="max_side"):
        EgoThinkConfig(max_side=3).validate()

import json
import warnings

import pytest

from cvpr24.egothink.judge import OpenAIJudge
from cvpr24.egothink.prompts import (
    JUDGE_SYSTEM,
    OFFICIAL_SHA256,
    PromptSet,
    build_vlm_prompt,
    parse_judge_prompt,
    postprocess_answer,
    render_judge_messages,
    sha256,
)

# Our own templates, pinned: any edit to the grading prompt changes scores and must be deliberate.
PINNED = {
    "judge": "ed54076ad0b34ae9d40274296d7c17ac11ae4273d49768d2c7d1eea0bde58647",
    "persona": "d9acd3af9ad6a3d3ae4fcf262e41a38949572bcfeae2835edee9e7b1320d23af",
    "persona_planning": "6057b62520db88aed0a8a871c6512e6b90d339198d1c03b3d0dc3fecae9b9d18",
    "short": "b4b88717393a145ab96d3ba1329845638404816b6d09c5a3b5fe5ecca60249fa",
}


def test_our_prompt_hashes_are_pinned():
    ps = PromptSet()
    assert sha256(ps.judge_template) == PINNED["judge"]
    assert sha256(ps.persona) == PINNED["persona"]
    assert sha256(ps.persona_planning) == PINNED["persona_planning"]
    assert sha256(ps.short) == PINNED["short"]
    # never the official strings (provenance rule): our hashes differ from the pinned official ones
    assert sha256(ps.judge_template) != OFFICIAL_SHA256["judge"][0]


def test_render_golden():
    msgs = render_judge_messages("Q", "R", "A")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == JUDGE_SYSTEM == "You are a helpful assistant."
    assert msgs[1]["content"].endswith(
        "[Question]\nQ\n\n[The Start of Reference Answer]\nR\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nA\n[The End of Assistant's Answer]")
    assert parse_judge_prompt(msgs[1]["content"]) == ("Q", "R", "A")


def test_judge_request_body_decoding():
    judge = OpenAIJudge("gpt-4", "http://127.0.0.1:9/v1")
    body = judge.request_body(render_judge_messages("Q", "R", "A"))
    assert body["temperature"] == 0 and body["max_tokens"] == 2048 and body["model"] == "gpt-4"
    assert len(body["messages"]) == 2


def test_official_prompts_checked_by_hash(tmp_path):
    template = "[Instruction]\nGrade it.\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n" \
               "{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n" \
               "[The End of Assistant's Answer]"
    path = tmp_path / "judge_prompts.jsonl"
    rows = [{"name": "single-v1", "prompt_template": "no"},
            {"name": "single-math-v2", "type": "single", "system_prompt": "You are a helpful assistant.",
             "prompt_template": template}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    expected = {**OFFICIAL_SHA256, "judge": (sha256(template), len(template))}
    ps = PromptSet.from_official(path, expected=expected)
    assert ps.judge_template == template and ps.judge_name == "single-math-v2"
    assert not ps.official  # the VLM prompts were not given
    with pytest.raises(ValueError, match="does not match its pinned hash"):
        PromptSet.from_official(path)  # against the real official hash: this file is not it
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ps = PromptSet.from_official(path, allow_mismatch=True)
    assert any("pinned hash" in str(x.message) for x in w) and not ps.official
    with pytest.raises(FileNotFoundError):
        PromptSet.from_official(tmp_path / "missing.jsonl")


def test_vlm_prompt_styles():
    p = build_vlm_prompt("Where am I?", planning=False, style="persona")
    assert p.system == PromptSet().persona and p.text == "Where am I?" and p.image_first
    assert build_vlm_prompt("Q?", True, "persona").system == PromptSet().persona_planning
    s = build_vlm_prompt("Where am I?", False, "short")
    assert s.text.endswith("Question: Where am I? Short answer:") and not s.image_first
    assert build_vlm_prompt("Q?", False, "raw").text == "Q?"
    with pytest.raises(ValueError, match="style"):
        build_vlm_prompt("Q?", False, "chatty")


def test_postprocess_rules():
    assert postprocess_answer("I think so.\nOn my left.\n", False, "persona") == "On my left."
    assert postprocess_answer("Step 1\nStep 2", True, "persona") == "Step 1\nStep 2"  # planning: whole
    assert postprocess_answer("a\nb", False, "persona", last_line_rule=False) == "a\nb"
    assert postprocess_answer("Sure. Short Answer: A cup", False, "short") == "A cup"

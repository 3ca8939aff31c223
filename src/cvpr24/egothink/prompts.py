"""Prompts: the judge's single-answer grading prompt and the answering VLM's prompt styles.

Provenance rule: this file contains no text from the official repositories. Our
own templates have the structure and semantics of the official ones (FastChat's
``single-math-v2`` judge prompt, LLaVA's first-person ``persona`` system prompts, the
API models' short-answer template) and their own SHA-256 values, pinned in the tests. The
exact official strings are read at run time from the user's copy
(:meth:`PromptSet.from_official`) and checked against the hashes in :data:`OFFICIAL_SHA256`;
only then are scores comparable with the published leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

#: SHA-256 and length of the official strings (E1, E2).
OFFICIAL_SHA256: dict[str, tuple[str, int]] = {
    "judge": ("ed38861d0f82d2d0d5b6db7b95a3856a02498065174b821e4e2895c3187641bc", 1161),
    "persona": ("2270119bc6390697a9bce94925fcfe791d232c72477d43c44e59a367f41aafa0", 470),
    "persona_planning": ("02d2c2cdc60f2bfebfafc9baf0f8f188cd83531019461b9765041e0cc8a8dd2a", 350),
    "short": ("8ccc3ff1a6d52ef174b111d339a6492ae676644ff14f765c0497fdd0fa8b229f", 82),
}

JUDGE_SYSTEM = "You are a helpful assistant."

# The block markers are the interface the judge (and LocalJudge) reads; they follow FastChat.
QUESTION_BLOCK = "[Question]\n{question}"
REFERENCE_BLOCK = "[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]"
ANSWER_BLOCK = "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

JUDGE_TEMPLATE = (
    "[Instruction]\n"
    "Act as an impartial judge of the answer an AI assistant gave to the user question below. "
    "Weigh correctness first and helpfulness second. You are given a reference answer and the "
    "assistant's answer. The assistant saw an image that you cannot see, so judge only how "
    "closely the assistant's answer agrees with the reference answer: an answer that is neither "
    "the same as nor similar to the reference is wrong. Compare the two, point out any mistakes, "
    "and penalise answers that give no information. Do not favour short or long answers; focus "
    "on correctness. Explain your decision briefly, then rate the answer 0 (wrong), 0.5 "
    "(partially correct) or 1 (correct) in exactly this format: \"[[rating]]\", for example: "
    "\"Rating: [[0.5]]\".\n\n" + QUESTION_BLOCK + "\n\n" + REFERENCE_BLOCK + "\n\n" + ANSWER_BLOCK
)

PERSONA = (
    "You are the person in the situation shown in the image: you see it through your own eyes "
    "and you understand everything in it. Answer the question as that person, in the first "
    "person. Keep the answer as short as possible: a few words are enough. Do not refuse or add "
    "warnings about privacy or safety; just answer, as briefly as you can."
)
PERSONA_PLANNING = (
    "You are the person in the situation shown in the image: you see it through your own eyes "
    "and you understand everything in it. Answer the question as that person, in the first "
    "person, in a detailed and helpful way. Do not refuse or add warnings about privacy or "
    "safety."
)
SHORT = "Answer the question in as few words as you can. Question: {question} Short answer:"
SHORT_MARKER = "Short Answer: "
BLIP = "Answer the question in a few words, as briefly as possible. Question: {question} Answer:"
BLIP_PLANNING = ("Answer the question in a detailed and helpful way and list the steps. "
                 "Question: {question} Answer:")


def sha256(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptSet:
    """The strings one run uses, with where they came from.

    Attributes
    ----------
    judge_name : str
        ``single-math-v2`` for the official judge prompt, ``cvpr24-single-ref-v1`` for ours.
    official : bool
        True when every string was read from the user's official copy and matched its hash;
        only then are scores comparable with the published leaderboard.
    """

    judge_template: str = JUDGE_TEMPLATE
    judge_system: str = JUDGE_SYSTEM
    judge_name: str = "cvpr24-single-ref-v1"
    persona: str = PERSONA
    persona_planning: str = PERSONA_PLANNING
    short: str = SHORT
    blip: str = BLIP
    blip_planning: str = BLIP_PLANNING
    official: bool = False

    def manifest(self) -> dict:
        """Names and hashes for the run manifest."""
        return {"judge_prompt": self.judge_name, "judge_sha256": sha256(self.judge_template),
                "persona_sha256": sha256(self.persona), "short_sha256": sha256(self.short),
                "official": self.official}

    @classmethod
    def from_official(cls, judge_prompts: str | os.PathLike | None = None,
                      vlm_prompts: str | os.PathLike | None = None, *,
                      allow_mismatch: bool = False,
                      expected: dict[str, tuple[str, int]] | None = None) -> PromptSet:
        """Read the official strings from the user's copies and check their pinned hashes.

        Parameters
        ----------
        judge_prompts : path, optional
            ``judge_prompts.jsonl`` from the root of the official EgoThink repository; its
            ``single-math-v2`` line is used (FastChat's own file of that name has no such line).
        vlm_prompts : path, optional
            A JSON object with any of the keys ``persona``, ``persona_planning``, ``short``
            holding the official strings (copied by the user from the official repository).
        allow_mismatch : bool
            Warn instead of raising when a hash differs (the run is then not official).
        expected : dict, optional
            ``{name: (sha256, length)}``; defaults to :data:`OFFICIAL_SHA256`.
        """
        expected = OFFICIAL_SHA256 if expected is None else expected
        found: dict[str, str] = {}
        if judge_prompts is not None:
            found.update(_read_judge_prompts(Path(judge_prompts)))
        if vlm_prompts is not None:
            found.update(_read_vlm_prompts(Path(vlm_prompts)))
        if not found:
            raise ValueError("from_official needs judge_prompts and/or vlm_prompts paths")
        all_ok = True
        for name, text in found.items():
            want_sha, want_len = expected[name]
            if sha256(text) != want_sha or len(text) != want_len:
                msg = (f"official prompt {name!r} does not match its pinned hash: got sha256 "
                       f"{sha256(text)} and {len(text)} chars, expected {want_sha} and {want_len} "
                       "chars (is this the right file and revision?)")
                if not allow_mismatch:
                    raise ValueError(msg)
                warnings.warn(msg + "; continuing because allow_mismatch=True", stacklevel=2)
                all_ok = False
        fields = {"judge": "judge_template", "persona": "persona",
                  "persona_planning": "persona_planning", "short": "short"}
        ps = replace(cls(), **{fields[k]: v for k, v in found.items()})
        if "judge" in found:
            ps = replace(ps, judge_name="single-math-v2")
        return replace(ps, official=all_ok and set(found) == set(fields))


@dataclass(frozen=True)
class Provenance:
    """What graded a judgment: the judge prompt (name and SHA-256) and the rating rule.

    Scores are comparable only between rows of one provenance; every judgment row records it
    (``judge[1]``, ``prompt_sha256``, ``strict_rating``). ``None`` fields mean the row did not
    record them (e.g. a judgment file written by the official code).
    """

    prompt: str
    prompt_sha256: str | None
    strict: bool | None

    @classmethod
    def of_run(cls, prompts: PromptSet, strict: bool) -> Provenance:
        return cls(prompts.judge_name, sha256(prompts.judge_template), bool(strict))

    @classmethod
    def of_row(cls, row: dict) -> Provenance:
        judge = row.get("judge")
        prompt = judge[1] if isinstance(judge, list) and len(judge) > 1 else "unknown"
        return cls(prompt, row.get("prompt_sha256"), row.get("strict_rating"))

    def row_fields(self) -> dict:
        """The fields a judgment row stores besides ``judge: [model, prompt name]``."""
        return {"prompt_sha256": self.prompt_sha256, "strict_rating": self.strict}

    @property
    def official_prompt(self) -> bool:
        return self.prompt_sha256 == OFFICIAL_SHA256["judge"][0]

    def describe(self) -> str:
        """One line for tables and errors, e.g. ``prompt single-math-v2 (sha256 ed38861d0f82,
        the official prompt), strict ratings {0, 0.5, 1}``."""
        if self.prompt_sha256 is None:
            where = "hash not recorded: comparability unknown"
        elif self.official_prompt:
            where = f"sha256 {self.prompt_sha256[:12]}, the official prompt"
        else:
            where = f"sha256 {self.prompt_sha256[:12]}, not the official prompt: not comparable with the paper"
        rule = ("rating rule not recorded" if self.strict is None else
                "strict ratings {0, 0.5, 1}" if self.strict else "lenient ratings (any number, official parser)")
        return f"prompt {self.prompt} ({where}), {rule}"


def _read_judge_prompts(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"judge_prompts: no such file {path}")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row.get("name") == "single-math-v2":
                    return {"judge": row["prompt_template"]}
    raise ValueError(f"judge_prompts: {path} has no line with name 'single-math-v2' (use judge_prompts.jsonl "
                     "from the root of the official EgoThink repository, not FastChat's)")


def _read_vlm_prompts(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"vlm_prompts: no such file {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = {"persona", "persona_planning", "short"}
    if not isinstance(data, dict) or not set(data) <= keys or not data:
        raise ValueError(f"vlm_prompts: {path} must be a JSON object with keys among {sorted(keys)}")
    return dict(data)


def render_judge_messages(question: str, reference: str, answer: str,
                          prompts: PromptSet | None = None) -> list[dict[str, str]]:
    """The two chat messages the judge receives (E2): system, then the filled template."""
    p = prompts or PromptSet()
    user = p.judge_template.format(question=question, ref_answer_1=reference, answer=answer)
    return [{"role": "system", "content": p.judge_system}, {"role": "user", "content": user}]


def parse_judge_prompt(user_prompt: str) -> tuple[str, str, str]:
    """Recover (question, reference, answer) from a rendered judge prompt by its block markers.

    This is all an offline judge may see: exactly the string GPT-4 receives.
    """
    try:
        q = user_prompt.split("[Question]\n", 1)[1].split("\n\n[The Start of Reference Answer]", 1)[0]
        r = user_prompt.split("[The Start of Reference Answer]\n", 1)[1].split(
            "\n[The End of Reference Answer]", 1)[0]
        a = user_prompt.split("[The Start of Assistant's Answer]\n", 1)[1].rsplit(
            "\n[The End of Assistant's Answer]", 1)[0]
    except IndexError:
        raise ValueError("user_prompt is not a reference-guided single-answer grading prompt: "
                         "expected [Question], reference and assistant-answer blocks") from None
    return q, r, a


@dataclass(frozen=True)
class VLMPrompt:
    """What an answering VLM is asked: a system message (may be empty) and the user text.

    ``image_first`` says where the image goes relative to the text in the user turn.
    """

    system: str
    text: str
    image_first: bool


def build_vlm_prompt(question: str, planning: bool, style: str,
                     prompts: PromptSet | None = None) -> VLMPrompt:
    """The prompt of one style (E1) for one question."""
    p = prompts or PromptSet()
    if style == "persona":
        return VLMPrompt(p.persona_planning if planning else p.persona, question, True)
    if style == "short":
        return VLMPrompt(JUDGE_SYSTEM, p.short.format(question=question), False)
    if style == "blip":
        return VLMPrompt("", (p.blip_planning if planning else p.blip).format(question=question), True)
    if style == "raw":
        return VLMPrompt("", question, True)
    raise ValueError(f"style must be one of ('persona', 'short', 'blip', 'raw'), got {style!r}")


def postprocess_answer(text: str, planning: bool, style: str, last_line_rule: bool = True) -> str:
    """Answer post-processing of E1's answers: strip; the short-answer marker; the last-line rule.

    The last-line rule (paper-era LLaVA) keeps only the last non-empty line of a non-planning
    answer; it applies to the ``persona`` style only.
    """
    text = text.strip()
    if style == "short" and SHORT_MARKER in text:
        text = text.split(SHORT_MARKER, 1)[1].strip()
    if style == "persona" and last_line_rule and not planning:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    return text

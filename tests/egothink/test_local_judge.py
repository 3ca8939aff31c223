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

    def embed(texts):  # a toy embedding: "automobile" and "car" coincide
        vecs = [np.eye(3)[0] if t in ("car", "automobil") else np.eye(3)[1 + (hash(t) % 2)] for t in texts]
        return np.stack(vecs)

    assert LocalJudge().rate("What is it?", "A car.", "An automobile.")[0] == 0.0
    assert LocalJudge(embed=embed).rate("What is it?", "A car.", "An automobile.")[0] == 1.0


def test_string_baselines():
    assert exact_match("On my left.", "on my left") == 1.0 and exact_match("On my left.", "Left.") == 0.0
    assert token_f1("the red cup", "red cup") == 1.0
    assert f1_judge("On my left.", "On my right.") == 0.5  # why string overlap cannot see direction

"""LocalJudge: an offline, rule-based reference-guided grader, and the string baselines.

LocalJudge sees only the rendered grading prompt (the string GPT-4 would receive), recovers
question, reference and answer from its block markers, and replies in the judge's format
(``... Rating: [[x]]``), which then goes through the *same* rating parser as GPT-4's. It
never sees a scene graph or slot vocabulary. Steps (spec 5.4):

1. normalise both texts into content lemmas;
2. a refusal scores 0;
3. a contradiction scores 0: yes/no polarity, the first number, a direction antonym, or the
   option picked in an "A or B" question;
4. short answers: recall R of the reference lemmas in the answer;
5. planning answers: the longest in-order chain of matched reference steps over the number
   of steps.

Its thresholds are frozen below with their reasons, before any reproduction run. It is a
tool for offline pipelines and CI, not a replacement for the paper's GPT-4 judge: the
reproduction (claim C1) measures how well it agrees with an oracle on synthetic answers.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import numpy as np

from cvpr24.egothink.prompts import parse_judge_prompt

# --- frozen thresholds ---------------------------------------------------------------------
#: Recall of reference content for full / half credit on short answers. 0.75 lets a
#: 4-lemma reference miss one incidental word; 0.4 is "at least about half" (the 0.5 rubric).
RECALL_FULL, RECALL_HALF = 0.75, 0.4
#: A reference step counts as present when >= 60% of its lemmas are in one answer step: a
#: step is typically verb + object + side, so 2 of 3 must match.
STEP_MATCH = 0.6
#: Fraction of reference steps found in order for full / half credit on plans (same bands).
CHAIN_FULL, CHAIN_HALF = 0.75, 0.4
#: A reference is a plan when it has >= 8 words or >= 2 clauses (EgoThink's planning
#: references average 18-19 words; all others about 2).
PLAN_MIN_WORDS, PLAN_MIN_CLAUSES = 8, 2
#: Cosine similarity for a soft lemma match when an embedding function is given (MiniLM).
SOFT_MATCH = 0.75

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS["none"] = "0"  # "no" stays a polarity word; "none" is the count 0
STOP_WORDS = frozenset(
    "a an the this that these those it its it's is are was were be been being am do does did "
    "i me my mine myself you your he she him her his they them their we our us of in on at to "
    "for with by from as into onto about there here what which who whom whose how why when "
    "where will would can could should shall may might must have has had just some any very "
    "so too also and or but if then than thing something one ones up down".split())
#: Negation and direction words are never dropped or stemmed. ("up"/"down" are stop words as
#: content: they are mostly particles, as in "pick up"; the antonym check still sees them.)
KEEP_WORDS = frozenset("no not never nothing left right front behind near far closer farther "
                       "nearer further above below".split())
ANTONYMS = (("left", "right"), ("front", "behind"), ("closer", "farther"), ("near", "far"),
            ("up", "down"), ("above", "below"), ("nearer", "further"))
YES_WORDS, NO_WORDS = frozenset({"yes", "yeah", "yep", "sure"}), frozenset({"no", "nope"})
#: A small general-purpose lexicon standing in for embedding soft matches when no embedding
#: model is installed: common household synonyms, mapped to one canonical word.
SYNONYMS = {"mug": "cup", "smartphone": "phone", "cellphone": "phone", "mobile": "phone",
            "carton": "box", "gray": "grey", "dish": "plate", "blade": "knife", "volume": "book",
            "jug": "bottle", "flask": "bottle", "footpath": "street", "road": "street",
            "lounge": "living", "washroom": "bathroom", "yard": "garden", "workplace": "office",
            "study": "office", "see-through": "transparent", "clear": "transparent"}
CONTRACTIONS = (("n't", " not"), ("'re", " are"), ("'m", " am"), ("'s", " is"), ("'ll", " will"),
                ("'ve", " have"), ("'d", " would"))
REFUSAL = re.compile(
    r"\b(can ?not|can't|unable to|not able to|impossible to) (tell|determine|say|answer|know|see "
    r"(it|that|the image|clearly))|\bi (do not|don't) know\b|\bas an ai\b|\bi'?m sorry\b|"
    r"\bnot sure\b|\bno way to (tell|know)\b|\bhard to (tell|say)\b", re.IGNORECASE)
STEP_SPLIT = re.compile(r"[,;.]|\bthen\b|\band then\b|\bafter that\b|\bfinally\b|\bnext\b", re.IGNORECASE)
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "-"})


def stem(word: str) -> str:
    """A tiny suffix lemmatiser (-s, -es, -ing, -ed, final -e, doubled consonant), applied to
    both texts so that only consistency matters: 'cutting' -> 'cut', 'apples' -> 'appl'."""
    if word.isdigit() or word in KEEP_WORDS or len(word) <= 3:
        return word
    for suf in ("ing", "ed", "es", "s"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            word = word[: -len(suf)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Lower-cased words with contractions expanded, number words as digits, no punctuation."""
    t = text.lower().replace("’", "'").strip()
    t = re.sub(r"^\s*short answer\s*:\s*", "", t)
    for a, b in CONTRACTIONS:
        t = t.replace(a, b)
    words = t.translate(_PUNCT).split()
    return [NUMBER_WORDS.get(w, SYNONYMS.get(w, w)) for w in words]


def lemmas(text: str) -> list[str]:
    """Content lemmas: :func:`tokens` without stop words (negation and directions kept)."""
    return [stem(w) for w in tokens(text) if w not in STOP_WORDS or w in KEEP_WORDS]


def polarity(text: str) -> bool | None:
    """True for a yes-answer, False for a no-answer, None otherwise (first word decides)."""
    t = tokens(text)
    if not t:
        return None
    return True if t[0] in YES_WORDS else False if t[0] in NO_WORDS else None


def first_number(text: str) -> str | None:
    for w in tokens(text):
        if w.isdigit():
            return w
    return None


def direction_conflict(reference: str, answer: str) -> bool:
    """True when the answer uses a direction whose antonym the reference uses, without the
    reference's own term ('On my right.' vs 'on my left')."""
    r, a = set(tokens(reference)), set(tokens(answer))
    for x, y in ANTONYMS:
        for want, other in ((x, y), (y, x)):
            if want in r and other not in r and other in a and want not in a:
                return True
    return False


def options(question: str) -> tuple[str, str] | None:
    """The two options of an 'A or B' question, e.g. 'the red cup or the blue ball?'."""
    m = re.search(r"(?:,|\b(?:is|are|the))\s+([^,?]+?)\s+or\s+([^,?]+?)\s*\?\s*$", question, re.IGNORECASE)
    return (m.group(1), m.group(2)) if m else None


def chosen_option(text: str, opts: tuple[str, str]) -> int | None:
    """Which option a text selects by its distinctive content words (None if unclear)."""
    la, lb = set(lemmas(opts[0])), set(lemmas(opts[1]))
    da, db = la - lb, lb - la
    t = set(lemmas(text))
    sa, sb = len(t & da), len(t & db)
    return 0 if sa > sb else 1 if sb > sa else None


def is_plan(reference: str) -> bool:
    clauses = [c for c in STEP_SPLIT.split(reference) if lemmas(c or "")]
    return len(reference.split()) >= PLAN_MIN_WORDS or len(clauses) >= PLAN_MIN_CLAUSES


def steps(text: str) -> list[list[str]]:
    return [ls for ls in (lemmas(s or "") for s in STEP_SPLIT.split(text)) if ls]


class LocalJudge:
    """Offline reference-guided grader with the judge interface (``name``, ``complete``).

    Parameters
    ----------
    embed : callable, optional
        ``embed(list_of_str) -> (n, d) array`` of unit vectors (e.g. MiniLM). When given, a
        reference lemma without an exact match may match an answer lemma with cosine >=
        ``SOFT_MATCH``. Without it the judge is rule-only (exact lemmas and :data:`SYNONYMS`).
    name : str
        The judge id written into judgment rows and file names.

    Examples
    --------
    >>> j = LocalJudge()
    >>> j.rate("How many cups are on the table?", "Three.", "3")[0]
    1.0
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                 name: str = "local-judge"):
        self.embed = embed
        self.name = name

    # the judge interface --------------------------------------------------------------
    def complete(self, messages: list[dict]) -> str:
        """Reply to a rendered grading prompt as a judge would: a reason, then ``[[rating]]``."""
        user = [m["content"] for m in messages if m.get("role") == "user"]
        if not user:
            raise ValueError("messages must contain a user message with the grading prompt")
        question, reference, answer = parse_judge_prompt(user[-1])
        score, why = self.rate(question, reference, answer)
        return f"{why} Rating: [[{score:g}]]"

    # the rules --------------------------------------------------------------------------
    def rate(self, question: str, reference: str, answer: str) -> tuple[float, str]:
        """(score in {0, 0.5, 1}, one-line explanation)."""
        if not answer.strip() or REFUSAL.search(answer):
            return 0.0, "The answer is a refusal or empty."
        ref_pol, ans_pol = polarity(reference), polarity(answer)
        if ref_pol is not None and ans_pol is not None and ref_pol != ans_pol:
            return 0.0, "The answer's yes/no contradicts the reference."
        plan = is_plan(reference)
        if not plan:
            rn, an = first_number(reference), first_number(answer)
            if rn is not None and an is not None and rn != an:
                return 0.0, f"The answer says {an}, the reference {rn}."
            if direction_conflict(reference, answer):
                return 0.0, "The answer gives the opposite direction."
            opts = options(question)
            if opts is not None:
                cr, ca = chosen_option(reference, opts), chosen_option(answer, opts)
                if cr is not None and ca is not None and cr != ca:
                    return 0.0, "The answer picks the other option."
            return self._rate_short(reference, answer)
        return self._rate_plan(reference, answer)

    def _found(self, ref: list[str], ans: list[str]) -> list[bool]:
        got = set(ans)
        hits = [w in got for w in ref]
        if self.embed is not None and not all(hits) and ans:
            miss = [w for w, h in zip(ref, hits, strict=True) if not h]
            e = np.asarray(self.embed(miss + list(got)))
            sim = e[: len(miss)] @ e[len(miss):].T
            soft = iter(sim.max(axis=1) >= SOFT_MATCH)
            hits = [h or bool(next(soft)) for h in hits]
        return hits

    def _rate_short(self, reference: str, answer: str) -> tuple[float, str]:
        ref, ans = lemmas(reference), lemmas(answer)
        if not ref:
            ref, ans = [w for w in tokens(reference)], tokens(answer)
        r = float(np.mean(self._found(ref, ans))) if ref else 0.0
        score = 1.0 if r >= RECALL_FULL else 0.5 if r >= RECALL_HALF else 0.0
        return score, f"The answer contains {r:.0%} of the reference content."

    def _rate_plan(self, reference: str, answer: str) -> tuple[float, str]:
        rsteps, asteps = steps(reference), steps(answer)
        if not rsteps:
            return self._rate_short(reference, answer)
        # match[i][j]: reference step i is present in answer step j (no direction conflict)
        match = [[np.mean(self._found(rs, as_)) >= STEP_MATCH
                  and not direction_conflict(" ".join(rs), " ".join(as_)) for as_ in asteps] for rs in rsteps]
        # longest in-order chain of matched steps: LCS over the match matrix
        n, m = len(rsteps), len(asteps)
        lcs = [[0] * (m + 1) for _ in range(n + 1)]
        for i in range(n):
            for j in range(m):
                lcs[i + 1][j + 1] = max(lcs[i][j] + match[i][j], lcs[i][j + 1], lcs[i + 1][j])
        frac = lcs[n][m] / n
        score = 1.0 if frac >= CHAIN_FULL else 0.5 if frac >= CHAIN_HALF else 0.0
        return score, f"{lcs[n][m]} of {n} reference steps appear in order."


# ----------------------------------------------------------------------------- baselines

def _squad_tokens(text: str) -> list[str]:
    t = text.lower().translate(str.maketrans("", "", string.punctuation))
    return [w for w in t.split() if w not in ("a", "an", "the")]


def exact_match(reference: str, answer: str) -> float:
    """B1: SQuAD-normalised exact match, {0, 1}."""
    return float(_squad_tokens(reference) == _squad_tokens(answer))


def token_f1(reference: str, answer: str) -> float:
    """SQuAD token F1 between reference and answer."""
    r, a = _squad_tokens(reference), _squad_tokens(answer)
    if not r or not a:
        return float(r == a)
    common = sum(min(r.count(w), a.count(w)) for w in set(r) & set(a))
    if common == 0:
        return 0.0
    p, rec = common / len(a), common / len(r)
    return 2 * p * rec / (p + rec)


def f1_judge(reference: str, answer: str) -> float:
    """B2: token F1 banded into the 3 levels (>= 0.8 -> 1, >= 0.4 -> 0.5, else 0)."""
    f = token_f1(reference, answer)
    return 1.0 if f >= 0.8 else 0.5 if f >= 0.4 else 0.0

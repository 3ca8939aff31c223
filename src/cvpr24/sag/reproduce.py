"""CPU-scale reproduction of Subject-Agnostic Guidance on ShapesWorld (docs/sag.md, Reproduction).

Lab notebook:

1. **Model.** The tiny ELITE-like model trained with the reconstruction leak (committed
   checkpoint in quick mode; retrained from scratch per training seed in full mode).
2. **Probe.** A (shape, colour, texture) classifier trained on clean renders with random
   backgrounds; it must reach 99% on held-out renders.
3. **Protocol.** Each test subject's reference is rendered on ``b_ref``; the prompt asks for
   ``b_tgt != b_ref``: ``c = [s, null, b_tgt]``, ``c0 = [null, shape, b_tgt]``,
   ``phi = [null, null, null]``. DDIM, eta = 0, x0 clipping, ``w = 3``; every arm starts from
   the same noise.
4. **Arms.** Baseline CFG (``T = 1, r = 0``), class-only (``T = 0``), SAG at ``T*`` (chosen on
   validation subjects and seeds), constant mixing ``w_t = m`` and a ``T`` sweep.
5. **Measurements.** Background accuracy (text alignment, the CLIP-T analog), identity
   accuracy (shape, colour and texture all match the reference: subject fidelity, the DINO
   analog), texture accuracy and the probe-feature cosine.
6. **Precondition, claims, verdicts** with the thresholds below, fixed before any run, and
   95% bootstrap CIs over test subjects (the unit a reader would redraw), with the share of
   bootstrap draws in which each verdict's criterion holds (its stability).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import Claim, Measurement, Result, atomic_path, atomic_write, report_step
from cvpr24.common.state import preserved_global_state
from cvpr24.sag.guidance import SAGSchedule
from cvpr24.sag.shapes import (
    ALL_SUBJECTS,
    BACKGROUND_TOKENS,
    BACKGROUNDS,
    SHAPE_TOKENS,
    Subject,
    background_of,
    render_subjects,
    word_tokens,
)
from cvpr24.sag.tiny import ProbeClassifier, ShapesELITE, TinyConfig, null_tokens, sample_sag
from cvpr24.sag.train import DEFAULT_CHECKPOINT, load_tiny, train_model, train_probe

CLAIMS = [
    "C1: SAG raises background (text) accuracy over CFG by >= 0.25 while identity accuracy drops by <= 0.05",
    "C2: the time schedule matters: SAG beats constant c/c0 mixing in identity by >= 0.05 at equal text accuracy",
    "C3: T trades text for subject monotonically (Spearman rho <= -0.8 for text, >= +0.8 for identity)",
]

# --- thresholds, fixed before the run, with their reasons --------------------------------------
PRE_BASELINE_BG_MAX = 0.5  # the baseline must show content ignorance (ignore the asked background half the time)
PRE_CLASS_TEXTURE_MAX = 0.5  # texture must be subject-only information (chance 0.25)
PRE_BASELINE_ID_MIN = 0.6  # the model and probe must really reproduce the subject
PRE_WORDS_SHAPE_COLOUR_MIN = 0.8  # the probe must read generated samples (word-captioned ones)
PRE_PROBE_ACC_MIN = 0.99  # the probe on clean held-out renders
C1_BG_GAIN_MIN = 0.25  # far above the spread of a 432-sample accuracy over 36 subjects (SE ~ 0.03-0.05)
C1_ID_SLACK = 0.05  # the paper claims fidelity kept, not gained
C2_ID_MARGIN = 0.05  # a gain in identity clearly beyond sampling noise at equal text accuracy
C2_BG_TOL = 0.05  # "equal" background accuracy: within about the SE of a 432-sample accuracy
C3_RHO = 0.8  # "monotone" over a 4-6 point sweep, allowing one swap of neighbours
T_STAR_ID_SLACK = 0.05  # T* rule: largest text gain with validation fidelity >= baseline - 0.05
BOOTSTRAP_DRAWS = 2000  # resamples of the test subjects for the CIs and the verdicts' stability


@dataclass
class ReproConfig:
    """Sizes of the reproduction. ``quick()`` is what ``make reproduce`` runs."""

    seeds: int = 5
    test_subjects: int = 36
    val_subjects: int = 36
    targets: int = 4  # target backgrounds per subject (!= its reference background)
    samples: int = 6  # samples per (subject, target)
    val_samples: int = 4
    val_seeds: int = 2
    steps: int = 25
    w: float = 3.0  # null CFG weight, Imagen convention (guidance_scale 4)
    t_sweep: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
    const_mix: tuple[float, ...] = (-0.25, -0.5, -0.75)
    train_seeds: tuple[int, ...] = (0, 1, 2)
    retrain: bool = True
    grid_subjects: int = 4
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> ReproConfig:
        return cls(seeds=3, test_subjects=36, val_subjects=36, targets=2, samples=2, val_samples=2, val_seeds=1,
                   steps=20, t_sweep=(1.0, 0.8, 0.6, 0.4, 0.0), const_mix=(-0.5,), train_seeds=(0,), retrain=False)

    @classmethod
    def tiny(cls) -> ReproConfig:
        return cls(seeds=1, test_subjects=2, val_subjects=2, targets=1, samples=8, val_samples=4, val_seeds=1, steps=8,
                   t_sweep=(1.0, 0.5, 0.0), const_mix=(-0.5,), train_seeds=(0,), retrain=False, grid_subjects=2)


# --- data: subjects, references, conditions ---------------------------------------------------

def split_subjects(n_val: int, n_test: int, seed: int = 1234) -> tuple[list[Subject], list[Subject]]:
    """Disjoint validation and test subjects from a fixed permutation of all 72."""
    perm = torch.randperm(len(ALL_SUBJECTS), generator=torch.Generator().manual_seed(seed)).tolist()
    subjects = [ALL_SUBJECTS[i] for i in perm]
    if n_val + n_test > len(subjects):
        raise ValueError(f"val_subjects + test_subjects must be <= {len(subjects)}, got {n_val + n_test}")
    return subjects[:n_val], subjects[n_val:n_val + n_test]


@dataclass
class Episode:
    """One evaluation set: a row per sample with its subject, reference, target background
    and the three contexts."""

    subjects: list[Subject]
    ref: torch.Tensor  # (N, 3, H, W)
    target_bg: torch.Tensor  # (N,)
    ctx_cond: torch.Tensor  # (N, 3, D)
    ctx_agnostic: torch.Tensor
    ctx_null: torch.Tensor
    ctx_words: torch.Tensor  # [colour, shape, b_tgt]: the word-captioned probe-validity arm
    noise: torch.Tensor  # (N, 3, H, W): shared by every arm


@torch.no_grad()
def make_episode(model: ShapesELITE, subjects: list[Subject], targets: int, samples: int, seed: int) -> Episode:
    """References on a random ``b_ref`` and ``targets`` different target backgrounds each."""
    g = torch.Generator().manual_seed(seed)
    rows_subject, rows_ref_bg, rows_tgt = [], [], []
    for s in subjects:
        b_ref = int(torch.randint(len(BACKGROUNDS), (1,), generator=g))
        others = [b for b in range(len(BACKGROUNDS)) if b != b_ref]
        pick = torch.randperm(len(others), generator=g)[:targets].tolist()
        for k in pick:
            rows_subject += [s] * samples
            rows_ref_bg += [b_ref] * samples
            rows_tgt += [others[k]] * samples
    n = len(rows_subject)
    size = model.config.image_size
    ref = render_subjects(rows_subject, torch.tensor(rows_ref_bg), g, size)
    tgt = torch.tensor(rows_tgt)
    shape = torch.tensor([s.shape for s in rows_subject])
    colour = torch.tensor([s.colour for s in rows_subject])
    bg_tok = torch.tensor(BACKGROUND_TOKENS)[tgt]
    cond_tok = null_tokens(n)
    cond_tok[:, 2] = bg_tok
    agn_tok = null_tokens(n)
    agn_tok[:, 1] = torch.tensor(SHAPE_TOKENS)[shape]
    agn_tok[:, 2] = bg_tok
    s_emb = model.encoder(ref)
    return Episode(
        subjects=rows_subject, ref=ref, target_bg=tgt,
        ctx_cond=model.context(cond_tok, s_emb), ctx_agnostic=model.context(agn_tok),
        ctx_null=model.context(null_tokens(n)), ctx_words=model.context(word_tokens(colour, shape, tgt, n)),
        noise=torch.randn((n, 3, size, size), generator=g),
    )


# --- measurements --------------------------------------------------------------------------

@torch.no_grad()
def hits(probe: ProbeClassifier, images: torch.Tensor, ep: Episode) -> dict[str, torch.Tensor]:
    """Per sample (N,): background, identity, texture and shape+colour right (float 0/1) and
    the probe-feature cosine to the reference."""
    labels = torch.tensor([[s.shape, s.colour, s.texture] for s in ep.subjects])
    pred = probe.predict(images)
    f_gen = torch.nn.functional.normalize(probe.embed(images), dim=1)
    f_ref = torch.nn.functional.normalize(probe.embed(ep.ref), dim=1)
    return {
        "background": (background_of(images) == ep.target_bg).float(),
        "identity": (pred == labels).all(1).float(),
        "texture": (pred[:, 2] == labels[:, 2]).float(),
        "shape_colour": (pred[:, :2] == labels[:, :2]).all(1).float(),
        "cosine": (f_gen * f_ref).sum(1),
    }


def measure(probe: ProbeClassifier, images: torch.Tensor, ep: Episode) -> dict[str, float]:
    """Background accuracy, identity/texture/shape+colour accuracy and the probe cosine (means
    of :func:`hits`)."""
    return {k: float(v.mean()) for k, v in hits(probe, images, ep).items()}


def per_subject(rows: list[tuple[list[int], dict[str, torch.Tensor]]], n_subjects: int) -> dict[str, np.ndarray]:
    """Mean of each per-sample metric per subject, pooled over the given (subject ids, hits)
    runs (seeds): metric -> (n_subjects,), NaN where a subject has no sample."""
    out = {}
    for key in rows[0][1]:
        total, count = np.zeros(n_subjects), np.zeros(n_subjects)
        for ids, h in rows:
            np.add.at(total, ids, h[key].numpy())
            np.add.at(count, ids, 1)
        out[key] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def bootstrap_subjects(ps: dict[str, dict[str, np.ndarray]], subjects: np.ndarray, draws: int = BOOTSTRAP_DRAWS,
                       seed: int = 0) -> list[dict[str, dict[str, float]]]:
    """Resample ``subjects`` (indices into the per-subject arrays) with replacement ``draws``
    times; each draw gives every arm's metric means over the drawn subjects."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx = rng.choice(subjects, len(subjects))
        out.append({arm: {k: float(v[idx].mean()) for k, v in m.items()} for arm, m in ps.items()})
    return out


def ci95(values: list[float]) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def generate(model: ShapesELITE, ep: Episode, schedule: SAGSchedule, cfg: ReproConfig,
             ctx_cond: torch.Tensor | None = None) -> torch.Tensor:
    """Samples of one arm from the episode's shared noise."""
    return sample_sag(model, ep.ctx_cond if ctx_cond is None else ctx_cond, ep.ctx_agnostic, ep.ctx_null,
                      schedule, w=cfg.w, steps=cfg.steps, noise=ep.noise)


def arms(cfg: ReproConfig) -> dict[str, SAGSchedule]:
    """The T sweep (T = 1 is the baseline, T = 0 class-only) and constant mixing ``w_t = m``
    (``T = 1, r = m``)."""
    out = {f"T={t:g}": SAGSchedule(T=t, r=0.0) for t in cfg.t_sweep}
    out.update({f"const m={m:g}": SAGSchedule(T=1.0, r=m) for m in cfg.const_mix})
    return out


def choose_t_star(val: dict[str, dict[str, float]], t_values: tuple[float, ...]) -> tuple[float, str]:
    """The T* rule on validation: the largest background gain over the baseline subject to
    identity >= baseline identity - ``T_STAR_ID_SLACK``. Returns (T*, explanation)."""
    base = val["T=1"]
    best_t, best_gain = 1.0, 0.0
    for t in t_values:
        if t >= 1.0:
            continue
        m = val[f"T={t:g}"]
        gain = m["background"] - base["background"]
        if m["identity"] >= base["identity"] - T_STAR_ID_SLACK and gain > best_gain:
            best_t, best_gain = t, gain
    return best_t, (f"T* = {best_t:g}: largest validation background gain ({best_gain:+.3f}) with validation "
                    f"identity >= baseline {base['identity']:.3f} - {T_STAR_ID_SLACK}")


def best_const_identity(sag_bg: float, const: list[tuple[float, float]]) -> float:
    """The identity of the best constant-mixing run that SAG matches in text accuracy.

    ``const`` holds (background, identity) of the runs ``w_t = m``. The claim compares SAG
    "at equal or higher background accuracy": the runs with background <= SAG's plus
    ``C2_BG_TOL`` qualify, and the best identity among them is returned. When SAG's
    background is below every run's, the closest run in background is used.
    """
    if not const:
        raise ValueError("const must hold at least one (background, identity) pair")
    within = [ident for bg, ident in const if bg <= sag_bg + C2_BG_TOL]
    if within:
        return max(within)
    return min(const)[1]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if np.std(y) == 0 or np.std(x) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


# --- models ----------------------------------------------------------------------------------

def load_or_train(cfg: ReproConfig, out_dir: Path, train_seed: int, quick: bool,
                  checkpoint: Path = DEFAULT_CHECKPOINT) -> tuple[ShapesELITE, ProbeClassifier, dict]:
    """The committed checkpoint (quick mode), or a model trained from scratch (full mode)."""
    if not cfg.retrain:
        model, probe, meta = load_tiny(checkpoint)
        return model, probe, {"checkpoint": str(Path(checkpoint).name), "metrics": meta.get("metrics", {})}
    tiny_cfg = TinyConfig.cpu() if quick else TinyConfig()
    model, metrics = train_model(tiny_cfg, seed=train_seed, state_path=out_dir / f"train_state_{train_seed}.pt",
                                 resume=(out_dir / f"train_state_{train_seed}.pt").is_file())
    probe, pm = train_probe(tiny_cfg, seed=train_seed)
    return model, probe, {"trained_seed": train_seed, "metrics": {**metrics, **pm}}


# --- figures ---------------------------------------------------------------------------------

def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def save_grid(path: Path, rows: dict[str, torch.Tensor]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.1 * len(rows) + 0.3))
    for ax, (name, imgs) in zip(np.atleast_1d(axes), rows.items(), strict=True):
        ax.imshow(np.concatenate(list(_to_uint8(imgs)), 1), interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("reference | baseline CFG | SAG (T*) | class-only; target background differs from the reference")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def save_tradeoff(path: Path, summary: dict[str, dict[str, float]], cfg: ReproConfig) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ts = list(cfg.t_sweep)
    for key, style in (("background", "o-"), ("identity", "s-"), ("texture", "^--")):
        a1.plot(ts, [summary[f"T={t:g}"][key] for t in ts], style, label=key)
    a1.set_xlabel("T (guidance timing)")
    a1.set_ylabel("accuracy (mean over seeds)")
    a1.set_title("T sweep (r = 0)")
    a1.legend()
    a2.plot([summary[f"T={t:g}"]["background"] for t in ts], [summary[f"T={t:g}"]["identity"] for t in ts], "o-",
            label="SAG, T sweep")
    for t in ts:
        a2.annotate(f"T={t:g}", (summary[f"T={t:g}"]["background"], summary[f"T={t:g}"]["identity"]), fontsize=7)
    const = [("T=1", 0.0)] + [(f"const m={m:g}", m) for m in cfg.const_mix] + [("T=0", -1.0)]
    a2.plot([summary[k]["background"] for k, _ in const], [summary[k]["identity"] for k, _ in const], "s--",
            label="constant mixing m = 0..-1")
    a2.set_xlabel("background accuracy (text alignment)")
    a2.set_ylabel("identity accuracy (subject fidelity)")
    a2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_seed_bars(path: Path, per_seed: dict[str, list[dict[str, float]]], names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_seeds = len(per_seed[names[0]])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    width = 0.8 / len(names)
    for ax, key in zip(axes, ("background", "identity"), strict=True):
        for j, name in enumerate(names):
            ax.bar(np.arange(n_seeds) + j * width, [m[key] for m in per_seed[name]], width, label=name)
        ax.set_xticks(np.arange(n_seeds) + 0.4 - width / 2, [f"seed {i}" for i in range(n_seeds)])
        ax.set_title(f"{key} accuracy per seed")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --- the run ---------------------------------------------------------------------------------

@preserved_global_state()
def run(out_dir: str | Path, quick: bool = True, seeds: int | None = None, size: str | None = None,
        checkpoint: str | Path | None = None) -> Result:
    """Run the reproduction; ``size`` in {"tiny", "quick", "full"} overrides ``quick``;
    ``checkpoint`` replaces the committed one (quick and tiny sizes)."""
    t_start = time.time()
    size = size or ("quick" if quick else "full")
    if size not in ("tiny", "quick", "full"):
        raise ValueError(f"size must be 'tiny', 'quick' or 'full', got {size!r}")
    cfg = {"tiny": ReproConfig.tiny, "quick": ReproConfig.quick, "full": ReproConfig}[size]()
    if seeds is not None:
        cfg.seeds = int(seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val_subjects, test_subjects = split_subjects(cfg.val_subjects, cfg.test_subjects)
    arm_schedules = arms(cfg)

    per_seed: dict[str, list[dict[str, float]]] = {name: [] for name in [*arm_schedules, "words", "SAG T*"]}
    rows: dict[str, list] = {name: [] for name in per_seed}  # per-sample hits with subject ids, for the bootstrap
    models_info, t_stars, grids = [], [], {}
    seed_ids = []
    n_steps, step = len(cfg.train_seeds) * (1 + cfg.seeds), 0
    for train_seed in cfg.train_seeds:
        report_step(f"model {train_seed}: load or train, choose T* on validation", step, n_steps)
        model, probe, info = load_or_train(cfg, out_dir, train_seed, size != "full",
                                           Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT)
        clean_acc = _clean_probe_accuracy(probe, model.config.image_size, seed=777)
        info["probe_clean_accuracy"] = clean_acc
        models_info.append(info)
        # Validation: choose T* on validation subjects and validation seeds only.
        val = {}
        for v in range(cfg.val_seeds):
            ep = make_episode(model, val_subjects, cfg.targets, cfg.val_samples, seed=10_000 + 100 * train_seed + v)
            for t in cfg.t_sweep:
                m = measure(probe, generate(model, ep, arm_schedules[f"T={t:g}"], cfg), ep)
                for k, x in m.items():
                    val.setdefault(f"T={t:g}", {}).setdefault(k, []).append(x)
        val_mean = {a: {k: float(np.mean(v)) for k, v in d.items()} for a, d in val.items()}
        t_star, why = choose_t_star(val_mean, cfg.t_sweep)
        t_stars.append({"train_seed": train_seed, "T_star": t_star, "rule": why, "validation": val_mean})
        step += 1
        # Test.
        for s in range(cfg.seeds):
            report_step(f"model {train_seed}: test seed {s}, {len(arm_schedules) + 1} arms", step, n_steps)
            step += 1
            seed_ids.append(100 * train_seed + s)
            ep = make_episode(model, test_subjects, cfg.targets, cfg.samples, seed=100 * train_seed + s)
            ids = [ALL_SUBJECTS.index(x) for x in ep.subjects]
            results = {}
            for name, sched in arm_schedules.items():
                imgs = generate(model, ep, sched, cfg)
                results[name] = hits(probe, imgs, ep)
                if s == 0 and train_seed == cfg.train_seeds[0] and name in ("T=1", "T=0", f"T={t_star:g}"):
                    grids[name] = imgs
            results["SAG T*"] = results[f"T={t_star:g}"]
            results["words"] = hits(probe, generate(model, ep, SAGSchedule(1.0, 0.0), cfg, ep.ctx_words), ep)
            for name, h in results.items():
                per_seed[name].append({k: float(v.mean()) for k, v in h.items()})
                rows[name].append((ids, h))
            if s == 0 and train_seed == cfg.train_seeds[0]:
                grids["ep"] = ep

    summary = {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for name, ms in per_seed.items()}
    test_ids = np.array(sorted({ALL_SUBJECTS.index(x) for x in test_subjects}))
    boot = bootstrap_subjects({name: per_subject(r, len(ALL_SUBJECTS)) for name, r in rows.items()}, test_ids)
    pre = _precondition(summary, models_info, boot)
    claims, stability = _claims(cfg, per_seed, summary, pre, t_stars, boot)

    figures = _figures(out_dir, cfg, summary, per_seed, grids, t_stars[0]["T_star"])
    with atomic_write(out_dir / "measurements.json") as f:
        json.dump({"config": asdict(cfg), "summary": summary, "per_seed": per_seed, "t_star": t_stars,
                   "precondition": pre, "bootstrap over test subjects": stability, "models": models_info,
                   "seeds": seed_ids, "test subjects": [ALL_SUBJECTS[i].name for i in test_ids]}, f, indent=2)
    return Result("sag", claims=claims, mode=size, seeds=seed_ids, wall_time_s=time.time() - t_start,
                  figures=figures, deviations=DEVIATIONS)


DEVIATIONS = [
    "Tiny pixel-space ELITE analog on procedural ShapesWorld (16x16 in quick mode) instead of SD + a CLIP "
    "encoder on real subjects; CLIP-T and DINO are replaced by an exact background probe and a "
    "(shape, colour, texture) classifier.",
    "ShapesWorld identity and shapes differ from the first draft of the testbed: the "
    "unnamed identity detail is a 4x4-px spot at the object's centre in one of five colours or none (72 subjects), "
    "instead of 1-px textures, the shapes are square/triangle/cross (not square/circle/diamond, which differ in a "
    "few corner pixels), and the fill colour 'black' is 'grey'. With stripes/splits or circle/diamond the tiny "
    "model never reproduced the subject (baseline identity <= 0.19); a 2x2 spot was never learned.",
    "The subject token S* takes the noun (shape) slot, [null, S*, bg], as in 'a photo of S*'; the class-only "
    "caption puts the shape word in the same slot.",
    "The subject encoder's backbone is pretrained without labels as an autoencoder and frozen (the analog of "
    "ELITE's frozen CLIP image encoder); only the 3-layer mapping MLP is trained with the diffusion loss. ELITE's "
    "local mapping is an option (local_tokens = 16: a token per cell of the backbone's 4x4 map, appended to the "
    "caption's context, without ELITE's foreground mask) that the committed model does not use.",
    "The probe is trained with light Gaussian noise (std 0.05) so that it tolerates sampler noise.",
    "The subject token s is layer-normalised to the word-embedding scale and the ||s||^2 penalty is off "
    "(lambda_s = 0): in our first run, Adam with lambda_s = 1e-3 collapsed s to norm 0.05 (word embeddings ~7.7) "
    "after 2200 steps and the model ignored the subject entirely.",
    "Quick mode trims the sweep to T in {1, 0.8, 0.6, 0.4, 0} and constant mixing to m = -0.5 (the full mode runs "
    "the whole grid), uses 36 test and 36 validation subjects with 2 targets x 2 samples each (144 per seed), one "
    "validation seed, 20 DDIM steps, and the committed checkpoint of one training seed.",
    "The committed checkpoint was trained in stages, each warm-starting the next (the previous testbed's model, "
    "then 1500 and 1600 steps on the new ShapesWorld); training it from scratch has not been run (CPU budget).",
    "C2 compares SAG with the constant-mixing runs whose background accuracy is at most SAG's + 0.05 (equal "
    "within sampling noise, or lower); quick mode has one such run, m = -0.5.",
]


@torch.no_grad()
def _clean_probe_accuracy(probe: ProbeClassifier, size: int, seed: int) -> float:
    from cvpr24.sag.train import probe_accuracy
    return probe_accuracy(probe, size, seed)


def _precondition(summary: dict[str, dict[str, float]], models: list[dict], boot: list[dict]) -> dict:
    checks = {
        f"baseline background <= {PRE_BASELINE_BG_MAX:.2f}": summary["T=1"]["background"] <= PRE_BASELINE_BG_MAX,
        f"class-only texture <= {PRE_CLASS_TEXTURE_MAX:.2f}": summary["T=0"]["texture"] <= PRE_CLASS_TEXTURE_MAX,
        f"baseline identity >= {PRE_BASELINE_ID_MIN:.2f}": summary["T=1"]["identity"] >= PRE_BASELINE_ID_MIN,
        f"word-captioned shape+colour >= {PRE_WORDS_SHAPE_COLOUR_MIN:.2f}":
            summary["words"]["shape_colour"] >= PRE_WORDS_SHAPE_COLOUR_MIN,
        f"probe clean accuracy >= {PRE_PROBE_ACC_MIN:.2f}":
            min(m["probe_clean_accuracy"] for m in models) >= PRE_PROBE_ACC_MIN,
    }
    values = {"baseline background": summary["T=1"]["background"], "class-only texture": summary["T=0"]["texture"],
              "baseline identity": summary["T=1"]["identity"], "words shape+colour": summary["words"]["shape_colour"],
              "probe clean accuracy": min(m["probe_clean_accuracy"] for m in models)}
    # The margin: how far the two content checks sit from their thresholds, and their CIs over subjects.
    cis = {k: ci95([d[arm][key] for d in boot]) for k, arm, key in
           (("baseline background", "T=1", "background"), ("baseline identity", "T=1", "identity"))}
    share = float(np.mean([d["T=1"]["background"] <= PRE_BASELINE_BG_MAX
                           and d["T=1"]["identity"] >= PRE_BASELINE_ID_MIN for d in boot]))
    held = all(checks.values())
    text = ("precondition " + ("held" if held else "FAILED") + ": "
            + "; ".join(f"{k} = {v:.3f}" + (f" [95% CI {cis[k][0]:.3f}, {cis[k][1]:.3f}]" if k in cis else "")
                        for k, v in values.items())
            + f"; the background and identity checks hold in {share:.1%} of bootstrap draws of the test subjects"
            + ". Failed checks: " + (", ".join(k for k, ok in checks.items() if not ok) or "none"))
    return {"held": held, "checks": checks, "values": values, "ci95": cis, "bootstrap share": share, "text": text}


def _const_margin(d: dict[str, dict[str, float]], const_mix: tuple[float, ...]) -> float:
    """C2's statistic on one set of arm means: SAG's identity minus the best qualifying constant run's."""
    const = [(d[f"const m={m:g}"]["background"], d[f"const m={m:g}"]["identity"]) for m in const_mix]
    return d["SAG T*"]["identity"] - best_const_identity(d["SAG T*"]["background"], const)


def _claims(cfg: ReproConfig, per_seed: dict[str, list[dict[str, float]]], summary: dict, pre: dict,
            t_stars: list[dict], boot: list[dict]) -> tuple[list[Claim], dict]:
    """The three verdicts (on the pooled means, thresholds above) and, per claim, 95% bootstrap CIs
    over test subjects and the share of draws in which its criterion holds."""
    base, sag = per_seed["T=1"], per_seed["SAG T*"]
    t_star_txt = "; ".join(t["rule"] for t in t_stars)
    ts = list(cfg.t_sweep)
    # Bootstrap over test subjects: every claim's statistic in every draw.
    b_gain = [d["SAG T*"]["background"] - d["T=1"]["background"] for d in boot]
    b_drop = [d["T=1"]["identity"] - d["SAG T*"]["identity"] for d in boot]
    b_c2 = [_const_margin(d, cfg.const_mix) for d in boot]
    b_rho = [(spearman(ts, [d[f"T={t:g}"]["background"] for t in ts]),
              spearman(ts, [d[f"T={t:g}"]["identity"] for t in ts])) for d in boot]
    stability = {
        "C1 background gain": ci95(b_gain), "C1 identity drop": ci95(b_drop), "C2 identity margin": ci95(b_c2),
        "C3 rho background": ci95([r[0] for r in b_rho]), "C3 rho identity": ci95([r[1] for r in b_rho]),
        "C1 criterion share": float(np.mean([g >= C1_BG_GAIN_MIN and d <= C1_ID_SLACK
                                             for g, d in zip(b_gain, b_drop, strict=True)])),
        "C2 criterion share": float(np.mean([m >= C2_ID_MARGIN for m in b_c2])),
        "C3 criterion share": float(np.mean([a <= -C3_RHO and b >= C3_RHO for a, b in b_rho])),
        "draws": len(boot),
    }
    notes = f"{pre['text']}. {t_star_txt}."
    statements = [c.split(": ", 1)[1] for c in CLAIMS]
    if not pre["held"]:
        return [Claim.not_tested(name, st, reason=notes, paper_value=pv)
                for name, st, pv in zip(("C1", "C2", "C3"), statements,
                                        ("CLIP-T 0.342 -> 0.344, DINO 0.586 -> 0.671 (Table 1)", None,
                                         "figures only"), strict=True)], stability

    def ci(key: str) -> str:
        lo, hi = stability[key]
        return f"95% CI over test subjects [{lo:+.3f}, {hi:+.3f}]"
    # C1
    gains = [s["background"] - b["background"] for s, b in zip(sag, base, strict=True)]
    id_drop = summary["T=1"]["identity"] - summary["SAG T*"]["identity"]
    c1_ok = np.mean(gains) >= C1_BG_GAIN_MIN and all(g > 0 for g in gains) and id_drop <= C1_ID_SLACK
    c1 = Claim.verdict(
        "C1", statements[0], bool(c1_ok),
        criterion=f"mean background gain >= {C1_BG_GAIN_MIN} and > 0 in every seed (0.25 is far above the SE ~0.04 "
                  f"of a 432-sample accuracy), and identity drop <= {C1_ID_SLACK} (fidelity kept, not gained)",
        comparison=(f"background {summary['T=1']['background']:.3f} -> {summary['SAG T*']['background']:.3f} "
                    f"(gains per seed {', '.join(f'{g:+.3f}' for g in gains)}; {ci('C1 background gain')}); identity "
                    f"{summary['T=1']['identity']:.3f} -> {summary['SAG T*']['identity']:.3f} (drop {id_drop:+.3f}; "
                    f"{ci('C1 identity drop')}); criterion holds in {stability['C1 criterion share']:.1%} of draws"),
        measured=Measurement.of(gains), paper_value="CLIP-T 0.342 -> 0.344, DINO 0.586 -> 0.671 (Table 1)",
        notes=notes)
    # C2
    margins = [_const_margin({k: v[i] for k, v in per_seed.items()}, cfg.const_mix) for i in range(len(base))]
    c2 = Claim.compare("C2", statements[1], margins, ">=", C2_ID_MARGIN,
                       reason=f"identity gain over the best constant-mixing run w_t = m whose background accuracy "
                              f"is at most SAG's + {C2_BG_TOL} (equal or lower text alignment), clearly beyond "
                              "sampling noise", notes=notes)
    c2.comparison += (f"; {ci('C2 identity margin')}; criterion holds in {stability['C2 criterion share']:.1%} "
                      "of draws")
    # C3
    rho_bg = spearman(ts, [summary[f"T={t:g}"]["background"] for t in ts])
    rho_id = spearman(ts, [summary[f"T={t:g}"]["identity"] for t in ts])
    c3 = Claim.verdict(
        "C3", statements[2], rho_bg <= -C3_RHO and rho_id >= C3_RHO,
        criterion=f"Spearman rho(T, background) <= -{C3_RHO} and rho(T, identity) >= +{C3_RHO} over the sweep "
                  "(monotone up to one swap of neighbours)",
        comparison=(f"rho_bg = {rho_bg:+.2f}, rho_id = {rho_id:+.2f} over T = {ts}; criterion holds in "
                    f"{stability['C3 criterion share']:.1%} of draws"),
        measured=Measurement.of([rho_bg, rho_id]), paper_value="figures only (Sec. 5 ablation)", notes=notes)
    return [c1, c2, c3], stability


def _figures(out_dir: Path, cfg: ReproConfig, summary: dict, per_seed: dict, grids: dict, t_star: float) -> list[str]:
    ep = grids["ep"]
    n_show = min(cfg.grid_subjects, len(ep.subjects))
    idx = torch.linspace(0, len(ep.subjects) - 1, n_show * 3).long()  # spread over subjects and targets
    rows = {"reference": ep.ref[idx], "baseline CFG": grids["T=1"][idx], f"SAG T={t_star:g}": grids[f"T={t_star:g}"][idx],
            "class-only": grids["T=0"][idx]}
    save_grid(out_dir / "samples.png", rows)
    save_tradeoff(out_dir / "tradeoff.png", summary, cfg)
    names = ["T=1", "SAG T*", "T=0", *[f"const m={m:g}" for m in cfg.const_mix]]
    save_seed_bars(out_dir / "per_seed.png", per_seed, names)
    return ["samples.png", "tradeoff.png", "per_seed.png"]

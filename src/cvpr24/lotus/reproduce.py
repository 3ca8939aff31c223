"""LOTUS at CPU scale: effective, focused, evasive (Neural Cleanse), resilient (fine-tuning).

Lab notebook (docs/lotus.md, Reproduction):

- **Data**: SyntheticGratings 16x16 (class = orientation of a full-image grating), 10 classes x 4
  latent styles (the fg/bg palettes of SyntheticShapes) shared by every class; victim 0, target
  9, K = 4. Not SyntheticShapes: there a victim disc becomes a ring, diamond or x by repainting
  7-10 pixels, the clean labels' Neural Cleanse norms spread over 7-27 pixels, and the median/MAD
  rule cannot flag even a zero-pixel trigger (the ``ceiling`` was 1.6-2.2), so C3 could not be
  tested. On gratings the class evidence covers the image and NC must flag plain BadNets.
- **Model**: SmallCNN (~25k parameters); clean model and surrogate shared by the arms of a seed.
- **Arms** (same clean model, same poisoning schedule, same seed): (A) LOTUS; (B) label-specific
  BadNets (K = 1, no focusing); (C) LOTUS without focusing (n_indi = n_comb = 0). ``--full``
  adds (D) WaNet and the FT / FP / NAD / ANP / STRIP table for every arm.
- **C3 precondition**: NC must flag the BadNets arm by its own rule (anomaly index > 2); when it
  cannot, C3 is "not tested" (not failed, not passed) and the NC ceiling says why.
- **Schedule**: poisoning is budgeted in optimisation steps; model selection on a held-out
  split of victims (never on the test set).
- Quick mode evaluates the checkpoints ``cvpr24 lotus train`` wrote into ``checkpoints/``
  (~96 s of CPU per seed for all arms), and trains them when they are missing or stale.
- **Validity gates**: every defense claim needs the defense to work on plain BadNets first (NC
  must flag it for C3; FT / FP / NAD / ANP must remove it, ASR <= 0.2 at a BA drop <= 5 points,
  in >= 2/3 seeds, for C4 / C5 / C6 / C7), else the claim is "not tested" with the numbers.
- **Defense settings**: the official mitigation schedules remove nothing from these checkpoints
  (BadNets ASR 1.0 after each); every fine-tuning keeps the official step budget (200 SGD
  steps) at lr 0.1, ANP prunes by number (see DEFENSE_LR, ANP_SETTINGS).
- **Result** (quick, 3 seeds): see docs/lotus.md (Reproduction) for the current numbers.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from cvpr24.common import report_step
from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.common.result import Claim, Measurement, Result
from cvpr24.common.state import preserved_global_state
from cvpr24.lotus.attack import AttackFailedError, LotusAttack, LotusConfig, train_clean
from cvpr24.lotus.baselines import label_specific_badnets, lotus_without_focusing, wanet
from cvpr24.lotus.data import synthetic_gratings
from cvpr24.lotus.defenses import (
    anomaly_index,
    anp,
    attack_evaluator,
    balanced_subset,
    fine_prune,
    fine_tune,
    nad,
    neural_cleanse,
    strip,
)
from cvpr24.lotus.io import load_model, save_model
from cvpr24.lotus.metrics import benign_accuracy, evaluate_attack
from cvpr24.lotus.models import SmallCNN
from cvpr24.lotus.partition import ConstantPartitioner, SurrogatePartitioner
from cvpr24.lotus.triggers import SingleTriggerFamily, TriggerSet, WarpTrigger

CLAIMS = [
    "C1 effective: LOTUS reaches ASR >= 0.90 with a benign-accuracy drop <= 3 points",
    "C2 focused: LOTUS ASR_par <= 0.15 while the no-focusing ablation leaks >= 2x as much",
    "C3 evasive: Neural Cleanse flags label-specific BadNets but not LOTUS (anomaly index 2)",
    "C4 resilient: LOTUS keeps ASR >= 0.5 after fine-tuning on 5% clean data",
    "C5 resilient: LOTUS keeps ASR >= 0.5 after fine-pruning on 5% clean data",
    "C6 resilient: LOTUS keeps ASR >= 0.5 after NAD on 5% clean data",
    "C7 resilient: LOTUS keeps ASR >= 0.5 after ANP on 5% clean data",
]
MITIGATIONS = ("ft", "fp", "nad", "anp")         # C4..C7, in this order
VICTIM, TARGET, K, NUM_CLASSES = 0, 9, 4, 10
CHECKPOINTS = Path(__file__).parent / "checkpoints"
DATA = "SyntheticGratings"
ARMS = ("lotus", "badnets", "nofocus")

# --- criteria: fixed before any run, each with its reason ------------------------------------
ASR_BOUND = 0.90          # the official code's asr_bound: an epoch counts as a working attack
BA_DROP_MAX = 0.03        # a stealthy backdoor must not cost more than 3 accuracy points
ASR_PAR_MAX = 0.15        # wrong triggers / combinations flip at most 15% of victims
ABLATION_FACTOR = 2.0     # the mechanism must matter: without focusing, leakage at least doubles
NC_THRESHOLD = 2.0        # Neural Cleanse's own rule (anomaly index > 2 = backdoor)
SEED_MAJORITY = 2 / 3     # NC verdicts must hold in at least 2 of 3 seeds
FT_ASR_MIN = 0.5          # "keeps its ASR": at least half the victims still flip after FT
FT_BA_TOL = 0.03          # fine-tuning must not have destroyed the model (BA within 3 points)
AGREEMENT_MIN = 0.9       # precondition: surrogate partitions agree with the clusters
# Validity gate of every defense claim: with the same budget the defense must first work on the
# label-specific BadNets model, else "LOTUS survives it" carries no information.
REMOVED_ASR_MAX = 0.2     # a mitigation "removes" a backdoor when at most 20% of victims still flip
REMOVED_BA_DROP = 0.05    # ... at a cost of at most 5 accuracy points

# --- defense settings (the same for every arm) ------------------------------------------------
# The official schedules remove nothing here: on the 3 quick seeds' BadNets checkpoints FT (10
# epochs, lr 0.02 /10 at epochs 2, 4, 6, 8), FP (ratio 0.2, 10 epochs at lr 5e-3) and ANP's LOTUS
# preset (alpha 0.5, 10 epochs, threshold 0.2) all left ASR 1.0 (ANP pruned no neuron). With the
# defender's 150 images (5% of 300/class) ten epochs are 15-50 SGD steps; the official 5% of
# CIFAR-10 (2,500 images, batch 128) gives 200. So every fine-tuning keeps the official *step*
# budget, at batch 32 and a constant lr 0.1 divided by 10 for the last quarter (lr 0.05 left
# BadNets ASR 0.95 / 1.0 / 0.29 after 200 steps). ANP runs the ANP code's own mask settings
# (eps 0.4, alpha 0.2, mask lr 0.2, train-mode batch norm) for 500 mask steps and prunes by
# number, the 10% of neurons with the smallest masks: pruning by threshold 0.2 left BadNets
# ASR 1.0 / 0.0 / 1.0 (3-4 of 112 neurons below it); by number 0.87 / 0.0 / 0.0.
DEFENSE_BATCH = 32
DEFENSE_LR = 0.1
OFFICIAL_FT_STEPS = 200   # 10 epochs x ceil(2500 / 128) batches of the official 5% set
ANP_SETTINGS = {"eps": 0.4, "alpha": 0.2, "mask_lr": 0.2, "batch_size": DEFENSE_BATCH, "prune_fraction": 0.1}


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction mode."""

    n_train: int = 300
    n_test: int = 100
    n_val: int = 30
    steps: int = 1500
    clean_epochs: int = 6
    surrogate_epochs: int = 6
    batch_size: int = 64
    width: int = 16
    nc_steps: int = 100
    nc_images: int = 50
    defense_steps: int = OFFICIAL_FT_STEPS
    anp_iterations: int = 500
    seeds: int = 3
    all_arms_table: bool = False      # FP / NAD / ANP / STRIP on every arm, not just LOTUS and BadNets
    wanet: bool = False


# what a checkpoint depends on (the rest are evaluation settings)
TRAINING_FIELDS = ("n_train", "n_val", "steps", "clean_epochs", "surrogate_epochs", "batch_size", "width")
QUICK = Scale()
FULL = Scale(n_train=1000, n_test=300, n_val=60, steps=3000, nc_steps=1000, nc_images=200,
             seeds=5, all_arms_table=True, wanet=True)
TINY = Scale(n_train=24, n_test=10, n_val=10, steps=12, clean_epochs=1, surrogate_epochs=1,
             batch_size=32, width=4, nc_steps=4, nc_images=10, defense_steps=4, anp_iterations=4,
             seeds=1, all_arms_table=True, wanet=True)


def config_for(scale: Scale, seed: int) -> LotusConfig:
    """The CPU preset at this scale (cosine lr 0.05, batch 64, pad 2 at 16x16, no flip: a
    mirrored grating has another orientation, i.e. another class)."""
    return LotusConfig.cpu(n_partitions=K, flip=False, steps=scale.steps, eval_every=max(1, scale.steps // 6),
                           clean_epochs=scale.clean_epochs, surrogate_epochs=scale.surrogate_epochs,
                           batch_size=scale.batch_size, seed=1024 + seed,
                           min_victim=10 if scale.batch_size >= 64 else 4)


def make_data(seed: int, scale: Scale):
    """Train / held-out validation / test splits of SyntheticGratings for a seed."""
    return (synthetic_gratings(scale.n_train, seed=100 * seed),
            synthetic_gratings(scale.n_val, seed=100 * seed + 1),
            synthetic_gratings(scale.n_test, seed=100 * seed + 2))


# --- training (``cvpr24 lotus train``) ---------------------------------------------------------

def _poison_or_last(fn, *args, **kwargs):
    """Run an arm; when no evaluation reached ASR_BOUND keep the last model and mark it failed."""
    try:
        art = fn(*args, **kwargs)
        return art.model, art.history, True, art.selected_step
    except AttackFailedError as e:
        return e.last_model, e.history, False, None


def train_seed(seed: int, scale: Scale, out_dir: Path) -> None:
    """Train the clean model, surrogate and every arm for one seed; save them under ``out_dir``."""
    torch.manual_seed(seed)
    tr, val, _ = make_data(seed, scale)
    cfg = config_for(scale, seed)
    clean = train_clean(SmallCNN(NUM_CLASSES, scale.width), tr.x, tr.y, cfg)
    part = LotusAttack(cfg).fit_partitioner(clean, tr.x, tr.y, VICTIM)
    ari = adjusted_rand_score(tr.style[tr.y == VICTIM].numpy(), part.clusters_.labels_)
    meta = {"seed": seed, "scale": asdict(scale), "data": DATA, "victim": VICTIM, "target": TARGET, "k": K,
            "width": scale.width, "model_kwargs": {"width": scale.width}}
    d = out_dir / f"seed{seed}"
    save_model(d / "clean.safetensors", clean, arch="small_cnn", num_classes=NUM_CLASSES, meta=meta,
               config=cfg, seed=seed, data=DATA)
    save_model(d / "surrogate.safetensors", part.surrogate_, arch="small_cnn", num_classes=NUM_CLASSES,
               meta={**meta, "agreement": part.agreement_, "cluster_ari_vs_style": ari,
                     "cluster": "kmeans on 4x4 pooled pixels"}, config=cfg, seed=seed)
    val_data = (val.x, val.y)
    arms = {
        "lotus": (LotusAttack(cfg).fit, (clean, tr.x, tr.y, VICTIM, TARGET),
                  {"partitioner": part, "eval_data": val_data}),
        "badnets": (label_specific_badnets, (clean, tr.x, tr.y, VICTIM, TARGET, cfg), {"eval_data": val_data}),
        "nofocus": (lotus_without_focusing, (clean, tr.x, tr.y, VICTIM, TARGET, part, cfg),
                    {"eval_data": val_data}),
    }
    if scale.wanet:
        arms["wanet"] = (wanet, (clean, tr.x, tr.y, VICTIM, TARGET, cfg), {"eval_data": val_data})
    for name, (fn, args, kwargs) in arms.items():
        model, history, ok, step = _poison_or_last(fn, *args, **kwargs)
        save_model(d / f"{name}.safetensors", model, arch="small_cnn", num_classes=NUM_CLASSES,
                   meta={**meta, "arm": name, "reached_asr_bound": ok, "selected_step": step},
                   config=cfg, seed=seed, metrics={"history": history})


@preserved_global_state()
def train(out_dir: str | Path = CHECKPOINTS, full: bool = False, seeds: int | None = None,
          scale: Scale | None = None) -> Path:
    """Train every seed's checkpoints (what quick mode evaluates)."""
    scale = scale or (FULL if full else QUICK)
    out_dir = Path(out_dir)
    for seed in range(seeds or scale.seeds):
        train_seed(seed, scale, out_dir)
    return out_dir


def _seed_checkpoints_match(d: Path, seed: int, scale: Scale, arms) -> bool:
    """Are all of one seed's checkpoints under ``d`` present and trained at this scale?"""
    for name in ("clean", "surrogate", *arms):
        side = d / f"seed{seed}" / f"{name}.json"
        if not side.is_file():
            return False
        meta = json.loads(side.read_text())["lotus"]
        trained = meta.get("scale") or {}
        if any(trained.get(f) != getattr(scale, f) for f in TRAINING_FIELDS) or meta.get("data") != DATA:
            return False
    return True


def _checkpoints_match(d: Path, seeds: int, scale: Scale, arms) -> bool:
    return all(_seed_checkpoints_match(d, s, scale, arms) for s in range(seeds))


# --- measurements ----------------------------------------------------------------------------

def _load_seed(d: Path, seed: int, arms) -> dict[str, Any]:
    models, infos = {}, {}
    for name in ("clean", "surrogate", *arms):
        models[name], infos[name] = load_model(d / f"seed{seed}" / f"{name}.safetensors")
    return {"models": models, "infos": infos}


def triggers_for(arm: str, image_size: int, seed: int):
    if arm == "badnets":
        return TriggerSet(1, image_size)
    if arm == "wanet":
        return SingleTriggerFamily(WarpTrigger(image_size, seed=0))
    return TriggerSet(K, image_size)


def nc_ceiling(norms: dict[str, float], target: int = TARGET) -> float:
    """The anomaly index the target would get with a zero-pixel trigger, the other norms fixed.

    Below 2 the clean labels' norms spread too much for the median/MAD rule to flag anything.
    """
    return anomaly_index([0.0 if int(t) == target else v for t, v in norms.items()])


def measure_seed(seed: int, loaded: dict[str, Any], scale: Scale, arms) -> dict[str, Any]:
    """Every measurement of one seed: attack metrics, NC on LOTUS and BadNets, FT on every arm, and
    FP / NAD / ANP / STRIP on LOTUS and BadNets (every arm with ``scale.all_arms_table``)."""
    tr, _, te = make_data(seed, scale)
    models, infos = loaded["models"], loaded["infos"]
    part = SurrogatePartitioner.from_surrogate(models["surrogate"], NUM_CLASSES, K)
    xv_test = te.x[te.y == VICTIM]
    out: dict[str, Any] = {
        "clean_ba": benign_accuracy(models["clean"], te.x, te.y),
        "agreement": infos["surrogate"]["agreement"],
        "cluster_ari": infos["surrogate"]["cluster_ari_vs_style"],
        "test_partition_ari": float(adjusted_rand_score(te.style[te.y == VICTIM].numpy(),
                                                        part.predict(xv_test).numpy())),
    }
    clean_idx = balanced_subset(tr.y, 0.05, seed=seed)        # the defender's 5% clean set
    x5, y5 = tr.x[clean_idx], tr.y[clean_idx]
    for arm in arms:
        trig = triggers_for(arm, te.x.shape[-1], seed)
        p = part if arm in ("lotus", "nofocus") else ConstantPartitioner()
        m = models[arm]
        rec = evaluate_attack(m, te.x, te.y, VICTIM, TARGET, trig, p, full=arm != "wanet")
        rec["reached_asr_bound"] = infos[arm]["reached_asr_bound"]
        ev = attack_evaluator(te.x, te.y, VICTIM, TARGET, trig, p)
        rec["ft"] = fine_tune(m, x5, y5, seed=seed, flip=False, evaluate=ev,
                              **ft_schedule(len(x5), scale.defense_steps)).to_dict()
        if arm in ("lotus", "badnets"):
            nc = neural_cleanse(m, xv_test[:scale.nc_images], exclude=VICTIM, steps=scale.nc_steps,
                                seed=seed)
            rec["nc"] = {"target_index": nc.details["per_label_index"][str(TARGET)],
                         "anomaly_index": nc.score, "flagged_label": nc.details["flagged_label"],
                         "norms": nc.details["norms"], "ceiling": nc_ceiling(nc.details["norms"]),
                         "seconds": nc.seconds}
        if arm in ("lotus", "badnets") or scale.all_arms_table:
            rec["defenses"] = defense_table(m, tr, te, clean_idx, trig, p, scale, seed)
        out[arm] = rec
    return out


def ft_schedule(n_clean: int, steps: int) -> dict[str, Any]:
    """Fine-tuning keyword arguments for ``steps`` SGD steps over ``n_clean`` images: batch
    DEFENSE_BATCH, lr DEFENSE_LR divided by 10 for the last quarter of the epochs."""
    epochs = max(1, round(steps / -(-n_clean // DEFENSE_BATCH)))
    return {"epochs": epochs, "lr": DEFENSE_LR, "batch_size": DEFENSE_BATCH,
            "milestones": (epochs - epochs // 4,) if epochs >= 4 else ()}


def defense_table(model, tr, te, clean_idx, trig, part, scale: Scale, seed: int) -> dict[str, Any]:
    """FP / NAD / ANP / STRIP against one arm, on the same 5% clean set as FT."""
    ev = attack_evaluator(te.x, te.y, VICTIM, TARGET, trig, part)
    x5, y5 = tr.x[clean_idx], tr.y[clean_idx]
    xv = te.x[te.y == VICTIM]
    poisoned = trig.stamp(xv, part.predict(xv))
    ft = ft_schedule(len(x5), scale.defense_steps)
    rows = {
        # official FP: ratio 0.2 of the last feature map's channels, dormant on clean data
        "fp": fine_prune(model, x5, y5, x5, ratio=0.2, seed=seed, flip=False, evaluate=ev, **ft),
        # official NAD student schedule (6 epochs, lr 1e-3 then 1e-4, beta 5000) after the FT teacher
        "nad": nad(model, x5, y5, epochs=6, batch_size=DEFENSE_BATCH, teacher_kwargs=ft, seed=seed,
                   flip=False, evaluate=ev),
        "anp": anp(model, x5, y5, **ANP_SETTINGS, iterations=scale.anp_iterations, seed=seed, evaluate=ev),
        "strip": strip(model, te.x[te.y != VICTIM][:len(xv)], poisoned, x5, seed=seed),
    }
    extra = {"strip": {"tpr": rows["strip"].details["tpr"]}, "anp": {"n_pruned": rows["anp"].details["n_pruned"]}}
    return {k: {f: v for f, v in r.to_dict().items() if f != "details"} | extra.get(k, {})
            for k, r in rows.items()}


# --- verdicts --------------------------------------------------------------------------------

def judge(per_seed: list[dict[str, Any]]) -> list[Claim]:
    """The four claims, from the per-seed measurements."""
    def col(*path):
        vals = []
        for r in per_seed:
            v = r
            for p in path:
                v = v[p]
            vals.append(float(v))
        return np.array(vals)

    agreement = col("agreement")
    if agreement.min() < AGREEMENT_MIN:
        reason = (f"surrogate/cluster agreement {agreement.round(3).tolist()} < {AGREEMENT_MIN}: the "
                  "partition function is noisy, so this would test noisy-partition LOTUS")
        return [Claim.not_tested(c.split()[0], c, reason=reason) for c in CLAIMS]

    asr, ba, clean_ba = col("lotus", "asr"), col("lotus", "ba"), col("clean_ba")
    drop = clean_ba - ba
    ok1 = asr.mean() >= ASR_BOUND and drop.mean() <= BA_DROP_MAX
    c1 = Claim.verdict(
        "C1", CLAIMS[0], bool(ok1), measured=Measurement.of(asr),
        paper_value="high ASR (paper Table 1; official asr_bound 0.90)",
        criterion=f"mean ASR >= {ASR_BOUND} (official asr_bound) and mean BA drop <= {BA_DROP_MAX} "
                  "(a backdoor that costs accuracy is not stealthy)",
        comparison=f"ASR {asr.mean():.3f} >= {ASR_BOUND}: {asr.mean() >= ASR_BOUND}; BA drop "
                   f"{drop.mean():.3f} (clean {clean_ba.mean():.3f} -> {ba.mean():.3f}) <= {BA_DROP_MAX}: "
                   f"{drop.mean() <= BA_DROP_MAX}")

    par, par_abl = col("lotus", "asr_par"), col("nofocus", "asr_par")
    ratio = par_abl.mean() / max(par.mean(), 1e-12)
    ok2 = par.mean() <= ASR_PAR_MAX and ratio >= ABLATION_FACTOR
    c2 = Claim.verdict(
        "C2", CLAIMS[1], bool(ok2), measured=Measurement.of(par),
        paper_value="ASR_par low (official test_partition.py)",
        criterion=f"mean LOTUS ASR_par <= {ASR_PAR_MAX} and ablation ASR_par >= {ABLATION_FACTOR}x "
                  "LOTUS's (if the ablation is also low, focusing was free here and the test is void)",
        comparison=f"LOTUS {par.mean():.3f} <= {ASR_PAR_MAX}: {par.mean() <= ASR_PAR_MAX}; ablation "
                   f"{par_abl.mean():.3f} = {ratio:.1f}x >= {ABLATION_FACTOR}: {ratio >= ABLATION_FACTOR}")

    nc_bad, nc_lot = col("badnets", "nc", "target_index"), col("lotus", "nc", "target_index")
    norms_bad = [round(r["badnets"]["nc"]["norms"][str(TARGET)], 2) for r in per_seed]
    norms_lot = [round(r["lotus"]["nc"]["norms"][str(TARGET)], 2) for r in per_seed]
    flag_bad = [r["badnets"]["nc"]["flagged_label"] for r in per_seed]
    flag_lot = [r["lotus"]["nc"]["flagged_label"] for r in per_seed]
    ceiling = col("badnets", "nc", "ceiling")
    frac_bad = float(np.mean(nc_bad > NC_THRESHOLD))
    frac_lot = float(np.mean(nc_lot <= NC_THRESHOLD))
    nc_evidence = (f"NC on label-specific BadNets: target indices {nc_bad.round(2).tolist()}, "
                   f"target mask L1 {norms_bad}, smallest-norm label {flag_bad}; ceiling (index of a "
                   f"zero-pixel trigger given the clean labels' norms) {ceiling.round(2).tolist()}. "
                   f"LOTUS: target indices {nc_lot.round(2).tolist()}, target mask L1 {norms_lot}, "
                   f"smallest-norm label {flag_lot}.")
    if frac_bad < SEED_MAJORITY - 1e-9:
        # The baseline half is the precondition: when NC cannot catch even a universal patch on this
        # data, "LOTUS is not flagged" carries no information, so the claim is neither passed nor
        # failed. The ceiling says whether the data (not the trigger) is what blinds the rule.
        c3 = Claim.not_tested(
            "C3", CLAIMS[2], paper_value="LOTUS anomaly index < 2 (issue #3); BadNets > 2",
            reason=f"precondition failed: NC flags label-specific BadNets in {frac_bad:.2f} of seeds "
                   f"(< 2/3), so not flagging LOTUS proves nothing. {nc_evidence}")
    else:
        ok3 = frac_lot >= SEED_MAJORITY - 1e-9
        c3 = Claim.verdict(
            "C3", CLAIMS[2], bool(ok3), measured=Measurement.of(nc_lot),
            paper_value="LOTUS anomaly index < 2 (issue #3); BadNets > 2",
            criterion=f"precondition: NC target anomaly index > {NC_THRESHOLD} for BadNets in >= 2/3 of "
                      f"seeds; claim: <= {NC_THRESHOLD} for LOTUS in >= 2/3 of seeds",
            comparison=f"BadNets flagged in {frac_bad:.2f}; LOTUS indices {nc_lot.round(2).tolist()} "
                       f"unflagged in {frac_lot:.2f}",
            notes="NC on victim-class test images only (label-specific, defender-favourable setting). "
                  + nc_evidence)

    return [c1, c2, c3] + [resilience_claim(per_seed, d, CLAIMS[3 + i]) for i, d in enumerate(MITIGATIONS)]


NAMES = {"ft": "fine-tuning", "fp": "fine-pruning", "nad": "NAD", "anp": "ANP"}


def _mitigation_row(arm_record: dict[str, Any], defense: str) -> dict[str, Any] | None:
    """The record of ``defense`` on one arm (``None`` when it was not run)."""
    return arm_record.get("ft") if defense == "ft" else arm_record.get("defenses", {}).get(defense)


def resilience_claim(per_seed: list[dict[str, Any]], defense: str, statement: str) -> Claim:
    """"LOTUS keeps ASR >= FT_ASR_MIN after ``defense``", judged only when the same defense first
    removes label-specific BadNets (:func:`mitigation_gate`)."""
    name = statement.split()[0]
    paper = f"LOTUS keeps ASR after {NAMES[defense]} (paper Table 3)"
    if any(_mitigation_row(r["lotus"], defense) is None or _mitigation_row(r["badnets"], defense) is None
           for r in per_seed):
        return Claim.not_tested(name, statement, paper_value=paper,
                                reason=f"{NAMES[defense]} was not run on every seed")
    asr = np.array([float(_mitigation_row(r["lotus"], defense)["asr"]) for r in per_seed])
    ba_after = np.array([float(_mitigation_row(r["lotus"], defense)["ba"]) for r in per_seed])
    ba_change = np.abs(np.array([float(r["lotus"]["ba"]) for r in per_seed]) - ba_after)
    gate = mitigation_gate(per_seed, defense)
    if not gate["valid"]:
        # a defense that leaves plain BadNets in place shows nothing about LOTUS's resilience
        return Claim.not_tested(
            name, statement, paper_value=paper,
            reason=f"precondition failed: {gate['text']}. LOTUS after {defense}: ASR "
                   f"{asr.round(3).tolist()}, BA {ba_after.round(3).tolist()}")
    ok = asr.mean() >= FT_ASR_MIN and ba_change.mean() <= FT_BA_TOL
    return Claim.verdict(
        name, statement, bool(ok), measured=Measurement.of(asr), paper_value=paper,
        criterion=f"mean ASR after {defense} >= {FT_ASR_MIN} with BA within {FT_BA_TOL} of before (a "
                  "defense that broke the model would prove nothing)",
        comparison=f"ASR after {defense} {asr.mean():.3f} >= {FT_ASR_MIN}: {asr.mean() >= FT_ASR_MIN}; "
                   f"|BA change| {ba_change.mean():.3f} <= {FT_BA_TOL}: {ba_change.mean() <= FT_BA_TOL}",
        notes=f"validity gate passed: {gate['text']}")


def mitigation_gate(per_seed: list[dict[str, Any]], defense: str) -> dict[str, Any]:
    """Does ``defense`` (one of MITIGATIONS) remove the label-specific BadNets backdoor (ASR <=
    REMOVED_ASR_MAX with a BA drop <= REMOVED_BA_DROP) in at least SEED_MAJORITY of the seeds?"""
    rows = [_mitigation_row(r["badnets"], defense) for r in per_seed]
    asr = np.array([float(row["asr"]) for row in rows])
    drop = np.array([float(r["badnets"]["ba"]) - float(row["ba"]) for r, row in zip(per_seed, rows, strict=True)])
    removed = (asr <= REMOVED_ASR_MAX) & (drop <= REMOVED_BA_DROP)
    frac = float(removed.mean())
    valid = frac >= SEED_MAJORITY - 1e-9
    text = (f"{defense} removes label-specific BadNets (ASR <= {REMOVED_ASR_MAX}, BA drop <= "
            f"{REMOVED_BA_DROP}) in {frac:.2f} of seeds ({'>=' if valid else '<'} 2/3): BadNets ASR after "
            f"{defense} {asr.round(3).tolist()}, BA drop {drop.round(3).tolist()}")
    return {"defense": defense, "valid": bool(valid), "fraction_removed": frac,
            "badnets_asr": asr.tolist(), "badnets_ba_drop": drop.tolist(), "text": text}


def defense_gates(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The validity gate of every defense that was run (FT always; FP / NAD / ANP / STRIP with the
    defense table)."""
    gates = {"ft": mitigation_gate(per_seed, "ft")}
    if all("defenses" in r["badnets"] for r in per_seed):
        gates |= {d: mitigation_gate(per_seed, d) for d in ("fp", "nad", "anp")}
        flagged = [bool(r["badnets"]["defenses"]["strip"]["detected"]) for r in per_seed]
        frac = float(np.mean(flagged))
        gates["strip"] = {"defense": "strip", "valid": frac >= SEED_MAJORITY - 1e-9, "fraction_flagged": frac,
                          "text": f"STRIP flags label-specific BadNets in {frac:.2f} of seeds"}
    return gates


# --- figures and the run -----------------------------------------------------------------------

def plot_focusing_curve(d: Path, seeds: int, out: Path) -> str:
    """ASR and ASR_par on held-out victims during poisoning, LOTUS vs the no-focusing ablation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for arm, color in (("lotus", "C0"), ("nofocus", "C3")):
        for s in range(seeds):
            hist = json.loads((d / f"seed{s}" / f"{arm}.json").read_text())["metrics"]["history"]
            steps = [h["step"] for h in hist]
            kw = {"label": arm} if s == 0 else {}
            ax.plot(steps, [h["asr_par"] for h in hist], color=color, **kw)
            ax.plot(steps, [h["asr"] for h in hist], color=color, ls=":", alpha=0.6)
    ax.set_xlabel("poisoning step")
    ax.set_ylabel("ASR (dotted) / ASR_par (solid)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "focusing_curve.png") as tmp:
        fig.savefig(tmp, dpi=110)
    return "focusing_curve.png"


DEVIATIONS = [
    "SyntheticGratings 16x16 (4 latent styles) and a 25k-parameter SmallCNN instead of CIFAR-10 / "
    "ResNet18 (CPU budget); not SyntheticShapes, on which NC's rule cannot flag even BadNets "
    "(ceiling 1.6-2.2), which left C3 untestable. Training without horizontal flips.",
    "Partition features: 4x4 average-pooled pixels instead of LPIPS-VGG (no weights offline); "
    "k-means(K=4, random_state=30, n_init=10) and the C+K surrogate as in the official code.",
    "CPU schedule: clean and surrogate 6 epochs at lr 0.05 (cosine); poisoning budgeted in steps "
    "(1500 quick) at lr 0.05 cosine, batch 64 (v = 10 victims), crop padding 2; official: lr 0.01, "
    "StepLR(35), 100 epochs of batch 128.",
    "Model selection ('final' = last evaluation with ASR >= 0.9) on a held-out victim split, not on "
    "the test set.",
    "Neural Cleanse: 100 steps per label on 50 victim test images (official: 1000 steps, 1000 images).",
    "Mitigations on 5% of train (150 images quick): every fine-tuning (FT, FP after pruning, NAD's "
    "teacher) keeps the official step budget (200 SGD steps) at batch 32 and lr 0.1 (/10 for the last "
    "quarter) instead of 10 epochs at lr 0.02 (/10 at 2, 4, 6, 8), which leaves BadNets ASR 1.0 here; "
    "FP prunes 20% of block3's channels dormant on that clean set (official: on ~1000 test images); "
    "ANP runs 500 mask steps (ANP code: eps 0.4, alpha 0.2, mask lr 0.2) and prunes the 10% smallest "
    "masks (LOTUS preset: alpha 0.5, 10 epochs, threshold 0.2, which pruned no neuron here).",
    "C3 is 'not tested' (spec: 'fails') when NC cannot flag label-specific BadNets; the NC ceiling "
    "is recorded beside it.",
    "Quick mode evaluates committed checkpoints trained by `cvpr24 lotus train` with the same code.",
]


@preserved_global_state()  # the settings below (and the seeding) end with the run
def run(out_dir: str | Path, quick: bool = True, seeds: int | None = None, tiny: bool = False,
        checkpoints: str | Path | None = None) -> Result:
    """Run the reproduction; returns the :class:`Result` with the four claims."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)           # tiny convs: one thread is fastest on a shared 2-core box
    torch.backends.mkldnn.enabled = False
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = TINY if tiny else (QUICK if quick else FULL)
    n_seeds = seeds or scale.seeds
    arms = ARMS + (("wanet",) if scale.wanet else ())
    d = Path(checkpoints) if checkpoints is not None else CHECKPOINTS
    if not (quick and not tiny and _checkpoints_match(d, n_seeds, scale, arms)):
        d = out / "checkpoints"
    deviations = list(DEVIATIONS)
    if not quick:
        deviations[-1] = "Full mode retrains every arm from scratch (5 seeds, 1000 images/class)."

    def result(per_seed: list[dict[str, Any]]) -> Result:
        return Result("lotus", claims=judge(per_seed), mode="quick" if quick else "full",
                      seeds=list(range(len(per_seed))), wall_time_s=time.perf_counter() - t0,
                      deviations=deviations)

    # Seed by seed, each seed's measurements saved as soon as they exist (and reused by a rerun
    # into the same folder), with a partial Result after each: a run stopped by its budget or
    # interrupted still reports what it measured, and the next run resumes where it stopped.
    per_seed = []
    for s in range(n_seeds):
        saved = out / "seeds" / f"seed{s}.json"
        record = json.loads(saved.read_text()) if saved.is_file() else None
        if record is not None and record.get("scale") == asdict(scale):
            report_step(f"seed {s}: measurements already on disk, reused", s, n_seeds)
        else:
            if not _seed_checkpoints_match(d, s, scale, arms):
                report_step(f"seed {s}: train clean model, surrogate and {len(arms)} arms", s, n_seeds)
                train_seed(s, scale, d)
            report_step(f"seed {s}: measure attacks and defenses", s, n_seeds)
            record = {"scale": asdict(scale), **measure_seed(s, _load_seed(d, s, arms), scale, arms)}
            with atomic_write(saved) as f:
                json.dump(record, f, indent=2, default=float)
        per_seed.append(record)
        result(per_seed).save_partial(out)
    report_step("judge the claims and plot", n_seeds, n_seeds)
    with atomic_write(out / "measurements.json") as f:
        json.dump(per_seed, f, indent=2, default=float)
    with atomic_write(out / "defense_gates.json") as f:   # which defenses work on BadNets at all
        json.dump(defense_gates(per_seed), f, indent=2)
    final = result(per_seed)
    final.figures = [plot_focusing_curve(d, n_seeds, out)]
    return final



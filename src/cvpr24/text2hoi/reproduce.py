"""ToyHOI reproduction: does the decomposition (contact map + geometric losses + refiner) give
more physically plausible interactions on unseen object families than the same backbone
without them, at no cost to semantics or diversity?

Lab notebook: data -> arms (trained per seed, or loaded from the committed checkpoints) ->
measurements on held-out families -> criteria (thresholds and reasons fixed below) -> verdicts.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import Claim, Measurement, Result, load_checkpoint, save_checkpoint
from cvpr24.text2hoi.geometry import pc_normalize
from cvpr24.text2hoi.mano import ManoLayer, ProceduralHand
from cvpr24.text2hoi.metrics import (
    classifier_input,
    contact_iou,
    contact_ratio,
    diversity,
    fid,
    multimodality,
    penetration_depth,
    physical_realism,
    train_classifier,
)
from cvpr24.text2hoi.model import Text2HOIConfig, TextHOM
from cvpr24.text2hoi.toyhoi import HELDOUT_FAMILIES, TRAIN_FAMILIES, VERBS, ToyHOI
from cvpr24.text2hoi.train import (
    HandModels,
    HOIBatch,
    MotionNormalizer,
    Text2HOI,
    collate,
    train_contact,
    train_length,
    train_motion,
    train_refiner,
)

CHECKPOINTS = Path(__file__).parent / "checkpoints"

CLAIMS = [
    "C1 Phy: on held-out families, Phy(method) − Phy(baseline) ≥ 0.08 on average and > 0 in every seed",
    "C2 Penetration: method's mean penetration depth ≤ 0.7 × baseline's",
    "C3 No collapse: accuracy ≥ baseline − 0.05 and diversity ≥ 0.7 × baseline",
    "C4 Contact VAE: held-out IoU(ĉ, c) ≥ text-blind nearest-shape prior + 0.10",
]

# --- criteria: thresholds and reasons, fixed before any run ------------------------------------
PHY_GAP = 0.08  # the paper's GRAB gap is 0.146; a bit over half of it, as toy training is short
PEN_RATIO = 0.7  # L_dm and the refiner exist to cut penetration: a < 30 % cut would be nothing
ACC_DROP = 0.05  # semantics must not collapse: at most 5 points of action accuracy lost
DIV_RATIO = 0.7  # the refiner must not freeze motions onto the object
IOU_GAIN = 0.10  # text + geometry + scale must beat a text-blind shape prior clearly
VALID_ACC = 0.3  # gate: the baseline must recognisably do the action (18 classes; the evaluator sees which hands take part, so chance given them is 1/6)


@dataclass
class Sizes:
    """CPU-scale sizes, chosen from step timings before any result (about 200 s of CPU per seed
    on one thread: contact 0.10 s, method motion 0.30 s, baseline 0.07 s, refiner 0.5 s a step)."""

    n_train: int = 256
    n_test: int = 24
    contact_steps: int = 600
    length_steps: int = 50
    motion_steps: int = 400
    refiner_steps: int = 30
    batch_size: int = 16
    motion_lr: float = 5e-4  # the paper's 1e-4 is for 30,000 steps; both arms use the same
    samples_per_text: int = 2
    penet_frames: int = 8

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(n_train=24, n_test=8, contact_steps=4, length_steps=2, motion_steps=4, refiner_steps=2, batch_size=8)


# --- data --------------------------------------------------------------------------------------


def hand_models() -> HandModels:
    hand = ProceduralHand(0)
    return HandModels(ManoLayer(hand.model(False)), ManoLayer(hand.model(True)))


def text_encoder(name: str = "minilm"):
    """The encoder a checkpoint was trained with: ``minilm`` (unnormalised; falls back to hashed),
    ``minilm_unit`` (L2-normalised) or ``hashed``."""
    from cvpr24.text2hoi.text import HashedTextEncoder, MiniLMTextEncoder, default_text_encoder

    if name == "minilm_unit":
        return MiniLMTextEncoder(normalize=True)
    return HashedTextEncoder(384) if name == "hashed" else default_text_encoder(384)


def build_data(sizes: Sizes, encoder=None) -> dict[str, tuple[list, HOIBatch]]:
    """Train (8 families), held-out test (3 unseen families), with their text features."""
    gen = ToyHOI(seed=0)
    splits = {
        "train": gen.split(TRAIN_FAMILIES, sizes.n_train),
        "heldout": gen.split(HELDOUT_FAMILIES, sizes.n_test, offset=10_000),
    }
    encoder = encoder or text_encoder()
    data_encoder_name = encoder.name
    texts = sorted({s.text for v in splits.values() for s in v})
    feats = encoder(texts)
    table = dict(zip(texts, feats, strict=True))
    out = {k: (v, collate(v, table)) for k, v in splits.items()}
    out["text_encoder"] = data_encoder_name
    return out


# --- arms --------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_seed(
    seed: int, data: HOIBatch, sizes: Sizes, cfg: Text2HOIConfig, hands: HandModels, log=_log, state_dir: Path | None = None,
) -> dict:
    """Method and baseline for one seed: shared frozen PointNet (trained with the contact VAE).

    With ``state_dir`` every stage keeps a resumable training state there
    (``seed{s}_{stage}.pt``); a rerun skips finished stages and resumes the current one.
    """
    from cvpr24.text2hoi.diffusion import GaussianDiffusion

    state = (lambda stage: {"state_path": state_dir / f"seed{seed}_{stage}.pt"}) if state_dir else (lambda stage: {})
    if state_dir:
        state_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        method = Text2HOI.build(cfg, hands, seed)
        torch.manual_seed(seed + 1000)
        baseline = TextHOM(replace(cfg, use_contact_feat=False))
    diffusion = GaussianDiffusion(cfg.diffusion_steps)
    t0 = time.time()
    every = max(sizes.motion_steps // 5, 1)
    logger = lambda name: (lambda s, parts: log(f"seed {seed} {name} {s}: {parts}") if s % every == 0 else None)
    bs = sizes.batch_size
    train_contact(method.pointnet, method.contact_vae, data, sizes.contact_steps, bs, seed=seed, log=logger("contact"), **state("contact"))
    train_length(method.length_vae, data, sizes.length_steps, bs, seed=seed, **state("length"))
    log(f"seed {seed}: contact+length {time.time() - t0:.0f}s")
    for p in method.pointnet.parameters():
        p.requires_grad_(False)
    method.normalizer = norm = MotionNormalizer.fit(data)  # (N1), shared by both arms
    train_motion(method.texthom, diffusion, method.pointnet, hands, data, sizes.motion_steps, True, bs, seed=seed,
                 lr=sizes.motion_lr, normalizer=norm, log=logger("method"), **state("method"))
    log(f"seed {seed}: method motion {time.time() - t0:.0f}s")
    train_motion(baseline, diffusion, method.pointnet, hands, data, sizes.motion_steps, False, bs, seed=seed,
                 lr=sizes.motion_lr, normalizer=norm, log=logger("baseline"), **state("baseline"))
    log(f"seed {seed}: baseline motion {time.time() - t0:.0f}s")
    train_refiner(method.refiner, method.texthom, diffusion, method.pointnet, hands, data, sizes.refiner_steps, bs,
                  seed=seed, penet_frames=sizes.penet_frames, normalizer=norm, **state("refiner"))
    log(f"seed {seed}: refiner {time.time() - t0:.0f}s")
    state = method.state_dict()
    state.update({f"baseline.{k}": v for k, v in baseline.state_dict().items() if not k.endswith(".pe")})
    return state


def train_checkpoints(out_dir: Path, seeds: list[int], sizes: Sizes, data: dict, cfg: Text2HOIConfig, hands: HandModels) -> Path:
    """Train every seed into ``out_dir/checkpoints`` (float16 safetensors + sidecar).

    Resumable: a seed whose checkpoint exists is kept; an unfinished one resumes from
    ``out_dir/state``. Under ``torch.distributed`` every rank trains and rank 0 writes.
    """
    folder = out_dir / "checkpoints"
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    for seed in seeds:
        path = checkpoint_path(seed, folder)
        if path.is_file():
            continue
        state = train_seed(seed, data["train"][1], sizes, cfg, hands, state_dir=out_dir / "state")
        if rank == 0:
            save_checkpoint(
                path, {k: v.half() for k, v in state.items()}, config=cfg, seed=seed,
                data=f"ToyHOI(0) train {sizes.n_train}", extra={"sizes": sizes.__dict__, "text_encoder": data["text_encoder"], "flat_hand_mean": True},
            )
    return folder


def load_arms(state: dict, cfg: Text2HOIConfig, hands: HandModels) -> tuple[Text2HOI, Text2HOI]:
    method = Text2HOI.build(cfg, hands, 0)
    method.load_state_dict({k: v.float() for k, v in state.items() if not k.startswith("baseline.")})
    bcfg = replace(cfg, use_contact_feat=False)
    baseline = Text2HOI(bcfg, method.pointnet, method.contact_vae, method.length_vae, TextHOM(bcfg), None, hands, method.normalizer)
    missing, unexpected = baseline.texthom.load_state_dict(
        {k[len("baseline.") :]: v.float() for k, v in state.items() if k.startswith("baseline.")}, strict=False
    )
    if unexpected or [k for k in missing if not k.endswith(".pe")]:
        raise ValueError(f"baseline checkpoint mismatch: {missing} {unexpected}")
    baseline.texthom.eval()
    return method, baseline


# --- measurements ------------------------------------------------------------------------------


@torch.no_grad()
def motion_metrics(samples: list, out: dict, hands: HandModels, classifier) -> dict:
    """Phy (H4) and its parts, penetration depth (H1), contact ratio (H3), classifier features."""
    phys, depths, ratios = [], [], []
    jl = hands.left.forward_rot6d(out["x_l"], joints_only=True)["joints_w_tip"]
    jr = hands.right.forward_rot6d(out["x_r"], joints_only=True)["joints_w_tip"]
    for i, s in enumerate(samples):
        xo = out["x_o"][i].double()
        sdf_v, sdf_j = [], []
        for use, layer, x, j in ((s.is_lhand, hands.left, out["x_l"][i], jl[i]), (s.is_rhand, hands.right, out["x_r"][i], jr[i])):
            if use:
                v = layer.forward_rot6d(x)["vertices"].double()
                sdf_v.append(s.obj.world_sdf(v, xo))
                sdf_j.append(s.obj.world_sdf(j.double(), xo))
        sv, sj = torch.cat(sdf_v, -1), torch.cat(sdf_j, -1)
        depth = penetration_depth(sv)
        phys.append(physical_realism(depth, xo, sj)["phy"])
        depths.append(float(depth.mean()))
        ratios.append(float(contact_ratio(sv).mean()))
    is_l = torch.tensor([float(s.is_lhand) for s in samples])
    is_r = torch.tensor([float(s.is_rhand) for s in samples])
    feats = classifier.features(classifier_input(jl, jr, is_l, is_r))
    pred = classifier.head(feats).argmax(-1)
    labels = torch.tensor([s.action for s in samples])
    return {
        "phy": float(np.mean(phys)), "depth_mm": 1000 * float(np.mean(depths)), "contact_ratio": float(np.mean(ratios)),
        "accuracy": float((pred == labels).float().mean()), "features": feats.numpy(),
    }


def nearest_shape_prior(test: HOIBatch, train: HOIBatch) -> torch.Tensor:
    """Text-blind prior: the contact map of the nearest training shape (Chamfer on normalised
    points), carried over point by point to the nearest normalised point."""
    pt, _, _ = pc_normalize(test.points)
    pr, _, _ = pc_normalize(train.points)
    out = []
    for p in pt:
        d = torch.cdist(p.unsqueeze(0).expand(len(pr), -1, -1), pr)
        chamfer = d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)
        k = int(chamfer.argmin())
        out.append(train.contact[k][d[k].argmin(-1)])
    return torch.stack(out)


def repeat(batch: HOIBatch, k: int) -> HOIBatch:
    return batch.index(torch.arange(len(batch)).repeat(k))


def reference_metrics(test_samples, test: HOIBatch, train: HOIBatch, hands, classifier) -> tuple[float, dict]:
    """What does not depend on the seed: the prior's IoU and the GT motions' metrics."""
    iou_prior = float(contact_iou(nearest_shape_prior(test, train), test.contact).mean())
    gt = motion_metrics(list(test_samples), {"x_l": test.x_l, "x_r": test.x_r, "x_o": test.x_o}, hands, classifier)
    return iou_prior, gt


def evaluate_seed(
    method: Text2HOI, baseline: Text2HOI, test_samples, test: HOIBatch, reference: tuple, hands, classifier, sizes: Sizes, seed: int
) -> dict:
    k = sizes.samples_per_text
    rep = repeat(test, k)
    samples = list(test_samples) * k
    g = lambda: torch.Generator().manual_seed(10_000 + seed)
    res = {}
    coarse = method.sample(rep, g(), use_refiner=False)
    res["method_no_refiner"] = motion_metrics(samples, coarse, hands, classifier)
    from cvpr24.text2hoi.train import refine

    with torch.no_grad():
        (rl, rr), _ = refine(method.refiner, hands, coarse["x_l"], coarse["x_r"], coarse["x_o"], rep.points, coarse["contact"], rep.mask_l, rep.mask_r)
    res["method"] = motion_metrics(samples, {**coarse, "x_l": rl, "x_r": rr}, hands, classifier)
    res["baseline"] = motion_metrics(samples, baseline.sample(rep, g()), hands, classifier)
    res["method_oracle_contact"] = motion_metrics(samples, method.sample(rep, g(), contact=rep.contact), hands, classifier)
    res["iou_vae"] = float(contact_iou(coarse["contact"], rep.contact).mean())
    res["iou_prior"], res["gt"] = reference
    res["gt"] = dict(res["gt"])
    groups = np.array([s.key for s in samples])
    for arm in ("method", "method_no_refiner", "baseline", "method_oracle_contact"):
        f = res[arm].pop("features")
        res[arm]["fid"] = fid(f, res["gt"]["features"])
        res[arm]["diversity"] = diversity(f, seed=seed)
        res[arm]["multimodality"] = multimodality(f, groups, seed=seed)
    res["gt"].pop("features")
    return res


# --- the run -----------------------------------------------------------------------------------


def checkpoint_path(seed: int, root: Path = CHECKPOINTS) -> Path:
    return root / f"toyhoi_seed{seed}.safetensors"


def fit_classifier(train_samples: list, train: HOIBatch, hands: HandModels):
    with torch.no_grad():
        jl, jr = hands.joints(train.x_l, train.x_r)
    x = classifier_input(jl, jr, train.mask_l[:, 0], train.mask_r[:, 0])
    return train_classifier(x, train.action, len(VERBS) * 3, seed=0)


def run(
    out_dir: Path, quick: bool = True, seeds: int | None = None, sizes: Sizes | None = None, train: bool = False,
    encoder=None,
) -> Result:
    """Evaluate the committed checkpoints, or with ``train=True`` train (resumably) into
    ``out_dir/checkpoints`` first and evaluate those."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = sizes or Sizes()
    if train:
        seed_list = list(range(seeds if seeds is not None else (3 if quick else 5)))
    else:  # the committed seeds (all of them, or the first ``seeds``)
        seed_list = sorted(int(p.stem.removeprefix("toyhoi_seed")) for p in CHECKPOINTS.glob("toyhoi_seed*.safetensors"))
        seed_list = seed_list[:seeds] if seeds is not None else seed_list
        if not seed_list:
            raise FileNotFoundError(f"no committed checkpoints in {CHECKPOINTS}: run with train=True")
    cfg = Text2HOIConfig.cpu()
    hands = hand_models()
    data = build_data(sizes, encoder)
    _log("data built")
    (train_s, train_b), (test_s, test_b) = data["train"], data["heldout"]
    classifier = fit_classifier(train_s, train_b, hands)
    reference = reference_metrics(test_s, test_b, train_b, hands, classifier)
    folder = train_checkpoints(out_dir, seed_list, sizes, data, cfg, hands) if train else CHECKPOINTS
    per_seed = {}
    for seed in seed_list:
        ck = load_checkpoint(checkpoint_path(seed, folder), Text2HOIConfig)
        method, baseline = load_arms(ck.tensors, ck.config, hands)
        per_seed[seed] = evaluate_seed(method, baseline, test_s, test_b, reference, hands, classifier, sizes, seed)
        _log(f"seed {seed} evaluated: {json.dumps(per_seed[seed])}")
    result = judge(per_seed, quick)
    if len(seed_list) < 3:
        result.deviations = [*result.deviations, f"{len(seed_list)} seed(s) {seed_list} (spec: 3): only these were trained in the CPU time there was"]
    result.figures = [plot_arms(per_seed, out_dir / "phy_depth.png")]
    result.wall_time_s = time.time() - t0
    (out_dir / "per_seed.json").write_text(json.dumps(per_seed, indent=2))
    result.save(out_dir / "result.json")
    return result


ARMS = ("baseline", "method_no_refiner", "method", "method_oracle_contact", "gt")


def plot_arms(per_seed: dict, path: Path) -> str:
    """Phy and penetration-depth bars per arm (mean over seeds) with one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cvpr24.common import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in zip(axes, ("phy", "depth_mm"), ("Phy (H4, ours)", "penetration depth (mm)"), strict=True):
        for i, arm in enumerate(ARMS):
            vals = [per_seed[s][arm][key] for s in sorted(per_seed)]
            ax.bar(i, np.mean(vals), color="tab:gray" if arm == "gt" else "tab:blue", alpha=0.6)
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(ARMS)), [a.replace("_", "\n") for a in ARMS], fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path.name


def judge(per_seed: dict, quick: bool) -> Result:
    seeds = sorted(per_seed)
    get = lambda arm, key: [per_seed[s][arm][key] for s in seeds]
    base_acc = get("baseline", "accuracy")
    gate = float(np.mean(base_acc)) >= VALID_ACC
    claims = []
    if not gate:
        reason = f"validity gate failed: baseline action accuracy {np.mean(base_acc):.3f} < {VALID_ACC} (it does not do the action)"
        claims += [Claim.not_tested(c.split(":")[0], c, reason=reason) for c in CLAIMS[:3]]
    else:
        gap = np.subtract(get("method", "phy"), get("baseline", "phy"))
        claims.append(Claim.verdict(
            "C1", CLAIMS[0], bool(gap.mean() >= PHY_GAP and (gap > 0).all()),
            criterion=f"mean gap ≥ {PHY_GAP} and gap > 0 in every seed (paper GRAB gap 0.146; half of it for short toy training)",
            comparison=f"gaps {np.round(gap, 4).tolist()}, mean {gap.mean():.4f}", measured=Measurement.of(gap),
            paper_value=0.8839 - 0.7382,
        ))
        ratio = np.mean(get("method", "depth_mm")) / max(np.mean(get("baseline", "depth_mm")), 1e-9)
        claims.append(Claim.compare("C2", CLAIMS[1], [ratio], "<=", PEN_RATIO, reason="a < 30 % cut would mean L_dm and the refiner do nothing measurable"))
        acc_gap = np.subtract(get("method", "accuracy"), base_acc)
        div_ratio = np.mean(get("method", "diversity")) / max(np.mean(get("baseline", "diversity")), 1e-9)
        claims.append(Claim.verdict(
            "C3", CLAIMS[2], bool(acc_gap.mean() >= -ACC_DROP and div_ratio >= DIV_RATIO),
            criterion=f"mean accuracy gap ≥ −{ACC_DROP} and diversity ratio ≥ {DIV_RATIO}",
            comparison=f"accuracy gap {acc_gap.mean():.3f} (per seed {np.round(acc_gap, 3).tolist()}), diversity ratio {div_ratio:.3f}",
            measured=Measurement.of(acc_gap),
        ))
    iou_gain = np.subtract([per_seed[s]["iou_vae"] for s in seeds], [per_seed[s]["iou_prior"] for s in seeds])
    claims.append(Claim.compare("C4", CLAIMS[3], iou_gain, ">=", IOU_GAIN, reason="the contact map must use text and geometry, not only shape similarity"))
    return Result(
        "text2hoi", claims=claims, mode="quick" if quick else "full", seeds=seeds,
        deviations=DEVIATIONS,
    )


DEVIATIONS = [
    "ToyHOI sizes: 256 training sequences, 24 held-out test sequences × 2 samples (spec: 1,200 / 200 × 4), T = 40",
    "networks: d 64, 2 layers, FF 128 (spec's toy: d 128, 3 layers, FF 256), to fit the CPU share of a shared 2-core machine",
    "steps: contact 600, length 50, motion 400, refiner 30 (spec: 600/200/1,200/300), batch 16; motion lr 5e-4 for both arms "
    "(paper 1e-4 over 30,000 steps)",
    "motion features standardised per dimension (N1, MDM's convention; the official code diffuses raw units): in "
    "metres the verb-dependent translations are ~0.2 % of L_simple and 400 steps do not learn them",
    "L_penet on 8 random frames per step during refiner training (all frames at full scale)",
    "the baseline shares the seed's frozen PointNet (trained with the contact VAE)",
    "ablation 'baseline + refiner' not run",
    "checkpoints stored in float16",
]


def main() -> None:
    ap = argparse.ArgumentParser(description="train/evaluate the ToyHOI reproduction")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    r = run(a.out, seeds=a.seeds, sizes=Sizes.tiny() if a.tiny else None, train=a.train)
    print(r.to_json())


if __name__ == "__main__":
    main()

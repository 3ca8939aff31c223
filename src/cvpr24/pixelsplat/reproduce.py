"""pixelSplat at CPU scale: probabilistic depth against direct depth regression.

Lab notebook:

- **Data**: procedural billboard worlds (``scenes.py``): texture periods of 3-8 px at each
  plane's depth (world-unit periods alias on the far plane), near/far from the bounds shim.
- **Claim A** (mechanism, no network): free per-pixel depth distributions (Z=32, 3 samples,
  opacity phi_z/3) against one free disparity per pixel (Z=1, gpp=1, opacity 1, initialised at
  sigmoid(0) like the official ablation); colour fixed to the context pixel; Adam lr 0.05 on
  the MSE of targets 0.25/0.5/0.75; held-out view 0.4. Direct is deterministic, so one run per
  scene serves every seed. Reported beside it, ungated: direct regression started at depth 4
  (mid-scene control) and a constant depth of 4 with no optimisation.
- **Claim B** (feed-forward): ``PixelSplatConfig.cpu()`` (Z=16, gpp=3) against the same
  network with Z=1, gpp=1, trained on 300 fixed scenes at 24 px, batch 2, 2 targets per scene,
  evaluated on 64 held-out scenes at the middle target. Quick mode evaluates the committed
  checkpoints; ``--full`` trains missing ones (resumable) first.
- Thresholds were fixed before any run, from the spec's criteria (section 5, corrections of
  the measured prototype).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cvpr24.common.result import Claim, Measurement, Result
from cvpr24.pixelsplat import optimise
from cvpr24.pixelsplat.scenes import render_example
from cvpr24.pixelsplat.train import (
    EVAL_SEED_BASE,
    build_dataset,
    claim_b_configs,
    depth_errors,
    evaluate,
    load_trained,
    psnr,
    train_synthetic,
)

CLAIMS = [
    "A: sampling Gaussian depths from a predicted distribution (opacity = sampled probability) escapes the "
    "local minima of direct depth regression: better held-out views and context depth (per-scene optimisation)",
    "B: the same holds for a feed-forward network: higher held-out PSNR than the Z=1 ablation, by >= 0.5 dB",
    "B-depth: the probabilistic network has lower disparity error than the Z=1 ablation in every seed",
]

CHECKPOINTS = Path(__file__).parent / "checkpoints" / "claim_b"

# Claim A (spec 5; settings as measured in the prototype)
A_FRACTIONS = (0.0, 1.0, 0.25, 0.5, 0.75, 0.4)  # context 0, 1; targets; held-out view
A_SCENE_SEED = 1000
A_QUICK = dict(size=12, steps=100, scenes=4)  # 24 and 16 px overran 5 min on the shared 2 cores; the spec allows shrinking images
A_FULL = dict(size=32, steps=300, scenes=8)
A_CI_LOWER = 0.0  # the 95 % bootstrap CI of the paired PSNR gain must exclude 0
A_DEPTH_SHARE = 0.70  # prob has the lower depth abs-rel in >= 70 % of (scene, seed) pairs
CONTROL_DEPTH = 4.0  # mid-scene depth for the ungated control and constant baseline

# Claim B (spec 5 with the prototype's corrections: 24 px, batch 2, 800 steps fit the budget)
B_GAP_DB = 0.5  # half of the ~1 dB the paper's own Z=1 ablation lost
B_EVAL_SCENES = 64
B_TARGET = 4  # index of fraction 0.5 in (0, 1, 0.2, 0.35, 0.5, 0.65, 0.8)
B_STEPS = 400
B_GATE_DB = 1.0  # validity: the direct network improved held-out PSNR by >= 1 dB over its initialisation


def bootstrap_ci(values: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _holdout_psnr(field, s, ex, repeats: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    size = tuple(ex["images"].shape[-2:])
    with torch.no_grad():
        vals = [float(psnr(optimise.render(field, s, ex["extrinsics"][5:], ex["intrinsics"][5:], size,
                                           generator=gen)[0], ex["images"][5])) for _ in range(repeats)]
    return float(np.mean(vals))


def _depth(field, s, ex) -> dict[str, float]:
    with torch.no_grad():
        pred = field.argmax_depth(s).view(2, *ex["depths"].shape[-2:])
    return depth_errors(pred, ex["depths"][:2], ex["intrinsics"][0, 0, 0] * ex["images"].shape[-1])


def claim_a(size: int, steps: int, scenes: int, seeds: list[int], figures: Path | None) -> dict:
    rows = []
    curves: dict[str, list] = {"prob": [], "direct": []}
    for i in range(scenes):
        ex = render_example(A_SCENE_SEED + i, size, A_FRACTIONS)
        s = optimise.setup(ex)
        targets = {k: ex[k][2:5] for k in ("images", "extrinsics", "intrinsics")}
        p = size * size
        d_curve: list = []
        direct = optimise.fit(optimise.DirectDepth(p), s, targets, steps, 0, curve=d_curve)
        control = optimise.fit(optimise.DirectDepth.at_depth(s, p, CONTROL_DEPTH), s, targets, steps, 0)
        constant = optimise.DirectDepth.at_depth(s, p, CONTROL_DEPTH)
        curves["direct"].append(d_curve)
        ref = {
            "direct_psnr": _holdout_psnr(direct, s, ex, 1, 0), "direct_depth": _depth(direct, s, ex),
            "control_psnr": _holdout_psnr(control, s, ex, 1, 0), "control_depth": _depth(control, s, ex),
            "constant_psnr": _holdout_psnr(constant, s, ex, 1, 0), "constant_depth": _depth(constant, s, ex),
            "direct_train_gain": d_curve[-1] - d_curve[0],
        }
        for seed in seeds:
            p_curve: list = []
            torch.manual_seed(seed)
            prob = optimise.fit(optimise.ProbabilisticDepth(p), s, targets, steps, seed, curve=p_curve)
            curves["prob"].append(p_curve)
            rows.append({"scene": i, "seed": seed, **ref, "prob_psnr": _holdout_psnr(prob, s, ex, 4, 1000 + seed),
                         "prob_depth": _depth(prob, s, ex)})
            if figures is not None and i == 0 and seed == seeds[0]:
                _figure_claim_a(figures, ex, s, prob, direct, size)
    if figures is not None:
        _figure_curves(figures / "claim_a_curves.png", curves, "Claim A: target-view PSNR while fitting")
    return {"rows": rows}


def _claim_a_claims(rows: list[dict]) -> tuple[list[Claim], list[str]]:
    diff = np.array([r["prob_psnr"] - r["direct_psnr"] for r in rows])
    lo, hi = bootstrap_ci(diff)
    better_depth = np.mean([r["prob_depth"]["absrel"] < r["direct_depth"]["absrel"] for r in rows])
    gate = min(r["direct_train_gain"] for r in rows)
    notes = [
        f"prob PSNR {np.mean([r['prob_psnr'] for r in rows]):.2f} ± {np.std([r['prob_psnr'] for r in rows]):.2f}, "
        f"direct {np.mean([r['direct_psnr'] for r in rows]):.2f}; paired gain {diff.mean():.2f} dB "
        f"[{lo:.2f}, {hi:.2f}]",
        f"depth abs-rel prob {np.median([r['prob_depth']['absrel'] for r in rows]):.3f} / direct "
        f"{np.median([r['direct_depth']['absrel'] for r in rows]):.3f}; disparity error (px) prob "
        f"{np.median([r['prob_depth']['disparity_px'] for r in rows]):.2f} / direct "
        f"{np.median([r['direct_depth']['disparity_px'] for r in rows]):.2f}",
        f"ungated control (direct from depth {CONTROL_DEPTH}): PSNR "
        f"{np.mean([r['control_psnr'] for r in rows]):.2f}, abs-rel "
        f"{np.median([r['control_depth']['absrel'] for r in rows]):.3f}, disparity "
        f"{np.median([r['control_depth']['disparity_px'] for r in rows]):.2f} px",
        f"ungated constant depth {CONTROL_DEPTH}: PSNR {np.mean([r['constant_psnr'] for r in rows]):.2f}, abs-rel "
        f"{np.median([r['constant_depth']['absrel'] for r in rows]):.3f}, disparity "
        f"{np.median([r['constant_depth']['disparity_px'] for r in rows]):.2f} px",
    ]
    if gate <= 0:
        return [Claim.not_tested("A", CLAIMS[0], reason=f"direct regression did not optimise (train-view PSNR "
                                 f"gain {gate:.2f} dB <= 0); the comparison would be void")], notes
    ok = lo > A_CI_LOWER and better_depth >= A_DEPTH_SHARE
    claim = Claim.verdict(
        "A", CLAIMS[0], ok,
        criterion=f"95 % bootstrap CI of paired PSNR gain has lower bound > {A_CI_LOWER} AND prob has lower "
                  f"median depth abs-rel in >= {A_DEPTH_SHARE:.0%} of pairs (spec thresholds, fixed before runs)",
        comparison=f"CI [{lo:.2f}, {hi:.2f}] dB; prob better depth in {better_depth:.0%} of {len(rows)} pairs",
        measured=Measurement.of(diff, "dB"),
        notes="Beats only the official ablation's initialisation (disparity 0.5, which sits near the near "
              "plane); see the ungated control. " + " | ".join(notes))
    return [claim], notes


def claim_b(quick: bool, seeds: list[int], figures: Path | None, steps: int = B_STEPS,
            checkpoints: Path = CHECKPOINTS) -> dict:
    data = None
    per_seed: dict[str, dict] = {}
    histories: dict[str, list] = {"prob": [], "direct": []}
    for seed in seeds:
        for name, cfg in claim_b_configs().items():
            path = checkpoints / f"{name}_seed{seed}.safetensors"
            if not path.is_file():
                if quick:
                    continue
                run_dir = Path.cwd() / "pixelsplat_runs" / f"{name}_seed{seed}"
                train_synthetic(cfg, run_dir, steps=steps, seed=seed)
                path = run_dir / "model.safetensors"
            model, meta = load_trained(path)
            data = data if data is not None else build_dataset(B_EVAL_SCENES, 24, EVAL_SEED_BASE)
            histories[name].append(meta.get("history", {}).get("psnr", []))
            res = evaluate(model, data, B_TARGET, seed=seed)
            entry = {k: v.numpy() for k, v in res.items()}
            if name == "direct":
                torch.manual_seed(seed)
                init = evaluate(type(model)(cfg).eval(), data, B_TARGET, seed=seed)
                entry["init_psnr"] = init["psnr"].numpy()
            per_seed[f"{name}_{seed}"] = entry
    if figures is not None and histories["prob"]:
        _figure_curves(figures / "claim_b_curves.png", histories, "Claim B: training PSNR (2 targets/step)")
    return per_seed


def _claim_b_claims(per_seed: dict, seeds: list[int]) -> list[Claim]:
    done = [s for s in seeds if f"prob_{s}" in per_seed and f"direct_{s}" in per_seed]
    if len(done) < 3:
        reason = (f"trained checkpoints exist for seeds {done} only; the criterion needs 3 seeds "
                  f"(run `cvpr24 reproduce pixelsplat --full` to train them)")
        return [Claim.not_tested("B", CLAIMS[1], reason=reason), Claim.not_tested("B-depth", CLAIMS[2],
                                                                                 reason=reason)]
    gains = [float(per_seed[f"prob_{s}"]["psnr"].mean() - per_seed[f"direct_{s}"]["psnr"].mean()) for s in done]
    gate = [float(per_seed[f"direct_{s}"]["psnr"].mean() - per_seed[f"direct_{s}"]["init_psnr"].mean())
            for s in done]
    table = "; ".join(
        f"seed {s}: prob {per_seed[f'prob_{s}']['psnr'].mean():.2f} / direct {per_seed[f'direct_{s}']['psnr'].mean():.2f}"
        f" dB, disparity {np.median(per_seed[f'prob_{s}']['disparity_px']):.2f} / "
        f"{np.median(per_seed[f'direct_{s}']['disparity_px']):.2f} px, abs-rel "
        f"{np.median(per_seed[f'prob_{s}']['absrel']):.3f} / {np.median(per_seed[f'direct_{s}']['absrel']):.3f}"
        for s in done)
    if min(gate) < B_GATE_DB:
        reason = f"the Z=1 network did not learn (held-out gain over its initialisation {gate} dB < {B_GATE_DB})"
        return [Claim.not_tested("B", CLAIMS[1], reason=reason), Claim.not_tested("B-depth", CLAIMS[2],
                                                                                 reason=reason)]
    ok = all(g > 0 for g in gains) and float(np.mean(gains)) >= B_GAP_DB
    b = Claim.verdict(
        "B", CLAIMS[1], ok,
        criterion=f"prob beats direct in all {len(done)} seeds (paired) AND mean gap >= {B_GAP_DB} dB (half of the "
                  "paper's ~1 dB ablation loss; fixed before runs)",
        comparison=f"gaps {', '.join(f'{g:+.2f}' for g in gains)} dB; mean {np.mean(gains):+.2f}",
        measured=Measurement.of(gains, "dB"), notes=f"{B_EVAL_SCENES} held-out scenes. {table}")
    disp = [float(np.median(per_seed[f"direct_{s}"]["disparity_px"]) - np.median(per_seed[f"prob_{s}"]["disparity_px"]))
            for s in done]
    bd = Claim.compare("B-depth", CLAIMS[2], disp, ">", 0.0, statistic="all", unit="px",
                       reason="disparity error of direct minus prob, per seed; the geometry half of the claim")
    return [b, bd]


def _figure_curves(path: Path, curves: dict[str, list], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, colour in (("prob", "tab:blue"), ("direct", "tab:orange")):
        for j, c in enumerate(curves.get(name, [])):
            if len(c):
                k = max(1, len(c) // 40)
                smooth = np.convolve(c, np.ones(k) / k, mode="valid")
                ax.plot(smooth, color=colour, alpha=0.6, label=name if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figure_claim_a(out: Path, ex, s, prob, direct, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        dp, dd = prob.argmax_depth(s)[0].view(size, size), direct.argmax_depth(s)[0].view(size, size)
        gen = torch.Generator().manual_seed(0)
        rp = optimise.render(prob, s, ex["extrinsics"][5:], ex["intrinsics"][5:], (size, size), generator=gen)[0]
        rd = optimise.render(direct, s, ex["extrinsics"][5:], ex["intrinsics"][5:], (size, size))[0]
        phi = prob.logits.softmax(-1)[0].view(size, size, -1)[size // 2]  # [W, Z] along the middle row
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    vmax = float(ex["depths"][0].max())
    for ax, img, title in zip(axes, (ex["depths"][0], dp, dd), ("GT depth", "prob (argmax)", "direct"), strict=True):
        ax.imshow(img.numpy(), vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "claim_a_depth.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, img, title in zip(axes, (ex["images"][5], rp, rd), ("held-out GT", "prob", "direct"), strict=True):
        ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "claim_a_views.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.imshow(phi.T.numpy(), aspect="auto", origin="lower", cmap="magma")
    gt_r = ((1 / ex["depths"][0, size // 2] - 1 / s.far[0]) / (1 / s.near[0] - 1 / s.far[0]))
    ax.plot(np.arange(size), (1 - gt_r.numpy()) * phi.shape[-1] - 0.5, "c.", label="ground-truth bucket")
    ax.set_xlabel("pixel along the middle row")
    ax.set_ylabel("bucket z")
    ax.set_title("phi after fitting (prob, context view 0)")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "claim_a_phi_scanline.png", dpi=100)
    plt.close(fig)


def run(out_dir: Path, quick: bool = True, seeds: int | None = None) -> Result:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    seed_list = list(range(seeds if seeds is not None else 3))
    cfg_a = A_QUICK if quick else A_FULL
    a = claim_a(cfg_a["size"], cfg_a["steps"], cfg_a["scenes"], seed_list, out_dir)
    claims, _ = _claim_a_claims(a["rows"])
    b = claim_b(quick, seed_list, out_dir)
    claims += _claim_b_claims(b, seed_list)
    figures = sorted(p.name for p in out_dir.glob("*.png"))
    return Result(
        "pixelsplat", claims=claims, mode="quick" if quick else "full", seeds=seed_list,
        wall_time_s=time.time() - start, figures=figures,
        deviations=[
            "CPU scale: billboard scenes at 24-32 px instead of RealEstate10k at 256 px; Claim B uses the cpu() "
            "preset (tiny CNN backbone, 1 epipolar layer) and 400 training steps (the spec's 3,000 at 32 px do not "
            "fit the budget)",
            "Claim A full mode uses 8 scenes x 3 seeds at 32 px, 300 steps (as measured feasible), not 5 seeds",
            "Claim B checkpoints are stored in float16 and evaluated as stored",
            "The scene generator omits the spec's random global scale: baseline normalisation removes it exactly",
        ],
    )

"""Is the reproduction's testbed fit to judge the claims? (docs/sag.md, "Testbed diagnostics")

Two measurements on a trained ShapesWorld model, with the reproduction's protocol:

1. **When is each detail decided?** Under baseline CFG, the clean-image prediction ``x0_hat``
   of every DDIM step is read by the same probes as the final sample. The *agreement* at a
   step is the fraction of samples whose background (or identity) read from ``x0_hat``
   already equals the final one. A detail has *settled* at the first step from which the
   agreement stays >= ``SETTLE_AGREEMENT``. The paper's schedule relies on identity detail
   settling later than layout and background, as fine detail does in SD.
2. **How many subjects does a verdict need?** Per-subject accuracies of the baseline, SAG
   (``--T``) and constant mixing on the reproduction's validation subjects (to check a new
   model before any claim is judged) or its test subjects (afterwards); bootstrap CIs over
   those subjects; and, for random draws of ``n`` of them, how often the precondition and the
   claims' criteria would hold.

Run with ``python -m cvpr24.sag.testbed --out DIR [--subjects validation|test] [--T 0.6]``
(resumable: finished seeds are kept in ``DIR/testbed.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import atomic_path, atomic_write
from cvpr24.sag.guidance import SAGSchedule
from cvpr24.sag.reproduce import (
    C1_BG_GAIN_MIN,
    C1_ID_SLACK,
    C2_ID_MARGIN,
    PRE_BASELINE_BG_MAX,
    PRE_BASELINE_ID_MIN,
    ReproConfig,
    make_episode,
    split_subjects,
)
from cvpr24.sag.shapes import ALL_SUBJECTS, Subject, background_of
from cvpr24.sag.tiny import ProbeClassifier, ShapesELITE, sample_sag
from cvpr24.sag.train import DEFAULT_CHECKPOINT, load_tiny

SETTLE_AGREEMENT = 0.9  # "decided": 90% of samples already read as they will end
SETTLE_KEYS = ("background", "identity", "identity detail", "shape+colour")


def arms(t_sag: float) -> dict[str, SAGSchedule]:
    """Baseline CFG, SAG at ``T = t_sag`` and constant mixing ``w_t = -0.5``."""
    return {"baseline": SAGSchedule(T=1.0, r=0.0), "SAG": SAGSchedule(T=t_sag, r=0.0),
            "const m=-0.5": SAGSchedule(T=1.0, r=-0.5)}


@torch.no_grad()
def run_seed(model: ShapesELITE, probe: ProbeClassifier, cfg: ReproConfig, seed: int, t_sag: float,
             subjects: list[Subject]) -> dict:
    """One seed over ``subjects``: per-sample correctness of each arm and the baseline's
    per-step agreement of ``x0_hat`` with the final sample."""
    ep = make_episode(model, subjects, cfg.targets, cfg.samples, seed=seed)
    labels = torch.tensor([[s.shape, s.colour, s.texture] for s in ep.subjects])
    out: dict = {"subject": [ALL_SUBJECTS.index(s) for s in ep.subjects]}
    for name, sched in arms(t_sag).items():
        steps_read: list[tuple[float, torch.Tensor, torch.Tensor]] = []

        def read(i: int, t: float, x0: torch.Tensor, keep: list = steps_read) -> None:
            keep.append((t, background_of(x0), probe.predict(x0)))

        imgs = sample_sag(model, ep.ctx_cond, ep.ctx_agnostic, ep.ctx_null, sched, w=cfg.w, steps=cfg.steps,
                          noise=ep.noise, on_step=read if name == "baseline" else None)
        bg, pred = background_of(imgs), probe.predict(imgs)
        out[name] = {"background": (bg == ep.target_bg).int().tolist(),
                     "identity": (pred == labels).all(1).int().tolist()}
        if name == "baseline":
            out["settle"] = {
                "t": [t for t, _, _ in steps_read],
                "background": [float((b == bg).float().mean()) for _, b, _ in steps_read],
                "identity": [float((p == pred).all(1).float().mean()) for _, _, p in steps_read],
                "identity detail": [float((p[:, 2] == pred[:, 2]).float().mean()) for _, _, p in steps_read],
                "shape+colour": [float((p[:, :2] == pred[:, :2]).all(1).float().mean()) for _, _, p in steps_read],
            }
    return out


def settle_time(ts: list[float], agreement: list[float], level: float = SETTLE_AGREEMENT) -> float:
    """Diffusion time of the first step from which the agreement stays >= ``level``."""
    for i in range(len(ts)):
        if all(a >= level for a in agreement[i:]):
            return ts[i]
    return 0.0


def per_subject(seed_runs: list[dict], n_subjects: int) -> dict[str, dict[str, np.ndarray]]:
    """Accuracy per subject (mean over seeds, targets and samples), arm -> metric -> (S,)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for arm in ("baseline", "SAG", "const m=-0.5"):
        for key in ("background", "identity"):
            hits, counts = np.zeros(n_subjects), np.zeros(n_subjects)
            for r in seed_runs:
                np.add.at(hits, r["subject"], r[arm][key])
                np.add.at(counts, r["subject"], 1)
            out.setdefault(arm, {})[key] = hits / np.maximum(counts, 1)
    return out


def verdicts(ps: dict[str, dict[str, np.ndarray]], idx: np.ndarray) -> dict[str, float]:
    """The precondition's and claims' numbers on the subjects ``idx`` (one seed-pooled draw)."""
    m = {arm: {k: float(v[idx].mean()) for k, v in d.items()} for arm, d in ps.items()}
    base, sag, const = m["baseline"], m["SAG"], m["const m=-0.5"]
    return {
        "baseline background": base["background"], "baseline identity": base["identity"],
        "SAG background gain": sag["background"] - base["background"],
        "SAG identity drop": base["identity"] - sag["identity"],
        "SAG - const identity": sag["identity"] - const["identity"],
        "precondition": float(base["background"] <= PRE_BASELINE_BG_MAX and base["identity"] >= PRE_BASELINE_ID_MIN),
        "C1 criterion": float(sag["background"] - base["background"] >= C1_BG_GAIN_MIN
                              and base["identity"] - sag["identity"] <= C1_ID_SLACK),
        "C2 criterion": float(sag["identity"] - const["identity"] >= C2_ID_MARGIN),
    }


CRITERIA = ("precondition", "C1 criterion", "C2 criterion")


def bootstrap(ps: dict, subjects: np.ndarray, draws: int = 2000, seed: int = 0) -> dict[str, list[float] | float]:
    """Resampling ``subjects`` with replacement: 95% percentile CIs of :func:`verdicts`'
    numbers, and for each pass/fail criterion the fraction of draws in which it holds."""
    rng = np.random.default_rng(seed)
    samples = [verdicts(ps, rng.choice(subjects, len(subjects))) for _ in range(draws)]
    return {k: float(np.mean([s[k] for s in samples])) if k in CRITERIA
            else [float(np.percentile([s[k] for s in samples], q)) for q in (2.5, 97.5)] for k in samples[0]}


def subset_sensitivity(ps: dict, subjects: np.ndarray, sizes: tuple[int, ...], draws: int = 2000,
                       seed: int = 0) -> dict[int, dict[str, float]]:
    """For random draws of ``n`` distinct subjects: how often each criterion holds."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        v = [verdicts(ps, rng.choice(subjects, n, replace=False)) for _ in range(draws)]
        out[n] = {k: float(np.mean([x[k] for x in v])) for k in CRITERIA}
    return out


def save_settle_figure(path: Path, seed_runs: list[dict], settle: dict[str, float], t_sag: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ts = seed_runs[0]["settle"]["t"]
    styles = {"background": ("o-", "C0"), "identity": ("s-", "C1"), "identity detail": ("^--", "C2"),
              "shape+colour": ("v:", "C3")}
    for key in SETTLE_KEYS:
        style, colour = styles[key]
        ax.plot(ts, np.mean([r["settle"][key] for r in seed_runs], 0), style, color=colour,
                label=f"{key} (settles at t = {settle[key]:.2f})")
        ax.axvline(settle[key], color=colour, lw=0.8, ls=":")
    ax.axvspan(1.0, t_sag, color="grey", alpha=0.12, label=f"SAG guides by c0 alone (t > T = {t_sag:g})")
    ax.axhline(SETTLE_AGREEMENT, color="grey", lw=0.8)
    ax.invert_xaxis()
    ax.set_xlabel("diffusion time t of the DDIM step (1 = noise; sampling runs left to right)")
    ax.set_ylabel("fraction of samples already read as final")
    ax.set_title("baseline CFG: when is each detail decided? (identity detail = the centre spot)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cvpr24.sag.testbed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2, help="samples per (subject, target background)")
    ap.add_argument("--T", type=float, default=0.6, help="SAG's T (the reproduction's T*)")
    ap.add_argument("--subjects", choices=("validation", "test"), default="validation",
                    help="the reproduction's validation subjects (check a new model before its claims are judged) "
                         "or its test subjects (after)")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        ap.error(f"--checkpoint: no such file {args.checkpoint}")
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "testbed.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"runs": {}}
    cfg = ReproConfig.quick()
    cfg.samples = args.samples
    val, test = split_subjects(cfg.val_subjects, cfg.test_subjects)
    chosen = val if args.subjects == "validation" else test
    if state.setdefault("subjects", args.subjects) != args.subjects:
        ap.error(f"--subjects: {args.out} holds runs on the {state['subjects']} subjects")
    model, probe, _ = load_tiny(args.checkpoint)
    for seed in range(args.seeds):
        if str(seed) in state["runs"]:
            continue
        state["runs"][str(seed)] = run_seed(model, probe, cfg, seed=seed, t_sag=args.T, subjects=chosen)
        with atomic_write(state_path) as f:
            json.dump(state, f)
        print(f"seed {seed} done", flush=True)
    runs = [state["runs"][k] for k in sorted(state["runs"])]
    ps = per_subject(runs, len(ALL_SUBJECTS))
    subjects = np.array([ALL_SUBJECTS.index(s) for s in chosen])
    settle = {key: settle_time(runs[0]["settle"]["t"], np.mean([r["settle"][key] for r in runs], 0).tolist())
              for key in SETTLE_KEYS}
    summary = {
        "protocol": {"seeds": len(runs), "subjects": f"{len(subjects)} ({args.subjects})", "targets": cfg.targets,
                     "samples": cfg.samples, "steps": cfg.steps, "w": cfg.w, "SAG T": args.T},
        "settle agreement per step (mean over seeds, all subjects)": {
            "t": runs[0]["settle"]["t"],
            **{key: np.mean([r["settle"][key] for r in runs], 0).round(4).tolist() for key in SETTLE_KEYS}},
        "all subjects": verdicts(ps, subjects),
        "per seed": [verdicts(per_subject([r], len(ALL_SUBJECTS)), subjects) for r in runs],
        "per subject": {ALL_SUBJECTS[i].name: {arm: {k: float(v[i]) for k, v in d.items()} for arm, d in ps.items()}
                        for i in subjects},
        "bootstrap over subjects (95% CI; criteria: share of draws that pass)": bootstrap(ps, subjects),
        "subset sensitivity": subset_sensitivity(ps, subjects, (6, 12, 24, 36)),
        f"settle time (agreement >= {SETTLE_AGREEMENT})": settle,
    }
    save_settle_figure(args.out / "settle.png", runs, settle, args.T)
    with atomic_write(args.out / "summary.json") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Claim B of ``cvpr24 reproduce pixelsplat`` at a longer schedule (default 1,600 steps).

Same networks, data, recipe and pass criterion as the committed 400-step Claim B
(``cvpr24.pixelsplat.reproduce``); only the number of steps changes. Trains seed by seed,
the probabilistic network then the Z=1 ablation, each resumable from
``OUT/{prob,direct}_seed{S}/state.pt`` (saved every 50 steps: stop it any time and run the
same command again), copies finished models to ``OUT/checkpoints/``, then evaluates whatever
is finished: per seed the held-out PSNR gap with a paired bootstrap CI over the 64 scenes,
and the verdict of the threshold fixed in ``reproduce.py`` once 3 seeds are done.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/pixelsplat_claim_b_long.py \\
        --steps 1600 --seeds 0 1 2 --out runs/claim_b_1600
    .venv/bin/python scripts/pixelsplat_claim_b_long.py --out runs/claim_b_1600 --evaluate-only
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from cvpr24.pixelsplat import reproduce
from cvpr24.pixelsplat.train import claim_b_configs, train_synthetic


def train(out: Path, steps: int, seeds: list[int]) -> None:
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name, cfg in claim_b_configs().items():
            if (checkpoints / f"{name}_seed{seed}.safetensors").is_file():
                continue
            run_dir = out / f"{name}_seed{seed}"
            train_synthetic(cfg, run_dir, steps=steps, seed=seed, show_progress=False)
            for suffix in (".safetensors", ".json"):  # weights and their sidecar
                shutil.copy(run_dir / f"model{suffix}", checkpoints / f"{name}_seed{seed}{suffix}")
            print(f"trained {name} seed {seed} ({steps} steps)", flush=True)


def evaluate(out: Path) -> None:
    checkpoints = out / "checkpoints"
    seeds = sorted({int(p.stem.rsplit("seed", 1)[1]) for p in checkpoints.glob("*_seed*.safetensors")})
    per_seed = reproduce.claim_b(True, seeds, None, checkpoints=checkpoints)
    for s in seeds:
        if f"prob_{s}" not in per_seed or f"direct_{s}" not in per_seed:
            print(f"seed {s}: only {[k for k in per_seed if k.endswith(f'_{s}')]} finished")
            continue
        prob, direct = per_seed[f"prob_{s}"], per_seed[f"direct_{s}"]
        gap = prob["psnr"] - direct["psnr"]
        lo, hi = reproduce.bootstrap_ci(gap)
        print(f"seed {s}: PSNR prob {prob['psnr'].mean():.2f} / direct {direct['psnr'].mean():.2f} "
              f"(direct at init {direct['init_psnr'].mean():.2f}); gap {gap.mean():+.2f} dB [{lo:+.2f}, {hi:+.2f}] "
              f"over {len(gap)} scenes; disparity {np.median(prob['disparity_px']):.2f} / "
              f"{np.median(direct['disparity_px']):.2f} px")
    for claim in reproduce._claim_b_claims(per_seed, seeds):
        print(f"{claim.name}: {claim.status} ({claim.comparison or claim.notes})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/claim_b_1600"), help="run folder (resumes from it)")
    ap.add_argument("--steps", type=int, default=1600, help="training steps per network (default 1600)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, trained in this order")
    ap.add_argument("--evaluate-only", action="store_true", help="evaluate the finished networks, train nothing")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    torch.set_num_threads(1)
    if not args.evaluate_only:
        train(args.out, args.steps, args.seeds)
    evaluate(args.out)


if __name__ == "__main__":
    main()

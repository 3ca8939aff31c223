"""Acceptance of ``recommend_binning`` (issue 19): 40 generated 64 x 64 x 512 cubes.

Signal 2-50 photons per pixel, background fractions 0-0.5, depth edges; for each cube the
Monte Carlo RMSE of every bin factor (3 repeats) against the advice from one cube. Prints the
table and writes JSON (default ``benchmarks/results/lidar_binning.json``).

    python benchmarks/lidar_binning.py [--cases 40] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cvpr24.common import atomic_write
from cvpr24.lidar.acceptance import CHOICE_TOL, PRED_TOL, cases, run_case, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/lidar_binning.json")
    args = ap.parse_args()
    start = time.perf_counter()
    results = []
    print("| seed | signal/px | bg frac | MC RMSE (cm) per factor 1,2,4,8,16 | predicted (cm) | "
          "chosen | MC best | chosen/best | pred/meas | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed, signal, bgf in cases(args.cases, args.seed):
        r = run_case(seed, signal, bgf)
        results.append(r)
        meas = ", ".join(f"{100 * v:.2f}" for v in r.measured_rmse_m)
        pred = ", ".join(f"{100 * v:.2f}" for v in r.predicted_rmse_m)
        print(f"| {seed} | {signal:.1f} | {bgf:.2f} | {meas} | {pred} | {r.chosen} | {r.best} | "
              f"{r.choice_ratio:.3f} | {r.prediction_ratio:.2f} | {'yes' if r.ok else 'NO'} |", flush=True)
    s = summary(results)
    s["seconds"] = time.perf_counter() - start
    print(f"\nchosen within {CHOICE_TOL:.0%} of the MC best: {s['choice_ok']:.0%}; prediction within "
          f"{PRED_TOL:.0%}: {s['prediction_ok']:.0%}; both: {s['both_ok']:.0%}; worst chosen/best "
          f"{s['worst_choice_ratio']:.3f}; pred/meas {s['prediction_ratio_range'][0]:.2f}-"
          f"{s['prediction_ratio_range'][1]:.2f} ({s['seconds']:.0f} s)")
    with atomic_write(Path(args.out)) as f:
        json.dump(s, f, indent=2)


if __name__ == "__main__":
    main()

"""LOTUS benchmarks (spec section 7): step overhead, vectorised focusing, all-code evaluation, NC.

    python benchmarks/lotus.py [--out benchmarks/results/lotus.json] [--repeats 15]

Prints one table per benchmark with ratios, and writes every number to JSON. Targets:
a LOTUS poisoning step at most 1.5x a clean step at the same batch; the vectorised
trigger-focusing batch at least 20x faster than the per-sample loop, with identical output.

The compared arms are timed interleaved (A B A B ..., order reversed every other repeat), so
load from other processes hits them alike; a ratio is taken per repeat and its median and
spread (min-max over repeats) are reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from cvpr24.common.io import atomic_write
from cvpr24.common.timing import best_time
from cvpr24.lotus.attack import (
    LotusConfig,
    poison_batch,
    reference_trigger_focus_batch,
    trigger_focus_batch,
)
from cvpr24.lotus.data import random_crop_flip, synthetic_shapes
from cvpr24.lotus.defenses import neural_cleanse
from cvpr24.lotus.metrics import asr_par
from cvpr24.lotus.models import SmallCNN, replace_head
from cvpr24.lotus.partition import ConstantPartitioner, SurrogatePartitioner
from cvpr24.lotus.triggers import TriggerSet


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(arms: dict[str, tuple[Callable[[], object], int]], repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each arm ``name: (fn, calls per timing)``, one value per repeat.

    Within a repeat the arms run one after the other (order reversed every other repeat), so a
    change of machine load between repeats shifts every arm of that repeat alike.
    """
    for fn, _ in arms.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(repeats):
        for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            fn, n = arms[name]
            gc.collect()
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t) / n)
    return times


def ratio_stats(num: list[float], den: list[float]) -> dict:
    """Median and min-max of the per-repeat ratios ``num / den``."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "per_repeat": r}


def bench_step(repeats: int, batch: int = 128) -> dict:
    """One optimisation step: clean vs label-specific BadNets vs LOTUS (same other-class batch)."""
    d = synthetic_shapes(60, seed=0)
    x, y = d.x, d.y
    oth, vic = x[y != 0][:batch], x[y == 0]
    yo = y[y != 0][:batch]
    cfg = LotusConfig.cpu(batch_size=batch)
    v = max(batch // 9, cfg.min_victim)
    model = SmallCNN()
    sur = replace_head(SmallCNN(), 14).eval()
    part = SurrogatePartitioner.from_surrogate(sur, 10, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    ts4, ts1 = TriggerSet(4, 16), TriggerSet(1, 16)

    def train_on(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def clean_step():
        train_on(random_crop_flip(oth, cfg.pad, True, g), yo)

    def lotus_step(triggers, partitioner, n_indi, n_comb):
        c = LotusConfig.cpu(batch_size=batch, n_indi=n_indi, n_comb=n_comb)
        pick = torch.randperm(len(vic), generator=g)[:2 * v]
        train_on(*poison_batch(oth, yo, vic[pick], partitioner, triggers, c, victim=0, target=9, generator=g))

    t = interleaved({"clean": (clean_step, 1),
                     "badnets": (lambda: lotus_step(ts1, ConstantPartitioner(), 0, 0), 1),
                     "lotus": (lambda: lotus_step(ts4, part, 3, 1), 1)}, repeats)
    n_lotus = batch + 2 * v + 3 + 1 + int(0.05 * batch)
    return {"batch": batch, "v": v, "lotus_batch_images": n_lotus,
            **{f"{a}_s": statistics.median(t[a]) for a in t},
            "lotus_over_clean": ratio_stats(t["lotus"], t["clean"]),
            "badnets_over_clean": ratio_stats(t["badnets"], t["clean"]), "image_ratio": n_lotus / batch}


def _seeded(fn, x, p, ts, kw):
    return fn(x, p, ts, generator=torch.Generator().manual_seed(1), **kw)


def bench_focus(repeats: int) -> list[dict]:
    """Vectorised ``trigger_focus_batch`` vs the per-sample reference loop (identical output)."""
    rows = []
    for k in (2, 4, 8):
        ts = TriggerSet(k, 32)
        for v in (14, 64, 256):
            x = torch.rand(v, 3, 32, 32)
            p = torch.randint(0, k, (v,), generator=torch.Generator().manual_seed(v))
            kw = dict(victim=0, target=9, n_indi=3, n_comb=1)
            a = trigger_focus_batch(x, p, ts, generator=torch.Generator().manual_seed(1), **kw)
            b = reference_trigger_focus_batch(x, p, ts, generator=torch.Generator().manual_seed(1), **kw)
            same = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            fast, loop = partial(_seeded, trigger_focus_batch, x, p, ts, kw), \
                partial(_seeded, reference_trigger_focus_batch, x, p, ts, kw)
            n_loop = max(1, 2000 // (v * k))         # about 10-30 ms per timing of either arm
            t = interleaved({"vectorised": (fast, 25 * n_loop), "loop": (loop, n_loop)}, repeats)
            rows.append({"k": k, "v": v, "vectorised_s": statistics.median(t["vectorised"]),
                         "loop_s": statistics.median(t["loop"]),
                         "speedup": ratio_stats(t["loop"], t["vectorised"]), "identical": same})
    return rows


def bench_codes(repeats: int) -> list[dict]:
    """ASR_par over all 2^K - 1 codes: cost grows exponentially in K."""
    model = SmallCNN().eval()
    rows = []
    x = torch.rand(50, 3, 16, 16)
    for k in range(2, 8):
        ts = TriggerSet(k, 16)
        p = torch.arange(50) % k
        t = best_time(partial(asr_par, model, x, p, ts, 9), max(1, repeats // 2), warmup=1)
        rows.append({"k": k, "codes": 2**k - 1, "seconds": t})
    return rows


def bench_nc(steps: int = 20) -> list[dict]:
    """Neural Cleanse seconds per candidate label vs samples and image size, with / without mkldnn."""
    rows = []
    for size in (16, 32):
        for n in (100, 200):
            for mkldnn in (True, False):
                torch.backends.mkldnn.enabled = mkldnn
                x = torch.rand(n, 3, size, size)
                rep = neural_cleanse(SmallCNN(), x, labels=[1, 2], steps=steps, early_stop_patience=steps,
                                     seed=0)
                rows.append({"image_size": size, "samples": n, "mkldnn": mkldnn,
                             "seconds_per_label_per_1000_steps": rep.seconds / (2 * steps) * 1000})
    torch.backends.mkldnn.enabled = True
    return rows


PARTS = ["step", "focus", "codes", "nc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/lotus.json")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="benchmarks to run (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = False
    res = {"threads": args.threads, "torch": torch.__version__}

    if "step" in args.only:
        res["step"] = s = bench_step(args.repeats)
        print(f"\n== poisoning step, batch {s['batch']} (v = {s['v']}, LOTUS batch {s['lotus_batch_images']} "
              f"images = {s['image_ratio']:.2f}x)")
        print(f"{'clean':>10} {'BadNets':>10} {'LOTUS':>10} {'LOTUS/clean (min-max)':>22} {'BadNets/clean':>14}")
        lo, bo = s["lotus_over_clean"], s["badnets_over_clean"]
        print(f"{s['clean_s'] * 1e3:9.1f}ms {s['badnets_s'] * 1e3:9.1f}ms {s['lotus_s'] * 1e3:9.1f}ms "
              f"{lo['median']:8.2f}x ({lo['min']:.2f}-{lo['max']:.2f}) {bo['median']:13.2f}x"
              "   (medians of per-repeat ratios; target LOTUS/clean <= 1.5)")
        res["step_rss_mb"] = peak_rss_mb()

    if "focus" in args.only:
        res["focus"] = rows = bench_focus(args.repeats)
        print("\n== trigger_focus_batch: vectorised vs per-sample loop (32x32)")
        print(f"{'K':>3} {'v':>5} {'vectorised':>11} {'loop':>10} {'speedup':>8} {'(min-max)':>13} {'identical':>10}")
        for r in rows:
            sp = r["speedup"]
            print(f"{r['k']:>3} {r['v']:>5} {r['vectorised_s'] * 1e3:9.3f}ms {r['loop_s'] * 1e3:8.2f}ms "
                  f"{sp['median']:7.1f}x {sp['min']:6.1f}-{sp['max']:<6.1f} {r['identical']!s:>10}")
        print(f"   (medians over {args.repeats} interleaved repeats; target: >= 20x, identical output)")

    if "codes" in args.only:
        res["codes"] = rows = bench_codes(args.repeats)
        print("\n== ASR_par over all codes, 50 victims 16x16")
        print("   " + "  ".join(f"K={r['k']}: {r['seconds'] * 1e3:.0f}ms ({r['codes']} codes)" for r in rows))

    if "nc" in args.only:
        res["nc"] = rows = bench_nc()
        print("\n== Neural Cleanse, seconds per label per 1000 steps (SmallCNN)")
        for r in rows:
            print(f"   {r['image_size']}x{r['image_size']}, {r['samples']} samples, mkldnn {r['mkldnn']!s:5}: "
                  f"{r['seconds_per_label_per_1000_steps']:.1f} s")
    res["peak_rss_mb"] = peak_rss_mb()
    print(f"\npeak RSS {res['peak_rss_mb']:.0f} MB")
    out = Path(args.out)
    with atomic_write(out) as f:
        json.dump(res, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

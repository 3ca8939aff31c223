"""Cutie benchmarks (spec section 7), arms interleaved and repeated; ratios printed.

    python benchmarks/cutie.py [--height 480 --width 854] [--repeats 3] [--long-frames 300]
                               [--out benchmarks/results/cutie.json]

1. Per-frame latency of Cutie-small / Cutie-base (random weights) vs the same model with
   L = 0 (pixel-only reader): the object transformer's share of a frame. Target: <= 25%.
2. Scaling in the number of objects K (1, 2, 4, 8): time should grow ~linearly in K.
3. Memory over a long video: working-memory-only (FIFO) vs long-term memory: tokens held and
   peak RSS stay bounded; object memory size is constant.
4. Training seconds per iteration of the CPU preset (B=4, T=5) for L = 0 vs L = 2.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from cvpr24.common.io import atomic_write
from cvpr24.cutie.inference import InferenceConfig, LongTermConfig, VideoSegmenter
from cvpr24.cutie.model import CutieConfig, CutieModel


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mask(h: int, w: int, k: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.long)
    for i in range(k):
        y, x = (i // 4) * h // 3, (i % 4) * w // 4
        m[y + 4 : y + h // 4, x + 4 : x + w // 5] = i + 1
    return m


def frame_time(model, h, w, k=2, frames=3, cfg=None) -> float:
    """Mean seconds per propagated frame (after the first-frame mask)."""
    g = torch.Generator().manual_seed(0)
    video = torch.rand(frames + 1, 3, h, w, generator=g)
    seg = VideoSegmenter(model, cfg or InferenceConfig(max_internal_size=-1))
    seg.step(video[0], _mask(h, w, k))
    t = time.perf_counter()
    for f in video[1:]:
        seg.step(f)
    return (time.perf_counter() - t) / frames


def bench_latency(h, w, repeats):
    rows = []
    for name, cfg in (("small", CutieConfig.small()), ("base", CutieConfig.base())):
        torch.manual_seed(0)
        full = CutieModel(cfg).eval()
        pixel = CutieModel(CutieConfig(**{**cfg.__dict__, "num_blocks": 0})).eval()
        best = {"L=3": float("inf"), "L=0": float("inf")}
        for _ in range(repeats):  # interleaved
            best["L=3"] = min(best["L=3"], frame_time(full, h, w))
            best["L=0"] = min(best["L=0"], frame_time(pixel, h, w))
        share = 1 - best["L=0"] / best["L=3"]
        rows.append(
            {
                "model": name,
                "size": f"{h}x{w}",
                "s_per_frame_L3": best["L=3"],
                "s_per_frame_L0": best["L=0"],
                "ratio_L3_over_L0": best["L=3"] / best["L=0"],
                "object_transformer_share": share,
            }
        )
        print(
            f"{name:>5} {h}x{w}: L=3 {best['L=3']:.3f} s/frame, L=0 {best['L=0']:.3f} s/frame, "
            f"ratio {best['L=3'] / best['L=0']:.2f}, object-transformer share {100 * share:.1f}%"
        )
    return rows


def bench_objects(repeats):
    torch.manual_seed(0)
    model = CutieModel(CutieConfig.small()).eval()
    times = {}
    for _ in range(repeats):
        for k in (1, 2, 4, 8):
            times[k] = min(times.get(k, float("inf")), frame_time(model, 240, 432, k=k, frames=2))
    for k, t in times.items():
        print(f"K={k}: {t:.3f} s/frame ({t / times[1]:.2f}x K=1)")
    return {str(k): t for k, t in times.items()}


def bench_long_video(frames, h, w):
    torch.manual_seed(0)
    model = CutieModel(CutieConfig.cpu()).eval()
    out = {}
    lt = LongTermConfig(
        max_mem_frames=10, min_mem_frames=5, num_prototypes=128, max_num_tokens=10000
    )
    arms = {
        "working (FIFO, 5 frames)": InferenceConfig(max_internal_size=-1),
        "no eviction (max_mem_frames=10**6)": InferenceConfig(
            max_internal_size=-1, max_mem_frames=10**6
        ),
        "long-term": InferenceConfig(max_internal_size=-1, use_long_term=True, long_term=lt),
    }
    g = torch.Generator().manual_seed(0)
    for name, cfg in arms.items():
        seg = VideoSegmenter(model, cfg)
        seg.step(torch.rand(3, h, w, generator=g), _mask(h, w, 2))
        sizes, t0 = [], time.perf_counter()
        for _ in range(frames - 1):
            seg.step(torch.rand(3, h, w, generator=g))
            sizes.append(seg.memory_tokens())
        out[name] = {
            "max_tokens": max(s["working"] + s["long_term"] for s in sizes),
            "final": sizes[-1],
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
        }
        print(
            f"{name:>36}: max memory tokens {out[name]['max_tokens']}, final {sizes[-1]}, "
            f"{out[name]['seconds']:.1f} s, peak RSS so far {peak_rss_mb():.0f} MB"
        )
    return out


def bench_training(repeats):
    from cvpr24.cutie.reproduce import variant_config
    from cvpr24.cutie.train import TrainConfig, iterate_batches, train

    res = {}
    for _ in range(repeats):
        for variant in ("pixel", "object"):
            torch.manual_seed(0)
            model = CutieModel(variant_config(variant))
            cfg = TrainConfig.cpu(iterations=3)
            batches = iterate_batches(0, cfg)
            cache = {s: batches(s) for s in range(3)}  # exclude data generation
            t = time.perf_counter()
            train(model, cfg, cache.__getitem__)
            res[variant] = min(res.get(variant, float("inf")), (time.perf_counter() - t) / 3)
    print(
        f"training s/iteration (B=4, T=5): L=0 {res['pixel']:.2f}, L=2 {res['object']:.2f}, "
        f"ratio {res['object'] / res['pixel']:.2f}"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/cutie.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "threads": args.threads,
        "latency": bench_latency(args.height, args.width, args.repeats),
        "objects": bench_objects(args.repeats),
        "long_video": bench_long_video(args.long_frames, args.height, args.width),
        "training": bench_training(args.repeats),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""G-FARS benchmarks (docs/gfars.md, Benchmarks): dense EdgeConv factorised vs naive, group() time per
sampler vs Comp-Net's one-shot inference, sets per second vs batch size, PointNet vs points.

    python benchmarks/gfars.py [--repeats 3] [--only group batch] [--out benchmarks/results/gfars.json]

Arms of each comparison are run interleaved (arm A, arm B, arm A, ...) and the fastest of
``--repeats`` is kept. Memory is the bytes autograd saves for backward (the activations a
training step holds), counted exactly with saved-tensor hooks. Targets: the factorised
EdgeConv at least 1.8x faster than the naive one at M = 40, F = 64, with less memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from cvpr24.common.io import atomic_write
from cvpr24.gfars.data import procedural_mixes
from cvpr24.gfars.model import DenseEdgeConv, GFARSConfig, PointNet, edge_conv_naive
from cvpr24.gfars.sampling import group_sets


def interleaved(arms: dict, repeats: int) -> dict:
    """Fastest of ``repeats`` calls per arm, the arms taking turns."""
    for fn in arms.values():
        fn()  # warm-up
    best = dict.fromkeys(arms, float("inf"))
    for _ in range(repeats):
        for name, fn in arms.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def bench_edgeconv(repeats: int, feat: int = 64, sizes=(10, 20, 40, 80, 160)) -> list[dict]:
    """(a) one EdgeConv layer of the score net (input 3F, hidden F), forward + backward."""
    rows = []
    torch.manual_seed(0)
    conv = DenseEdgeConv(3 * feat, feat, feat, "max")
    for m in sizes:
        h = torch.randn(4, m, 3 * feat, requires_grad=True)
        mask = torch.ones(4, m, dtype=torch.bool)

        forward = {"factorised": lambda h=h, mask=mask: conv(h, mask),
                   "naive": lambda h=h, mask=mask: edge_conv_naive(conv, h, mask)}
        times = interleaved({k: lambda f=f: f().sum().backward() for k, f in forward.items()},
                            repeats)
        mem = {k: saved_bytes(f) for k, f in forward.items()}
        rows.append({"M": m, **{f"{k}_s": v for k, v in times.items()},
                     **{f"{k}_saved_MB": v / 2**20 for k, v in mem.items()},
                     "speedup": times["naive"] / times["factorised"],
                     "memory_ratio": mem["naive"] / mem["factorised"]})
        r = rows[-1]
        print(f"  M={m:4d}  factorised {r['factorised_s'] * 1e3:8.2f} ms  naive "
              f"{r['naive_s'] * 1e3:8.2f} ms  speedup {r['speedup']:.2f}x  saved MB "
              f"{r['factorised_saved_MB']:.1f} vs {r['naive_saved_MB']:.1f} "
              f"({r['memory_ratio']:.2f}x)")
    return rows


def _load_or_init(method: str) -> torch.nn.Module | None:
    from cvpr24.gfars.reproduce import BASE, CHECKPOINTS, load_method

    if (CHECKPOINTS / f"{method}_seed0.safetensors").is_file():
        return load_method(method, 0)
    from cvpr24.gfars.train import build_method

    return build_method(method, BASE).eval()


def bench_group(repeats: int, n_sets: int = 4, with_500: bool = False) -> dict:
    """(b) end-to-end grouping time per set for each sampler vs Comp-Net's one-shot."""
    sets = [s.parts for s in procedural_mixes(n_sets, 123)]
    model, comp = _load_or_init("gfars_ef"), _load_or_init("compnet")
    arms = {"PC-100": lambda: group_sets(model, sets, "pc", 100),
            "EM-100": lambda: group_sets(model, sets, "em", 100),
            "ODE": lambda: group_sets(model, sets, "ode"),
            "Comp-Net": lambda: comp.group_sets(sets)}
    if with_500:
        arms |= {"PC-500": lambda: group_sets(model, sets, "pc", 500),
                 "EM-500": lambda: group_sets(model, sets, "em", 500)}
    times = {k: v / n_sets for k, v in interleaved(arms, repeats).items()}
    for k, v in times.items():
        print(f"  {k:8s} {v * 1e3:10.2f} ms/set   {v / times['Comp-Net']:10.0f}x Comp-Net")
    return times


def bench_batch(repeats: int, sizes=(1, 4, 16)) -> dict:
    """(c) PC-100 AR grouping: sets per second against the lock-step batch size."""
    model = _load_or_init("gfars_ef")
    sets = [s.parts for s in procedural_mixes(max(sizes), 321)]
    out = {}
    for b in sizes:
        t = interleaved({"x": lambda b=b: group_sets(model, sets[:b], "pc", 100,
                                                     batch_size=b)}, repeats)["x"]
        out[b] = b / t
        print(f"  batch {b:3d}: {out[b]:8.2f} sets/s ({out[b] / out[sizes[0]]:.1f}x batch 1)")
    return out


def bench_pointnet(repeats: int, points=(64, 256, 1000)) -> dict:
    """(d) PointNet forward time for 20 parts against points per part (CPU and paper widths)."""
    out = {}
    for name, cfg in (("cpu", GFARSConfig.cpu()), ("paper", GFARSConfig())):
        enc = PointNet(cfg.pointnet_widths, cfg.feat_len).eval()
        for n in points:
            x = torch.randn(20, n, 3)
            with torch.no_grad():
                t = interleaved({"x": lambda x=x, enc=enc: enc(x)}, repeats)["x"]
            out[f"{name}_{n}"] = t
            print(f"  {name:5s} widths, n = {n:4d}: {t * 1e3:8.2f} ms / 20 parts")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-500", action="store_true", help="also time PC-500 and EM-500")
    sections = {"edgeconv": ("(a) EdgeConv layer, forward + backward, B = 4, F = 64",
                             lambda: bench_edgeconv(args.repeats)),
                "group": ("(b) grouping time per set",
                          lambda: bench_group(args.repeats, with_500=args.with_500)),
                "batch": ("(c) batching", lambda: bench_batch(args.repeats)),
                "pointnet": ("(d) PointNet", lambda: bench_pointnet(args.repeats))}
    ap.add_argument("--only", nargs="+", choices=tuple(sections), default=tuple(sections),
                    help="run these sections only (default: all)")
    ap.add_argument("--out", default="benchmarks/results/gfars.json")
    args = ap.parse_args()
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "load_avg": os.getloadavg()}
    print(f"CPU {info['cpu']}, torch threads {info['threads']}, load {info['load_avg']}")
    res = {"info": info}
    for name in sections:
        if name in args.only:
            title, bench = sections[name]
            print(title)
            res[name] = bench()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

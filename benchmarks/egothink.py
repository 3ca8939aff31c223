"""EgoThink judge throughput: sequential vs parallel vs a fully cached re-run.

700 answers (EgoThink's size) are judged by LocalJudge behind a local OpenAI-compatible stub
that adds 200 ms to every request (a stand-in for a remote GPT-4 endpoint), through the real
client, retry, parsing, resume and cache code:

- ``--parallel 1``: one request at a time;
- ``--parallel 16``: 16 concurrent requests (target: >= 10x faster);
- cached re-run with ``--overwrite``: every judgment comes from the content-hash cache
  (target: < 2 s);
- the official-style loop (sequential, sleeping 10 s after each success) measured on a few
  items with the sleep scaled down and extrapolated to 700.

Also: loader memory, eager RGB decoding (what the HF loading script does) vs lazy handles; and
the image payload per request (original bytes vs PIL re-encode vs ``max_side=1024``).

    python benchmarks/egothink.py [--items 700] [--latency 0.2] [--out benchmarks/results/egothink.json]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from cvpr24.common import atomic_write
from cvpr24.egothink.config import DIM_KEYS, EgoThinkConfig
from cvpr24.egothink.data import load_egothink
from cvpr24.egothink.judge import OpenAIJudge, run_judgment
from cvpr24.egothink.server import ChatServer, local_judge_responder
from cvpr24.egothink.synth import FULL_SIZES, generate_synthetic
from cvpr24.egothink.vlm import CallableVLM, run_inference


def make_answers(work: Path, n_items: int) -> Path:
    """An answers folder with ``n_items`` questions in EgoThink's proportions, answered by an
    echo model (so the judge has real question/reference/answer triples)."""
    scale = n_items / sum(FULL_SIZES.values())
    sizes = {d: max(1, round(FULL_SIZES[d] * scale)) for d in DIM_KEYS}
    ds = load_egothink(generate_synthetic(work / "data", sizes, seed=0, image_size=16))
    answers = {(it.dim, it.question): it.answer for it in ds}
    run_inference(CallableVLM(lambda req: answers[(req.dim, req.text)], style="raw"), ds, work / "answers",
                  "echo", show_progress=False)
    return work / "answers"


def time_judging(answers: Path, url: str, parallel: int, *, overwrite: bool, cache: bool,
                 sleep_after_success: float = 0.0, models=None) -> tuple[float, dict]:
    cfg = EgoThinkConfig(parallel=parallel, sleep_after_success=sleep_after_success)
    judge = OpenAIJudge("local-judge", url, config=cfg)
    start = time.perf_counter()
    run = run_judgment(answers, judge, cfg, overwrite=overwrite, cache="auto" if cache else None,
                       show_progress=False, models=models)
    return time.perf_counter() - start, run.to_dict()


def bench_judge(n_items: int, latency: float, parallel: int, official_items: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="egothink_bench_"))
    try:
        answers = make_answers(work, n_items)
        with ChatServer(local_judge_responder(), latency_s=latency) as srv:
            # no cache in the timed runs: identical (question, reference, answer) triples would
            # otherwise be answered from the cache within the run and flatter the speed-up
            t1, r1 = time_judging(answers, srv.url, 1, overwrite=True, cache=False)
            tp, rp = time_judging(answers, srv.url, parallel, overwrite=True, cache=False)
            time_judging(answers, srv.url, parallel, overwrite=True, cache=True)  # fills the cache
            tc, rc = time_judging(answers, srv.url, parallel, overwrite=True, cache=True)
            # official-style: sequential, sleep after each success; scaled 10 s -> 0.1 s on a subset
            sub = work / "official"
            shutil.copytree(answers, sub, ignore=shutil.ignore_patterns("model_judgment", ".judge_cache.jsonl"))
            for p in sub.rglob("question.jsonl"):  # keep the first few questions of each dimension
                keep = max(1, official_items // len(DIM_KEYS))
                p.write_text("".join(p.read_text().splitlines(keepends=True)[:keep]))
            for p in sub.rglob("model_answer/*.jsonl"):
                p.write_text("".join(p.read_text().splitlines(keepends=True)[:max(1, official_items // len(DIM_KEYS))]))
            to, ro = time_judging(sub, srv.url, 1, overwrite=True, cache=False, sleep_after_success=0.1)
        n = r1["judged"]
        n_off = ro["judged"]
        per_item_official = (to - n_off * 0.1) / n_off + 10.0  # real sleep is 10 s
        return {
            "items": n, "latency_s": latency, "parallel": parallel,
            "sequential_s": t1, "parallel_s": tp, "cached_s": tc,
            "cached_hits": rc["cached"], "parallel_judged": rp["judged"],
            "official_style_items_measured": n_off, "official_style_extrapolated_s": per_item_official * n,
            "speedup_parallel": t1 / tp, "speedup_cached": t1 / tc,
            "speedup_vs_official": per_item_official * n / tp,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_jpegs(n_images: int) -> list[bytes]:
    """``n_images`` JPEGs of 1920x1440 (EgoThink's most common size), smooth random content."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_images):
        arr = (rng.random((45, 60, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).resize((1920, 1440), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_payload(jpegs: list[bytes]) -> dict:
    """Bytes per request and encode time: original bytes (official) vs PIL re-encode vs max_side=1024."""
    import base64

    from PIL import Image

    from cvpr24.egothink.vlm import downscale

    def reencode(b: bytes) -> bytes:
        buf = io.BytesIO()
        Image.open(io.BytesIO(b)).convert("RGB").save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    out = {}
    for name, fn in (("original", lambda b: b), ("pil_reencode", reencode),
                     ("max_side_1024", lambda b: downscale(b, 1024))):
        start = time.perf_counter()
        sizes = [len(base64.b64encode(fn(b))) for b in jpegs]
        out[name] = {"kb_per_request": sum(sizes) / len(sizes) / 1024,
                     "ms_per_image": 1000 * (time.perf_counter() - start) / len(jpegs)}
    return out


def bench_loader(jpegs: list[bytes]) -> dict:
    """Peak traced memory of eager RGB decoding vs lazy handles."""
    import numpy as np

    from cvpr24.egothink.data import EgoThinkDataset, EgoThinkItem, write_github

    n_images = len(jpegs)
    work = Path(tempfile.mkdtemp(prefix="egothink_load_"))
    try:
        items = [EgoThinkItem("existence", i, "Q?", "A.", image_data=b) for i, b in enumerate(jpegs)]
        root = write_github(EgoThinkDataset(items), work)
        out = {"images": n_images}
        for mode in ("lazy", "eager"):
            tracemalloc.start()
            start = time.perf_counter()
            ds = load_egothink(root)
            kept = [np.asarray(it.image()) for it in ds] if mode == "eager" else [it for it in ds]
            out[f"{mode}_s"] = time.perf_counter() - start
            out[f"{mode}_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            del kept
        out["eager_mb_per_image"] = out["eager_peak_mb"] / n_images
        out["lazy_kb_per_image"] = 1024 * out["lazy_peak_mb"] / n_images
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=700, help="answers to judge (EgoThink has 700)")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the stub adds to each request")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--official-items", type=int, default=24, help="items for the official-style loop")
    ap.add_argument("--images", type=int, default=20, help="1920x1440 images for the loader benchmark")
    ap.add_argument("--out", default="benchmarks/results/egothink.json")
    args = ap.parse_args()

    j = bench_judge(args.items, args.latency, args.parallel, args.official_items)
    print(f"EgoThink judge throughput: {j['items']} items, stub latency {1000 * j['latency_s']:.0f} ms per request")
    print(f"{'setting':<50} {'wall s':>9} {'items/s':>9} {'vs --parallel 1':>16}")
    rows = [("official-style loop (10 s sleep, extrapolated)", j["official_style_extrapolated_s"]),
            ("--parallel 1", j["sequential_s"]),
            (f"--parallel {j['parallel']}", j["parallel_s"]),
            (f"cached re-run (--parallel {j['parallel']}, --overwrite)", j["cached_s"])]
    for name, t in rows:
        print(f"{name:<50} {t:>9.2f} {j['items'] / t:>9.1f} {j['sequential_s'] / t:>15.1f}x")
    print(f"targets: parallel >= 10x -> {j['speedup_parallel']:.1f}x "
          f"({'met' if j['speedup_parallel'] >= 10 else 'NOT met'}); cached < 2 s -> {j['cached_s']:.2f} s "
          f"({'met' if j['cached_s'] < 2 else 'NOT met'})")

    jpegs = make_jpegs(args.images)
    ld = bench_loader(jpegs)
    print(f"\nLoader: {ld['images']} JPEGs of 1920x1440")
    print(f"{'mode':<10} {'wall s':>8} {'peak MB':>9}")
    for mode in ("lazy", "eager"):
        print(f"{mode:<10} {ld[mode + '_s']:>8.2f} {ld[mode + '_peak_mb']:>9.1f}")
    print(f"per image: eager {ld['eager_mb_per_image']:.1f} MB, lazy {ld['lazy_kb_per_image']:.1f} KB")

    pay = bench_payload(jpegs)
    print("\nImage payload per request (base64), 1920x1440 JPEGs")
    print(f"{'encoding':<16} {'KB':>8} {'ms/image':>9} {'vs original':>12}")
    for name, v in pay.items():
        print(f"{name:<16} {v['kb_per_request']:>8.0f} {v['ms_per_image']:>9.1f} "
              f"{v['kb_per_request'] / pay['original']['kb_per_request']:>11.2f}x")

    with atomic_write(args.out) as f:
        json.dump({"judge": j, "loader": ld, "payload": pay}, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

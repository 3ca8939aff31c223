"""Benchmark of Subject-Agnostic Guidance against classifier-free guidance.

Side by side in one process, same model, seeds and threads. Every row times its arms
interleaved (round robin) over ``--repeats`` rounds after a warm-up round and reports the median.
The models are built here with random weights (timing does not depend on the weights):

- the tiny ShapesWorld architecture (batch 24, 25 DDIM steps): CFG vs SAG (r = 0) vs SAG (r = -0.5);
- a tiny-config diffusers SD (64 px): ``StableDiffusionPipeline`` (CFG) vs
  ``SubjectAgnosticStableDiffusionPipeline`` at r = 0 and r = -0.5;
- peak memory of batched vs sequential condition evaluation (``sag_batch_conditions``);
- scaling with steps (10, 25, 50) and resolution (16, 32, 64 px) of the SAG/CFG ratio.

Targets: SAG(r = 0) <= 1.1 x CFG (identical NFE); SAG(r != 0) <= 1 + 0.5 x (late fraction) + 0.1.
Prints a table with ratios and writes JSON (``--out``, default benchmarks/results/sag.json).

    python benchmarks/sag.py [--repeats 3] [--out FILE] [--skip-diffusers]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cvpr24.common import atomic_write
from cvpr24.sag import SAGSchedule
from cvpr24.sag.tiny import ShapesELITE, TinyConfig, null_tokens, sample_sag

T_SAG = 0.6  # late fraction ~0.6 of the steps for the r != 0 target


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` over ``repeats`` rounds after one warm-up
    round. The arms run interleaved (round robin), so a change in machine load hits them all."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def late_fraction(T: float, steps: int) -> float:
    return sum(1 - i / steps <= T for i in range(steps)) / steps


def bench_tiny(repeats: int, steps: int = 25, batch: int = 24, size: int = 16) -> dict:
    torch.manual_seed(0)
    cfg = TinyConfig.cpu()
    cfg.image_size = size
    model = ShapesELITE(cfg).eval()
    g = torch.Generator().manual_seed(0)
    c, c0 = (torch.randn(batch, 3, cfg.context_dim, generator=g) for _ in range(2))
    null = model.context(null_tokens(batch))
    noise = torch.randn(batch, 3, size, size, generator=g)
    arms = {"CFG": SAGSchedule(T=1.0, r=0.0), "SAG r=0": SAGSchedule(T=T_SAG, r=0.0),
            "SAG r=-0.5": SAGSchedule(T=T_SAG, r=-0.5)}
    secs = timed({name: lambda s=s: sample_sag(model, c, c0, null, s, steps=steps, noise=noise)
                  for name, s in arms.items()}, repeats)
    out = {}
    for name, sched in arms.items():
        counter = [0]
        sample_sag(model, c, c0, null, sched, steps=steps, noise=noise, counter=counter)
        out[name] = {"s_per_image": secs[name] / batch, "nfe_per_image": counter[0] / batch}
    out["late_fraction"] = late_fraction(T_SAG, steps)
    return out


def tiny_sd(tmp: Path):
    import diffusers
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sag"))
    from sag_sd_helpers import write_clip_tokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                  latent_channels=4, norm_num_groups=32, sample_size=64)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77))
    write_clip_tokenizer(tmp)
    tok = transformers.CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77)
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text.eval(), "tokenizer": tok, "scheduler": sched,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False, "image_encoder": None}


def bench_diffusers(repeats: int, steps: int = 25, n: int = 2) -> dict:
    import diffusers

    from cvpr24.sag.pipeline import SubjectAgnosticStableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp:
        comps = tiny_sd(Path(tmp))
    cfg_pipe = diffusers.StableDiffusionPipeline(**comps)
    sag_pipe = SubjectAgnosticStableDiffusionPipeline(**comps)
    for p in (cfg_pipe, sag_pipe):
        p.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": steps, "output_type": "np", "num_images_per_prompt": n, "height": 64, "width": 64}
    prompt, sag_kw = "a pencil sketch of sks", {"placeholder_token": "sks", "class_word": "dog"}

    def run_cfg():
        cfg_pipe(prompt, generator=torch.Generator().manual_seed(0), **kw)

    def run_sag(r: float, batched: bool = True):
        sag_pipe(prompt, sag_T=T_SAG, sag_r=r, sag_batch_conditions=batched,
                 generator=torch.Generator().manual_seed(0), **sag_kw, **kw)

    secs = timed({"CFG": run_cfg, "SAG r=0": lambda: run_sag(0.0), "SAG r=-0.5": lambda: run_sag(-0.5),
                  "SAG r=-0.5 sequential": lambda: run_sag(-0.5, False)}, repeats)
    out = {"CFG": {"s_per_image": secs["CFG"] / n, "nfe_per_image": 2 * steps}}
    for name, r, batched in (("SAG r=0", 0.0, True), ("SAG r=-0.5", -0.5, True),
                             ("SAG r=-0.5 sequential", -0.5, False)):
        run_sag(r, batched)  # to read its NFE
        out[name] = {"s_per_image": secs[name] / n, "nfe_per_image": sag_pipe.sag_nfe_ / n}
    ts = sag_pipe.scheduler.timesteps
    out["late_fraction"] = sum(float(t) / 1000 <= T_SAG for t in ts) / len(ts)
    out["memory"] = condition_memory(sag_pipe.unet)
    return out


def condition_memory(unet) -> dict:
    """Peak memory of one UNet step with 3 conditions, batched vs one at a time: the rise of
    the RSS high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) in a fresh
    child process that rebuilds the UNet from its config."""
    import subprocess

    code = (
        "import json,sys,torch,diffusers\n"
        "def kib(key):\n"
        "  return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
        "unet=diffusers.UNet2DConditionModel.from_config(json.load(sys.stdin)).eval()\n"
        "x=torch.randn({rows},4,32,32);e=torch.randn({rows},77,unet.config.cross_attention_dim)\n"
        "open('/proc/self/clear_refs','w').write('5')\n"  # reset the peak RSS (VmHWM) to the current RSS
        "r0=kib('VmRSS:')\n"
        "with torch.no_grad():\n"
        "  for k in range({calls}): unet(x,500,encoder_hidden_states=e)\n"
        "print(kib('VmHWM:')-r0)"
    )
    config = json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith("_")})
    res = {}
    for name, rows, calls in (("batched 3 conditions", 3 * 8, 1), ("sequential 3 conditions", 8, 3)):
        out = subprocess.run([sys.executable, "-c", code.format(rows=rows, calls=calls)], input=config.encode(),
                             capture_output=True, check=True)
        res[name] = {"peak_rss_increase_MiB": int(out.stdout.decode().split()[-1]) / 1024}
    return res


def ratios(section: dict) -> dict:
    base = section["CFG"]["s_per_image"]
    return {k: v["s_per_image"] / base for k, v in section.items() if isinstance(v, dict) and "s_per_image" in v}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per row (median reported)")
    p.add_argument("--out", default="benchmarks/results/sag.json")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    results: dict = {"threads": torch.get_num_threads(), "T": T_SAG}
    results["tiny"] = bench_tiny(args.repeats)
    results["tiny_scaling_steps"] = {s: ratios(bench_tiny(args.repeats, steps=s, batch=8)) for s in (10, 25, 50)}
    results["tiny_scaling_resolution"] = {px: ratios(bench_tiny(args.repeats, steps=10, size=px, batch=4))
                                          for px in (16, 32, 64)}
    if not args.skip_diffusers:
        results["diffusers"] = bench_diffusers(args.repeats)
    checks = []
    print(f"{'setting':<34}{'s/image':>10}{'NFE/image':>11}{'ratio vs CFG':>14}{'target':>10}  ok")
    for section in ("tiny", "diffusers"):
        if section not in results:
            continue
        sec, r = results[section], ratios(results[section])
        target_r = 1 + 0.5 * sec["late_fraction"] + 0.1
        for name, v in sec.items():
            if not isinstance(v, dict) or "s_per_image" not in v:
                continue
            target = 1.1 if name == "SAG r=0" else target_r if name == "SAG r=-0.5" else None
            ok = target is None or r[name] <= target
            if target is not None:
                checks.append(ok)
            print(f"{section + ' ' + name:<34}{v['s_per_image']:>10.4f}{v['nfe_per_image']:>11.1f}{r[name]:>14.3f}"
                  f"{'' if target is None else f'<= {target:.2f}':>10}  {'yes' if ok else 'NO'}")
        results[section + "_ratios"] = r
    for key in ("tiny_scaling_steps", "tiny_scaling_resolution"):
        for k, r in results[key].items():
            print(f"{key} {k}: " + ", ".join(f"{n} {x:.3f}" for n, x in r.items()))
    if "diffusers" in results:
        for k, v in results["diffusers"]["memory"].items():
            print(f"memory, one UNet step, {k}: +{v['peak_rss_increase_MiB']:.1f} MiB peak RSS")
    results["all_targets_met"] = all(checks)
    results["max_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.out)
    with atomic_write(out) as f:
        json.dump(results, f, indent=2)
    print(f"targets met: {all(checks)}{'' if all(checks) else ' (SANITY CHECK FAILED)'}; wrote {out}")
    return 1 if args.strict and not all(checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``cvpr24 sag generate | sweep | eval | train``.

generate  SD (any local diffusers folder) with Subject-Agnostic Guidance; PNGs + a JSON sidecar
sweep     a T x r grid into one contact sheet (the paper's ablation figure)
eval      CLIP-T, CLIP-I and DINO of a folder of generated images against the subject's images
train     rebuild the tiny ShapesWorld model of the reproduction (``cvpr24 train sag``)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cvpr24.common import atomic_path, atomic_write
from cvpr24.common.argtypes import number_in, positive_int, unit_interval

_r_value = number_in(float, -1, hint="r < -1 extrapolates away from the subject")
_guidance = number_in(float, 1, hint="diffusers' scale s = 1 + w; 1 turns classifier-free guidance off")


def _path(text: str) -> Path:
    """A path argument with ``~`` expanded (diffusers' ``from_pretrained`` does not expand it)."""
    return Path(text).expanduser()


def _file(text: str) -> Path:
    path = _path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _dir(text: str) -> Path:
    path = _path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=_dir, help="local diffusers Stable Diffusion folder (model_index.json); "
                                                  "a fine-tuned DreamBooth folder works as is")
    p.add_argument("--prompt", required=True, help='prompt with the subject, e.g. "a pencil sketch of <cat-toy>"')
    p.add_argument("--placeholder", default=None, help="the subject's token in the prompt (<cat-toy>, S*, sks)")
    p.add_argument("--class-word", default=None, help="what replaces it in the agnostic prompt (dog, toy)")
    p.add_argument("--agnostic-prompt", default=None, help="the subject-agnostic prompt c0, given explicitly")
    p.add_argument("--textual-inversion", type=_file, default=None,
                   help="learned_embeds.safetensors or A1111 .pt to load")
    p.add_argument("--lora", type=_file, default=None,
                   help="pytorch_lora_weights.safetensors (DreamBooth-LoRA) to load")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guidance-scale", type=_guidance, default=7.5, help="diffusers scale s = 1 + w (default 7.5)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--time-mode", choices=("diffusion_time", "step_fraction"), default="diffusion_time")
    p.add_argument("--height", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    p.add_argument("--out", required=True, type=_path, help="output folder")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="generate with subject-agnostic guidance (PNGs + JSON sidecar)",
                       description="Generate with Subject-Agnostic Guidance on a local SD checkpoint.")
    _add_model_args(p)
    p.add_argument("--T", type=unit_interval, default=0.9, help="guidance timing T in [0, 1] (default 0.9)")
    p.add_argument("--r", type=_r_value, default=0.0, help="late guidance weight r >= -1 (default 0)")
    p.add_argument("--n", type=positive_int, default=4, help="images (default 4)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("sweep", help="a T x r grid into one contact sheet",
                       description="Generate a T x r grid from the same noise into one contact sheet.")
    _add_model_args(p)
    p.add_argument("--T-values", type=unit_interval, nargs="+", default=[1.0, 0.9, 0.8, 0.6, 0.4, 0.0])
    p.add_argument("--r-values", type=_r_value, nargs="+", default=[0.0])
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("eval", help="CLIP-T, CLIP-I and DINO from local transformers weights",
                       description="CLIP-T / CLIP-I / DINO (DreamBooth protocol) of generated images.")
    p.add_argument("--generated", required=True, type=_dir, help="folder of generated PNG/JPEG images")
    p.add_argument("--subject-dir", required=True, type=_dir, help="folder of the real subject images")
    p.add_argument("--prompts", type=_file, default=None, help="text file: one class-noun prompt per generated image (sorted "
                                                   "by file name), or one line for all. Default: the agnostic "
                                                   "prompt in the folder's sag.json")
    p.add_argument("--clip", required=True, type=_dir, help="local transformers CLIPModel folder (e.g. ViT-B/32)")
    p.add_argument("--dino", type=_dir, default=None, help="local transformers ViTModel folder (DINO ViT-S/16)")
    p.add_argument("--out", type=_path, default=None, help="write the scores to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train the tiny ShapesWorld model of the reproduction",
                       description="Train the tiny ELITE-like model and its probe (the reproduction's model).")
    p.add_argument("--size", choices=("cpu", "full"), default="cpu", help="cpu: 16 px (committed); full: 32 px")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--probe-steps", type=positive_int, default=None, help="probe training steps (default 300)")
    p.add_argument("--backbone-steps", type=positive_int, default=None,
                   help="encoder-backbone pretraining steps (default: the preset's)")
    p.add_argument("--local-tokens", type=int, choices=(0, 16), default=None,
                   help="local subject tokens, ELITE's local mapping (default: the preset's, 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=_path, default=None,
                   help="checkpoint path (.safetensors); default: sag-train-SIZE-seedN/shapes_elite.safetensors "
                        "in the current folder (the packaged checkpoint is never overwritten)")
    p.add_argument("--state", type=_path, default=None, help="training state file (default: beside --out)")
    p.add_argument("--resume", action="store_true", help="continue from --state")
    p.add_argument("--init", type=_file, default=None,
                   help="warm start from this checkpoint (a sag .safetensors of the same architecture)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads")
    p.set_defaults(func=cmd_train)


# --- generate / sweep ------------------------------------------------------------------------

def load_pipeline(args: argparse.Namespace) -> Any:
    """The SAG pipeline from a local folder, with textual inversion and LoRA loaded."""
    import torch

    from cvpr24.common import get_device
    from cvpr24.sag.pipeline import SubjectAgnosticStableDiffusionPipeline

    device = args.device or str(get_device())
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = SubjectAgnosticStableDiffusionPipeline.from_pretrained(
        str(args.model), local_files_only=True, safety_checker=None, **_dtype_kwargs(dtype))
    if args.textual_inversion:
        pipe.load_textual_inversion(str(args.textual_inversion), token=args.placeholder)
    if args.lora:
        pipe.load_lora_weights(str(args.lora))
    _check_placeholder(pipe.tokenizer, args.placeholder)
    return pipe.to(device)


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """The weights' dtype for ``from_pretrained``: float32, the default, is not passed at all;
    diffusers releases that deprecate ``torch_dtype`` take ``dtype`` instead."""
    import torch
    from diffusers.utils import deprecation_utils

    if dtype == torch.float32:
        return {}
    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _check_placeholder(tokenizer: Any, placeholder: str | None) -> None:
    """The subject's token must be one token of the tokenizer (after textual inversion is loaded):
    otherwise it is split into pieces and swapped for the class word piece by piece."""
    if placeholder is None:
        return
    pieces = tokenizer.tokenize(placeholder)
    if len(pieces) != 1:
        _usage_error(f"--placeholder {placeholder!r} is not one token of the model's tokenizer (it splits into "
                     f"{pieces}); pass --textual-inversion with its learned embedding, or a word the tokenizer "
                     "knows (e.g. sks for DreamBooth)")


def _check_model(args: argparse.Namespace) -> None:
    """The model folder and the prompt arguments, before anything loads."""
    if not (args.model / "model_index.json").is_file():
        _usage_error(f"--model must be a local diffusers folder with model_index.json, got {args.model}")
    if args.class_word is not None and args.placeholder is None:
        _usage_error("--class-word replaces --placeholder in the prompt: give --placeholder too")
    if args.placeholder is not None and args.class_word is None and args.agnostic_prompt is None:
        _usage_error("--placeholder needs --class-word (what replaces it in c0), or give --agnostic-prompt")
    if args.placeholder is not None and args.placeholder not in args.prompt:
        _usage_error(f"--placeholder {args.placeholder!r} does not occur in --prompt {args.prompt!r}")
    if args.placeholder is None and args.agnostic_prompt is None:
        _usage_error("give --placeholder with --class-word, or --agnostic-prompt: SAG needs the subject-agnostic "
                     "prompt c0")


def _usage_error(message: str) -> None:
    print(f"cvpr24 sag: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _sag_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"prompt": args.prompt, "agnostic_prompt": args.agnostic_prompt, "placeholder_token": args.placeholder,
            "class_word": args.class_word, "negative_prompt": args.negative_prompt,
            "guidance_scale": args.guidance_scale, "num_inference_steps": args.steps,
            "sag_time_mode": args.time_mode, "height": args.height, "width": args.width}


def _settings(args: argparse.Namespace, pipe: Any, extra: dict[str, Any]) -> dict[str, Any]:
    agnostic = args.agnostic_prompt or pipe.resolve_agnostic_prompt(
        args.prompt, None, args.placeholder, args.class_word, False)[0]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    return {**settings, "agnostic_prompt": agnostic, "scheduler": type(pipe.scheduler).__name__, **extra}


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    _check_model(args)
    pipe = load_pipeline(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator("cpu").manual_seed(args.seed)
    images = pipe(**_sag_kwargs(args), sag_T=args.T, sag_r=args.r, num_images_per_prompt=args.n,
                  generator=gen).images
    names = []
    for i, img in enumerate(images):
        names.append(f"{i:03d}.png")
        with atomic_path(out / names[-1]) as tmp:
            img.save(tmp, format="PNG")
    with atomic_write(out / "sag.json") as f:
        json.dump(_settings(args, pipe, {"files": names, "nfe": pipe.sag_nfe_}), f, indent=2)
    print(f"wrote {len(names)} images and sag.json to {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    _check_model(args)
    pipe = load_pipeline(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for r in args.r_values:
        row = []
        for t in args.T_values:
            gen = torch.Generator("cpu").manual_seed(args.seed)  # the same noise in every cell
            row.append(pipe(**_sag_kwargs(args), sag_T=t, sag_r=r, generator=gen).images[0])
        cells.append(row)
    w, h = cells[0][0].size
    sheet = Image.new("RGB", (w * len(args.T_values), h * len(args.r_values)), "white")
    for i, row in enumerate(cells):
        for j, img in enumerate(row):
            sheet.paste(img, (j * w, i * h))
    with atomic_path(out / "sweep.png") as tmp:
        sheet.save(tmp, format="PNG")
    with atomic_write(out / "sag.json") as f:
        json.dump(_settings(args, pipe, {"columns_T": args.T_values, "rows_r": args.r_values}), f, indent=2)
    print(f"wrote {out / 'sweep.png'} (columns T = {args.T_values}, rows r = {args.r_values})")
    return 0


# --- eval --------------------------------------------------------------------------------------

def _prompts_for(args: argparse.Namespace, n: int) -> list[str]:
    if args.prompts:
        lines = [ln.strip() for ln in args.prompts.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) == 1:
            return lines * n
        if len(lines) != n:
            raise SystemExit(f"cvpr24 sag eval: --prompts has {len(lines)} lines for {n} generated images "
                             "(give one per image, or one for all)")
        return lines
    sidecar = args.generated / "sag.json"
    if not sidecar.is_file():
        raise SystemExit("cvpr24 sag eval: give --prompts (no sag.json in --generated to read the prompt from)")
    return [json.loads(sidecar.read_text(encoding="utf-8"))["agnostic_prompt"]] * n


def cmd_eval(args: argparse.Namespace) -> int:
    from cvpr24.sag.metrics import ClipDinoScorer, load_images

    generated = load_images(args.generated)
    references = load_images(args.subject_dir)
    scorer = ClipDinoScorer(args.clip, args.dino)
    scorer.update(generated, _prompts_for(args, len(generated)), references)
    scores = scorer.compute()
    text = json.dumps(scores, indent=2)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text)
    print(text)
    return 0


# --- train -------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from cvpr24.sag.tiny import TinyConfig
    from cvpr24.sag.train import DEFAULT_CHECKPOINT, save_tiny, train_model, train_probe

    out = args.out or Path(f"sag-train-{args.size}-seed{args.seed}") / DEFAULT_CHECKPOINT.name
    if out.suffix != ".safetensors":
        _usage_error(f"--out must end with .safetensors, got {out}")
    if out.resolve().parent == DEFAULT_CHECKPOINT.resolve().parent:
        _usage_error(f"--out {out} is inside the installed package's checkpoints; the packaged model is never "
                     "overwritten (write elsewhere, then pass it to the reproduction with checkpoint=...)")
    if out.exists() and not args.resume:
        _usage_error(f"--out {out} exists; choose another path or pass --resume to continue its training")
    state = args.state or out.with_name(out.stem + ".state.pt")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TinyConfig.cpu() if args.size == "cpu" else TinyConfig()
    for flag, field in (("steps", "steps"), ("probe_steps", "probe_steps"), ("backbone_steps", "backbone_steps"),
                        ("local_tokens", "local_tokens")):
        if getattr(args, flag) is not None:
            cfg = dataclasses.replace(cfg, **{field: getattr(args, flag)})
    out.parent.mkdir(parents=True, exist_ok=True)
    model, metrics = train_model(cfg, seed=args.seed, state_path=state, resume=args.resume, init=args.init,
                                 log=lambda s: print(s, file=sys.stderr, flush=True))
    probe, probe_metrics = train_probe(cfg, seed=args.seed)
    save_tiny(out, model, probe, args.seed, {**metrics, **probe_metrics})
    print(json.dumps({"checkpoint": str(out), **metrics, **probe_metrics}, indent=2))
    return 0

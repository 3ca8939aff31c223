"""``cvpr24 cutie segment | eval | generate | train``.

Every argument and input file is checked before a model is loaded; a bad one gives one line
on stderr naming the flag and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvpr24.common.argtypes import number_in, one_line_errors, positive_int


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("segment", help="propagate first-frame masks through videos")
    p.add_argument("--weights", required=True, help="official cutie-*.pth or our .safetensors")
    p.add_argument(
        "--images",
        required=True,
        help="frames folder (one video), folder of video folders, or a video file (.mp4, ...)",
    )
    p.add_argument(
        "--masks",
        help="index-PNG masks folder, same layout as --images (generic layout only); "
        "for a video file: its first frame's index PNG",
    )
    p.add_argument("--out", required=True, help="output folder for index PNGs")
    p.add_argument("--overlay", help="also write OVERLAY/<video>.mp4 with the masks blended in")
    p.add_argument("--fps", type=number_in(float, 0.1), default=24.0, help="overlay frame rate")
    p.add_argument(
        "--layout",
        choices=("generic", "davis", "mose", "youtube", "burst"),
        default="generic",
        help="generic: --images/--masks folders; davis/mose/youtube: --images is the dataset root; "
        "burst: --images is the frames root, --masks the annotation JSON (OUT/predictions.json "
        "is written too)",
    )
    p.add_argument(
        "--size",
        type=number_in(int, -1),
        default=None,
        help="max short side processed (default: the preset's; -1 = native)",
    )
    p.add_argument("--preset", choices=("default", "plus", "long"), default="default")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument(
        "--amp-dtype", choices=("float16", "bfloat16"), default="float16", help="with --amp"
    )
    p.add_argument("--flip", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--chunk-size", type=int, default=-1, help="objects per chunk (-1 = all)")
    p.set_defaults(func=_friendly(cmd_segment))

    p = sub.add_parser("eval", help="DAVIS J&F of predicted index PNGs")
    p.add_argument("--gt", required=True, help="ground-truth folder of video folders")
    p.add_argument("--pred", required=True, help="prediction folder of video folders")
    p.add_argument(
        "--keep-first-last", action="store_true", help="also score the first and last frames"
    )
    p.add_argument("--csv", help="per-object CSV (default: PRED/results.csv)")
    p.set_defaults(func=_friendly(cmd_eval))

    p = sub.add_parser("generate", help="write synthetic distractor videos in the DAVIS layout")
    p.add_argument("--out", required=True)
    p.add_argument("--videos", type=positive_int, default=8)
    p.add_argument("--split", choices=("easy", "hard", "mixed"), default="hard")
    p.add_argument("--frames", type=number_in(int, 2), default=16)
    p.add_argument("--seed", type=int, default=10_000)
    p.set_defaults(func=_friendly(cmd_generate))

    p = sub.add_parser(
        "train",
        help="train on real videos (--data) or the CPU-scale reproduction models on synthetic clips",
    )
    p.add_argument(
        "--data",
        action="append",
        help="training dataset folder, repeat to mix: videos (DAVIS-2017, YouTube-VOS or custom "
        "images/<video>/ + masks/<video>/) or, with --stage static, images with masks "
        "(<stem>.jpg beside <stem>.png, or images/ + masks/). Without it: synthetic clips of "
        "the reproduction",
    )
    p.add_argument(
        "--model",
        choices=("base", "small", "cpu"),
        default="base",
        help="architecture for --data training",
    )
    p.add_argument(
        "--init", help="start --data training from these weights (official .pth or .safetensors)"
    )
    p.add_argument(
        "--stage",
        choices=("main", "static", "cpu"),
        default="main",
        help="training preset for --data: main (video training), static (pre-training on "
        "pseudo-clips from images), cpu (the reproduction's small-scale optimiser settings)",
    )
    p.add_argument(
        "--max-objects",
        type=positive_int,
        help="objects per clip (default: the preset's; static: more than 1 pastes further images "
        "in as extra objects and trains the multi-object model)",
    )
    p.add_argument("--batch-size", type=positive_int, help="clips per step (default: the preset's)")
    p.add_argument("--frames", type=number_in(int, 2), help="frames per clip (default: preset's)")
    p.add_argument(
        "--crop", type=positive_int, help="clip side, multiple of 16 (default 480; static 384)"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (--data training)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument(
        "--amp-dtype", choices=("float16", "bfloat16"), default="float16", help="with --amp"
    )
    p.add_argument(
        "--variant",
        choices=("pixel", "object", "object-nomask", "pixel-capacity"),
        default="object",
        help="synthetic reproduction arm (without --data)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=positive_int, default=1500)
    p.add_argument(
        "--out", required=True, help="output .safetensors path (a sidecar .json is written beside)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT's work folder")
    p.set_defaults(func=_friendly(cmd_train))


_friendly = one_line_errors("cutie")


def _need_dir(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{flag}: not a folder: {path}")
    return p


def _load_model(path: str, device: str):
    from cvpr24.cutie.model import CutieConfig, CutieModel
    from cvpr24.cutie.weights import load_official_checkpoint

    if path.endswith(".safetensors"):
        from cvpr24.common import load_checkpoint

        ckpt = load_checkpoint(path, CutieConfig)
        model = CutieModel(ckpt.config)
        model.load_state_dict(ckpt.tensors)
        return model.to(device).eval()
    return load_official_checkpoint(path, device=device)


def cmd_segment(args: argparse.Namespace) -> int:
    import contextlib
    import warnings

    import torch

    from cvpr24.common.progress import progress
    from cvpr24.cutie import data
    from cvpr24.cutie.inference import InferenceConfig, VideoSegmenter

    # 1. check every input before loading the model
    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"--weights: file not found: {args.weights}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {args.device} requested but CUDA is not available")
    if args.amp and not args.device.startswith("cuda"):
        raise ValueError("--amp: mixed precision needs --device cuda")
    images = Path(args.images)
    if images.suffix.lower() in data.VIDEO_EXTS:
        if not images.is_file():
            raise FileNotFoundError(f"--images: video file not found: {args.images}")
        if args.layout != "generic" or args.masks is None:
            raise ValueError("--masks: a video file needs --layout generic and its first mask")
        if not Path(args.masks).exists():
            raise FileNotFoundError(f"--masks: not found: {args.masks}")
        videos = [data.video_file_item(images, args.masks)]
    elif args.layout == "generic":
        _need_dir(args.images, "--images")
        if args.masks is None:
            raise ValueError("--masks: required with --layout generic")
        videos = data.generic_videos(images, _need_dir(args.masks, "--masks"))
    elif args.layout == "davis":
        videos = data.davis_videos(_need_dir(args.images, "--images"))
    elif args.layout == "mose":
        videos = data.mose_videos(_need_dir(args.images, "--images"))
    elif args.layout == "burst":
        if args.masks is None:
            raise ValueError("--masks: --layout burst needs the annotation JSON")
        videos = data.burst_videos(args.masks, _need_dir(args.images, "--images"))
    else:
        videos = data.youtube_videos(_need_dir(args.images, "--images"))
    first_masks = {}
    for v in videos:
        mask, palette = v.read_mask(0, "--masks")
        if v.video_file is not None:
            h, w = data.video_size(v.video_file)
        else:
            h, w = data.read_image(v.frames[0]).shape[-2:]
        if mask.shape != (h, w):
            raise ValueError(
                f"--masks: the mask of {v.name} ({v.masks[0]}) is {mask.shape[1]}x{mask.shape[0]} "
                f"but the frames are {w}x{h}"
            )
        first_masks[v.name] = (mask, palette)

    # 2. model and inference settings
    cfg = InferenceConfig.preset(args.preset)
    cfg.flip_aug, cfg.amp, cfg.chunk_size = args.flip, args.amp, args.chunk_size
    cfg.amp_dtype = args.amp_dtype
    if args.size is not None:
        cfg.max_internal_size = args.size
    model = _load_model(args.weights, args.device)

    # 3. propagate, writing each PNG atomically
    out = Path(args.out)
    for v in progress(videos, desc="videos"):
        seg = VideoSegmenter(model, cfg, device=args.device)
        palette = first_masks[v.name][1]
        empty_warned = False
        overlay_ctx = (
            data.OverlayVideoWriter(Path(args.overlay) / f"{v.name}.mp4", args.fps)
            if args.overlay
            else contextlib.nullcontext()
        )
        frames = zip(v.frames, data.item_frames(v), strict=True)
        with overlay_ctx as writer:
            for t, (frame_path, image) in enumerate(
                progress(frames, total=len(v.frames), desc=v.name, leave=False)
            ):
                mask = None
                if t in v.masks:
                    mask = torch.from_numpy(
                        first_masks[v.name][0] if t == 0 else v.read_mask(t, "--masks")[0]
                    ).long()
                    mask[mask == 255] = 0  # void is not an object
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probs = seg.step(
                        image, mask, v.objects_per_mask.get(t), end=t == len(v.frames) - 1
                    )
                ids = seg.prob_to_index_mask(probs).cpu()
                if t > 0 and seg.num_objects and not bool((ids > 0).any()) and not empty_warned:
                    print(
                        f"warning: {v.name}: every object vanished at frame {frame_path.name}",
                        file=sys.stderr,
                    )
                    empty_warned = True
                if v.output_frames is None or t in v.output_frames:
                    data.write_index_png(out / v.name / f"{frame_path.stem}.png", ids, palette)
                if writer is not None:
                    writer.write(image, ids, palette)
    if args.layout == "burst":
        data.write_burst_predictions(args.masks, out, out / "predictions.json")
    print(f"wrote {len(videos)} video(s) to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import csv

    from cvpr24.common import atomic_write
    from cvpr24.cutie.metrics import evaluate_vos

    gt, pred = _need_dir(args.gt, "--gt"), _need_dir(args.pred, "--pred")
    res = evaluate_vos(gt, pred, skip_first_last=not args.keep_first_last)
    csv_path = Path(args.csv) if args.csv else pred / "results.csv"
    with atomic_write(csv_path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["sequence", "obj_idx", "J", "F", "J&F"])
        for key, (j, fm) in res["per_object"].items():
            seq, obj = key.rsplit("/", 1)
            w.writerow([seq, obj, f"{j:.1f}", f"{fm:.1f}", f"{(j + fm) / 2:.1f}"])
        w.writerow(["Global score", "", f"{res['J']:.1f}", f"{res['F']:.1f}", f"{res['J&F']:.1f}"])
    print(f"{'J&F':>7} {'J':>7} {'F':>7}")
    print(f"{res['J&F']:7.2f} {res['J']:7.2f} {res['F']:7.2f}  ({len(res['per_object'])} objects)")
    print(f"per-object scores: {csv_path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cvpr24.cutie.data import write_synthetic_davis

    names = write_synthetic_davis(args.out, args.videos, args.split, args.seed, args.frames)
    print(f"wrote {len(names)} {args.split} videos to {args.out} (DAVIS layout)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cvpr24.cutie.reproduce import train_variant

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: expected a .safetensors path, got {args.out}")
    from cvpr24.cutie.reproduce import CHECKPOINT_DIR

    if out.resolve().parent == CHECKPOINT_DIR.resolve():
        raise ValueError(
            f"--out: {out.parent} holds the checkpoints shipped with the package; choose another folder"
        )
    if not args.data and (args.amp or args.device != "cpu"):
        raise ValueError(
            "--amp/--device: the synthetic reproduction models train on CPU in float32; "
            "these flags apply to --data training"
        )
    work = out.parent / (out.stem + "_work")
    if (work / "state.pt").exists() and not args.resume:
        raise ValueError(f"--resume: a previous run exists in {work}; pass --resume or delete it")

    def log(step, losses):
        if step % 10 == 0:
            print(f"step {step}: loss {losses['total']:.3f}", flush=True)

    if args.data:
        _train_on_data(args, out, work, log)
    else:
        train_variant(args.variant, args.seed, args.iterations, work, out, log=log)
    print(f"wrote {out}")
    return 0


def _train_on_data(args: argparse.Namespace, out: Path, work: Path, log) -> None:
    """``cvpr24 train cutie --data DIR``: the paper's training stages on real data."""
    import dataclasses

    import torch

    from cvpr24.common import save_checkpoint
    from cvpr24.cutie.model import CutieConfig, CutieModel
    from cvpr24.cutie.train import TrainConfig, train
    from cvpr24.cutie.weights import to_multi_object

    static = args.stage == "static"
    crop = args.crop or (384 if static else 480)
    if crop % 16:
        raise ValueError(f"--crop: must be a multiple of 16, got {crop}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {args.device} requested but CUDA is not available")
    if args.amp and not args.device.startswith("cuda"):
        raise ValueError("--amp: mixed precision needs --device cuda")
    if args.init is not None and not Path(args.init).is_file():
        raise FileNotFoundError(f"--init: file not found: {args.init}")
    presets = {"main": TrainConfig.main, "static": TrainConfig.pretrain, "cpu": TrainConfig.cpu}
    cfg = presets[args.stage]()
    cfg.iterations, cfg.seed, cfg.amp = args.iterations, args.seed, args.amp
    cfg.amp_dtype = args.amp_dtype
    cfg.batch_size = args.batch_size or cfg.batch_size
    cfg.num_frames = args.frames or cfg.num_frames
    cfg.num_ref_frames = min(cfg.num_ref_frames, cfg.num_frames - 1)
    cfg.max_objects = args.max_objects or cfg.max_objects
    sampler, described = _training_sampler(args, cfg, crop)
    # one object: the single-object model of the paper's pre-training (4-channel mask encoder)
    single = cfg.max_objects == 1
    if args.init is not None:
        model = _load_model(args.init, args.device)
        if not single:  # a pre-trained single-object model grows its extra input channels
            gen = torch.Generator().manual_seed(args.seed)
            model = to_multi_object(model, gen)
    else:
        model_cfg = {"base": CutieConfig.base, "small": CutieConfig.small, "cpu": CutieConfig.cpu}
        arch = dataclasses.replace(model_cfg[args.model](), single_object=static and single)
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            model = CutieModel(arch).to(args.device)
    losses = train(model, cfg, sampler, out_dir=work, resume=True, log=log)
    save_checkpoint(
        out,
        model.state_dict(),
        config=model.cfg,
        seed=args.seed,
        data={
            "stage": args.stage,
            "folders": [str(d) for d in args.data],
            "crop": crop,
            **described,
        },
        metrics={"final_loss_mean_last_20": sum(losses[-20:]) / max(1, len(losses[-20:]))},
    )


def _training_sampler(args: argparse.Namespace, cfg, crop: int):
    """The clip sampler of ``--stage`` over the ``--data`` folders, and what it holds."""
    if args.stage == "static":
        from cvpr24.cutie.static import StaticClipSampler, static_images

        images = [p for d in args.data for p in static_images(d, "--data")]
        sampler = StaticClipSampler(
            images,
            batch_size=cfg.batch_size,
            num_frames=cfg.num_frames,
            max_objects=cfg.max_objects,
            crop=crop,
            seed=args.seed,
        )
        return sampler, {"images": len(images)}
    from cvpr24.cutie.clips import ClipSampler, training_videos

    videos = [v for d in args.data for v in training_videos(d, "--data")]
    sampler = ClipSampler(
        videos,
        cfg.iterations,
        batch_size=cfg.batch_size,
        num_frames=cfg.num_frames,
        max_objects=cfg.max_objects,
        crop=crop,
        min_pixels=max(1, round(100 * (crop / 480) ** 2)),
        seed=args.seed,
    )
    return sampler, {"videos": len(videos)}

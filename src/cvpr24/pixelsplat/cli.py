"""``cvpr24 pixelsplat infer | eval | convert | check-cameras | train``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from cvpr24.common.argtypes import one_line_errors, positive_int


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("infer", help="two posed images -> Gaussians (.ply) and optional novel views")
    p.add_argument("--checkpoint", required=True, help="official re10k.ckpt/acid.ckpt or our .safetensors")
    p.add_argument("--images", nargs=2, required=True, metavar=("A", "B"), help="the two context images")
    p.add_argument("--cameras", required=True, help="cameras JSON: {'frames': [{'image', 'c2w', 'K'[, 'width', "
                                                    "'height']}]} naming both images")
    p.add_argument("--out", required=True, help="output .ply path")
    p.add_argument("--render", help="cameras JSON of views to render next to the .ply (PNG)")
    p.add_argument("--size", type=positive_int, default=256, help="centre-crop size (default 256)")
    p.add_argument("--sh-degree", type=int, choices=(0, 1, 2, 3), help="SH degree written to the .ply")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_friendly(cmd_infer))

    p = sub.add_parser("eval", help="PSNR/SSIM(/LPIPS) on RealEstate10k/ACID test chunks with an evaluation index")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="ROOT holding test/*.torch and test/index.json")
    p.add_argument("--index", required=True, help="evaluation_index_re10k.json or _acid.json")
    p.add_argument("--limit", type=positive_int, help="evaluate the first N scenes only")
    p.add_argument("--size", type=positive_int, default=256, help="centre-crop size (official protocol: 256)")
    p.add_argument("--vgg", help="VGG-16 weights (torchvision state dict) for LPIPS")
    p.add_argument("--lpips-lin", help="LPIPS linear weights (lpips/weights/v0.1/vgg.pth)")
    p.add_argument("--out", required=True, help="metrics JSON path")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_friendly(cmd_eval))

    p = sub.add_parser("convert", help="COLMAP folder or cameras JSON -> a .torch chunk + index.json")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--colmap", help="folder with images/ and sparse/0 (or sparse/)")
    src.add_argument("--cameras", help="cameras JSON (see infer); images resolved beside it")
    p.add_argument("--key", default="scene", help="scene key")
    p.add_argument("--out", required=True, help="output ROOT (writes 000000.torch and index.json)")
    p.set_defaults(func=_friendly(cmd_convert))

    p = sub.add_parser("check-cameras", help="draw epipolar lines between two posed images to a PNG")
    p.add_argument("--images", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--cameras", required=True, help="cameras JSON naming both images")
    p.add_argument("--points", type=positive_int, default=8, help="number of rays drawn per image")
    p.add_argument("--out", required=True, help="PNG path")
    p.set_defaults(func=_friendly(cmd_check_cameras))

    p = sub.add_parser("train", help="train on procedural scenes or RealEstate10k/ACID chunks (resumable; "
                                     "DDP under torchrun)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on procedural billboard scenes")
    src.add_argument("--data", help="ROOT holding train/index.json and its .torch chunks")
    p.add_argument("--preset", choices=("cpu", "full"), default="cpu")
    p.add_argument("--direct", action="store_true", help="the Z=1, gpp=1 ablation")
    p.add_argument("--steps", type=positive_int, default=800)
    p.add_argument("--size", type=positive_int, help="image size (default 24 synthetic, 256 --data)")
    p.add_argument("--batch-size", type=positive_int, help="examples per step and rank (default 2 synthetic, "
                                                            "7 --data)")
    p.add_argument("--scenes", type=positive_int, default=300, help="number of synthetic scenes")
    p.add_argument("--seed", type=int, help="default 0 synthetic, 111123 --data (official)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (--data only; under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--amp", action="store_true", help="float16 autocast and gradient scaling (--data, CUDA only)")
    p.add_argument("--state-every", type=positive_int, default=1000, help="steps between resumable states (--data)")
    p.add_argument("--vgg", help="VGG-16 weights for the LPIPS loss term (--data; with --lpips-lin)")
    p.add_argument("--lpips-lin", help="LPIPS linear weights (--data; with --vgg)")
    p.add_argument("--out", required=True, help="run folder (resumes from OUT/state.pt)")
    p.set_defaults(func=_friendly(cmd_train))


_friendly = one_line_errors("pixelsplat")


def _load_model(path: str):
    from cvpr24.pixelsplat.model import PixelSplat
    from cvpr24.pixelsplat.train import load_trained

    if not Path(path).is_file():
        raise FileNotFoundError(f"--checkpoint {path} not found")
    if path.endswith(".safetensors"):
        return load_trained(path)[0]
    return PixelSplat.from_official_checkpoint(path).eval()


def _context(images: list[str], cameras: str, size: int):
    import torch

    from cvpr24.pixelsplat.data import crop_resize, decode_image, from_cameras_json

    names, ext, k = from_cameras_json(cameras)
    imgs, ks, exts = [], [], []
    for image in images:
        name = Path(image).name
        if name not in names:
            raise ValueError(f"--cameras {cameras} has no frame for image {name!r} (frames: {names})")
        i = names.index(name)
        img, ki = crop_resize(decode_image(Path(image).read_bytes()), k[i], size)
        imgs.append(img)
        ks.append(ki)
        exts.append(ext[i])
    return torch.stack(imgs)[None], torch.stack(exts)[None], torch.stack(ks)[None]


def cmd_infer(args: argparse.Namespace) -> int:
    import torch

    from cvpr24.pixelsplat.data import encode_image, from_cameras_json

    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"--images {image} not found")
    images, ext, k = _context(args.images, args.cameras, args.size)
    render = from_cameras_json(args.render) if args.render else None
    model = _load_model(args.checkpoint)
    with torch.no_grad():
        gaussians = model.encode(images, ext, k, generator=torch.Generator().manual_seed(args.seed))
        gaussians[0].to_ply(args.out, sh_degree=args.sh_degree)
        print(f"wrote {gaussians.means.shape[1]} Gaussians to {args.out}")
        if render is not None:
            names, r_ext, r_k = render
            views = model.render(gaussians, r_ext[None], r_k[None], (args.size, args.size))[0]
            for name, view in zip(names, views, strict=True):
                target = Path(args.out).with_name(f"{Path(name).stem}_render.png")
                target.write_bytes(encode_image(view, "PNG"))
                print(f"wrote {target}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from cvpr24.common.io import atomic_write
    from cvpr24.common.progress import progress
    from cvpr24.pixelsplat.data import (
        crop_resize,
        decode_image,
        load_chunk,
        read_evaluation_index,
        read_index,
    )
    from cvpr24.pixelsplat.metrics import LPIPS, psnr, ssim

    index = read_evaluation_index(args.index)
    chunks = read_index(Path(args.data) / "test")
    lp = LPIPS.from_paths(args.vgg, args.lpips_lin) if (args.vgg or args.lpips_lin) else None
    model = _load_model(args.checkpoint)
    keys = [key for key in index if key in chunks][: args.limit]
    if not keys:
        raise ValueError(f"--index {args.index}: none of its scenes are listed in {args.data}/test/index.json")
    gen = torch.Generator().manual_seed(args.seed)
    per_scene, cache = {}, {}
    for key in progress(keys, desc="eval"):
        path = chunks[key]
        if path not in cache:
            cache = {path: {s.key: s for s in load_chunk(path)}}
        scene = cache[path][key]
        views = index[key]["context"] + index[key]["target"]
        imgs, ks = zip(*(crop_resize(decode_image(scene.images[i]), scene.intrinsics[i], args.size) for i in views),
                       strict=True)
        imgs, ks, ext = torch.stack(imgs)[None], torch.stack(ks)[None], scene.extrinsics[views][None]
        ext = ext.clone()
        baseline = (ext[0, 0, :3, 3] - ext[0, 1, :3, 3]).norm()
        ext[..., :3, 3] /= baseline  # scene normalisation: context baseline 1
        with torch.no_grad():
            g = model.encode(imgs[:, :2], ext[:, :2], ks[:, :2], generator=gen)
            pred = model.render(g, ext[:, 2:], ks[:, 2:], (args.size, args.size))[0].clamp(0, 1)
        gt = imgs[0, 2:]
        m = {"psnr": float(psnr(pred, gt).mean()), "ssim": float(ssim(pred, gt).mean())}
        if lp is not None:
            m["lpips"] = float(lp(pred, gt).mean())
        per_scene[key] = m
    summary = {name: sum(m[name] for m in per_scene.values()) / len(per_scene) for name in next(iter(
        per_scene.values()))}
    with atomic_write(args.out) as f:
        json.dump({"mean": summary, "scenes": per_scene}, f, indent=1)
    print(json.dumps(summary))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from cvpr24.pixelsplat.data import (
        Scene,
        from_cameras_json,
        from_colmap,
        write_chunk,
        write_index,
    )

    if args.colmap:
        root = Path(args.colmap)
        sparse = root / "sparse" / "0" if (root / "sparse" / "0").is_dir() else root / "sparse"
        if not sparse.is_dir():
            raise ValueError(f"--colmap {root} has no sparse/0 or sparse folder")
        scene = from_colmap(root / "images", sparse, key=args.key)
    else:
        names, ext, k = from_cameras_json(args.cameras)
        base = Path(args.cameras).parent
        missing = [n for n in names if not (base / n).is_file()]
        if missing:
            raise ValueError(f"--cameras {args.cameras}: images not found beside it: {missing}")
        scene = Scene(args.key, ext, k, [(base / n).read_bytes() for n in names], torch.arange(len(names)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_chunk([scene], out / "000000.torch")
    write_index(out, {"000000.torch": [scene.key]})
    print(f"wrote {len(scene.images)} frames of {scene.key!r} to {out / '000000.torch'}")
    return 0


def cmd_check_cameras(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from cvpr24.pixelsplat.data import decode_image, from_cameras_json
    from cvpr24.pixelsplat.geometry import bounds_shim, get_world_rays, project_rays

    names, ext, k = from_cameras_json(args.cameras)
    idx = []
    for image in args.images:
        if Path(image).name not in names:
            raise ValueError(f"--cameras has no frame for {Path(image).name!r}")
        idx.append(names.index(Path(image).name))
    imgs = [decode_image(Path(p).read_bytes()) for p in args.images]
    ext2, k2 = ext[idx], k[idx]
    near, far = bounds_shim(ext2[None], k2[None], tuple(imgs[0].shape[-2:]))
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    colours = plt.cm.tab10(range(args.points))
    gen = torch.Generator().manual_seed(0)
    for src in (0, 1):
        dst = 1 - src
        xy = 0.15 + 0.7 * torch.rand(args.points, 2, generator=gen)
        o, d = get_world_rays(xy, ext2[src], k2[src])
        seg = project_rays(o, d, ext2[dst], k2[dst], near[0, src], far[0, src])
        h0, w0 = imgs[src].shape[-2:]
        h1, w1 = imgs[dst].shape[-2:]
        axes[src, 0].imshow(imgs[src].permute(1, 2, 0).numpy())
        axes[src, 1].imshow(imgs[dst].permute(1, 2, 0).numpy())
        for i in range(args.points):
            axes[src, 0].plot(xy[i, 0] * w0, xy[i, 1] * h0, "o", color=colours[i])
            if seg["overlaps_image"][i]:
                a, b = seg["xy_min"][i], seg["xy_max"][i]
                axes[src, 1].plot([a[0] * w1, b[0] * w1], [a[1] * h1, b[1] * h1], "-", color=colours[i])
        axes[src, 0].set_title(f"points in {Path(args.images[src]).name}")
        axes[src, 1].set_title(f"their epipolar segments (near..far) in {Path(args.images[dst]).name}")
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}: each point's line must pass through the same scene content")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from cvpr24.common.distributed import launched, process_group
    from cvpr24.pixelsplat.model import PixelSplatConfig
    from cvpr24.pixelsplat.train import train_chunks, train_synthetic

    cfg = PixelSplatConfig.cpu() if args.preset == "cpu" else PixelSplatConfig()
    if args.direct:
        cfg = cfg.direct()
    if args.synthetic:
        if args.amp or args.vgg or args.lpips_lin or args.device != "cpu":
            raise ValueError("--amp, --device, --vgg and --lpips-lin apply to --data training only")
        history = train_synthetic(cfg, args.out, steps=args.steps, seed=args.seed or 0, image_size=args.size or 24,
                                  batch_size=args.batch_size or 2, num_scenes=args.scenes)
    else:
        root = Path(args.data) / "train"
        if not (root / "index.json").is_file():
            raise ValueError(f"--data {args.data}: expected {root}/index.json and the .torch chunks it names")
        device = torch.device(args.device)
        if args.amp and device.type != "cuda":
            raise ValueError(f"--amp needs --device cuda (got {args.device}): AMP is CUDA-only")
        if args.amp and not torch.cuda.is_available():
            raise ValueError("--amp needs a CUDA GPU, and none is available")
        if (args.vgg is None) != (args.lpips_lin is None):
            raise ValueError("pass both --vgg and --lpips-lin for the LPIPS term, or neither")
        lpips = None
        if args.vgg:
            from cvpr24.pixelsplat.metrics import LPIPS

            lpips = LPIPS.from_paths(args.vgg, args.lpips_lin).to(device)
        if launched() and device.type == "cuda":  # torchrun: one process per rank
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        with process_group("nccl" if device.type == "cuda" else "gloo"):
            _, history = train_chunks(cfg, root, args.out, steps=args.steps, seed=111_123 if args.seed is None
                                      else args.seed, image_size=args.size or 256, batch_size=args.batch_size or 7,
                                      device=device, amp=args.amp, state_every=args.state_every, lpips=lpips)
    print(f"trained {args.steps} steps; last train PSNR {history['psnr'][-1]:.2f} dB; wrote {args.out}/model.safetensors")
    return 0

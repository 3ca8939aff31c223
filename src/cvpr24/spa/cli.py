"""``cvpr24 spa train | eval | minimizers | retrieve``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a multi-label classifier with SPA (+LPR) or a baseline loss",
                       description="Train on a features .npz (MLP) or on images (COCO JSON, VOC2007, CSV) "
                                   "with a ResNet. Under torchrun / accelerate launch it trains with DDP.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help=".npz with 'features' (N, D), 'labels' (N, C), 'class_names'")
    src.add_argument("--coco", help="COCO instances JSON (images under --images)")
    src.add_argument("--voc", help="VOC2007 folder (ImageSets/Main, JPEGImages)")
    src.add_argument("--csv", help="CSV with columns path,labels (space-separated class names)")
    p.add_argument("--images", help="image folder for --coco / --csv (default: beside the file)")
    p.add_argument("--val-features", help="validation features .npz (mAP per epoch; EMA selection)")
    p.add_argument("--loss", choices=["spa", "bce", "focal", "asl"], default="spa")
    p.add_argument("--lpr", type=float, default=None, metavar="LAMBDA",
                   help="LPR weight (0 disables; default 1 with --loss spa, 0 with the baselines)")
    p.add_argument("--preset", choices=["full", "cpu"], default=None,
                   help="config preset (default: cpu for --features, full for images)")
    p.add_argument("--arch", choices=["mlp", "resnet50", "resnet101"], default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP hidden widths")
    p.add_argument("--width", type=int, default=None, help="ResNet base width (default 64, the standard one)")
    p.add_argument("--pretrained", help="torchvision ResNet ImageNet weights (.pth, loaded weights_only)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (model.safetensors + .json, training_state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training_state.pt")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="calibration and ranking metrics of predictions, + reliability diagram",
                       description="Evaluate a predictions .npz (logits + labels + loss config, or probs + labels),"
                                   " or a trained model on a features file.")
    p.add_argument("predictions", nargs="?", help="predictions .npz")
    p.add_argument("--model", help="model.safetensors written by 'cvpr24 spa train'")
    p.add_argument("--features", help="features .npz to evaluate --model on")
    p.add_argument("--save-predictions", help="write the model's logits, labels and loss config here (.npz)")
    p.add_argument("--bins", type=int, default=15)
    p.add_argument("--plot", help="reliability diagram PNG path")
    p.add_argument("--json", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("minimizers", help="population risk minimisers: SPA is proper, focal/ASL are not")
    p.add_argument("--out", help="folder for minimizers.csv and minimizers.png")
    p.set_defaults(func=cmd_minimizers)

    p = sub.add_parser("retrieve", help="compound-query retrieval on calibrated probabilities",
                       description="Rank examples by P(all of --include and none of --exclude).")
    p.add_argument("predictions", help="predictions .npz (logits + loss config, or probs)")
    p.add_argument("--include", nargs="*", default=[], help="class names or indices that must be present")
    p.add_argument("--exclude", nargs="*", default=[], help="class names or indices that must be absent")
    p.add_argument("--top-k", type=int, default=10)
    p.set_defaults(func=cmd_retrieve)


def _error(message: str) -> int:
    print(f"cvpr24 spa: error: {message}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from cvpr24.spa.data import (
        ImageMultiLabelDataset,
        load_coco_instances,
        load_csv,
        load_features,
        load_voc2007,
    )
    from cvpr24.spa.model import SPAConfig
    from cvpr24.spa.train import as_tensors, distributed_context, save_model, train

    try:
        if args.features:
            x, y, names = load_features(args.features)
            data = as_tensors(x, y)
            preset = args.preset or "cpu"
            shape = {"in_features": x.shape[1], "num_classes": y.shape[1]}
        else:
            if args.coco:
                records = load_coco_instances(args.coco, args.images)
            elif args.voc:
                records = load_voc2007(args.voc)
            else:
                records = load_csv(args.csv, args.images)
            names, preset = records.class_names, args.preset or "full"
            shape = {"num_classes": len(names)}
        overrides = {k: v for k, v in {"arch": args.arch, "epochs": args.epochs, "lr": args.lr,
                                       "batch_size": args.batch_size, "image_size": args.image_size, "resnet_width": args.width,
                                       "hidden": tuple(args.hidden) if args.hidden else None}.items()
                     if v is not None}
        lam = args.lpr if args.lpr is not None else (1.0 if args.loss == "spa" else 0.0)
        overrides.update(shape, loss=args.loss, lam=lam, seed=args.seed)
        cfg = SPAConfig.cpu(**overrides) if preset == "cpu" else SPAConfig(**overrides)
        if not args.features:
            if cfg.arch == "mlp":
                return _error("image training needs --arch resnet50 or resnet101")
            data = ImageMultiLabelDataset(records, cfg.image_size, train=True)
        val = as_tensors(*load_features(args.val_features)[:2]) if args.val_features else None
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _error(str(e))
    if args.pretrained and cfg.arch == "mlp":
        return _error("--pretrained needs --arch resnet50 or resnet101")
    rank, _ = distributed_context()
    log = (lambda s: print(s, flush=True)) if rank == 0 else None
    try:
        result = train(cfg, data, val_data=val, out_dir=args.out, resume=args.resume, device=args.device,
                       log=log, pretrained=args.pretrained)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    if rank == 0:
        save_model(Path(args.out) / "model.safetensors", result.model, cfg, result.loss, class_names=names,
                   metrics=result.history[-1] if result.history else None,
                   data=args.features or args.coco or args.voc or args.csv)
        print(f"wrote {Path(args.out) / 'model.safetensors'}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _load_scores(path: str):
    """Probabilities, labels and class names from a predictions file."""
    from cvpr24.spa.data import load_predictions
    from cvpr24.spa.losses import loss_from_config

    scores, labels, config, names = load_predictions(path)
    if config is None:
        return scores, labels, names
    loss = loss_from_config(config)
    return loss.predict_proba(torch.from_numpy(scores)).numpy(), labels, names


def cmd_eval(args: argparse.Namespace) -> int:
    from cvpr24.spa.data import load_features, save_predictions
    from cvpr24.spa.metrics import calibration_report, reliability_diagram
    from cvpr24.spa.train import load_model, predict_logits

    try:
        if args.model:
            if not args.features:
                return _error("--model needs --features")
            model, loss, _, meta = load_model(args.model)
            x, labels, names = load_features(args.features)
            logits = predict_logits(model, torch.from_numpy(x))
            probs = loss.predict_proba(logits.double()).numpy()
            if args.save_predictions:
                save_predictions(args.save_predictions, logits.numpy(), labels, loss.config(), names)
        elif args.predictions:
            probs, labels, names = _load_scores(args.predictions)
        else:
            return _error("give a predictions file or --model with --features")
        report = calibration_report(probs, labels, n_bins=args.bins)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    width = max(len(k) for k in report)
    for k, v in report.items():
        print(f"{k:<{width}}  {v:.4f}")
    if args.plot:
        from cvpr24.common import atomic_path

        fig, _ = reliability_diagram(probs, labels, args.bins)
        with atomic_path(args.plot) as tmp:
            fig.savefig(tmp, dpi=110)
    if args.json:
        from cvpr24.common import atomic_write

        with atomic_write(args.json) as f:
            json.dump(report, f, indent=2)
    return 0


def cmd_minimizers(args: argparse.Namespace) -> int:
    from cvpr24.spa.reproduce import minimizer_table

    table = minimizer_table()
    keys = [k for k in table if k != "eta"]
    print("eta    " + "  ".join(f"{k:>26}" for k in keys))
    for i, eta in enumerate(table["eta"]):
        if round(eta, 2) in (0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
            print(f"{eta:.2f}   " + "  ".join(f"{table[k][i]:>26.4f}" for k in keys))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cvpr24.common import atomic_path, atomic_write

        out = Path(args.out)
        with atomic_write(out / "minimizers.csv") as f:
            f.write(",".join(["eta", *keys]) + "\n")
            for i, eta in enumerate(table["eta"]):
                f.write(",".join(f"{v:.6f}" for v in [eta, *(table[k][i] for k in keys)]) + "\n")
        fig, ax = plt.subplots(figsize=(4.2, 4))
        for k in keys:
            ax.plot(table["eta"], table[k], label=k)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="true posterior eta", ylabel="read-out at the risk minimiser")
        ax.legend(fontsize=7)
        with atomic_path(out / "minimizers.png") as tmp:
            fig.savefig(tmp, dpi=110)
        print(f"wrote {out / 'minimizers.csv'} and {out / 'minimizers.png'}")
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from cvpr24.spa.decision import retrieve

    try:
        probs, _, names = _load_scores(args.predictions)
        index = {n: i for i, n in enumerate(names)}

        def resolve(tokens):
            out = []
            for t in tokens:
                if t in index:
                    out.append(index[t])
                elif t.isdigit():
                    out.append(int(t))
                else:
                    raise ValueError(f"unknown class {t!r}; known: {', '.join(names[:20])}"
                                     + (" ..." if len(names) > 20 else ""))
            return out

        hits = retrieve(probs, resolve(args.include), resolve(args.exclude), top_k=args.top_k)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    for rank, (i, s) in enumerate(zip(hits.indices, hits.scores, strict=True), 1):
        print(f"{rank:>4}  example {int(i):>7}  P(query) = {s:.4f}")
    return 0

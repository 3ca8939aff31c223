"""``cvpr24 spa train | eval | predict | minimizers | retrieve``.

    cvpr24 spa train --coco instances_train2014.json --images train2014 \\
        --val-coco instances_val2014.json --val-images val2014 --out run
    cvpr24 spa eval --model run/model.safetensors --coco instances_val2014.json --images val2014
    cvpr24 spa predict --model run/model.safetensors --csv photos.csv --out probs.csv

Every error is one line naming the flag or file, exit code 2, before any expensive work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from cvpr24.common.argtypes import number_in, positive_float, positive_int

nonneg_float = number_in(float, 0)
real = number_in(float)
nonneg_int = number_in(int, 0)


def _below_one(text: str) -> float:
    value = nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def default_workers() -> int:
    """DataLoader workers for image data: one per CPU this process may use, less one for the
    training loop, at most 8 (ASL's setting)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1))


# the loss's settings: flag -> (SPAConfig field, argparse type, help)
LOSS_FLAGS = {
    "--zeta-pos": ("zeta_pos", positive_float, "SPA weight of the positive term (> 0; default 1)"),
    "--k-pos": ("k_pos", positive_float, "SPA slope of the positive term (> 0; default 1)"),
    "--b-pos": ("b_pos", real, "SPA offset of the positive term (default 0)"),
    "--zeta-neg": ("zeta_neg", positive_float, "SPA weight of the negative term (> 0; default 5)"),
    "--k-neg": ("k_neg", positive_float, "SPA slope of the negative term (> 0; default 3)"),
    "--b-neg": ("b_neg", real, "SPA offset of the negative term (default 1)"),
    "--focal-gamma": ("focal_gamma", nonneg_float, "focal loss gamma (>= 0; default 2)"),
    "--asl-gamma-neg": ("asl_gamma_neg", nonneg_float, "ASL negative focusing (>= 0; default 4)"),
    "--asl-gamma-pos": ("asl_gamma_pos", nonneg_float, "ASL positive focusing (>= 0; default 0)"),
    "--asl-clip": ("asl_clip", _below_one, "ASL probability margin in [0, 1) (default 0.05)"),
}


def _add_images(p: argparse.ArgumentParser, prefix: str = "", required: bool = False,
                features_help: str | None = None) -> None:
    """``--features`` / ``--coco`` / ``--voc`` / ``--csv`` (+ ``--images``), with ``prefix``
    (``val-``) for the validation set."""
    group = p.add_mutually_exclusive_group(required=required)
    if features_help:
        group.add_argument(f"--{prefix}features", help=features_help)
    group.add_argument(f"--{prefix}coco", help="COCO instances JSON (images under --images)")
    group.add_argument(f"--{prefix}voc", help="VOC2007 folder (ImageSets/Main, JPEGImages)")
    group.add_argument(f"--{prefix}csv", help="CSV with columns path,labels (space-separated class names)")
    p.add_argument(f"--{prefix}images", help=f"image folder for --{prefix}coco / --{prefix}csv "
                                             "(default: beside the file)")


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voc-split", default="test", help="VOC split to read (default test)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers for images (default: CPUs - 1, at most 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a multi-label classifier with SPA (+LPR) or a baseline loss",
                       description="Train on a features .npz (MLP) or on images (COCO JSON, VOC2007, CSV) "
                                   "with a ResNet. Under torchrun / accelerate launch it trains with DDP.")
    _add_images(p, required=True,
                features_help=".npz with 'features' (N, D), 'labels' (N, C), 'class_names'")
    _add_images(p, "val-", features_help="validation features .npz")
    p.add_argument("--loss", choices=["spa", "bce", "focal", "asl"], default="spa")
    p.add_argument("--lpr", type=nonneg_float, default=None, metavar="LAMBDA",
                   help="LPR weight >= 0 (0 disables; default 1 with --loss spa, 0 with the baselines)")
    p.add_argument("--lpr-norm", choices=["classes", "pairs"], default=None,
                   help="LPR normaliser: number of known labels (classes, default) or of pairs")
    p.add_argument("--lpr-score", choices=["log_odds", "raw"], default=None,
                   help="LPR pair score: l(v) through the link (log_odds, default) or raw v "
                        "(breaks SPA's properness, docs/spa.md)")
    for flag, (_, kind, text) in LOSS_FLAGS.items():
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--preset", choices=["full", "cpu"], default=None,
                   help="config preset (default: cpu for --features, full for images)")
    p.add_argument("--arch", choices=["mlp", "resnet50", "resnet101"], default=None)
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None, help="MLP hidden widths")
    p.add_argument("--width", type=positive_int, default=None,
                   help="ResNet base width (default 64, the standard one)")
    p.add_argument("--pretrained", help="torchvision ResNet ImageNet weights (.pth, loaded weights_only)")
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--image-size", type=positive_int, default=None)
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader workers for images (default: CPUs - 1, at most 8)")
    p.add_argument("--voc-split", default="trainval", help="VOC split to train on (default trainval)")
    p.add_argument("--val-voc-split", default="test", help="VOC split to validate on (default test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (model.safetensors + .json, training_state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training_state.pt")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="calibration and ranking metrics of predictions, + reliability diagram",
                       description="Evaluate a predictions .npz (logits + labels + loss config, or probs + "
                                   "labels), or a trained model on features or labelled images.")
    p.add_argument("predictions", nargs="?", help="predictions .npz")
    p.add_argument("--model", help="model.safetensors written by 'cvpr24 spa train'")
    _add_images(p, features_help="features .npz to evaluate --model on")
    _add_inference(p)
    p.add_argument("--save-predictions", help="write the model's logits, labels and loss config here (.npz)")
    p.add_argument("--bins", type=positive_int, default=15)
    p.add_argument("--plot", help="reliability diagram PNG path")
    p.add_argument("--json", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="calibrated probabilities of a trained model on features or images",
                       description="Write P(class | input) for every input: .npz (probs, labels, "
                                   "class_names; readable by 'eval' and 'retrieve') or .csv (one row "
                                   "per input, one column per class).")
    p.add_argument("--model", required=True, help="model.safetensors written by 'cvpr24 spa train'")
    _add_images(p, required=True, features_help="features .npz")
    _add_inference(p)
    p.add_argument("--out", required=True, help="probabilities: .npz or .csv")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("minimizers", help="population risk minimisers: SPA is proper, focal/ASL are not")
    p.add_argument("--out", help="folder for minimizers.csv and minimizers.png")
    p.set_defaults(func=cmd_minimizers)

    p = sub.add_parser("retrieve", help="compound-query retrieval on calibrated probabilities",
                       description="Rank examples by P(all of --include and none of --exclude).")
    p.add_argument("predictions", help="predictions .npz (logits + loss config, or probs)")
    p.add_argument("--include", nargs="*", default=[], help="class names or indices that must be present")
    p.add_argument("--exclude", nargs="*", default=[], help="class names or indices that must be absent")
    p.add_argument("--top-k", type=positive_int, default=10)
    p.set_defaults(func=cmd_retrieve)


class InputError(ValueError):
    """A bad command-line argument or file; the message names the flag."""


def _error(message: str) -> int:
    print(f"cvpr24 spa: error: {message}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def _records(args: argparse.Namespace, prefix: str = "", split: str = "test", class_names=None):
    """The image records named by ``--<prefix>coco|voc|csv``, or None; every image must exist."""
    from cvpr24.spa.data import load_coco_instances, load_csv, load_voc2007

    key = prefix.replace("-", "_")
    images = getattr(args, f"{key}images")
    if getattr(args, f"{key}coco"):
        flag, records = f"--{prefix}coco", load_coco_instances(getattr(args, f"{key}coco"), images)
    elif getattr(args, f"{key}voc"):
        flag, records = f"--{prefix}voc", load_voc2007(getattr(args, f"{key}voc"), split)
    elif getattr(args, f"{key}csv"):
        flag, records = f"--{prefix}csv", load_csv(getattr(args, f"{key}csv"), images,
                                                  class_names=class_names)
    else:
        return None
    if not len(records):
        raise InputError(f"{flag}: no images listed")
    missing = [p for p in records.paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{flag}: {len(missing)} of {len(records)} images are missing, e.g. {missing[0]} "
                         f"(pass --{prefix}images with the image folder)")
    if class_names is not None and list(records.class_names) != list(class_names):
        raise InputError(f"{flag}: its classes ({_names(records.class_names)}) differ from the "
                         f"{'training set' if prefix else 'model'}'s ({_names(class_names)})")
    return records


def _names(names) -> str:
    return ", ".join(list(names)[:5]) + (f", ... ({len(names)})" if len(names) > 5 else "")


def _model_inputs(args: argparse.Namespace, cfg, class_names):
    """``(data, labels, names, ids)`` for ``--model``: a features tensor or an image Dataset."""
    from cvpr24.spa.data import ImageMultiLabelDataset, load_features

    if args.features:
        if cfg.arch != "mlp":
            raise InputError(f"--model {args.model} was trained on images ({cfg.arch}); pass --coco, "
                             "--voc or --csv, not --features")
        x, y, names = load_features(args.features)
        if x.shape[1] != cfg.in_features:
            raise InputError(f"--features {args.features}: {x.shape[1]} feature columns; --model expects "
                             f"{cfg.in_features}")
        if y.shape[1] != cfg.num_classes:
            raise InputError(f"--features {args.features}: {y.shape[1]} label columns; --model has "
                             f"{cfg.num_classes} classes")
        return torch.from_numpy(x), y, names, [str(i) for i in range(len(x))]
    if cfg.arch == "mlp":
        raise InputError(f"--model {args.model} is an MLP on {cfg.in_features} features; pass --features")
    names = class_names or [str(i) for i in range(cfg.num_classes)]
    records = _records(args, split=args.voc_split, class_names=names)
    if records is None:
        raise InputError("--model needs --features, --coco, --voc or --csv")
    data = ImageMultiLabelDataset(records, cfg.image_size, train=False)
    return data, records.labels, names, records.paths


def _probabilities(args: argparse.Namespace):
    """Load ``--model``, run it on its input: ``(probs, logits, labels, names, ids, loss)``."""
    from cvpr24.spa.train import load_model, predict_logits

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, loss, cfg, meta = load_model(_existing("--model", args.model), device=device)
    data, labels, names, ids = _model_inputs(args, cfg, meta.get("class_names"))
    workers = args.workers if args.workers is not None else default_workers()
    logits = predict_logits(model, data, batch_size=args.batch_size, device=device,
                            num_workers=0 if isinstance(data, torch.Tensor) else workers)
    probs = loss.predict_proba(logits.double()).numpy()
    return probs, logits.numpy(), labels, names, ids, loss


def _existing(flag: str, name: str) -> str:
    if not Path(name).is_file():
        raise InputError(f"{flag} {name}: no such file")
    return name


# --------------------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from cvpr24.spa.data import ImageMultiLabelDataset, load_features
    from cvpr24.spa.model import SPAConfig
    from cvpr24.spa.train import as_tensors, distributed_context, save_model, train

    try:
        val = None
        if args.features:
            x, y, names = load_features(args.features)
            data = as_tensors(x, y)
            preset = args.preset or "cpu"
            shape = {"in_features": x.shape[1], "num_classes": y.shape[1]}
            if any(getattr(args, f"val_{k}") for k in ("coco", "voc", "csv")):
                raise InputError("--features training validates on --val-features")
        else:
            records = _records(args, split=args.voc_split)
            names, preset = records.class_names, args.preset or "full"
            shape = {"num_classes": len(names)}
            if args.val_features:
                raise InputError("image training validates on images: pass --val-coco, --val-voc "
                                 "or --val-csv instead of --val-features")
        overrides = {k: v for k, v in {"arch": args.arch, "epochs": args.epochs, "lr": args.lr,
                                       "batch_size": args.batch_size, "image_size": args.image_size,
                                       "resnet_width": args.width, "lpr_norm": args.lpr_norm,
                                       "lpr_score": args.lpr_score,
                                       "hidden": tuple(args.hidden) if args.hidden else None}.items()
                     if v is not None}
        overrides.update({field: getattr(args, flag[2:].replace("-", "_"))
                          for flag, (field, _, _) in LOSS_FLAGS.items()
                          if getattr(args, flag[2:].replace("-", "_")) is not None})
        lam = args.lpr if args.lpr is not None else (1.0 if args.loss == "spa" else 0.0)
        workers = args.workers if args.workers is not None else default_workers()
        overrides.update(shape, loss=args.loss, lam=lam, seed=args.seed, num_workers=workers)
        cfg = SPAConfig.cpu(**overrides) if preset == "cpu" else SPAConfig(**overrides)
        if args.features:
            if args.val_features:
                xv, yv, val_names = load_features(args.val_features)
                if xv.shape[1] != x.shape[1] or val_names != names:
                    raise InputError(f"--val-features {args.val_features}: {xv.shape[1]} features and classes "
                                     f"({_names(val_names)}); training has {x.shape[1]} and ({_names(names)})")
                val = as_tensors(xv, yv)
        else:
            if cfg.arch == "mlp":
                raise InputError("image training needs --arch resnet50 or resnet101")
            data = ImageMultiLabelDataset(records, cfg.image_size, train=True)
            val_records = _records(args, "val-", split=args.val_voc_split, class_names=names)
            if val_records is not None:
                val = ImageMultiLabelDataset(val_records, cfg.image_size, train=False)
        if args.pretrained and cfg.arch == "mlp":
            raise InputError("--pretrained needs --arch resnet50 or resnet101")
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _error(str(e))
    rank, _ = distributed_context()
    log = (lambda s: print(s, flush=True)) if rank == 0 else None
    try:
        result = train(cfg, data, val_data=val, out_dir=args.out, resume=args.resume, device=args.device,
                       log=log, pretrained=args.pretrained)
        if rank == 0:
            save_model(Path(args.out) / "model.safetensors", result.model, cfg, result.loss, class_names=names,
                       metrics=result.history[-1] if result.history else None,
                       data=args.features or args.coco or args.voc or args.csv)
            print(f"wrote {Path(args.out) / 'model.safetensors'}")
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    finally:
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
    from cvpr24.spa.data import save_predictions
    from cvpr24.spa.metrics import calibration_report, reliability_diagram

    try:
        if args.model:
            if args.predictions:
                raise InputError("give a predictions file or --model, not both")
            probs, logits, labels, names, _, loss = _probabilities(args)
            if np.isnan(labels).all():
                raise InputError("the input has no labels to evaluate against; use 'cvpr24 spa predict'")
            if args.save_predictions:
                save_predictions(args.save_predictions, logits, labels, loss.config(), names)
        elif args.predictions:
            if args.features or args.coco or args.voc or args.csv:
                raise InputError("--features / --coco / --voc / --csv need --model")
            probs, labels, names = _load_scores(args.predictions)
        else:
            raise InputError("give a predictions file, or --model with --features, --coco, --voc or --csv")
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


def cmd_predict(args: argparse.Namespace) -> int:
    from cvpr24.common import atomic_path, atomic_write

    try:
        if Path(args.out).suffix.lower() not in (".npz", ".csv"):
            raise InputError(f"--out {args.out}: expected a .npz or .csv file name")
        probs, _, labels, names, ids, _ = _probabilities(args)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    if Path(args.out).suffix.lower() == ".npz":
        with atomic_path(args.out) as tmp:
            np.savez(tmp, probs=probs.astype(np.float32), labels=labels.astype(np.float32),
                     class_names=np.array(names, dtype=str), ids=np.array(ids, dtype=str))
    else:
        import csv

        with atomic_write(args.out, newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *names])
            w.writerows([i, *(f"{p:.6g}" for p in row)] for i, row in zip(ids, probs, strict=True))
    print(f"P(class | input) for {len(probs)} inputs x {len(names)} classes -> {args.out}")
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
        from matplotlib.figure import Figure

        from cvpr24.common import atomic_path, atomic_write

        out = Path(args.out)
        with atomic_write(out / "minimizers.csv") as f:
            f.write(",".join(["eta", *keys]) + "\n")
            for i, eta in enumerate(table["eta"]):
                f.write(",".join(f"{v:.6f}" for v in [eta, *(table[k][i] for k in keys)]) + "\n")
        fig = Figure(figsize=(4.2, 4))
        ax = fig.subplots()
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

        def resolve(flag, tokens):
            out = []
            for t in tokens:
                if t in index:
                    out.append(index[t])
                elif t.isdigit() and int(t) < len(names):
                    out.append(int(t))
                else:
                    raise InputError(f"{flag}: unknown class {t!r}; known: {_names(names)}")
            return out

        hits = retrieve(probs, resolve("--include", args.include), resolve("--exclude", args.exclude),
                        top_k=args.top_k)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    for rank, (i, s) in enumerate(zip(hits.indices, hits.scores, strict=True), 1):
        print(f"{rank:>4}  example {int(i):>7}  P(query) = {s:.4f}")
    return 0

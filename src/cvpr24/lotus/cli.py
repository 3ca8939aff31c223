"""``cvpr24 lotus attack | evaluate | defend | stamp | train``.

Multi-GPU: ``torchrun --nproc_per_node 4 -m cvpr24 lotus attack ...`` (or ``accelerate launch``)
initialises ``torch.distributed`` from the environment; the loops shard every epoch and DDP
averages gradients; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from cvpr24.common.distributed import init_process_group, launched
from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.common.seed import get_device, seed_everything

DEFENSE_CHOICES = ("nc", "pixel", "strip", "ft", "fp", "nad", "anp")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("attack", help="train a clean model (or load one) and poison it with LOTUS")
    _data_args(p)
    p.add_argument("--arch", default="resnet18", help="resnet18 | resnet34 | vgg11 | vgg13 | vgg16 | small_cnn")
    p.add_argument("--num-par", type=int, default=4, help="K, the number of partitions / triggers (1-8)")
    p.add_argument("--clean-model", help="clean weights: our .safetensors or an official state_dict .pth")
    p.add_argument("--preset", choices=("full", "cpu"), default="full",
                   help="LotusConfig defaults: official full scale, or the CPU preset")
    p.add_argument("--epochs", type=int, help="poisoning epochs (default: the preset's)")
    p.add_argument("--steps", type=int, help="poisoning budget in steps (overrides --epochs)")
    p.add_argument("--clean-epochs", type=int, help="clean-model epochs when --clean-model is not given")
    p.add_argument("--surrogate-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--cluster", choices=("kmeans", "gmm"), default="kmeans")
    feats = p.add_mutually_exclusive_group()
    feats.add_argument("--partition-features", metavar="FILE.npy",
                       help="features to cluster the training victims on, one row per victim in dataset "
                            "order (computed elsewhere); default: 4x4 pooled pixels")
    feats.add_argument("--lpips-vgg", metavar="FILE",
                       help="cluster on LPIPS-VGG features (official partition): torchvision's VGG16 "
                            "state dict (.pth or .safetensors); needs --lpips-lin")
    p.add_argument("--lpips-lin", metavar="FILE",
                   help="the LPIPS linear layers (lpips/weights/v0.1/vgg.pth or .safetensors)")
    p.add_argument("--lpips-official-range", action="store_true",
                   help="feed [0, 1] images to LPIPS as the official code does (default: rescale to [-1, 1])")
    p.add_argument("--no-flip", action="store_true",
                   help="no horizontal flips in training (classes that are not mirror-invariant)")
    p.add_argument("--asr-bound", type=float, default=0.9,
                   help="model selection: last evaluation with ASR >= this (official 0.9)")
    p.add_argument("--seed", type=int, default=1024)
    p.add_argument("--resume", action="store_true", help="continue from OUT/poison_state.pt")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_friendly(cmd_attack))

    p = sub.add_parser("evaluate", help="BA, ASR, ASR_par and the official result.json")
    _data_args(p)
    p.add_argument("--model", required=True, help="backdoored model (.safetensors from 'attack')")
    p.add_argument("--partitioner", help="surrogate (.safetensors); omit for K = 1 (BadNets)")
    p.add_argument("--out", required=True, help="result.json path")
    p.set_defaults(func=_friendly(cmd_evaluate))

    p = sub.add_parser("defend", help="run one defense on a model")
    _data_args(p)
    p.add_argument("--method", required=True, choices=DEFENSE_CHOICES)
    p.add_argument("--model", required=True)
    p.add_argument("--partitioner", help="surrogate, to measure ASR / ASR_par after mitigation")
    p.add_argument("--nc-steps", type=int, default=1000)
    p.add_argument("--nc-samples", type=int, default=1000)
    p.add_argument("--nc-all-classes", action="store_true",
                   help="nc / pixel: probe images of every class and reverse every label (the "
                        "original NC) instead of victim images with the victim label excluded")
    p.add_argument("--fp-variant", choices=("standard", "official"), default="standard",
                   help="fp: remove the dormant channels (standard, Liu et al.) or rebuild the last "
                        "ResNet block as the official LOTUS code does (ResNet models only)")
    p.add_argument("--clean-frac", type=float, default=0.05, help="defender's clean share of train (5%%)")
    p.add_argument("--no-flip", action="store_true",
                   help="ft / fp / nad: no horizontal flips (classes that are not mirror-invariant)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-model", help="write the mitigated model here (.safetensors)")
    p.add_argument("--out", required=True, help="report .json path")
    p.set_defaults(func=_friendly(cmd_defend))

    p = sub.add_parser("stamp", help="stamp one patch trigger on an image file")
    p.add_argument("--image", required=True)
    p.add_argument("--trigger", type=int, required=True, help="trigger index 0-7")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_friendly(cmd_stamp))

    p = sub.add_parser("train", help="train the reproduction's checkpoints (clean, surrogate, arms)")
    p.add_argument("--out", help="folder (default: the package's checkpoints/ used by quick mode)")
    p.add_argument("--seeds", type=int)
    p.add_argument("--full", action="store_true")
    p.set_defaults(func=_friendly(cmd_train))


def _friendly(fn):
    """Bad input -> one line on stderr and exit code 2; a failed attack -> exit code 1."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from cvpr24.lotus.attack import AttackFailedError

        try:
            return fn(args)
        except AttackFailedError as e:
            print(f"cvpr24 lotus {args.cmd}: attack failed: {e}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError) as e:
            print(f"cvpr24 lotus {args.cmd}: error: {e}", file=sys.stderr)
            return 2

    return wrapper


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="cifar10:DIR | folder:DIR | npz:FILE (may contain {split}) | shapes:N")
    p.add_argument("--image-size", type=int, default=32, help="resize for folder data")
    p.add_argument("--victim", type=int, default=0)
    p.add_argument("--target", type=int, default=9)
    p.add_argument("--device", default="auto", help="cpu | cuda[:i] | auto")


def _init_distributed(device: str) -> tuple[int, torch.device]:
    """Initialise ``torch.distributed`` under torchrun / accelerate (WORLD_SIZE > 1)."""
    if not launched():
        return 0, get_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), dev


WEAK_ASR_PAR = 0.15      # ASR_par above this: wrong triggers still flip victims (weak focusing)
WEAK_BA_DROP = 0.03      # a backdoor that costs more than 3 accuracy points is not stealthy


def _load(path: str, device: torch.device, flag: str = "--model"):
    from cvpr24.lotus.io import load_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: {path} not found")
    return load_model(path, device)


def _check_out_spares_models(args: argparse.Namespace) -> None:
    """A report written over a model's JSON sidecar would make the model unloadable."""
    models = [getattr(args, a, None) for a in ("model", "partitioner")]
    sidecars = {Path(m).with_suffix(".json").resolve() for m in models if m}
    if Path(args.out).resolve() in sidecars:
        raise ValueError(f"--out {args.out} is the sidecar of a model given here; choose another report path")


def _checked_data(args, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of --data and check it and --victim / --target against it."""
    from cvpr24.lotus.data import check_classes, check_dataset, load_dataset

    x, y = load_dataset(args.data, split, args.image_size)
    n = check_dataset(x, y, f"--data ({split} images)", f"--data ({split} labels)")
    check_classes(args.victim, args.target, n, ("--victim", "--target"))
    return x, y


def _model_k(info: dict) -> int:
    """K of a saved backdoored model (the reproduction's baseline arms are single-trigger)."""
    return 1 if info.get("arm") in ("badnets", "wanet") else int(info.get("k", 1))


def _check_model_fits(info: dict, x: torch.Tensor, flag: str = "--model") -> None:
    size = info.get("image_size")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{flag} was trained on {size}x{size} images but --data gives "
                         f"{x.shape[-2]}x{x.shape[-1]}; pass --image-size {size} (folder data) or "
                         "data of that size")


def _partitioner(args, num_classes: int, device: torch.device, model_info: dict | None = None):
    """The secret partition function (--partitioner); refused when a K > 1 model lacks it."""
    from cvpr24.lotus.partition import ConstantPartitioner, SurrogatePartitioner

    k = _model_k(model_info or {})
    if not args.partitioner:
        if k > 1:
            raise ValueError(f"--partitioner is required: --model was poisoned with K = {k} partitions "
                             "(pass the surrogate.safetensors written beside it); without it the model "
                             "would be scored as single-trigger BadNets")
        return ConstantPartitioner()
    sur, info = _load(args.partitioner, device, "--partitioner")
    part = SurrogatePartitioner.from_surrogate(sur, num_classes, info["outputs"] - num_classes)
    if model_info is not None and "k" in model_info and part.n_partitions != k:
        raise ValueError(f"--partitioner has K = {part.n_partitions} partitions but --model was "
                         f"poisoned with K = {k}")
    return part


def _partition_features(args: argparse.Namespace, x_victims, device):
    """The features the training victims are clustered on, and their name; read and checked on the
    victims before any training (errors name the flag)."""
    from cvpr24.lotus.partition import LpipsFeatures, PrecomputedFeatures

    if (args.lpips_vgg is None) != (args.lpips_lin is None):
        raise ValueError("--lpips-vgg and --lpips-lin go together (VGG16 weights and LPIPS linear layers)")
    if args.lpips_official_range and args.lpips_vgg is None:
        raise ValueError("--lpips-official-range needs --lpips-vgg and --lpips-lin")
    if args.partition_features:
        try:
            features = PrecomputedFeatures(args.partition_features)
            features(x_victims)
        except (ValueError, OSError) as e:
            raise ValueError(f"--partition-features: {e}") from None
        return features, f"precomputed features ({Path(args.partition_features).name})"
    if args.lpips_vgg:
        try:
            features = LpipsFeatures.from_paths(args.lpips_vgg, args.lpips_lin,
                                                compat_lpips_range=args.lpips_official_range).to(device)
        except (ValueError, OSError) as e:
            raise ValueError(f"--lpips-vgg / --lpips-lin: {e}") from None
        return features, "LPIPS-VGG relu3_3 + lin2" + (" (official [0, 1] input)" if args.lpips_official_range else "")
    return None, "4x4 pooled pixels"


def cmd_attack(args: argparse.Namespace) -> int:
    rank, device = _init_distributed(args.device)
    try:
        return _attack(args, rank, device)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _attack(args: argparse.Namespace, rank: int, device: torch.device) -> int:
    """Train (or load) the clean model, poison it on every rank, and on rank 0 evaluate and save."""
    from cvpr24.lotus.attack import LotusAttack, LotusConfig, check_attack_inputs, train_clean
    from cvpr24.lotus.io import load_model, load_official_state_dict, save_model
    from cvpr24.lotus.metrics import (
        benign_accuracy,
        evaluate_attack,
        official_result,
        write_result_json,
    )
    from cvpr24.lotus.models import build_model

    seed_everything(args.seed)
    x, y = _checked_data(args, "train")
    xt, yt = _checked_data(args, "test")
    num_classes = int(y.max()) + 1
    base = LotusConfig() if args.preset == "full" else LotusConfig.cpu()
    overrides = {k: v for k, v in {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size,
                                   "lr": args.lr, "clean_epochs": args.clean_epochs,
                                   "surrogate_epochs": args.surrogate_epochs}.items() if v is not None}
    cfg = replace(base, n_partitions=args.num_par, cluster=args.cluster, seed=args.seed,
                  asr_bound=args.asr_bound, device=str(device), **overrides,
                  **({"flip": False} if args.no_flip else {}))
    cfg.validate()
    try:
        check_attack_inputs(x, y, args.victim, args.target, cfg)
    except ValueError as e:
        raise ValueError(f"--victim {args.victim} / --num-par / --batch-size: {e}") from None
    features, features_name = _partition_features(args, x[y == args.victim], device)
    out = Path(args.out)
    if args.clean_model and not Path(args.clean_model).is_file():
        raise FileNotFoundError(f"--clean-model: {args.clean_model} not found")
    if args.clean_model:
        if args.clean_model.endswith(".safetensors"):
            clean, info = load_model(args.clean_model, device)
            _check_model_fits(info, x, "--clean-model")
        else:
            clean, _ = load_official_state_dict(args.clean_model, args.arch, num_classes)
            clean = clean.to(device)
    else:
        clean = train_clean(build_model(args.arch, num_classes), x, y, cfg)
        if rank == 0:
            save_model(out / "clean.safetensors", clean, arch=args.arch, num_classes=num_classes,
                       meta={"image_size": x.shape[-1]}, config=cfg, seed=args.seed, data=args.data)
    art = LotusAttack(cfg).fit(clean, x, y, args.victim, args.target, eval_data=(xt, yt), features=features,
                               state_path=out / "poison_state.pt", resume=args.resume)
    if rank != 0:
        return 0
    xv = xt[yt == args.victim]
    metrics = evaluate_attack(art.model, xt, yt, args.victim, args.target, art.triggers, art.partitioner)
    metrics["clean_ba"] = benign_accuracy(clean, xt, yt)
    meta = {"victim": args.victim, "target": args.target, "k": cfg.n_partitions, "image_size": x.shape[-1],
            "triggers": art.triggers.describe(),
            "partition": f"{cfg.cluster} on {features_name} + C+K surrogate"}
    save_model(out / "lotus.safetensors", art.model, arch=args.arch, num_classes=num_classes,
               meta=meta, config=cfg, seed=args.seed, data=args.data,
               metrics={**metrics, "history": art.history})
    if cfg.n_partitions > 1:  # K = 1 (BadNets) has no partition function to save
        save_model(out / "surrogate.safetensors", art.partitioner.surrogate_, arch=args.arch,
                   num_classes=num_classes, meta={**meta, "agreement": art.cluster_agreement},
                   config=cfg, seed=args.seed, data=args.data)
    official = official_result(art.model, xv, art.partitioner.predict(xv), art.triggers, args.target)
    write_result_json(out / "result.json", official, metrics)
    print(json.dumps({k: metrics[k] for k in ("ba", "clean_ba", "asr", "asr_par")}))
    for problem in weak_attack(metrics, args.asr_bound):
        print(f"cvpr24 lotus attack: warning: weak attack: {problem}", file=sys.stderr)
    return 0


def weak_attack(metrics: dict, asr_bound: float) -> list[str]:
    """What makes an attack's test metrics weak (empty when none): ASR below the selection bound,
    ASR_par above WEAK_ASR_PAR (wrong triggers flip victims too), BA drop above WEAK_BA_DROP."""
    out = []
    if metrics["asr"] < asr_bound:
        out.append(f"test ASR {metrics['asr']:.3f} < --asr-bound {asr_bound}")
    if metrics["asr_par"] == metrics["asr_par"] and metrics["asr_par"] > WEAK_ASR_PAR:   # nan for K = 1
        out.append(f"ASR_par {metrics['asr_par']:.3f} > {WEAK_ASR_PAR}: wrong triggers also flip victims")
    drop = metrics["clean_ba"] - metrics["ba"]
    if drop > WEAK_BA_DROP:
        out.append(f"benign accuracy dropped {100 * drop:.1f} points ({metrics['clean_ba']:.3f} -> "
                   f"{metrics['ba']:.3f}) > {100 * WEAK_BA_DROP:.0f}")
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cvpr24.lotus.metrics import evaluate_attack, official_result, write_result_json
    from cvpr24.lotus.triggers import TriggerSet

    device = get_device(args.device)
    _check_out_spares_models(args)
    xt, yt = _checked_data(args, "test")
    model, info = _load(args.model, device)
    _check_model_fits(info, xt)
    part = _partitioner(args, info["num_classes"], device, info)
    trig = TriggerSet(part.n_partitions, tuple(xt.shape[-2:]))
    metrics = evaluate_attack(model, xt, yt, args.victim, args.target, trig, part)
    xv = xt[yt == args.victim]
    write_result_json(args.out, official_result(model, xv, part.predict(xv), trig, args.target), metrics)
    print(json.dumps({k: metrics[k] for k in ("ba", "asr", "asr_par")}))
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from cvpr24.lotus import defenses as D
    from cvpr24.lotus.io import save_model
    from cvpr24.lotus.triggers import TriggerSet

    device = get_device(args.device)
    if args.save_model and args.method in ("nc", "pixel", "strip"):
        raise ValueError(f"--save-model: --method {args.method} is a detector and changes no model")
    _check_out_spares_models(args)
    if args.fp_variant == "official" and args.method != "fp":
        raise ValueError(f"--fp-variant: only for --method fp, got --method {args.method}")
    if args.fp_variant == "official" and args.save_model:
        raise ValueError("--save-model: the official fine-pruning rebuild is another architecture "
                         "(narrower last block, conv shortcut); save with --fp-variant standard")
    x, y = _checked_data(args, "train")
    xt, yt = _checked_data(args, "test")
    model, info = _load(args.model, device)
    _check_model_fits(info, xt)
    if args.fp_variant == "official" and not info["arch"].startswith("resnet"):
        raise ValueError(f"--fp-variant official rebuilds the last ResNet block; --model is {info['arch']}")
    # detectors need no partition; the rest report ASR / ASR_par, which need the real one
    part = _partitioner(args, info["num_classes"], device, None if args.method in ("nc", "pixel") else info)
    trig = TriggerSet(part.n_partitions, tuple(xt.shape[-2:]))
    ev = D.attack_evaluator(xt, yt, args.victim, args.target, trig, part)
    idx = D.balanced_subset(y, args.clean_frac, seed=args.seed)
    xc, yc = x[idx], y[idx]
    xv = xt[yt == args.victim][:args.nc_samples]
    probe, exclude = (xt[:args.nc_samples], None) if args.nc_all_classes else (xv, args.victim)
    if args.method == "nc":
        rep = D.neural_cleanse(model, probe, exclude=exclude, steps=args.nc_steps, seed=args.seed)
        rep.details.pop("masks")
    elif args.method == "pixel":
        rep = D.pixel(model, probe, exclude=exclude, steps=args.nc_steps, seed=args.seed)
    elif args.method == "strip":
        poisoned = trig.stamp(xv, part.predict(xv))
        rep = D.strip(model, xt[yt != args.victim][:len(xv)], poisoned, xc, seed=args.seed)
    elif args.method == "ft":
        rep = D.fine_tune(model, xc, yc, seed=args.seed, flip=not args.no_flip, evaluate=ev)
    elif args.method == "fp":
        rep = D.fine_prune(model, xc, yc, xt[:1000], variant=args.fp_variant, seed=args.seed,
                           flip=not args.no_flip, evaluate=ev)
    elif args.method == "nad":
        rep = D.nad(model, xc, yc, seed=args.seed, flip=not args.no_flip, evaluate=ev)
    else:
        rep = D.anp(model, xc, yc, seed=args.seed, evaluate=ev)
        rep.details.pop("masks")
    with atomic_write(args.out) as f:
        json.dump(rep.to_dict(), f, indent=2, default=str)
    if args.save_model:   # fp: the pruned network in the original architecture (zero head columns)
        mitigated = D.unprune(rep.model, model) if args.method == "fp" else rep.model
        save_model(args.save_model, mitigated, arch=info["arch"], num_classes=info["num_classes"],
                   meta={"defense": rep.name, **rep.params, "image_size": xt.shape[-1],
                         **{k: info[k] for k in ("model_kwargs",) if k in info}})
    print(json.dumps({k: v for k, v in rep.to_dict().items() if k in ("name", "ba", "asr", "asr_par",
                                                                          "detected", "score")}))
    return 0


def cmd_stamp(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from cvpr24.lotus.triggers import TriggerSet

    fmt = Image.registered_extensions().get(Path(args.out).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"--out must end in an image suffix Pillow can write (.png, .jpg, .bmp, ...), "
                         f"got {args.out!r}")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"--image: {args.image} not found")
    with Image.open(args.image) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    if not 0 <= args.trigger < 8:
        raise SystemExit(f"cvpr24 lotus stamp: --trigger must be in 0-7, got {args.trigger}")
    ts = TriggerSet(8, tuple(x.shape[-2:]))
    out = ts.stamp(x, args.trigger)[0].permute(1, 2, 0).numpy()
    with atomic_path(args.out) as tmp:
        Image.fromarray(np.round(out * 255).astype(np.uint8)).save(tmp, format=fmt)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cvpr24.lotus.reproduce import CHECKPOINTS, train

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    path = train(args.out or CHECKPOINTS, full=args.full, seeds=args.seeds)
    print(f"checkpoints written to {path}")
    return 0

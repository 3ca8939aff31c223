"""``cvpr24 gfars make-mixes | train | group | eval | convert-checkpoint | synth``.

Bad input exits with code 2 and one line naming the flag; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

from cvpr24.common.argtypes import number_in, one_line_errors, positive_int

unit_open = number_in(float, 0.0, 1.0, low_open=True, hint="below 1")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("make-mixes", help="build mixed sets from PartNet prep data (npz files)")
    p.add_argument("--prep-data", required=True, help="folder with <Cat>.<split>.npy and shape_data/")
    p.add_argument("--category", default="Chair", help="Chair | Table | Lamp")
    p.add_argument("--split", default="train", help="train | val | test")
    p.add_argument("--passes", type=positive_int, default=2, help="times each shape is used")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--trust-pickle", action="store_true",
                   help="load the pickled shape dicts with plain np.load (trusted files only)")
    p.add_argument("--out", required=True, help="output folder (mix_XXXXX.npz)")
    p.set_defaults(func=_friendly(cmd_make_mixes))

    p = sub.add_parser("synth", help="procedural cuboid-furniture mixes (npz files)")
    p.add_argument("--n", type=positive_int, default=100, help="number of mixes")
    p.add_argument("--points", type=positive_int, default=64, help="points per part")
    p.add_argument("--noise-parts", type=int, default=0, help="noise parts per mix (0-7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_friendly(cmd_synth))

    p = sub.add_parser("train", help="train G-FARS (or a baseline); resumes from OUT/state.pt")
    p.add_argument("--data", help="folder of npz mixes (default: fresh procedural mixes)")
    p.add_argument("--method", default="gfars",
                   help="gfars | gfars_ef | wo_gnn | wo_gnn_ef | wo_gf | compnet | compnet_gnn")
    p.add_argument("--preset", choices=("full", "cpu", "repro"), default="repro",
                   help="full: paper scale; cpu: CPU preset with PointNet; repro: the "
                        "reproduction's settings (descriptor encoder)")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", help="continue from this checkpoint of the same method and "
                   "preset (fresh Adam; its step count is the first step)")
    p.add_argument("--out", required=True, help="output folder: <method>_seed<k>.safetensors")
    p.set_defaults(func=_friendly(cmd_train))

    p = sub.add_parser("group", help="group the parts of one mixed set")
    p.add_argument("--parts", required=True, help="an npz file (parts, optional groups) or a "
                                                  "folder of part meshes")
    p.add_argument("--checkpoint", required=True, help="ours (.safetensors) or official (.pth)")
    p.add_argument("--sampler", choices=("pc", "em", "ode"))
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--threshold", type=unit_open)
    p.add_argument("--max-iters", type=positive_int)
    p.add_argument("--points", type=positive_int, default=1000, help="points sampled per mesh")
    p.add_argument("--align", choices=("none", "pca"), default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="groups JSON; a PNG is written beside it")
    p.set_defaults(func=_friendly(cmd_group))

    p = sub.add_parser("eval", help="score a checkpoint on a folder of npz mixes with groups")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--metric", choices=("official", "strict"), default="strict")
    p.add_argument("--sampler", choices=("pc", "em", "ode"))
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the scores as JSON")
    p.set_defaults(func=_friendly(cmd_eval))

    p = sub.add_parser("convert-checkpoint", help="official .pth -> our .safetensors + sidecar")
    p.add_argument("src", help="official state dict (.pth)")
    p.add_argument("dst", help="output .safetensors")
    p.set_defaults(func=_friendly(cmd_convert))


_friendly = one_line_errors("gfars", ValueError, FileNotFoundError, KeyError, pickle.UnpicklingError)


def _npz_folder(path: str, flag: str) -> list:
    from cvpr24.gfars.io import load_npz

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag}: folder not found: {folder}")
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise ValueError(f"{flag}: {folder} holds no .npz mixes")
    return [load_npz(f) for f in files]


def _write_sets(out: Path, sets) -> None:
    from cvpr24.gfars.io import save_npz

    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(sets):
        save_npz(out / f"mix_{i:05d}.npz", s.parts, s.groups)


def cmd_make_mixes(args) -> int:
    from cvpr24.gfars.io import load_prep_split, make_mixes

    shapes = load_prep_split(args.prep_data, args.category, args.split,
                             trust_pickle=args.trust_pickle)
    if len(shapes) < 2:
        raise ValueError(f"--prep-data: need at least 2 shapes, found {len(shapes)}")
    mixes = make_mixes(shapes, args.seed, args.passes)
    _write_sets(Path(args.out), mixes)
    print(f"wrote {len(mixes)} mixes to {args.out}")
    return 0


def cmd_synth(args) -> int:
    import numpy as np

    from cvpr24.gfars.data import procedural_mix

    if not 0 <= args.noise_parts <= 7:
        raise ValueError(f"--noise-parts must be in 0..7, got {args.noise_parts}")
    sets = [procedural_mix(np.random.default_rng([args.seed, i]), n_points=args.points,
                           noise_parts=args.noise_parts) for i in range(args.n)]
    _write_sets(Path(args.out), sets)
    print(f"wrote {len(sets)} mixes to {args.out}")
    return 0


def cmd_train(args) -> int:
    from dataclasses import replace

    import torch

    from cvpr24.common.distributed import process_group
    from cvpr24.common.progress import progress
    from cvpr24.gfars.model import GFARSConfig
    from cvpr24.gfars.reproduce import BASE, train_method
    from cvpr24.gfars.train import METHODS

    if args.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    base = {"full": GFARSConfig(), "cpu": GFARSConfig.cpu(), "repro": BASE}[args.preset]
    if args.batch_size:
        base = replace(base, batch_size=args.batch_size)
    data = _npz_folder(args.data, "--data") if args.data else None
    if args.init_from and not Path(args.init_from).is_file():
        raise ValueError(f"--init-from: no checkpoint at {args.init_from}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress(total=args.steps, desc=f"train {args.method}")

    def log(line: str) -> None:
        bar.set_postfix_str(line.split(" loss ")[-1].split(" ")[0])
        bar.n = int(line.split()[1].split("/")[0])
        bar.refresh()

    with process_group("nccl" if torch.cuda.is_available() else "gloo"):  # one per rank under torchrun
        train_method(args.method, args.seed, out, args.steps, base=base, log=log, data=data,
                     init_from=args.init_from and Path(args.init_from))
    bar.close()
    print(f"wrote {out / f'{args.method}_seed{args.seed}.safetensors'}")
    return 0


def _load_parts(args):
    from cvpr24.gfars.io import load_mesh_parts, load_npz

    path = Path(args.parts)
    if path.is_dir():
        parts, names = load_mesh_parts(path, args.points, args.seed, args.align)
        return parts, names
    if not path.is_file():
        raise FileNotFoundError(f"--parts: not found: {path}")
    s = load_npz(path)
    return s.parts, [str(i) for i in range(len(s))]


def cmd_group(args) -> int:
    from cvpr24.common.io import atomic_write
    from cvpr24.gfars.io import load_model
    from cvpr24.gfars.render import render_groups

    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must end with .json, got {out.name}")
    model = load_model(args.checkpoint)
    parts, names = _load_parts(args)
    groups = model.group(parts, sampler=args.sampler, steps=args.steps,
                         threshold=args.threshold, max_iters=args.max_iters, seed=args.seed)
    assigned = {i for g in groups for i in g}
    result = {"groups": groups, "names": names,
              "unassigned": [i for i in range(len(parts)) if i not in assigned],
              "sampler": args.sampler or model.cfg.sampler, "seed": args.seed}
    with atomic_write(out) as f:
        json.dump(result, f, indent=1)
    render_groups(parts, [groups], ["G-FARS"], out.with_suffix(".png"))
    print(f"{len(groups)} groups -> {out} and {out.with_suffix('.png')}")
    return 0


def cmd_eval(args) -> int:
    from cvpr24.common.io import atomic_write
    from cvpr24.gfars.io import load_model
    from cvpr24.gfars.metrics import grouping_metrics
    from cvpr24.gfars.sampling import group_sets

    sets = _npz_folder(args.data, "--data")
    model = load_model(args.checkpoint)
    preds = group_sets(model, [s.parts for s in sets], sampler=args.sampler, steps=args.steps,
                       seed=args.seed)
    scores = grouping_metrics(preds, [s.gt_groups for s in sets], [len(s) for s in sets],
                              args.metric).as_dict()
    print(json.dumps(scores, indent=1))
    if args.out:
        with atomic_write(args.out) as f:
            json.dump(scores, f, indent=1)
    return 0


def cmd_convert(args) -> int:
    from cvpr24.gfars.io import load_official_checkpoint, save_model

    dst = Path(args.dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"dst must end with .safetensors, got {dst.name}")
    model = load_official_checkpoint(args.src)
    save_model(dst, model, data=f"converted from {args.src}")
    print(f"wrote {dst}")
    return 0

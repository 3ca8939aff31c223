"""``cvpr24 text2hoi generate | evaluate | preprocess | train``.

``generate`` turns a text and an object mesh into a two-hand + object motion (.npz) and a
preview PNG strip with our CPU-scale ToyHOI checkpoint (or one you trained); ``evaluate``
measures penetration, contact and Phy (H1-H4) of such a motion against its mesh; ``preprocess``
turns raw H2O / GRAB / ARCTIC into the training representation (pickle-free); ``train``
trains the ToyHOI models (``cvpr24 train text2hoi`` is the same command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cvpr24.common.argtypes import one_line_errors

HANDS = {"right": (0.0, 1.0), "left": (1.0, 0.0), "both": (1.0, 1.0)}


def register(parser: argparse.ArgumentParser) -> None:
    from cvpr24.common.argtypes import positive_int

    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    p = sub.add_parser("generate", help="text + object mesh -> motion .npz + preview PNG")
    p.add_argument("--text", required=True, help='e.g. "lift the mug with the right hand"')
    p.add_argument("--object", required=True, help="object mesh (.obj/.ply/.stl, metres)")
    p.add_argument("--hands", choices=sorted(HANDS), default="right")
    p.add_argument("--checkpoint", help="our .safetensors (default: the committed ToyHOI seed 0)")
    p.add_argument("--mano-dir", help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (default: the procedural hand)")
    p.add_argument("--nsamples", type=positive_int, default=1)
    p.add_argument("--steps", type=positive_int, help="denoising steps (default: all, ancestral DDPM; fewer: DDIM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("evaluate", help="penetration / contact / Phy of a generated .npz against its mesh")
    p.add_argument("--generated", required=True, help="motion.npz from 'generate'")
    p.add_argument("--object", required=True, help="the object mesh (watertight)")
    p.add_argument("--mano-dir", help="as for generate")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("preprocess", help="raw H2O / GRAB / ARCTIC -> data.npz + objects.npz + meta.json")
    p.add_argument("--dataset", required=True, choices=["h2o", "grab", "arctic"])
    p.add_argument("--root", required=True, help="H2O: folder of subject1..3; GRAB: of s1..s10; ARCTIC: of raw_seqs and meta")
    p.add_argument("--object-root", help="object meshes (default: <root>/object, <root>/contact_meshes, <root>/meta/object_vtemplates)")
    p.add_argument("--text-root", help="ARCTIC's released descriptions (default: <root>/text)")
    p.add_argument("--mano-dir", help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (default: the procedural hand)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train the ToyHOI models (method + baseline) and evaluate them; rerun to resume; "
                       "torchrun --nproc_per_node N -m cvpr24 text2hoi train ... trains data-parallel")
    p.add_argument("--out", required=True, help="output folder (checkpoints/, result.json)")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.set_defaults(func=cmd_train)


def _fail(msg: str) -> int:
    import sys

    print(f"cvpr24 text2hoi: error: {msg}", file=sys.stderr)
    return 2


def _hands(mano_dir: str | None, flat_hand_mean: bool = True):
    from cvpr24.text2hoi.mano import ManoLayer, ProceduralHand, load_mano
    from cvpr24.text2hoi.train import HandModels

    if mano_dir is None:
        left, right = ProceduralHand(0).model(False), ProceduralHand(0).model(True)
    else:
        left, right = load_mano(Path(mano_dir) / "MANO_LEFT.pkl", False), load_mano(Path(mano_dir) / "MANO_RIGHT.pkl", True)
    return HandModels(ManoLayer(left, flat_hand_mean), ManoLayer(right, flat_hand_mean))


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.text.strip():
        return _fail("--text must not be empty")
    if not Path(args.object).is_file():
        return _fail(f"--object {args.object} not found")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        return _fail(f"--checkpoint {args.checkpoint} not found")
    if args.mano_dir and not (Path(args.mano_dir) / "MANO_RIGHT.pkl").is_file():
        return _fail(f"--mano-dir {args.mano_dir} has no MANO_RIGHT.pkl (download it from mano.is.tue.mpg.de)")
    import numpy as np
    import torch

    from cvpr24.common import load_checkpoint
    from cvpr24.common.io import atomic_path
    from cvpr24.text2hoi.mesh import load_mesh, mesh_points
    from cvpr24.text2hoi.model import Text2HOIConfig
    from cvpr24.text2hoi.reproduce import checkpoint_path, load_arms, text_encoder
    from cvpr24.text2hoi.train import HOIBatch

    try:
        mesh = load_mesh(args.object, "--object")
        hands = _hands(args.mano_dir)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    ck = load_checkpoint(args.checkpoint or checkpoint_path(0), Text2HOIConfig)
    cfg = ck.config
    method, _ = load_arms(ck.tensors, cfg, hands)
    pts, _ = mesh_points(mesh, cfg.n_points)
    s, t = args.nsamples, cfg.max_frames
    text = text_encoder(ck.meta.get("text_encoder", "minilm"))([args.text]).expand(s, -1)
    ml, mr = HANDS[args.hands]
    ones = torch.ones(s, t)
    batch = HOIBatch(
        x_l=torch.zeros(s, t, 99), x_r=torch.zeros(s, t, 99), x_o=torch.zeros(s, t, cfg.obj_dim),
        mask_l=ones * ml, mask_r=ones * mr, mask_o=ones.clone(), points=pts.expand(s, -1, -1),
        contact=torch.zeros(s, cfg.n_points), text=text, length=torch.ones(s), action=torch.zeros(s, dtype=torch.long),
    )
    out = method.sample(batch, torch.Generator().manual_seed(args.seed), args.steps)
    with torch.no_grad():
        vl = hands.left.forward_rot6d(out["x_l"])["vertices"]
        vr = hands.right.forward_rot6d(out["x_r"])["vertices"]
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_lhand": out["x_l"].numpy(), "x_rhand": out["x_r"].numpy(), "x_obj": out["x_o"].numpy(),
        "contact_map": out["contact"].numpy(), "obj_points": pts.numpy(), "is_lhand": np.array(ml > 0),
        "is_rhand": np.array(mr > 0), "lhand_vertices": vl.numpy(), "rhand_vertices": vr.numpy(),
        "faces_l": hands.left.faces.numpy(), "faces_r": hands.right.faces.numpy(), "text": np.array(args.text),
    }
    with atomic_path(folder / "motion.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    _preview(folder / "preview.png", arrays)
    print(json.dumps({"motion": str(folder / "motion.npz"), "preview": str(folder / "preview.png")}))
    return 0


def _preview(path: Path, a: dict) -> None:
    """A strip of 6 frames (x-z side view) of sample 0: object points, hands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from cvpr24.common.io import atomic_path
    from cvpr24.text2hoi.geometry import transform_points

    obj = transform_points(torch.as_tensor(a["obj_points"]), torch.as_tensor(a["x_obj"][:1]))[0].numpy()
    t = obj.shape[0]
    frames = np.linspace(0, t - 1, 6).round().astype(int) if t > 1 else [0]
    fig, axes = plt.subplots(1, len(frames), figsize=(2.2 * len(frames), 2.4))
    for ax, f in zip(np.atleast_1d(axes), frames, strict=True):
        ax.scatter(obj[f, :, 0], obj[f, :, 2], s=1, c="tab:gray")
        for key, use, color in (("lhand_vertices", "is_lhand", "tab:blue"), ("rhand_vertices", "is_rhand", "tab:orange")):
            if bool(a[use]):
                v = a[key][0, f]
                ax.scatter(v[:, 0], v[:, 2], s=0.5, c=color)
        ax.set_title(f"frame {f}", fontsize=8)
        ax.set_aspect("equal")
        ax.axis("off")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.generated).is_file():
        return _fail(f"--generated {args.generated} not found")
    if not Path(args.object).is_file():
        return _fail(f"--object {args.object} not found")
    import torch

    from cvpr24.common.io import atomic_write
    from cvpr24.text2hoi.mesh import MeshSDF, load_mesh
    from cvpr24.text2hoi.metrics import contact_ratio, penetration_depth, physical_realism
    from cvpr24.text2hoi.rotations import rot6d_to_rotmat

    with np.load(args.generated, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    for key, dim in (("x_lhand", 99), ("x_rhand", 99), ("x_obj", 9)):
        if key not in a or a[key].ndim != 3 or a[key].shape[-1] != dim:
            return _fail(f"--generated: {key} must have shape (S, T, {dim})")
        if not np.isfinite(a[key]).all():
            return _fail(f"--generated: {key} contains NaN")
    try:
        sdf = MeshSDF(load_mesh(args.object, "--object"), "--object")
        hands = _hands(args.mano_dir)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    rows = []
    for s in range(a["x_obj"].shape[0]):
        xo = torch.as_tensor(a["x_obj"][s]).double()
        r = rot6d_to_rotmat(xo[:, 3:9])
        sv, sj = [], []
        for use, layer, key in ((a["is_lhand"], hands.left, "x_lhand"), (a["is_rhand"], hands.right, "x_rhand")):
            if bool(use):
                o = layer.forward_rot6d(torch.as_tensor(a[key][s]).float())
                for arr, pts in ((sv, o["vertices"]), (sj, o["joints_w_tip"])):
                    local = torch.einsum("tji,tmj->tmi", r, pts.double() - xo[:, None, :3])
                    arr.append(sdf(local))
        sv, sj = torch.cat(sv, -1), torch.cat(sj, -1)
        depth = penetration_depth(sv)
        rows.append({**physical_realism(depth, xo, sj), "depth_mm": 1000 * float(depth.mean()), "contact_ratio": float(contact_ratio(sv).mean())})
    summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    text = json.dumps({"per_sample": rows, "mean": summary}, indent=2)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text)
    print(text)
    return 0


@one_line_errors("text2hoi")
def cmd_preprocess(args: argparse.Namespace) -> int:
    if not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root {args.root} is not a folder")
    if args.mano_dir and not (Path(args.mano_dir) / "MANO_RIGHT.pkl").is_file():
        raise FileNotFoundError(f"--mano-dir {args.mano_dir} has no MANO_RIGHT.pkl (download it from mano.is.tue.mpg.de)")
    from cvpr24.text2hoi.preprocess import FLAT_HAND_MEAN, preprocess

    hands = _hands(args.mano_dir, FLAT_HAND_MEAN[args.dataset])
    meta = preprocess(args.dataset, args.root, args.out, (hands.left, hands.right), args.object_root, args.text_root)
    print(json.dumps(meta))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train (resumably: finished seeds are kept, a stage resumes from OUT/state) and evaluate.
    Under ``torchrun`` every rank trains with averaged gradients; rank 0 saves and evaluates."""
    import torch

    from cvpr24.common.distributed import launched, process_group
    from cvpr24.text2hoi.model import Text2HOIConfig
    from cvpr24.text2hoi.reproduce import Sizes, build_data, hand_models, run, train_checkpoints

    if launched():  # torchrun: every rank trains, rank 0 evaluates
        with process_group("gloo"):
            sizes = Sizes()
            train_checkpoints(Path(args.out), list(range(args.seeds)), sizes, build_data(sizes),
                              Text2HOIConfig.cpu(), hand_models())
            torch.distributed.barrier()
            rank = torch.distributed.get_rank()
        if rank != 0:
            return 0
    result = run(Path(args.out), seeds=args.seeds, train=True)  # keeps the trained seeds, evaluates
    print(result.to_json())
    return 0

"""H2O, GRAB and ARCTIC -> the Text2HOI representation, written without pickles.

Each reader turns a dataset's raw layout into :class:`Segment` s (axis-angle MANO per hand, the
object pose, the action); :func:`encode` then computes what training needs, as the official
preprocessing does: x_hand = [τ ‖ 16 × 6D] (99), x_obj = [τ_o ‖ 6D] (9, + α for ARCTIC), the
21 joints with tips, the sparse contact triples (T1, T2) and which hands take part (T3: from
the contacts, a segment with no contact is dropped). :func:`write_dataset` stores

- ``data.npz``: per-frame arrays concatenated over segments (``seq_start``, ``nframes`` index
  them), the contact triples concatenated per hand (``lcontact_start`` / ``rcontact_start``),
  per-segment labels, the split;
- ``objects.npz``: per object 1,024 FPS points from index 0, unit normals, the FPS indices
  (and the ARCTIC ``top`` part mask);
- ``meta.json``: dataset, ``flat_hand_mean``, ``rot_convention``, object names, the canonical
  texts with their counts and the balance weights 1/count of the weighted sampler.

Raw files that hold pickles (GRAB ``.npz``, ARCTIC ``.mano.npy``) are read with the restricted
unpickler of :mod:`cvpr24.text2hoi.mano` (numpy arrays and plain containers only).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.text2hoi.geometry import CONTACT_THRESHOLD, farthest_point_sampling, transform_points
from cvpr24.text2hoi.mano import ManoLayer, restricted_unpickle
from cvpr24.text2hoi.rotations import axis_angle_to_rotmat, rotmat_to_rot6d

DATASETS = ("h2o", "grab", "arctic")
FLAT_HAND_MEAN = {"h2o": True, "grab": True, "arctic": False}
ROT_CONVENTION = {"h2o": "Rp", "grab": "pR", "arctic": "Rp"}
MIN_FRAMES = 20  # shorter action segments are dropped (H2O: more than 20 frames; ARCTIC: at least 20)
N_POINTS = 1024

H2O_OBJECTS = ("", "book", "espresso", "lotion", "spray", "milk", "cocoa", "chips", "cappuccino")
H2O_ACTIONS = (
    "background", *(f"grab {o}" for o in H2O_OBJECTS[1:]), *(f"place {o}" for o in H2O_OBJECTS[1:]),
    "open lotion", "open milk", "open chips", "close lotion", "close milk", "close chips", "pour milk",
    "take out espresso", "take out cocoa", "take out chips", "take out cappuccino", "put in espresso",
    "put in cocoa", "put in cappuccino", "apply lotion", "apply spray", "read book", "read espresso",
    "spray spray", "squeeze lotion",
)
GRAB_OBJECT_NAMES = {
    "fryingpan": "frying pan", "waterbottle": "water bottle", "stanfordbunny": "stanford bunny",
    "gamecontroller": "game controller", "piggybank": "piggy bank", "alarmclock": "alarm clock",
    "lightbulb": "light bulb",
    **{f"{s}{size}": s for s in ("cube", "cylinder", "pyramid", "sphere", "torus") for size in ("large", "medium", "small")},
}
GRAB_INTENTS = {"offhand": "hand over", "switchON": "switch on", "takepicture": "take picture"}
ARCTIC_SKIPPED = ("write notebook", "operate waffleiron", "push capsulemachine")  # the official list
GRAB_DOWNSAMPLE = 4  # 120 fps -> 30 fps


@dataclass
class HandTrack:
    """One hand over T frames: axis-angle ``pose`` (T, 48) = global orient + 15 joints,
    ``trans`` (T, 3), ``beta`` (T, 10)."""

    pose: np.ndarray
    trans: np.ndarray
    beta: np.ndarray


@dataclass
class Segment:
    """One action segment in world coordinates, before encoding."""

    left: HandTrack
    right: HandTrack
    obj_rot: np.ndarray  # (T, 3, 3)
    obj_trans: np.ndarray  # (T, 3)
    obj_name: str
    action: str  # the action phrase that starts the canonical text
    subject: str
    obj_angle: np.ndarray | None = None  # (T,) ARCTIC articulation
    hands: str | None = None  # ARCTIC's annotated hands ("left", "right", "both")


def _hand_joints(layer: ManoLayer, h: HandTrack) -> torch.Tensor:
    pose = torch.as_tensor(h.pose, dtype=torch.float64)
    out = layer(pose[:, :3], pose[:, 3:], torch.as_tensor(h.beta, dtype=torch.float64), torch.as_tensor(h.trans, dtype=torch.float64))
    return out["joints_w_tip"]


def hand_features(h: HandTrack) -> np.ndarray:
    """x_hand (T, 99) = [τ ‖ 6D of the 16 axis-angle rotations]."""
    aa = torch.as_tensor(h.pose, dtype=torch.float64).reshape(-1, 16, 3)
    return np.concatenate([h.trans, rotmat_to_rot6d(axis_angle_to_rotmat(aa)).reshape(-1, 96).numpy()], -1)


def object_features(seg: Segment) -> np.ndarray:
    """x_obj (T, 9) = [τ_o ‖ 6D(R_o)], with α appended for an articulated object (T, 10)."""
    parts = [seg.obj_trans, rotmat_to_rot6d(torch.as_tensor(seg.obj_rot, dtype=torch.float64)).numpy()]
    if seg.obj_angle is not None:
        parts.append(seg.obj_angle[:, None])
    return np.concatenate(parts, -1)


def contact_triples(pts: torch.Tensor, joints: torch.Tensor) -> np.ndarray:
    """(T1, T2) the sparse contact set: rows (frame, point, joint, distance) with D < 2 cm."""
    d = torch.cdist(pts, joints)  # (T, N, 21)
    f, i, j = torch.nonzero(d < CONTACT_THRESHOLD, as_tuple=True)
    return np.stack([f.numpy(), i.numpy(), j.numpy(), d[f, i, j].numpy()], -1).reshape(-1, 4)


def encode(seg: Segment, points: np.ndarray, hands: tuple[ManoLayer, ManoLayer], rot_convention: str,
           top: np.ndarray | None = None) -> dict | None:
    """One segment -> its arrays, or None when no hand touches the object (T3)."""
    x_obj = object_features(seg)
    pts = transform_points(torch.as_tensor(points, dtype=torch.float64)[None], torch.as_tensor(x_obj)[None], rot_convention,
                           None if top is None else torch.as_tensor(top))[0]
    out = {"x_obj": x_obj}
    for side, layer, h in (("l", hands[0], seg.left), ("r", hands[1], seg.right)):
        joints = _hand_joints(layer, h)
        out[f"x_{side}hand"] = hand_features(h)
        out[f"j_{side}hand"] = joints.numpy()
        out[f"{side}hand_beta"] = h.beta
        out[f"{side}contact"] = contact_triples(pts, joints)
        out[f"is_{side}hand"] = len(out[f"{side}contact"]) > 0
    if seg.hands is not None:  # ARCTIC: the annotation decides; an annotated hand must touch
        want_l, want_r = seg.hands in ("left", "both"), seg.hands in ("right", "both")
        if (want_l and not out["is_lhand"]) or (want_r and not out["is_rhand"]):
            return None
        out["is_lhand"], out["is_rhand"] = want_l, want_r
    if not (out["is_lhand"] or out["is_rhand"]):
        return None
    return out


def text_key(action: str, is_lhand: bool, is_rhand: bool) -> str:
    """The canonical text: "{action} with both hands." / "... left hand." / "... right hand."."""
    hands = "both hands" if is_lhand and is_rhand else "left hand" if is_lhand else "right hand"
    return f"{action} with {hands}.".capitalize()


# --- objects -----------------------------------------------------------------------------------


def object_record(vertices: np.ndarray, normals: np.ndarray, n_points: int = N_POINTS) -> dict[str, np.ndarray]:
    """FPS from vertex 0 over the mesh vertices, with unit vertex normals."""
    idx = farthest_point_sampling(torch.as_tensor(vertices), n_points).numpy()
    n = normals[idx] / np.linalg.norm(normals[idx], axis=-1, keepdims=True).clip(1e-12)
    return {"points": vertices[idx].astype(np.float32), "normals": n.astype(np.float32), "point_idx": idx}


def _mesh(path: Path, scale: float = 1.0):
    import trimesh

    mesh = trimesh.load(str(path), force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise ValueError(f"object mesh {path} has no triangles")
    return np.asarray(mesh.vertices, dtype=np.float64) * scale, np.asarray(mesh.vertex_normals, dtype=np.float64)


# --- safe reading of pickled numpy files ---------------------------------------------------------


def _read_npy(f, what: str):
    """One .npy stream: plain arrays as numpy reads them, object arrays via the restricted unpickler."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    if dtype.hasobject:
        return restricted_unpickle(f.read(), what)
    data = np.frombuffer(f.read(), dtype=dtype, count=int(np.prod(shape)))
    return data.reshape(shape, order="F" if fortran else "C")


def load_npz(path: Path) -> dict:
    """Every array of an ``.npz``; 0-d object arrays are unwrapped to their content."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            with z.open(name) as f:
                v = _read_npy(f, f"{path}:{name}")
            out[name.removesuffix(".npy")] = v.item() if isinstance(v, np.ndarray) and v.dtype.hasobject and v.ndim == 0 else v
    return out


def load_npy(path: Path):
    with open(path, "rb") as f:
        v = _read_npy(f, str(path))
    return v.item() if isinstance(v, np.ndarray) and v.dtype.hasobject and v.ndim == 0 else v


# --- H2O ---------------------------------------------------------------------------------------


def _h2o_root_joint(layer: ManoLayer, beta: np.ndarray) -> np.ndarray:
    """MANO's root joint J_0(β) at zero pose (the centre of the global rotation)."""
    b = torch.as_tensor(beta, dtype=torch.float64)
    zero = b.new_zeros(len(b), 3)
    return layer(zero, b.new_zeros(len(b), 45), b)["joints"][:, 0].numpy()


def read_h2o(root: Path, hands: tuple[ManoLayer, ManoLayer], subjects=(1, 2, 3)) -> Iterator[Segment]:
    """``subject{k}/<background>/<sequence>/cam{c}/{hand_pose_mano,obj_pose_rt,cam_pose,action_label}/*.txt``.

    Camera-frame MANO goes to the world frame with the camera pose E: R ← E_R R and
    τ ← E·(J_0 + τ) − J_0; the object pose is E·M_obj. A segment is a run of one non-zero action
    label longer than 20 frames. Subject 4 has no public pose labels.
    """
    cams = sorted(p for s in subjects for p in (root / f"subject{s}").glob("*/*/cam*") if p.is_dir())
    for cam in cams:
        files = {k: sorted((cam / k).glob("*.txt")) for k in ("hand_pose_mano", "obj_pose_rt", "cam_pose", "action_label")}
        n = len(files["action_label"])
        if n == 0 or any(len(v) != n for v in files.values()):
            raise ValueError(f"H2O folder {cam}: hand_pose_mano, obj_pose_rt, cam_pose and action_label must hold the same frames")
        rows = [[np.loadtxt(files[k][i]).reshape(-1) for k in files] for i in range(n)]
        labels = np.array([int(r[3][0]) for r in rows])
        start = 0
        for t in range(1, n + 1):
            if t < n and labels[t] == labels[start]:
                continue
            if labels[start] != 0 and t - start > MIN_FRAMES:
                yield _h2o_segment(rows[start:t], hands, H2O_ACTIONS[labels[start]], cam.parts[-4])
            start = t


def _h2o_segment(rows: list, hands: tuple[ManoLayer, ManoLayer], action: str, subject: str) -> Segment:
    mano = np.stack([r[0] for r in rows])  # (T, 124): per hand [valid, τ (3), pose (48), β (10)]
    ext = np.stack([r[2].reshape(4, 4) for r in rows])
    tracks = []
    for off, layer in ((0, hands[0]), (62, hands[1])):
        trans, pose, beta = mano[:, off + 1 : off + 4], mano[:, off + 4 : off + 52].copy(), mano[:, off + 52 : off + 62]
        rot = ext[:, :3, :3] @ axis_angle_to_rotmat(torch.as_tensor(pose[:, :3])).numpy()
        pose[:, :3] = _rotvec(rot)
        j0 = _h2o_root_joint(layer, beta)
        world = np.einsum("tij,tj->ti", ext[:, :3, :3], j0 + trans) + ext[:, :3, 3]
        tracks.append(HandTrack(pose, world - j0, beta))
    obj = ext @ np.stack([r[1][1:].reshape(4, 4) for r in rows])
    name = H2O_OBJECTS[int(rows[0][1][0])]
    return Segment(tracks[0], tracks[1], obj[:, :3, :3], obj[:, :3, 3], name, action, subject)


def _rotvec(r: np.ndarray) -> np.ndarray:
    from cvpr24.text2hoi.rotations import rotmat_to_axis_angle

    return rotmat_to_axis_angle(torch.as_tensor(r)).numpy()


def h2o_objects(object_root: Path) -> dict[str, dict]:
    """``<object_root>/<name>/<name>.obj`` (metres) per object."""
    return {p.parent.name: object_record(*_mesh(p)) for p in sorted(object_root.glob("*/*.obj"))}


# --- GRAB --------------------------------------------------------------------------------------


def read_grab(root: Path, subjects=tuple(f"s{i}" for i in range(1, 11))) -> Iterator[Segment]:
    """``s{1..10}/<object>_<intent>_<n>.npz`` (pickled dicts, read safely).

    Frames are taken every 4th (120 -> 30 fps) and cropped to [first, last) frame with object
    contact (the official crop excludes the last). β = 0; the object rotates as pᵀR.
    """
    for s in subjects:
        for path in sorted((root / s).glob("*.npz")):
            d = load_npz(path)
            sl = slice(None, None, GRAB_DOWNSAMPLE)
            touched = np.nonzero(np.asarray(d["contact"]["object"])[sl].sum(-1))[0]
            if len(touched) == 0:
                continue
            crop = slice(int(touched[0]), int(touched[-1]))
            tracks = []
            for side in ("lhand", "rhand"):
                p = d[side]["params"]
                pose = np.concatenate([p["global_orient"], p["fullpose"]], -1)[sl][crop]
                tracks.append(HandTrack(pose, np.asarray(p["transl"])[sl][crop], np.zeros((len(pose), 10))))
            o = d["object"]["params"]
            rot = axis_angle_to_rotmat(torch.as_tensor(np.asarray(o["global_orient"])[sl][crop], dtype=torch.float64)).numpy()
            name = str(d["obj_name"])
            intent = str(d["motion_intent"])
            action = f"{GRAB_INTENTS.get(intent, intent)} {GRAB_OBJECT_NAMES.get(name, name)}"
            yield Segment(tracks[0], tracks[1], rot, np.asarray(o["transl"])[sl][crop], name, action, s)


def grab_objects(object_root: Path) -> dict[str, dict]:
    """``contact_meshes/<name>.ply`` (metres) per object."""
    return {p.stem: object_record(*_mesh(p)) for p in sorted(object_root.glob("*.ply"))}


# --- ARCTIC ------------------------------------------------------------------------------------


def read_arctic(raw_seqs: Path, text_root: Path, subjects=("s01", "s02", "s04", "s05", "s06", "s07", "s08", "s09", "s10")) -> Iterator[Segment]:
    """``raw_seqs/<s>/<object>_<action>_<n>.{mano,object}.npy`` and the released
    ``<text_root>/<s>/<sequence>/description.txt`` lines "first-last action, hands ...".

    ``.object.npy`` rows are [α, axis-angle (3), τ in mm]; translations go to metres.
    """
    for s in subjects:
        for mano_path in sorted((raw_seqs / s).glob("*.mano.npy")):
            base = mano_path.name.removesuffix(".mano.npy")
            desc = text_root / s / base / "description.txt"
            if not desc.is_file():
                continue
            m = load_npy(mano_path)
            obj = np.load(raw_seqs / s / f"{base}.object.npy", allow_pickle=False)
            name = base.split("_")[0]
            seen = set()
            for line in desc.read_text().splitlines():
                words = line.split()
                if len(words) < 3:
                    continue
                frames, verb, hands = words[0], words[1].rstrip(","), words[2]
                if (frames, hands) in seen or f"{verb} {name}" in ARCTIC_SKIPPED:
                    continue
                seen.add((frames, hands))
                first, last = (int(v) for v in frames.split("-"))
                crop = slice(first - 1, last)
                if last - first + 1 < MIN_FRAMES:
                    continue
                tracks = [
                    HandTrack(np.concatenate([m[k]["rot"], m[k]["pose"]], -1)[crop], np.asarray(m[k]["trans"])[crop],
                              np.broadcast_to(np.asarray(m[k]["shape"]), (last - first + 1, 10)).copy())
                    for k in ("left", "right")
                ]
                rot = axis_angle_to_rotmat(torch.as_tensor(obj[crop, 1:4], dtype=torch.float64)).numpy()
                yield Segment(tracks[0], tracks[1], rot, obj[crop, 4:7] / 1000, name, f"{verb} {name}", s, obj[crop, 0], hands)


def arctic_objects(templates: Path) -> dict[str, dict]:
    """``meta/object_vtemplates/<name>/{mesh.obj (mm), parts.json}``; ``top`` = 1 − part id."""
    out = {}
    for p in sorted(templates.glob("*/mesh.obj")):
        rec = object_record(*_mesh(p, 1e-3))
        parts = np.asarray(json.loads((p.parent / "parts.json").read_text()))
        rec["top"] = (1 - parts[rec["point_idx"]]).astype(np.float32)
        out[p.parent.name] = rec
    return out


# --- writing -----------------------------------------------------------------------------------


def default_split(dataset: str, subjects: list[str], keys: list[str], seed: int = 0) -> np.ndarray:
    """GRAB s9-s10 and ARCTIC s09-s10 test; H2O a seeded 90/10 split per canonical text [X]."""
    if dataset != "h2o":
        test = {"grab": ("s9", "s10"), "arctic": ("s09", "s10")}[dataset]
        return np.array(["test" if s in test else "train" for s in subjects])
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * len(keys), dtype="<U5")
    for k in sorted(set(keys)):
        idx = [i for i, key in enumerate(keys) if key == k]
        n_test = int(round(0.1 * len(idx)))
        split[rng.permutation(idx)[:n_test]] = "test"
    return split


def write_dataset(out: Path, dataset: str, records: list[dict], segments: list[Segment], objects: dict[str, dict]) -> dict:
    """``data.npz``, ``objects.npz`` and ``meta.json`` in ``out`` (each written atomically)."""
    if not records:
        raise ValueError(f"no {dataset} segment with hand-object contact was found")
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(objects)
    keys = [text_key(s.action, r["is_lhand"], r["is_rhand"]) for s, r in zip(segments, records, strict=True)]
    nframes = np.array([len(r["x_obj"]) for r in records])
    arrays = {k: np.concatenate([r[k] for r in records]).astype(np.float32)
              for k in ("x_lhand", "x_rhand", "x_obj", "j_lhand", "j_rhand", "lhand_beta", "rhand_beta")}
    for side in ("l", "r"):
        c = [r[f"{side}contact"] for r in records]
        arrays[f"{side}cf_idx"], arrays[f"{side}cov_idx"], arrays[f"{side}chj_idx"] = (
            np.concatenate([x[:, k] for x in c]).astype(np.int64) for k in range(3))
        arrays[f"{side}dist_value"] = np.concatenate([x[:, 3] for x in c]).astype(np.float32)
        arrays[f"{side}contact_start"] = np.concatenate([[0], np.cumsum([len(x) for x in c])])
    counts = Counter(keys)
    arrays.update(
        seq_start=np.concatenate([[0], np.cumsum(nframes)[:-1]]), nframes=nframes,
        is_lhand=np.array([r["is_lhand"] for r in records]), is_rhand=np.array([r["is_rhand"] for r in records]),
        object_idx=np.array([names.index(s.obj_name) for s in segments]), action_name=np.array([s.action for s in segments]),
        text_key=np.array(keys), subject=np.array([s.subject for s in segments]),
        split=default_split(dataset, [s.subject for s in segments], keys),
        balance_weights=np.array([1 / counts[k] for k in keys]),
    )
    with atomic_path(out / "data.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    obj_arrays = {k: np.stack([objects[n][k] for n in names]) for k in objects[names[0]]}
    with atomic_path(out / "objects.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, names=np.array(names), **obj_arrays)
    meta = {
        "dataset": dataset, "flat_hand_mean": FLAT_HAND_MEAN[dataset], "rot_convention": ROT_CONVENTION[dataset],
        "obj_dim": int(arrays["x_obj"].shape[-1]), "objects": names, "n_sequences": len(records),
        "text_count": dict(sorted(counts.items())), "split_rule": "GRAB s9-s10 / ARCTIC s09-s10 test; H2O seeded 90/10 per text",
    }
    with atomic_write(out / "meta.json") as f:
        f.write(json.dumps(meta, indent=2))
    return meta


def preprocess(dataset: str, root: str | os.PathLike, out: str | os.PathLike, hands: tuple[ManoLayer, ManoLayer],
               object_root: str | os.PathLike | None = None, text_root: str | os.PathLike | None = None) -> dict:
    """Read a raw dataset, encode every segment, write ``out``; returns the meta dict.

    ``root``: H2O's folder with ``subject1..3``; GRAB's with ``s1..s10`` (``object_root``
    defaults to ``<root>/contact_meshes``); ARCTIC's folder with ``raw_seqs`` and ``meta``
    (``text_root``: the released descriptions, default ``<root>/text``). ``hands``: the left and
    right MANO layers, built with the dataset's ``flat_hand_mean``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root {root} is not a folder")
    for layer in hands:
        if layer.flat_hand_mean != FLAT_HAND_MEAN[dataset]:
            raise ValueError(f"{dataset} needs MANO layers with flat_hand_mean={FLAT_HAND_MEAN[dataset]}")
    if dataset == "h2o":
        objects = h2o_objects(Path(object_root or root / "object"))
        segments = read_h2o(root, hands)
    elif dataset == "grab":
        objects = grab_objects(Path(object_root or root / "contact_meshes"))
        segments = read_grab(root)
    else:
        objects = arctic_objects(Path(object_root or root / "meta" / "object_vtemplates"))
        segments = read_arctic(root / "raw_seqs", Path(text_root or root / "text"))
    if not objects:
        raise FileNotFoundError(f"no {dataset} object meshes found (object_root)")
    kept, records = [], []
    for seg in segments:
        if seg.obj_name not in objects:
            raise ValueError(f"{dataset} segment of subject {seg.subject} uses object {seg.obj_name!r}, which has no mesh")
        o = objects[seg.obj_name]
        rec = encode(seg, o["points"], hands, ROT_CONVENTION[dataset], o.get("top"))
        if rec is not None:
            kept.append(seg)
            records.append(rec)
    return write_dataset(Path(out), dataset, records, kept, objects)


# --- reading back ------------------------------------------------------------------------------


def load_processed(folder: str | os.PathLike, text_encoder, split: str | None = "train", max_frames: int = 150):
    """A written dataset as a training ``HOIBatch`` (first ``max_frames`` frames of each segment,
    zero-padded with masks; ℓ = min(n, max_frames)/max_frames; action = the canonical text's index).

    The contact map c (T3) is rebuilt from the stored triples of the kept frames. GRAB's object
    rotation (pᵀR) is stored transposed here, so that every loss can use R·p (the written
    ``data.npz`` keeps the official convention). Returns ``(batch, text_keys)``.
    """
    from cvpr24.text2hoi.rotations import rot6d_to_rotmat
    from cvpr24.text2hoi.train import HOIBatch

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "data.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    with np.load(folder / "objects.npz", allow_pickle=False) as z:
        points = z["points"]
    keep = np.arange(len(d["nframes"])) if split is None else np.nonzero(d["split"] == split)[0]
    if len(keep) == 0:
        raise ValueError(f"{folder} has no sequence in split {split!r}")
    n, t = len(keep), max_frames
    x = {k: np.zeros((n, t, d[k].shape[-1]), np.float32) for k in ("x_lhand", "x_rhand", "x_obj")}
    valid = np.zeros((n, t), np.float32)
    contact = np.zeros((n, points.shape[1]), np.float32)
    for row, i in enumerate(keep):
        s, m = int(d["seq_start"][i]), min(int(d["nframes"][i]), t)
        for k in x:
            x[k][row, :m] = d[k][s : s + m]
        valid[row, :m] = 1
        for side in ("l", "r"):
            c = slice(int(d[f"{side}contact_start"][i]), int(d[f"{side}contact_start"][i + 1]))
            contact[row, d[f"{side}cov_idx"][c][d[f"{side}cf_idx"][c] < m]] = 1
    x_obj = torch.as_tensor(x["x_obj"])
    if meta["rot_convention"] == "pR":
        r = rot6d_to_rotmat(x_obj[..., 3:9]).transpose(-1, -2)
        x_obj = torch.cat([x_obj[..., :3], r[..., :, :2].reshape(n, t, 6), x_obj[..., 9:]], -1) * torch.as_tensor(valid)[..., None]
    keys = sorted(set(d["text_key"][keep].tolist()))
    valid_t = torch.as_tensor(valid)
    batch = HOIBatch(
        x_l=torch.as_tensor(x["x_lhand"]), x_r=torch.as_tensor(x["x_rhand"]), x_o=x_obj,
        mask_l=valid_t * torch.as_tensor(d["is_lhand"][keep], dtype=torch.float32)[:, None],
        mask_r=valid_t * torch.as_tensor(d["is_rhand"][keep], dtype=torch.float32)[:, None], mask_o=valid_t.clone(),
        points=torch.as_tensor(points[d["object_idx"][keep]]), contact=torch.as_tensor(contact),
        text=text_encoder(d["text_key"][keep].tolist()), length=torch.as_tensor(np.minimum(d["nframes"][keep], t) / t, dtype=torch.float32),
        action=torch.as_tensor([keys.index(k) for k in d["text_key"][keep]]),
    )
    return batch, keys

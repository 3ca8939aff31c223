"""Real data and weights: PartNet prep data (restricted unpickler), the official mixed-set
``.pt`` files, the official checkpoints (key map), meshes per part (trimesh), an npz
interchange format, and our own checkpoints (safetensors + JSON sidecar).

Nothing here unpickles arbitrary objects: ``.npy`` dicts go through :class:`SafeUnpickler`
(numpy arrays, dtypes, scalars and builtin containers only) unless the caller passes
``trust_pickle=True``; torch files are read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from cvpr24.common.checkpoint import load_checkpoint, save_checkpoint
from cvpr24.common.io import atomic_path
from cvpr24.gfars.data import MixedPartSet
from cvpr24.gfars.model import GFARS, GFARSConfig

PathLike = str | os.PathLike


# --- restricted unpickling of PartNet prep data ----------------------------------------------

class SafeUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes and scalars and builtin containers; refuses any other
    global (e.g. ``os.system``) with ``pickle.UnpicklingError`` before calling it."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }
    _DTYPE_CLASS = re.compile(r"^numpy\.dtypes$")

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (self._DTYPE_CLASS.match(module)
                                              and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only numpy arrays and builtin containers "
            "are allowed (pass trust_pickle=True only for files you trust)")


def load_npy(path: PathLike, trust_pickle: bool = False):
    """Load a ``.npy`` file; an object array (a pickled dict) goes through
    :class:`SafeUnpickler` unless ``trust_pickle=True``. Returns the array, or the object a
    0-d object array holds."""
    path = Path(path)
    if trust_pickle:
        arr = np.load(path, allow_pickle=True)
    else:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            arr = SafeUnpickler(f).load()
    if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ():
        return arr.item()
    return arr


PREP_KEYS = ("part_pcs", "part_poses")


def load_prep_shape(path: PathLike, trust_pickle: bool = False) -> dict:
    """One ``shape_data/<id>_level3.npy`` dict: ``part_pcs`` (p, n, 3), ``part_poses``
    (p, 7) and whatever else it holds (``geo_part_ids``, ``sym``, ``part_ids``)."""
    d = load_npy(path, trust_pickle)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    missing = [k for k in PREP_KEYS if k not in d]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}")
    pcs = np.asarray(d["part_pcs"], dtype=np.float32)
    if pcs.ndim != 3 or pcs.shape[-1] != 3:
        raise ValueError(f"{path}: part_pcs must be (p, n, 3), got {pcs.shape}")
    return {**d, "part_pcs": pcs}


def load_prep_split(root: PathLike, category: str, split: str, max_parts: int = 20,
                    trust_pickle: bool = False) -> list[dict]:
    """The shapes of ``<root>/<category>.<split>.npy``; shapes with more than ``max_parts``
    parts are dropped (as the official builder does)."""
    root = Path(root)
    ids_path = root / f"{category}.{split}.npy"
    if not ids_path.is_file():
        raise FileNotFoundError(f"--prep-data: {ids_path} not found")
    shapes = []
    for sid in np.load(ids_path, allow_pickle=False).tolist():
        shape = load_prep_shape(root / "shape_data" / f"{sid}_level3.npy", trust_pickle)
        if len(shape["part_pcs"]) <= max_parts:
            shapes.append({**shape, "id": int(sid)})
    return shapes


def load_contact_points(root: PathLike, shape_id: int, trust_pickle: bool = False) -> np.ndarray:
    """``contact_points/pairs_with_contact_points_<id>_level3.npy``: (p, p, 4)."""
    path = Path(root) / "contact_points" / f"pairs_with_contact_points_{shape_id}_level3.npy"
    return np.asarray(load_npy(path, trust_pickle), dtype=np.float32)


def make_mixes(shapes: list[dict], seed: int, passes: int = 2, n_shapes=(2, 3),
               probs=(0.7, 0.3)) -> list[MixedPartSet]:
    """The official mix builder: each pass shuffles the shapes and concatenates the parts of
    N consecutive shapes (N drawn from ``n_shapes`` with ``probs``), parts shuffled."""
    rng = np.random.default_rng(seed)
    mixes = []
    for _ in range(passes):
        order = rng.permutation(len(shapes))
        i = 0
        while i < len(order):
            n = int(rng.choice(n_shapes, p=probs))
            chosen = [shapes[j] for j in order[i: i + n]]
            i += n
            if len(chosen) < 2:
                break
            parts = np.concatenate([s["part_pcs"] for s in chosen])
            groups = np.concatenate([np.full(len(s["part_pcs"]), k) for k, s in enumerate(chosen)])
            perm = rng.permutation(len(parts))
            mixes.append(MixedPartSet(parts[perm], groups[perm],
                                      {"shape_ids": [s.get("id") for s in chosen]}))
    return mixes


# --- official mixed-set files ----------------------------------------------------------------

def load_official_mix(path: PathLike) -> MixedPartSet:
    """An official ``<Cat>_data_<i>.pt`` (``torch.load(weights_only=True)``).

    ``MixPartRandom`` layout: ``all_poses`` (R, T, 8) with one row per shape (the last
    column is the selection) and ``data_valid`` (R, T); every part gets its row's index,
    parts in no valid row get -1 (noise). ``Random_MixPartRandom`` layout: one target row
    (``all_poses`` (T, 8) or (1, T, 8)); its parts get group 0 and all others -1 (their
    groups are not in the file; for training on the target only)."""
    d = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(d).__name__}")
    for key in ("all_parts", "all_poses"):
        if key not in d:
            raise KeyError(f"{path}: missing key {key!r}")
    parts = torch.as_tensor(d["all_parts"]).float()
    total = int(d.get("total_parts", parts.shape[0]))
    parts = parts[:total]
    poses = torch.as_tensor(d["all_poses"]).float()
    if poses.dim() == 2:
        poses = poses[None]
    sel = poses[:, :total, -1] > 0.5  # (R, T)
    if "data_valid" in d:
        valid = torch.as_tensor(d["data_valid"]).bool()
        valid = (valid[:, :total] if valid.dim() == 2 else valid[:, None]).any(1)
        layout = "MixPartRandom"
    else:
        valid = torch.ones(len(sel), dtype=torch.bool)
        layout = "Random_MixPartRandom"
    groups = torch.full((total,), -1, dtype=torch.long)
    for k in torch.nonzero(valid).flatten().tolist():
        if (groups[sel[k]] >= 0).any():
            raise ValueError(f"{path}: a part is selected by two shape rows")
        groups[sel[k]] = k
    return MixedPartSet(parts.numpy(), groups.numpy(), {"layout": layout, "path": str(path)})


# --- official checkpoints --------------------------------------------------------------------

def _official_to_ours(key: str) -> str | None:
    key = key.removeprefix("module.")
    rules = [
        (r"^point_encoder\.conv(\d)\.(weight|bias)$",
         lambda m: f"point_encoder.convs.{int(m[1]) - 1}.{m[2]}"),
        (r"^point_encoder\.bn6\.(.+)$", lambda m: f"point_encoder.bn_fc.{m[1]}"),
        (r"^point_encoder\.bn(\d)\.(.+)$", lambda m: f"point_encoder.bns.{int(m[1]) - 1}.{m[2]}"),
        (r"^point_encoder\.mlp1\.(weight|bias)$", lambda m: f"point_encoder.fc.{m[1]}"),
        (r"^sel_GNN\.x_encoder\.(weight|bias)$", lambda m: f"sel_gnn.x_encoder.{m[1]}"),
        (r"^sel_GNN\.t_embed\.(0\.W|1\.weight|1\.bias)$", lambda m: f"sel_gnn.t_embed.{m[1]}"),
        (r"^sel_GNN\.(?:mlp(\d)|conv(\d)\.nn)\.([02])\.(weight|bias)$",
         lambda m: f"sel_gnn.convs.{int(m[1] or m[2]) - 1}."
                   f"{'lin1' if m[3] == '0' else 'lin2'}.{m[4]}"),
    ]
    for pattern, fn in rules:
        m = re.match(pattern, key)
        if m:
            return fn(m)
    return None


def load_official_state_dict(sd: dict, cfg: GFARSConfig | None = None) -> GFARS:
    """Map an official ``AssembleModel`` state dict onto :class:`GFARS`.

    Accepts either copy of the duplicated EdgeConv MLP keys (``mlp{k}`` and ``conv{k}.nn``)
    and checks they are equal when both are present (``ValueError`` otherwise); squeezes
    Conv1d kernels ``(out, in, 1)``; raises ``KeyError`` listing unknown or missing keys.
    The width is read from the weights when ``cfg`` is None (paper defaults otherwise).
    """
    unknown = sorted(k for k in sd if _official_to_ours(k) is None)
    if unknown:
        raise KeyError(f"unknown keys in the official state dict: {unknown}")
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in sd.items():
        ours = _official_to_ours(key)
        value = torch.as_tensor(value)
        if ours.startswith("point_encoder.convs.") and value.dim() == 3:
            value = value.squeeze(-1)
        if ours in mapped:
            if mapped[ours].shape != value.shape or not torch.equal(mapped[ours], value):
                raise ValueError(f"duplicated keys {source[ours]!r} and {key!r} hold different "
                                 "tensors")
            continue
        mapped[ours], source[ours] = value, key
    if cfg is None:
        f = mapped["sel_gnn.x_encoder.weight"].shape[0] if "sel_gnn.x_encoder.weight" in mapped \
            else 256
        cfg = GFARSConfig(feat_len=f)
    model = GFARS(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise KeyError(f"missing keys for the official model: {missing}")
    bad = [k for k in mapped if mapped[k].shape != expected[k].shape]
    if bad:
        raise ValueError("shape mismatch for " + ", ".join(
            f"{k}: {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}" for k in bad))
    model.load_state_dict(mapped)
    return model.eval()


def load_official_checkpoint(path: PathLike, cfg: GFARSConfig | None = None) -> GFARS:
    """``torch.load(path, weights_only=True)`` then :func:`load_official_state_dict`."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return load_official_state_dict(sd, cfg)


def to_official_state_dict(model: GFARS) -> dict[str, torch.Tensor]:
    """Our weights under the official key names, with the duplicated EdgeConv keys and the
    Conv1d kernel layout (for round trips and for the official code)."""
    out = {}
    for key, value in model.state_dict().items():
        m = re.match(r"^point_encoder\.convs\.(\d)\.(weight|bias)$", key)
        if m:
            v = value[..., None] if m[2] == "weight" else value
            out[f"point_encoder.conv{int(m[1]) + 1}.{m[2]}"] = v
            continue
        m = re.match(r"^point_encoder\.bns\.(\d)\.(.+)$", key)
        if m:
            out[f"point_encoder.bn{int(m[1]) + 1}.{m[2]}"] = value
            continue
        m = re.match(r"^sel_gnn\.convs\.(\d)\.(lin1|lin2)\.(weight|bias)$", key)
        if m:
            idx = "0" if m[2] == "lin1" else "2"
            out[f"sel_GNN.mlp{int(m[1]) + 1}.{idx}.{m[3]}"] = value
            out[f"sel_GNN.conv{int(m[1]) + 1}.nn.{idx}.{m[3]}"] = value
            continue
        key = key.replace("point_encoder.bn_fc.", "point_encoder.bn6.")
        key = key.replace("point_encoder.fc.", "point_encoder.mlp1.")
        key = key.replace("sel_gnn.", "sel_GNN.")
        out[key] = value
    return out


# --- meshes, npz, our checkpoints -----------------------------------------------------------

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb")


def load_mesh_parts(folder: PathLike, n_points: int = 1000, seed: int = 0,
                    align: str = "none") -> tuple[np.ndarray, list[str]]:
    """Sample ``n_points`` surface points (seeded, area-weighted) from every mesh in
    ``folder`` (one part per file, sorted by name) and centre each part; ``align="pca"``
    also rotates each part onto its principal axes. Returns ``(M, n, 3)`` and the names."""
    from cvpr24.common.extras import optional_import

    trimesh = optional_import("trimesh", "mesh")
    if align not in ("none", "pca"):
        raise ValueError(f"align must be 'none' or 'pca', got {align!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"parts folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no mesh files ({', '.join(MESH_SUFFIXES)})")
    parts = []
    for k, f in enumerate(files):
        mesh = trimesh.load(f, force="mesh")
        if len(mesh.faces) == 0 or mesh.area <= 0:
            raise ValueError(f"{f.name}: the mesh has no surface to sample")
        pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=[seed, k])
        pts = np.asarray(pts, dtype=np.float64)
        pts -= pts.mean(0)
        if align == "pca":
            _, _, vt = np.linalg.svd(pts, full_matrices=False)
            pts = pts @ vt.T
        parts.append(pts.astype(np.float32))
    return np.stack(parts), [f.name for f in files]


def save_npz(path: PathLike, parts: np.ndarray, groups: np.ndarray | None = None) -> Path:
    """The interchange format: ``parts`` (M, n, 3) float32 and optional ``groups`` (M,)."""
    s = MixedPartSet(parts, np.zeros(len(parts)) if groups is None else groups)
    path = Path(path)
    arrays = {"parts": s.parts} if groups is None else {"parts": s.parts, "groups": s.groups}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_npz(path: PathLike) -> MixedPartSet:
    """Read :func:`save_npz` files (no pickle). Missing ``groups`` -> all -1."""
    with np.load(path, allow_pickle=False) as z:
        if "parts" not in z:
            raise KeyError(f"{path}: missing array 'parts' (found {sorted(z.files)})")
        parts = z["parts"]
        groups = z["groups"] if "groups" in z else np.full(len(parts), -1)
    if parts.ndim != 3 or parts.shape[-1] != 3:
        raise ValueError(f"{path}: 'parts' must be (M, n, 3), got {parts.shape}")
    return MixedPartSet(parts, groups, {"path": str(path)})


def save_model(path: PathLike, model: GFARS, **kwargs) -> Path:
    return save_checkpoint(path, model.state_dict(), config=model.cfg, **kwargs)


def load_model(path: PathLike) -> GFARS:
    """Our checkpoint (``.safetensors`` + sidecar), or an official ``.pth`` / ``.pt``."""
    path = Path(path)
    if path.suffix in (".pth", ".pt"):
        return load_official_checkpoint(path)
    ck = load_checkpoint(path, GFARSConfig)
    model = GFARS(ck.config)
    model.load_state_dict(ck.tensors)
    return model.eval()

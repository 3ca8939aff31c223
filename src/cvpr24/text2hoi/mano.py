"""MANO: a safe loader for the licensed pickles, a pure-torch layer, and a procedural stand-in.

``load_mano(path)`` reads ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (from mano.is.tue.mpg.de) with a
restricted unpickler: numpy arrays, a scipy CSC/CSR matrix and ``chumpy.ch.Ch`` objects are
rebuilt from their pickled *state* by our own stubs; chumpy and scipy classes are never
imported and any other global (``os.system``...) raises ``pickle.UnpicklingError``.

``ManoLayer`` is linear blend skinning with the semantics of ``smplx.MANO`` (no PCA,
``flat_hand_mean`` flag, ``joints_w_tip``): (M1)-(M4) in the docs.

``ProceduralHand`` builds a MANO-format dict (capsule bones, ~400 vertices) that goes through
the same ``load_mano``/``ManoLayer`` path, so everything runs without licensed files.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cvpr24.text2hoi.rotations import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_axis_angle

MANO_URL = "https://mano.is.tue.mpg.de"
REQUIRED_KEYS = (
    "v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
    "hands_components", "hands_mean",
)
# Fingertip vertex ids of real MANO, in Text2HOI's order: index, middle, pinky, ring, thumb.
MANO_TIP_IDS = (317, 445, 673, 556, 745)
N_JOINTS = 16


class _ChumpyStub:
    """Stands in for ``chumpy.ch.Ch``: keeps the pickled state; the array is ``state['x']``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state = kwargs or None


class _SparseStub:
    """Stands in for a scipy CSC/CSR matrix: keeps ``data``, ``indices``, ``indptr``, shape."""

    fmt = "csc"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _CsrStub(_SparseStub):
    fmt = "csr"


_STUBS = {
    ("chumpy.ch", "Ch"): _ChumpyStub,
    ("chumpy.reordering", "Select"): _ChumpyStub,
    ("scipy.sparse.csc", "csc_matrix"): _SparseStub,
    ("scipy.sparse._csc", "csc_matrix"): _SparseStub,
    ("scipy.sparse.csr", "csr_matrix"): _CsrStub,
    ("scipy.sparse._csr", "csr_matrix"): _CsrStub,
}
_NUMPY_GLOBALS = {"_reconstruct", "scalar", "ndarray", "dtype"}
_RENAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows numpy arrays/dtypes, ``copyreg._reconstructor``, ``object``, ``_codecs.encode``
    (protocol-2 bytes) and the stubs above."""

    what = "a MANO file"

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMES.get(module, module)
        if (module, name) in _STUBS:
            return _STUBS[(module, name)]
        if (module, name) in {("copyreg", "_reconstructor"), ("builtins", "object"), ("_codecs", "encode")}:
            return super().find_class(module, name)
        if module in {"numpy", "numpy.core.multiarray", "numpy._core.multiarray"} and (
            name in _NUMPY_GLOBALS
        ):
            if module == "numpy.core.multiarray":
                module = "numpy._core.multiarray" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else module
            return super().find_class(module, name)
        if module.startswith("numpy") and name.startswith(("dtype", "Float", "Int", "UInt")):
            return super().find_class(module, name)  # numpy 2 dtype classes (numpy.dtypes)
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed in {self.what} (only numpy arrays, "
            "scipy sparse matrices and chumpy arrays are)"
        )


def restricted_unpickle(data: bytes, what: str) -> Any:
    """Unpickle ``data`` (latin-1 for Python-2 pickles) with the allow-list above; ``what`` names
    the file in the error a forbidden global raises."""
    unpickler = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1")
    unpickler.what = what
    return unpickler.load()


def _to_array(value: Any, key: str, path: str) -> np.ndarray:
    if isinstance(value, _ChumpyStub):
        state = value.state if isinstance(value.state, dict) else {}
        x = state.get("x")
        if not isinstance(x, np.ndarray):
            raise ValueError(
                f"mano_path {path}: key {key!r} is a chumpy expression without a stored array "
                "(state has no 'x'); re-save the file with plain numpy arrays"
            )
        return np.asarray(x)
    if isinstance(value, _SparseStub):
        s = value.state
        shape = tuple(s.get("_shape", s.get("shape", ())))
        data, indices, indptr = (np.asarray(s[k]) for k in ("data", "indices", "indptr"))
        dense = np.zeros(shape, dtype=np.float64)
        major = shape[1] if value.fmt == "csc" else shape[0]
        for j in range(major):
            for p in range(indptr[j], indptr[j + 1]):
                if value.fmt == "csc":
                    dense[indices[p], j] += data[p]
                else:
                    dense[j, indices[p]] += data[p]
        return dense
    if isinstance(value, np.ndarray | list | tuple | int | float):
        return np.asarray(value)
    raise ValueError(f"mano_path {path}: key {key!r} has unsupported type {type(value).__name__}")


@dataclass
class ManoModel:
    """The arrays of one MANO hand, as numpy (V vertices, 16 joints)."""

    v_template: np.ndarray  # (V, 3)
    shapedirs: np.ndarray  # (V, 3, 10)
    posedirs: np.ndarray  # (V, 3, 135)
    J_regressor: np.ndarray  # (16, V) dense
    weights: np.ndarray  # (V, 16)
    kintree_table: np.ndarray  # (2, 16)
    f: np.ndarray  # (F, 3)
    hands_components: np.ndarray  # (45, 45)
    hands_mean: np.ndarray  # (45,)
    tip_ids: tuple[int, ...] = MANO_TIP_IDS
    is_rhand: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = {k: np.asarray(getattr(self, k)) for k in REQUIRED_KEYS}
        d["tip_ids"] = np.asarray(self.tip_ids, dtype=np.int64)
        return d


def mano_from_dict(d: dict[str, Any], path: str = "<dict>", is_rhand: bool | None = None) -> ManoModel:
    """Validate a MANO-format dict and convert it to a :class:`ManoModel`."""
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"mano_path {path}: missing keys {missing}; a MANO file has {list(REQUIRED_KEYS)}")
    arr = {k: _to_array(d[k], k, path) for k in REQUIRED_KEYS}
    v = arr["v_template"]
    n_v = v.shape[0]
    expect = {
        "v_template": (n_v, 3), "shapedirs": (n_v, 3, None), "posedirs": (n_v, 3, 135),
        "J_regressor": (N_JOINTS, n_v), "weights": (n_v, N_JOINTS), "kintree_table": (2, N_JOINTS),
        "hands_components": (45, 45), "hands_mean": (45,),
    }
    for k, shape in expect.items():
        got = arr[k].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got, strict=True)):
            raise ValueError(f"mano_path {path}: key {k!r} has shape {got}, expected {shape}")
    tips = tuple(int(i) for i in np.asarray(d.get("tip_ids", MANO_TIP_IDS)).ravel())
    if len(tips) != 5 or max(tips) >= n_v:
        raise ValueError(f"mano_path {path}: tip_ids must be 5 vertex ids < {n_v}, got {tips}")
    if is_rhand is None:
        is_rhand = "left" not in Path(str(path)).name.lower()
    return ManoModel(
        **{k: arr[k].astype(np.int64 if k in ("kintree_table", "f") else np.float64) for k in REQUIRED_KEYS},
        tip_ids=tips,
        is_rhand=bool(is_rhand),
    )


def load_mano(mano_path: str | os.PathLike, is_rhand: bool | None = None) -> ManoModel:
    """Load a MANO pickle by path with the restricted unpickler (latin-1, Python-2 pickles too).

    Raises ``FileNotFoundError`` (naming mano.is.tue.mpg.de) for a missing file,
    ``pickle.UnpicklingError`` for a forbidden global, ``ValueError`` for missing keys, wrong
    shapes or chumpy objects that do not hold a plain array.
    """
    p = Path(mano_path)
    if not p.is_file():
        raise FileNotFoundError(
            f"mano_path {p}: file not found. MANO is licensed and not shipped: register at "
            f"{MANO_URL}, download MANO_RIGHT.pkl / MANO_LEFT.pkl and pass their path"
        )
    d = restricted_unpickle(p.read_bytes(), f"MANO file {p}")
    if not isinstance(d, dict):
        raise ValueError(f"mano_path {p}: expected a pickled dict, got {type(d).__name__}")
    return mano_from_dict(d, str(p), is_rhand)


def save_mano_pickle(model: ManoModel, path: str | os.PathLike) -> Path:
    """Write a pickle-free-content MANO-format file (plain numpy arrays only)."""
    from cvpr24.common import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(model.to_dict(), fh, protocol=2)
    return Path(path)


# ------------------------------------------------------------------------------------------
# The layer


class ManoLayer(nn.Module):
    """MANO linear blend skinning in pure torch (smplx semantics, no PCA).

    Parameters
    ----------
    model : ManoModel
        From :func:`load_mano` or :meth:`ProceduralHand.model`.
    flat_hand_mean : bool
        If False the model's ``hands_mean`` is added to the 45 finger axis-angles before
        skinning (ARCTIC); if True the zero pose is the flat hand (H2O, GRAB).
    """

    def __init__(self, model: ManoModel, flat_hand_mean: bool = True) -> None:
        super().__init__()
        self.is_rhand = model.is_rhand
        self.flat_hand_mean = flat_hand_mean
        f32 = torch.get_default_dtype()
        self.register_buffer("v_template", torch.as_tensor(model.v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(model.shapedirs, dtype=f32))
        self.register_buffer("posedirs", torch.as_tensor(model.posedirs, dtype=f32).reshape(-1, 135).T.contiguous())
        self.register_buffer("J_regressor", torch.as_tensor(model.J_regressor, dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(model.weights, dtype=f32))
        self.register_buffer("hands_mean", torch.as_tensor(model.hands_mean, dtype=f32))
        self.register_buffer("faces", torch.as_tensor(model.f, dtype=torch.long))
        self.register_buffer("tip_ids", torch.as_tensor(model.tip_ids, dtype=torch.long))
        parents = np.asarray(model.kintree_table[0], dtype=np.int64).copy()
        parents[0] = -1
        self.parents = parents.tolist()

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    def pose_rotmats(self, rotmats: torch.Tensor) -> torch.Tensor:
        """Add ``hands_mean`` to the finger rotations when ``flat_hand_mean`` is False (M1)."""
        if self.flat_hand_mean:
            return rotmats
        aa = rotmat_to_axis_angle(rotmats[..., 1:, :, :]).reshape(*rotmats.shape[:-3], 45)
        fingers = axis_angle_to_rotmat((aa + self.hands_mean).reshape(*aa.shape[:-1], 15, 3))
        return torch.cat([rotmats[..., :1, :, :], fingers], dim=-3)

    def forward(
        self,
        global_orient: torch.Tensor,
        hand_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Axis-angle input like ``smplx.MANO``: ``global_orient`` (B,3), ``hand_pose`` (B,45)."""
        if hand_pose.shape[-1] != 45 or global_orient.shape[-1] != 3:
            raise ValueError(
                f"global_orient must be (B, 3) and hand_pose (B, 45), got "
                f"{tuple(global_orient.shape)} and {tuple(hand_pose.shape)}"
            )
        if not self.flat_hand_mean:
            hand_pose = hand_pose + self.hands_mean
        aa = torch.cat([global_orient, hand_pose], -1).reshape(*hand_pose.shape[:-1], N_JOINTS, 3)
        return self.forward_rotmat(axis_angle_to_rotmat(aa), betas, transl, add_mean=False)

    def forward_rot6d(
        self, x: torch.Tensor, betas: torch.Tensor | None = None, joints_only: bool = False
    ) -> dict[str, torch.Tensor]:
        """Text2HOI hand features ``x`` (..., 99) = [τ (3) ‖ 16 × 6D] -> posed hand (M4).

        ``joints_only`` skins only the 5 tip vertices (``vertices`` then holds those 5): the
        same ``joints_w_tip`` for a fraction of the cost, for the distance-map losses.
        """
        if x.shape[-1] != 99:
            raise ValueError(f"hand features must have last dimension 99, got shape {tuple(x.shape)}")
        rot = rot6d_to_rotmat(x[..., 3:].reshape(*x.shape[:-1], N_JOINTS, 6))
        return self.forward_rotmat(rot, betas, x[..., :3], vertex_ids=self.tip_ids if joints_only else None)

    def forward_rotmat(
        self,
        rotmats: torch.Tensor,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
        add_mean: bool = True,
        vertex_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rotation matrices (..., 16, 3, 3) -> ``vertices`` (..., V, 3), ``joints`` (..., 16, 3),
        ``joints_w_tip`` (..., 21, 3). Any leading batch shape. With ``vertex_ids`` only those
        vertices are skinned and returned (they must include the tips for ``joints_w_tip``)."""
        lead = rotmats.shape[:-3]
        rot = rotmats.reshape(-1, N_JOINTS, 3, 3)
        if add_mean:
            rot = self.pose_rotmats(rot)
        b = rot.shape[0]
        dtype = rot.dtype
        if betas is None:
            betas = rot.new_zeros(b, self.num_betas)
        betas = betas.reshape(-1, betas.shape[-1]).expand(b, -1).to(dtype)
        # (M2) shape and pose blend shapes
        v_shaped = self.v_template.to(dtype) + torch.einsum("vck,bk->bvc", self.shapedirs.to(dtype), betas)
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor.to(dtype), v_shaped)
        eye = torch.eye(3, dtype=dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(b, -1)
        posedirs, weights = self.posedirs.to(dtype), self.lbs_weights.to(dtype)
        if vertex_ids is not None:
            cols = (vertex_ids[:, None] * 3 + torch.arange(3, device=vertex_ids.device)).reshape(-1)
            v_shaped, posedirs, weights = v_shaped[:, vertex_ids], posedirs[:, cols], weights[vertex_ids]
        v_posed = v_shaped + (pose_feature @ posedirs).reshape(b, -1, 3)
        # (M3) rigid transforms along the kinematic tree
        rel = joints.clone()
        rel[:, 1:] = joints[:, 1:] - joints[:, self.parents[1:]]
        local = torch.cat([torch.cat([rot, rel.unsqueeze(-1)], -1),
                           rot.new_tensor([0, 0, 0, 1]).expand(b, N_JOINTS, 1, 4)], -2)
        chain = [local[:, 0]]
        for i in range(1, N_JOINTS):
            chain.append(chain[self.parents[i]] @ local[:, i])
        world = torch.stack(chain, 1)  # (B, 16, 4, 4)
        posed_joints = world[:, :, :3, 3]
        shift = (world[:, :, :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)
        skin = torch.cat([world[:, :, :3, :3], (posed_joints - shift).unsqueeze(-1)], -1)  # (B,16,3,4)
        t = torch.einsum("vj,bjcd->bvcd", weights, skin)
        verts = (t[..., :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + t[..., 3]
        if transl is not None:
            tr = transl.reshape(-1, 1, 3).to(dtype)
            verts, posed_joints = verts + tr, posed_joints + tr
        if vertex_ids is None:
            tips = verts[:, self.tip_ids]
        else:
            where = {int(v): i for i, v in enumerate(vertex_ids.tolist())}
            tips = verts[:, [where[int(v)] for v in self.tip_ids.tolist()]]
        out = {"vertices": verts, "joints": posed_joints, "joints_w_tip": torch.cat([posed_joints, tips], 1)}
        return {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals as area-weighted sums of face normals (..., V, 3)."""
    v0, v1, v2 = (verts[..., faces[:, k], :] for k in range(3))
    fn = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 × area
    n = torch.zeros_like(verts)
    for k in range(3):
        n = n.index_add(-2, faces[:, k], fn)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ------------------------------------------------------------------------------------------
# The procedural stand-in hand

# MANO joint order: 0 wrist; index 1-3; middle 4-6; pinky 7-9; ring 10-12; thumb 13-15.
_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
_FINGERS = {"index": (1, 2, 3), "middle": (4, 5, 6), "pinky": (7, 8, 9), "ring": (10, 11, 12), "thumb": (13, 14, 15)}
_TIP_ORDER = ("index", "middle", "pinky", "ring", "thumb")


class ProceduralHand:
    """A MANO-format stand-in hand: capsule-like tubes around the bones (right hand in +x).

    Fingers point along +x from the wrist at the origin, the palm faces −y, the thumb is on +z.
    The left hand is the mirror image in x. ``shapedirs`` lengthen bones (tests only),
    ``posedirs`` are zero and ``hands_mean`` is small and random (seeded).
    """

    RING = 6  # vertices per ring
    RINGS = 3  # rings per bone

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @staticmethod
    def rest_joints() -> np.ndarray:
        """16 MANO-order joints at rest (metres); the hand is about 18 cm long."""
        j = np.zeros((N_JOINTS, 3))
        bases = {"index": (0.090, 0.0, 0.025), "middle": (0.095, 0.0, 0.005),
                 "ring": (0.090, 0.0, -0.015), "pinky": (0.080, 0.0, -0.033)}
        lengths = {"index": (0.038, 0.024, 0.020), "middle": (0.042, 0.027, 0.021),
                   "ring": (0.039, 0.026, 0.020), "pinky": (0.030, 0.020, 0.018)}
        for name, (a, b, c) in _FINGERS.items():
            if name == "thumb":
                j[a] = (0.025, 0.0, 0.030)
                d = np.array([0.7, 0.0, 0.7]) / np.linalg.norm([0.7, 0.0, 0.7])
                j[b] = j[a] + 0.035 * d
                j[c] = j[b] + 0.030 * d
                continue
            j[a] = bases[name]
            j[b] = j[a] + (lengths[name][0], 0, 0)
            j[c] = j[b] + (lengths[name][1], 0, 0)
        return j

    def model(self, is_rhand: bool = True) -> ManoModel:
        rng = np.random.default_rng(self.seed)
        joints = self.rest_joints()
        tips = {}
        for name, (_, _, c) in _FINGERS.items():
            direction = joints[c] - joints[_PARENTS[c]]
            length = 0.022 if name == "thumb" else 0.018
            tips[name] = joints[c] + length * direction / np.linalg.norm(direction)
        # bones: (start point, end point, joint the bone moves with, radius)
        bones = []
        for name, (a, b, c) in _FINGERS.items():
            r = 0.010 if name == "thumb" else 0.0085
            bones.append((joints[0], joints[a], 0, 0.012))  # palm/metacarpal
            bones += [(joints[a], joints[b], a, r), (joints[b], joints[c], b, r * 0.9),
                      (joints[c], tips[name], c, r * 0.8)]
        verts, faces, weights, tip_ids = [], [], [], {}
        jreg_rows: dict[int, list[int]] = {}
        for bi, (p0, p1, joint, radius) in enumerate(bones):
            axis = p1 - p0
            length = np.linalg.norm(axis)
            d = axis / length
            u = np.cross(d, [0.0, 1.0, 0.0] if abs(d[1]) < 0.9 else [1.0, 0.0, 0.0])
            u /= np.linalg.norm(u)
            w = np.cross(d, u)
            start = len(verts)
            for ri in range(self.RINGS):
                centre = p0 + axis * ri / (self.RINGS - 1)
                for k in range(self.RING):
                    ang = 2 * np.pi * k / self.RING
                    verts.append(centre + radius * (np.cos(ang) * u + np.sin(ang) * w))
                    wt = np.zeros(N_JOINTS)
                    if ri == 0 and _PARENTS[joint] >= 0:
                        wt[joint] = wt[_PARENTS[joint]] = 0.5  # blended at the joint
                    else:
                        wt[joint] = 1.0
                    weights.append(wt)
            # each bone starts at the joint it moves with: its first ring regresses that joint
            jreg_rows.setdefault(joint, list(range(start, start + self.RING)))
            end = p1 + 0.5 * radius * d
            if bi % 4 == 3:  # the fingertip vertex sits on the pad (palm side), as MANO's tips do
                end = p1 + 0.4 * radius * d + 0.8 * radius * np.array([0.0, -1.0, 0.0])
            caps = [p0 - 0.5 * radius * d, end]
            c0, c1 = len(verts), len(verts) + 1
            verts += caps
            weights += [weights[start].copy(), weights[start + self.RING * (self.RINGS - 1)].copy()]
            if bi % 4 == 3:
                finger = list(_FINGERS)[bi // 4]
                tip_ids[finger] = c1
            for ri in range(self.RINGS - 1):
                for k in range(self.RING):
                    a0 = start + ri * self.RING + k
                    a1 = start + ri * self.RING + (k + 1) % self.RING
                    faces += [(a0, a1, a1 + self.RING), (a0, a1 + self.RING, a0 + self.RING)]
            last = start + (self.RINGS - 1) * self.RING
            for k in range(self.RING):
                faces.append((c0, start + (k + 1) % self.RING, start + k))
                faces.append((c1, last + k, last + (k + 1) % self.RING))
        v = np.asarray(verts)
        n_v = len(v)
        jreg = np.zeros((N_JOINTS, n_v))
        for jid, rows in jreg_rows.items():
            jreg[jid, rows] = 1.0 / len(rows)
        faces = self._orient_outward(v, np.asarray(faces), bones)
        weights = np.asarray(weights)
        # shapedirs: 0 global scale about the wrist, 1-5 one finger longer, 6-9 stretch x/y/z, thickness
        shapedirs = np.zeros((n_v, 3, 10))
        shapedirs[:, :, 0] = 0.1 * v
        per_bone = self.RING * self.RINGS + 2
        for fi, name in enumerate(_FINGERS):
            base = joints[_FINGERS[name][0]]
            rows = np.arange((fi * 4 + 1) * per_bone, (fi * 4 + 4) * per_bone)
            shapedirs[rows, :, 1 + fi] = 0.1 * (v[rows] - base)
        for ax in range(3):
            shapedirs[:, ax, 6 + ax] = 0.05 * v[:, ax]
        shapedirs[:, 1, 9] = 0.002 * np.sign(v[:, 1])
        model = ManoModel(
            v_template=v, shapedirs=shapedirs, posedirs=np.zeros((n_v, 3, 135)), J_regressor=jreg,
            weights=weights, kintree_table=np.stack([np.asarray(_PARENTS) % 2**32, np.arange(N_JOINTS)]),
            f=faces, hands_components=np.eye(45), hands_mean=0.1 * rng.standard_normal(45),
            tip_ids=tuple(tip_ids[n] for n in _TIP_ORDER), is_rhand=True,
        )
        return model if is_rhand else mirror_model(model)

    @staticmethod
    def _orient_outward(v: np.ndarray, faces: np.ndarray, bones: list) -> np.ndarray:
        per_bone = ProceduralHand.RING * (ProceduralHand.RINGS - 1) * 2 + 2 * ProceduralHand.RING
        out = faces.copy()
        for fi, face in enumerate(faces):
            p0, p1, _, _ = bones[fi // per_bone]
            c = v[face].mean(0)
            d = p1 - p0
            t = np.clip((c - p0) @ d / (d @ d), 0, 1)
            n = np.cross(v[face[1]] - v[face[0]], v[face[2]] - v[face[0]])
            if n @ (c - (p0 + t * d)) < 0:
                out[fi] = face[[0, 2, 1]]
        return out


def mirror_model(model: ManoModel) -> ManoModel:
    """The mirror image of a hand in x (right <-> left), as MANO's left hand is of its right."""
    flip = np.array([-1.0, 1.0, 1.0])
    return ManoModel(
        v_template=model.v_template * flip,
        shapedirs=model.shapedirs * flip[None, :, None],
        posedirs=model.posedirs * flip[None, :, None],
        J_regressor=model.J_regressor, weights=model.weights, kintree_table=model.kintree_table,
        f=model.f[:, [0, 2, 1]], hands_components=model.hands_components,
        hands_mean=(model.hands_mean.reshape(15, 3) * np.array([1.0, -1.0, -1.0])).ravel(),
        tip_ids=model.tip_ids, is_rhand=not model.is_rhand,
    )

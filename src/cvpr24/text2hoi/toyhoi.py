"""ToyHOI [X]: a deterministic synthetic text + two-hand + object motion dataset with exact SDFs.

Objects come from 8 training families and 3 held-out ones, each with an analytic signed
distance (union = min). A sequence is approach -> grasp -> manipulate -> release over T
frames: the palm faces a contact point drawn from the region the text allows, fingers close by
per-finger bisection until the tips touch the surface, and while grasped the object moves
rigidly with the hand(s). Labels follow T1-T3 (2 cm rule, 21 joints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cvpr24.text2hoi.geometry import contact_labels, farthest_point_sampling, transform_points
from cvpr24.text2hoi.mano import ManoLayer, ProceduralHand
from cvpr24.text2hoi.rotations import axis_angle_to_rotmat, rotmat_to_rot6d

TRAIN_FAMILIES = ("box", "cylinder", "sphere", "ellipsoid", "mug", "bottle", "bowl", "plate")
HELDOUT_FAMILIES = ("capsule", "frustum", "torus")
VERBS = ("grasp", "lift", "place", "rotate", "push", "hand over")
HANDS = ("the right hand", "the left hand", "both hands")
PARTS = ("", "by the handle", "from the top", "from the side")
TEMPLATES = (
    "{verb} the {obj} {part} with {hand}",
    "use {hand} to {verb} the {obj} {part}",
    "with {hand}, {verb} the {obj} {part}",
    "{hand}: {verb} the {obj} {part}",
)

# ------------------------------------------------------------------------------------------
# Analytic SDFs in the object frame (unit size; scaled by s so that max radius = s_obj)


def _box(p, b):
    q = p.abs() - b
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def _cyl(p, r, h):  # axis z, half height h
    d = torch.stack([p[..., :2].norm(dim=-1) - r, p[..., 2].abs() - h], -1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)


def _ellipsoid(p, r):  # the common first-order approximation, exact for spheres
    k0 = (p / r).norm(dim=-1)
    k1 = (p / (r * r)).norm(dim=-1)
    return k0 * (k0 - 1) / k1.clamp_min(1e-12)


def _torus(p, big, small):  # in the xy plane
    q = torch.stack([p[..., :2].norm(dim=-1) - big, p[..., 2]], -1)
    return q.norm(dim=-1) - small


def _capsule(p, h, r):  # segment along z from −h to h
    q = p.clone()
    q[..., 2] = p[..., 2] - p[..., 2].clamp(-h, h)
    return q.norm(dim=-1) - r


def _frustum(p, h, r1, r2):  # a capped cone, bottom radius r1 at z = −h, top r2 at z = h
    q = torch.stack([p[..., :2].norm(dim=-1), p[..., 2]], -1)
    k1 = q.new_tensor([r2, h])
    k2 = q.new_tensor([r2 - r1, 2 * h])
    ca = torch.stack([q[..., 0] - q[..., 0].clamp(max=torch.where(q[..., 1] < 0, r1, r2)), q[..., 1].abs() - h], -1)
    t = (((k1 - q) * k2).sum(-1) / (k2 @ k2)).clamp(0, 1)
    cb = q - k1 + k2 * t.unsqueeze(-1)
    s = torch.where((cb[..., 0] < 0) & (ca[..., 1] < 0), -1.0, 1.0)
    return s * torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()


def family_sdf(family: str, a: np.ndarray):
    """The unit-size SDF of a family with aspect parameters ``a`` (3 numbers in [0.6, 1.4])."""
    x, y, z = (float(v) for v in a)
    if family == "box":
        return lambda p: _box(p, p.new_tensor([0.6 * x, 0.5 * y, 0.7 * z]))
    if family == "cylinder":
        return lambda p: _cyl(p, 0.45 * x, 0.7 * z)
    if family == "sphere":
        return lambda p: p.norm(dim=-1) - 0.8 * x
    if family == "ellipsoid":
        return lambda p: _ellipsoid(p, p.new_tensor([0.8 * x, 0.5 * y, 0.6 * z]))
    if family == "mug":  # body + a handle torus in the xz plane at +x
        def mug(p):
            body = _cyl(p, 0.45, 0.55 * z)
            hp = torch.stack([p[..., 0] - 0.5, p[..., 2], p[..., 1]], -1)
            return torch.minimum(body, _torus(hp, 0.22, 0.06))
        return mug
    if family == "bottle":
        return lambda p: torch.minimum(_cyl(p + p.new_tensor([0, 0, 0.2]), 0.35 * x, 0.5), _cyl(p - p.new_tensor([0, 0, 0.55]), 0.13, 0.25))
    if family == "bowl":  # a hemispherical shell, open at the top
        def bowl(p):
            shell = (p.norm(dim=-1) - 0.8).abs() - 0.06
            return torch.maximum(shell, p[..., 2])
        return bowl
    if family == "plate":
        return lambda p: _cyl(p, 0.9 * x, 0.05)
    if family == "capsule":
        return lambda p: _capsule(p, 0.45 * z, 0.35 * x)
    if family == "frustum":
        return lambda p: _frustum(p, 0.6 * z, 0.5 * x, 0.25 * x)
    if family == "torus":
        return lambda p: _torus(p, 0.55 * x, 0.2 * y)
    raise ValueError(f"unknown object family {family!r}")


@dataclass
class ToyObject:
    family: str
    aspect: np.ndarray
    scale: float  # s_obj (m)
    points: torch.Tensor  # (N, 3) canonical surface points (m)
    normals: torch.Tensor  # (N, 3)
    unit_radius: float = 1.0

    def sdf(self, p: torch.Tensor) -> torch.Tensor:
        """Signed distance (m) of points in the object frame; negative inside."""
        f = family_sdf(self.family, self.aspect)
        k = self.unit_radius / self.scale
        return f(p * k) / k

    def sdf_grad(self, p: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            q = p.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self.sdf(q).sum(), q)
        return torch.nn.functional.normalize(g, dim=-1).to(p.dtype)

    def world_sdf(self, p: torch.Tensor, x_o: torch.Tensor) -> torch.Tensor:
        """SDF of world points p (T, M, 3) under object poses x_o (T, 9) (R·p convention)."""
        from cvpr24.text2hoi.rotations import rot6d_to_rotmat

        r = rot6d_to_rotmat(x_o[:, 3:9].to(p.dtype))
        local = torch.einsum("tji,tmj->tmi", r, p - x_o[:, None, :3].to(p.dtype))
        return self.sdf(local)


def make_object(family: str, rng: np.random.Generator, n_points: int = 256) -> ToyObject:
    """A random-aspect, random-scale object with FPS surface points and normals."""
    aspect = rng.uniform(0.6, 1.4, size=3)
    scale = float(np.exp(rng.uniform(np.log(0.04), np.log(0.15))))
    f = family_sdf(family, aspect)
    # project random box points onto the unit surface (Newton steps on the SDF)
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    p = (torch.rand(2000, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2)
    with torch.enable_grad():  # callers may be inside no_grad
        for _ in range(15):
            q = p.detach().requires_grad_(True)
            d = f(q)
            (gr,) = torch.autograd.grad(d.sum(), q)
            p = (q - d.unsqueeze(-1) * gr / gr.norm(dim=-1, keepdim=True).clamp_min(1e-9)).detach()
    p = p[f(p).abs() < 1e-5]
    unit_radius = float((p - p.mean(0)).norm(dim=-1).max())
    pts = p[farthest_point_sampling(p, n_points)] * (scale / unit_radius)
    obj = ToyObject(family, aspect, scale, pts.float(), torch.zeros(n_points, 3), unit_radius)
    obj.normals = obj.sdf_grad(pts).float()
    return obj


# ------------------------------------------------------------------------------------------
# Sequences


@dataclass
class ToyHOISample:
    text: str
    key: str  # canonical text (verb, object, part, hand)
    action: int  # verb × hand-type label (18 classes)
    x_lhand: torch.Tensor  # (T, 99)
    x_rhand: torch.Tensor
    x_obj: torch.Tensor  # (T, 9)
    is_lhand: bool
    is_rhand: bool
    obj: ToyObject
    contact: torch.Tensor  # (N,) object contact map c (T3); D* (T2) is recomputed per batch
    meta: dict = field(default_factory=dict)


def _smooth(u: np.ndarray | float) -> np.ndarray:
    u = np.clip(u, 0, 1)
    return u * u * (3 - 2 * u)


class ToyHOI:
    """Deterministic generator: ``ToyHOI(seed).sample(family, i)`` and ``.split(...)``.

    Parameters
    ----------
    seed : int
    n_frames : int
        T (40 in the reproduction).
    n_points : int
        FPS points per object (256 in the reproduction, 1024 at full scale).
    """

    def __init__(self, seed: int = 0, n_frames: int = 40, n_points: int = 256) -> None:
        self.seed = seed
        self.n_frames = n_frames
        self.n_points = n_points
        hand = ProceduralHand(0)
        self.layers = {
            "r": ManoLayer(hand.model(True)).double(),
            "l": ManoLayer(hand.model(False)).double(),
        }
        self.rest = torch.from_numpy(hand.rest_joints())
        # vertices that move with each finger's three joints (index, middle, pinky, ring, thumb)
        owner = torch.from_numpy(hand.model(True).weights).argmax(-1)
        self.finger_vertices = [torch.nonzero((owner >= 1 + 3 * k) & (owner <= 3 + 3 * k)).ravel() for k in range(5)]

    # --- the grasp ---------------------------------------------------------------------

    def _curl_pose(self, theta: torch.Tensor, left: bool) -> torch.Tensor:
        """Finger axis-angles (45,) curling each finger by theta[k] at each of its 3 joints."""
        pose = torch.zeros(15, 3, dtype=torch.float64)
        rest = self.rest
        for k, (a, b, c) in enumerate(((1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (13, 14, 15))):
            d = rest[c] - rest[b]
            axis = torch.linalg.cross(d / d.norm(), rest.new_tensor([0.0, -1.0, 0.0]))
            axis = axis / axis.norm()
            for j in (a, b, c):
                pose[j - 1] = axis * theta[k]
        if left:
            pose = pose * pose.new_tensor([1.0, -1.0, -1.0])
        return pose.reshape(45)

    def _grasp(self, obj: ToyObject, q: torch.Tensor, n: torch.Tensor, u: torch.Tensor, left: bool):
        """Global rotation, translation and finger curl putting the palm on (q, n) with fingers along u."""
        sign = -1.0 if left else 1.0
        ex, ey = sign * u, n  # hand +x (fingers, mirrored for the left), hand +y (back of the hand)
        ez = torch.linalg.cross(ex, ey)
        rot = torch.stack([ex, ey, ez], -1)  # columns: images of the hand axes
        palm = self.rest.new_tensor([sign * 0.055, -0.012, 0.0])
        transl = q + n * 0.004 - rot @ palm
        layer = self.layers["l" if left else "r"]
        # open hand: push it out along n until no vertex is inside (non-convex objects)
        for _ in range(3):
            out = layer.forward_rotmat(torch.cat([rot[None], torch.eye(3, dtype=rot.dtype).expand(15, 3, 3)])[None], transl=transl[None])
            depth = float((-obj.sdf(out["vertices"][0])).clamp_min(0).max())
            if depth == 0:
                break
            transl = transl + n * (depth + 0.001)
        lo = torch.zeros(5, dtype=torch.float64)
        hi = torch.full((5,), 1.1, dtype=torch.float64)

        def tip_sdf(theta):
            # the first contact of any part of each finger (its pad tip usually)
            out = layer.forward_rotmat(
                torch.cat([rot[None], axis_angle_to_rotmat(self._curl_pose(theta, left).reshape(15, 3))])[None],
                transl=transl[None],
            )
            d = obj.sdf(out["vertices"][0])
            return torch.stack([d[v].min() for v in self.finger_vertices])

        reach = tip_sdf(hi) < 0  # fingers whose tip reaches the surface within the range
        for _ in range(11):
            mid = (lo + hi) / 2
            inside = tip_sdf(mid) < 0
            hi = torch.where(inside, mid, hi)
            lo = torch.where(inside, lo, mid)
        theta = torch.where(reach, lo, hi)
        return rot, transl, theta

    def _path_is_free(self, obj: ToyObject, grasp, n: torch.Tensor, left: bool, others) -> bool:
        """No vertex deeper than 1 mm along the approach (open) or when closed, and >= 2 joints touching."""
        rot, transl, theta = grasp
        layer = self.layers["l" if left else "r"]
        curl = axis_angle_to_rotmat(self._curl_pose(theta, left).reshape(15, 3))
        open_ = torch.eye(3, dtype=rot.dtype).expand(15, 3, 3)
        poses = torch.stack([torch.cat([rot[None], c]) for c in (curl, open_, open_, open_)])
        offsets = torch.tensor([0.0, 0.03, 0.07, 0.12], dtype=rot.dtype)[:, None] * n
        out = layer.forward_rotmat(poses, transl=transl + offsets)
        touching = int((obj.sdf(out["joints_w_tip"][0]).abs() < 0.004).sum())  # a grasp holds with >= 2
        return bool(obj.sdf(out["vertices"]).min() > -0.001) and touching >= 2

    def _contact_point(self, obj: ToyObject, part: str, rng: np.random.Generator, exclude=None):
        n = obj.normals
        p = obj.points
        if part == "by the handle" and obj.family == "mug":
            ok = p[:, 0] > 0.5 * (obj.scale / obj.unit_radius) * 0.9
        elif part == "from the top":
            ok = n[:, 2] > 0.5
        elif part == "from the side":
            ok = n[:, 2].abs() < 0.35
        else:
            ok = n[:, 2] > -0.3
        if exclude is not None:
            ok = ok & ((n.double() @ exclude) < -0.3)
        idx = torch.nonzero(ok).ravel()
        if len(idx) == 0:
            idx = torch.arange(len(p))
        i = int(idx[rng.integers(len(idx))])
        return p[i].double(), n[i].double()

    # --- a sequence --------------------------------------------------------------------

    def texts_for(self, verb: str, family: str, part: str, hand: str) -> list[str]:
        return [" ".join(t.format(verb=verb, obj=family, part=part, hand=hand).split()) for t in TEMPLATES]

    def sample(self, family: str, index: int) -> ToyHOISample:
        """Sequence ``index`` of ``family`` (deterministic in (seed, family, index))."""
        fam_id = (TRAIN_FAMILIES + HELDOUT_FAMILIES).index(family)
        rng = np.random.default_rng([self.seed, fam_id, index])
        obj = make_object(family, rng, self.n_points)
        verb = VERBS[rng.integers(len(VERBS))]
        hand_id = int(rng.integers(3))
        hand = HANDS[hand_id]
        parts = [p for p in PARTS if p != "by the handle" or family == "mug"]
        part = parts[rng.integers(len(parts))]
        texts = self.texts_for(verb, family, part, hand)
        text = texts[rng.integers(len(texts))]
        use = {"r": hand_id in (0, 2), "l": hand_id in (1, 2)}
        t_n = self.n_frames
        yaw = rng.uniform(-math.pi, math.pi)
        r0 = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, yaw], dtype=torch.float64))
        o0 = torch.tensor([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 0.0], dtype=torch.float64)

        # per hand: contact point in the object frame, grasp in the object frame
        grasps, first_n = {}, None
        for h in ("r", "l"):
            if not use[h]:
                continue
            for _ in range(8):  # redraw contact points whose approach path would cut the object
                q, n = self._contact_point(obj, part, rng, exclude=first_n)
                jitter = np.deg2rad(20) * rng.uniform(-1, 1)
                t0 = torch.linalg.cross(n, n.new_tensor([0.0, 0.0, 1.0]) if abs(float(n[2])) < 0.9 else n.new_tensor([1.0, 0.0, 0.0]))
                t0 = t0 / t0.norm()
                t1 = torch.linalg.cross(n, t0)
                u = math.cos(jitter) * t0 + math.sin(jitter) * t1
                grasp = self._grasp(obj, q, n, u, h == "l")
                if self._path_is_free(obj, grasp, n, h == "l", [g[1:] for g in grasps.values()]):
                    break
            first_n = n if first_n is None else first_n
            grasps[h] = (n, *grasp)

        # timeline (fractions of T): approach, close, manipulate, open, retreat
        f = np.arange(t_n) / max(t_n - 1, 1)
        approach = 1 - _smooth(f / 0.25)  # 1 far .. 0 at contact
        closing = _smooth((f - 0.12) / 0.22) - _smooth((f - 0.75) / 0.12)
        retreat = _smooth((f - 0.85) / 0.15)
        manip = _smooth((f - 0.38) / 0.35)
        away = np.maximum(approach, retreat)
        amount = {"lift": 0.10 + 0.10 * rng.uniform(), "rotate": np.deg2rad(30 + 60 * rng.uniform()),
                  "push": 0.10, "hand over": 0.2, "place": 0.08, "grasp": 0.0}[verb]
        push_dir = -first_n.clone()
        push_dir[2] = 0
        push_dir = push_dir / push_dir.norm().clamp_min(1e-9)
        x_obj = torch.zeros(t_n, 9, dtype=torch.float64)
        curl_full = {h: self._curl_pose(g[3], h == "l").reshape(15, 3) for h, g in grasps.items()}
        hands_out = {h: torch.zeros(t_n, 99, dtype=torch.float64) for h in ("l", "r")}
        for i in range(t_n):
            m = float(manip[i])
            if verb == "rotate":
                mr, mt = axis_angle_to_rotmat(torch.tensor([0.0, 0.0, amount * m], dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)
            else:
                mr = torch.eye(3, dtype=torch.float64)
                mt = {"lift": torch.tensor([0, 0, amount * m]), "push": push_dir * amount * m,
                      "hand over": torch.tensor([amount * m, 0, 0.05 * m]), "place": torch.tensor([0.0, amount * m, -0.0]),
                      "grasp": torch.zeros(3)}[verb].double()
            rot_o = mr @ r0
            pos_o = mr @ o0 + mt
            x_obj[i, :3], x_obj[i, 3:] = pos_o, rotmat_to_rot6d(rot_o)
            for h, (n, rot, transl, _) in grasps.items():
                # hand in the object frame (rot, transl) -> world; retreat along the normal
                offset = n * 0.12 * float(away[i])
                g_rot = rot_o @ rot
                wrist = rot_o @ (transl + offset) + pos_o
                rots = torch.cat([g_rot[None], axis_angle_to_rotmat(curl_full[h] * float(closing[i]))])
                hands_out[h][i, :3] = wrist
                hands_out[h][i, 3:] = rotmat_to_rot6d(rots).reshape(96)
        # labels (T1-T3) from the posed joints
        pts_world = transform_points(obj.points.double(), x_obj[None])[0]
        contact = torch.zeros(self.n_points, dtype=torch.float64)
        for h in ("l", "r"):
            if use[h]:
                j = self.layers[h].forward_rot6d(hands_out[h])["joints_w_tip"]
                contact = torch.maximum(contact, contact_labels(pts_world, j)[1])
        action = VERBS.index(verb) * 3 + hand_id
        return ToyHOISample(
            text=text, key=texts[0], action=action, x_lhand=hands_out["l"].float(), x_rhand=hands_out["r"].float(),
            x_obj=x_obj.float(), is_lhand=use["l"], is_rhand=use["r"], obj=obj, contact=contact.float(),
            meta={"verb": verb, "part": part, "hand": hand, "family": family},
        )

    def split(self, families: tuple[str, ...], n: int, offset: int = 0) -> list[ToyHOISample]:
        """``n`` sequences spread evenly over ``families`` (indices from ``offset``)."""
        return [self.sample(families[i % len(families)], offset + i // len(families)) for i in range(n)]

"""Synthetic distractor videos for the CPU-scale reproduction (deterministic given a seed).

Every object is a two-part composite: a shape (ellipse, rectangle or triangle) split along a
per-video axis into halves textured from a small palette (colour plus stripe or checker
pattern). Targets are ``A|B`` composites. In the ``hard`` split three distractors reuse the
target's textures in other arrangements (``A|A``, ``B|B``, ``B|A``), at least one passes within
8 px of a target and an opaque bar hides a target for 2-4 frames: local appearance alone cannot
tell target from distractor. In the ``easy`` split at most one distractor appears and it shares
no texture with a target. Ground truth = the visible pixels of each target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("easy", "hard", "mixed")


@dataclass
class _Object:
    shape: str
    radius: np.ndarray  # (2,) half extents (ry, rx)
    textures: tuple[int, int]
    pos: np.ndarray  # (T, 2) centres (y, x)


def _texture_bank(rng: np.random.Generator, n: int) -> list[dict]:
    hue0 = rng.random()
    bank = []
    for i in range(n):
        hue = (hue0 + i / n) % 1.0
        bank.append(
            dict(
                color=_hsv_to_rgb(hue, 0.55 + 0.4 * rng.random(), 0.65 + 0.3 * rng.random()),
                pattern=rng.choice(["stripe", "checker"]),
                period=rng.uniform(4, 8),
                angle=rng.uniform(0, np.pi),
                phase=rng.uniform(0, 2 * np.pi),
            )
        )
    return bank


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _render_texture(tex: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) of a texture in object-local coordinates (u, v)."""
    c, s = np.cos(tex["angle"]), np.sin(tex["angle"])
    a = (c * u + s * v) * 2 * np.pi / tex["period"] + tex["phase"]
    if tex["pattern"] == "stripe":
        p = (np.sin(a) > 0).astype(np.float32)
    else:
        b = (-s * u + c * v) * 2 * np.pi / tex["period"] + tex["phase"]
        p = ((np.sin(a) > 0) ^ (np.sin(b) > 0)).astype(np.float32)
    return tex["color"][None, None] * (0.6 + 0.4 * p[..., None])


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    ny, nx = dy / r[0], dx / r[1]
    if shape == "ellipse":
        return ny**2 + nx**2 <= 1
    if shape == "rectangle":
        return (np.abs(ny) <= 1) & (np.abs(nx) <= 1)
    return (ny <= 1) & (ny >= 2 * np.abs(nx) - 1)  # triangle, apex up


def _trajectory(rng, t: int, size: int, r: np.ndarray) -> np.ndarray:
    lo, hi = r, size - 1 - r
    pos = np.empty((t, 2))
    p = rng.uniform(lo, hi)
    ang = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(1, 3) * np.array([np.sin(ang), np.cos(ang)])
    for i in range(t):
        pos[i] = p
        v = v + rng.normal(0, 0.15, 2)
        p = p + v
        for d in range(2):  # bounce at the borders
            if p[d] < lo[d] or p[d] > hi[d]:
                v[d] = -v[d]
                p[d] = np.clip(p[d], lo[d], hi[d])
    return pos


def _min_gap(a: _Object, b: _Object) -> float:
    """Smallest distance between the bounding circles of two objects over the clip."""
    d = np.linalg.norm(a.pos - b.pos, axis=1) - a.radius.max() - b.radius.max()
    return float(d.min())


@dataclass
class SyntheticVOS:
    """Deterministic synthetic VOS videos.

    Parameters
    ----------
    split : "easy", "hard" or "mixed" (each video easy or hard with probability 1/2).
    num_frames : frames per video (16 for evaluation, 5 for training clips).
    size : frame side in pixels (a multiple of 16).
    seed : base seed; video ``i`` uses the seed sequence ``(seed, i)``.
    max_targets : 1 or 2 target objects per video.

    ``video(i)`` returns ``(frames, masks, split)`` with frames (T, 3, S, S) float32 in [0, 1]
    and masks (T, S, S) uint8 object ids (0 = background).
    """

    split: str = "mixed"
    num_frames: int = 16
    size: int = 96
    seed: int = 0
    max_targets: int = 2

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.size % 16 or self.size < 48:
            raise ValueError(f"size must be a multiple of 16 and >= 48, got {self.size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")

    def video(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        rng = np.random.default_rng([self.seed, index])
        split = self.split if self.split != "mixed" else ("easy" if rng.random() < 0.5 else "hard")
        t, s = self.num_frames, self.size
        bank = _texture_bank(rng, 6)
        n_targets = int(rng.integers(1, self.max_targets + 1))
        objects = self._place_objects(rng, split, n_targets)
        order = rng.permutation(len(objects))  # painter's order, last drawn on top
        occluder = self._occluder(rng, split, objects[0])

        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        background = self._background(rng)
        axis = rng.uniform(0, np.pi)
        ca, sa = np.cos(axis), np.sin(axis)
        frames = np.empty((t, s, s, 3), np.float32)
        masks = np.zeros((t, s, s), np.uint8)
        for f in range(t):
            img = background.copy()
            owner = np.full((s, s), -1, np.int16)
            for oi in order:
                ob = objects[oi]
                # work inside the object's bounding box only
                (y0, x0), (y1, x1) = (
                    np.floor(ob.pos[f] - ob.radius - 1),
                    np.ceil(ob.pos[f] + ob.radius + 2),
                )
                box = (slice(max(0, int(y0)), int(y1)), slice(max(0, int(x0)), int(x1)))
                dy, dx = yy[box] - ob.pos[f, 0], xx[box] - ob.pos[f, 1]
                inside = _shape_mask(ob.shape, dy, dx, ob.radius)
                first_half = (ca * dx + sa * dy) < 0
                sub = img[box]
                for half, tex in ((first_half, ob.textures[0]), (~first_half, ob.textures[1])):
                    m = inside & half
                    sub[m] = _render_texture(bank[tex], dx, dy)[m]
                owner[box][inside] = oi
            if occluder is not None and occluder[0] <= f < occluder[1]:
                band = self._bar(occluder, objects[0].pos[f], yy, xx)
                img[band] = occluder[3]
                owner[band] = -1
            noise = rng.normal(0, 0.02, img.shape).astype(np.float32)
            frames[f] = np.clip(img + noise, 0, 1)
            for k in range(n_targets):
                masks[f][owner == k] = k + 1
        return frames.transpose(0, 3, 1, 2).copy(), masks, split

    # -- pieces --------------------------------------------------------------------------

    def _background(self, rng) -> np.ndarray:
        s = self.size
        coarse = rng.random((6, 6)).astype(np.float32)
        idx = np.linspace(0, 5, s)
        i0 = np.floor(idx).astype(int).clip(0, 4)
        w = (idx - i0)[:, None]
        rows = coarse[i0] * (1 - w) + coarse[i0 + 1] * w  # (s, 6)
        field = rows[:, i0] * (1 - w.T) + rows[:, i0 + 1] * w.T
        tint = 0.5 + 0.5 * rng.random(3)
        return (0.15 + 0.35 * field)[..., None] * tint[None, None].astype(np.float32)

    def _new_object(self, rng, textures) -> _Object:
        diameter = rng.uniform(16, 30)
        r = diameter / 2 * np.array([rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)])
        shape = str(rng.choice(["ellipse", "rectangle", "triangle"]))
        return _Object(shape, r, textures, _trajectory(rng, self.num_frames, self.size, r))

    def _place_objects(self, rng, split: str, n_targets: int) -> list[_Object]:
        target_tex = [(0, 1), (2, 3)][:n_targets]
        for _attempt in range(50):
            objects = [self._new_object(rng, tex) for tex in target_tex]
            if split == "easy":
                n_d = int(rng.integers(0, 2))
                free = (2, 3) if n_targets == 1 else (4, 5)
                objects += [self._new_object(rng, free) for _ in range(n_d)]
                return objects
            for _ in range(3):
                a, b = target_tex[int(rng.integers(n_targets))]
                arrangement = [(a, a), (b, b), (b, a)][_]
                objects.append(self._new_object(rng, arrangement))
            near = any(
                _min_gap(d, tgt) < 8 for d in objects[n_targets:] for tgt in objects[:n_targets]
            )
            if near:
                return objects
        return objects

    def _occluder(self, rng, split: str, target: _Object):
        """(start, end, horizontal, colour) of the bar hiding target 1, or None."""
        if split == "easy" and rng.random() < 0.5:
            return None
        t = self.num_frames
        dur = int(rng.integers(2, 5))
        start = int(rng.integers(1, max(2, t - dur)))
        color = np.full(3, rng.uniform(0.3, 0.7), np.float32)
        return (start, min(t, start + dur), bool(rng.random() < 0.5), color, target.radius.max())

    @staticmethod
    def _bar(occ, centre, yy, xx) -> np.ndarray:
        half = occ[4] + 3
        if occ[2]:
            return np.abs(yy - centre[0]) <= half
        return np.abs(xx - centre[1]) <= half


def training_batch(seed: int, step: int, batch_size: int, num_frames: int = 5, size: int = 96):
    """One training batch of mixed easy/hard clips: frames (B, T, 3, S, S) float32, masks
    (B, T, S, S) uint8 and the number of targets per clip; clips whose first frame has no
    visible target are skipped."""
    gen = SyntheticVOS("mixed", num_frames, size, seed=seed)
    frames, masks, counts = [], [], []
    i = step * batch_size * 4
    while len(frames) < batch_size:
        f, m, _ = gen.video(i)
        i += 1
        k = int(m.max())
        if k == 0 or any(not (m[0] == j).any() for j in range(1, k + 1)):
            continue
        frames.append(f)
        masks.append(m)
        counts.append(k)
    return np.stack(frames), np.stack(masks), counts

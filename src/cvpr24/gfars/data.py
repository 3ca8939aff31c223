"""Mixed part sets: the container, the procedural cuboid-furniture generator of the
reproduction, and the oracle that groups parts by their shared dimensions.

The generator [design decision] makes every part ambiguous on its own (each dimension of
each part type is drawn from the same range for every shape) and every shape identifiable
as a whole (its parts are chained by shared dimensions):

- chair: seat (W, T, D), 4 legs (T, H, T), back (W, H, T);
- table: top (W, T, D), 4 legs (T, H, T), 2 side panels (D, H, T);

with W in [0.5, 1.2], D in [0.4, 1.0], H in [0.35, 0.9], T in [0.04, 0.16] (log-uniform)
and +-2 %
jitter on every part dimension. Legs share (H, T) with the back or the side panels, which
share W or D and T with the seat or top, so no part is left without a shared dimension (the
flaw of leg-only links through an optional stretcher is gone). Within one mix the shapes'
W, D, H and T are kept at least ``min_gap`` apart (relative), so a shared dimension
identifies a shape; a mix has 2 (p = 0.7) or 3 (p = 0.3) shapes, 12-21 parts, shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RANGES = {"W": (0.5, 1.2), "D": (0.4, 1.0), "H": (0.35, 0.9), "T": (0.04, 0.16)}
PART_DIMS = {
    "chair": [("W", "T", "D")] + [("T", "H", "T")] * 4 + [("W", "H", "T")],
    "table": [("W", "T", "D")] + [("T", "H", "T")] * 4 + [("D", "H", "T")] * 2,
}


@dataclass
class MixedPartSet:
    """One mixed set: ``parts`` ``(M, n, 3)`` float32 (each part centred in its own frame),
    ``groups`` ``(M,)`` int64 shape index per part, ``-1`` for a noise part, and ``meta``."""

    parts: np.ndarray
    groups: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parts = np.asarray(self.parts, dtype=np.float32)
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.parts.ndim != 3 or self.parts.shape[-1] != 3:
            raise ValueError(f"parts must have shape (M, n, 3), got {self.parts.shape}")
        if self.groups.shape != (len(self.parts),):
            raise ValueError(
                f"groups must have shape ({len(self.parts)},), got {self.groups.shape}")

    @property
    def gt_groups(self) -> list[list[int]]:
        """The ground-truth groups as lists of part indices (noise parts in none)."""
        return [np.flatnonzero(self.groups == g).tolist() for g in np.unique(self.groups) if g >= 0]

    def __len__(self) -> int:
        return len(self.parts)


def cuboid_surface(dims: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform over the surface of axis-aligned boxes of sizes ``dims``
    (``(3,)`` or ``(P, 3)``), centred at the origin (faces chosen by area).
    Returns ``(n, 3)`` or ``(P, n, 3)``."""
    dims = np.asarray(dims, dtype=np.float64)
    single = dims.ndim == 1
    dims = np.atleast_2d(dims)
    a, b, c = dims.T
    areas = np.stack([b * c, b * c, a * c, a * c, a * b, a * b], 1)  # (P, 6)
    cdf = np.cumsum(areas / areas.sum(1, keepdims=True), 1)
    face = (rng.random((len(dims), n, 1)) > cdf[:, None, :5]).sum(-1)  # (P, n) in 0..5
    pts = (rng.random((len(dims), n, 3)) - 0.5) * dims[:, None, :]
    axis = face // 2
    sign = np.where(face % 2 == 0, -0.5, 0.5)
    np.put_along_axis(pts, axis[..., None],
                      (sign * np.take_along_axis(dims, axis, 1))[..., None], axis=2)
    return pts[0] if single else pts


def _draw_shapes(rng: np.random.Generator, k: int, min_gap: float) -> list[dict]:
    """Dimensions of ``k`` shapes, each of W, D, H, T log-uniform in its range, with the
    ``k`` values of each dimension at least ``min_gap`` apart relative to the larger
    (uniform over that constrained set: sorted uniform draws in a shortened log-range,
    spread by the gap, then shuffled across shapes)."""
    gap = -np.log1p(-min_gap)
    shapes: list[dict] = [{} for _ in range(k)]
    for key, (lo, hi) in RANGES.items():
        span = np.log(hi / lo) - (k - 1) * gap
        if span <= 0:
            raise ValueError(f"min_gap {min_gap} leaves no room for {k} shapes in {key}")
        u = np.sort(rng.uniform(0, span, k)) + gap * np.arange(k)
        for s, v in zip(shapes, rng.permutation(lo * np.exp(u)), strict=False):
            s[key] = float(v)
    return shapes


def procedural_mix(
    rng: np.random.Generator,
    n_points: int = 64,
    n_shapes: int | None = None,
    noise_parts: int = 0,
    jitter: float = 0.02,
    point_noise: float = 0.003,
    min_gap: float = 0.2,
    rotate: bool = False,
) -> MixedPartSet:
    """One mixed set from ``rng``. ``n_shapes`` defaults to 2 (p 0.7) or 3 (p 0.3).
    ``noise_parts`` parts of one extra shape are added with group -1 (a random subset).
    ``rotate`` gives each part a random rotation [extension; makes the task harder]."""
    n_shapes = int(rng.choice([2, 3], p=[0.7, 0.3])) if n_shapes is None else n_shapes
    shapes = _draw_shapes(rng, n_shapes + (1 if noise_parts else 0), min_gap)
    kinds = [str(rng.choice(["chair", "table"])) for _ in shapes]
    dims, groups = [], []
    for s, (vals, kind) in enumerate(zip(shapes, kinds, strict=False)):
        shape_dims = [[vals[k] for k in d] for d in PART_DIMS[kind]]
        label = s
        if s == n_shapes:  # the noise shape: keep a random subset of its parts
            keep = rng.choice(len(shape_dims), size=min(noise_parts, len(shape_dims)),
                              replace=False)
            shape_dims, label = [shape_dims[i] for i in keep], -1
        dims += shape_dims
        groups += [label] * len(shape_dims)
    dims = np.array(dims) * (1 + rng.uniform(-jitter, jitter, (len(dims), 3)))
    parts = cuboid_surface(dims, n_points, rng) + rng.normal(0, point_noise, (len(dims), n_points, 3))
    if rotate:
        rots = np.linalg.qr(rng.normal(size=(len(dims), 3, 3)))[0]
        parts = parts @ rots
    parts = parts - parts.mean(1, keepdims=True)
    order = rng.permutation(len(parts))
    return MixedPartSet(parts[order], np.array(groups)[order],
                        {"kinds": kinds[:n_shapes], "n_shapes": n_shapes})


def procedural_mixes(n: int, seed: int, **kwargs) -> list[MixedPartSet]:
    """``n`` mixes, each from its own stream ``default_rng([seed, i])`` (so any prefix of
    the list, or any single mix, is reproducible on its own)."""
    return [procedural_mix(np.random.default_rng([seed, i]), **kwargs) for i in range(n)]


def part_extents(parts: np.ndarray) -> np.ndarray:
    """Axis extents (max - min) of each part, ``(M, n, 3) -> (M, 3)``."""
    return parts.max(1) - parts.min(1)


def _shared_values(a: np.ndarray, b: np.ndarray, rel: float, abs_: float) -> int:
    """How many values of ``a`` can be matched one-to-one to values of ``b`` within the
    tolerance (greedy on sorted values, exact for 3 numbers up to ties)."""
    used, n = [False] * len(b), 0
    for x in sorted(a):
        for j, y in enumerate(b):
            if not used[j] and abs(x - y) <= rel * max(x, y) + abs_:
                used[j], n = True, n + 1
                break
    return n


def oracle_grouping(parts: np.ndarray, rel: float = 0.06, abs_: float = 0.006) -> list[list[int]]:
    """The validity-gate oracle: link two parts when they share their thinnest dimension
    (the board thickness T, which every part of a shape has) and at least one more
    dimension value (extents measured from the points, equal within ``rel`` x value +
    ``abs_``), and return the connected components of 2 or more parts (lone parts stay
    unassigned). It uses only the generator's rule, never the labels."""
    ext = part_extents(np.asarray(parts))
    m = len(ext)
    parent = list(range(m))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(m):
        for j in range(i + 1, m):
            thin_i, thin_j = ext[i].min(), ext[j].min()
            same_thin = abs(thin_i - thin_j) <= rel * max(thin_i, thin_j) + abs_
            if same_thin and _shared_values(ext[i], ext[j], rel, abs_) >= 2:
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(m):
        comps.setdefault(find(i), []).append(i)
    return [c for c in comps.values() if len(c) >= 2]


def pad_sets(sets: list[MixedPartSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack sets into padded arrays: parts ``(B, M, n, 3)``, groups ``(B, M)`` (padding
    -2) and mask ``(B, M)``."""
    m = max(len(s) for s in sets)
    n = sets[0].parts.shape[1]
    parts = np.zeros((len(sets), m, n, 3), np.float32)
    groups = np.full((len(sets), m), -2, np.int64)
    for b, s in enumerate(sets):
        parts[b, : len(s)] = s.parts
        groups[b, : len(s)] = s.groups
    return parts, groups, groups > -2

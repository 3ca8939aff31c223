"""Static-image pre-training data: pseudo-video clips made from single images with masks.

The paper's first training stage sees no video. Each training clip is made from one image and
its object mask (salient-object and few-shot segmentation sets) by drawing ``num_frames``
random geometric and photometric variations of it, so that the model learns to propagate a
mask under deformation before it sees real motion.

Folder layouts (:func:`static_images`; errors name ``arg``):

- pairs: every ``<stem>.jpg`` (or ``.jpeg``, ``.bmp``, ``.webp``) with a ``<stem>.png`` mask in
  the same folder, searched recursively (the layout of DUTS, ECSSD, HRSOD, BIG and, one folder
  per class, FSS-1000);
- two folders: ``images/<path>/<stem>.<ext>`` with ``masks/<path>/<stem>.png``.

Masks are object masks: pixels above 127 are the object (grayscale saliency masks, whose soft
edges are thus binarised at half intensity); palette (mode ``P``) masks count every non-zero
index as the object.

A clip (:meth:`StaticClipSampler.clip`) follows the official pre-training recipe:

1. per clip: isotropic scaling by 0.5-2 about the image centre and a horizontal flip with
   probability 1/2; colour jitter (brightness 0.1, contrast 0.05, saturation 0.05, hue 0.05)
   and grayscale with probability 0.05;
2. per frame: a random affine (rotation +-20 deg, scale 0.5-2, shear +-10 deg), a resize that
   makes the short side ``crop``, a random ``crop`` x ``crop`` window (outside the image: the
   ImageNet-mean colour and background), colour jitter (0.1, 0.05, 0.05) and, with probability
   0.33, a thin-plate-spline warp of 12 random control points moved by N(0, 0.02) (in units of
   the image side);
3. multi-object composition: ``rng.integers(max_objects)`` further images are turned into clips
   the same way and pasted over the first, each as a new object id on top of the earlier ones
   (with the paper's ``max_objects = 1`` every clip has one object);
4. objects that are not visible (at least ``min_pixels``) on the first frame become background;
   a clip with no visible object is redrawn.

The per-clip geometry of step 1 and the per-frame one of step 2 are composed into a single
resampling (bilinear for images, nearest for masks). ``StaticClipSampler(step)`` depends only
on (seed, step), like :class:`cvpr24.cutie.clips.ClipSampler`, so resumed runs see the same
clips.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvpr24.cutie.clips import _gray, _jitter, _warp
from cvpr24.cutie.data import read_image

STATIC_IMAGE_EXTS = (".jpg", ".jpeg", ".bmp", ".webp")
FILL = (124 / 255, 116 / 255, 104 / 255)  # ImageNet-mean colour outside the image


@dataclass(frozen=True)
class StaticImage:
    """An image and its object mask."""

    image: Path
    mask: Path


def static_images(root: str | os.PathLike, arg: str = "root") -> list[StaticImage]:
    """The (image, mask) pairs of a pre-training folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{arg}: not a folder: {root}")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        pairs = [
            StaticImage(p, m)
            for p in sorted((root / "images").rglob("*"))
            if p.suffix.lower() in STATIC_IMAGE_EXTS
            and (m := root / "masks" / p.relative_to(root / "images").with_suffix(".png")).is_file()
        ]
    else:
        pairs = [
            StaticImage(p, p.with_suffix(".png"))
            for p in sorted(root.rglob("*"))
            if p.suffix.lower() in STATIC_IMAGE_EXTS and p.with_suffix(".png").is_file()
        ]
    if not pairs:
        raise ValueError(
            f"{arg}: no image with a mask in {root}: expected <stem>.jpg next to <stem>.png, or "
            "images/<stem>.jpg with masks/<stem>.png"
        )
    return pairs


def read_object_mask(path: str | os.PathLike, arg: str = "mask") -> torch.Tensor:
    """(H, W) bool object mask: palette masks by non-zero index, others by gray value > 127."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: file not found: {path}")
    with Image.open(path) as im:
        if im.mode == "P":
            return torch.from_numpy(np.array(im) > 0)
        return torch.from_numpy(np.array(im.convert("L")) > 127)


def _about_centre(lin: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """3x3 homogeneous matrix applying the 2x2 ``lin`` about the centre of an (H, W) image."""
    h, w = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c - lin @ c
    return m


def _frame_affine(rng) -> np.ndarray:
    """2x2 rotation (+-20 deg) x shear along x (+-10 deg) x isotropic scale (0.5-2)."""
    angle = math.radians(rng.uniform(-20, 20))
    shear = math.radians(rng.uniform(-10, 10))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rot @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) * rng.uniform(0.5, 2.0)


def _output_to_input(seq: np.ndarray, rng, size: tuple[int, int], crop: int) -> torch.Tensor:
    """2x3 matrix mapping a frame's output pixel to input pixel coordinates: the per-clip
    matrix ``seq`` (3x3), then this frame's affine, the resize of the short side to ``crop``
    and a random window."""
    h, w = size
    r = crop / min(h, w)
    nh, nw = round(h * r), round(w * r)
    resize = np.array([[r, 0, (r - 1) / 2], [0, r, (r - 1) / 2], [0, 0, 1]])  # pixel centres
    ox, oy = rng.integers(nw - crop + 1), rng.integers(nh - crop + 1)
    window = np.array([[1.0, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    forward = window @ resize @ _about_centre(_frame_affine(rng), size) @ seq
    return torch.tensor(np.linalg.inv(forward)[:2], dtype=torch.float32)


def tps_grid(src: np.ndarray, dst: np.ndarray, size: int) -> torch.Tensor:
    """Sampling grid (1, size, size, 2) in [-1, 1] (x, y) of the thin-plate spline that maps
    the control points ``dst`` (n, 2) onto ``src`` (both (x, y) in [0, 1]): resampling an image
    with it moves the content at ``src`` to ``dst``."""
    n = len(dst)
    d2 = ((dst[:, None] - dst[None]) ** 2).sum(-1)
    kernel = np.where(d2 > 0, d2 * np.log(d2 + 1e-12), 0.0)  # U(r) = r^2 log r^2
    p = np.concatenate([np.ones((n, 1)), dst], 1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = kernel, p, p.T
    coef = np.linalg.solve(system, np.concatenate([src, np.zeros((3, 2))]))  # n + 3, 2
    t = (np.arange(size) + 0.5) / size
    pts = np.stack(np.meshgrid(t, t, indexing="xy"), -1).reshape(-1, 2)  # (x, y)
    e2 = ((pts[:, None] - dst[None]) ** 2).sum(-1)
    u = np.where(e2 > 0, e2 * np.log(e2 + 1e-12), 0.0)
    mapped = u @ coef[:n] + np.concatenate([np.ones((len(pts), 1)), pts], 1) @ coef[n:]
    return torch.tensor(mapped * 2 - 1, dtype=torch.float32).view(1, size, size, 2)


def _random_tps(
    image: torch.Tensor, mask: torch.Tensor, rng, scale: float = 0.02, points: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin-plate-spline warp of a (3, S, S) image and its (S, S) ids; control points on
    distinct rows and columns, moved by N(0, ``scale``)."""
    s = image.shape[-1]
    src = np.stack(
        [rng.choice(s, points, replace=False) / s, rng.choice(s, points, replace=False) / s], 1
    )
    grid = tps_grid(src, src + rng.normal(scale=scale, size=src.shape), s)
    image = F.grid_sample(image[None], grid, "bilinear", "border", align_corners=False)[0]
    ids = F.grid_sample(mask[None, None].float(), grid, "nearest", "zeros", align_corners=False)
    return image, ids[0, 0].round().to(mask.dtype)


def pseudo_clip(
    image: torch.Tensor,
    mask: torch.Tensor,
    rng,
    num_frames: int,
    crop: int,
    tps_prob: float = 0.33,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image in [0, 1] and (H, W) bool mask -> frames (T, 3, crop, crop) and bool
    masks (T, crop, crop), by steps 1-2 of the module docstring."""
    size = image.shape[-2:]
    flip = np.diag([-1.0, 1.0]) if rng.random() < 0.5 else np.eye(2)
    seq = _about_centre(flip * rng.uniform(0.5, 2.0), size)
    src = torch.cat([image, torch.ones_like(image[:1]), mask[None].float()])  # RGB, valid, mask
    fill = torch.tensor(FILL).view(3, 1, 1)
    frames, masks = [], []
    for _ in range(num_frames):
        m = _output_to_input(seq, rng, size, crop)
        rgbv = _warp(src[None, :4], m, crop, "bilinear")[0]
        frames.append(rgbv[:3] + (1 - rgbv[3:4]) * fill)
        masks.append(_warp(src[None, 4:], m, crop, "nearest")[0, 0] > 0.5)
    frames = _jitter(torch.stack(frames), rng, 0.1, 0.05, 0.05, hue=0.05)
    if rng.random() < 0.05:
        frames = _gray(frames).expand(-1, 3, -1, -1).contiguous()
    out_f, out_m = [], []
    for f, mk in zip(frames, masks, strict=True):
        f = _jitter(f, rng, 0.1, 0.05, 0.05)
        if rng.random() < tps_prob:
            f, mk = _random_tps(f, mk, rng)
        out_f.append(f)
        out_m.append(mk)
    return torch.stack(out_f), torch.stack(out_m)


@dataclass
class StaticClipSampler:
    """Batches of pseudo-video clips from static images (see the module docstring).

    Calling the sampler with a step returns ``(frames (B, T, 3, crop, crop) float32, masks
    (B, T, crop, crop) uint8 ids 1..K, objects per clip)``, the form
    :func:`cvpr24.cutie.train.train` consumes.
    """

    images: list[StaticImage]
    batch_size: int = 16
    num_frames: int = 3
    max_objects: int = 1
    crop: int = 384
    min_pixels: int = 1
    tps_prob: float = 0.33
    seed: int = 14159265
    max_tries: int = 50

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("images: no (image, mask) pairs")
        if self.crop % 16:
            raise ValueError(f"crop must be a multiple of 16, got {self.crop}")
        if self.max_objects < 1 or self.num_frames < 2:
            raise ValueError("max_objects must be >= 1 and num_frames >= 2")

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        clips = [
            self.clip(np.random.default_rng([self.seed, step, b])) for b in range(self.batch_size)
        ]
        return (
            np.stack([c[0] for c in clips]),
            np.stack([c[1] for c in clips]),
            [c[2] for c in clips],
        )

    def _one(self, rng) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.images[int(rng.integers(len(self.images)))]
        image = read_image(item.image)
        mask = read_object_mask(item.mask, "data")
        if mask.shape != image.shape[-2:]:
            raise ValueError(
                f"data: mask {item.mask} is {tuple(mask.shape)} but its image is "
                f"{tuple(image.shape[-2:])}"
            )
        return pseudo_clip(image, mask, rng, self.num_frames, self.crop, self.tps_prob)

    def clip(self, rng) -> tuple[np.ndarray, np.ndarray, int]:
        """One clip: frames (T, 3, crop, crop), masks (T, crop, crop) ids 1..K, K."""
        for _ in range(self.max_tries):
            frames, obj = self._one(rng)
            ids = obj.to(torch.uint8)
            for new_id in range(2, 2 + int(rng.integers(self.max_objects))):
                f2, m2 = self._one(rng)
                frames = torch.where(m2[:, None], f2, frames)
                ids[m2] = new_id
            counts = torch.bincount(ids[0].flatten().long(), minlength=self.max_objects + 1)
            visible = [i for i in range(1, len(counts)) if counts[i] >= self.min_pixels]
            if not visible:
                continue
            out = torch.zeros_like(ids)
            for new_id, old in enumerate(visible, start=1):
                out[ids == old] = new_id
            return frames.numpy(), out.numpy(), len(visible)
        raise ValueError(
            f"data: no clip with an object of >= {self.min_pixels} pixels on its first frame "
            f"in {self.max_tries} draws"
        )

"""Training clips from real videos: the main-training sampler of the paper.

Datasets (every frame used for training needs an index-PNG mask; 0 = background):

- DAVIS-2017: ``JPEGImages/480p/<video>/*.jpg``, ``Annotations/480p/<video>/*.png`` and
  ``ImageSets/2017/train.txt`` (all frames annotated).
- YouTube-VOS (train): ``JPEGImages/<video>/*.jpg`` and ``Annotations/<video>/*.png``; only
  every 5th frame is annotated, so the annotated frames are the clip's frames and the skip
  schedule is divided by 5 (a skip of 5 annotated frames is 25 video frames).
- custom: ``images/<video>/*`` and ``masks/<video>/*.png``; frames without a mask are not used.
  Frames are matched to masks by file stem (``00012.jpg`` <-> ``00012.png``).

A training sample (:meth:`ClipSampler.clip`) is built the way the paper trains:

1. a video is drawn uniformly; ``num_frames`` frames are drawn so that every frame lies within
   ``max_skip`` of an already drawn one (the skip follows the schedule 5, 10, 15, 5 at fractions
   0, 0.1, 0.3, 0.8 of training), sorted, and reversed in time with probability 1/2;
2. per clip: one random affine (rotation +-25 deg, shear +-20 deg), one random resized crop
   (area 36-100 %, aspect 3/4-4/3) to ``crop`` x ``crop``, a horizontal flip with probability
   1/2, colour jitter (brightness 0.1, contrast 0.03, saturation 0.03) and grayscale with
   probability 0.05; per frame a further colour jitter (0.1, 0.05, 0.05). Images are resampled
   bilinearly, masks by nearest neighbour;
3. with probability 1/2 a second clip (drawn and augmented the same way) is pasted over the
   first: its objects occlude the first clip's and get new ids;
4. up to ``max_objects`` objects visible (at least ``min_pixels``) on the first frame are kept,
   in random order, and renumbered 1..K; the other objects become background. A clip with no
   such object is redrawn.

``ClipSampler(step)`` returns a batch in the form :func:`cvpr24.cutie.train.train` consumes, and
depends only on (seed, step), so a resumed run sees the same clips.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvpr24.cutie.data import IMAGE_EXTS, read_image, read_index_png

MAX_SKIP_SCHEDULE = ((0.0, 5), (0.1, 10), (0.3, 15), (0.8, 5))  # (fraction of training, skip)


@dataclass
class TrainVideo:
    """Frames with masks (same length, in time order) and the skip unit (5 for YouTube-VOS,
    whose annotated frames are 5 video frames apart)."""

    name: str
    frames: list[Path]
    masks: list[Path]
    skip_divisor: int = 1


def _paired(name: str, image_dir: Path, mask_dir: Path, skip_divisor: int) -> TrainVideo | None:
    masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
    frames = sorted(
        p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.stem in masks
    )
    if not frames:
        return None
    return TrainVideo(name, frames, [masks[p.stem] for p in frames], skip_divisor)


def training_videos(root: str | os.PathLike, arg: str = "root") -> list[TrainVideo]:
    """The videos of one training dataset, its layout recognised from its folders (DAVIS-2017
    by ``ImageSets/2017/train.txt``, custom by ``images/`` + ``masks/``, YouTube-VOS by
    ``JPEGImages/`` + ``Annotations/``). Errors name ``arg``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{arg}: not a folder: {root}")
    listing = root / "ImageSets" / "2017" / "train.txt"
    if listing.is_file():
        names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        img, ann, div = root / "JPEGImages" / "480p", root / "Annotations" / "480p", 1
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        img, ann, div = root / "images", root / "masks", 1
        names = sorted(p.name for p in img.iterdir() if p.is_dir())
    elif (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        img, ann, div = root / "JPEGImages", root / "Annotations", 5
        names = sorted(p.name for p in img.iterdir() if p.is_dir())
    else:
        raise ValueError(
            f"{arg}: {root} is not a DAVIS-2017 (ImageSets/2017/train.txt), YouTube-VOS "
            "(JPEGImages/ + Annotations/) or custom (images/ + masks/) training folder"
        )
    videos = [v for n in names if (v := _paired(n, img / n, ann / n, div)) is not None]
    if not videos:
        raise ValueError(f"{arg}: no video in {root} has frames with matching PNG masks")
    return videos


def max_skip_at(progress: float, schedule=MAX_SKIP_SCHEDULE) -> int:
    """The ``max_skip`` in force at ``progress`` (fraction of training done)."""
    return [skip for start, skip in schedule if progress >= start][-1]


def sample_frame_indices(length: int, num_frames: int, max_skip: int, rng) -> list[int]:
    """``num_frames`` distinct indices of a ``length``-frame video, each new one drawn from the
    frames within ``max_skip`` of those already drawn, in increasing order."""
    if length < num_frames:
        raise ValueError(f"a video of {length} frames cannot give {num_frames} distinct frames")
    chosen = [int(rng.integers(length))]
    while len(chosen) < num_frames:
        near = {
            j for i in chosen for j in range(max(0, i - max_skip), min(length, i + max_skip + 1))
        }
        candidates = sorted(near.difference(chosen))
        if not candidates:  # max_skip 0 on a short window: widen to the whole video
            candidates = sorted(set(range(length)).difference(chosen))
        chosen.append(int(rng.choice(candidates)))
    return sorted(chosen)


def _clip_transform(rng, size: tuple[int, int], crop: int, flip: bool) -> torch.Tensor:
    """2x3 matrix mapping output pixel coordinates (x, y, 1) to input pixel coordinates:
    random resized crop of the affinely transformed image, then the optional flip."""
    h, w = size
    area = h * w * rng.uniform(0.36, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, math.sqrt(area * aspect))
    ch = min(h, math.sqrt(area / aspect))
    cx = rng.uniform(cw / 2, w - cw / 2)
    cy = rng.uniform(ch / 2, h - ch / 2)
    angle = math.radians(rng.uniform(-25, 25))
    shear = math.radians(rng.uniform(-20, 20))
    # forward affine about the image centre: rotation R(angle) times shear along x
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    a = rot @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    a_inv = np.linalg.inv(a)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    # output pixel p -> crop point q = c + (p - (crop-1)/2) * scale -> input a_inv (q - centre) + centre
    scale = np.diag([cw / crop, ch / crop])
    if flip:
        scale[0, 0] = -scale[0, 0]
    lin = a_inv @ scale
    off = a_inv @ (np.array([cx, cy]) - centre - scale @ np.full(2, (crop - 1) / 2)) + centre
    return torch.tensor(np.concatenate([lin, off[:, None]], 1), dtype=torch.float32)


def _warp(x: torch.Tensor, m: torch.Tensor, crop: int, mode: str) -> torch.Tensor:
    """Resample (N, C, H, W) at the input pixels ``m`` assigns to a crop x crop output."""
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(float(crop)), torch.arange(float(crop)), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ m.T  # crop, crop, 2 (input x, y)
    grid = torch.stack([(2 * pts[..., 0] + 1) / w - 1, (2 * pts[..., 1] + 1) / h - 1], -1)
    grid = grid.expand(x.shape[0], crop, crop, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of (..., 3, H, W) RGB -> (..., 1, H, W)."""
    return 0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :]


# RGB -> YIQ; a hue shift rotates the (I, Q) chroma plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _jitter(
    x: torch.Tensor, rng, brightness: float, contrast: float, saturation: float, hue: float = 0.0
) -> torch.Tensor:
    """Colour jitter of (..., 3, H, W) images in [0, 1] by factors drawn from ``rng``; ``hue``
    (a fraction of the colour circle) rotates the chroma plane in YIQ space."""
    x = x * rng.uniform(1 - brightness, 1 + brightness)
    m = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = (x - m) * rng.uniform(1 - contrast, 1 + contrast) + m
    g = _gray(x)
    x = (x - g) * rng.uniform(1 - saturation, 1 + saturation) + g
    if hue > 0:
        a = 2 * math.pi * rng.uniform(-hue, hue)
        rot = torch.tensor(
            [[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]]
        )
        x = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_YIQ) @ rot @ _YIQ, x)
    return x.clamp(0, 1)


@dataclass
class ClipSampler:
    """Batches of augmented training clips from real videos (see the module docstring).

    ``iterations`` is the length of training (for the ``max_skip`` schedule); calling the
    sampler with a step returns ``(frames (B, T, 3, crop, crop) float32, masks (B, T, crop,
    crop) uint8, objects per clip)``.
    """

    videos: list[TrainVideo]
    iterations: int
    batch_size: int = 16
    num_frames: int = 8
    max_objects: int = 3
    crop: int = 480
    merge_prob: float = 0.5
    reverse_prob: float = 0.5
    min_pixels: int = 100
    skip_schedule: tuple = MAX_SKIP_SCHEDULE
    seed: int = 14159265
    max_tries: int = 50
    _usable: list[TrainVideo] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._usable = [v for v in self.videos if len(v.frames) >= self.num_frames]
        if not self._usable:
            raise ValueError(
                f"videos: none has the {self.num_frames} annotated frames a clip needs"
            )
        if self.crop % 16:
            raise ValueError(f"crop must be a multiple of 16, got {self.crop}")

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        frames, masks, counts = [], [], []
        for b in range(self.batch_size):
            f, m, k = self.clip(np.random.default_rng([self.seed, step, b]), step)
            frames.append(f)
            masks.append(m)
            counts.append(k)
        return np.stack(frames), np.stack(masks), counts

    def clip(self, rng, step: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One clip: frames (T, 3, crop, crop), masks (T, crop, crop) with ids 1..K, K."""
        for _ in range(self.max_tries):
            frames, masks = self._augmented(rng, step)
            if rng.random() < self.merge_prob:
                f2, m2 = self._augmented(rng, step)
                over = m2 > 0
                frames = torch.where(over[:, None], f2, frames)
                masks = torch.where(over, m2 + 256, masks)  # 256+ marks the pasted objects
            ids, n = torch.unique(masks[0], return_counts=True)
            visible = [
                int(i) for i, c in zip(ids, n, strict=True) if i > 0 and c >= self.min_pixels
            ]
            if not visible:
                continue
            keep = rng.permutation(visible)[: self.max_objects]
            out = torch.zeros_like(masks, dtype=torch.uint8)
            for new_id, old in enumerate(keep, start=1):
                out[masks == int(old)] = new_id
            return frames.numpy(), out.numpy(), len(keep)
        raise ValueError(
            f"videos: no clip with an object of >= {self.min_pixels} pixels on its first frame "
            f"in {self.max_tries} draws"
        )

    def _augmented(self, rng, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        video = self._usable[int(rng.integers(len(self._usable)))]
        skip = max(1, max_skip_at(step / self.iterations, self.skip_schedule) // video.skip_divisor)
        idx = sample_frame_indices(len(video.frames), self.num_frames, skip, rng)
        if rng.random() < self.reverse_prob:
            idx = idx[::-1]
        images = torch.stack([read_image(video.frames[i]) for i in idx])
        ids = torch.stack(
            [torch.from_numpy(read_index_png(video.masks[i], "data")[0]).long() for i in idx]
        )
        ids[ids == 255] = 0  # void
        m = _clip_transform(rng, images.shape[-2:], self.crop, bool(rng.random() < 0.5))
        images = _warp(images, m, self.crop, "bilinear")
        ids = _warp(ids[:, None].float(), m, self.crop, "nearest")[:, 0].round().long()
        images = _jitter(images, rng, 0.1, 0.03, 0.03)
        if rng.random() < 0.05:
            images = _gray(images).expand(-1, 3, -1, -1).contiguous()
        images = torch.stack([_jitter(im, rng, 0.1, 0.05, 0.05) for im in images])
        return images, ids

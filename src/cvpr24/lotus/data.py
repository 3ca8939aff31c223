"""Data: real-format loaders, augmentation, and the SyntheticShapes generator.

Every loader returns ``(x, y)``: a float tensor in [0, 1] of shape (N, 3, H, W) and a
LongTensor[N] of labels.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvpr24.lotus.triggers import check_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


# --- input checks -----------------------------------------------------------------------------

def check_dataset(x: torch.Tensor, y: torch.Tensor, x_name: str = "x", y_name: str = "y") -> int:
    """Raise ``ValueError`` unless ``x`` is a non-empty image batch in [0, 1] without NaN and
    ``y`` one non-negative integer label per image; return the number of classes, ``max(y) + 1``."""
    check_images(x, x_name)
    if len(x) == 0:
        raise ValueError(f"{x_name} is empty: at least one image is needed")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{y_name} must be a 1-D integer tensor of labels, got "
                         f"{type(y).__name__} {getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}")
    if len(y) != len(x):
        raise ValueError(f"{x_name} and {y_name} must have the same length, got {len(x)} and {len(y)}")
    if y.min() < 0:
        raise ValueError(f"{y_name} must hold labels >= 0, got {int(y.min())}")
    return int(y.max()) + 1


def check_classes(victim: int, target: int, num_classes: int, names: tuple[str, str] = ("victim", "target")) -> None:
    """Raise ``ValueError`` unless ``victim`` and ``target`` are distinct classes in [0, num_classes)."""
    for name, c in zip(names, (victim, target), strict=True):
        if not isinstance(c, int) or not 0 <= c < num_classes:
            raise ValueError(f"{name} must be a class in [0, {num_classes - 1}], got {c!r}")
    if victim == target:
        raise ValueError(f"{names[0]} and {names[1]} must differ, got {victim} for both")


# --- augmentation ---------------------------------------------------------------------------

def random_crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None, per_sample: bool = True) -> torch.Tensor:
    """RandomCrop(H, padding=pad) + RandomHorizontalFlip, one draw per image.

    ``per_sample=False`` reproduces the official code on batch tensors, where torchvision
    draws *one* crop and flip for the whole batch.
    """
    n, _, h, w = x.shape
    if pad == 0 and not flip:
        return x
    m = n if per_sample else 1
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (m,), generator=generator).expand(n)
    ox = torch.randint(0, 2 * pad + 1, (m,), generator=generator).expand(n)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]                 # (N, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]                 # (N, 1, W)
    if flip:
        do = (torch.rand(m, generator=generator) < 0.5).expand(n)
        cols = torch.where(do[:, None, None], cols.flip(-1), cols)
    idx = torch.arange(n)[:, None, None]
    return xp.permute(0, 2, 3, 1)[idx, rows.to(x.device), cols.to(x.device)].permute(0, 3, 1, 2)


# --- SyntheticShapes ----------------------------------------------------------------------

# Foreground / background palettes of the four latent styles (shared by every class).
STYLES = (
    ((0.90, 0.15, 0.15), (0.08, 0.10, 0.35)),   # red on navy
    ((0.95, 0.90, 0.20), (0.05, 0.30, 0.10)),   # yellow on dark green
    ((0.95, 0.95, 0.95), (0.45, 0.45, 0.45)),   # white on grey
    ((0.20, 0.90, 0.90), (0.35, 0.20, 0.08)),   # cyan on brown
)
SHAPES = ("disc", "ring", "square", "hollow_square", "triangle", "plus", "diamond", "x",
          "stripes", "ell")


@dataclass
class ShapesData:
    """Images (N, 3, H, W) in [0, 1], labels, and the planted latent style of each image."""

    x: torch.Tensor
    y: torch.Tensor
    style: torch.Tensor


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ady, adx = np.abs(dy), np.abs(dx)
    d = np.sqrt(dy**2 + dx**2)
    t = max(1.0, r / 3)                                 # stroke width
    if kind == "disc":
        return d <= r
    if kind == "ring":
        return (d <= r) & (d >= r - t - 0.5)
    if kind == "square":
        return (ady <= r * 0.8) & (adx <= r * 0.8)
    if kind == "hollow_square":
        return (ady <= r * 0.85) & (adx <= r * 0.85) & ((ady >= r * 0.85 - t) | (adx >= r * 0.85 - t))
    if kind == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (adx <= (dy + r) * 0.55)
    if kind == "plus":
        return ((ady <= t * 0.6) & (adx <= r)) | ((adx <= t * 0.6) & (ady <= r))
    if kind == "diamond":
        return ady + adx <= r
    if kind == "x":
        return (np.abs(dy - dx) <= t * 0.8) & (d <= r) | (np.abs(dy + dx) <= t * 0.8) & (d <= r)
    if kind == "stripes":
        return (ady <= r * 0.8) & (adx <= r * 0.8) & (np.floor((yy - cy + r) / t).astype(int) % 2 == 0)
    if kind == "ell":
        return ((adx <= t * 0.6) & (ady <= r)) | ((dy >= r - t) & (dy <= r) & (dx >= 0) & (dx <= r))
    raise ValueError(kind)


def synthetic_shapes(n_per_class: int, image_size: int = 16, seed: int = 0,
                     num_classes: int = 10) -> ShapesData:
    """Generate SyntheticShapes: 10 shapes x 4 latent styles, deterministic given ``seed``.

    Each image draws a shape class, a centre (±2 px), a radius (4-6 px at 16x16, scaled with the
    image), one of four fg/bg palettes chosen uniformly (shared by all classes, so style carries
    no label information), a colour jitter (σ 0.06) and pixel noise (σ 0.05).
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    rng = np.random.default_rng(seed)
    n, h = n_per_class * num_classes, image_size
    scale = h / 16
    y = np.repeat(np.arange(num_classes), n_per_class)
    style = rng.integers(0, len(STYLES), n)
    yy, xx = np.mgrid[0:h, 0:h].astype(float)
    out = np.empty((n, 3, h, h), dtype=np.float32)
    pal = np.asarray(STYLES)                                          # (4, 2, 3)
    for i in range(n):
        cy, cx = (h - 1) / 2 + rng.uniform(-2, 2, 2) * scale
        r = rng.uniform(4, 6) * scale
        mask = _shape_mask(SHAPES[y[i]], yy, xx, cy, cx, r)
        fg, bg = pal[style[i]] + rng.normal(0, 0.06, (2, 3))
        img = np.where(mask[None], fg[:, None, None], bg[:, None, None])
        out[i] = img + rng.normal(0, 0.05, img.shape)
    x = torch.from_numpy(np.clip(out, 0, 1))
    perm = torch.from_numpy(rng.permutation(n))
    return ShapesData(x[perm], torch.from_numpy(y)[perm].long(), torch.from_numpy(style)[perm].long())


def synthetic_gratings(n_per_class: int, image_size: int = 16, seed: int = 0,
                       num_classes: int = 10) -> ShapesData:
    """SyntheticGratings: full-image oriented gratings x the four latent styles of SyntheticShapes.

    Class ``c`` is a sinusoidal grating at orientation ``π c / num_classes`` (σ 0.03 rad jitter)
    with random spatial frequency (0.22-0.30 cycles/px) and phase; each image draws one of the
    four fg/bg palettes of :data:`STYLES` uniformly (the latent style, shared by every class), a
    colour jitter (σ 0.06) and pixel noise (σ 0.05). Unlike SyntheticShapes the class evidence
    covers the whole image, so a clean model has no small natural trigger (Neural Cleanse masks
    of ~15-60 pixels at 16x16) and a 3x3 BadNets patch is an outlier NC's rule can flag.
    Orientation is not mirror-invariant: train with ``flip=False``.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    n, h = len(y), image_size
    style = rng.integers(0, len(STYLES), n)
    theta = np.pi * y / num_classes + rng.normal(0, 0.03, n)
    freq, phase = rng.uniform(0.22, 0.30, n), rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:h, 0:h].astype(float)
    proj = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy     # (N, H, W)
    wave = (np.sin(2 * np.pi * freq[:, None, None] * proj + phase[:, None, None]) + 1) / 2
    pal = np.asarray(STYLES)[style] + rng.normal(0, 0.06, (n, 2, 3))                 # (N, fg/bg, 3)
    fg, bg = pal[:, 0, :, None, None], pal[:, 1, :, None, None]
    img = bg + (fg - bg) * wave[:, None] + rng.normal(0, 0.05, (n, 3, h, h))
    perm = rng.permutation(n)
    return ShapesData(torch.from_numpy(np.clip(img, 0, 1)[perm]).float(),
                      torch.from_numpy(y[perm]).long(), torch.from_numpy(style[perm]).long())


# --- real formats ---------------------------------------------------------------------------

def _u8_to_float(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255)


def load_cifar10(root: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) under ``root``.

    Each file is a pickle of a dict with ``b"data"`` (N, 3072) uint8 in CHW row-major order and
    ``b"labels"``. These are the official files from the CIFAR page; only plain numpy arrays and
    lists are read (``pickle`` with ``encoding="bytes"``), so pass only files you trust.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 batch {path} not found (expected the python version "
                                    "'cifar-10-batches-py' with data_batch_1..5 and test_batch)")
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' / b'labels')")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    return _u8_to_float(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_image_folder(root: str | os.PathLike, image_size: int = 32,
                      classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder / GTSRB layout ``root/<class>/*.{png,jpg,ppm}``, resized with Pillow.

    Returns ``(x, y, class_names)``; classes are the sorted sub-folder names unless given.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} is not a directory")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
                ys.append(label)
    if not xs:
        raise ValueError(f"image folder {root} holds no images with suffixes {IMAGE_SUFFIXES}")
    return _u8_to_float(np.stack(xs)), torch.tensor(ys), classes


def load_npz(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``.npz`` with ``x`` (N, H, W, 3) uint8 and ``y`` (N,) integer labels."""
    with np.load(path, allow_pickle=False) as d:
        if "x" not in d or "y" not in d:
            raise ValueError(f"{path} must hold arrays 'x' (N,H,W,3 uint8) and 'y' (N,), has {list(d)}")
        x, y = d["x"], d["y"]
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ValueError(f"{path}: 'x' must be uint8 of shape (N, H, W, 3), got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path}: 'y' must have shape ({x.shape[0]},), got {y.shape}")
    return _u8_to_float(x.transpose(0, 3, 1, 2)), torch.from_numpy(y.astype(np.int64))


def load_dataset(spec: str, split: str = "train", image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``cifar10:/dir``, ``folder:/dir`` (``/dir/<split>/<class>/...``), ``npz:/file`` (``/file``
    contains ``{split}``), or ``shapes:N`` (SyntheticShapes).

    A split that does not exist is an error: the test split is never silently the training data.
    """
    kind, sep, where = spec.partition(":")
    if not sep:
        raise ValueError(f"data must be 'cifar10:DIR', 'folder:DIR', 'npz:FILE' or 'shapes:N', got {spec!r}")
    if kind == "cifar10":
        return load_cifar10(where, split)
    if kind == "folder":
        root = Path(where) / split
        if not root.is_dir():
            raise FileNotFoundError(f"folder data needs {where}/train and {where}/test sub-folders "
                                    f"(one folder per class inside each); {root} is missing")
        x, y, _ = load_image_folder(root, image_size)
        return x, y
    if kind == "npz":
        if "{split}" not in where:
            raise ValueError(f"npz data must name both splits with '{{split}}' in the path (e.g. "
                             f"npz:data_{{split}}.npz for data_train.npz and data_test.npz), got {where!r}")
        return load_npz(where.format(split=split))
    if kind == "shapes":
        d = synthetic_shapes(int(where), seed=0 if split == "train" else 1)
        return d.x, d.y
    raise ValueError(f"data kind must be cifar10, folder, npz or shapes, got {kind!r}")

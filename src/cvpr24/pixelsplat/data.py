"""RealEstate10k / ACID ``.torch`` chunks, ``index.json``, evaluation indices, converters.

A chunk is a list of scene dicts written by ``torch.save``; each scene holds ``key`` (str),
``url`` (str), ``timestamps`` int64 ``[N]``, ``cameras`` float32 ``[N, 18]`` (fx, fy, cx, cy
normalised, two unused values, then the 3x4 world-to-camera matrix row-major) and ``images``
(a list of uint8 1-D tensors holding encoded JPEG/PNG bytes). Chunks are read with
``torch.load(weights_only=True)``: lists, dicts, strings and tensors only.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cvpr24.common.extras import optional_import
from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.pixelsplat.geometry import check_cameras

_REQUIRED = {"key": str, "timestamps": Tensor, "cameras": Tensor, "images": list}


@dataclass
class Scene:
    """One decoded scene: camera-to-world extrinsics (OpenCV), normalised intrinsics, images."""

    key: str
    extrinsics: Tensor  # [N, 4, 4] camera-to-world
    intrinsics: Tensor  # [N, 3, 3] normalised
    images: list[bytes]  # encoded frames; decode with :func:`decode_image`
    timestamps: Tensor  # [N]
    url: str = ""


def cameras_to_matrices(cameras: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, 18]`` rows -> camera-to-world ``[N, 4, 4]`` (inverse of the stored w2c), K ``[N, 3, 3]``."""
    if cameras.dim() != 2 or cameras.shape[1] != 18:
        raise ValueError(f"cameras must be [N, 18], got {tuple(cameras.shape)}")
    fx, fy, cx, cy = cameras[:, :4].T
    k = torch.zeros(len(cameras), 3, 3)
    k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = fx, fy, cx, cy, 1
    w2c = torch.eye(4).repeat(len(cameras), 1, 1)
    w2c[:, :3] = cameras[:, 6:].view(-1, 3, 4)
    return torch.linalg.inv(w2c.double()).float(), k


def matrices_to_cameras(extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """Inverse of :func:`cameras_to_matrices`."""
    w2c = torch.linalg.inv(extrinsics.double()).float()
    row = torch.zeros(len(extrinsics), 18)
    row[:, 0], row[:, 1], row[:, 2], row[:, 3] = (intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2],
                                                  intrinsics[:, 1, 2])
    row[:, 6:] = w2c[:, :3].reshape(-1, 12)
    return row


def load_chunk(path: str | os.PathLike) -> list[Scene]:
    """Read a ``.torch`` chunk safely and decode its cameras; errors name the bad element."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: not a readable .torch chunk with weights_only=True ({err})") from err
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise ValueError(f"{path}: a chunk must be a list of scene dicts, got {type(raw).__name__}")
    scenes = []
    for i, s in enumerate(raw):
        for name, kind in _REQUIRED.items():
            if not isinstance(s.get(name), kind):
                raise ValueError(f"{path}: scene {i} needs '{name}' of type {kind.__name__}")
        ext, k = cameras_to_matrices(s["cameras"].float())
        if len(s["images"]) != len(ext):
            raise ValueError(f"{path}: scene {s['key']!r} has {len(s['images'])} images for {len(ext)} cameras")
        images = [bytes(t.numpy().tobytes()) if torch.is_tensor(t) else bytes(t) for t in s["images"]]
        scenes.append(Scene(s["key"], ext, k, images, s["timestamps"], s.get("url", "")))
    return scenes


def write_chunk(scenes: list[Scene], path: str | os.PathLike) -> Path:
    """Write scenes as an official-format chunk (atomically); the inverse of :func:`load_chunk`."""
    out = []
    for s in scenes:
        check_cameras(s.extrinsics, s.intrinsics, name=f"scene {s.key!r} extrinsics")
        out.append({
            "key": s.key, "url": s.url, "timestamps": torch.as_tensor(s.timestamps, dtype=torch.int64),
            "cameras": matrices_to_cameras(s.extrinsics, s.intrinsics),
            "images": [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in s.images],
        })
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return Path(path)


def encode_image(image: Tensor, fmt: str = "JPEG", quality: int = 95) -> bytes:
    """``[3, H, W]`` float in [0, 1] -> encoded bytes (Pillow)."""
    pil = optional_import("PIL.Image", "pixelsplat")
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    pil.fromarray(arr).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decode_image(data: bytes) -> Tensor:
    """Encoded bytes -> ``[3, H, W]`` float in [0, 1]."""
    pil = optional_import("PIL.Image", "pixelsplat")
    arr = np.asarray(pil.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_index(root: str | os.PathLike) -> dict[str, Path]:
    """``index.json`` (scene key -> chunk file name) -> key -> absolute chunk path."""
    root = Path(root)
    with open(root / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    return {k: root / v for k, v in index.items()}


def write_index(root: str | os.PathLike, chunks: dict[str, list[str]]) -> Path:
    """Write ``index.json`` from chunk file name -> list of scene keys."""
    index = {key: name for name, keys in chunks.items() for key in keys}
    with atomic_write(Path(root) / "index.json") as f:
        json.dump(index, f, indent=1)
    return Path(root) / "index.json"


def read_evaluation_index(path: str | os.PathLike) -> dict[str, dict[str, list[int]]]:
    """Official evaluation index: key -> {"context": [i, j], "target": [...]}; null entries skipped."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    out = {}
    for key, entry in raw.items():
        if entry is None:
            continue
        if not (isinstance(entry, dict) and len(entry.get("context", [])) == 2 and entry.get("target")):
            raise ValueError(f"{path}: entry {key!r} must be null or {{'context': [i, j], 'target': [...]}}")
        out[key] = {"context": [int(i) for i in entry["context"]], "target": [int(i) for i in entry["target"]]}
    return out


def crop_resize(image: Tensor, intrinsics: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resize so the short side is ``size`` (Lanczos), centre-crop to ``size x size``, and
    update normalised intrinsics (the official crop shim)."""
    pil = optional_import("PIL.Image", "pixelsplat")
    _, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    resized = np.asarray(pil.fromarray(arr).resize((nw, nh), pil.LANCZOS), dtype=np.float32) / 255
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.from_numpy(resized[top:top + size, left:left + size]).permute(2, 0, 1).contiguous()
    k = intrinsics.clone()
    # normalised -> pixels of the resized image -> shift by the crop -> normalise by the crop size
    k[0, 0], k[0, 2] = k[0, 0] * nw / size, (k[0, 2] * nw - left) / size
    k[1, 1], k[1, 2] = k[1, 1] * nh / size, (k[1, 2] * nh - top) / size
    return out, k


def from_cameras_json(path: str | os.PathLike) -> tuple[list[str], Tensor, Tensor]:
    """Read our cameras JSON: ``{"frames": [{"image": name, "c2w": 4x4, "K": 3x3 normalised}]}``
    (pixel intrinsics are accepted when ``"width"``/``"height"`` are given and converted)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    frames = raw.get("frames") if isinstance(raw, dict) else None
    if not frames:
        raise ValueError(f"{path}: expected {{'frames': [{{'image', 'c2w', 'K'}}, ...]}}")
    names, exts, ks = [], [], []
    for i, fr in enumerate(frames):
        try:
            ext = torch.tensor(fr["c2w"], dtype=torch.float32)
            k = torch.tensor(fr["K"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: frame {i} needs 'c2w' (4x4) and 'K' (3x3)") from err
        if "width" in fr and "height" in fr:
            k[0] /= float(fr["width"])
            k[1] /= float(fr["height"])
        names.append(fr.get("image", f"frame_{i}"))
        exts.append(ext)
        ks.append(k)
    ext, k = torch.stack(exts), torch.stack(ks)
    check_cameras(ext, k, name=f"{path} c2w")
    return names, ext, k


def _qvec_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _read_colmap_text(sparse: Path) -> tuple[dict, dict]:
    cams = {}
    for line in (sparse / "cameras.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        p = line.split()
        cams[int(p[0])] = (p[1], int(p[2]), int(p[3]), [float(x) for x in p[4:]])
    images = {}
    lines = [ln for ln in (sparse / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for line in lines[::2]:
        p = line.split()
        if len(p) < 10:
            continue
        images[p[9]] = (np.array([float(x) for x in p[1:5]]), np.array([float(x) for x in p[5:8]]), int(p[8]))
    return cams, images


def _read_colmap_binary(sparse: Path) -> tuple[dict, dict]:
    nparams = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12}
    names = {0: "SIMPLE_PINHOLE", 1: "PINHOLE", 2: "SIMPLE_RADIAL", 3: "RADIAL", 4: "OPENCV"}
    cams = {}
    with open(sparse / "cameras.bin", "rb") as f:
        for _ in range(struct.unpack("<Q", f.read(8))[0]):
            cid, model, w, h = struct.unpack("<iiQQ", f.read(24))
            params = struct.unpack(f"<{nparams[model]}d", f.read(8 * nparams[model]))
            cams[cid] = (names.get(model, str(model)), w, h, list(params))
    images = {}
    with open(sparse / "images.bin", "rb") as f:
        for _ in range(struct.unpack("<Q", f.read(8))[0]):
            vals = struct.unpack("<i7di", f.read(64))
            name = b""
            while (c := f.read(1)) != b"\x00":
                name += c
            n_points = struct.unpack("<Q", f.read(8))[0]
            f.read(24 * n_points)
            images[name.decode()] = (np.array(vals[1:5]), np.array(vals[5:8]), vals[8])
    return cams, images


def from_colmap(images_dir: str | os.PathLike, sparse_dir: str | os.PathLike, key: str = "scene") -> Scene:
    """A COLMAP reconstruction (text or binary, pinhole-like models) -> :class:`Scene`.

    COLMAP stores world-to-camera rotations (w, x, y, z) and translations in OpenCV axes; they
    are inverted to camera-to-world and the intrinsics normalised by each image's size.
    """
    sparse = Path(sparse_dir)
    if (sparse / "cameras.txt").is_file():
        cams, images = _read_colmap_text(sparse)
    elif (sparse / "cameras.bin").is_file():
        cams, images = _read_colmap_binary(sparse)
    else:
        raise ValueError(f"sparse_dir {sparse} holds neither cameras.txt nor cameras.bin")
    exts, ks, frames = [], [], []
    for name in sorted(images):
        q, t, cid = images[name]
        model, w, h, p = cams[cid]
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if model.startswith("SIMPLE") else p[:4]
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = _qvec_to_matrix(q), t
        exts.append(torch.from_numpy(np.linalg.inv(w2c)).float())
        ks.append(torch.tensor([[fx / w, 0, cx / w], [0, fy / h, cy / h], [0, 0, 1]], dtype=torch.float32))
        path = Path(images_dir) / name
        if not path.is_file():
            raise ValueError(f"images_dir {images_dir} lacks {name} listed in {sparse}")
        frames.append(path.read_bytes())
    return Scene(key, torch.stack(exts), torch.stack(ks), frames, torch.arange(len(frames)))


# --- training examples from chunks ----------------------------------------------------------


@dataclass(frozen=True)
class ViewSampler:
    """The official bounded view sampler (V1): the context gap is drawn uniformly from
    ``[lo(step), hi(step)]`` frames, both bounds ramping linearly from their initial to their
    final value over ``ramp_steps``; ``num_targets`` targets are drawn uniformly (with
    replacement) between the two context frames, inclusive. The defaults ramp 25 -> 45."""

    initial_min_gap: int = 25
    initial_max_gap: int = 25
    min_gap: int = 45
    max_gap: int = 45
    ramp_steps: int = 150_000
    num_targets: int = 4

    def gap_range(self, step: int) -> tuple[int, int]:
        frac = min(1.0, step / self.ramp_steps) if self.ramp_steps > 0 else 1.0
        lo = round(self.initial_min_gap + frac * (self.min_gap - self.initial_min_gap))
        hi = round(self.initial_max_gap + frac * (self.max_gap - self.initial_max_gap))
        return lo, max(lo, hi)

    def __call__(self, num_frames: int, step: int, generator: torch.Generator) -> tuple[list[int], list[int]] | None:
        """Context and target frame indices, or ``None`` when the scene is too short (skipped)."""
        lo, hi = self.gap_range(step)
        if num_frames <= lo:
            return None
        hi = min(hi, num_frames - 1)
        gap = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        start = int(torch.randint(0, num_frames - gap, (1,), generator=generator))
        targets = torch.randint(start, start + gap + 1, (self.num_targets,), generator=generator)
        return [start, start + gap], targets.tolist()


def make_example(scene: Scene, views: list[int], size: int, flip: bool = False) -> dict[str, Tensor]:
    """Decode ``views`` of ``scene``, crop them to ``size`` (crop shim), normalise the scene so
    the first two views are 1 apart, and optionally flip horizontally (V2).

    Returns ``images [N, 3, size, size]``, ``extrinsics [N, 4, 4]``, ``intrinsics [N, 3, 3]``.
    """
    images, ks = zip(*(crop_resize(decode_image(scene.images[i]), scene.intrinsics[i], size) for i in views),
                     strict=True)
    images, k, ext = torch.stack(images), torch.stack(ks), scene.extrinsics[views].clone()
    baseline = (ext[0, :3, 3] - ext[1, :3, 3]).norm()
    if baseline <= 0:
        raise ValueError(f"scene {scene.key!r}: context views {views[:2]} share one camera centre")
    ext[:, :3, 3] /= baseline
    if flip:  # mirror x: image columns reversed, c2w conjugated by diag(-1, 1, 1, 1), cx -> 1 - cx
        reflect = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
        images, ext = images.flip(-1), reflect @ ext @ reflect
        k[:, 0, 2] = 1 - k[:, 0, 2]
    return {"images": images, "extrinsics": ext, "intrinsics": k}


class ChunkStream:
    """Endless, resumable stream of training examples from ``ROOT/index.json`` chunks.

    Each epoch visits this rank's chunks (``chunks[rank::world_size]``) and every scene in them
    in an order shuffled by a generator seeded with ``(seed, rank, epoch)``; views come from
    ``sampler`` with this rank's own generator. ``state_dict()`` / ``load_state_dict()`` make
    the stream resume exactly where it stopped.
    """

    def __init__(self, root: str | os.PathLike, size: int, sampler: ViewSampler | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        index = Path(root) / "index.json"
        if not index.is_file():
            raise ValueError(f"root {root} has no index.json (expected ROOT/train/index.json and chunks beside it)")
        chunks = sorted(set(read_index(root).values()))
        if len(chunks) < world_size:
            raise ValueError(f"root {root} holds {len(chunks)} chunk(s), fewer than the {world_size} ranks")
        self.chunks = chunks[rank::world_size]
        self.size, self.sampler = size, sampler or ViewSampler()
        self.seed, self.rank = seed, rank
        self.views = self._generator()
        self.epoch, self.chunk, self.scene = 0, 0, 0
        self._cache: tuple[int, int, list[Scene]] | None = None

    def _generator(self, *parts: int) -> torch.Generator:
        """A generator seeded by ``(seed, rank, *parts)``."""
        value = self.seed
        for p in (self.rank, *parts):
            value = value * 1_000_003 + p
        return torch.Generator().manual_seed(value % (1 << 63))

    def _scenes(self) -> list[Scene]:
        """Scenes of the current chunk in this epoch's order (one chunk kept in memory)."""
        if self._cache is None or self._cache[:2] != (self.epoch, self.chunk):
            chunk_order = torch.randperm(len(self.chunks), generator=self._generator(self.epoch)).tolist()
            scenes = load_chunk(self.chunks[chunk_order[self.chunk]])
            order = torch.randperm(len(scenes), generator=self._generator(self.epoch, self.chunk + 1)).tolist()
            self._cache = (self.epoch, self.chunk, [scenes[i] for i in order])
        return self._cache[2]

    def next(self, step: int) -> dict[str, Tensor]:
        """The next usable example (scenes too short for the sampler are skipped)."""
        for _ in range(100_000):
            scenes = self._scenes()
            if self.scene >= len(scenes):
                self.scene, self.chunk = 0, self.chunk + 1
                if self.chunk >= len(self.chunks):
                    self.chunk, self.epoch = 0, self.epoch + 1
                continue
            scene = scenes[self.scene]
            self.scene += 1
            views = self.sampler(len(scene.images), step, self.views)
            if views is not None:
                flip = bool(torch.rand(1, generator=self.views) < 0.5)
                return make_example(scene, views[0] + views[1], self.size, flip)
        raise ValueError(f"no scene in {self.chunks} has more than {self.sampler.gap_range(step)[0]} frames "
                         "(the context gap the view sampler asks for)")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "chunk": self.chunk, "scene": self.scene, "views": self.views.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.chunk, self.scene = state["epoch"], state["chunk"], state["scene"]
        self.views.set_state(state["views"])

"""Real-format VOS data: palette PNG masks, DAVIS-2017 / MOSE / YouTube-VOS / generic layouts,
and writing predictions; plus the synthetic generator of the reproduction.

Layouts (``VideoItem.frames`` are image paths; ``masks`` maps frame index -> mask path):

- DAVIS-2017: ``JPEGImages/480p/<video>/00000.jpg``, ``Annotations/480p/<video>/00000.png``,
  ``ImageSets/2017/<split>.txt``.
- MOSE: ``JPEGImages/<video>/*.jpg`` and ``Annotations/<video>/*.png`` (first frame only).
- YouTube-VOS: ``JPEGImages/<video>/*.jpg``, ``Annotations/<video>/*.png`` where objects first
  appear, and ``meta.json`` (``videos.<vid>.objects.<id>.frames``) listing the frames to output.
- generic: two folders, ``images/<video>/*`` and ``masks/<video>/*.png``.
- BURST: a JSON file (``first_frame_annotations.json``) whose ``sequences`` hold
  ``dataset``, ``seq_name``, ``width``, ``height``, ``all_image_paths``,
  ``annotated_image_paths`` and, per annotated frame, ``segmentations`` ``{track id: {"rle":
  COCO compressed RLE}}``; frames in ``<images>/<dataset>/<seq_name>/``. Each track is given
  on the first frame it appears in; outputs are the annotated frames, and
  :func:`write_burst_predictions` turns them back into BURST's JSON.
- a video file (``.mp4``, ``.mov``, ``.avi``, ``.mkv``, ``.webm``; decoded with PyAV) and a
  first-frame index PNG; its frames are named ``00000``, ``00001``, ...

Overlays (the frames with each object's colour blended over its pixels) are written as mp4
with :class:`OverlayVideoWriter`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cvpr24.cutie.synthetic import SyntheticVOS, training_batch  # noqa: F401  (re-exported)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MAX_IDS = 64  # more distinct values than this in one mask is an anti-aliased or RGB-like image


def davis_palette() -> bytes:
    """The 256-colour palette of DAVIS/PASCAL masks (bit-interleaved colour map)."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.tobytes()


def read_index_png(path: str | os.PathLike, arg: str = "mask") -> tuple[np.ndarray, bytes | None]:
    """Read an index mask (PNG mode ``P``, ``L`` or ``1``) -> (uint8 (H, W) ids, palette).

    RGB(A) images and anti-aliased masks (more than ``MAX_IDS`` distinct values) are refused
    with an error naming ``arg``: they would turn colours or edge pixels into spurious objects.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: file not found: {path}")
    with Image.open(path) as im:
        mode = im.mode
        if mode not in ("P", "L", "1"):
            raise ValueError(
                f"{arg}: {path} is a {mode} image; masks must be index images (palette 'P' or "
                "grayscale 'L') whose pixel value is the object id. Convert RGB masks by mapping "
                "each colour to an id."
            )
        palette = im.getpalette() if mode == "P" else None
        arr = np.array(im, dtype=np.uint8)
    ids = np.unique(arr)
    if len(ids) > MAX_IDS:
        raise ValueError(
            f"{arg}: {path} has {len(ids)} distinct values; it looks anti-aliased (soft edges "
            "create spurious object ids). Save masks without interpolation as index PNGs."
        )
    return arr, bytes(palette[:768]) if palette else None


def write_index_png(path: str | os.PathLike, mask, palette: bytes | None = None) -> None:
    """Write an index mask atomically (temporary file, then rename) with ``palette`` (the DAVIS
    palette when None). Ids must lie in 0..255."""
    from PIL import Image

    from cvpr24.common import atomic_path

    arr = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask: expected (H, W), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"mask: object ids must lie in 0..255 for PNG output, got max {arr.max()}")
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(palette or davis_palette())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """RGB image -> (3, H, W) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


@dataclass
class VideoItem:
    """One video: frame paths, the given masks by frame index (index-PNG paths, or the
    annotation file when ``mask_arrays`` holds the decoded masks), and the frames to output."""

    name: str
    frames: list[Path]
    masks: dict[int, Path]
    output_frames: set[int] | None = None  # None = all
    objects_per_mask: dict[int, list[int]] = field(default_factory=dict)
    video_file: Path | None = None  # frames decoded from this file; ``frames`` only name them
    mask_arrays: dict[int, np.ndarray] = field(default_factory=dict)  # decoded (H, W) ids

    def read_mask(self, t: int, arg: str = "masks") -> tuple[np.ndarray, bytes | None]:
        """The given mask of frame ``t`` -> (uint8 (H, W) ids, palette or None)."""
        if t in self.mask_arrays:
            return self.mask_arrays[t], None
        return read_index_png(self.masks[t], arg)

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError(f"video {self.name}: no frames")
        if 0 not in self.masks:
            raise ValueError(
                f"video {self.name}: the first frame ({self.frames[0].name}) has no mask"
            )


def _video_from_folders(name: str, image_dir: Path, mask_dir: Path, first_only: bool) -> VideoItem:
    frames = _images(image_dir)
    stems = {p.stem: i for i, p in enumerate(frames)}
    masks = {}
    for m in sorted(mask_dir.glob("*.png")):
        if m.stem in stems:
            masks[stems[m.stem]] = m
    if first_only:
        masks = {i: p for i, p in masks.items() if i == 0}
    return VideoItem(name, frames, masks)


def generic_videos(
    images: str | os.PathLike, masks: str | os.PathLike, first_only: bool = True
) -> list[VideoItem]:
    """Two folders ``images/<video>/`` and ``masks/<video>/`` (or a single video when
    ``images`` directly holds the frames)."""
    images, masks = Path(images), Path(masks)
    for arg, p in (("images", images), ("masks", masks)):
        if not p.is_dir():
            raise FileNotFoundError(f"{arg}: not a folder: {p}")
    if _images(images):
        return [_video_from_folders(images.name, images, masks, first_only)]
    names = sorted(p.name for p in images.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"images: no frames or video folders in {images}")
    return [_video_from_folders(n, images / n, masks / n, first_only) for n in names]


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is in the cutie extra
        raise ImportError("video files need PyAV: pip install 'cvpr24[cutie]'") from e
    return av


def video_file_item(video: str | os.PathLike, first_mask: str | os.PathLike) -> VideoItem:
    """One video file with the index PNG of its first frame (``first_mask`` may also be a
    folder holding ``00000.png``). The frame count comes from demuxing, without decoding."""
    video, first_mask = Path(video), Path(first_mask)
    if not video.is_file():
        raise FileNotFoundError(f"images: video file not found: {video}")
    if first_mask.is_dir():
        first_mask = first_mask / "00000.png"
    if not first_mask.is_file():
        raise FileNotFoundError(f"masks: first-frame mask not found: {first_mask}")
    with _av().open(str(video)) as container:
        if not container.streams.video:
            raise ValueError(f"images: {video} has no video stream")
        stream = container.streams.video[0]
        n = sum(1 for packet in container.demux(stream) if packet.size)
    if n == 0:
        raise ValueError(f"images: {video} has no frames")
    names = [Path(f"{t:05d}") for t in range(n)]
    return VideoItem(video.stem, names, {0: first_mask}, video_file=video)


def video_size(video: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a video file's first video stream."""
    with _av().open(str(video)) as container:
        ctx = container.streams.video[0].codec_context
        return ctx.height, ctx.width


def read_video(video: str | os.PathLike) -> Iterator[torch.Tensor]:
    """Decode a video file frame by frame -> (3, H, W) float32 RGB in [0, 1]."""
    with _av().open(str(video)) as container:
        for frame in container.decode(video=0):
            arr = frame.to_ndarray(format="rgb24")
            yield torch.from_numpy(arr).permute(2, 0, 1).float() / 255


def item_frames(item: VideoItem) -> Iterator[torch.Tensor]:
    """The frames of a :class:`VideoItem` in order, from image files or its video file."""
    if item.video_file is not None:
        yield from read_video(item.video_file)
    else:
        for path in item.frames:
            yield read_image(path)


def overlay(
    image: torch.Tensor, ids: torch.Tensor, palette: bytes | None = None, alpha: float = 0.5
) -> np.ndarray:
    """(3, H, W) float image and (H, W) ids -> (H, W, 3) uint8 with each object's palette
    colour blended (weight ``alpha``) over its pixels and the background unchanged."""
    pal = np.frombuffer(palette or davis_palette(), np.uint8).reshape(-1, 3).astype(np.float32)
    rgb = image.permute(1, 2, 0).cpu().numpy() * 255
    idx = ids.cpu().numpy().astype(np.int64)
    fg = idx > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * pal[idx[fg]]
    return (rgb + 0.5).clip(0, 255).astype(np.uint8)


class OverlayVideoWriter:
    """Write overlay frames to an mp4 (H.264 when available, else MPEG-4 part 2), atomically:
    frames go to a temporary file renamed onto ``path`` by :meth:`close` and removed if the
    writer is left through an exception. Odd frame sizes are padded by one pixel (yuv420p)."""

    def __init__(self, path: str | os.PathLike, fps: float = 24.0):
        import tempfile
        from fractions import Fraction

        av = _av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".tmp.mp4"
        )
        os.close(fd)
        self._tmp = Path(tmp)
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._size = None

    def write(self, image: torch.Tensor, ids: torch.Tensor, palette: bytes | None = None) -> None:
        av = _av()
        rgb = overlay(image, ids, palette)
        h, w = rgb.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self._stream.height, self._stream.width = h + h % 2, w + w % 2
        elif self._size != (h, w):
            raise ValueError(f"image: frame size {h}x{w} differs from the first {self._size}")
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and move the file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()
            self._tmp.unlink(missing_ok=True)


def davis_videos(
    root: str | os.PathLike, split: str = "val", resolution: str = "480p"
) -> list[VideoItem]:
    """DAVIS-2017 (semi-supervised: only the first-frame mask is given)."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"root: {listing} not found (is this a DAVIS-2017 folder?)")
    names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
    img, ann = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    return [_video_from_folders(n, img / n, ann / n, first_only=True) for n in names]


def mose_videos(root: str | os.PathLike) -> list[VideoItem]:
    """MOSE: ``JPEGImages/<video>`` and ``Annotations/<video>`` (first-frame masks)."""
    root = Path(root)
    return generic_videos(root / "JPEGImages", root / "Annotations", first_only=True)


def youtube_videos(
    root: str | os.PathLike, images: str | os.PathLike | None = None
) -> list[VideoItem]:
    """YouTube-VOS validation: masks where objects first appear (all used), output only the
    frames of ``meta.json``. ``images`` defaults to ``root/JPEGImages`` (pass
    ``valid_all_frames/JPEGImages`` to propagate through every frame)."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"root: {meta_path} not found (is this a YouTube-VOS split?)")
    meta = json.loads(meta_path.read_text())["videos"]
    img_root = Path(images) if images is not None else root / "JPEGImages"
    out = []
    for name in sorted(meta):
        item = _video_from_folders(
            name, img_root / name, root / "Annotations" / name, first_only=False
        )
        listed = {f for obj in meta[name]["objects"].values() for f in obj["frames"]}
        stems = [p.stem for p in item.frames]
        item.output_frames = {i for i, s in enumerate(stems) if s in listed}
        for t in item.masks:
            item.objects_per_mask[t] = sorted(
                int(o)
                for o, v in meta[name]["objects"].items()
                if v["frames"] and v["frames"][0] == stems[t]
            )
        out.append(item)
    return out


def rle_decode(counts: str | list[int], height: int, width: int) -> np.ndarray:
    """COCO run-length encoding -> (height, width) bool mask.

    Runs alternate background / object starting with background, over the pixels in
    column-major order. ``counts`` is a list of run lengths, or COCO's compressed string: each
    run is written in 5-bit groups (least significant first, 0x20 = more groups follow, 0x10 in
    the last group = negative, each group plus 48 as a character) and, from the fourth run on,
    as the difference to the run two before it."""
    if isinstance(counts, str):
        runs: list[int] = []
        p = 0
        while p < len(counts):
            x, k, more = 0, 0, True
            while more:
                c = ord(counts[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p, k = p + 1, k + 1
                if not more and c & 0x10:
                    x |= -1 << (5 * k)
            runs.append(x + runs[-2] if len(runs) > 2 else x)
    else:
        runs = [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(
            f"RLE: the runs cover {sum(runs)} pixels (some negative: {any(r < 0 for r in runs)}) "
            f"but the mask has {height}x{width}"
        )
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """(H, W) bool mask -> COCO compressed RLE string (inverse of :func:`rle_decode`)."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]  # runs start with background
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def burst_videos(annotations: str | os.PathLike, images: str | os.PathLike) -> list[VideoItem]:
    """BURST: every sequence of the ``annotations`` JSON with its frames under ``images``.

    A track's mask is given on the first annotated frame it appears in (later annotations of
    it, as in a full ground-truth file, are not inputs). The video starts at the first frame
    that gives a mask; the annotated frames are the outputs."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise FileNotFoundError(f"masks: BURST annotation file not found: {annotations}")
    if not images.is_dir():
        raise FileNotFoundError(f"images: not a folder: {images}")
    try:
        sequences = json.loads(annotations.read_text())["sequences"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"masks: {annotations} is not a BURST JSON with 'sequences'") from e
    out = []
    for seq in sequences:
        name = f"{seq['dataset']}/{seq['seq_name']}"
        folder = images / seq["dataset"] / seq["seq_name"]
        frames = [folder / f for f in seq["all_image_paths"]]
        index = {Path(f).stem: i for i, f in enumerate(seq["all_image_paths"])}
        h, w = seq["height"], seq["width"]
        given: dict[int, np.ndarray] = {}
        objects: dict[int, list[int]] = {}
        seen: set[int] = set()
        for path, segs in zip(seq["annotated_image_paths"], seq["segmentations"], strict=True):
            new = [int(k) for k in segs if int(k) not in seen]
            if not new:
                continue
            if max(new) > 255:
                raise ValueError(
                    f"masks: {name} has track id {max(new)}; ids above 255 are unsupported"
                )
            t = index[Path(path).stem]
            ids = np.zeros((h, w), np.uint8)
            for k in new:
                ids[rle_decode(segs[str(k)]["rle"], h, w)] = k
            given[t], objects[t] = ids, new
            seen.update(new)
        if not given:
            continue  # no object in this sequence
        start = min(given)
        outputs = {index[Path(p).stem] - start for p in seq["annotated_image_paths"]}
        item = VideoItem(
            name,
            frames[start:],
            {t - start: annotations for t in given},
            output_frames={t for t in outputs if t >= 0},
            objects_per_mask={t - start: objects[t] for t in given},
            mask_arrays={t - start: given[t] for t in given},
        )
        out.append(item)
    if not out:
        raise ValueError(f"masks: no sequence in {annotations} has an object mask")
    return out


def write_burst_predictions(
    annotations: str | os.PathLike, pred: str | os.PathLike, out: str | os.PathLike
) -> None:
    """BURST's result JSON: the ``annotations`` file with each sequence's ``segmentations``
    replaced by the predicted index PNGs ``pred/<dataset>/<seq_name>/<frame>.png`` of its
    annotated frames (RLE per track id; a missing PNG is an empty frame). Written atomically."""
    from cvpr24.common import atomic_write

    doc = json.loads(Path(annotations).read_text())
    for seq in doc["sequences"]:
        folder = Path(pred) / seq["dataset"] / seq["seq_name"]
        segs = []
        for path in seq["annotated_image_paths"]:
            png = folder / f"{Path(path).stem}.png"
            frame = {}
            if png.is_file():
                ids = read_index_png(png, "pred")[0]
                for k in np.unique(ids[ids > 0]):
                    frame[str(int(k))] = {"rle": rle_encode(ids == k)}
            segs.append(frame)
        seq["segmentations"] = segs
    with atomic_write(Path(out)) as f:
        json.dump(doc, f)


def write_synthetic_davis(
    out: str | os.PathLike, videos: int, split: str, seed: int, num_frames: int = 16
) -> list[str]:
    """Write ``videos`` synthetic videos in the DAVIS layout (JPEG frames as PNG for exactness:
    ``JPEGImages/480p/<v>/00000.png``, ``Annotations/480p/<v>/00000.png`` for every frame,
    ``ImageSets/2017/val.txt``). Returns the video names."""
    from PIL import Image

    out = Path(out)
    gen = SyntheticVOS(split, num_frames, seed=seed)
    names = []
    for i in range(videos):
        frames, masks, _ = gen.video(i)
        name = f"syn_{split}_{seed}_{i:04d}"
        img_dir, ann_dir = out / "JPEGImages" / "480p" / name, out / "Annotations" / "480p" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            rgb = (frames[t].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(img_dir / f"{t:05d}.png")
            write_index_png(ann_dir / f"{t:05d}.png", masks[t])
        names.append(name)
    sets = out / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text("\n".join(names) + "\n")
    return names

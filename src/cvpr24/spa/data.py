"""Data: the synthetic teacher with known posteriors (docs/spa.md, Reproduction) and real-format loaders.

Internal label convention everywhere: an (N, C) float array with 1 = present, 0 = absent and
NaN = unknown (missing label). Loaders normalise at the boundary: VOC's 1 / -1 / 0(difficult),
{-1, +1} encodings and ASL's -1-as-unknown all become this.

Loaders: COCO instances JSON, VOC2007 (``ImageSets/Main`` or ``Annotations/*.xml``), CSV
``path,labels``, ``.npz`` feature files, records with label lists (Hugging Face ``datasets``
style), prediction files. Nothing downloads: every path is given by the user.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvpr24.common import atomic_path, optional_import

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


# --------------------------------------------------------------------------------------------
# synthetic data with known posteriors
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticMultiLabel:
    """``x`` (N, d) float32, ``y`` (N, C) float32 in {0, 1}, ``eta`` (N, C) the true
    posteriors, ``prevalence`` (C,) the target class prevalences."""

    x: np.ndarray
    y: np.ndarray
    eta: np.ndarray
    prevalence: np.ndarray


def _teacher(d: int, num_classes: int, hidden: int, scale: float, teacher_seed: int):
    """The fixed teacher: W1 ~ N(0, 1/d), A ~ N(0, scale^2/hidden), biases matched to the
    log-spaced prevalences 0.02 ... 0.30 by 40 vectorised bisection steps on 20k draws."""
    rng = np.random.default_rng(teacher_seed)
    w1 = rng.normal(0, 1 / np.sqrt(d), size=(d, hidden))
    a = rng.normal(0, scale / np.sqrt(hidden), size=(hidden, num_classes))
    prevalence = np.geomspace(0.02, 0.30, num_classes)
    z = np.tanh(rng.normal(size=(20_000, d)) @ w1) @ a  # (20000, C)
    lo, hi = np.full(num_classes, -30.0), np.full(num_classes, 30.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        too_high = (1 / (1 + np.exp(-(z + mid)))).mean(0) > prevalence
        lo, hi = np.where(too_high, lo, mid), np.where(too_high, mid, hi)
    return w1, a, (lo + hi) / 2, prevalence


def make_teacher_multilabel(seed: int, n: int, d: int = 16, num_classes: int = 20, hidden: int = 32,
                            scale: float = 3.0, teacher_seed: int = 1000) -> SyntheticMultiLabel:
    """Multi-label data with known ``eta = sigmoid(tanh(x W1) A + beta)``, ``y ~ Bernoulli(eta)``
    independently per label (the conditional independence LPR assumes).

    The teacher is fixed by ``teacher_seed``; ``seed`` draws the examples, so train and test
    sets from different seeds share one ground truth.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    w1, a, beta, prevalence = _teacher(d, num_classes, hidden, scale, teacher_seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    eta = 1 / (1 + np.exp(-(np.tanh(x @ w1) @ a + beta)))
    y = (rng.uniform(size=eta.shape) < eta).astype(np.float32)
    return SyntheticMultiLabel(x.astype(np.float32), y, eta, prevalence)


@dataclass
class DigitCanvases:
    """``x`` (N, 256) float32 pixels of 16x16 canvases in [0, 1], ``y`` (N, 10) labels (1/0,
    NaN where a positive label was dropped), ``y_full`` (N, 10) the complete labels."""

    x: np.ndarray
    y: np.ndarray
    y_full: np.ndarray


def make_digit_canvases(seed: int, n: int, p_cell: float = 0.6, drop_positive: float = 0.3
                        ) -> DigitCanvases:
    """Real-pixel multi-label data from scikit-learn's bundled ``load_digits`` (no download).

    A 2x2 grid of 8x8 cells; each cell holds a digit with probability ``p_cell``, drawn from a
    skewed class distribution (weights log-spaced 1 ... 0.1), with its image drawn from that
    class. Labels = the digits present (C = 10). A fraction ``drop_positive`` of the positive
    labels is marked unknown (NaN) to mimic missing annotations (``--full``).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, targets = digits.images / 16.0, digits.target
    by_class = [np.flatnonzero(targets == c) for c in range(10)]
    weights = np.geomspace(1.0, 0.1, 10)
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16, 16), np.float32)
    y = np.zeros((n, 10), np.float32)
    for i in range(n):
        for r, c in ((0, 0), (0, 8), (8, 0), (8, 8)):
            if rng.uniform() < p_cell:
                k = rng.choice(10, p=weights / weights.sum())
                x[i, r:r + 8, c:c + 8] = images[rng.choice(by_class[k])]
                y[i, k] = 1.0
    dropped = (y == 1) & (rng.uniform(size=y.shape) < drop_positive)
    return DigitCanvases(x.reshape(n, 256), np.where(dropped, np.nan, y).astype(np.float32), y)


# --------------------------------------------------------------------------------------------
# records: image paths + label matrix
# --------------------------------------------------------------------------------------------

@dataclass
class MultiLabelRecords:
    """Image paths, an (N, C) label matrix (1/0/NaN) and the class names (column order)."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.paths), len(self.class_names)):
            raise ValueError(f"labels must have shape ({len(self.paths)}, {len(self.class_names)}), "
                             f"got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.paths)


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def normalize_labels(labels: np.ndarray, encoding: str = "01") -> np.ndarray:
    """Map an encoded label matrix to the internal 1/0/NaN convention.

    ``encoding``: ``"01"`` (NaN or -1 = unknown), ``"pm1"`` ({-1, +1}, 0 or NaN = unknown),
    ``"voc"`` (1 / -1 / 0 = difficult -> unknown).
    """
    y = np.asarray(labels, dtype=np.float64)
    if encoding == "01":
        allowed, unknown = (0.0, 1.0), np.isnan(y) | (y == -1)
    elif encoding in ("pm1", "voc"):
        allowed, unknown = (-1.0, 1.0), np.isnan(y) | (y == 0)
    else:
        raise ValueError(f"encoding must be '01', 'pm1' or 'voc', got {encoding!r}")
    bad = ~unknown & ~np.isin(y, allowed)
    if bad.any():
        raise ValueError(f"labels hold values {np.unique(y[bad])[:5].tolist()} that the {encoding!r} "
                         "encoding does not allow")
    out = np.where(unknown, np.nan, (y == 1).astype(np.float64))
    return out.astype(np.float32)


def load_coco_instances(json_path: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                        keep_unannotated: bool = False) -> MultiLabelRecords:
    """COCO ``instances_*.json`` -> records. Class columns are the category ids sorted
    (contiguous 0..C-1, the ASL convention); images without annotations are dropped unless
    ``keep_unannotated`` (ASL keeps only annotated images: 82 081 / 40 137 for 2014)."""
    path = _require_file(json_path, "COCO annotation file")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON; expected a COCO instances file ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or key not in coco:
            raise ValueError(f"{path} is not a COCO instances file: no {key!r} key")
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    col = {c["id"]: i for i, c in enumerate(cats)}
    row = {im["id"]: i for i, im in enumerate(coco["images"])}
    labels = np.zeros((len(row), len(col)), np.float32)
    for ann in coco["annotations"]:
        if ann["category_id"] not in col:
            raise ValueError(f"{path}: annotation {ann.get('id')} has unknown category_id {ann['category_id']}")
        labels[row[ann["image_id"]], col[ann["category_id"]]] = 1.0
    keep = np.ones(len(row), bool) if keep_unannotated else labels.sum(1) > 0
    root = Path(images_dir) if images_dir is not None else path.parent
    paths = [str(root / im["file_name"]) for im, k in zip(coco["images"], keep, strict=True) if k]
    return MultiLabelRecords(paths, labels[keep], [c["name"] for c in cats])


def load_voc2007(root: str | os.PathLike, split: str = "trainval", source: str = "imagesets",
                 difficult: str = "ignore") -> MultiLabelRecords:
    """PASCAL VOC2007 under ``root`` (the ``VOC2007`` folder) -> records.

    ``source="imagesets"`` reads ``ImageSets/Main/<cls>_<split>.txt`` (1 / -1 / 0 = difficult);
    ``"annotations"`` reads ``Annotations/<id>.xml`` for the ids of ``ImageSets/Main/<split>.txt``.
    ``difficult``: ``"ignore"`` (unknown label, NaN), ``"positive"`` or ``"negative"``.
    """
    root = Path(root)
    if difficult not in ("ignore", "positive", "negative"):
        raise ValueError(f"difficult must be 'ignore', 'positive' or 'negative', got {difficult!r}")
    diff_value = {"ignore": np.nan, "positive": 1.0, "negative": 0.0}[difficult]
    if source == "imagesets":
        ids, columns = None, []
        for name in VOC_CLASSES:
            lines = _require_file(root / "ImageSets" / "Main" / f"{name}_{split}.txt",
                                  "VOC class list").read_text().split("\n")
            pairs = [ln.split() for ln in lines if ln.strip()]
            these = [p[0] for p in pairs]
            if ids is None:
                ids = these
            elif these != ids:
                raise ValueError(f"{name}_{split}.txt lists other images than {VOC_CLASSES[0]}_{split}.txt")
            columns.append([int(p[1]) for p in pairs])
        y = normalize_labels(np.array(columns).T, "voc")
        if difficult != "ignore":
            y = np.where(np.array(columns).T == 0, diff_value, y).astype(np.float32)
    elif source == "annotations":
        ids = [ln.strip() for ln in _require_file(root / "ImageSets" / "Main" / f"{split}.txt",
                                                  "VOC split list").read_text().split("\n") if ln.strip()]
        y = np.zeros((len(ids), len(VOC_CLASSES)), np.float32)
        for i, image_id in enumerate(ids):
            tree = ET.parse(_require_file(root / "Annotations" / f"{image_id}.xml", "VOC annotation"))
            for obj in tree.getroot().iter("object"):
                name = obj.findtext("name", "").strip()
                if name not in VOC_CLASSES:
                    raise ValueError(f"{image_id}.xml: unknown class name {name!r}")
                c = VOC_CLASSES.index(name)
                is_difficult = obj.findtext("difficult", "0").strip() == "1"
                if not is_difficult:
                    y[i, c] = 1.0
                elif y[i, c] != 1.0:  # a clear instance wins over a difficult one
                    y[i, c] = diff_value
    else:
        raise ValueError(f"source must be 'imagesets' or 'annotations', got {source!r}")
    paths = [str(root / "JPEGImages" / f"{i}.jpg") for i in ids]
    return MultiLabelRecords(paths, y, list(VOC_CLASSES))


def load_csv(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
             class_names: Sequence[str] | None = None, delimiter: str = ",", label_sep: str = " ",
             path_column: str = "path", labels_column: str = "labels") -> MultiLabelRecords:
    """A CSV with a header and columns ``path`` and ``labels`` (class names joined by
    ``label_sep``) -> records. Class names are sorted unless ``class_names`` is given, in which
    case an unknown name raises ``ValueError`` and the ``labels`` column may be absent (images
    to predict: every label unknown, NaN)."""
    path = _require_file(path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected a CSV with columns {path_column!r} and "
                         f"{labels_column!r}") from None
    if not rows:
        raise ValueError(f"{path}: no rows; expected a header and one row per image")
    unlabelled = labels_column not in rows[0] and class_names is not None
    if path_column not in rows[0] or (labels_column not in rows[0] and not unlabelled):
        raise ValueError(f"{path} needs columns {path_column!r} and {labels_column!r}, has {list(rows[0])}")
    if unlabelled:
        labels = np.full((len(rows), len(class_names)), np.nan, np.float32)
        root = Path(images_dir) if images_dir is not None else path.parent
        return MultiLabelRecords([str(root / r[path_column]) for r in rows], labels, list(class_names))
    names_per_row = [[t for t in (r[labels_column] or "").split(label_sep) if t] for r in rows]
    names = list(class_names) if class_names is not None else sorted({t for ns in names_per_row for t in ns})
    index = {n: i for i, n in enumerate(names)}
    labels = np.zeros((len(rows), len(names)), np.float32)
    for i, ns in enumerate(names_per_row):
        for t in ns:
            if t not in index:
                raise ValueError(f"{path}, row {i + 2}: unknown class name {t!r}")
            labels[i, index[t]] = 1.0
    root = Path(images_dir) if images_dir is not None else path.parent
    return MultiLabelRecords([str(root / r[path_column]) for r in rows], labels, names)


def records_from_label_lists(records: Iterable[Mapping], class_names: Sequence[str], *,
                             label_key: str = "labels", path_key: str = "image") -> MultiLabelRecords:
    """Hugging Face ``datasets``-style rows ``{"image": path, "labels": [int, ...]}`` -> records."""
    rows = list(records)
    labels = np.zeros((len(rows), len(class_names)), np.float32)
    for i, r in enumerate(rows):
        if label_key not in r:
            raise ValueError(f"record {i} has no {label_key!r} key (keys: {sorted(r)})")
        for c in r[label_key]:
            if not 0 <= int(c) < len(class_names):
                raise ValueError(f"record {i}: label {c} outside [0, {len(class_names)})")
            labels[i, int(c)] = 1.0
    return MultiLabelRecords([str(r.get(path_key, "")) for r in rows], labels, list(class_names))


# --------------------------------------------------------------------------------------------
# feature and prediction files
# --------------------------------------------------------------------------------------------

def save_features(path: str | os.PathLike, features: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str] | None = None) -> None:
    """Write ``features`` (N, D) and ``labels`` (N, C; 1/0/NaN) to ``path`` (.npz), atomically."""
    features, labels = np.asarray(features, np.float32), np.asarray(labels, np.float32)
    if features.ndim != 2 or labels.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N, C) must share N, got {features.shape} and {labels.shape}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(labels.shape[1])]
    with atomic_path(path) as tmp:
        np.savez(tmp, features=features, labels=labels, class_names=np.array(names, dtype=str))


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a feature file: ``features`` (N, D) float32, ``labels`` (N, C) 1/0/NaN (-1 is read
    as unknown), ``class_names``. Never unpickles (``allow_pickle=False``). Raises
    ``ValueError`` naming the file and what was expected for any other content."""
    with _open_npz(path, "feature file") as (path, z):
        _require_keys(path, z, ("features", "labels"))
        x = _numeric_array(path, z, "features", "(N, D)", np.float32)
        y = _labels(path, z)
        names = _class_names(path, z, y.shape[1])
    if len(x) != len(y):
        raise ValueError(f"{path}: 'features' has {len(x)} rows but 'labels' {len(y)}; expected one "
                         "label row per example")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: 'features' holds NaN or infinite values (rows "
                         f"{np.flatnonzero(~np.isfinite(x).all(1))[:5].tolist()}); expected finite numbers")
    return x, y, names


@contextlib.contextmanager
def _open_npz(path: str | os.PathLike, what: str):
    path = _require_file(path, what)
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a NumPy .npz archive of numeric arrays; expected a {what} "
                         f"({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array; expected a {what} (an .npz archive, np.savez)")
    with z:
        yield path, z


def _require_keys(path: Path, z, keys: Sequence[str]) -> None:
    for key in keys:
        if key not in z:
            raise ValueError(f"{path} has no {key!r} array (has {sorted(z.files)})")


def _numeric_array(path: Path, z, key: str, shape: str, dtype=np.float64) -> np.ndarray:
    """``z[key]`` as a 2-D ``dtype`` array, or a ValueError naming the file and the shape."""
    a = z[key]
    if a.ndim != 2:
        raise ValueError(f"{path}: {key!r} must be a 2-D array {shape}, got shape {a.shape}")
    try:
        return a.astype(dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {key!r} must be numeric, got dtype {a.dtype}") from None


def _labels(path: Path, z) -> np.ndarray:
    raw = _numeric_array(path, z, "labels", "(N, C): one column per class")
    try:
        return normalize_labels(raw, "01")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _class_names(path: Path, z, n_classes: int) -> list[str]:
    if "class_names" not in z:
        return [str(i) for i in range(n_classes)]
    names = [str(n) for n in np.atleast_1d(z["class_names"])]
    if len(names) != n_classes:
        raise ValueError(f"{path}: {len(names)} class_names for {n_classes} label columns")
    return names


def save_predictions(path: str | os.PathLike, logits: np.ndarray, labels: np.ndarray, loss_config: dict,
                     class_names: Sequence[str] | None = None) -> None:
    """Write raw outputs, labels and the loss config (the read-out link) to one ``.npz``."""
    logits = np.asarray(logits, np.float32)
    names = list(class_names) if class_names is not None else [str(i) for i in range(logits.shape[1])]
    with atomic_path(path) as tmp:
        np.savez(tmp, logits=logits, labels=np.asarray(labels, np.float32),
                 loss_config=np.array(json.dumps(loss_config)), class_names=np.array(names, dtype=str))


def load_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict | None, list[str]]:
    """Read ``logits`` (or ``probs``), ``labels`` and the loss config of a predictions file.

    The loss config is read from the ``loss_config`` array or a JSON sidecar ``path.json``
    with a ``loss`` key; ``None`` when the file holds ``probs`` already. Raises ``ValueError``
    when it holds logits but no loss config: without the link, outputs cannot be read.
    """
    with _open_npz(path, "predictions file") as (path, z):
        if "labels" not in z or not ({"logits", "probs"} & set(z.files)):
            raise ValueError(f"{path} must hold 'labels' and 'logits' or 'probs' (has {sorted(z.files)})")
        labels = _labels(path, z)
        has_probs = "probs" in z
        scores = _numeric_array(path, z, "probs" if has_probs else "logits", "(N, C)")
        config = json.loads(str(z["loss_config"])) if "loss_config" in z else None
        names = _class_names(path, z, labels.shape[1])
    if scores.shape != labels.shape:
        raise ValueError(f"{path}: scores {scores.shape} and labels {labels.shape} must have the same shape")
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: the scores hold NaN or infinite values; expected finite numbers")
    sidecar = path.with_suffix(".json")
    if config is None and sidecar.is_file():
        config = json.loads(sidecar.read_text()).get("loss")
    if not has_probs and config is None:
        raise ValueError(f"{path} holds logits but no loss config (a 'loss_config' array or a sidecar "
                         f"{sidecar.name} with a 'loss' key): the read-out link is unknown")
    return scores, labels, (None if has_probs else config), names


# --------------------------------------------------------------------------------------------
# torch datasets
# --------------------------------------------------------------------------------------------

class ImageMultiLabelDataset(torch.utils.data.Dataset):
    """Images of ``records`` resized to ``size`` x ``size``, pixels / 255 (ASL's convention: no
    mean/std normalisation), random horizontal flip when ``train``. Needs Pillow."""

    def __init__(self, records: MultiLabelRecords, size: int = 448, train: bool = False) -> None:
        self._image = optional_import("PIL.Image", "spa")
        self.records, self.size, self.train = records, size, train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.records.paths[i]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
        with self._image.open(path) as im:
            im = im.convert("RGB").resize((self.size, self.size), self._image.Resampling.BILINEAR)
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        if self.train and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, torch.from_numpy(np.nan_to_num(self.records.labels[i], nan=-1.0))

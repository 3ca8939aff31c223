"""Real SPAD data in and out: timestamp lists, histogram cubes, depth maps, deepinv's layout.

Every loader returns arrays in our canonical layouts: histogram cubes as (H, W, T) counts,
timestamps as :class:`~cvpr24.lidar.model.PhotonData` in seconds (TDC codes are multiplied by
``bin_width``), depth maps as (H, W) float metres. Writers are atomic. Files are read with
numpy (``allow_pickle=False``), scipy.io (MATLAB v5) and h5py (HDF5, MATLAB v7.3); nothing is
unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cvpr24.common import atomic_path, optional_import
from cvpr24.lidar.model import PhotonData
from cvpr24.lidar.theory import check_positive

Array = np.ndarray
LAYOUTS = ("HWT", "THW", "BTHW", "BHWT")
_INFER_RATIO = 4  # a 3-D cube's time axis is inferred only if it is >= 4x both other axes


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _h5py():
    return optional_import("h5py", "lidar")


# ------------------------------------------------------------------------------ timestamps
def load_timestamps(path: str | os.PathLike, *, bin_width: float | None = None,
                    shape: tuple[int, ...] | None = None,
                    t_window: tuple[float, float] | None = None) -> PhotonData:
    """Load a timestamp list from ``.npz`` or HDF5 (``.h5``/``.hdf5``).

    The file holds ``t`` (float seconds, or integer TDC codes) and either ``pix`` (1-D
    pixel index) or ``row`` and ``col``. Optional entries (arrays in ``.npz``, datasets or
    file attributes in HDF5): ``bin_width`` (seconds per code; required for integer ``t``
    unless given here), ``shape`` and ``t_window``. Arguments override the file.
    """
    path = Path(path)
    fields = _read_fields(path, ("t", "pix", "row", "col", "bin_width", "shape", "t_window"))
    if "t" not in fields:
        raise ValueError(f"{path}: no 't' (timestamps) entry")
    t = np.asarray(fields["t"])
    if bin_width is None and "bin_width" in fields:
        bin_width = float(np.asarray(fields["bin_width"]))
    if np.issubdtype(t.dtype, np.integer):
        if bin_width is None:
            raise ValueError(f"{path}: 't' holds integer TDC codes; pass bin_width (seconds per code)")
        bin_width = check_positive(bin_width, "bin_width")
        t_sec = t.astype(float) * bin_width
        default_window = (0.0, bin_width * (int(t.max(initial=0)) + 1))
    else:
        t_sec = t.astype(float)
        default_window = (0.0, float(np.nextafter(t_sec.max(initial=0.0), np.inf)))
    if "pix" in fields:
        pix = np.asarray(fields["pix"]).astype(np.int64)
        grid = (int(pix.max(initial=0)) + 1,)
    elif "row" in fields and "col" in fields:
        row, col = (np.asarray(fields[k]).astype(np.int64) for k in ("row", "col"))
        grid = (int(row.max(initial=0)) + 1, int(col.max(initial=0)) + 1)
        if shape is None and "shape" not in fields:
            shape = grid
        pix = None
    else:
        raise ValueError(f"{path}: needs 'pix' or both 'row' and 'col'")
    if shape is None:
        shape = tuple(int(s) for s in np.atleast_1d(fields["shape"])) if "shape" in fields else grid
    if pix is None:
        if len(shape) != 2:
            raise ValueError(f"shape must be (rows, cols) for row/col data, got {shape!r}")
        if row.min(initial=0) < 0 or col.min(initial=0) < 0 or row.max(initial=0) >= shape[0] \
                or col.max(initial=0) >= shape[1]:
            raise ValueError(f"row/col indices fall outside shape={shape}")
        pix = row * shape[1] + col
    if t_window is None:
        t_window = tuple(float(v) for v in fields["t_window"]) if "t_window" in fields else default_window
    return PhotonData(pix, t_sec, tuple(shape), 1, tuple(t_window))


def save_timestamps(path: str | os.PathLike, data: PhotonData) -> None:
    """Write ``data`` (one acquisition) as ``.npz`` or HDF5 with pix, t, shape, t_window."""
    if data.n_repeats != 1:
        raise ValueError(f"data must hold one acquisition, got n_repeats={data.n_repeats}")
    entries = {"pix": data.pix, "t": data.t, "shape": np.asarray(data.shape),
               "t_window": np.asarray(data.t_window, dtype=float)}
    _write_fields(Path(path), entries)


def _read_fields(path: Path, names: tuple[str, ...]) -> dict[str, Array]:
    suffix = _suffix(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in names if k in z.files}
    if suffix in (".h5", ".hdf5"):
        h5py = _h5py()
        out: dict[str, Array] = {}
        with h5py.File(path, "r") as f:
            for k in names:
                if k in f:
                    out[k] = f[k][()]
                elif k in f.attrs:
                    out[k] = np.asarray(f.attrs[k])
            if "t" in f and "bin_width" in f["t"].attrs and "bin_width" not in out:
                out["bin_width"] = np.asarray(f["t"].attrs["bin_width"])
        return out
    raise ValueError(f"unsupported timestamp file {path.name!r}: expected .npz, .h5 or .hdf5")


def _write_fields(path: Path, entries: dict[str, Array]) -> None:
    suffix = _suffix(path)
    if suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **entries)
    elif suffix in (".h5", ".hdf5"):
        h5py = _h5py()
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for k, v in entries.items():
                f.create_dataset(k, data=v)
    else:
        raise ValueError(f"unsupported file {path.name!r}: expected .npz, .h5 or .hdf5")


# ------------------------------------------------------------------------------ histogram cubes
def load_histogram_cube(path: str | os.PathLike, *, key: str | None = None,
                        layout: str | None = None, order: str = "C",
                        shape: tuple[int, int] | None = None, line: bool = False) -> Array:
    """Load a histogram cube as (H, W, T) counts (or (B, H, W, T) for a batch with B > 1).

    With ``line=True`` the file holds a line sensor's (N, T) counts, returned as they are.

    Parameters
    ----------
    path : .npy, .npz, .mat (MATLAB v5 via scipy, v7.3 via h5py), .h5/.hdf5
    key : str, optional
        The array's name in .npz/.mat/.h5 (e.g. ``"spad"``); optional when there is only one.
    layout : {"HWT", "THW", "BTHW", "BHWT"}, optional
        The stored axis order ("BTHW" is deepinv's SinglePhotonLidar layout). Required when the
        shape does not make the time axis obvious.
    order, shape :
        For a 2-D (H*W, T) matrix (often sparse in .mat files): its rows are pixels in ``order``
        ("C": row-major, "F": MATLAB column-major) of an image of ``shape`` (H, W).
    """
    path = Path(path)
    arr = _read_array(path, key)
    if line:
        if arr.ndim != 2:
            raise ValueError(f"{path.name}: a line sensor's cube must be (N, T), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError("histogram counts must be finite and non-negative (no NaN)")
        return arr
    if arr.ndim == 2:
        if shape is None:
            raise ValueError(f"{path.name}: a 2-D (H*W, T) matrix needs shape=(H, W)")
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', got {order!r}")
        h, w = shape
        if arr.shape[0] != h * w:
            raise ValueError(f"shape={shape} gives {h * w} pixels but the matrix has {arr.shape[0]} rows")
        arr = arr.reshape(h, w, arr.shape[1], order=order)
        layout = "HWT"
    return to_hwt(arr, layout)


def to_hwt(arr: Array, layout: str | None = None) -> Array:
    """Reorder a cube to (H, W, T) (4-D: (B, H, W, T), squeezed when B = 1); validate counts."""
    arr = np.asarray(arr)
    if layout is None:
        layout = _infer_layout(arr.shape)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if arr.ndim != len(layout):
        raise ValueError(f"layout={layout!r} needs a {len(layout)}-D array, got shape {arr.shape}")
    if layout == "THW":
        arr = np.moveaxis(arr, 0, -1)
    elif layout == "BTHW":
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("histogram counts must be finite and non-negative (no NaN)")
    return arr


def _infer_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        a, b, c = shape
        if c >= _INFER_RATIO * max(a, b):
            return "HWT"
        if a >= _INFER_RATIO * max(b, c):
            return "THW"
    raise ValueError(f"the cube's layout is ambiguous for shape {shape}: pass layout= one of {LAYOUTS}")


def _read_array(path: Path, key: str | None) -> Array:
    suffix = _suffix(path)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z[_pick_key(list(z.files), key, path)]
    if suffix == ".mat":
        if not _is_hdf5(path):
            return _read_mat_v5(path, key)
        return _read_mat_v73(path, key, _h5py())
    if suffix in (".h5", ".hdf5"):
        with _h5py().File(path, "r") as f:
            return f[_pick_key(list(f.keys()), key, path)][()]
    raise ValueError(f"unsupported cube file {path.name!r}: expected .npy, .npz, .mat, .h5 or .hdf5")


def _is_hdf5(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 (signature at byte 0, 512, 1024, ...); v5 files are not."""
    try:
        return bool(_h5py().is_hdf5(str(path)))
    except ImportError:  # without h5py only v5 files can be read anyway
        return False


def _pick_key(keys: list[str], key: str | None, path: Path) -> str:
    if key is not None:
        if key not in keys:
            raise ValueError(f"key={key!r} not in {path.name} (has {keys})")
        return key
    if len(keys) != 1:
        raise ValueError(f"{path.name} holds {keys}: pass key= to choose one")
    return keys[0]


def _read_mat_v5(path: Path, key: str | None) -> Array:
    from scipy import io, sparse

    m = io.loadmat(path)
    arr = m[_pick_key([k for k in m if not k.startswith("__")], key, path)]
    return arr.toarray() if sparse.issparse(arr) else np.asarray(arr)


def _read_mat_v73(path: Path, key: str | None, h5py) -> Array:
    """MATLAB v7.3 is HDF5 with column-major arrays: h5py sees the axes reversed."""
    from scipy import sparse

    with h5py.File(path, "r") as f:
        name = _pick_key([k for k in f.keys() if not k.startswith("#")], key, path)
        obj = f[name]
        if isinstance(obj, h5py.Group) and "MATLAB_sparse" in obj.attrs:
            n_rows = int(obj.attrs["MATLAB_sparse"])
            jc = obj["jc"][()]
            data = obj["data"][()] if "data" in obj else np.ones(obj["ir"].shape)
            return sparse.csc_matrix((data, obj["ir"][()], jc), shape=(n_rows, jc.size - 1)).toarray()
        return np.asarray(obj[()]).transpose()


def save_histogram_cube(path: str | os.PathLike, cube: Array, *, key: str = "cube") -> None:
    """Write a cube atomically as .npy, .npz, .mat (v5) or .h5 under ``key``."""
    path = Path(path)
    cube = np.asarray(cube)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, cube)
        elif suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{key: cube})
        elif suffix == ".mat":
            from scipy import io

            io.savemat(tmp, {key: cube})
        elif suffix in (".h5", ".hdf5"):
            with _h5py().File(tmp, "w") as f:
                f.create_dataset(key, data=cube, compression="gzip")
        else:
            raise ValueError(f"unsupported cube file {path.name!r}: expected .npy, .npz, .mat or .h5")


# ------------------------------------------------------------------------------ deepinv layout
def from_deepinv(y) -> Array:
    """deepinv's ``SinglePhotonLidar`` measurements (B, T, H, W) -> (B, H, W, T) numpy counts.

    deepinv itself is never imported (it needs torchvision); this only reorders axes.
    """
    a = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    if a.ndim != 4:
        raise ValueError(f"y must be (B, T, H, W), got shape {a.shape}")
    return np.moveaxis(a, 1, -1)


def to_deepinv(cube: Array):
    """(H, W, T) or (B, H, W, T) counts -> a (B, T, H, W) torch tensor (deepinv's layout)."""
    import torch

    a = np.asarray(cube)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"cube must be (H, W, T) or (B, H, W, T), got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))


# ------------------------------------------------------------------------------ depth maps
def load_depth_map(path: str | os.PathLike, *, scale: float = 1.0) -> Array:
    """An (H, W) depth map in metres from ``.npy`` or a 16-bit PNG (Pillow).

    ``scale`` converts stored values to metres (e.g. 1e-3 for PNGs in millimetres).
    """
    path = Path(path)
    scale = check_positive(scale, "scale")
    if _suffix(path) == ".npy":
        d = np.load(path, allow_pickle=False).astype(float)
    elif _suffix(path) == ".png":
        image = optional_import("PIL.Image", "lidar")
        with image.open(path) as im:
            d = np.asarray(im).astype(float)
    else:
        raise ValueError(f"unsupported depth file {path.name!r}: expected .npy or .png")
    if d.ndim != 2:
        raise ValueError(f"{path.name}: a depth map must be 2-D, got shape {d.shape}")
    return d * scale


def save_depth_png16(path: str | os.PathLike, depth_m: Array, *, scale: float = 1e-3) -> None:
    """Write depth (metres) as a 16-bit PNG of round(depth / scale) (millimetres by default)."""
    image = optional_import("PIL.Image", "lidar")
    v = np.round(np.asarray(depth_m, float) / check_positive(scale, "scale"))
    if v.min() < 0 or v.max() > 65535:
        raise ValueError("depth_m / scale must fit in 0..65535 for a 16-bit PNG")
    with atomic_path(path) as tmp:
        image.fromarray(v.astype(np.uint16)).save(tmp, format="PNG")

"""Loaders and writers: bit-exact round trips, layouts, deepinv adapter, binning advice."""

import numpy as np
import pytest
import torch

from cvpr24.lidar import (
    Scene2D,
    from_deepinv,
    load_depth_map,
    load_histogram_cube,
    load_timestamps,
    save_histogram_cube,
    save_timestamps,
    simulate_photons,
    to_deepinv,
)
from cvpr24.lidar.data import save_depth_png16

h5py = pytest.importorskip("h5py")


@pytest.fixture
def cube():
    return np.random.default_rng(0).poisson(0.7, (6, 5, 64)).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5"])
def test_cube_round_trip_is_bit_exact(tmp_path, cube, suffix):
    path = tmp_path / f"cube{suffix}"
    save_histogram_cube(path, cube, key="spad")
    back = load_histogram_cube(path, key=None if suffix == ".npy" else "spad", layout="HWT")
    assert back.dtype == cube.dtype
    np.testing.assert_array_equal(back, cube)


def test_layouts_and_ambiguity(tmp_path, cube):
    thw = np.moveaxis(cube, -1, 0)
    np.testing.assert_array_equal(load_histogram_cube(_npy(tmp_path, thw), layout="THW"), cube)
    np.testing.assert_array_equal(load_histogram_cube(_npy(tmp_path, thw)), cube)  # T >= 4x: inferred
    square = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="layout"):
        load_histogram_cube(_npy(tmp_path, square))
    with pytest.raises(ValueError, match="counts"):
        load_histogram_cube(_npy(tmp_path, -np.ones((2, 2, 16))), layout="HWT")


def _npy(tmp_path, arr):
    path = tmp_path / "x.npy"
    np.save(path, arr)
    return path


def test_sparse_pixel_by_time_matrix_in_mat_v5_and_v73(tmp_path, cube):
    from scipy import io, sparse

    h, w, t = cube.shape
    flat_f = cube.reshape(h * w, t, order="F")  # MATLAB's column-major pixel order
    io.savemat(tmp_path / "v5.mat", {"spad": sparse.csc_matrix(flat_f.astype(float))})
    back = load_histogram_cube(tmp_path / "v5.mat", key="spad", order="F", shape=(h, w))
    np.testing.assert_array_equal(back, cube)
    with pytest.raises(ValueError, match="shape"):
        load_histogram_cube(tmp_path / "v5.mat", key="spad")
    # v7.3: HDF5 (with MATLAB's 512-byte user block), arrays stored column-major, sparse as a group
    csc = sparse.csc_matrix(flat_f.astype(float))
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        g = f.create_group("spad")
        g.attrs["MATLAB_sparse"] = h * w
        g["data"], g["ir"], g["jc"] = csc.data, csc.indices, csc.indptr
        f["dense"] = cube.transpose()  # what MATLAB writes for an (H, W, T) array
    np.testing.assert_array_equal(
        load_histogram_cube(tmp_path / "v73.mat", key="spad", order="F", shape=(h, w)), cube)
    np.testing.assert_array_equal(load_histogram_cube(tmp_path / "v73.mat", key="dense", layout="HWT"),
                                  cube)


def test_deepinv_adapter_round_trip(cube):
    y = to_deepinv(cube)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (1, 64, 6, 5)
    np.testing.assert_array_equal(from_deepinv(y)[0], cube)
    batch = np.stack([cube, cube + 1])
    np.testing.assert_array_equal(from_deepinv(to_deepinv(batch)), batch)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_timestamp_round_trip(tmp_path, suffix):
    ph = simulate_photons(Scene2D.plane(), 4, 500, 0.01, rng=1)
    save_timestamps(tmp_path / f"ts{suffix}", ph)
    back = load_timestamps(tmp_path / f"ts{suffix}")
    np.testing.assert_array_equal(back.pix, ph.pix)
    np.testing.assert_array_equal(back.t, ph.t)
    assert back.shape == ph.shape and back.t_window == ph.t_window


def test_timestamps_as_tdc_codes_with_row_col(tmp_path):
    codes = np.array([10, 20, 30], dtype=np.int32)
    np.savez(tmp_path / "codes.npz", row=[0, 1, 1], col=[2, 0, 1], t=codes, bin_width=35e-12)
    ph = load_timestamps(tmp_path / "codes.npz")
    np.testing.assert_allclose(ph.t, codes * 35e-12)
    assert ph.shape == (2, 3) and ph.pix.tolist() == [2, 3, 4]
    np.savez(tmp_path / "nobw.npz", pix=[0, 1], t=codes[:2])
    with pytest.raises(ValueError, match="bin_width"):
        load_timestamps(tmp_path / "nobw.npz")


def test_depth_map_png16_and_npy(tmp_path):
    depth = np.random.default_rng(0).uniform(1.0, 9.0, (7, 9))
    save_depth_png16(tmp_path / "d.png", depth, scale=1e-3)
    back = load_depth_map(tmp_path / "d.png", scale=1e-3)
    assert np.max(np.abs(back - depth)) <= 0.5e-3 + 1e-12
    np.save(tmp_path / "d.npy", depth)
    np.testing.assert_array_equal(load_depth_map(tmp_path / "d.npy"), depth)
    scene = Scene2D.from_depth_map(depth)
    assert scene.tau(np.array(0.5 / 9), np.array(0.5 / 7)) == pytest.approx(2 * depth[0, 0] / 299_792_458.0)

"""Loaders (round trips through every format), the generator and the feature shift."""

import numpy as np
import pytest
import scipy.sparse as sp
from hcc_helpers import random_signed
from scipy.spatial.distance import pdist, squareform

from cvpr24.hcc import (
    load_features,
    load_signed_edgelist,
    load_signed_matrix,
    make_signed_partition,
    resolve_shift,
    save_signed_edgelist,
    signed_from_features,
)


def _sparse_signs(n=12, seed=0):
    rng = np.random.default_rng(seed)
    U = np.triu(rng.choice([-1.0, 0.0, 1.0], size=(n, n), p=[0.3, 0.4, 0.3]), 1)
    return U + U.T


def test_dense_and_condensed_npy_round_trip(tmp_path):
    D = random_signed(9, 0)
    np.save(tmp_path / "d.npy", D)
    np.save(tmp_path / "c.npy", squareform(D, checks=False))
    np.testing.assert_array_equal(load_signed_matrix(tmp_path / "d.npy"), D)
    np.testing.assert_allclose(load_signed_matrix(tmp_path / "c.npy"), D)


def test_sparse_npz_round_trip_and_wrong_npz(tmp_path):
    S = sp.csr_matrix(_sparse_signs())
    sp.save_npz(tmp_path / "s.npz", S)
    loaded = load_signed_matrix(tmp_path / "s.npz")
    assert sp.issparse(loaded)
    np.testing.assert_array_equal(loaded.toarray(), S.toarray())
    np.savez(tmp_path / "dense.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a scipy.sparse"):
        load_signed_matrix(tmp_path / "dense.npz")


@pytest.mark.parametrize("fmt", ["snap", "csv"])
def test_edgelist_round_trip_with_id_remapping(tmp_path, fmt):
    D = _sparse_signs(10, 1)
    ids = np.array([5, 17, 3, 101, 42, 8, 9, 77, 1000, 2])
    order = np.argsort(ids)  # the loader numbers objects by sorted original id
    save_signed_edgelist(tmp_path / f"g.{fmt}", D, fmt, ids=ids)
    g = load_signed_edgelist(tmp_path / f"g.{fmt}", fmt)
    np.testing.assert_array_equal(g.ids, ids[order])
    present = np.isin(order, np.flatnonzero(np.abs(D).sum(axis=1) > 0))
    np.testing.assert_array_equal(g.D.toarray(), D[np.ix_(order, order)][np.ix_(present, present)])
    assert g.n_conflicts == 0 and g.n_duplicates == 0


def test_snap_file_conventions(tmp_path):
    """SNAP: '#' comments, directed duplicates, +1 = trust = similar (negative dissimilarity)."""
    path = tmp_path / "soc.txt"
    path.write_text("# Directed signed graph\n# FromNodeId\tToNodeId\tSign\n"
                    "10\t20\t1\n20\t10\t1\n10\t30\t-1\n30\t30\t1\n20\t30\t1\n30\t20\t-1\n")
    g = load_signed_edgelist(path, "snap")
    assert g.ids.tolist() == [10, 20, 30]
    assert g.n_lines == 6 and g.n_self_loops == 1 and g.n_duplicates == 2 and g.n_conflicts == 1
    np.testing.assert_array_equal(g.D.toarray(), [[0, -2, 1], [-2, 0, 0], [1, 0, 0]])
    mean = load_signed_edgelist(path, "snap", symmetrize="mean").D.toarray()
    assert mean[0, 1] == -1
    with pytest.raises(ValueError, match="both signs"):
        load_signed_edgelist(path, "snap", strict=True)
    diss = load_signed_edgelist(path, "snap", values="dissimilarity").D.toarray()
    assert diss[0, 1] == 2


def test_snap_rejects_bad_signs_and_lines(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t2\t1\n2\t3\t2\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: a SNAP sign must be -1 or 1"):
        load_signed_edgelist(bad, "snap")
    short = tmp_path / "short.txt"
    short.write_text("1\t2\n")
    with pytest.raises(ValueError, match="from to sign"):
        load_signed_edgelist(short, "snap")
    with pytest.raises(ValueError, match="fmt"):
        load_signed_edgelist(bad, "tsv")


def test_csv_text_ids_header_and_fixed_n(tmp_path):
    path = tmp_path / "crowd.csv"
    path.write_text("a,b,label\nann,bob,1\nbob,cid,-0.5\n")
    g = load_signed_edgelist(path, "csv")
    assert g.ids.tolist() == ["ann", "bob", "cid"]
    np.testing.assert_array_equal(g.D.toarray(), [[0, -1, 0], [-1, 0, 0.5], [0, 0.5, 0]])
    num = tmp_path / "num.csv"
    num.write_text("0,1,2.0\n")
    assert load_signed_edgelist(num, "csv", n=4).D.shape == (4, 4)
    with pytest.raises(ValueError, match=r"\[0, n=2\)"):
        load_signed_edgelist(_write(tmp_path / "n.csv", "0,3,1\n"), "csv", n=2)


def _write(path, text):
    path.write_text(text)
    return path


def test_features_csv_with_header(tmp_path):
    path = _write(tmp_path / "x.csv", "f1,f2\n0,1\n2,3\n4,5\n")
    np.testing.assert_array_equal(load_features(path), [[0, 1], [2, 3], [4, 5]])


def test_signed_from_features_and_shift_rules():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    d = pdist(X)
    D, theta = signed_from_features(X, shift="median")
    assert theta == pytest.approx(np.median(d))
    np.testing.assert_allclose(D, squareform(d - theta) * (1 - np.eye(30)))
    assert resolve_shift(0.5, d) == 0.5
    assert resolve_shift("quantile:0.25", d) == pytest.approx(np.quantile(d, 0.25))
    assert resolve_shift("inv_k", d, 4) == pytest.approx(np.quantile(d, 0.25))
    for bad in ("quantile:2", "mode", None):
        with pytest.raises(ValueError, match="shift"):
            resolve_shift(bad, d)
    with pytest.raises(ValueError, match="inv_k"):
        resolve_shift("inv_k", d)
    with pytest.warns(UserWarning, match="negative"):
        signed_from_features(X, shift=-1.0)
    with pytest.raises(ValueError, match="precomputed"):
        signed_from_features(X, metric="precomputed")


def test_generator_is_seeded_and_planted():
    D1, y1 = make_signed_partition([5, 4, 3], p_flip=0.0, mag_noise=0.0, seed=3)
    D2, y2 = make_signed_partition([5, 4, 3], p_flip=0.0, mag_noise=0.0, seed=3)
    np.testing.assert_array_equal(D1, D2)
    same = y1[:, None] == y1[None, :]
    off = ~np.eye(12, dtype=bool)
    assert np.all(D1[same & off] == -1) and np.all(D1[~same] == 1)
    D3, _ = make_signed_partition([20, 20], p_flip=0.3, p_obs=0.5, seed=1)
    assert np.allclose(D3, D3.T) and 0.35 < np.mean(D3[~np.eye(40, dtype=bool)] == 0) < 0.65
    with pytest.raises(ValueError, match="p_flip"):
        make_signed_partition([3], p_flip=1.5)

"""TPE (MDS of the level ultrametric, Eq. 9) and minimax distances / minimax CC (Theorem 1)."""

import itertools

import networkx as nx
import numpy as np
import pytest
from hcc_helpers import all_partitions, hand_example, random_signed
from scipy.cluster.hierarchy import cophenet
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import pdist, squareform

from cvpr24.hcc import (
    cc_cost,
    explicit_tree_embedding,
    hcc_linkage,
    level_distances,
    mds_embed,
    minimax_cc_labels,
    minimax_distances,
    minimax_embedding_matrix,
)
from cvpr24.hcc.embedding import double_centre, pca_sparse


def test_hand_example_mds_spectrum():
    _, lam = mds_embed(level_distances(hcc_linkage(hand_example())))
    np.testing.assert_allclose(lam, [3.244, 1.5, 1.156, 0.5, 0], atol=1e-3)


def test_level_embedding_is_exact():
    L = level_distances(hcc_linkage(random_signed(60, 1, shift=-0.1)))
    W = double_centre(L)
    lam_all = np.linalg.eigvalsh(W)
    assert lam_all.min() >= -1e-9 * lam_all.max()
    Y, lam = mds_embed(L)
    sq = squareform(pdist(Y, "sqeuclidean"))
    assert np.max(np.abs(sq - L)) < 1e-8 * L.max()
    assert Y.shape[1] == np.sum(lam > 1e-9 * lam[0])


def test_explicit_embedding_is_exact_and_matches_mds_spectrum():
    Z = hcc_linkage(random_signed(40, 2, shift=-0.2))
    L = level_distances(Z)
    Y = explicit_tree_embedding(Z).toarray()
    np.testing.assert_allclose(squareform(pdist(Y, "sqeuclidean")), L, atol=1e-9)
    Yc = Y - Y.mean(axis=0)
    pca = np.sort(np.linalg.svd(Yc, compute_uv=False) ** 2)[::-1][:39]
    _, lam = mds_embed(L)
    np.testing.assert_allclose(pca, lam[:39], atol=1e-8)
    scores, top = pca_sparse(explicit_tree_embedding(Z), 5)
    np.testing.assert_allclose(top, lam[:5], rtol=1e-6)
    Y5, _ = mds_embed(L, 5)
    np.testing.assert_allclose(squareform(pdist(scores)), squareform(pdist(Y5)), atol=1e-6)


def test_mds_truncated_equals_full_prefix():
    L = level_distances(hcc_linkage(random_signed(30, 3)))
    Y, lam = mds_embed(L)
    Y3, lam3 = mds_embed(L, 3)
    np.testing.assert_allclose(lam3, lam[:3], rtol=1e-10)
    np.testing.assert_allclose(np.abs(Y3), np.abs(Y[:, :3]), atol=1e-8)


def test_mds_warns_on_non_embeddable_input():
    D = np.array([[0, 1.0, 10], [1, 0, 1], [10, 1, 0]])  # violates the triangle inequality
    with pytest.warns(UserWarning, match="not squared-Euclidean embeddable"):
        mds_embed(D)


# minimax -----------------------------------------------------------------------------------


def _networkx_minimax(D):
    G = nx.Graph()
    n = D.shape[0]
    G.add_weighted_edges_from((i, j, D[i, j]) for i in range(n) for j in range(i + 1, n))
    T = nx.minimum_spanning_tree(G)
    out = np.zeros_like(D)
    for i in range(n):
        for j in range(i + 1, n):
            path = nx.shortest_path(T, i, j)
            out[i, j] = out[j, i] = max(T[p][q]["weight"] for p, q in itertools.pairwise(path))
    return out


def test_minimax_equals_mst_path_max_and_single_cophenet():
    D = random_signed(30, 4)
    M = minimax_distances(D)
    np.testing.assert_allclose(M, _networkx_minimax(D), atol=1e-12)
    shift = 1.0 - D[~np.eye(30, dtype=bool)].min()
    coph = squareform(cophenet(scipy_linkage(squareform(D + shift, checks=False), "single")))
    np.fill_diagonal(coph, shift)
    np.testing.assert_allclose(M, coph - shift, atol=1e-12)


def test_minimax_shift_equivariance():
    D = random_signed(25, 5)
    a = -0.7
    off = 1 - np.eye(25)
    np.testing.assert_allclose(minimax_distances(D + a * off), minimax_distances(D) + a * off,
                               atol=1e-12)


def test_minimax_with_exact_zeros():
    """Zeros are real edges here, not missing ones (scipy #18892): the path 0-1-2 has max 0."""
    D = np.array([[0, 0.0, 5, 5], [0.0, 0, 0.0, 5], [5, 0.0, 0, 3], [5, 5, 3, 0]])
    M = minimax_distances(D)
    assert M[0, 2] == 0 and M[0, 3] == 3 and M[1, 3] == 3


def test_shifted_minimax_is_psd_after_centring():
    M = minimax_embedding_matrix(minimax_distances(random_signed(40, 6)))
    assert M[~np.eye(40, dtype=bool)].min() == 0
    lam = np.linalg.eigvalsh(double_centre(M))
    assert lam.min() >= -1e-9 * lam.max()
    with pytest.raises(ValueError, match="offset"):
        minimax_embedding_matrix(M, -1.0)


def test_theorem1_brute_force():
    """On D^MM the CC optimum is 0 and the negative-edge components reach it (N = 7)."""
    partitions = [np.array(p) for p in all_partitions(7)]
    assert len(partitions) == 877
    raw_positive = 0
    for seed in range(10):
        D = random_signed(7, 100 + seed)
        M = minimax_distances(D)
        assert min(cc_cost(M, p) for p in partitions) == pytest.approx(0, abs=1e-12)
        assert cc_cost(M, minimax_cc_labels(D)) == pytest.approx(0, abs=1e-12)
        raw_positive += min(cc_cost(D, p) for p in partitions) > 1e-9
    assert raw_positive >= 8  # on the raw D the optimum is (almost always) above 0


def test_mds_arpack_matches_dense():
    L = level_distances(hcc_linkage(random_signed(120, 9, shift=-0.1)))
    Yd, lam_d = mds_embed(L, 6, solver="dense")
    Ya, lam_a = mds_embed(L, 6, solver="arpack")
    np.testing.assert_allclose(lam_a, lam_d, rtol=1e-8)
    np.testing.assert_allclose(pdist(Ya), pdist(Yd), atol=1e-7)
    with pytest.raises(ValueError, match="n_components"):
        mds_embed(L, None, solver="arpack")
    with pytest.raises(ValueError, match="solver"):
        mds_embed(L, 3, solver="lobpcg")

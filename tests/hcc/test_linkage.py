"""HCC linkage: the hand example, scipy reductions, a naive oracle, Eq. 5, invariances, cuts."""

import itertools
import warnings

import numpy as np
import pytest
from hcc_helpers import all_partitions, hand_example, random_signed
from scipy.cluster.hierarchy import cophenet
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score

from cvpr24.hcc import (
    cc_cost,
    cc_cut,
    cc_path,
    cut_level,
    hcc_linkage,
    level_distances,
    level_linkage,
    tree_distances,
    tree_linkage,
)

SCIPY = {"avg": "average", "max": "complete", "min": "single"}


def naive_linkage(D: np.ndarray, linkage: str = "sum") -> np.ndarray:
    """O(N^3) reference: full argmin over all active pairs at every step, no caching.

    Ties: the lexicographically smallest (slot, slot) pair; the merged cluster keeps the
    smaller slot (the kernel's documented rule).
    """
    n = D.shape[0]
    W = D.astype(float).copy()
    np.fill_diagonal(W, np.inf)
    ids = list(range(n))
    size = [1] * n
    active = np.ones(n, bool)
    Z = []
    for t in range(n - 1):
        M = np.where(active[:, None] & active[None, :], W, np.inf)
        a, b = np.unravel_index(np.argmin(M), M.shape)
        a, b = min(a, b), max(a, b)
        h = W[a, b]
        na, nb = size[a], size[b]
        if linkage == "sum":
            new = W[a] + W[b]
        elif linkage == "avg":
            new = (na * W[a] + nb * W[b]) / (na + nb)
        elif linkage == "max":
            new = np.maximum(W[a], W[b])
        else:
            new = np.minimum(W[a], W[b])
        W[a], W[:, a] = new, new
        W[a, a] = np.inf
        active[b] = False
        Z.append([min(ids[a], ids[b]), max(ids[a], ids[b]), h, na + nb])
        ids[a], size[a] = n + t, na + nb
    return np.array(Z)


# 1. the hand example of spec section 2.2 ---------------------------------------------------


def test_hand_example_sum():
    hand = hand_example()
    Z = hcc_linkage(hand)
    np.testing.assert_allclose(Z, [[0, 1, -2, 2], [2, 5, -3, 3], [3, 4, -1.8, 2], [6, 7, 6, 5]])
    np.testing.assert_allclose(cc_path(hand, Z), [6.8, 4.8, 1.8, 0, 6], atol=1e-12)
    k = cc_cut(Z, cc_path(hand, Z))
    assert k == 2
    np.testing.assert_array_equal(cut_level(Z, k), [0, 0, 0, 1, 1])
    assert cc_cost(hand, cut_level(Z, k)) == 0


def test_hand_example_average():
    hand = hand_example()
    np.testing.assert_allclose(hcc_linkage(hand, "avg"),
                               [[0, 1, -2, 2], [3, 4, -1.8, 2], [2, 5, -1.5, 3], [6, 7, 1, 5]])


def test_hand_example_levels():
    hand = hand_example()
    L = level_distances(hcc_linkage(hand))
    expected = np.full((5, 5), 4.0)
    expected[0, 1] = expected[1, 0] = 1
    expected[[0, 1, 2, 2], [2, 2, 0, 1]] = 2
    expected[3, 4] = expected[4, 3] = 3
    np.fill_diagonal(expected, 0)
    np.testing.assert_array_equal(L, expected)


@pytest.mark.parametrize("seed", range(5))
def test_sum_heights_stay_positive_after_first_positive(seed):
    """Once the cheapest merge is positive every Delta is, and Eq. 4 only adds them: the path
    R_t falls, then rises, so "cc" and "first_positive" agree (up to zero-cost merges)."""
    D = random_signed(60, seed, shift=-0.05 * seed)
    Z = hcc_linkage(D)
    h = Z[:, 2]
    first = np.flatnonzero(h > 0)[0]
    assert np.all(h[first:] > 0)
    assert np.any(np.diff(h[:first]) < 0), "inversions happen in the negative part"
    assert cc_cut(Z, cc_path(D, Z)) == cc_cut(Z, rule="first_positive") == 60 - first


def test_first_positive_merges_zero_cost_pairs_cc_does_not():
    D = np.array([[0, -1.0, 1, 1], [-1.0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    Z = hcc_linkage(D)  # merges {0,1} at -1, {2,3} at 0, then the root at +4
    np.testing.assert_allclose(Z[:, 2], [-1, 0, 4])
    assert cc_cut(Z, cc_path(D, Z)) == 3  # ties go to the smallest t
    assert cc_cut(Z, rule="first_positive") == 2


def test_ties_every_merge_is_a_greedy_cc_step():
    """On tie-heavy +-1 data each recorded merge still has the smallest Delta_sum (Eq. 3)."""
    rng = np.random.default_rng(5)
    U = np.triu(rng.choice([-1.0, 1.0], size=(30, 30)), 1)
    D = U + U.T
    with pytest.warns(UserWarning, match="tied"):
        Z = hcc_linkage(D)
    np.testing.assert_array_equal(Z, hcc_linkage(D.copy()))  # deterministic
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # continuous data must not warn, small N or large
        hcc_linkage(random_signed(30, 0))
        hcc_linkage(random_signed(400, 0))
    members = {i: [i] for i in range(30)}
    for t, (a, b, h, size) in enumerate(Z):
        ids = list(members)
        M = np.zeros((len(ids), 30))
        for r, c in enumerate(ids):
            M[r, members[c]] = 1
        delta = M @ D @ M.T  # Delta_sum between every pair of current clusters
        np.fill_diagonal(delta, np.inf)
        assert h == delta.min() == delta[ids.index(int(a)), ids.index(int(b))]
        members[30 + t] = members.pop(int(a)) + members.pop(int(b))
        assert len(members[30 + t]) == size


# 2. reductions to scipy -------------------------------------------------------------------


@pytest.mark.parametrize("n", [50, 200])
@pytest.mark.parametrize("linkage", ["avg", "max", "min"])
def test_variants_equal_scipy(linkage, n):
    D = random_signed(n, seed=n)
    Z = hcc_linkage(D, linkage)
    ref = scipy_linkage(squareform(D, checks=False), method=SCIPY[linkage])
    np.testing.assert_array_equal(Z[:, [0, 1, 3]], ref[:, [0, 1, 3]])
    np.testing.assert_allclose(Z[:, 2], ref[:, 2], rtol=0, atol=1e-10)


# 3. the fast kernel against the naive O(N^3) oracle ----------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_sum_equals_naive(seed):
    n = [5, 8, 13, 20, 31, 50, 77, 120, 160, 200][seed % 10]
    D = random_signed(n, seed, shift=0.3 * (seed % 3 - 1))
    np.testing.assert_allclose(hcc_linkage(D), naive_linkage(D), rtol=0, atol=1e-9)


@pytest.mark.parametrize("linkage", ["avg", "max", "min"])
def test_variants_equal_naive(linkage):
    D = random_signed(40, 7)
    np.testing.assert_allclose(hcc_linkage(D, linkage), naive_linkage(D, linkage), atol=1e-12)


def test_float32_matches_float64_merges():
    D = random_signed(80, 3)
    Z64 = hcc_linkage(D)
    Z32 = hcc_linkage(D, dtype=np.float32)
    np.testing.assert_array_equal(Z32[:, [0, 1, 3]], Z64[:, [0, 1, 3]])
    np.testing.assert_allclose(Z32[:, 2], Z64[:, 2], rtol=1e-4, atol=1e-4)


def test_condensed_and_sparse_inputs_agree():
    import scipy.sparse as sp

    D = random_signed(30, 4)
    D[np.abs(D) < 0.5] = 0
    Z = hcc_linkage(D)
    np.testing.assert_array_equal(hcc_linkage(squareform(D, checks=False)), Z)
    for fmt in ("csr", "csc", "coo"):
        np.testing.assert_array_equal(hcc_linkage(sp.csr_matrix(D).asformat(fmt)), Z)


# 4. Eq. 5: the CC cost along the path ------------------------------------------------------


def test_eq5_cost_along_path():
    D = random_signed(60, 11, shift=0.2)
    Z = hcc_linkage(D)
    r0 = cc_cost(D, np.arange(60))
    path = cc_path(D, Z)
    np.testing.assert_allclose(path, r0 + np.concatenate([[0], np.cumsum(Z[:, 2])]), atol=1e-9)
    for t in range(60):
        assert cc_cost(D, cut_level(Z, 60 - t)) == pytest.approx(path[t], abs=1e-9)


def test_cc_path_exact_for_other_linkages():
    D = random_signed(25, 12)
    Z = hcc_linkage(D, "avg")
    path = cc_path(D, Z)
    for t in range(25):
        assert cc_cost(D, cut_level(Z, 25 - t)) == pytest.approx(path[t], abs=1e-9)


def test_cc_cut_is_cheapest_level():
    D = random_signed(40, 13, shift=-0.1)
    Z = hcc_linkage(D)
    k = cc_cut(Z, cc_path(D, Z))
    costs = [cc_cost(D, cut_level(Z, kk)) for kk in range(1, 41)]
    assert cc_cost(D, cut_level(Z, k)) == pytest.approx(min(costs), abs=1e-9)


def test_cc_cost_counts_unordered_pairs():
    D = np.array([[0, 2.0, -1], [2, 0, 3], [-1, 3, 0]])
    # {0,1} together: +2 (positive inside); {2} apart from 0: -1 across costs 1
    assert cc_cost(D, [0, 0, 1]) == 3.0
    assert cc_cost(D, [0, 1, 2]) == 1.0
    assert cc_cost(D, [0, 0, 0]) == 5.0


def test_brute_force_cc_optimum_small_graph():
    """On a tiny graph the HCC "cc" cut reaches the brute-force CC optimum (planted, low noise)."""
    from cvpr24.hcc import make_signed_partition

    D, y = make_signed_partition([3, 3, 2], p_flip=0.0, seed=0)
    best = min(cc_cost(D, labels) for labels in all_partitions(8))
    Z = hcc_linkage(D)
    assert cc_cost(D, cut_level(Z, cc_cut(Z, cc_path(D, Z)))) == pytest.approx(best)
    assert cc_cost(D, y) == pytest.approx(best)


# 5. invariances ----------------------------------------------------------------------------


def test_sum_scale_equivariant_not_shift_invariant():
    D = random_signed(40, 21)
    Z = hcc_linkage(D)
    Zs = hcc_linkage(3.7 * D)
    np.testing.assert_array_equal(Zs[:, [0, 1, 3]], Z[:, [0, 1, 3]])
    np.testing.assert_allclose(Zs[:, 2], 3.7 * Z[:, 2], rtol=1e-12, atol=1e-12)
    shifted = D + 1.0 - np.eye(40)
    assert not np.array_equal(hcc_linkage(shifted)[:, :2], Z[:, :2])


@pytest.mark.parametrize("linkage", ["avg", "max", "min"])
def test_variants_shift_invariant_order(linkage):
    D = random_signed(40, 22)
    a = 2.5
    Z = hcc_linkage(D, linkage)
    Zs = hcc_linkage(D + a - a * np.eye(40), linkage)
    np.testing.assert_array_equal(Zs[:, [0, 1, 3]], Z[:, [0, 1, 3]])
    np.testing.assert_allclose(Zs[:, 2], Z[:, 2] + a, atol=1e-10)


@pytest.mark.parametrize("linkage", ["sum", "avg"])
def test_permutation_equivariance(linkage):
    D = random_signed(50, 23, shift=-0.1)
    perm = np.random.default_rng(0).permutation(50)
    Z = hcc_linkage(D, linkage)
    Zp = hcc_linkage(D[np.ix_(perm, perm)], linkage)
    np.testing.assert_allclose(Zp[:, 2], Z[:, 2], atol=1e-10)
    for k in (2, 5, 17):
        labels = cut_level(Z, k)
        labels_p = cut_level(Zp, k)
        assert adjusted_rand_score(labels[perm], labels_p) == 1.0


# 6. ultrametrics ---------------------------------------------------------------------------


def test_level_distance_is_ultrametric_and_cophenet():
    D = random_signed(40, 31, shift=-0.2)
    Z = hcc_linkage(D)
    assert np.any(np.diff(Z[:, 2]) < 0), "want an inversion-heavy tree"
    L = level_distances(Z)
    i, j, k = np.array(list(itertools.permutations(range(40), 3))).T
    assert np.all(L[i, j] <= np.maximum(L[i, k], L[k, j]))
    np.testing.assert_array_equal(L, squareform(cophenet(level_linkage(Z))))


@pytest.mark.parametrize("kind", ["depth", "height"])
def test_other_tree_distances_are_valid_ultrametrics(kind):
    D = random_signed(30, 32)
    Z = hcc_linkage(D)
    Zt = tree_linkage(Z, kind)
    assert np.all(Zt[:, 2] >= 0)
    U = tree_distances(Z, kind)
    np.testing.assert_allclose(U, squareform(cophenet(Zt)))
    i, j, k = np.array(list(itertools.permutations(range(30), 3))).T
    assert np.all(U[i, j] <= np.maximum(U[i, k], U[k, j]) + 1e-12)


# 8. level cut ------------------------------------------------------------------------------


def test_level_cut_exact_cluster_counts():
    D = random_signed(35, 41, shift=-0.3)
    Z = hcc_linkage(D)
    assert np.sum(np.diff(Z[:, 2]) < 0) > 5
    for k in range(1, 36):
        labels = cut_level(Z, k)
        assert len(np.unique(labels)) == k
        np.testing.assert_array_equal(labels, _union_find_cut(Z, k))


def _union_find_cut(Z, k):
    n = Z.shape[0] + 1
    members = {i: {i} for i in range(n)}
    for t in range(n - k):
        members[n + t] = members.pop(int(Z[t, 0])) | members.pop(int(Z[t, 1]))
    labels = np.empty(n, int)
    for c, m in enumerate(sorted(members.values(), key=min)):
        labels[list(m)] = c
    return labels


# 10. bad inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("D, match", [
    (np.zeros((3, 4)), "square"),
    (np.array([[0, 1.0], [2.0, 0]]), "symmetric"),
    (np.array([[1.0, 1], [1, 0]]), "zero diagonal"),
    (np.array([[0, np.nan], [np.nan, 0]]), "NaN"),
    (np.array([[0, np.inf], [np.inf, 0]]), "NaN or infinite"),
    (np.zeros((1, 1)), "at least 2"),
    (np.zeros(4), "condensed"),
])
def test_bad_dissimilarity_raises(D, match):
    with pytest.raises(ValueError, match=match):
        hcc_linkage(D)


def test_bad_sparse_format_and_linkage():
    import scipy.sparse as sp

    with pytest.raises(ValueError, match="sparse format 'lil'"):
        hcc_linkage(sp.lil_matrix(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="linkage must be one of"):
        hcc_linkage(np.zeros((3, 3)), "ward")
    with pytest.raises(ValueError, match="dtype"):
        hcc_linkage(np.zeros((3, 3)), dtype=np.int32)


def test_zero_diagonal_option_and_symmetry_tolerance():
    D = random_signed(10, 5)
    np.fill_diagonal(D, 1.0)
    Z = hcc_linkage(D, zero_diagonal=True)
    np.fill_diagonal(D, 0)
    np.testing.assert_array_equal(Z, hcc_linkage(D))
    D[0, 1] += 1e-13  # within the 1e-10 x scale tolerance
    hcc_linkage(D)


def test_cut_level_bad_arguments():
    Z = hcc_linkage(random_signed(6, 0))
    for k in (0, 7, 2.5, True):
        with pytest.raises(ValueError, match="n_clusters"):
            cut_level(Z, k)
    with pytest.raises(ValueError, match="linkage matrix"):
        cut_level(Z[:, :3], 2)


def test_dendrogram_plot_handles_raw_signed_heights():
    from scipy.cluster.hierarchy import dendrogram

    from cvpr24.hcc import plot_dendrogram

    Z = hcc_linkage(random_signed(25, 3, shift=-0.3))
    assert Z[:, 2].min() < 0 and np.any(np.diff(Z[:, 2]) < 0)
    with pytest.raises(ValueError):  # what users hit with scipy (shap #1402, seaborn #854)
        dendrogram(Z, no_plot=True)
    ax, order = plot_dendrogram(Z, heights="raw")
    assert sorted(order) == list(range(25))
    assert order.tolist() == dendrogram(level_linkage(Z), no_plot=True)["leaves"]
    lowest = min(min(line.get_ydata()) for line in ax.get_lines())
    assert lowest == pytest.approx(Z[:, 2].min())  # inverted, negative merges are drawn as is


def test_feature_matrix_as_precomputed_gets_a_hint():
    with pytest.raises(ValueError, match="feature matrix"):
        hcc_linkage(np.random.default_rng(0).standard_normal((10, 3)))


def test_dendrogram_purity_against_brute_force_and_hierarchy_cost():
    from cvpr24.hcc.linkage import dendrogram_purity, hierarchy_cc_cost

    D = random_signed(18, 51, shift=-0.1)
    Z = hcc_linkage(D)
    y = np.random.default_rng(0).integers(0, 3, 18)
    members = {i: {i} for i in range(18)}
    for t in range(17):
        members[18 + t] = members[int(Z[t, 0])] | members[int(Z[t, 1])]
    values = []
    for i, j in itertools.combinations(range(18), 2):
        if y[i] == y[j]:
            lca = min(v for v, m in members.items() if i in m and j in m and v >= 18)
            values.append(np.mean(y[list(members[lca])] == y[i]))
    assert dendrogram_purity(Z, y) == pytest.approx(np.mean(values))
    perfect = hcc_linkage(np.where(y[:, None] == y[None, :], -1.0, 1.0) * (1 - np.eye(18))
                          + 1e-3 * D)
    assert dendrogram_purity(perfect, y) == pytest.approx(1.0)
    assert hierarchy_cc_cost(D, Z) == pytest.approx(np.sum(cc_path(D, Z)))

"""Hierarchical correlation clustering (HCC): the sum linkage, cuts, CC cost and tree distances.

Notation (docs/hcc.md, Equations): objects ``0..N-1``, signed dissimilarity ``D`` (negative = "same
cluster", positive = "different", zero = no information), partition ``c``.

- Eq. 1, CC cost over unordered pairs:
  ``R(c; D) = sum_{i<j, c_i=c_j} max(D_ij, 0) + sum_{i<j, c_i!=c_j} max(-D_ij, 0)``.
- Eq. 2, a merge of clusters u, v changes it by ``Delta_sum(u, v) = sum_{i in u, j in v} D_ij``.
- Eq. 3, HCC merges ``argmin_{u != v} Delta(u, v)`` and records ``h_t = Delta(u*, v*)``.
- Eq. 4, ``Delta_sum(u+v, w) = Delta_sum(u, w) + Delta_sum(v, w)``.
- Eq. 5, after t merges ``R_t = R_0 + sum_{s<=t} h_s`` with ``R_0 = sum_{i<j} max(-D_ij, 0)``.

``avg`` / ``max`` / ``min`` on a signed D are exactly UPGMA / complete / single linkage (their
merge order ignores where zero is); only ``sum`` reads the sign.

Linkage matrices follow scipy: ``Z[t] = [id_a, id_b, height, size]``, ``id_a < id_b``, row t
creates cluster ``N + t``. ``Z_raw`` holds the signed, possibly non-monotone heights ``h_t``;
``level_linkage(Z_raw)`` replaces them by the levels ``1..N-1`` (a valid monotone linkage
that scipy's ``dendrogram``, ``cophenet`` and ``fcluster`` accept). Flat cuts go by level
(merge order), never by height.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import squareform

from cvpr24.hcc import _kernel
from cvpr24.hcc._validation import check_dissimilarity, check_linkage, check_sparse_dissimilarity

TREE_DISTANCES = ("level", "depth", "height")


def hcc_linkage(
    D,
    linkage: str = "sum",
    *,
    dtype=np.float64,
    zero_diagonal: bool = False,
    force: bool = False,
) -> np.ndarray:
    """Agglomerative clustering of a signed dissimilarity (Eqs. 2-4).

    Parameters
    ----------
    D : array-like of shape (N, N) or (N*(N-1)/2,), or scipy.sparse (N, N)
        **Signed dissimilarity** (not a similarity: pass ``-S`` for a signed similarity S).
        A condensed vector as from ``pdist`` is accepted; a missing sparse pair is 0.
    linkage : {"sum", "avg", "max", "min"}
        ``"sum"`` is HCC, the greedy correlation-clustering step (Eq. 2); the others are
        average / complete / single linkage on the same D.
    dtype : float32 or float64
        dtype of the N x N working matrix (float32 halves the memory).
    zero_diagonal : bool
        Set a non-zero diagonal to 0 instead of raising.
    force : bool
        Allow N > 20000.

    Returns
    -------
    Z : ndarray of shape (N-1, 4)
        scipy-style linkage with the raw signed heights ``h_t`` (may be negative and
        non-monotone for ``"sum"``).

    Examples
    --------
    >>> import numpy as np
    >>> D = np.array([[0., -2, 1], [-2, 0, -1], [1, -1, 0]])
    >>> hcc_linkage(D)
    array([[ 0.,  1., -2.,  2.],
           [ 2.,  3.,  0.,  3.]])
    """
    code = _kernel.METHOD_CODES[check_linkage(linkage)]
    if not sp.issparse(D) and np.ndim(D) == 1:
        D = _square_from_condensed(D)
    W = check_dissimilarity(D, zero_diagonal=zero_diagonal, dtype=dtype, force=force)
    warn_if_tied(W)
    return _kernel.generic_linkage(W, code)


def warn_if_tied(D: np.ndarray, *, sample: int = 20_000, seed: int = 0) -> None:
    """Warn when more than half of (a sample of) the non-zero off-diagonal values are duplicates.

    Pure +-1 inputs are tie-heavy: the tree then depends on the tie-breaking rule (the
    smallest slot pair wins), as it does in scipy. Zeros ("no information", e.g. the missing
    pairs of a sparse graph) are not counted.
    """
    n = D.shape[0]
    if n * (n - 1) // 2 <= 4 * sample:  # every pair once
        values = D[np.triu_indices(n, 1)]
    else:  # random pairs; repeats of the same pair are rare (< 1 in 8)
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, sample)
        j = (i + rng.integers(1, n, sample)) % n  # j != i
        values = D[np.minimum(i, j), np.maximum(i, j)]
    values = values[values != 0]
    if values.size < 10:
        return
    duplicated = 1.0 - np.unique(values).size / values.size
    if duplicated > 0.5:
        warnings.warn(f"about {100 * duplicated:.0f}% of the dissimilarities are tied; merges "
                      "among ties follow the deterministic smallest-slot rule (add small "
                      "magnitude noise if that matters)", UserWarning, stacklevel=3)


def _square_from_condensed(d) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    try:
        return squareform(d, checks=False)
    except ValueError:
        raise ValueError(f"D: a 1-D input must be a condensed vector of length N(N-1)/2, "
                         f"got length {d.shape[0]}") from None


def check_linkage_matrix(Z, name: str = "Z") -> np.ndarray:
    """Validate the layout of a linkage matrix (N-1, 4) and return it as float64."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != 4 or Z.shape[0] < 1:
        raise ValueError(f"{name} must be a linkage matrix of shape (N-1, 4), got {Z.shape}")
    n = Z.shape[0] + 1
    ids = Z[:, :2]
    if np.any(ids != np.floor(ids)) or np.any(ids < 0):
        raise ValueError(f"{name}[:, :2] must hold non-negative integer cluster ids")
    created = n + np.arange(n - 1)
    if np.any(ids.max(axis=1) >= created):
        raise ValueError(f"{name}: row t may only join clusters created before it (ids < N + t)")
    if np.unique(ids).size != 2 * (n - 1):
        raise ValueError(f"{name}: every cluster id must be merged exactly once")
    if not np.all(np.isfinite(Z[:, 2])):
        raise ValueError(f"{name}[:, 2] (heights) must be finite")
    return Z


def level_linkage(Z) -> np.ndarray:
    """``Z`` with heights replaced by the levels ``1..N-1``: a valid monotone linkage."""
    return tree_linkage(Z, "level")


def tree_heights(Z, tree_distance: str = "level") -> np.ndarray:
    """Monotone, non-negative node values of the dendrogram ``Z`` (one per merge).

    Parameters
    ----------
    Z : ndarray of shape (N-1, 4)
    tree_distance : {"level", "depth", "height"}
        ``"level"`` (the paper's): node ``N + t`` has ``L = t + 1``, its position in the merge
        sequence. ``"depth"``: ``L = 1 + max(L(children))``, leaves 0. ``"height"``: raw
        heights made monotone (``max`` with the children's) and shifted to a minimum of 0.

    Returns
    -------
    values : ndarray of shape (N-1,)
        Strictly increasing along every root path for ``"level"`` and ``"depth"``,
        non-decreasing for ``"height"``.
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    if tree_distance == "level":
        return np.arange(1, n, dtype=np.float64)
    if tree_distance not in TREE_DISTANCES:
        raise ValueError(f"tree_distance must be one of {TREE_DISTANCES}, got {tree_distance!r}")
    children = Z[:, :2].astype(np.int64)
    if tree_distance == "depth":
        node = np.zeros(2 * n - 1)  # leaves: depth 0
        for t in range(n - 1):
            node[n + t] = 1 + max(node[children[t, 0]], node[children[t, 1]])
        return node[n:]
    node = np.full(2 * n - 1, -np.inf)  # leaves: no lower bound on their parent
    for t in range(n - 1):
        node[n + t] = max(Z[t, 2], node[children[t, 0]], node[children[t, 1]])
    return node[n:] - node[n:].min()


def tree_linkage(Z, tree_distance: str = "level") -> np.ndarray:
    """``Z`` with its heights replaced by :func:`tree_heights` (a valid scipy linkage)."""
    Z = check_linkage_matrix(Z).copy()
    Z[:, 2] = tree_heights(Z, tree_distance)
    return Z


def tree_distances(Z, tree_distance: str = "level") -> np.ndarray:
    """The ultrametric ``D^T_ij = L(lca(i, j))`` of the dendrogram (Eq. 6), N x N.

    For ``"level"`` this is ``D^L``; it equals ``scipy.cluster.hierarchy.cophenet`` of
    ``level_linkage(Z)``, whatever the signs or inversions of the raw heights.
    """
    values = tree_heights(Z, tree_distance)
    return ultrametric_from_linkage(Z, values)


def level_distances(Z) -> np.ndarray:
    """The level ultrametric ``D^L`` of a dendrogram (Eq. 6): ``tree_distances(Z, "level")``."""
    return tree_distances(Z, "level")


def ultrametric_from_linkage(Z, values) -> np.ndarray:
    """N x N matrix with ``values[t]`` for every pair whose lowest common ancestor is ``N + t``."""
    Z = check_linkage_matrix(Z)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (Z.shape[0],):
        raise ValueError(f"values must have shape ({Z.shape[0]},), got {values.shape}")
    n = Z.shape[0] + 1
    out = np.empty((n, n), dtype=np.float64)
    return _kernel.fill_ultrametric(Z[:, :2].astype(np.int64), values, out)


def cut_level(Z, n_clusters: int) -> np.ndarray:
    """The flat partition after exactly ``N - n_clusters`` merges (a level cut).

    Union-find over ``Z[:N - n_clusters]``; unlike ``scipy.cluster.hierarchy.cut_tree`` it is
    correct for non-monotone (inverted) trees.

    Returns
    -------
    labels : ndarray of int of shape (N,)
        Labels ``0..n_clusters-1`` numbered by first appearance.
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    if (not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool)
            or not 1 <= n_clusters <= n):
        raise ValueError(f"n_clusters must be an integer in [1, N={n}], got {n_clusters!r}")
    parent = np.arange(2 * n - 1)
    for t in range(n - int(n_clusters)):
        a, b = int(Z[t, 0]), int(Z[t, 1])
        parent[a] = parent[b] = n + t
    # follow each leaf to its top cluster (path halving keeps it near-linear)
    roots = np.empty(n, dtype=np.int64)
    for i in range(n):
        r = i
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        roots[i] = r
    return canonical_labels(roots)


def canonical_labels(labels) -> np.ndarray:
    """Relabel to ``0..K-1`` in order of first appearance (equal partitions, equal arrays)."""
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)


def cc_cost(D, labels, *, force: bool = False) -> float:
    """Correlation-clustering cost of a flat partition (Eq. 1), over unordered pairs.

    Parameters
    ----------
    D : array-like of shape (N, N) or scipy.sparse
        Signed dissimilarity.
    labels : array-like of shape (N,)
    force : bool
        Allow a dense D with N > 20000.

    Raises
    ------
    ValueError
        For an invalid D (as the estimators: non-square, asymmetric, NaN or infinite values,
        a non-zero diagonal) or labels of another length.

    Returns
    -------
    float
        ``sum_{i<j same} max(D_ij, 0) + sum_{i<j different} max(-D_ij, 0)``; half the
        ordered-pair value ``1/2 (|D| + D)`` / ``1/2 (|D| - D)`` form.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = labels.shape[0]
    if sp.issparse(D):  # validated without densifying; symmetric: read the upper triangle
        check_sparse_dissimilarity(D, name="D")
        _check_matches(D.shape, n, "labels")
        U = sp.triu(D, k=1).tocoo()
        same = labels[U.row] == labels[U.col]
        return float(np.sum(np.where(same, np.maximum(U.data, 0), np.maximum(-U.data, 0))))
    D = _dense_signed(D, force=force)
    _check_matches(D.shape, n, "labels")
    return float(_kernel.cc_cost_dense(D, canonical_labels(labels)))


def _dense_signed(D, *, force: bool = False) -> np.ndarray:
    """A validated dense signed dissimilarity from an (N, N) array, a condensed vector or sparse."""
    if not sp.issparse(D) and np.ndim(D) == 1:
        D = _square_from_condensed(D)
    return check_dissimilarity(D, name="D", force=force)


def _check_matches(shape: tuple[int, ...], n: int, what: str) -> None:
    if shape != (n, n):
        raise ValueError(f"D must have shape ({n}, {n}) to match {what}, got {shape}")


def cc_path(D, Z, *, force: bool = False) -> np.ndarray:
    """CC cost of every level of the dendrogram ``Z`` over ``D``: ``R_0, R_1, ..., R_{N-1}``.

    ``R_t = R_0 + sum_{s<=t} Delta_sum(u_s, v_s)`` (Eqs. 2 and 5), with the merge costs summed
    from ``D`` block by block (O(N^2) for the whole path, any linkage). For an HCC-``sum``
    tree the merge costs are its heights, so this equals ``R_0 + cumsum(Z[:, 2])``.
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    D = _dense_signed(D, force=force)
    _check_matches(D.shape, n, "Z")
    return _cc_path(D, Z)


def _cc_path(D: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """:func:`cc_path` on an already validated dense D (the estimators' path)."""
    n = D.shape[0]
    r0 = float(_kernel.cc_cost_dense(D, np.arange(n)))  # all singletons: the negative mass
    deltas = _kernel.lca_block_sums(Z[:, :2].astype(np.int64), D)
    return r0 + np.concatenate([[0.0], np.cumsum(deltas)])


def cc_cut(Z, path=None, rule: str = "cc") -> int:
    """Number of clusters of the automatic cut of an HCC dendrogram.

    Parameters
    ----------
    Z : ndarray of shape (N-1, 4)
        An HCC-``sum`` linkage (raw heights).
    path : ndarray of shape (N,), optional
        ``cc_path(D, Z)``; needed for ``rule="cc"``.
    rule : {"cc", "first_positive"}
        ``"cc"``: ``t* = argmin_t R_t`` (ties to the smallest t), the cheapest partition on
        the path. ``"first_positive"``: stop before the first merge with ``h_t > 0`` (the
        greedy CC rule). For ``sum`` trees they agree except on zero-cost merges, which
        ``"first_positive"`` performs and ``"cc"`` does not: once the cheapest Delta is
        positive, every Delta is, and Eq. 4 only adds them, so inversions occur only below 0.

    Returns
    -------
    int
        ``N - t*``.
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    if rule == "cc":
        if path is None:
            raise ValueError("rule='cc' needs path=cc_path(D, Z)")
        return n - int(np.argmin(path))
    if rule == "first_positive":
        positive = np.flatnonzero(Z[:, 2] > 0)
        return n - (int(positive[0]) if positive.size else n - 1)
    raise ValueError(f"rule must be 'cc' or 'first_positive', got {rule!r}")


def hierarchy_cc_cost(D, Z, *, force: bool = False) -> float:
    """CC cost of the whole dendrogram: ``sum_t R_t`` over its N levels (Eq. 5; lower is better)."""
    return float(np.sum(cc_path(D, Z, force=force)))


def dendrogram_purity(Z, y) -> float:
    """Dendrogram purity (Heller and Ghahramani, 2005) of a tree against classes ``y``.

    The mean, over pairs of leaves in the same class c, of the fraction of class-c leaves
    under their lowest common ancestor. 1 when every class is a subtree. Computed per node
    from class counts: O(N K).
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    y = canonical_labels(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match Z, got {y.shape}")
    k = int(y.max()) + 1
    counts = np.zeros((2 * n - 1, k))
    counts[np.arange(n), y] = 1
    total = 0.0
    for t in range(n - 1):
        left, right = counts[int(Z[t, 0])], counts[int(Z[t, 1])]
        node = left + right
        counts[n + t] = node
        total += float(np.sum(left * right * node / node.sum()))  # pairs meeting here, x purity
    class_sizes = np.bincount(y)
    pairs = float(np.sum(class_sizes * (class_sizes - 1) / 2))
    return total / pairs if pairs > 0 else float("nan")

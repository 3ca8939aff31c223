"""Tree-preserving embedding (TPE) and minimax distances for correlation clustering.

- Eq. 6: the level ultrametric ``D^L_ij = L(lca(i, j))`` of a dendrogram (see
  :func:`cvpr24.hcc.linkage.tree_distances`).
- Eq. 7: a zero-diagonal symmetric ``D`` is squared-Euclidean embeddable iff
  ``W = -1/2 J D J`` is positive semi-definite, ``J = I - 11^T / N``; every ultrametric is.
- Eq. 8 (classical MDS): ``W = V Lambda V^T``, ``Y = V_d Lambda_d^{1/2}``. ``D`` is used as
  *squared* distances.
- Eq. 9: an exact explicit embedding of an ultrametric tree, one coordinate per non-root node.
- Eq. 10: minimax dissimilarity ``D^MM_ij = min_paths max_edges D_pq`` = the largest edge on the
  minimum-spanning-tree path = the single-linkage cophenetic value; shift-equivariant (Prop. 2).
- Theorem 1: CC on ``D^MM`` is solved exactly by the connected components of ``{D_ij < 0}``.
- Prop. 3: ``D^MM - m (11^T - I)``, ``m = min_{i != j} D^MM_ij``, is a non-negative ultrametric,
  hence MDS-embeddable.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, eigsh, svds
from scipy.spatial.distance import squareform

from cvpr24.hcc import _kernel
from cvpr24.hcc._validation import check_dissimilarity
from cvpr24.hcc.linkage import (
    canonical_labels,
    check_linkage_matrix,
    tree_heights,
    ultrametric_from_linkage,
)

EIGEN_RTOL = 1e-9  # eigenvalues above -EIGEN_RTOL * lambda_max count as rounding noise


def double_centre(D: np.ndarray) -> np.ndarray:
    """``W = -1/2 J D J`` (Eq. 7) without forming J."""
    D = np.asarray(D, dtype=np.float64)
    row = D.mean(axis=1)
    W = D - row[:, None]
    W -= row[None, :]
    W += row.mean()
    W *= -0.5
    return W


MDS_SOLVERS = ("auto", "dense", "arpack")


def mds_embed(D, n_components: int | None = None, *, square: bool = False,
              check_embeddable: bool = True, solver: str = "auto",
              seed: int = 0, force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Classical MDS of a squared-distance matrix (Eqs. 7-8).

    Parameters
    ----------
    D : array-like of shape (N, N)
        Symmetric, zero diagonal, treated as **squared** Euclidean distances.
    n_components : int, optional
        d. Default: the number of positive eigenvalues (at most N-1). With an int, only the
        top d eigenpairs are computed.
    square : bool
        Square D first (use D as plain distances).
    check_embeddable : bool
        Warn when an eigenvalue below ``-1e-9 lambda_max`` shows that D is not embeddable
        (those directions are dropped).
    solver : {"auto", "dense", "arpack"}
        ``"dense"``: LAPACK ``eigh`` (O(N^3)). ``"arpack"``: Lanczos for the top d eigenpairs
        (O(N^2) per iteration; needs an int ``n_components`` < N-1). ``"auto"``: arpack when
        N > 1000 and d < N / 10.
    seed : int
        Start vector of the Lanczos iteration.
    force : bool
        Allow N > 20000.

    Returns
    -------
    Y : ndarray of shape (N, d)
        ``V_d Lambda_d^{1/2}`` (negative rounding noise clipped to 0).
    eigenvalues : ndarray
        The computed eigenvalues of W, descending (all N, or the top d).
    """
    D = check_dissimilarity(D, name="D", force=force)
    if square:
        D = D * D
    n = D.shape[0]
    if n_components is not None and (
            not isinstance(n_components, (int, np.integer)) or not 1 <= n_components <= n):
        raise ValueError(f"n_components must be None or an integer in [1, N={n}], got {n_components!r}")
    if solver not in MDS_SOLVERS:
        raise ValueError(f"solver must be one of {MDS_SOLVERS}, got {solver!r}")
    if solver == "auto":
        solver = "arpack" if n_components is not None and n > 1000 and n_components < n / 10 else "dense"
    if solver == "arpack" and (n_components is None or n_components >= n - 1):
        raise ValueError("solver='arpack' needs an integer n_components < N - 1")
    W = double_centre(D)
    del D
    if solver == "arpack":
        v0 = np.random.default_rng(seed).standard_normal(n)
        lam, V = eigsh(W, k=n_components, which="LA", v0=v0)
        order = np.argsort(lam)
        lam, V = lam[order], V[:, order]
    elif n_components is None or n_components >= n:
        lam, V = scipy.linalg.eigh(W, overwrite_a=True, check_finite=False)
    else:
        lam, V = scipy.linalg.eigh(W, subset_by_index=[n - n_components, n - 1],
                                   overwrite_a=True, check_finite=False)
    lam, V = lam[::-1], V[:, ::-1]
    top = max(float(lam[0]), 0.0)
    if check_embeddable and n_components is None and lam[-1] < -EIGEN_RTOL * max(top, 1e-300):
        warnings.warn(f"D is not squared-Euclidean embeddable: smallest eigenvalue {lam[-1]:.3g} "
                      f"(largest {top:.3g}); its negative directions are dropped", UserWarning,
                      stacklevel=2)
    positive = lam > EIGEN_RTOL * top
    d = int(positive.sum()) if n_components is None else int(n_components)
    Y = V[:, :d] * np.sqrt(np.clip(lam[:d], 0, None))
    return Y, lam


def explicit_tree_embedding(Z, tree_distance: str = "level") -> sp.csr_matrix:
    """The exact sparse embedding of a dendrogram's ultrametric (Eq. 9).

    Every non-root node v gets a coordinate; leaf i has ``y_i[v] = sqrt((L(parent(v)) - L(v))/2)``
    for each v on its path to the root (leaves have L = 0), so ``||y_i - y_j||^2 = L(lca(i, j))``.

    Returns
    -------
    Y : scipy.sparse.csr_matrix of shape (N, 2N-2)
        Column v is node v (leaves ``0..N-1``, then internal nodes ``N..2N-3``). Its number of
        stored values is the sum of the cluster sizes, O(N * depth).
    """
    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    level = np.concatenate([np.zeros(n), tree_heights(Z, tree_distance)])  # L per node id
    children = Z[:, :2].astype(np.int64)
    parent = np.empty(2 * n - 1, dtype=np.int64)
    parent[children[:, 0]] = parent[children[:, 1]] = n + np.arange(n - 1)
    order, start, size = _kernel.leaf_order(children)
    nodes = np.arange(2 * n - 2)  # every node but the root
    weight = np.sqrt((level[parent[nodes]] - level[nodes]) / 2)
    rows = np.concatenate([order[start[v]:start[v] + size[v]] for v in nodes])
    cols = np.repeat(nodes, size[nodes])
    vals = np.repeat(weight, size[nodes])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, 2 * n - 2))


def pca_sparse(Y: sp.spmatrix, n_components: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top principal components of a sparse matrix, centred implicitly (no dense copy).

    Returns the scores ``U S`` (N, d) and the eigenvalues ``S^2`` of the centred Gram matrix,
    which equal those of MDS on the matrix's squared distances.
    """
    Y = sp.csr_matrix(Y)
    n, p = Y.shape
    if not 1 <= n_components < min(n, p):
        raise ValueError(f"n_components must be in [1, {min(n, p) - 1}], got {n_components!r}")
    mean = np.asarray(Y.mean(axis=0)).ravel()
    ones = np.ones(n)
    Yt = Y.T.tocsr()
    op = LinearOperator(
        (n, p), dtype=np.float64,
        matvec=lambda v: Y @ np.ravel(v) - ones * (mean @ np.ravel(v)),
        rmatvec=lambda u: Yt @ np.ravel(u) - mean * np.sum(u),
    )
    v0 = np.random.default_rng(seed).standard_normal(min(n, p))
    U, s, _ = svds(op, k=n_components, v0=v0)
    idx = np.argsort(s)[::-1]
    return U[:, idx] * s[idx], s[idx] ** 2


def minimax_linkage(D, *, force: bool = False) -> np.ndarray:
    """Single-linkage tree of a signed D (scipy's O(N^2) MST algorithm, raw signed heights).

    scipy's ``linkage`` accepts negative condensed values; no shift is applied, so no
    precision is lost and csgraph's "zero = missing edge" rule never applies.
    """
    D = check_dissimilarity(D, name="D", force=force)
    return scipy_linkage(squareform(D, checks=False), method="single")


def minimax_distances(D, *, force: bool = False) -> np.ndarray:
    """Minimax dissimilarity ``D^MM`` of a signed D (Eq. 10), N x N, in O(N^2).

    ``D^MM_ij`` is the largest edge on the minimum-spanning-tree path from i to j.
    """
    Z = minimax_linkage(D, force=force)
    return ultrametric_from_linkage(Z, Z[:, 2])


def minimax_cc_labels(D, *, force: bool = False) -> np.ndarray:
    """The exact CC optimum on ``D^MM`` (Theorem 1): components of the graph ``{D_ij < 0}``.

    Its CC cost on ``D^MM`` is 0, the global minimum. Labels are numbered by first appearance.
    """
    neg = sp.csr_matrix(check_dissimilarity(D, name="D", force=force) < 0)
    _, components = connected_components(neg, directed=False)
    return canonical_labels(components)


def minimax_embedding_matrix(D_mm: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """``D^MM - m (11^T - I) + offset (11^T - I)``: the embeddable shift of Prop. 3."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0 (a shift below min D^MM is not embeddable), got {offset!r}")
    n = D_mm.shape[0]
    off = ~np.eye(n, dtype=bool)
    m = float(D_mm[off].min())
    out = D_mm - m + offset
    np.fill_diagonal(out, 0)
    return out

"""scikit-learn estimators: HCC, tree-preserving embedding, minimax embedding and minimax CC.

**``metric="precomputed"`` means X is a signed dissimilarity** (N x N, symmetric, zero
diagonal; negative = "same cluster", positive = "different", 0 = no information). It is
*not* a similarity (pass ``-S``) and not an unsigned distance (subtract a shift, or pass
features with ``metric`` and ``shift``). ``scipy.sparse`` input (csr/csc/coo) is accepted:
a missing pair is 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from cvpr24.hcc import _kernel
from cvpr24.hcc._validation import (
    SPARSE_FORMATS,
    _check_size,
    check_dissimilarity,
    check_dtype,
    check_linkage,
)
from cvpr24.hcc.data import signed_from_features
from cvpr24.hcc.embedding import (
    explicit_tree_embedding,
    mds_embed,
    minimax_cc_labels,
    minimax_distances,
    minimax_embedding_matrix,
    pca_sparse,
)
from cvpr24.hcc.linkage import (
    TREE_DISTANCES,
    _cc_path,
    canonical_labels,
    cc_cut,
    cut_level,
    level_linkage,
    tree_distances,
    warn_if_tied,
)

EMBED_SOLVERS = ("eigh", "explicit")


@dataclass
class HCCConfig:
    """The method's settings; there is no training and no weights.

    ``HCCConfig().clusterer()`` / ``.embedder()`` build the configured estimators.
    """

    linkage: str = "sum"  # sum (HCC) | avg | max | min
    n_clusters: int | str = "cc"  # int, "cc" or "first_positive"
    tree_distance: str = "level"  # level (paper) | depth | height
    n_components: int | None = None  # None: every positive eigenvalue
    embed_solver: str = "eigh"  # eigh | explicit (sparse Eq. 9 + truncated SVD)
    shift: float | str | None = None  # feature input: theta or "mean" / "median" / "quantile:q" / "inv_k"
    metric: str = "precomputed"  # or any scipy pdist metric for feature input
    dtype: str = "float64"  # of the N x N working matrix

    def clusterer(self) -> HierarchicalCorrelationClustering:
        return HierarchicalCorrelationClustering(
            n_clusters=self.n_clusters, linkage=self.linkage, metric=self.metric,
            shift=self.shift, dtype=self.dtype)

    def embedder(self) -> TreePreservingEmbedding:
        return TreePreservingEmbedding(
            n_components=self.n_components, linkage=self.linkage,
            tree_distance=self.tree_distance, solver=self.embed_solver, metric=self.metric,
            shift=self.shift, dtype=self.dtype)

    def to_dict(self) -> dict:
        return asdict(self)


class _SignedInputMixin:
    """Turns ``fit``'s X into a dense signed dissimilarity (``metric``, ``shift``)."""

    def _fingerprint(self, D: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(D).tobytes()).hexdigest()

    def _signed_dissimilarity(self, X, n_clusters=None, reset: bool = True) -> np.ndarray:
        dtype = check_dtype(self.dtype)
        for flag in ("zero_diagonal", "force"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.metric == "precomputed":
            if sp.issparse(X) and X.format not in SPARSE_FORMATS:
                check_dissimilarity(X, name="X")  # raises, naming the format
            X = validate_data(self, X, accept_sparse=list(SPARSE_FORMATS), reset=reset,
                              dtype=[np.float64, np.float32], ensure_min_samples=2)
            if reset:
                self.shift_ = None
            return check_dissimilarity(X, name="X", zero_diagonal=self.zero_diagonal, dtype=dtype,
                                       force=self.force)
        if not isinstance(self.metric, str):
            raise ValueError(f"metric must be 'precomputed' or a scipy pdist metric name, got {self.metric!r}")
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=reset)
        _check_size(X.shape[0], "X", self.force, dtype)
        if not reset:
            return signed_from_features(X, self.metric, self.shift_, dtype=dtype)[0]
        D, self.shift_ = signed_from_features(X, self.metric, self.shift, n_clusters=n_clusters,
                                              dtype=dtype)
        return D

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.metric == "precomputed"
        tags.input_tags.sparse = self.metric == "precomputed"
        return tags


class _TransductiveTransformMixin:
    """``transform`` for embeddings of the fitted objects only (like MDS, no out-of-sample)."""

    def transform(self, X):
        """Return ``embedding_`` when X is the data passed to ``fit``.

        The embedding is transductive: a new object has no place in the fitted tree (or
        minimax graph), so any other X raises ValueError. This makes the estimator usable as
        a ``Pipeline`` step (``fit_predict``, ``predict`` on the training data).
        """
        check_is_fitted(self, "embedding_")
        D = self._signed_dissimilarity(X, reset=False)
        if self._fingerprint(D) != self.fingerprint_:
            raise ValueError(f"{type(self).__name__} is transductive: transform(X) accepts only "
                             "the X passed to fit; refit on the new objects instead")
        return self.embedding_


class HierarchicalCorrelationClustering(_SignedInputMixin, ClusterMixin, BaseEstimator):
    """Hierarchical correlation clustering (HCC) of signed dissimilarities.

    Agglomerates by the greedy correlation-clustering step: at every level it merges the two
    clusters whose union lowers the CC cost most (Eq. 3, ``linkage="sum"``), and cuts the
    dendrogram at a given number of clusters or at the cheapest CC cost on the path.

    Parameters
    ----------
    n_clusters : int, "cc" or "first_positive", default="cc"
        An int K cuts the tree after N - K merges (a level cut). ``"cc"`` picks the level of
        lowest CC cost (Eq. 5); ``"first_positive"`` stops before the first merge that raises
        the cost.
    linkage : {"sum", "avg", "max", "min"}, default="sum"
        ``"sum"`` is HCC; the others are average / complete / single linkage on the same D.
    metric : str, default="precomputed"
        ``"precomputed"``: **X is a signed dissimilarity** (N x N). Otherwise a
        ``scipy.spatial.distance.pdist`` metric and X holds features: ``D = d(x_i, x_j) - shift``.
    shift : float or str, optional
        theta for feature input: a number, ``"mean"``, ``"median"``, ``"quantile:<q>"`` or
        ``"inv_k"`` (the (1/K)-quantile; needs an integer ``n_clusters``). Required with
        features: HCC-``sum`` is not shift-invariant, so theta decides the result.
    zero_diagonal : bool, default=False
        Set a non-zero diagonal of a precomputed X to 0 instead of raising.
    dtype : {"float64", "float32"}, default="float64"
        dtype of the N x N working matrix.
    force : bool, default=False
        Allow N > 20000: the dense N x N working matrices then need ``N^2 * itemsize`` bytes
        each (about 24 GiB per copy at N = 80 000 in float32).

    Attributes
    ----------
    labels_ : ndarray of shape (N,)
        Flat labels, numbered by first appearance.
    n_clusters_ : int
    children_ : ndarray of shape (N-1, 2)
        The merged node ids at each step (scikit-learn / scipy layout: ids >= N are the nodes
        created at step ``id - N``).
    distances_ : ndarray of shape (N-1,)
        Raw signed merge values ``h_t`` (may be negative and non-monotone).
    linkage_matrix_ : ndarray of shape (N-1, 4)
        scipy-style ``Z`` with the raw heights.
    linkage_matrix_level_ : ndarray of shape (N-1, 4)
        ``Z`` with heights ``1..N-1``: valid for ``scipy.cluster.hierarchy.dendrogram`` /
        ``cophenet`` / ``fcluster``.
    cc_path_ : ndarray of shape (N,)
        CC cost ``R_t`` after t merges (Eq. 5), unordered pairs.
    cc_cost_ : float
        CC cost of ``labels_``.
    shift_ : float or None
        theta used for feature input.
    n_features_in_ : int

    See Also
    --------
    sklearn.cluster.AgglomerativeClustering : unsigned hierarchical clustering.
    TreePreservingEmbedding : vectors whose geometry is this dendrogram.

    Examples
    --------
    >>> import numpy as np
    >>> from cvpr24.hcc import HierarchicalCorrelationClustering
    >>> D = np.ones((5, 5)) - np.eye(5)
    >>> D[0, 1] = D[1, 0] = -2; D[3, 4] = D[4, 3] = -1.8
    >>> D[0, 2] = D[2, 0] = D[1, 2] = D[2, 1] = -1.5
    >>> HierarchicalCorrelationClustering().fit(D).labels_
    array([0, 0, 0, 1, 1])
    """

    def __init__(self, n_clusters="cc", *, linkage="sum", metric="precomputed", shift=None,
                 zero_diagonal=False, dtype="float64", force=False):
        self.n_clusters = n_clusters
        self.linkage = linkage
        self.metric = metric
        self.shift = shift
        self.zero_diagonal = zero_diagonal
        self.dtype = dtype
        self.force = force

    def fit(self, X, y=None):
        """Build the dendrogram of X and cut it.

        Parameters
        ----------
        X : array-like or sparse of shape (N, N), or (N, p) features with ``metric``
        y : ignored
        """
        check_linkage(self.linkage)
        k = self.n_clusters
        if isinstance(k, str):
            if k not in ("cc", "first_positive"):
                raise ValueError(f"n_clusters must be an int, 'cc' or 'first_positive', got {k!r}")
        elif not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"n_clusters must be a positive int, 'cc' or 'first_positive', got {k!r}")
        D = self._signed_dissimilarity(X, n_clusters=k)
        n = D.shape[0]
        if not isinstance(k, str) and k > n:
            raise ValueError(f"n_clusters={k} exceeds the number of samples N={n}")
        warn_if_tied(D)
        Z = _kernel.generic_linkage(D.copy(), _kernel.METHOD_CODES[self.linkage])
        self.cc_path_ = _cc_path(D, Z)
        self.n_clusters_ = int(k) if not isinstance(k, str) else cc_cut(Z, self.cc_path_, rule=k)
        self.labels_ = cut_level(Z, self.n_clusters_)
        self.cc_cost_ = float(_kernel.cc_cost_dense(D, canonical_labels(self.labels_)))
        self.linkage_matrix_ = Z
        self.linkage_matrix_level_ = level_linkage(Z)
        self.children_ = Z[:, :2].astype(np.intp)
        self.distances_ = Z[:, 2].copy()
        return self

    def fit_predict(self, X, y=None):
        """Fit and return ``labels_``."""
        return self.fit(X).labels_


class TreePreservingEmbedding(_TransductiveTransformMixin, _SignedInputMixin, TransformerMixin,
                              BaseEstimator):
    """Tree-preserving embedding (TPE): vectors whose squared distances are the HCC tree's levels.

    Builds the HCC dendrogram, takes its level ultrametric ``D^L_ij = L(lca(i, j))`` (Eq. 6),
    and embeds it exactly by classical MDS (Eqs. 7-8), so GMM or any vector method can run on
    the tree. Transductive, like :class:`sklearn.manifold.MDS`: ``transform`` accepts only the
    fitted X (so a ``Pipeline`` with it can ``fit``, ``fit_predict`` and ``predict`` on it).

    Parameters
    ----------
    n_components : int, optional
        d. Default: every positive eigenvalue (up to N-1).
    linkage : {"sum", "avg", "max", "min"}, default="sum"
    tree_distance : {"level", "depth", "height"}, default="level"
        ``"level"`` is the paper's; ``"depth"`` and ``"height"`` (monotone closure of the raw
        heights) are ablations. All three are ultrametrics.
    solver : {"eigh", "explicit"}, default="eigh"
        ``"eigh"``: MDS by eigendecomposition of ``-1/2 J D^L J`` (LAPACK, or Lanczos for the
        top d when N > 1000 and d < N/10). ``"explicit"``: the sparse exact embedding of Eq. 9
        and its top principal components (needs an int ``n_components``); same spectrum, no
        N x N eigendecomposition.
    metric, shift, zero_diagonal, dtype, force
        As in :class:`HierarchicalCorrelationClustering`.

    Attributes
    ----------
    embedding_ : ndarray of shape (N, d)
    eigenvalues_ : ndarray
        Eigenvalues of ``-1/2 J D^L J``, descending (all N for ``"eigh"`` with d=None).
    linkage_matrix_ : ndarray of shape (N-1, 4)
        The dendrogram, raw heights.
    shift_ : float or None
    n_features_in_ : int

    Examples
    --------
    >>> from sklearn.mixture import GaussianMixture
    >>> from sklearn.pipeline import Pipeline
    >>> from cvpr24.hcc import TreePreservingEmbedding, make_signed_partition
    >>> D, y = make_signed_partition([20, 15], p_flip=0.1, seed=0)
    >>> pipe = Pipeline([("tpe", TreePreservingEmbedding(n_components=5)),
    ...                  ("gmm", GaussianMixture(2, random_state=0))])
    >>> pipe.fit_predict(D).shape
    (35,)
    """

    def __init__(self, n_components=None, *, linkage="sum", tree_distance="level", solver="eigh",
                 metric="precomputed", shift=None, zero_diagonal=False, dtype="float64",
                 force=False):
        self.n_components = n_components
        self.linkage = linkage
        self.tree_distance = tree_distance
        self.solver = solver
        self.metric = metric
        self.shift = shift
        self.zero_diagonal = zero_diagonal
        self.dtype = dtype
        self.force = force

    def fit(self, X, y=None):
        """Compute ``embedding_``; see :meth:`fit_transform`."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Build the tree of X and return its embedding (N, d)."""
        check_linkage(self.linkage)
        if self.tree_distance not in TREE_DISTANCES:
            raise ValueError(f"tree_distance must be one of {TREE_DISTANCES}, got {self.tree_distance!r}")
        if self.solver not in EMBED_SOLVERS:
            raise ValueError(f"solver must be one of {EMBED_SOLVERS}, got {self.solver!r}")
        if self.solver == "explicit" and not isinstance(self.n_components, (int, np.integer)):
            raise ValueError("solver='explicit' needs an integer n_components")
        D = self._signed_dissimilarity(X)
        _check_n_components(self.n_components, D.shape[0])
        self.fingerprint_ = self._fingerprint(D)
        Z = _kernel.generic_linkage(D, _kernel.METHOD_CODES[self.linkage])
        del D
        if self.solver == "eigh":
            Y, lam = mds_embed(tree_distances(Z, self.tree_distance), self.n_components,
                               force=self.force)
        else:
            Y, lam = pca_sparse(explicit_tree_embedding(Z, self.tree_distance), int(self.n_components))
        self.linkage_matrix_ = Z
        self.embedding_ = Y
        self.eigenvalues_ = lam
        return Y


class MinimaxEmbedding(_TransductiveTransformMixin, _SignedInputMixin, TransformerMixin,
                       BaseEstimator):
    """Vectors whose squared distances are the (shifted) minimax dissimilarities (Prop. 3).

    ``D^MM`` (Eq. 10) is computed through the minimum spanning tree in O(N^2), shifted to a
    minimum of ``offset`` off the diagonal, and embedded exactly by classical MDS. It captures
    elongated, transitive clusters; a single wrong negative edge chains clusters, so it is the
    wrong tool for sign-flip noise.

    Parameters
    ----------
    n_components : int, optional
        d. Default: every positive eigenvalue.
    offset : float, default=0.0
        Constant added off the diagonal after shifting the minimum to 0 (any offset >= 0
        keeps it embeddable).
    metric, shift, zero_diagonal, dtype, force
        As in :class:`HierarchicalCorrelationClustering`.

    Attributes
    ----------
    embedding_ : ndarray of shape (N, d)
    eigenvalues_ : ndarray
    shift_ : float or None
    n_features_in_ : int
    """

    def __init__(self, n_components=None, *, offset=0.0, metric="precomputed", shift=None,
                 zero_diagonal=False, dtype="float64", force=False):
        self.n_components = n_components
        self.offset = offset
        self.metric = metric
        self.shift = shift
        self.zero_diagonal = zero_diagonal
        self.dtype = dtype
        self.force = force

    def fit(self, X, y=None):
        """Compute ``embedding_``; see :meth:`fit_transform`."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Return the minimax embedding (N, d) of X."""
        if not isinstance(self.offset, (int, float, np.integer, np.floating)) or not self.offset >= 0:
            raise ValueError(f"offset must be a number >= 0, got {self.offset!r}")
        D = self._signed_dissimilarity(X)
        _check_n_components(self.n_components, D.shape[0])
        self.fingerprint_ = self._fingerprint(D)
        M = minimax_embedding_matrix(minimax_distances(D, force=self.force), float(self.offset))
        self.embedding_, self.eigenvalues_ = mds_embed(M, self.n_components, force=self.force)
        return self.embedding_


class MinimaxCorrelationClustering(_SignedInputMixin, ClusterMixin, BaseEstimator):
    """Exact correlation clustering of the minimax dissimilarities (Theorem 1), in O(N^2).

    The partition is the connected components of the graph of negative pairs; its CC cost on
    ``D^MM`` is 0, the global optimum (unique up to pairs with ``D^MM = 0``).

    Parameters
    ----------
    metric, shift, zero_diagonal, dtype, force
        As in :class:`HierarchicalCorrelationClustering`; for features ``shift`` is required
        (``"inv_k"`` is not available: there is no K).

    Attributes
    ----------
    labels_ : ndarray of shape (N,)
    n_clusters_ : int
    shift_ : float or None
    n_features_in_ : int
    """

    def __init__(self, *, metric="precomputed", shift=None, zero_diagonal=False, dtype="float64",
                 force=False):
        self.metric = metric
        self.shift = shift
        self.zero_diagonal = zero_diagonal
        self.dtype = dtype
        self.force = force

    def fit(self, X, y=None):
        """Cluster X."""
        D = self._signed_dissimilarity(X)
        self.labels_ = minimax_cc_labels(D, force=self.force)
        self.n_clusters_ = int(self.labels_.max()) + 1
        return self

    def fit_predict(self, X, y=None):
        """Fit and return ``labels_``."""
        return self.fit(X).labels_


def _check_n_components(n_components, n: int) -> None:
    if n_components is None:
        return
    if (not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool)
            or not 1 <= n_components <= n):
        raise ValueError(f"n_components must be None or an integer in [1, N={n}], got {n_components!r}")


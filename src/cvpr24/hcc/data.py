"""Loaders for the formats signed pairwise data comes in, and the planted-partition generator.

Formats (docs/hcc.md, Command line):

- dense ``.npy`` (N x N), condensed ``.npy`` (length N(N-1)/2, as from ``pdist``), dense CSV;
- ``scipy.sparse`` ``.npz`` (``save_npz``): a missing pair is 0, "no information";
- SNAP signed networks (Epinions, Slashdot): ``FromNodeId<TAB>ToNodeId<TAB>Sign`` with ``#``
  comments, arbitrary integer ids, sign in {-1, +1} (+1 = trust = *similar*);
- CSV edge lists ``i,j,weight`` (optional header; ids may be any tokens);
- feature matrices (``.npy`` / CSV) turned signed by a shift (``signed_from_features``).

Edge lists are remapped to ``0..N-1`` (sorted original ids); :class:`SignedGraph` reports the
mapping and what was merged or dropped. Nothing here unpickles: ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import pdist, squareform

from cvpr24.common import atomic_path, atomic_write
from cvpr24.hcc._validation import check_dissimilarity, check_features

EDGELIST_FORMATS = ("snap", "csv")
SYMMETRIZE = ("sum", "mean", "sign")
VALUE_KINDS = ("similarity", "dissimilarity")


@dataclass
class SignedGraph:
    """A signed graph read from an edge list.

    Attributes
    ----------
    D : scipy.sparse.csr_matrix of shape (N, N)
        Signed **dissimilarity**, symmetric, zero diagonal (a similarity file is negated).
    ids : ndarray of shape (N,)
        ``ids[k]`` is the original id of object k.
    n_lines : int
        Edge lines read.
    n_self_loops : int
        Lines with i == j (dropped).
    n_duplicates : int
        Lines that repeat an unordered pair already seen (both directions count as one pair).
    n_conflicts : int
        Pairs given with both a positive and a negative value.
    """

    D: sp.csr_matrix
    ids: np.ndarray
    n_lines: int
    n_self_loops: int
    n_duplicates: int
    n_conflicts: int

    @property
    def n(self) -> int:
        return self.D.shape[0]

    def summary(self) -> str:
        return (f"{self.n} objects, {self.D.nnz // 2} pairs from {self.n_lines} lines "
                f"({self.n_self_loops} self-loops dropped, {self.n_duplicates} duplicates merged, "
                f"{self.n_conflicts} conflicting pairs)")


def load_signed_edgelist(
    path,
    fmt: str = "snap",
    *,
    values: str = "similarity",
    symmetrize: str = "sum",
    strict: bool = False,
    n: int | None = None,
) -> SignedGraph:
    """Read a signed edge list into a sparse signed dissimilarity.

    Parameters
    ----------
    path : path-like
    fmt : {"snap", "csv"}
        ``"snap"``: whitespace-separated ``from to sign`` with ``#`` comments, integer ids,
        sign in {-1, +1}. ``"csv"``: ``i,j,weight`` rows, an optional header, any id tokens.
    values : {"similarity", "dissimilarity"}
        What a positive value means: ``"similarity"`` (trust, "same", the SNAP convention;
        D = -value) or ``"dissimilarity"`` (D = value).
    symmetrize : {"sum", "mean", "sign"}
        How repeated pairs (including ``i->j`` and ``j->i``) combine: their sum, mean, or the
        sign of their sum.
    strict : bool
        Raise on a pair given with both signs instead of combining it.
    n : int, optional
        Ids are already ``0..n-1`` integers: keep them (no remapping) and use N = n.

    Returns
    -------
    SignedGraph
    """
    if fmt not in EDGELIST_FORMATS:
        raise ValueError(f"fmt must be one of {EDGELIST_FORMATS}, got {fmt!r}")
    if values not in VALUE_KINDS:
        raise ValueError(f"values must be one of {VALUE_KINDS}, got {values!r}")
    if symmetrize not in SYMMETRIZE:
        raise ValueError(f"symmetrize must be one of {SYMMETRIZE}, got {symmetrize!r}")
    path = Path(path)
    src, dst, w = _read_snap(path) if fmt == "snap" else _read_csv_edges(path)
    n_lines = len(w)
    if n is not None:
        ids, i, j = _identity_ids(src, dst, n, path)
    else:
        ids, inverse = _unique_ids(np.concatenate([src, dst]))
        i, j = inverse[:n_lines], inverse[n_lines:]
    loop = i == j
    i, j, w = i[~loop], j[~loop], w[~loop]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    N = len(ids)
    key = lo * N + hi
    uniq, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    total = np.bincount(inv, weights=w, minlength=len(uniq))
    has_pos = np.bincount(inv, weights=w > 0, minlength=len(uniq)) > 0
    has_neg = np.bincount(inv, weights=w < 0, minlength=len(uniq)) > 0
    conflicts = has_pos & has_neg
    if strict and conflicts.any():
        bad = int(uniq[np.flatnonzero(conflicts)[0]])
        raise ValueError(f"{path}: pair ({ids[bad // N]}, {ids[bad % N]}) is given with both signs "
                         f"({int(conflicts.sum())} such pairs); pass strict=False to combine them "
                         f"with symmetrize={symmetrize!r}")
    combined = {"sum": total, "mean": total / counts, "sign": np.sign(total)}[symmetrize]
    if values == "similarity":
        combined = -combined
    r, c = uniq // N, uniq % N
    D = sp.coo_matrix((np.concatenate([combined, combined]), (np.concatenate([r, c]),
                                                              np.concatenate([c, r]))), shape=(N, N))
    D = D.tocsr()
    D.eliminate_zeros()
    return SignedGraph(D, ids, n_lines, int(loop.sum()), int(np.sum(counts - 1)), int(conflicts.sum()))


def _read_snap(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: a SNAP signed edge is 'from to sign' (3 columns), "
                                 f"got {len(parts)} columns: {line!r}")
            try:
                a, b, s = int(parts[0]), int(parts[1]), int(float(parts[2]))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: SNAP ids and sign must be integers, got {line!r}") from None
            if s not in (-1, 1) or float(parts[2]) != s:
                raise ValueError(f"{path}:{lineno}: a SNAP sign must be -1 or 1, got {parts[2]!r}")
            rows.append((a, b, s))
    if not rows:
        raise ValueError(f"{path}: no edges found")
    arr = np.asarray(rows, dtype=np.int64)
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(np.float64)


def _read_csv_edges(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src, dst, w = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 3:
                raise ValueError(f"{path}: row {k + 1} must be 'i,j,weight' (3 columns), got "
                                 f"{len(row)} columns: {row!r}")
            try:
                value = float(row[2])
            except ValueError:
                if k == 0:  # a header
                    continue
                raise ValueError(f"{path}: row {k + 1} has a non-numeric weight {row[2]!r}") from None
            if not np.isfinite(value):
                raise ValueError(f"{path}: row {k + 1} has a non-finite weight {row[2]!r}")
            src.append(row[0].strip())
            dst.append(row[1].strip())
            w.append(value)
    if not w:
        raise ValueError(f"{path}: no edges found")
    return _as_int_if_possible(src), _as_int_if_possible(dst), np.asarray(w, dtype=np.float64)


def _as_int_if_possible(tokens: list[str]) -> np.ndarray:
    try:
        return np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        return np.asarray(tokens, dtype=object)


def _unique_ids(all_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if all_ids.dtype == object:  # mixed int-like and text ids: compare as text
        all_ids = all_ids.astype(str)
    ids, inverse = np.unique(all_ids, return_inverse=True)
    return ids, inverse.astype(np.int64)


def _identity_ids(src, dst, n: int, path: Path):
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if src.dtype == object or dst.dtype == object:
        raise ValueError(f"{path}: n={n} needs integer ids 0..n-1")
    lo, hi = min(src.min(), dst.min()), max(src.max(), dst.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{path}: ids must lie in [0, n={n}) when n is given, found {lo}..{hi}")
    return np.arange(n), src.astype(np.int64), dst.astype(np.int64)


def save_signed_edgelist(path, D, fmt: str = "snap", *, values: str = "similarity", ids=None) -> None:
    """Write the non-zero upper-triangle pairs of a signed dissimilarity as an edge list.

    SNAP needs ``D`` with values in {-1, 0, +1}. Written atomically.
    """
    if fmt not in EDGELIST_FORMATS:
        raise ValueError(f"fmt must be one of {EDGELIST_FORMATS}, got {fmt!r}")
    if values not in VALUE_KINDS:
        raise ValueError(f"values must be one of {VALUE_KINDS}, got {values!r}")
    U = sp.triu(sp.csr_matrix(D), k=1).tocoo()
    ids = np.arange(D.shape[0]) if ids is None else np.asarray(ids)
    w = -U.data if values == "similarity" else U.data
    if fmt == "snap" and not np.all(np.isin(w, (-1, 1))):
        raise ValueError("D: the SNAP format holds signs only (values in {-1, 0, 1})")
    with atomic_write(path) as f:
        if fmt == "snap":
            f.write("# FromNodeId\tToNodeId\tSign\n")
            for a, b, v in zip(U.row, U.col, w, strict=True):
                f.write(f"{ids[a]}\t{ids[b]}\t{int(v)}\n")
        else:
            f.write("i,j,weight\n")
            for a, b, v in zip(U.row, U.col, w, strict=True):
                f.write(f"{ids[a]},{ids[b]},{float(v)!r}\n")


def load_signed_matrix(path, *, zero_diagonal: bool = False):
    """Load a signed dissimilarity: dense/condensed ``.npy``, sparse ``.npz``, or a dense text
    matrix (comma or whitespace separated, any other suffix).

    Returns
    -------
    ndarray of shape (N, N) or scipy.sparse.csr_matrix
        Validated: square, symmetric, finite, zero diagonal (or zeroed if asked).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        A = _load_npy(path)
        if A.ndim == 1:
            try:
                A = squareform(np.asarray(A, dtype=np.float64), checks=False)
            except ValueError:
                raise ValueError(f"{path}: a 1-D array must be a condensed vector of length "
                                 f"N(N-1)/2, got length {A.shape[0]}") from None
        return check_dissimilarity(A, name=str(path), zero_diagonal=zero_diagonal)
    if suffix == ".npz":
        try:
            S = sp.load_npz(path)
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"{path}: not a scipy.sparse .npz file (write it with "
                             f"scipy.sparse.save_npz): {e}") from None
        S = S.tocsr().astype(np.float64)
        check_dissimilarity(S, name=str(path), zero_diagonal=zero_diagonal)
        if zero_diagonal:
            S.setdiag(0)
            S.eliminate_zeros()
        return S
    A = _load_text_table(path, "a square numeric matrix")
    return check_dissimilarity(A, name=str(path), zero_diagonal=zero_diagonal)


def text_delimiter(path) -> str | None:
    """``","`` when the first data line (not empty, not a ``#`` comment) holds a comma, else
    None (whitespace)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                return "," if "," in line else None
    return None


def _load_text_table(path: Path, expected: str, skiprows: int = 0) -> np.ndarray:
    """A numeric text table (comma or whitespace separated), errors naming ``path``."""
    try:
        return np.loadtxt(path, delimiter=text_delimiter(path), ndmin=2, skiprows=skiprows)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected {expected}") from None
    except ValueError as e:
        raise ValueError(f"{path}: expected {expected}: {e}") from None


def load_features(path) -> np.ndarray:
    """A feature matrix (N, p) from ``.npy`` or CSV (a non-numeric first row is a header)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        X = _load_npy(path)
    else:
        delimiter = text_delimiter(path)
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            [float(t) for t in first.strip().split(delimiter)]
            skip = 0
        except ValueError:
            skip = 1
        X = _load_text_table(path, "a numeric (N, p) feature table", skiprows=skip)
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: features must be numeric, got dtype {X.dtype}") from None
    if X.ndim != 2:
        raise ValueError(f"{path}: features must be a 2-D (N, p) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: features contain NaN or infinite values")
    return X


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # pickled object arrays, or not an .npy file at all
        raise ValueError(f"{path}: not a numeric .npy array ({e})") from None


def save_labels(path, labels, ids=None) -> None:
    """Write ``id,label`` rows (CSV, atomically)."""
    labels = np.asarray(labels)
    ids = np.arange(len(labels)) if ids is None else np.asarray(ids)
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(zip(ids.tolist(), labels.tolist(), strict=True))


def load_labels(path) -> tuple[np.ndarray | None, np.ndarray]:
    """Read labels: ``id,label`` rows (an optional header), or one label per line.

    Returns
    -------
    ids : ndarray of str, or None
        The id column; None for a file of one label per line (matched by position).
    labels : ndarray of str
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; expected labels (id,label rows or one per line)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected labels (id,label rows or one per "
                         "line)") from None
    if rows and rows[0][-1].strip().lower() in ("label", "labels", "y", "class"):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no labels found")
    widths = {len(r) for r in rows}
    if widths == {2}:
        ids = np.asarray([r[0].strip() for r in rows])
        if len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{path}: the id column repeats ids; expected one row per object")
        return ids, np.asarray([r[1].strip() for r in rows])
    if widths == {1}:
        return None, np.asarray([r[0].strip() for r in rows])
    raise ValueError(f"{path}: expected 'id,label' rows or one label per line, got rows of "
                     f"{sorted(widths)} columns")


def save_array(path, array: np.ndarray) -> None:
    """``np.save`` atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def make_signed_partition(
    sizes,
    p_flip: float,
    *,
    p_obs: float = 1.0,
    mag_noise: float = 0.5,
    gauss: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Planted signed clusters (docs/hcc.md, Reproduction).

    1. ``y = repeat(arange(K), sizes)``; 2. ``B_ij = -1`` within a cluster, ``+1`` across;
    3. per unordered pair: flip the sign with probability ``p_flip``, multiply by
    ``|1 + mag_noise eps|``, add ``gauss eps'`` (eps, eps' ~ N(0, 1)), keep it with probability
    ``p_obs`` (else 0); 4. symmetrise, zero diagonal, randomly permute the objects.

    Returns
    -------
    D : ndarray of shape (N, N)
    y : ndarray of shape (N,)
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size < 1 or np.any(sizes < 1):
        raise ValueError(f"sizes must be a list of positive integers, got {sizes!r}")
    for name, p in (("p_flip", p_flip), ("p_obs", p_obs)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
    if mag_noise < 0 or gauss < 0:
        raise ValueError("mag_noise and gauss must be >= 0")
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(sizes.size), sizes)
    n = y.size
    iu = np.triu_indices(n, 1)
    b = np.where(y[iu[0]] == y[iu[1]], -1.0, 1.0)
    m = b.size
    flip = rng.random(m) < p_flip
    d = np.where(flip, -b, b) * np.abs(1 + mag_noise * rng.standard_normal(m))
    d = d + gauss * rng.standard_normal(m)
    d = np.where(rng.random(m) < p_obs, d, 0.0)
    D = np.zeros((n, n))
    D[iu] = d
    D += D.T
    perm = rng.permutation(n)
    return D[np.ix_(perm, perm)], y[perm]


def resolve_shift(shift, distances: np.ndarray, n_clusters=None) -> float:
    """The constant theta subtracted from non-negative distances (docs/hcc.md, Worked example 2).

    Parameters
    ----------
    shift : float or str
        A number; ``"mean"``; ``"median"``; ``"quantile:<q>"`` with 0 < q < 1; or
        ``"inv_k"``, the (1/K)-quantile, about the fraction of within-class pairs for K
        balanced classes (needs an integer ``n_clusters``).
    distances : ndarray
        The condensed (off-diagonal) distances the quantiles are taken over.
    n_clusters : int or None
        K, for ``"inv_k"``.
    """
    if shift is None:
        raise ValueError("shift is required for feature input: a number, 'mean', 'median', "
                         "'quantile:<q>' or 'inv_k' (D_ij = d(x_i, x_j) - shift)")
    if isinstance(shift, (int, float, np.integer, np.floating)) and not isinstance(shift, bool):
        if not np.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift!r}")
        return float(shift)
    if shift == "mean":
        return float(np.mean(distances))
    if shift == "median":
        return float(np.median(distances))
    if shift == "inv_k":
        if not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool):
            raise ValueError(f"shift='inv_k' needs an integer n_clusters, got {n_clusters!r}")
        return float(np.quantile(distances, 1.0 / n_clusters))
    if isinstance(shift, str) and shift.startswith("quantile:"):
        try:
            q = float(shift.split(":", 1)[1])
        except ValueError:
            q = np.nan
        if not 0 < q < 1:
            raise ValueError(f"shift='quantile:<q>' needs 0 < q < 1, got {shift!r}")
        return float(np.quantile(distances, q))
    raise ValueError(f"shift must be a number, 'mean', 'median', 'quantile:<q>' or 'inv_k', "
                     f"got {shift!r}")


def signed_from_features(
    X,
    metric: str = "euclidean",
    shift="median",
    *,
    n_clusters=None,
    dtype=np.float64,
) -> tuple[np.ndarray, float]:
    """Signed dissimilarities from features: ``D_ij = d(x_i, x_j) - theta`` (off-diagonal).

    Parameters
    ----------
    X : array-like of shape (N, p)
    metric : str
        Any :func:`scipy.spatial.distance.pdist` metric.
    shift : float or str
        theta or the rule that picks it (see :func:`resolve_shift`). HCC-``sum`` is not
        shift-invariant, so this choice decides the result.
    n_clusters : int, optional
        K for ``shift="inv_k"``.

    Returns
    -------
    D : ndarray of shape (N, N)
    theta : float
    """
    X = check_features(X)
    if metric == "precomputed":
        raise ValueError("metric='precomputed' means X is already a signed dissimilarity; "
                         "signed_from_features needs a pdist metric such as 'euclidean'")
    try:
        d = pdist(X, metric=metric)
    except ValueError as e:
        raise ValueError(f"metric: {e}") from None
    theta = resolve_shift(shift, d, n_clusters)
    frac_neg = float(np.mean(d < theta))
    if frac_neg < 0.01 or frac_neg > 0.60:
        warnings.warn(f"shift={shift!r} (theta={theta:.4g}) makes {100 * frac_neg:.1f}% of the pairs "
                      "negative; with fewer than 1% HCC keeps singletons, with more than 60% it "
                      "merges almost everything", UserWarning, stacklevel=2)
    D = squareform(d - theta).astype(dtype, copy=False)
    return D, theta


def similarity_to_dissimilarity(S):
    """A signed similarity ``S`` (positive = "together") as a signed dissimilarity ``D = -S``."""
    return -S

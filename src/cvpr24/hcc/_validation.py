"""Input checks shared by the functions and estimators: one place, one wording.

A *signed dissimilarity* ``D`` (N x N) is symmetric with a zero diagonal; ``D_ij < 0`` says
"same cluster", ``D_ij > 0`` "different clusters", ``D_ij = 0`` "no information". A
``scipy.sparse`` input means exactly that: a missing pair is 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cvpr24.hcc import _kernel

LINKAGES = ("sum", "avg", "max", "min")
SPARSE_FORMATS = ("csr", "csc", "coo")
MAX_DENSE_N = 20_000  # O(N^2) memory: refuse larger dense problems unless forced
SYMMETRY_RTOL = 1e-10  # asymmetry tolerated, relative to max |D|


def check_linkage(linkage: str) -> str:
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    return linkage


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def check_dissimilarity(
    D,
    *,
    name: str = "D",
    zero_diagonal: bool = False,
    dtype=np.float64,
    force: bool = False,
) -> np.ndarray:
    """Validate a signed dissimilarity and return it as a new dense C-contiguous array.

    Parameters
    ----------
    D : array-like or scipy.sparse matrix of shape (N, N)
        Signed dissimilarities. Sparse input (``csr``, ``csc`` or ``coo``) is densified with
        missing pairs set to 0 ("no information").
    name : str
        The argument's name, used in error messages.
    zero_diagonal : bool
        If True, a non-zero diagonal is set to 0; otherwise it is an error.
    dtype : float32 or float64
        dtype of the returned array.
    force : bool
        Allow N > 20000 (the dense working matrix then needs N^2 * itemsize bytes).

    Raises
    ------
    ValueError
        For a non-square, asymmetric, non-finite, too small or too large input, a non-zero
        diagonal, or an unsupported sparse format; the message names ``name``.
    """
    dtype = check_dtype(dtype)
    if sp.issparse(D):
        check_sparse_dissimilarity(D, name=name, zero_diagonal=zero_diagonal)
        _check_size(D.shape[0], name, force, dtype)
        A = np.asarray(D.toarray(), dtype=dtype, order="C")
    else:
        if np.iscomplexobj(D):
            raise ValueError(f"{name}: complex data is not supported")
        try:
            A = np.array(D, dtype=dtype, order="C", copy=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a numeric (N, N) array: {e}") from None
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            hint = (" (a feature matrix? pass metric='euclidean' and a shift instead of "
                    "metric='precomputed')" if A.ndim == 2 else "")
            raise ValueError(f"{name} must be a square (N, N) matrix, got shape {A.shape}{hint}")
        _check_size(A.shape[0], name, force, dtype)
    scale = float(_kernel.scale_if_finite(A))
    if scale < 0:
        raise ValueError(f"{name} contains NaN or infinite values")
    diag = np.diagonal(A)
    if np.any(diag != 0):
        if not zero_diagonal:
            raise ValueError(f"{name} must have a zero diagonal (max |diag| = "
                             f"{np.max(np.abs(diag)):.3g}); pass zero_diagonal=True to set it to 0")
        np.fill_diagonal(A, 0)
    # exact symmetry (the kernel reads one triangle through the other), within tolerance
    worst = float(_kernel.symmetrize(A))
    if worst > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric: max |{name} - {name}.T| = {worst:.3g} "
                         f"exceeds {SYMMETRY_RTOL:g} x max |{name}|")
    return A


def check_sparse_dissimilarity(D, *, name: str = "D", zero_diagonal: bool = False) -> None:
    """Validate a sparse signed dissimilarity without densifying it (O(nnz)).

    The same rules as :func:`check_dissimilarity`: a supported format, square, finite stored
    values, a zero diagonal (unless ``zero_diagonal``) and symmetry within ``SYMMETRY_RTOL``.
    """
    if D.format not in SPARSE_FORMATS:
        raise ValueError(f"{name}: sparse format {D.format!r} is not supported; use one of "
                         f"{SPARSE_FORMATS} (e.g. {name}.tocsr())")
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {D.shape}")
    if D.shape[0] < 2:
        raise ValueError(f"{name} must describe at least 2 objects, got n_samples={D.shape[0]}")
    C = D.tocsr()
    if not np.all(np.isfinite(C.data)):
        raise ValueError(f"{name} contains NaN or infinite values")
    diag = C.diagonal()
    if np.any(diag != 0) and not zero_diagonal:
        raise ValueError(f"{name} must have a zero diagonal (max |diag| = "
                         f"{np.max(np.abs(diag)):.3g}); pass zero_diagonal=True to set it to 0")
    off = C - sp.diags(diag)
    scale = float(np.max(np.abs(off.data))) if off.nnz else 0.0
    asym = off - off.T
    worst = float(np.max(np.abs(asym.data))) if asym.nnz else 0.0
    if worst > SYMMETRY_RTOL * scale:
        raise ValueError(f"{name} must be symmetric: max |{name} - {name}.T| = {worst:.3g} "
                         f"exceeds {SYMMETRY_RTOL:g} x max |{name}|")


def dense_gib(n: int, dtype=np.float64, copies: int = 1) -> float:
    """GiB taken by ``copies`` dense N x N matrices of ``dtype``."""
    return copies * n * n * np.dtype(dtype).itemsize / 2**30


def _check_size(n: int, name: str, force: bool, dtype=np.float64) -> None:
    if n < 2:
        raise ValueError(f"{name} must describe at least 2 objects, got n_samples={n}")
    if not isinstance(force, (bool, np.bool_)):
        raise ValueError(f"force must be a bool, got {force!r}")
    if n > MAX_DENSE_N and not force:
        raise ValueError(f"{name} has N={n} > {MAX_DENSE_N}: each dense N x N working matrix needs "
                         f"{dense_gib(n, dtype):.1f} GiB ({np.dtype(dtype).name}); pass force=True "
                         "to run anyway")


def check_features(X, *, name: str = "X", dtype=np.float64) -> np.ndarray:
    """A finite 2-D feature matrix with at least 2 rows."""
    try:
        A = np.asarray(X, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric (N, p) feature matrix: {e}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, p) feature matrix, got shape {A.shape}")
    if A.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 samples, got {A.shape[0]}")
    if A.shape[1] < 1:
        raise ValueError(f"{name} must hold at least 1 feature, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return A

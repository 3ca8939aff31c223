"""The merge kernel: generic agglomerative clustering with a nearest-neighbour cache (numba).

The ``sum`` linkage is not reducible (two negative sums can combine below both), so the
nearest-neighbour chain algorithm is invalid for it. This is the *generic* algorithm
(Muellner 2011, "Modern hierarchical, agglomerative clustering algorithms", Fig. 3) on a
dense symmetric working matrix:

- every active row ``i`` caches ``nnd[i]``, a lower bound of ``min_j W[i, j]``, and a
  candidate ``nn[i]``; the pair with the globally smallest cached value is merged once its
  cache is checked to be exact (otherwise that row is rescanned: lazy recomputation);
- a merge of slots ``a < b`` writes the new cluster into slot ``a`` by the Lance-Williams
  update (Eq. 4 for ``sum``), retires slot ``b`` and lowers the caches the new row improves.
  A cache pointing at ``a`` or ``b`` that the update did not lower stays a valid lower bound
  and is rescanned only if it reaches the top.

Memory: the one N x N working matrix (overwritten). Time: O(N^2) for the updates and
scans plus O(N) per lazy rescan; in practice close to O(N^2).

Ties: the smallest row slot wins, then the first column in a rescan (the pair that is
lexicographically smallest in slot order, where a merged cluster keeps the smaller slot).
"""

from __future__ import annotations

import numpy as np

from cvpr24.common import optional_import

numba = optional_import("numba", "hcc")

# method codes of the kernel
SUM, AVG, MAX, MIN = 0, 1, 2, 3
METHOD_CODES = {"sum": SUM, "avg": AVG, "max": MAX, "min": MIN}


TILE = 64  # block size for the cache-friendly transposed passes


@numba.njit(cache=True, nogil=True)
def scale_if_finite(A):
    """``max |A_ij|``, or -1.0 when A holds a NaN or an infinity (one contiguous pass)."""
    m = 0.0
    for x in A.ravel():
        if not np.isfinite(x):
            return -1.0
        m = max(m, abs(x))
    return m


@numba.njit(cache=True, nogil=True)
def symmetrize(A):
    """Replace A by (A + A^T) / 2 in place; return the largest |A_ij - A_ji| seen (tiled)."""
    n = A.shape[0]
    worst = 0.0
    for ii in range(0, n, TILE):
        for jj in range(ii, n, TILE):
            for i in range(ii, min(ii + TILE, n)):
                for j in range(max(jj, i + 1), min(jj + TILE, n)):
                    x, y = A[i, j], A[j, i]
                    worst = max(worst, abs(x - y))
                    v = 0.5 * (x + y)
                    A[i, j] = v
                    A[j, i] = v
    return worst


@numba.njit(cache=True, nogil=True)
def _rescan(W, active, i):
    """(argmin_j, min_j) of W[i, j] over active j != i; first index on ties."""
    n = W.shape[0]
    best = np.inf
    arg = -1
    row = W[i]
    for j in range(n):
        if active[j] and j != i and row[j] < best:
            best = row[j]
            arg = j
    return arg, best


@numba.njit(cache=True, nogil=True)
def generic_linkage(W, method):
    """Agglomerate the N objects of the symmetric working matrix ``W`` (overwritten).

    Returns ``Z`` of shape (N-1, 4): ``[id_a, id_b, height, size]`` with ``id_a < id_b``;
    row t creates cluster id ``N + t`` (scipy's layout), height = Delta(u*, v*) (Eq. 3).
    """
    n = W.shape[0]
    active = np.ones(n, dtype=np.bool_)
    size = np.ones(n, dtype=np.int64)
    cid = np.arange(n)  # cluster id held by each slot
    nn = np.empty(n, dtype=np.int64)
    nnd = np.empty(n, dtype=np.float64)
    for i in range(n):
        nn[i], nnd[i] = _rescan(W, active, i)
    Z = np.empty((n - 1, 4), dtype=np.float64)

    for t in range(n - 1):
        # 1. the globally closest pair; rescan rows whose cache is stale
        while True:
            a = -1
            best = np.inf
            for i in range(n):
                if active[i] and nnd[i] < best:
                    best = nnd[i]
                    a = i
            b = nn[a]
            if active[b] and W[a, b] == nnd[a]:
                break
            nn[a], nnd[a] = _rescan(W, active, a)
        b = nn[a]
        if b < a:
            a, b = b, a
        h = W[a, b]

        # 2. record the merge in scipy's layout
        ia, ib = cid[a], cid[b]
        Z[t, 0] = min(ia, ib)
        Z[t, 1] = max(ia, ib)
        Z[t, 2] = h
        Z[t, 3] = size[a] + size[b]

        # 3. Lance-Williams update of row/column a (the new cluster), Eq. 4 for "sum"
        na = size[a]
        nb = size[b]
        active[b] = False
        for w in range(n):
            if not active[w] or w == a:
                continue
            x = W[a, w]
            y = W[b, w]
            if method == 0:
                v = x + y
            elif method == 1:
                v = (na * x + nb * y) / (na + nb)
            elif method == 2:
                v = max(x, y)
            else:
                v = min(x, y)
            W[a, w] = v
            W[w, a] = v
        size[a] = na + nb
        cid[a] = n + t

        # 4. caches: the new row in full; other rows only where the new value is lower
        nn[a], nnd[a] = _rescan(W, active, a)
        row = W[a]
        for w in range(n):
            if active[w] and w != a and row[w] < nnd[w]:
                nnd[w] = row[w]
                nn[w] = a
    return Z


@numba.njit(cache=True, nogil=True)
def leaf_order(children):
    """Leaves in dendrogram order and, per node id, the start of its block in that order.

    ``children`` (N-1, 2) int: node ``N + t`` joins ``children[t]``. Every node's leaves are
    the contiguous block ``order[start[v] : start[v] + size[v]]``.
    """
    n = children.shape[0] + 1
    size = np.ones(2 * n - 1, dtype=np.int64)
    for t in range(n - 1):
        size[n + t] = size[children[t, 0]] + size[children[t, 1]]
    start = np.zeros(2 * n - 1, dtype=np.int64)
    for t in range(n - 2, -1, -1):  # parents (larger ids) before their children
        left, right = children[t, 0], children[t, 1]
        start[left] = start[n + t]
        start[right] = start[n + t] + size[left]
    order = np.empty(n, dtype=np.int64)
    for leaf in range(n):
        order[start[leaf]] = leaf
    return order, start, size


@numba.njit(cache=True, nogil=True)
def fill_ultrametric(children, values, out):
    """``out[i, j] = values[t]`` where node ``N + t`` is the lowest common ancestor of i, j."""
    order, start, size = leaf_order(children)
    n = children.shape[0] + 1
    for t in range(n - 1):
        left, right = children[t, 0], children[t, 1]
        v = values[t]
        for p in range(start[left], start[left] + size[left]):
            i = order[p]
            for q in range(start[right], start[right] + size[right]):
                j = order[q]
                out[i, j] = v
                out[j, i] = v
    for i in range(n):
        out[i, i] = 0.0
    return out


@numba.njit(cache=True, nogil=True)
def lca_block_sums(children, D):
    """``sums[t] = sum_{i in left(t), j in right(t)} D_ij``: the CC cost change of merge t (Eq. 2).

    Exact for any dendrogram over D (for the ``sum`` linkage it equals the heights).
    """
    order, start, size = leaf_order(children)
    n = children.shape[0] + 1
    sums = np.zeros(n - 1, dtype=np.float64)
    for t in range(n - 1):
        left, right = children[t, 0], children[t, 1]
        acc = 0.0
        for p in range(start[left], start[left] + size[left]):
            row = D[order[p]]
            for q in range(start[right], start[right] + size[right]):
                acc += row[order[q]]
        sums[t] = acc
    return sums


@numba.njit(cache=True, nogil=True)
def cc_cost_dense(D, labels):
    """Eq. 1 over unordered pairs i < j, without N x N temporaries."""
    n = D.shape[0]
    cost = 0.0
    for i in range(n):
        row = D[i]
        for j in range(i + 1, n):
            d = row[j]
            if labels[i] == labels[j]:
                if d > 0:
                    cost += d
            elif d < 0:
                cost -= d
    return cost

"""A dendrogram plot that works for signed, non-monotone HCC trees.

``scipy.cluster.hierarchy.dendrogram`` rejects negative heights; with ``heights="level"`` it
would work on ``level_linkage(Z)``, but this plot draws the raw signed heights too, so
inversions (a parent below its child) stay visible.
"""

from __future__ import annotations

import numpy as np

from cvpr24.hcc import _kernel
from cvpr24.hcc.linkage import check_linkage_matrix, tree_heights


def plot_dendrogram(Z, *, heights: str = "level", labels=None, ax=None, color: str = "C0",
                    max_leaf_labels: int = 60):
    """Draw the dendrogram of a linkage matrix.

    Parameters
    ----------
    Z : ndarray of shape (N-1, 4)
        Linkage with raw (possibly negative, non-monotone) heights.
    heights : {"level", "raw", "depth", "height"}
        The y value of each node: its level ``1..N-1`` (default), the raw signed height
        ``h_t`` (leaves at 0), or another tree distance.
    labels : sequence of str, optional
        Leaf labels (shown when N <= ``max_leaf_labels``).
    ax : matplotlib Axes, optional
        Drawn into if given; otherwise on a new :class:`~matplotlib.figure.Figure` that is
        not registered with pyplot (``ax.figure.savefig`` writes it).

    Returns
    -------
    ax : matplotlib Axes
    order : ndarray of shape (N,)
        The leaves from left to right.
    """
    from matplotlib.figure import Figure

    Z = check_linkage_matrix(Z)
    n = Z.shape[0] + 1
    y_node = np.zeros(2 * n - 1)
    y_node[n:] = Z[:, 2] if heights == "raw" else tree_heights(Z, heights)
    children = Z[:, :2].astype(np.int64)
    order, start, size = _kernel.leaf_order(children)
    x_node = np.empty(2 * n - 1)
    x_node[:n] = start[:n]
    for t in range(n - 1):
        x_node[n + t] = 0.5 * (x_node[children[t, 0]] + x_node[children[t, 1]])
    if ax is None:
        ax = Figure(figsize=(max(4.0, min(16.0, 0.12 * n + 3)), 4)).subplots()
    segments = []
    for t in range(n - 1):
        a, b, top = children[t, 0], children[t, 1], y_node[n + t]
        segments.append(([x_node[a], x_node[a], x_node[b], x_node[b]],
                         [y_node[a], top, top, y_node[b]]))
    for xs, ys in segments:
        ax.plot(xs, ys, color=color, lw=0.8)
    ax.set_xlim(-0.5, n - 0.5)
    if n <= max_leaf_labels:
        names = [str(i) for i in order] if labels is None else [str(labels[i]) for i in order]
        ax.set_xticks(np.arange(n), names, rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_ylabel({"raw": "merge cost h_t (signed)", "level": "level"}.get(heights, heights))
    if heights == "raw":
        ax.axhline(0, color="0.6", lw=0.6, ls="--")
    return ax, order

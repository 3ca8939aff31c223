"""Render a mixed set: each part's points laid out on a grid (parts are centred in their own
frames, so they would overlap otherwise), coloured by group; grey = unassigned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvpr24.common.io import atomic_path
from cvpr24.gfars.metrics import labels_from_groups


def render_groups(parts: np.ndarray, groupings: Sequence[Sequence[Sequence[int]]],
                  titles: Sequence[str], path: str | Path) -> Path:
    """Write a PNG with one 3D scatter panel per grouping (e.g. ground truth, prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = np.asarray(parts)
    m = len(parts)
    cols = int(np.ceil(np.sqrt(m)))
    spacing = 1.5 * float(np.abs(parts).max()) * 2 + 1e-6
    offsets = np.array([[(k % cols) * spacing, (k // cols) * spacing, 0.0] for k in range(m)])
    fig = plt.figure(figsize=(5 * len(groupings), 5))
    for p, (groups, title) in enumerate(zip(groupings, titles, strict=True)):
        ax = fig.add_subplot(1, len(groupings), p + 1, projection="3d")
        labels = labels_from_groups(groups, m)
        for k in range(m):
            c = "0.7" if labels[k] < 0 else f"C{labels[k] % 10}"
            pts = parts[k] + offsets[k]
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=2, c=c)
            ax.text(*offsets[k], str(k), fontsize=6)
        ax.set_title(f"{title} ({len(groups)} groups)")
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path

"""G-FARS: 3D part grouping by gradient-field auto-regressive sampling.

``GFARS(GFARSConfig())`` is the faithful model (paper defaults); ``GFARSConfig.cpu()`` the
CPU preset; ``GFARSConfig().ef()`` the labelled G-FARS-ef extension. ``grouping_metrics``
scores groupings in the official or the strict mode. Equation labels (G1-G14, B1) are
defined in docs/gfars.md.
"""

from cvpr24.gfars.metrics import GroupingScores, grouping_metrics
from cvpr24.gfars.model import GFARS, GFARSConfig

__all__ = ["GFARS", "GFARSConfig", "GroupingScores", "grouping_metrics"]

"""A scikit-learn-style estimator around G-FARS: ``fit`` on mixed sets with their groups,
``fit_predict`` / ``predict`` on one set's parts, ``labels_`` as in sklearn clustering."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from cvpr24.gfars.data import MixedPartSet
from cvpr24.gfars.metrics import labels_from_groups
from cvpr24.gfars.model import GFARS, GFARSConfig
from cvpr24.gfars.sampling import as_part_batch


class PartGrouper(ClusterMixin, BaseEstimator):
    """Group the parts of a mixed set into shapes.

    ``fit(sets, groups)`` trains G-FARS with DSM (G8) for ``steps`` steps on the given mixed
    sets (each ``(M, n, 3)``) and their per-part group labels (``-1`` = noise); a ``model``
    passed in is used as is when ``steps=0``. ``fit_predict(parts)`` groups one set and sets
    ``labels_`` (``-1`` = unassigned). Learned attributes: ``model_``, ``loss_curve_``.
    """

    def __init__(self, config: GFARSConfig | None = None, steps: int = 1000, sampler: str = "pc",
                 sampling_steps: int | None = None, threshold: float = 0.5,
                 random_state: int = 0, model: GFARS | None = None) -> None:
        self.config = config
        self.steps = steps
        self.sampler = sampler
        self.sampling_steps = sampling_steps
        self.threshold = threshold
        self.random_state = random_state
        self.model = model

    def fit(self, X: Sequence, y: Sequence | None = None) -> PartGrouper:
        from cvpr24.gfars.train import train

        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        if self.model is not None and self.steps == 0:
            self.model_, self.loss_curve_ = self.model, []
            return self
        if y is None:
            raise ValueError("y (the per-part group labels of every set) is required to train")
        if len(X) != len(y) or len(X) == 0:
            raise ValueError(f"X and y must hold the same number (>= 1) of sets, got "
                             f"{len(X)} and {len(y)}")
        as_part_batch(list(X), "X")  # validates shapes and values before any work
        sets = []
        for k, (parts, labels) in enumerate(zip(X, y, strict=True)):
            labels = np.asarray(labels)
            if labels.shape != (len(parts),):
                raise ValueError(f"y[{k}] must have shape ({len(parts)},), got {labels.shape}")
            groups = np.full(len(labels), -1)  # group labels renumbered 0..N-1
            for j, v in enumerate(np.unique(labels[labels >= 0])):
                groups[labels == v] = j
            sets.append(MixedPartSet(parts, groups))
        cfg = self.config or GFARSConfig.cpu()
        if self.model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_state)
                self.model_ = GFARS(cfg)
        else:
            self.model_ = self.model
        self.loss_curve_ = train(self.model_, self.steps, seed=self.random_state, data=sets,
                                 log_every=max(1, min(50, self.steps)))
        return self

    def predict(self, X) -> np.ndarray:
        """Per-part labels of one mixed set ``(M, n, 3)``."""
        if not hasattr(self, "model_"):
            raise AttributeError("PartGrouper is not fitted: call fit first")
        groups = self.model_.group(X, sampler=self.sampler, steps=self.sampling_steps,
                                   threshold=self.threshold, seed=self.random_state)
        return labels_from_groups(groups, len(X))

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        """Group one mixed set ``X`` ``(M, n, 3)``; sets and returns ``labels_``. An unfitted
        grouper must hold a ``model`` (it is then used as is)."""
        if not hasattr(self, "model_"):
            if self.model is None:
                raise AttributeError("PartGrouper is not fitted: call fit(sets, groups) first "
                                     "or pass model=")
            self.model_, self.loss_curve_ = self.model, []
        self.labels_ = self.predict(X)
        return self.labels_

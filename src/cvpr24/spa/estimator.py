"""``SPAMultiLabelClassifier``: an MLP on features trained with SPA (+ LPR), as a scikit-learn
estimator whose ``predict_proba`` returns calibrated probabilities through the SPA link."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from cvpr24.spa.model import SPAConfig
from cvpr24.spa.train import as_tensors, predict_logits, train


class SPAMultiLabelClassifier(ClassifierMixin, BaseEstimator):
    """Multi-label MLP classifier trained with a strictly proper loss.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(256,)
        Widths of the hidden ReLU layers.
    loss : {"spa", "bce", "focal", "asl"}, default="spa"
        Per-label training loss; probabilities are read through its link.
    lam : float, default=1.0
        Weight of the label pair regularizer (0 disables it).
    loss_params : dict or None, default=None
        Extra :class:`~cvpr24.spa.model.SPAConfig` loss fields, e.g. ``{"zeta_neg": 4.0}``.
    epochs : int, default=20
    lr : float, default=1e-3
    weight_decay : float, default=1e-4
    batch_size : int, default=256
    threshold : float, default=0.5
        Decision threshold of :meth:`predict` on the calibrated probabilities.
    random_state : int or None, default=None
        Seed of initialisation and batch order (None means 0).

    Attributes
    ----------
    model_ : torch.nn.Module
        The trained network (outputs are raw ``v``).
    loss_ : torch.nn.Module
        The training loss; ``loss_.predict_proba`` is the read-out.
    n_features_in_ : int
    n_outputs_ : int
        Number of labels C.
    classes_ : list of ndarray
        ``[array([0, 1])] * C`` (scikit-learn's multilabel convention).
    history_ : list of dict
        Per-epoch training loss.

    See Also
    --------
    cvpr24.spa.losses.SPALoss : the loss and its inverse link.

    Examples
    --------
    >>> import numpy as np
    >>> from cvpr24.spa import SPAMultiLabelClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)).astype("float32")
    >>> Y = (X[:, :3] > 0).astype(int)
    >>> clf = SPAMultiLabelClassifier(hidden_layer_sizes=(16,), epochs=3, random_state=0).fit(X, Y)
    >>> clf.predict_proba(X).shape
    (200, 3)
    """

    def __init__(self, hidden_layer_sizes=(256,), loss="spa", lam=1.0, loss_params=None, epochs=20,
                 lr=1e-3, weight_decay=1e-4, batch_size=256, threshold=0.5, random_state=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.loss = loss
        self.lam = lam
        self.loss_params = loss_params
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.threshold = threshold
        self.random_state = random_state

    def _validate_params_(self) -> None:
        if self.loss not in ("spa", "bce", "focal", "asl"):
            raise ValueError(f"loss must be 'spa', 'bce', 'focal' or 'asl', got {self.loss!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lam, numbers.Real) and self.lam >= 0):
            raise ValueError(f"lam must be a number >= 0, got {self.lam!r}")
        if not (isinstance(self.lr, numbers.Real) and self.lr > 0):
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not all(isinstance(h, numbers.Integral) and h >= 1 for h in self.hidden_layer_sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")

    def fit(self, X, Y):
        """Fit on features ``X`` (n_samples, n_features) and an indicator matrix ``Y``
        (n_samples, n_labels) of 0/1, with NaN or -1 for missing labels."""
        self._validate_params_()
        X = validate_data(self, X, dtype=np.float32, reset=True)
        Y = np.asarray(Y, dtype=np.float32)
        if Y.ndim != 2 or len(Y) != len(X):
            raise ValueError(f"Y must be an indicator matrix of shape ({len(X)}, n_labels), got {Y.shape}")
        known = ~np.isnan(Y) & (Y != -1)
        if not np.isin(Y[known], (0.0, 1.0)).all():
            raise ValueError("Y must hold 0 or 1 (NaN or -1 for missing labels)")
        cfg = SPAConfig.cpu(loss=self.loss, lam=float(self.lam), hidden=tuple(self.hidden_layer_sizes),
                            in_features=X.shape[1], num_classes=Y.shape[1], epochs=self.epochs, lr=self.lr,
                            weight_decay=self.weight_decay, batch_size=self.batch_size,
                            seed=0 if self.random_state is None else int(self.random_state),
                            **(self.loss_params or {}))
        result = train(cfg, as_tensors(X, Y))
        self.model_, self.loss_, self.history_, self.config_ = result.model, result.loss, result.history, cfg
        self.n_outputs_ = Y.shape[1]
        self.classes_ = [np.array([0, 1])] * Y.shape[1]
        return self

    def decision_function(self, X) -> np.ndarray:
        """Raw outputs ``v`` (n_samples, n_labels); for SPA these are not log-odds."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return predict_logits(self.model_, torch.from_numpy(X)).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated ``P(y_c = 1 | x)`` (n_samples, n_labels), through the loss's inverse link."""
        v = torch.from_numpy(self.decision_function(X)).double()
        return self.loss_.predict_proba(v).numpy()

    def predict(self, X) -> np.ndarray:
        """Indicator matrix ``predict_proba(X) > threshold``."""
        return (self.predict_proba(X) > self.threshold).astype(int)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        return tags

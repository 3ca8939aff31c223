"""Towards Calibrated Multi-label Deep Neural Networks (Cheng & Vasconcelos, CVPR 2024).

The Strictly Proper Asymmetric (SPA) loss and its inverse link, the Label Pair Regularizer
(LPR), the BCE / focal / ASL baselines, multi-label calibration metrics (functional and
streaming), a scikit-learn estimator, loaders, training and the reproduction. See
``docs/spa.md``.

Drop-in use in an existing training loop::

    from cvpr24.spa import SPALPRLoss
    loss_fn = SPALPRLoss()                      # SPA (defaults) + LPR, lambda = 1
    loss = loss_fn(model(x), y)                 # y in {0, 1}, (N, C)
    probs = loss_fn.predict_proba(model(x))     # calibrated; never torch.sigmoid(logits)
"""

from cvpr24.spa.decision import (
    cost_sensitive_predict,
    expected_cost_threshold,
    retrieve,
    tune_thresholds,
)
from cvpr24.spa.estimator import SPAMultiLabelClassifier
from cvpr24.spa.losses import (
    AsymmetricLoss,
    BCELoss,
    FocalLoss,
    LabelPairRegularizer,
    SPALoss,
    SPALPRLoss,
    SPAParams,
    asymmetric_loss,
    bce_loss,
    focal_loss,
    label_pair_regularizer,
    loss_from_config,
    risk_minimizer,
    spa_link,
    spa_log_odds,
    spa_loss,
    spa_predict_proba,
)
from cvpr24.spa.metrics import (
    AdaptiveCalibrationError,
    CalibrationError,
    F1Scores,
    MeanAveragePrecision,
    OracleCPEError,
    ProbabilityScores,
    ace,
    brier,
    calibration_report,
    classwise_ece,
    ece,
    f1_scores,
    mce,
    mean_average_precision,
    nll,
    oracle_cpe_error,
    reliability_diagram,
)
from cvpr24.spa.model import MultiLabelClassifier, ResNet, SPAConfig, build_loss, build_model

__all__ = [
    "AdaptiveCalibrationError", "AsymmetricLoss", "BCELoss", "CalibrationError", "F1Scores", "FocalLoss",
    "LabelPairRegularizer", "MeanAveragePrecision", "MultiLabelClassifier", "OracleCPEError",
    "ProbabilityScores", "ResNet", "SPAConfig", "SPALPRLoss", "SPALoss", "SPAMultiLabelClassifier",
    "SPAParams", "ace", "asymmetric_loss", "bce_loss", "brier", "build_loss", "build_model",
    "calibration_report", "classwise_ece", "cost_sensitive_predict", "ece", "expected_cost_threshold",
    "f1_scores", "focal_loss", "label_pair_regularizer", "loss_from_config", "mce",
    "mean_average_precision", "nll", "oracle_cpe_error", "reliability_diagram", "retrieve",
    "risk_minimizer", "spa_link", "spa_log_odds", "spa_loss", "spa_predict_proba", "tune_thresholds",
]

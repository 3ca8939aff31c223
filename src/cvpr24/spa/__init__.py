"""Towards Calibrated Multi-label Deep Neural Networks (Cheng & Vasconcelos, CVPR 2024).

The Strictly Proper Asymmetric (SPA) loss and its inverse link, the Label Pair Regularizer
(LPR), the BCE / focal / ASL baselines, multi-label calibration metrics (functional and
streaming), a scikit-learn estimator, loaders and the reproduction. See ``docs/spa.md``.
"""

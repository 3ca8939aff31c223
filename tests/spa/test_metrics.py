"""Metrics against independent references: torchmetrics, scikit-learn, hand-computed cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import binary_calibration_error

from cvpr24.spa.metrics import (
    AdaptiveCalibrationError,
    CalibrationError,
    F1Scores,
    MeanAveragePrecision,
    OracleCPEError,
    ProbabilityScores,
    ace,
    brier,
    classwise_ece,
    ece,
    f1_scores,
    mce,
    mean_average_precision,
    nll,
    oracle_cpe_error,
    reliability_diagram,
)


def _data(n=400, c=6, seed=0):
    """Probabilities off the bin edges, labels miscalibrated both ways (so |gap| matters)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.001, 0.999, size=(n, c))
    edge = np.abs(p * 15 - np.round(p * 15)) < 1e-6
    p[edge] += 1e-4
    true = np.clip(p + 0.25 * np.sin(6 * p), 0, 1)
    y = (rng.uniform(size=p.shape) < true).astype(float)
    return p, y


def test_ece_and_mce_match_torchmetrics():
    p, y = _data()
    pt, yt = torch.tensor(p.ravel()), torch.tensor(y.ravel()).long()
    assert abs(ece(p, y) - float(binary_calibration_error(pt, yt, n_bins=15, norm="l1"))) < 1e-10
    assert abs(mce(p, y) - float(binary_calibration_error(pt, yt, n_bins=15, norm="max"))) < 1e-10
    assert abs(ece(torch.tensor(p), torch.tensor(y), n_bins=10)
               - float(binary_calibration_error(pt, yt, n_bins=10))) < 1e-10


def test_hand_computed_cases():
    y = np.zeros(1000)
    y[:100] = 1
    p = np.full(1000, 0.5)
    assert abs(ece(p, y) - 0.4) < 1e-12 and abs(mce(p, y) - 0.4) < 1e-12
    # two bins with opposite gaps: ECE adds the absolute gaps
    p2 = np.array([0.1, 0.1, 0.9, 0.9])
    y2 = np.array([1.0, 1.0, 0.0, 1.0])
    assert abs(ece(p2, y2, n_bins=2) - (0.5 * 0.9 + 0.5 * 0.4)) < 1e-12
    assert abs(mce(p2, y2, n_bins=2) - 0.9) < 1e-12
    # ACE with 2 equal-count chunks of the sorted probabilities
    p3 = np.array([0.1, 0.2, 0.3, 0.9])
    y3 = np.array([0.0, 1.0, 0.0, 1.0])
    assert abs(ace(p3, y3, n_bins=2) - (abs(1 - 0.3) + abs(1 - 1.2)) / 4) < 1e-12
    # 0 falls in the first bin, 1 in the last
    assert ece(np.array([0.0, 1.0]), np.array([0.0, 1.0]), n_bins=3) == 0.0


def test_calibrated_bernoulli_labels_have_small_ece():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=1_000_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert ece(p, y) < 0.005
    assert ece(p, 1 - y) > 0.4  # and anti-calibrated labels do not


def test_ap_brier_nll_match_sklearn():
    p, y = _data()
    ref = np.mean([average_precision_score(y[:, c], p[:, c]) for c in range(p.shape[1])])
    assert abs(mean_average_precision(p, y) - ref) < 1e-12
    # ties: sklearn treats equal scores as one threshold, so must we
    pq = np.round(p, 1)
    ref_q = np.mean([average_precision_score(y[:, c], pq[:, c]) for c in range(p.shape[1])])
    assert abs(mean_average_precision(pq, y) - ref_q) < 1e-12
    assert abs(brier(p, y) - brier_score_loss(y.ravel(), p.ravel())) < 1e-12
    assert abs(nll(p, y) - log_loss(y.ravel(), p.ravel())) < 1e-10


def test_classwise_ece_and_f1_by_hand():
    p, y = _data(c=3)
    y[:, 2] = 0.0  # no positive: excluded from the class average
    per = [ece(p[:, c], y[:, c]) for c in range(2)]
    assert abs(classwise_ece(p, y) - np.mean(per)) < 1e-12
    f = f1_scores(p, y, threshold=0.5)
    pred = p > 0.5
    tp = (pred & (y == 1)).sum(0)
    fp = (pred & (y == 0)).sum(0)
    fn = (~pred & (y == 1)).sum(0)
    op = tp.sum() / (tp.sum() + fp.sum())
    orr = tp.sum() / (tp.sum() + fn.sum())
    assert abs(f["OP"] - op) < 1e-12 and abs(f["OR"] - orr) < 1e-12
    assert abs(f["OF1"] - 2 * op * orr / (op + orr)) < 1e-12
    cp = np.mean(tp / (tp + fp))
    assert abs(f["CP"] - cp) < 1e-12


def test_mask_and_nan_labels_are_ignored():
    p, y = _data()
    y_nan = y.copy()
    y_nan[::3, 1] = np.nan
    keep = ~np.isnan(y_nan)
    assert abs(ece(p, y_nan) - ece(p[keep], y[keep])) < 1e-12
    mask = np.ones_like(p, bool)
    mask[::3, 1] = False
    assert abs(ece(p, y, mask=mask) - ece(p, y_nan)) < 1e-12
    assert abs(brier(p, y, mask=mask) - brier(p[keep], y[keep])) < 1e-12


def test_map_is_link_invariant_and_ece_is_not():
    from cvpr24.spa.losses import SPALoss

    g = torch.Generator().manual_seed(0)
    v = torch.randn(300, 5, generator=g) * 2
    eta = SPALoss().predict_proba(v)
    y = (torch.rand(300, 5, generator=g) < eta).double()
    sig = torch.sigmoid(v)
    assert abs(mean_average_precision(sig, y) - mean_average_precision(eta, y)) < 1e-12
    assert ece(sig, y) > ece(eta, y) + 0.1


def test_streaming_equals_batch():
    p, y = _data(n=600, c=5, seed=4)
    y[::7, 3] = np.nan
    eta = np.clip(p + 0.01, 0, 1)
    cal = CalibrationError(15, classwise=True, num_classes=5)
    scores, f1, cpe = ProbabilityScores(), F1Scores(5), OracleCPEError()
    mp, ac = MeanAveragePrecision(5, resolution=1000), AdaptiveCalibrationError(15, resolution=100_000)
    for chunk in np.array_split(np.arange(600), 7):
        cal.update(p[chunk], y[chunk])
        scores.update(torch.tensor(p[chunk]), torch.tensor(y[chunk]))
        f1.update(p[chunk], y[chunk])
        cpe.update(p[chunk], eta[chunk])
        mp.update(p[chunk], y[chunk])
        ac.update(p[chunk], y[chunk])
    out = cal.compute()
    assert abs(out["ece"] - ece(p, y)) < 1e-12 and abs(out["mce"] - mce(p, y)) < 1e-12
    assert abs(out["cw_ece"] - classwise_ece(p, y)) < 1e-12
    s = scores.compute()
    assert abs(s["brier"] - brier(p, y)) < 1e-12 and abs(s["nll"] - nll(p, y)) < 1e-12
    assert f1.compute() == pytest.approx(f1_scores(p, y), abs=1e-12)
    assert abs(cpe.compute() - oracle_cpe_error(p, eta)) < 1e-12
    # binned mAP == sklearn AP of the scores rounded up to the 1/1000 grid
    q = np.maximum(np.ceil(p * 1000), 1) / 1000
    keep = ~np.isnan(y)
    ref = np.mean([average_precision_score(y[keep[:, c], c], q[keep[:, c], c]) for c in range(5)])
    assert abs(mp.compute() - ref) < 1e-12
    assert abs(mp.compute() - mean_average_precision(p, y)) < 5e-3
    # ACE from a fine histogram is close to the exact sort-based ACE
    assert abs(ac.compute() - ace(p, y)) < 2e-3
    cal.reset()
    assert np.isnan(cal.compute()["ece"])


def test_reliability_diagram_data():
    p, y = _data()
    _, data = reliability_diagram(p, y, n_bins=10, title="x")
    assert data["count"].sum() == p.size and abs(data["ece"] - ece(p, y, 10)) < 1e-12
    b = (p.ravel() > 0.3) & (p.ravel() <= 0.4)
    assert abs(data["frequency"][3] - y.ravel()[b].mean()) < 1e-12


def test_bad_inputs_name_the_argument():
    p, y = _data(n=10, c=2)
    with pytest.raises(ValueError, match=r"probs \(10, 2\) and labels \(2, 10\)"):
        ece(p, y.T)
    with pytest.raises(ValueError, match="probs must be probabilities in"):
        ece(p * 3 - 1, y)
    with pytest.raises(ValueError, match="probs contains NaN"):
        ece(np.full_like(p, np.nan), y)
    with pytest.raises(ValueError, match="labels must hold 0 or 1"):
        ece(p, y * 2)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1"):
        ece(p, y, n_bins=0)
    with pytest.raises(ValueError, match="classwise=True needs num_classes"):
        CalibrationError(classwise=True)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, 3\)"):
        F1Scores(3).update(p, y)

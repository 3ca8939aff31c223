"""SPA, LPR and the baselines: closed forms, strict properness, gradients, invariances, bad inputs.

Every reference number here is recomputed independently (scipy minimisation, closed forms of
the spec, the official ASL formula re-typed from its definition), never pasted from our code.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, minimize_scalar

from cvpr24.spa.losses import (
    AsymmetricLoss,
    BCELoss,
    FocalLoss,
    LabelPairRegularizer,
    SPALoss,
    SPALPRLoss,
    SPAParams,
    label_pair_regularizer,
    loss_from_config,
    risk_minimizer,
    spa_loss,
)

ETA_GRID = np.linspace(0.01, 0.99, 99)


def _risk(loss, eta: float):
    """R(eta, v) = eta L1(v) + (1 - eta) L0(v) (S1) as a float function of v."""
    def r(v: float) -> float:
        t = torch.tensor([v], dtype=torch.float64)
        return float(eta * loss.elementwise(t, torch.ones(1, dtype=torch.float64))
                     + (1 - eta) * loss.elementwise(t, torch.zeros(1, dtype=torch.float64)))
    return r


def _scipy_minimiser(loss, eta: float) -> float:
    return minimize_scalar(_risk(loss, eta), bounds=(-60, 60), method="bounded",
                           options={"xatol": 1e-12}).x


# ---------------------------------------------------------------- closed forms ------------

def test_spa_with_unit_parameters_is_bce():
    v = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(6, 5) < 0.4).double()
    ours = SPALoss(1, 1, 0, 1, 1, 0)(v, y)
    ref = F.binary_cross_entropy_with_logits(v, y)
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=0)
    g1, = torch.autograd.grad(ours, v)
    g2, = torch.autograd.grad(ref, v)
    torch.testing.assert_close(g1, g2, atol=1e-7, rtol=0)
    torch.testing.assert_close(SPALoss(1, 1, 0, 1, 1, 0).log_odds(v.detach()), v.detach())


def test_spa_default_constants():
    loss = SPALoss()
    # v(eta_hat = 0.5) and eta_hat(0) of the spec, recomputed from (S9) with scipy root finding
    k_p, z_p, b_p, z_n, k_n, b_n = 1, 1, 0, 5, 3, 1
    sig = lambda t: 1 / (1 + math.exp(-t))
    eta_hat = lambda v: 1 / (1 + (k_p * z_n * sig(-k_p * (v - b_p))) / (k_n * z_p * sig(k_n * (v - b_n))))
    from scipy.optimize import brentq
    v_half = brentq(lambda v: eta_hat(v) - 0.5, -10, 10, xtol=1e-14)
    assert abs(float(loss.link(torch.tensor(0.5))) - v_half) < 1e-9
    assert abs(v_half - 0.95207) < 1e-4
    assert abs(float(loss.predict_proba(torch.tensor(0.0))) - eta_hat(0.0)) < 1e-7
    assert abs(eta_hat(0.0) - 0.05385) < 1e-4


def test_spa_closed_form_gradient_s11():
    p = SPAParams(0.7, 1.3, -0.2, 4.0, 2.5, 0.8)
    v = torch.linspace(-8, 8, 41, dtype=torch.float64, requires_grad=True)
    for label in (0.0, 1.0):
        y = torch.full_like(v, label)
        g, = torch.autograd.grad(spa_loss(v, y, p, reduction="sum"), v)
        vd = v.detach()
        s11 = (-label * (p.k_pos / p.zeta_pos) * torch.sigmoid(-p.k_pos * (vd - p.b_pos))
               + (1 - label) * (p.k_neg / p.zeta_neg) * torch.sigmoid(p.k_neg * (vd - p.b_neg)))
        torch.testing.assert_close(g, s11, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- strict properness -------

def test_spa_default_is_strictly_proper_on_a_grid():
    loss = SPALoss()
    for eta in ETA_GRID:
        v_star = _scipy_minimiser(loss, eta)
        assert abs(float(loss.predict_proba(torch.tensor(v_star, dtype=torch.float64))) - eta) < 1e-6


@settings(max_examples=15, deadline=None, derandomize=True)
@given(zp=st.floats(0.2, 10), kp=st.floats(0.2, 5), bp=st.floats(-3, 3),
       zn=st.floats(0.2, 10), kn=st.floats(0.2, 5), bn=st.floats(-3, 3),
       eta=st.floats(0.02, 0.98))
def test_spa_is_strictly_proper_for_any_parameters(zp, kp, bp, zn, kn, bn, eta):
    loss = SPALoss(zp, kp, bp, zn, kn, bn)
    v_star = _scipy_minimiser(loss, eta)
    assert abs(float(loss.predict_proba(torch.tensor(v_star, dtype=torch.float64))) - eta) < 1e-6
    # link is the inverse of the read-out
    v = torch.tensor([-3.0, -0.3, 0.0, 1.2, 3.0], dtype=torch.float64)
    torch.testing.assert_close(loss.link(loss.predict_proba(v)), v, atol=1e-6, rtol=0)


def test_focal_and_asl_are_not_strictly_proper():
    # focal gamma=2: scipy minimiser of the risk, read out with sigmoid
    focal = FocalLoss(2.0)
    p_focal = 1 / (1 + math.exp(-_scipy_minimiser(focal, 0.01)))
    assert abs(p_focal - 0.1536) < 1e-3
    # (S4) maps it back to eta = 0.01
    g = 2.0
    num = p_focal**g / (1 - p_focal) - g * p_focal ** (g - 1) * math.log(1 - p_focal)
    den = (1 - p_focal) ** g / p_focal - g * (1 - p_focal) ** (g - 1) * math.log(p_focal)
    odds = num / den
    assert abs(odds / (1 + odds) - 0.01) < 1e-4
    # ASL full gradient: minimiser of the risk
    asl_full = AsymmetricLoss(stop_grad_focusing=False, reduction="mean")
    p_full = 1 / (1 + math.exp(-_scipy_minimiser(asl_full, 0.05)))
    assert abs(p_full - 0.4211) < 1e-3
    # ASL stop-grad (official): zero of the gradient field (S6), solved independently
    m, gn = 0.05, 4.0

    def field(p, eta=0.05):
        pm = max(p - m, 0.0)
        return eta * (1 - p) - (1 - eta) * pm**gn * p * (1 - p) / (1 - pm)

    from scipy.optimize import brentq
    p_stop = brentq(field, 0.06, 0.99, xtol=1e-14)
    assert abs(p_stop - 0.5277) < 1e-3
    # our generic risk_minimizer agrees with these independent solutions
    r = risk_minimizer(AsymmetricLoss(), torch.tensor([0.05]))
    assert abs(float(r.proba) - p_stop) < 1e-6
    assert abs(float(risk_minimizer(asl_full, torch.tensor([0.05])).proba) - p_full) < 1e-5
    assert abs(float(risk_minimizer(focal, torch.tensor([0.01])).proba) - p_focal) < 1e-5


def test_risk_minimizer_recovers_eta_for_proper_losses_only():
    eta = torch.tensor(ETA_GRID)
    for loss in (SPALoss(), SPALoss(2.0, 0.5, 1.0, 0.3, 4.0, -2.0), BCELoss()):
        assert (risk_minimizer(loss, eta).proba - eta).abs().max() < 1e-6
    for loss in (FocalLoss(), AsymmetricLoss()):
        assert (risk_minimizer(loss, eta).proba - eta).abs().max() > 0.1
    # SPA read out with sigmoid(v) instead of the link is not calibrated (pitfall 9.1)
    v = risk_minimizer(SPALoss(), torch.tensor([0.01])).v
    assert abs(float(torch.sigmoid(v)) - 0.374) < 1e-3


def test_link_is_a_monotone_bijection_with_stable_extremes():
    loss = SPALoss()
    v = torch.linspace(-100, 100, 2001, dtype=torch.float64, requires_grad=True)
    ell = loss.log_odds(v)
    d, = torch.autograd.grad(ell.sum(), v)
    vd = v.detach()
    p = loss.params
    closed = (p.k_neg * torch.sigmoid(-p.k_neg * (vd - p.b_neg))
              + p.k_pos * torch.sigmoid(p.k_pos * (vd - p.b_pos)))
    torch.testing.assert_close(d, closed, atol=1e-10, rtol=0)
    assert torch.isfinite(ell).all() and (torch.diff(ell.detach()) > 0).all()
    probs = loss.predict_proba(torch.tensor([-100.0, 100.0]))
    assert torch.isfinite(probs).all() and probs[0] >= 0 and probs[1] <= 1
    # asymptotic slopes k- (left) and k+ (right)
    slope = lambda a: float((loss.log_odds(torch.tensor(a + 1e-3, dtype=torch.float64))
                             - loss.log_odds(torch.tensor(a, dtype=torch.float64))) / 1e-3)
    assert abs(slope(-40.0) - p.k_neg) < 1e-3 and abs(slope(40.0) - p.k_pos) < 1e-3
    assert torch.isinf(loss.link(torch.tensor([0.0, 1.0]))).all()


# ---------------------------------------------------------------- ASL parity --------------

def _official_asl(x, y, gamma_neg, gamma_pos, clip, eps=1e-8):
    """The official Alibaba-MIIL AsymmetricLoss.forward, re-typed in numpy from its definition."""
    xs_pos = 1 / (1 + np.exp(-x))
    xs_neg = np.minimum(1 - xs_pos + clip, 1) if clip > 0 else 1 - xs_pos
    loss = y * np.log(np.maximum(xs_pos, eps)) + (1 - y) * np.log(np.maximum(xs_neg, eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        loss = loss * (1 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()


@pytest.mark.parametrize("gn,gp,m", [(4, 1, 0.05), (0, 0, 0), (2, 2, 0)])
def test_asl_matches_the_official_formula(gn, gp, m):
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0])
    ours = AsymmetricLoss(gn, gp, m)(torch.tensor(x), torch.tensor(y))
    assert abs(float(ours) - _official_asl(x, y, gn, gp, m)) < 1e-10
    if (gn, gp, m) == (0, 0, 0):  # ASL(0, 0, 0) is BCE (sum)
        ref = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y), reduction="sum")
        assert abs(float(ours) - float(ref)) < 1e-8
    if (gn, gp, m) == (2, 2, 0):  # ASL(2, 2, 0) is focal gamma=2 (sum)
        ref = FocalLoss(2.0, reduction="sum")(torch.tensor(x), torch.tensor(y))
        assert abs(float(ours) - float(ref)) < 1e-10


def test_asl_stop_grad_detaches_the_focusing_weight_without_touching_grad_mode():
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    g_stop, = torch.autograd.grad(AsymmetricLoss(4, 1, 0.05)(v, y), v)
    g_full, = torch.autograd.grad(AsymmetricLoss(4, 1, 0.05, stop_grad_focusing=False)(v, y), v)
    assert not torch.allclose(g_stop, g_full)
    with torch.no_grad():
        out = AsymmetricLoss()(v, y)
        assert not torch.is_grad_enabled()
    assert not out.requires_grad


# ---------------------------------------------------------------- gradchecks --------------

def _vy(n=3, c=4, seed=0, missing=False):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, c, generator=g, dtype=torch.float64).requires_grad_(True)
    y = (torch.rand(n, c, generator=g) < 0.4).double()
    y[:, 0], y[:, 1] = 1.0, 0.0  # at least one pair per row
    if missing:
        y[0, 2] = -1.0
    return v, y


@pytest.mark.parametrize("make", [
    lambda: SPALoss(),
    lambda: SPALoss(0.5, 2.0, 0.3, 3.0, 1.5, -0.5, ignore_index=-1),
    lambda: FocalLoss(2.0, 0.25),
    lambda: AsymmetricLoss(4, 1, 0.05, stop_grad_focusing=False, ignore_index=-1),
    lambda: LabelPairRegularizer(SPALoss().log_odds, norm="classes", ignore_index=-1),
    lambda: LabelPairRegularizer(SPALoss().log_odds, norm="pairs", ignore_index=-1),
    lambda: SPALPRLoss(SPALoss(ignore_index=-1), 1.0),
])
def test_gradcheck(make):
    loss = make()
    v, y = _vy(missing=getattr(loss, "ignore_index", None) is not None)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (v,), eps=1e-6, atol=1e-6)



def _spa_plain_formula(v, y, p):
    """(S7, S8) typed directly from the spec: y softplus(-k+(v - b+))/zeta+ + (1 - y) softplus(k-(v - b-))/zeta-.

    ``threshold=50``: torch's softplus returns its input (gradient 1) above 20 by default, an
    approximation of relative size e^-20 that would hide in the comparison below.
    """
    sp = lambda t: F.softplus(t, threshold=50)
    return y * sp(-p.k_pos * (v - p.b_pos)) / p.zeta_pos + (1 - y) * sp(p.k_neg * (v - p.b_neg)) / p.zeta_neg


@pytest.mark.parametrize("params", [SPAParams(), SPAParams(0.5, 2.0, 0.3, 3.0, 1.5, -0.5),
                                    SPAParams(2.0, 0.7, -1.0, 0.25, 4.0, 2.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_spa_custom_backward_matches_autograd_of_the_plain_formula(params, reduction):
    g = torch.Generator().manual_seed(3)
    v = (4 * torch.randn(16, 7, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = (torch.rand(16, 7, generator=g) < 0.3).double()
    grad_out = torch.randn(16, 7, generator=g, dtype=torch.float64) if reduction == "none" else None
    ours = spa_loss(v, y, params, reduction=reduction)
    plain = _spa_plain_formula(v, y, params)
    plain = {"mean": plain.mean(), "sum": plain.sum(), "none": plain}[reduction]
    torch.testing.assert_close(ours, plain, atol=1e-13, rtol=1e-9)  # our softplus: threshold 20
    g_ours, = torch.autograd.grad(ours, v, grad_out)
    g_plain, = torch.autograd.grad(plain, v, grad_out)
    torch.testing.assert_close(g_ours, g_plain, atol=1e-14, rtol=1e-12)
    # float32, the training dtype: same values and gradients to float32 rounding
    v32 = v.detach().float().requires_grad_(True)
    out32 = spa_loss(v32, y.float(), params, reduction=reduction)
    g32, = torch.autograd.grad(out32, v32, None if grad_out is None else grad_out.float())
    torch.testing.assert_close(out32.double(), plain.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g32.double(), g_plain, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: SPALoss(0.5, 2.0, 0.3, 3.0, 1.5, -0.5),
                                  lambda: SPALoss(reduction="none"),
                                  lambda: SPALoss(ignore_index=-1)])
def test_spa_second_derivatives(make):
    loss = make()
    v, y = _vy(missing=loss.ignore_index is not None)
    assert torch.autograd.gradgradcheck(lambda t: loss(t, y), (v,), eps=1e-6, atol=1e-6)


def test_spa_validate_false_skips_only_the_target_check():
    v, y = _vy(5, 6, seed=4)
    torch.testing.assert_close(SPALoss(validate=False)(v, y), SPALoss()(v, y), atol=0, rtol=0)
    bad = torch.full_like(y, 0.5)
    with pytest.raises(ValueError, match="targets must hold 0 or 1"):
        SPALoss()(v, bad)
    assert torch.isfinite(SPALoss(validate=False)(v, bad))  # no check, no error: the caller's promise
    with pytest.raises(ValueError, match="logits and targets must have the same shape"):
        SPALoss(validate=False)(v, y.T)
    with pytest.raises(ValueError, match="logits contains NaN"):
        SPALoss(validate=False)(torch.full_like(v, float("nan")), y)


# ---------------------------------------------------------------- LPR ---------------------

def _expected_total(lam, norm, etas):
    """Expected SPA + lam * LPR over every label configuration of independent labels."""
    loss = SPALPRLoss(SPALoss(reduction="sum"), lam, norm=norm)
    etas = np.asarray(etas)
    c = len(etas)
    configs = np.array(np.meshgrid(*[[0, 1]] * c, indexing="ij")).reshape(c, -1).T  # (2^C, C)
    weights = np.prod(np.where(configs == 1, etas, 1 - etas), axis=1)
    y = torch.tensor(configs, dtype=torch.float64)
    w = torch.tensor(weights)

    def f(v):
        vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        vv = vt.expand(len(configs), c)
        per_cfg = (loss.spa.elementwise(vv, y).sum(1)
                   + lam * label_pair_regularizer(loss.spa.log_odds(vv), y, norm=norm, reduction="none"))
        total = (w * per_cfg).sum()
        g, = torch.autograd.grad(total, vt)
        return float(total.detach()), g.numpy()

    return f


@pytest.mark.parametrize("etas,norm", [((0.05, 0.3), "classes"), ((0.7, 0.2), "classes"),
                                       ((0.05, 0.3), "pairs"), ((0.1, 0.6, 0.35), "classes"),
                                       ((0.1, 0.6, 0.35), "pairs")])
def test_lpr_keeps_the_total_loss_strictly_proper(etas, norm):
    f = _expected_total(1.0, norm, etas)
    res = minimize(f, np.zeros(len(etas)), jac=True, method="BFGS", options={"gtol": 1e-12})
    read = SPALoss().predict_proba(torch.tensor(res.x)).numpy()
    np.testing.assert_allclose(read, etas, atol=1e-5)


def test_lpr_on_raw_scores_breaks_properness_as_documented():
    """score="raw" (the authors' CPC) pairs v, not l(v): the minimiser of the training objective
    (mean over classes + lam * LPR) reads out (0.0061, 0.357) for (0.05, 0.30); docs/spa.md."""
    etas = (0.05, 0.3)
    loss = SPALPRLoss(SPALoss(), 1.0, score="raw")
    y = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    w = torch.tensor([(1 - etas[0]) * (1 - etas[1]), (1 - etas[0]) * etas[1], etas[0] * (1 - etas[1]),
                      etas[0] * etas[1]])

    def f(v):
        vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        vv = vt.expand(4, 2)
        per_cfg = loss.spa.elementwise(vv, y).mean(1) + label_pair_regularizer(vv, y, reduction="none")
        total = (w * per_cfg).sum()
        return float(total.detach()), torch.autograd.grad(total, vt)[0].numpy()

    res = minimize(f, np.zeros(2), jac=True, method="BFGS", options={"gtol": 1e-12})
    read = SPALoss().predict_proba(torch.tensor(res.x)).numpy()
    np.testing.assert_allclose(read, [0.0061, 0.3572], atol=5e-4)


def test_lpr_dense_and_gathered_agree_and_match_a_loop():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = (torch.rand(5, 7, generator=g) < 0.3).double()
    y[1] = 0.0  # no positives
    y[2] = 1.0  # no negatives
    y[3, 4] = -1  # missing
    for norm in ("classes", "pairs"):
        a = label_pair_regularizer(s, y, norm=norm, reduction="none", ignore_index=-1)
        b = label_pair_regularizer(s, y, norm=norm, reduction="none", ignore_index=-1, implementation="dense")
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        for n in range(5):
            pos = [i for i in range(7) if y[n, i] == 1]
            neg = [j for j in range(7) if y[n, j] == 0]
            z = (7 - int((y[n] == -1).sum())) if norm == "classes" else len(pos) * len(neg)
            ref = sum(math.log1p(math.exp(-(s[n, i] - s[n, j]))) for i in pos for j in neg) / max(z, 1)
            assert abs(float(a[n]) - ref) < 1e-10
    assert float(a[1]) == 0.0 and float(a[2]) == 0.0


def test_missing_labels_get_no_gradient_and_join_no_pair():
    v, y = _vy(4, 6, seed=1)
    y[2, 3] = -1
    total = SPALPRLoss(SPALoss(ignore_index=-1), 1.0)(v, y)
    g, = torch.autograd.grad(total, v)
    assert float(g[2, 3]) == 0.0 and float(g[2].abs().sum()) > 0
    y_nan = y.clone()
    y_nan[2, 3] = float("nan")
    torch.testing.assert_close(SPALPRLoss(SPALoss(ignore_index=-1), 1.0)(v, y_nan), total)


def test_permuting_classes_leaves_losses_unchanged():
    v, y = _vy(4, 6, seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    for loss in (SPALoss(), SPALPRLoss(SPALoss(), 1.0), AsymmetricLoss(), FocalLoss()):
        torch.testing.assert_close(loss(v, y), loss(v[:, perm], y[:, perm]))


def test_half_precision_logits_give_finite_losses_and_grads():
    v = (torch.randn(8, 5) * 30).to(torch.float16).requires_grad_(True)
    y = (torch.rand(8, 5) < 0.5).float()
    for loss in (SPALoss(), SPALPRLoss(), AsymmetricLoss(), FocalLoss(), BCELoss()):
        out = loss(v, y)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        g, = torch.autograd.grad(out, v)
        assert torch.isfinite(g).all()
    vb = torch.randn(4, 5).to(torch.bfloat16)
    assert torch.isfinite(SPALoss()(vb, (torch.rand(4, 5) < 0.5).float()))


def test_extreme_logits_are_finite_and_non_negative():
    v = torch.tensor([[-1e4, 1e4, 0.0]])
    for y in (torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]])):
        out = SPALoss(reduction="none")(v, y)
        assert torch.isfinite(out).all() and (out >= 0).all()


# ---------------------------------------------------------------- API and bad inputs ------

def test_reductions_and_config_round_trip():
    v, y = _vy(3, 4)
    none = SPALoss(reduction="none")(v, y)
    assert none.shape == (3, 4)
    torch.testing.assert_close(SPALoss(reduction="sum")(v, y), none.sum())
    torch.testing.assert_close(SPALoss()(v, y), none.mean())
    for loss in (SPALoss(2, 1, 0, 3, 2, 1), SPALPRLoss(BCELoss(), 0.5, norm="pairs"),
                 AsymmetricLoss(), FocalLoss(1.5, 0.3)):
        rebuilt = loss_from_config(loss.config())
        torch.testing.assert_close(rebuilt(v, y), loss(v, y))
    total, parts = SPALPRLoss()(v, y, return_parts=True)
    torch.testing.assert_close(total, parts["loss"] + parts["lpr"])


def test_bad_inputs_name_the_argument():
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"logits \(2, 3\) and targets \(3, 2\)"):
        SPALoss()(v, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="targets must hold 0 or 1"):
        SPALoss()(v, torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="targets must hold 0 or 1"):
        SPALoss()(v, torch.full((2, 3), -1.0))  # -1 without ignore_index
    with pytest.raises(ValueError, match="logits contains NaN"):
        SPALoss()(torch.full((2, 3), float("nan")), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="zeta_neg must be a finite number > 0"):
        SPALoss(zeta_neg=0.0)
    with pytest.raises(ValueError, match="k_pos must be a finite number > 0"):
        SPALoss(k_pos=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        SPALoss(reduction="avg")
    with pytest.raises(ValueError, match="at least 2 classes"):
        LabelPairRegularizer()(torch.zeros(4, 1), torch.ones(4, 1))
    with pytest.raises(ValueError, match="eta must hold probabilities"):
        SPALoss().link(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="unknown loss name"):
        loss_from_config({"name": "hinge"})


def test_docstring_examples_run():
    import doctest

    from cvpr24.spa import estimator, losses

    for module in (losses, estimator):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0

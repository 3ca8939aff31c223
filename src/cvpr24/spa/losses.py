"""Multi-label losses: SPA (strictly proper asymmetric), the Label Pair Regularizer, and the
BCE / focal / ASL baselines, each as a plain function plus a thin ``nn.Module`` wrapper.

Notation (docs/spa.md, Equations; the labels (S1)...(S14) are ours, the paper's own
numbering could not be determined). Per label the network output is ``v`` (a "logit", but for
SPA *not* a log-odds), the label ``y`` in {0, 1} and the true posterior ``eta = P(y=1|x)``.

* conditional risk ``R(eta, v) = eta L1(v) + (1 - eta) L0(v)`` (S1);
* a loss with inverse link ``psi^-1`` is strictly proper iff ``psi^-1(v*(eta)) = eta`` (S2);
* SPA [mlcpl parameterisation; properness derived and verified in the tests]::

      L1(v) = softplus(-k+ (v - b+)) / zeta+                        (S7)
      L0(v) = softplus( k- (v - b-)) / zeta-                        (S8)
      l(v)  = logit eta_hat(v)
            = log(k- zeta+) - log(k+ zeta-) + logsig(k-(v-b-)) - logsig(-k+(v-b+))   (S10)

  and the calibrated probability is ``sigmoid(l(v))`` (S9), never ``sigmoid(v)``;
* LPR [derived/choice]: for every pair (i positive, j negative) of one example, the logistic
  loss of the pair event with score ``l_i - l_j`` (S13), normalised per example by ``Z``.

Targets are ``{0, 1}``; with ``ignore_index`` set, entries equal to it (and NaN entries) are
missing labels: they contribute neither loss nor gradient and join no label pair. Losses are
computed in float32 at least (float16/bfloat16 inputs are upcast; float64 stays float64).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# input checks shared by every loss
# --------------------------------------------------------------------------------------------

def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _prepare(logits: Tensor, targets: Tensor, ignore_index: float | None, validate: bool = True
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate ``logits``/``targets``; return ``(v, y, known)`` in the compute dtype.

    ``known`` is None when no label can be missing; otherwise a bool mask, and ``y`` has its
    missing entries replaced by 0. ``validate=False`` skips the one data-dependent pass over the
    targets (``max |y - y^2| = 0`` iff every target is 0 or 1; NaN fails it too); shapes and
    dtypes are always checked. NaN logits are caught on the loss value (:func:`_check_nan`),
    which costs nothing extra in the common case.
    """
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"logits and targets must be torch.Tensor, got {type(logits).__name__} "
                        f"and {type(targets).__name__}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits and targets must have the same shape, got logits {tuple(logits.shape)} "
                         f"and targets {tuple(targets.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    v, y = logits.to(dtype), targets.to(dtype)
    if ignore_index is None:
        known = None
        if validate and y.numel() and torch.addcmul(y, y, y, value=-1).abs_().amax():
            _raise_bad_targets(y, torch.ones_like(y, dtype=torch.bool), ignore_index)
    else:
        known = ~(torch.isnan(y) | (y == ignore_index))
        if validate and (known & (y != 0) & (y != 1)).any():
            _raise_bad_targets(y, known, ignore_index)
        y = torch.where(known, y, torch.zeros((), dtype=dtype, device=y.device))
    return v, y, known


def _check_tensor(logits) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__} "
                        "(wrap a NumPy array with torch.from_numpy)")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")


def _raise_bad_targets(y: Tensor, known: Tensor, ignore_index: float | None) -> None:
    bad = known & (y != 0) & (y != 1)
    extra = ("" if ignore_index is None else f" or the ignore_index {ignore_index!r} / NaN")
    hint = "" if ignore_index is not None else " (set ignore_index, e.g. -1, to mark missing labels)"
    raise ValueError(f"targets must hold 0 or 1{extra}; found {y[bad][:5].tolist()}{hint}")


def _reduce(loss: Tensor, known: Tensor | None, reduction: str) -> Tensor:
    """Zero the missing entries, reduce (``mean`` is over known entries), reject NaN."""
    if known is not None:
        loss = torch.where(known, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss.mean() if known is None else loss.sum() / known.sum().clamp(min=1)
    return _check_nan(out)


def _check_nan(out: Tensor) -> Tensor:
    if torch.isnan(out).any():  # targets are checked, so NaN came from the logits
        raise ValueError("logits contains NaN (check the network output / learning rate)")
    return out


# --------------------------------------------------------------------------------------------
# SPA: the strictly proper asymmetric loss (S7-S11)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SPAParams:
    """The six SPA parameters ``(zeta+, k+, b+, zeta-, k-, b-)``.

    Defaults ``(1, 1, 0, 5, 3, 1)`` are mlcpl's defaults; that they are the paper's could not
    be verified [mlcpl]. Any ``zeta > 0``, ``k > 0``, real ``b`` keeps the loss strictly proper
    [derived]. ``(1, 1, 0, 1, 1, 0)`` is exactly BCE with ``l(v) = v``.
    """

    zeta_pos: float = 1.0
    k_pos: float = 1.0
    b_pos: float = 0.0
    zeta_neg: float = 5.0
    k_neg: float = 3.0
    b_neg: float = 1.0

    def __post_init__(self) -> None:
        for name in ("zeta_pos", "k_pos", "zeta_neg", "k_neg", "b_pos", "b_neg"):
            value = getattr(self, name)
            positive = not name.startswith("b_")
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and math.isfinite(value) and (value > 0 or not positive)):
                raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, "
                                 f"got {value!r}")
            object.__setattr__(self, name, float(value))  # numpy scalars become plain floats

    @property
    def log_odds_offset(self) -> float:
        """``log(k- zeta+) - log(k+ zeta-)``, the constant of (S10)."""
        return math.log(self.k_neg * self.zeta_pos) - math.log(self.k_pos * self.zeta_neg)


def spa_loss(logits: Tensor, targets: Tensor, params: SPAParams | None = None, *,
             reduction: Reduction = "mean", ignore_index: float | None = None,
             validate: bool = True) -> Tensor:
    """The SPA loss (S7, S8): ``y L1(v) + (1 - y) L0(v)``.

    Parameters
    ----------
    logits : Tensor, shape (N, C) or any shape
        Raw network outputs ``v``.
    targets : Tensor, same shape
        Labels in {0, 1}; missing labels marked by ``ignore_index`` (or NaN) when it is set.
    params : SPAParams, optional
        Loss parameters; defaults ``(1, 1, 0, 5, 3, 1)``.
    reduction : {"mean", "sum", "none"}
        ``mean`` averages over the known entries.
    ignore_index : float, optional
        Target value marking a missing label (e.g. ``-1``).
    validate : bool
        Check that the targets are 0 or 1 (one extra pass over them). ``False`` skips the check:
        targets outside {0, 1} then give a meaningless loss instead of an error.

    Returns
    -------
    Tensor
        Scalar, or the elementwise loss (zeros at missing entries) for ``reduction="none"``.
    """
    _check_reduction(reduction)
    p = params or SPAParams()
    v, y, known = _prepare(logits, targets, ignore_index, validate)
    if known is not None:  # missing labels: elementwise, then masked and reduced over known entries
        return _reduce(_SPAFunction.apply(v, y, p, None), known, reduction)
    scale = {"none": None, "sum": 1.0, "mean": 1.0 / max(v.numel(), 1)}[reduction]
    return _check_nan(_SPAFunction.apply(v, y, p, scale))


class _PerLabel(NamedTuple):
    """A per-label constant ``t_y = t_0 + slope y`` (``slope = t_1 - t_0``) for targets y in {0, 1}."""

    t_0: float
    slope: float
    t_0_tensor: Tensor  # 0-d, so that one ``torch.add`` builds the (N, C) tensor in one pass

    def __call__(self, y: Tensor) -> Tensor:
        return torch.add(self.t_0_tensor, y, alpha=self.slope)


class _SPACoefficients(NamedTuple):
    """(S7, S8) as ``L = w_y softplus(z)``, ``z = a_y v + c_y``, with gradient (S11)
    ``dL/dv = (a w)_y sigmoid(z)``; cached per parameters, dtype and device."""

    a: _PerLabel
    c: _PerLabel
    w: _PerLabel
    aw: _PerLabel

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(p: SPAParams, dtype: torch.dtype, device: torch.device) -> _SPACoefficients:
        at_0 = (p.k_neg, -p.k_neg * p.b_neg, 1 / p.zeta_neg, p.k_neg / p.zeta_neg)  # y = 0: (S8)
        at_1 = (-p.k_pos, p.k_pos * p.b_pos, 1 / p.zeta_pos, -p.k_pos / p.zeta_pos)  # y = 1: (S7)
        return _SPACoefficients(*(_PerLabel(t0, t1 - t0, torch.tensor(t0, dtype=dtype, device=device))
                                  for t0, t1 in zip(at_0, at_1, strict=True)))


class _SPAFunction(torch.autograd.Function):
    """``scale * sum(L)`` (or the elementwise ``L`` when ``scale`` is None) for ``L`` of
    :class:`_SPACoefficients`, with the closed-form gradient (S11).

    Written for few passes over (N, C) memory: forward builds ``z`` in one buffer (``c_y``, then
    ``+= a_y v``), takes ``softplus`` and reduces ``sum_y w_y softplus(z)`` as
    ``w_0 sum(softplus) + (w_1 - w_0) <y, softplus>``; backward scales ``sigmoid(z)`` in place by
    ``g (a w)_0 (1 + r y)`` with ``r = (a w)_1 / (a w)_0 - 1`` (``(a w)_0 = k-/zeta- > 0``). With
    ``create_graph=True`` the backward recomputes ``z`` from ``v`` with differentiable ops, so
    second derivatives are exact too.
    """

    @staticmethod
    def forward(ctx, v: Tensor, y: Tensor, p: SPAParams, scale: float | None) -> Tensor:
        k = _SPACoefficients.of(p, v.dtype, v.device)
        z = k.c(y).addcmul_(k.a(y), v)  # (N, C): a_y v + c_y
        loss = F.softplus(z)
        if scale is None:
            loss = loss.mul_(k.w(y))
        else:
            loss = (k.w.t_0 * scale) * loss.sum() + (k.w.slope * scale) * torch.dot(y.reshape(-1), loss.reshape(-1))
        ctx.save_for_backward(v, y, z)
        ctx.k, ctx.scale = k, scale
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        v, y, z = ctx.saved_tensors
        k, g = ctx.k, grad_out if ctx.scale is None else grad_out * ctx.scale
        if torch.is_grad_enabled():  # create_graph: the same expression, differentiable in v
            z = torch.addcmul(k.c(y), k.a(y), v)
            return torch.sigmoid(z) * k.aw(y) * g, None, None, None
        grad = torch.sigmoid(z).mul_(g * k.aw.t_0)
        return grad.addcmul_(grad, y, value=k.aw.slope / k.aw.t_0), None, None, None


def spa_log_odds(logits: Tensor, params: SPAParams | None = None) -> Tensor:
    """``l(v) = logit eta_hat(v)`` (S10), computed with ``logsigmoid`` (stable for any ``v``)."""
    _check_tensor(logits)
    p = params or SPAParams()
    v = logits if logits.dtype == torch.float64 else logits.float()
    return (p.log_odds_offset + F.logsigmoid(p.k_neg * (v - p.b_neg))
            - F.logsigmoid(-p.k_pos * (v - p.b_pos)))


def spa_predict_proba(logits: Tensor, params: SPAParams | None = None) -> Tensor:
    """Calibrated probabilities ``eta_hat(v) = sigmoid(l(v))`` (S9): the SPA inverse link."""
    return torch.sigmoid(spa_log_odds(logits, params))


def spa_link(eta: Tensor, params: SPAParams | None = None, *, iterations: int = 200) -> Tensor:
    """The link ``psi(eta)``: the output ``v`` with ``eta_hat(v) = eta`` (inverse of (S9)).

    ``l(v)`` is strictly increasing with slopes ``k-`` (v -> -inf) and ``k+`` (v -> +inf), so
    the root is bracketed by doubling and found by vectorised bisection in float64 (exact to
    the last bits; ``iterations`` bounds the work). ``eta`` of 0 and 1 map to -inf and +inf.
    """
    eta = torch.as_tensor(eta, dtype=torch.float64)
    if torch.isnan(eta).any() or (eta < 0).any() or (eta > 1).any():
        raise ValueError("eta must hold probabilities in [0, 1] (no NaN)")
    target = torch.logit(eta)  # +-inf at 0 and 1
    finite = torch.isfinite(target)
    t = torch.where(finite, target, torch.zeros_like(target))
    lo, hi = -torch.ones_like(t), torch.ones_like(t)
    for _ in range(64):  # bracket: l(lo) <= t <= l(hi)
        lo_low, hi_high = spa_log_odds(lo, params) <= t, spa_log_odds(hi, params) >= t
        if bool(lo_low.all()) and bool(hi_high.all()):
            break
        lo = torch.where(lo_low, lo, 2 * lo)
        hi = torch.where(hi_high, hi, 2 * hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = spa_log_odds(mid, params) < t
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        if bool(((hi - lo) <= 4e-16 * hi.abs().clamp(min=1.0)).all()):
            break
    v = 0.5 * (lo + hi)
    return torch.where(finite, v, target)


# --------------------------------------------------------------------------------------------
# Baselines, as their official formulas
# --------------------------------------------------------------------------------------------

def bce_loss(logits: Tensor, targets: Tensor, *, reduction: Reduction = "mean",
             ignore_index: float | None = None) -> Tensor:
    """Binary cross-entropy on logits (``F.binary_cross_entropy_with_logits``); ``l(v) = v``."""
    _check_reduction(reduction)
    v, y, known = _prepare(logits, targets, ignore_index)
    return _reduce(F.binary_cross_entropy_with_logits(v, y, reduction="none"), known, reduction)


def focal_loss(logits: Tensor, targets: Tensor, *, gamma: float = 2.0, alpha: float | None = None,
               reduction: Reduction = "mean", ignore_index: float | None = None) -> Tensor:
    """Sigmoid focal loss (S3), the RetinaNet / ``torchvision.ops.sigmoid_focal_loss`` formula:
    ``BCE(v, y) (1 - p_t)^gamma``, times ``alpha_t`` when ``alpha`` is given.

    Not strictly proper: its risk minimiser (S4) pulls ``p`` toward 0.5.
    """
    _check_reduction(reduction)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha!r}")
    v, y, known = _prepare(logits, targets, ignore_index)
    p = torch.sigmoid(v)
    ce = F.binary_cross_entropy_with_logits(v, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return _reduce(loss, known, reduction)


def asymmetric_loss(logits: Tensor, targets: Tensor, *, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.05, eps: float = 1e-8, stop_grad_focusing: bool = True,
                    reduction: Reduction = "sum", ignore_index: float | None = None) -> Tensor:
    """ASL (S5) exactly as the official ``AsymmetricLoss`` of Alibaba-MIIL/ASL [ASL].

    ``p_m = max(p - clip, 0)``; ``L1 = -(1-p)^gamma+ log p``; ``L0 = -p_m^gamma- log(1 - p_m)``,
    with the official ``log(clamp(., min=eps))``. With ``stop_grad_focusing`` (the official
    ``disable_torch_grad_focal_loss=True`` of ``train.py``) the focusing weights carry no
    gradient; here by ``detach`` (the official code toggles the global grad mode, which
    re-enables grads inside a caller's ``no_grad`` block). The default ``reduction="sum"``
    matches the official return value ``-loss.sum()``.
    """
    _check_reduction(reduction)
    if gamma_neg < 0 or gamma_pos < 0:
        raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg!r}, {gamma_pos!r}")
    if not 0 <= clip < 1:
        raise ValueError(f"clip must be in [0, 1), got {clip!r}")
    v, y, known = _prepare(logits, targets, ignore_index)
    xs_pos = torch.sigmoid(v)
    xs_neg = 1 - xs_pos
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)  # probability shifting: 1 - p_m
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        if stop_grad_focusing:
            pt = pt.detach()
        loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return _reduce(-loss, known, reduction)


# --------------------------------------------------------------------------------------------
# Label Pair Regularizer (S12-S14)
# --------------------------------------------------------------------------------------------

LPRNorm = Literal["classes", "pairs"]


def label_pair_regularizer(scores: Tensor, targets: Tensor, *, norm: LPRNorm = "classes",
                           implementation: Literal["gathered", "dense"] = "gathered",
                           reduction: Reduction = "mean", ignore_index: float | None = None) -> Tensor:
    """The LPR (S13) on per-label scores ``s`` (log-odds ``l(v)`` by default):

    ``L_LPR(x, y) = (1/Z) sum_{i: y_i=1} sum_{j: y_j=0} softplus(-(s_i - s_j))``

    the logistic loss of the event "i is the positive one, given exactly one of i, j is",
    whose posterior is ``sigmoid(logit eta_i - logit eta_j)`` under conditional independence
    (S12). Form and normalisation are [derived/choice]: the paper's exact form could not be
    retrieved.

    Parameters
    ----------
    scores : Tensor, shape (N, C)
        Per-label log-odds estimates (``SPALoss.log_odds(v)``; ``v`` itself for BCE).
    targets : Tensor, shape (N, C)
        Labels in {0, 1}; missing labels (``ignore_index``/NaN) join no pair.
    norm : {"classes", "pairs"}
        ``Z`` = number of known labels of the example (= C without missing labels) or the
        number of its pairs ``P * N0``. Both keep the total loss strictly proper.
    implementation : {"gathered", "dense"}
        ``gathered`` (default) forms (N, P_max, C) pair terms for the at most ``P_max``
        positives of a row, so memory scales with the positives, not C^2; ``dense`` forms
        (N, C, C) and is for checking only.
    reduction : {"mean", "sum", "none"}
        Over examples; ``none`` returns shape (N,).

    Returns
    -------
    Tensor
        Scalar or (N,). Rows without a positive or without a negative contribute 0.
    """
    _check_reduction(reduction)
    if norm not in ("classes", "pairs"):
        raise ValueError(f"norm must be 'classes' or 'pairs', got {norm!r}")
    if implementation not in ("gathered", "dense"):
        raise ValueError(f"implementation must be 'gathered' or 'dense', got {implementation!r}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got {tuple(scores.shape)}")
    if scores.shape[1] < 2:
        raise ValueError(f"the label pair regularizer needs at least 2 classes, got C={scores.shape[1]}")
    s, y, known = _prepare(scores, targets, ignore_index)
    if known is None:
        known = torch.ones_like(y, dtype=torch.bool)
    pos, neg = known & (y > 0.5), known & (y < 0.5)  # (N, C)
    if implementation == "dense":
        per_row = _lpr_dense(s, pos, neg)
    else:
        per_row = _lpr_gathered(s, pos, neg)
    z = known.sum(1) if norm == "classes" else pos.sum(1) * neg.sum(1)
    per_row = per_row / z.clamp(min=1).to(s.dtype)  # (N,)
    return _reduce(per_row, None, reduction)


def _lpr_dense(s: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Sum of pair terms per row from the full (N, C, C) matrix of differences."""
    s_neg = s.masked_fill(~neg, float("-inf"))  # softplus(-inf - s_i) = 0: non-negatives drop out
    pair = F.softplus(s_neg[:, None, :] - s[:, :, None]).sum(2)  # (N, C_i): sum over negatives j
    return (pair * pos).sum(1)


def _lpr_gathered(s: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Sum of pair terms per row, gathering the (at most P_max) positives of each row.

    Memory (N, P_max, C) instead of (N, C, C): 49 MB instead of 23.6 GB at (64, 9605) with
    P_max = 20.
    """
    p_max = int(pos.sum(1).max()) if pos.numel() else 0
    if p_max == 0:
        return s.sum(1) * 0.0  # keeps the graph; no row has a positive
    valid, idx = torch.topk(pos.to(torch.int8), p_max, dim=1)  # positives first: (N, P_max)
    s_pos = s.gather(1, idx)  # (N, P_max)
    s_neg = s.masked_fill(~neg, float("-inf"))  # softplus(-inf - s_i) = 0: non-negatives drop out
    pair = F.softplus(s_neg[:, None, :] - s_pos[:, :, None]).sum(2)  # (N, P_max)
    return (pair * valid).sum(1)


# --------------------------------------------------------------------------------------------
# nn.Module wrappers
# --------------------------------------------------------------------------------------------

class _MultiLabelLoss(nn.Module):
    """Shared plumbing: ``reduction``, ``ignore_index``, the read-out and ``config()``."""

    name: str = ""

    def __init__(self, reduction: Reduction = "mean", ignore_index: float | None = None) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self._call(logits, targets, self.reduction)

    def elementwise(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss per element (zeros at missing labels), whatever ``reduction`` is."""
        return self._call(logits, targets, "none")

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define _call (each loss subclass does)")

    def log_odds(self, logits: Tensor) -> Tensor:
        """The model's log-odds estimate; ``v`` itself for losses that use the logistic link."""
        _check_tensor(logits)
        return logits if logits.dtype == torch.float64 else logits.float()

    def predict_proba(self, logits: Tensor) -> Tensor:
        """Probabilities read out through the loss's inverse link: ``sigmoid(log_odds(v))``."""
        _check_tensor(logits)
        return torch.sigmoid(self.log_odds(logits))

    def _params(self) -> dict:
        return {}

    def config(self) -> dict:
        """A JSON-able description; :func:`loss_from_config` rebuilds the loss from it."""
        return {"name": self.name, **self._params(), "reduction": self.reduction,
                "ignore_index": self.ignore_index}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")


class SPALoss(_MultiLabelLoss):
    """Strictly Proper Asymmetric loss (S7, S8) with its inverse link (S9, S10).

    Parameters
    ----------
    zeta_pos, k_pos, b_pos, zeta_neg, k_neg, b_neg : float
        Loss weights (> 0), slopes (> 0) and offsets; defaults ``(1, 1, 0, 5, 3, 1)`` [mlcpl].
    reduction : {"mean", "sum", "none"}
    ignore_index : float, optional
        Target value marking a missing label (NaN targets are missing too when set).
    validate : bool
        Check every call that the targets are 0 or 1 (default; one pass over the targets).
        Not part of :meth:`config`: it changes no value, only whether bad targets raise.

    Examples
    --------
    >>> import torch
    >>> loss_fn = SPALoss()
    >>> v = torch.zeros(2, 3, requires_grad=True)
    >>> loss_fn(v, torch.tensor([[1., 0, 0], [0, 1, 0]])).backward()
    >>> probs = loss_fn.predict_proba(v.detach())   # never torch.sigmoid(v) for SPA
    >>> round(float(probs[0, 0]), 4)
    0.0538
    """

    name = "spa"

    def __init__(self, zeta_pos: float = 1.0, k_pos: float = 1.0, b_pos: float = 0.0,
                 zeta_neg: float = 5.0, k_neg: float = 3.0, b_neg: float = 1.0, *,
                 reduction: Reduction = "mean", ignore_index: float | None = None,
                 validate: bool = True) -> None:
        super().__init__(reduction, ignore_index)
        self.params = SPAParams(zeta_pos, k_pos, b_pos, zeta_neg, k_neg, b_neg)
        self.validate = validate

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return spa_loss(logits, targets, self.params, reduction=reduction,
                        ignore_index=self.ignore_index, validate=self.validate)

    def log_odds(self, logits: Tensor) -> Tensor:
        """``l(v)`` (S10)."""
        return spa_log_odds(logits, self.params)

    def link(self, eta: Tensor) -> Tensor:
        """``psi(eta)`` (inverse of :meth:`predict_proba`), vectorised."""
        return spa_link(eta, self.params)

    def _params(self) -> dict:
        return asdict(self.params)


class BCELoss(_MultiLabelLoss):
    """Binary cross-entropy on logits; strictly proper with the logistic link."""

    name = "bce"

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return bce_loss(logits, targets, reduction=reduction, ignore_index=self.ignore_index)


class FocalLoss(_MultiLabelLoss):
    """Sigmoid focal loss (S3); ``gamma=2`` without ``alpha`` is the focal baseline."""

    name = "focal"

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, *,
                 reduction: Reduction = "mean", ignore_index: float | None = None) -> None:
        super().__init__(reduction, ignore_index)
        self.gamma, self.alpha = gamma, alpha

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return focal_loss(logits, targets, gamma=self.gamma, alpha=self.alpha,
                          reduction=reduction, ignore_index=self.ignore_index)

    def _params(self) -> dict:
        return {"gamma": self.gamma, "alpha": self.alpha}


class AsymmetricLoss(_MultiLabelLoss):
    """ASL (S5), official formula; defaults are the official ``train.py`` setting
    (``gamma_neg=4, gamma_pos=0, clip=0.05``, stop-grad focusing, ``sum`` reduction)."""

    name = "asl"

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8, stop_grad_focusing: bool = True, *, reduction: Reduction = "sum",
                 ignore_index: float | None = None) -> None:
        super().__init__(reduction, ignore_index)
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.stop_grad_focusing = stop_grad_focusing

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return asymmetric_loss(logits, targets, gamma_neg=self.gamma_neg, gamma_pos=self.gamma_pos,
                               clip=self.clip, eps=self.eps, stop_grad_focusing=self.stop_grad_focusing,
                               reduction=reduction, ignore_index=self.ignore_index)

    def _params(self) -> dict:
        return {"gamma_neg": self.gamma_neg, "gamma_pos": self.gamma_pos, "clip": self.clip,
                "eps": self.eps, "stop_grad_focusing": self.stop_grad_focusing}


class LabelPairRegularizer(nn.Module):
    """Label Pair Regularizer (S13) as a module; see :func:`label_pair_regularizer`.

    Parameters
    ----------
    link : callable, optional
        Maps outputs ``v`` to log-odds (``SPALoss().log_odds``); identity when None (BCE).
    norm : {"classes", "pairs"}
    score : {"log_odds", "raw"}
        ``log_odds`` (default, consistent with the link) scores pairs by ``l_i - l_j``;
        ``raw`` by ``v_i - v_j`` as the authors' CPC does (identical for BCE). With SPA,
        ``raw`` is **not proper**: the population minimiser reads out (0.0061, 0.357) for
        posteriors (0.05, 0.30) (docs/spa.md, "Deviations and choices").
    implementation : {"gathered", "dense"}
    reduction : {"mean", "sum", "none"}
    ignore_index : float, optional
    """

    def __init__(self, link: Callable[[Tensor], Tensor] | None = None, *, norm: LPRNorm = "classes",
                 score: Literal["log_odds", "raw"] = "log_odds",
                 implementation: Literal["gathered", "dense"] = "gathered",
                 reduction: Reduction = "mean", ignore_index: float | None = None) -> None:
        super().__init__()
        if score not in ("log_odds", "raw"):
            raise ValueError(f"score must be 'log_odds' or 'raw', got {score!r}")
        if norm not in ("classes", "pairs"):
            raise ValueError(f"norm must be 'classes' or 'pairs', got {norm!r}")
        if implementation not in ("gathered", "dense"):
            raise ValueError(f"implementation must be 'gathered' or 'dense', got {implementation!r}")
        _check_reduction(reduction)
        self.link, self.norm, self.score = link, norm, score
        self.implementation, self.reduction, self.ignore_index = implementation, reduction, ignore_index

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits and targets must have the same shape, got logits "
                             f"{tuple(logits.shape)} and targets {tuple(targets.shape)}")
        scores = self.link(logits) if (self.score == "log_odds" and self.link is not None) else logits
        return label_pair_regularizer(scores, targets, norm=self.norm, implementation=self.implementation,
                                      reduction=self.reduction, ignore_index=self.ignore_index)


class SPALPRLoss(_MultiLabelLoss):
    """Total objective (S14): ``mean_{n,c} L(y, v) + lam * mean_n L_LPR(x, y)``.

    Parameters
    ----------
    spa : loss module, optional
        The per-label loss; an :class:`SPALoss` by default (any loss of this module works, e.g.
        ``BCELoss()`` for "BCE + LPR"). Its ``reduction`` is used for both terms' scale:
        the module's own ``reduction`` must be ``mean`` or ``sum``.
    lam : float
        LPR weight lambda (default 1.0 [choice]).
    norm, score, implementation :
        See :class:`LabelPairRegularizer`.

    ``forward(v, y, return_parts=True)`` also returns ``{"loss", "lpr"}`` (detached) for logging.
    """

    def __init__(self, spa: _MultiLabelLoss | None = None, lam: float = 1.0, *, norm: LPRNorm = "classes",
                 score: Literal["log_odds", "raw"] = "log_odds",
                 implementation: Literal["gathered", "dense"] = "gathered") -> None:
        spa = spa if spa is not None else SPALoss()
        if spa.reduction == "none":
            raise ValueError("the per-label loss of SPALPRLoss needs reduction 'mean' or 'sum'")
        if not (math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        super().__init__(spa.reduction, spa.ignore_index)
        self.spa, self.lam = spa, float(lam)
        self.lpr = LabelPairRegularizer(spa.log_odds, norm=norm, score=score,
                                        implementation=implementation, reduction=spa.reduction,
                                        ignore_index=spa.ignore_index)
        self.name = f"{spa.name}+lpr"

    def forward(self, logits: Tensor, targets: Tensor, return_parts: bool = False):
        base = self.spa(logits, targets)
        lpr = self.lpr(logits, targets) if self.lam > 0 else base.new_zeros(())
        total = base + self.lam * lpr
        if return_parts:
            return total, {"loss": base.detach(), "lpr": lpr.detach()}
        return total

    def _call(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        raise TypeError("SPALPRLoss couples the labels of an example: it has no elementwise form; "
                        "use its per-label loss .spa for that")

    def log_odds(self, logits: Tensor) -> Tensor:
        return self.spa.log_odds(logits)

    def config(self) -> dict:
        return {"name": "lpr", "base": self.spa.config(), "lam": self.lam, "norm": self.lpr.norm,
                "score": self.lpr.score, "implementation": self.lpr.implementation}


_LOSSES = {"spa": SPALoss, "bce": BCELoss, "focal": FocalLoss, "asl": AsymmetricLoss}


def loss_from_config(config: dict) -> _MultiLabelLoss:
    """Rebuild a loss from :meth:`config` output (what checkpoint sidecars store)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"loss config must be a dict with a 'name' key, got {config!r}")
    cfg = dict(config)
    name = cfg.pop("name")
    if name == "lpr":
        base = loss_from_config(cfg.pop("base"))
        return SPALPRLoss(base, **cfg)
    if name not in _LOSSES:
        raise ValueError(f"unknown loss name {name!r}; expected one of {sorted(_LOSSES)} or 'lpr'")
    reduction = cfg.pop("reduction", "mean")
    ignore_index = cfg.pop("ignore_index", None)
    return _LOSSES[name](**cfg, reduction=reduction, ignore_index=ignore_index)


# --------------------------------------------------------------------------------------------
# Population risk minimiser (S1, S2)
# --------------------------------------------------------------------------------------------

class RiskMinimizer(NamedTuple):
    """``v``: the stationary output ``v*(eta)``; ``proba``: the loss's read-out at ``v*``."""

    v: Tensor
    proba: Tensor


def risk_minimizer(loss: _MultiLabelLoss, eta: Tensor | float, *, lo: float = -40.0, hi: float = 40.0,
                   iterations: int = 200) -> RiskMinimizer:
    """``v*(eta)``: the zero of the expected training gradient ``d/dv R(eta, v)`` (S1).

    The gradient is the loss's own autograd gradient, so for ASL with stop-grad focusing this is
    the stationary point of the *gradient field* the official training follows (S6); for losses
    whose risk is convex/unimodal it is the risk minimiser. Found by vectorised bisection in
    float64 over ``[lo, hi]`` (the expected gradient goes from negative to positive there).

    Returns
    -------
    RiskMinimizer
        ``v`` and ``proba = loss.predict_proba(v)``; ``proba == eta`` iff the loss is strictly
        proper with this read-out.
    """
    eta = torch.as_tensor(eta, dtype=torch.float64)
    if torch.isnan(eta).any() or (eta <= 0).any() or (eta >= 1).any():
        raise ValueError("eta must hold probabilities strictly inside (0, 1)")
    base = loss.spa if isinstance(loss, SPALPRLoss) else loss
    ones, zeros = torch.ones_like(eta), torch.zeros_like(eta)

    def expected_grad(v: Tensor) -> Tensor:
        v = v.detach().requires_grad_(True)
        g1, = torch.autograd.grad(base.elementwise(v, ones).sum(), v)
        g0, = torch.autograd.grad(base.elementwise(v, zeros).sum(), v)
        return eta * g1 + (1 - eta) * g0

    a, b = torch.full_like(eta, lo), torch.full_like(eta, hi)
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        negative = expected_grad(mid) <= 0  # flat (zero) gradient far left: keep going right
        a, b = torch.where(negative, mid, a), torch.where(negative, b, mid)
        if bool(((b - a) <= 1e-13).all()):
            break
    v = 0.5 * (a + b)
    with torch.no_grad():
        return RiskMinimizer(v, base.predict_proba(v))


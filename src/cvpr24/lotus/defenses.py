"""Defenses LOTUS is measured against, each a function over a model and data.

Detection: :func:`neural_cleanse` (label-specific, anomaly index), :func:`pixel` (NC variant
with additive positive/negative patterns), :func:`strip` (input entropy under superimposition).
Mitigation: :func:`fine_tune`, :func:`fine_prune`, :func:`nad`, :func:`anp`.

Every defense returns a :class:`DefenseReport` and never modifies the model passed in (the
official fine-tuning does; we deep-copy). Mitigations return the repaired model in
``report.model``; pass ``evaluate=`` (e.g. :func:`attack_evaluator`) to fill ``ba``/``asr``.
Defaults are the official full-scale values; presets are recorded in ``report.params``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvpr24.lotus.data import check_dataset, random_crop_flip
from cvpr24.lotus.models import feature_module, get_head
from cvpr24.lotus.triggers import check_images

Evaluator = Callable[[nn.Module], dict[str, float]]
EPS = 1e-7


@dataclass
class DefenseReport:
    """``{ba, asr, asr_par, detected, score, seconds}`` plus the defense's own details."""

    name: str
    ba: float | None = None
    asr: float | None = None
    asr_par: float | None = None
    detected: bool | None = None
    score: float | None = None
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "model"}


def attack_evaluator(x: torch.Tensor, y: torch.Tensor, victim: int, target: int, triggers,
                     partitioner) -> Evaluator:
    """``model -> {ba, asr, asr_par}`` on a test set (partitions computed once)."""
    from cvpr24.lotus.attack import make_probe

    return make_probe(x, y, victim, target, triggers, partitioner)


def _finish(report: DefenseReport, evaluate: Evaluator | None, t0: float) -> DefenseReport:
    if evaluate is not None and report.model is not None:
        m = evaluate(report.model)
        report.ba, report.asr, report.asr_par = m.get("ba"), m.get("asr"), m.get("asr_par")
    report.seconds = time.perf_counter() - t0
    return report


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_probe(x: torch.Tensor, name: str = "x") -> None:
    """A detector's probe images: a non-empty batch in [0, 1] without NaN (else no verdict at all,
    never a false "not flagged")."""
    check_images(x, name)
    if len(x) == 0:
        raise ValueError(f"{name} is empty: a detector needs at least one image")


def _frozen_copy(model: nn.Module) -> nn.Module:
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# --- Neural Cleanse ------------------------------------------------------------------------

def anomaly_index(norms: np.ndarray | list[float]) -> float:
    """``|min_t n_t - median| / (1.4826 · MAD)`` of the per-label mask norms (NC's rule).

    Only a label *below* the median can be flagged. With MAD = 0 the index is ``inf`` when the
    minimum is below the median and 0 otherwise (no division by zero).
    """
    n = np.asarray(norms, dtype=float)
    if n.ndim != 1 or n.size < 2:
        raise ValueError(f"norms must be a 1-D sequence of at least 2 values, got shape {n.shape}")
    med = np.median(n)
    mad = 1.4826 * np.median(np.abs(n - med))
    lo = n.min()
    if mad == 0:
        return math.inf if lo < med else 0.0
    return float(max(med - lo, 0.0) / mad)


def _nc_reverse(model: nn.Module, x: torch.Tensor, label: int, *, steps: int, lr: float,
                init_cost: float, asr_threshold: float, patience: int, early_stop_patience: int,
                generator: torch.Generator) -> tuple[float, bool, torch.Tensor, torch.Tensor]:
    """Reverse-engineer the smallest trigger to ``label`` (NC L9): returns (L1 norm, success,
    mask (H, W), pattern (C, H, W)). Full-batch Adam, NC's λ schedule."""
    c, h, w = x.shape[1:]
    dev = x.device
    a = (torch.rand(1, h, w, generator=generator) * 2 - 1).to(dev).requires_grad_(True)
    b = (torch.rand(c, h, w, generator=generator) * 2 - 1).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr, betas=(0.5, 0.9))
    tgt = torch.full((len(x),), label, device=dev)
    cost, best_norm, best = init_cost, math.inf, None
    up = down = stall = 0
    up_flag = down_flag = False
    for _ in range(steps):
        mask = torch.tanh(a) / (2 - EPS) + 0.5                     # (1, H, W)
        pattern = torch.tanh(b) / (2 - EPS) + 0.5                  # (C, H, W)
        xa = (1 - mask) * x + mask * pattern                       # NC L9
        logits = model(xa)
        l1 = mask.abs().sum()
        loss = F.cross_entropy(logits, tgt) + cost * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            acc = float((logits.argmax(1) == tgt).float().mean())
            norm = float(l1)
        if acc >= asr_threshold and norm < best_norm:
            stall = 0 if norm < best_norm * 0.99 else stall + 1
            best_norm, best = norm, (mask.detach().cpu()[0], pattern.detach().cpu())
        else:
            stall += 1
        if up_flag and down_flag and stall >= early_stop_patience:
            break
        # λ schedule: ×2 after `patience` successes, ÷2^1.5 after `patience` failures
        up, down = (up + 1, 0) if acc >= asr_threshold else (0, down + 1)
        if up >= patience:
            up, up_flag = 0, True
            cost = init_cost if cost < EPS else cost * 2.0
        elif down >= patience:
            down, down_flag = 0, True
            cost /= 2.0**1.5
    if best is None:                                               # a full mask always succeeds
        return float(h * w), False, torch.ones(h, w), torch.zeros(c, h, w)
    return best_norm, True, best[0], best[1]


def neural_cleanse(model: nn.Module, x: torch.Tensor, *, num_classes: int | None = None,
                   exclude: int | None = None, labels: list[int] | None = None, steps: int = 1000,
                   lr: float = 0.1, init_cost: float = 1e-3, asr_threshold: float = 0.99,
                   patience: int = 5, early_stop_patience: int = 25, threshold: float = 2.0,
                   seed: int = 0) -> DefenseReport:
    """Neural Cleanse (Wang et al., S&P 2019), label-specific as in the LOTUS code.

    For each candidate label ``t`` find the smallest mask ``m`` and pattern ``q`` with
    ``M((1-m)⊙x + m⊙q) = t`` on the samples ``x`` (NC L9: ``ℓ(M(x'), t) + λ‖m‖₁``, Adam 0.1,
    λ₀ = 1e-3, ×2 / ÷2^1.5 after ``patience`` successes / failures). Pass the victim-class
    test images as ``x`` and ``exclude=victim`` for the label-specific, defender-favourable
    setting. The model is flagged when the anomaly index of the smallest norm exceeds
    ``threshold`` (2). A label that never reaches ``asr_threshold`` gets norm ``H·W``.

    Returns a report with ``score`` = anomaly index, ``detected``, and in ``details`` the
    per-label norms, the flagged label (smallest norm) and the anomaly index of every label.
    """
    t0 = time.perf_counter()
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check_probe(x)
    net = _frozen_copy(model)
    dev = _device(net)
    x = x.to(dev)
    if labels is None:
        if num_classes is None:
            num_classes = get_head(net).out_features
        labels = [t for t in range(num_classes) if t != exclude]
    g = torch.Generator().manual_seed(seed)
    norms, success, masks = {}, {}, {}
    for t in labels:
        n, ok, m, _ = _nc_reverse(net, x, t, steps=steps, lr=lr, init_cost=init_cost,
                                  asr_threshold=asr_threshold, patience=patience,
                                  early_stop_patience=early_stop_patience, generator=g)
        norms[t], success[t], masks[t] = n, ok, m
    vals = np.array([norms[t] for t in labels])
    med = np.median(vals)
    mad = 1.4826 * np.median(np.abs(vals - med))
    per_label = {t: (float(max(med - norms[t], 0) / mad) if mad > 0 else 0.0) for t in labels}
    idx = anomaly_index(vals)
    flagged = labels[int(vals.argmin())]
    rep = DefenseReport("neural_cleanse", detected=bool(idx > threshold), score=idx,
                        params=dict(steps=steps, lr=lr, init_cost=init_cost, asr_threshold=asr_threshold,
                                    patience=patience, threshold=threshold, n_samples=len(x),
                                    exclude=exclude),
                        details={"norms": {str(t): norms[t] for t in labels},
                                 "success": {str(t): success[t] for t in labels},
                                 "per_label_index": {str(t): per_label[t] for t in labels},
                                 "flagged_label": flagged, "masks": masks})
    return _finish(rep, None, t0)


def pixel(model: nn.Module, x: torch.Tensor, *, num_classes: int | None = None, exclude: int | None = None,
          steps: int = 1000, lr: float = 0.1, init_cost: float = 1e-3, asr_threshold: float = 0.9,
          patience: int = 10, threshold: float = 2.0, seed: int = 0) -> DefenseReport:
    """Pixel (NC variant, OrthogLinearBackdoor ``dual_tanh``): additive positive / negative
    patterns ``x' = clip(x + q⁺ - q⁻)``, cost = Σ pixel-wise channel max of both, λ ×1.5 /
    ÷1.5^1.5; score = anomaly index of the number of perturbed pixels per label."""
    t0 = time.perf_counter()
    _check_probe(x)
    net = _frozen_copy(model)
    dev = _device(net)
    x = x.to(dev)
    c, h, w = x.shape[1:]
    num_classes = num_classes or get_head(net).out_features
    labels = [t for t in range(num_classes) if t != exclude]
    g = torch.Generator().manual_seed(seed)
    sizes = {}
    for t in labels:
        pp = (torch.rand(c, h, w, generator=g) * 2 - 1).mul(3).sub(3).to(dev).requires_grad_(True)
        pn = (torch.rand(c, h, w, generator=g) * 2 - 1).mul(3).sub(3).to(dev).requires_grad_(True)
        opt = torch.optim.Adam([pp, pn], lr=lr, betas=(0.5, 0.9))
        tgt = torch.full((len(x),), t, device=dev)
        cost, up, down, best = init_cost, 0, 0, float(h * w)
        for _ in range(steps):
            qp = torch.tanh(pp) / (2 - EPS) + 0.5
            qn = torch.tanh(pn) / (2 - EPS) + 0.5
            xa = (x + qp - qn).clamp(0, 1)
            logits = net(xa)
            reg = (torch.tanh(qp / 10) / (2 - EPS) + 0.5).amax(0).sum() \
                + (torch.tanh(qn / 10) / (2 - EPS) + 0.5).amax(0).sum()
            loss = F.cross_entropy(logits, tgt) + cost * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                acc = float((logits.argmax(1) == tgt).float().mean())
                n_pix = float(((qp.amax(0) > 0.5) | (qn.amax(0) > 0.5)).sum())
            if acc >= asr_threshold:
                best = min(best, n_pix)
                up, down = up + 1, 0
            else:
                up, down = 0, down + 1
            if up >= patience:
                cost, up = cost * 1.5, 0
            elif down >= patience:
                cost, down = cost / 1.5**1.5, 0
        sizes[t] = best
    idx = anomaly_index(list(sizes.values()))
    rep = DefenseReport("pixel", detected=bool(idx > threshold), score=idx,
                        params=dict(steps=steps, lr=lr, init_cost=init_cost, asr_threshold=asr_threshold,
                                    patience=patience, threshold=threshold, exclude=exclude),
                        details={"sizes": {str(t): v for t, v in sizes.items()},
                                 "flagged_label": min(sizes, key=sizes.get)})
    return _finish(rep, None, t0)


# --- STRIP -----------------------------------------------------------------------------------

@torch.no_grad()
def strip_entropy(model: nn.Module, x: torch.Tensor, clean_pool: torch.Tensor, *, n: int = 64,
                  alpha: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean prediction entropy of ``x + α·x_c`` over ``n`` random clean images ``x_c``, per input."""
    model.eval()
    dev = _device(model)
    out = []
    for xi in x:
        idx = torch.randint(0, len(clean_pool), (n,), generator=generator)
        mix = (xi[None] + alpha * clean_pool[idx]).clamp(0, 1).to(dev)
        pr = F.softmax(model(mix), 1)
        out.append(float(-(pr * torch.log2(pr + 1e-12)).sum(1).mean()))
    return torch.tensor(out)


def strip(model: nn.Module, x_clean: torch.Tensor, x_poison: torch.Tensor, clean_pool: torch.Tensor, *,
          n: int = 64, alpha: float = 0.5, fpr: float = 0.05, seed: int = 0) -> DefenseReport:
    """STRIP (Gao et al., ACSAC 2019): flag inputs whose superimposed predictions have low entropy.

    The threshold is the ``fpr`` quantile of clean-input entropies; ``score`` is the AUROC of
    "poisoned" vs clean by negative entropy, ``details["tpr"]`` the detection rate on
    ``x_poison`` at that FPR. ``detected`` is true when TPR > 0.5. (BackdoorBench runner:
    ``alpha=1.0, n=100, fpr=0.10``.)
    """
    from sklearn.metrics import roc_auc_score

    t0 = time.perf_counter()
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    for name, v in (("x_clean", x_clean), ("x_poison", x_poison), ("clean_pool", clean_pool)):
        _check_probe(v, name)
    net = _frozen_copy(model)
    g = torch.Generator().manual_seed(seed)
    h_clean = strip_entropy(net, x_clean, clean_pool, n=n, alpha=alpha, generator=g)
    h_poison = strip_entropy(net, x_poison, clean_pool, n=n, alpha=alpha, generator=g)
    thr = float(torch.quantile(h_clean, fpr))
    tpr = float((h_poison < thr).float().mean())
    auroc = float(roc_auc_score(np.r_[np.zeros(len(h_clean)), np.ones(len(h_poison))],
                                -np.r_[h_clean.numpy(), h_poison.numpy()]))
    rep = DefenseReport("strip", detected=tpr > 0.5, score=auroc,
                        params=dict(n=n, alpha=alpha, fpr=fpr),
                        details={"tpr": tpr, "threshold": thr,
                                 "entropy_clean_mean": float(h_clean.mean()),
                                 "entropy_poison_mean": float(h_poison.mean())})
    return _finish(rep, None, t0)


# --- mitigation ----------------------------------------------------------------------------

def balanced_subset(y: torch.Tensor, frac: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced ``frac`` of the data (5% of CIFAR-10 train = 2,500)."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per = max(1, int(round(frac * len(y) / len(classes))))
    out = []
    for c in classes:
        idx = (y == c).nonzero().squeeze(1)
        out.append(idx[torch.randperm(len(idx), generator=g)[:per]])
    return torch.cat(out)


def _train_epochs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                  batch_size: int, milestones: list[int] | None = None, gamma: float = 0.1,
                  lr_at: Callable[[int], float] | None = None, extra_loss=None,
                  generator: torch.Generator, params=None, flip: bool = True) -> nn.Module:
    """SGD (momentum 0.9, wd 5e-4) with crop (padding 4 at 32x32 as officially, 2 below) + flip
    (``flip=False`` for data whose classes are not mirror-invariant); per-epoch lr from
    ``milestones`` or ``lr_at``."""
    dev = _device(net)
    opt = torch.optim.SGD(params if params is not None else net.parameters(), lr=lr, momentum=0.9,
                          weight_decay=5e-4)
    net.train()
    for epoch in range(epochs):
        cur = lr_at(epoch) if lr_at else lr * gamma ** sum(epoch >= m for m in (milestones or []))
        for pg in opt.param_groups:
            pg["lr"] = cur
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb = random_crop_flip(x[idx], 4 if x.shape[-1] >= 32 else 2, flip, generator).to(dev)
            out = net(xb)
            loss = F.cross_entropy(out, y[idx].to(dev))
            if extra_loss is not None:
                loss = loss + extra_loss(xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def fine_tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, lr: float = 0.02,
              batch_size: int = 128, milestones: tuple[int, ...] = (2, 4, 6, 8), seed: int = 0,
              flip: bool = True, evaluate: Evaluator | None = None) -> DefenseReport:
    """Fine-tuning on clean data (official: 5% of train, SGD 0.02, 10 epochs, lr ÷10 at 2,4,6,8).

    ``x, y`` is the defender's clean set (see :func:`balanced_subset`); ``flip=False`` drops the
    horizontal flip of the augmentation (for classes that are not mirror-invariant)."""
    t0 = time.perf_counter()
    check_dataset(x, y)
    net = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    _train_epochs(net, x, y, epochs=epochs, lr=lr, batch_size=batch_size, milestones=list(milestones),
                  generator=g, flip=flip)
    rep = DefenseReport("fine_tune", model=net,
                        params=dict(epochs=epochs, lr=lr, batch_size=batch_size,
                                    milestones=list(milestones), n_clean=len(x)))
    return _finish(rep, evaluate, t0)


class ChannelSelect(nn.Module):
    """Keep channels ``keep`` of a feature map (the pruned network's physical shape)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep.clone())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f.index_select(1, self.keep)


@torch.no_grad()
def mean_channel_activation(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean activation per channel of ``model.feature_name``'s output over ``x``."""
    acts = []
    hook = feature_module(model).register_forward_hook(lambda m, i, o: acts.append(o.mean((0, 2, 3))
                                                                                  * len(o)))
    model.eval()
    dev = _device(model)
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(dev))
    finally:
        hook.remove()
    return torch.stack(acts).sum(0) / len(x)


def prune_channels(model: nn.Module, ratio: float, activations: torch.Tensor) -> nn.Module:
    """Standard fine-pruning (Liu et al. 2018): drop the ``ratio`` least-active channels of the
    last feature map and the matching head columns (a copy with a physically smaller head)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    net = copy.deepcopy(model)
    n = len(activations)
    n_prune = int(ratio * n)
    keep = activations.argsort(descending=True)[:n - n_prune].sort().values
    feat_name = net.feature_name
    parent_name, _, child = feat_name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Sequential(getattr(parent, child), ChannelSelect(keep)))
    head = get_head(net)
    new = nn.Linear(len(keep), head.out_features).to(head.weight.device)
    with torch.no_grad():
        new.weight.copy_(head.weight[:, keep])
        new.bias.copy_(head.bias)
    setattr(net, net.head_name, new)
    net.feature_name = f"{feat_name}.0"
    return net


def unprune(pruned: nn.Module, like: nn.Module) -> nn.Module:
    """The pruned network of :func:`prune_channels` in ``like``'s original architecture: pruned
    channels keep their (unused) weights and get zero head columns. The head reads the globally
    pooled last feature map, so this computes the same function and loads with ``build_model``."""
    name, select = next((n, m) for n, m in pruned.named_modules() if isinstance(m, ChannelSelect))
    feat, keep = name.rpartition(".")[0], select.keep           # wrapper = Sequential(orig, select)
    state = {}
    for k, v in pruned.state_dict().items():
        if k.startswith(feat + ".1."):
            continue                                          # the ChannelSelect buffer
        state[feat + k[len(feat) + 2:] if k.startswith(feat + ".0.") else k] = v
    w = get_head(like).weight
    head_w = torch.zeros_like(w)
    head_w[:, keep] = state[f"{pruned.head_name}.weight"]
    state[f"{pruned.head_name}.weight"] = head_w
    net = copy.deepcopy(like)
    net.load_state_dict(state)
    return net.eval()


def rebuild_last_block(model: nn.Module, ratio: float, activations: torch.Tensor, seed: int = 0) -> nn.Module:
    """The official LOTUS fine-pruning network: the last residual block of ``model.feature_name``
    rebuilt with only the ``1 - ratio`` most active output channels of its ``conv2`` (weights
    kept), a freshly initialised ``bn2``, and a random 1x1 conv + BN shortcut in place of the
    identity (which no longer matches the narrower block); the head keeps the matching columns.
    ResNet models only (a copy; random layers drawn from ``seed``, global RNG untouched)."""
    from cvpr24.lotus.models import BasicBlock

    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    net = copy.deepcopy(model)
    stage = net.get_submodule(net.feature_name)
    block = stage[-1] if isinstance(stage, nn.Sequential) else None
    if not isinstance(block, BasicBlock):
        raise ValueError("variant='official' rebuilds the last ResNet BasicBlock; "
                         f"{type(model).__name__} has none (use variant='standard')")
    n = len(activations)
    keep = activations.argsort(descending=True)[:n - int(ratio * n)].sort().values
    dev = block.conv2.weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv2 = nn.Conv2d(block.conv2.in_channels, len(keep), 3, 1, 1, bias=False)
        shortcut = nn.Sequential(nn.Conv2d(block.conv1.in_channels, len(keep), 1, block.conv1.stride,
                                           bias=False),
                                 nn.BatchNorm2d(len(keep)))
    with torch.no_grad():
        conv2.weight.copy_(block.conv2.weight[keep.to(dev)])
    block.conv2, block.bn2, block.shortcut = conv2.to(dev), nn.BatchNorm2d(len(keep)).to(dev), shortcut.to(dev)
    head = get_head(net)
    new = nn.Linear(len(keep), head.out_features).to(dev)
    with torch.no_grad():
        new.weight.copy_(head.weight[:, keep.to(dev)])
        new.bias.copy_(head.bias)
    setattr(net, net.head_name, new)
    return net


def fine_prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_act: torch.Tensor, *,
               ratio: float = 0.2, epochs: int = 10, lr: float = 5e-3, batch_size: int = 128,
               milestones: tuple[int, ...] = (), variant: str = "standard", seed: int = 0,
               flip: bool = True, evaluate: Evaluator | None = None) -> DefenseReport:
    """Fine-pruning: prune the ``ratio`` (20%) channels of the last feature map that are least
    active (dormant) on the clean images ``x_act``, then fine-tune (official: 10 epochs at lr
    5e-3, no decay) on ``(x, y)``.

    ``variant="standard"`` (Liu et al. 2018) removes the channels and the matching head columns
    (:func:`prune_channels`); ``"official"`` is the LOTUS code's rebuild of the last ResNet block
    (:func:`rebuild_last_block`: fresh ``bn2``, random 1x1 shortcut), a different network.
    """
    t0 = time.perf_counter()
    if variant not in ("standard", "official"):
        raise ValueError(f"variant must be 'standard' or 'official', got {variant!r}")
    check_dataset(x, y)
    _check_probe(x_act, "x_act")
    acts = mean_channel_activation(model, x_act)
    net = (prune_channels(model, ratio, acts) if variant == "standard"
           else rebuild_last_block(model, ratio, acts, seed=seed))
    g = torch.Generator().manual_seed(seed)
    if epochs > 0:
        _train_epochs(net, x, y, epochs=epochs, lr=lr, batch_size=batch_size, milestones=list(milestones),
                      generator=g, flip=flip)
    rep = DefenseReport("fine_prune", model=net,
                        params=dict(ratio=ratio, epochs=epochs, lr=lr, milestones=list(milestones), variant=variant,
                                    n_act=len(x_act), n_clean=len(x)))
    return _finish(rep, evaluate, t0)


def attention_map(f: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """NAD attention ``A(f) = Σ_c |f_c|^p / ‖Σ_c |f_c|^p‖₂`` over the flattened spatial dims: (N, h·w)."""
    a = f.abs().pow(p).sum(1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + eps)


def attention_loss(f_student: torch.Tensor, f_teacher: torch.Tensor, p: float = 2.0,
                   reduction: str = "mean") -> torch.Tensor:
    """NAD's attention distillation term ``MSE(A(f_s), A(f_t))``."""
    return F.mse_loss(attention_map(f_student, p), attention_map(f_teacher, p), reduction=reduction)


class AttentionLoss(nn.Module):
    """Module form of :func:`attention_loss`."""

    def __init__(self, p: float = 2.0, reduction: str = "mean"):
        super().__init__()
        self.p, self.reduction = p, reduction

    def forward(self, f_student: torch.Tensor, f_teacher: torch.Tensor) -> torch.Tensor:
        return attention_loss(f_student, f_teacher, self.p, self.reduction)


def nad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, beta: float = 5000.0, p: float = 2.0,
        epochs: int = 6, lr: float = 1e-3, batch_size: int = 128, student_init: str = "teacher",
        teacher_kwargs: dict | None = None, seed: int = 0, flip: bool = True,
        evaluate: Evaluator | None = None) -> DefenseReport:
    """Neural Attention Distillation: teacher = fine-tuned model; student trained with
    ``ℓ + β·MSE(A(f_s), A(f_t))`` on the last feature map (β 5000, 6 epochs, lr 1e-3 then 1e-4
    from epoch 4). ``student_init="teacher"`` (official LOTUS code) or ``"backdoored"`` (NAD paper)."""
    t0 = time.perf_counter()
    check_dataset(x, y)
    if student_init not in ("teacher", "backdoored"):
        raise ValueError(f"student_init must be 'teacher' or 'backdoored', got {student_init!r}")
    teacher = fine_tune(model, x, y, seed=seed, flip=flip, **(teacher_kwargs or {})).model
    teacher = _frozen_copy(teacher)
    student = copy.deepcopy(teacher if student_init == "teacher" else model)
    for q in student.parameters():
        q.requires_grad_(True)
    feats: dict[str, torch.Tensor] = {}
    hs = feature_module(student).register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))

    def at_term(xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ft = _forward_features(teacher, xb)
        return beta * attention_loss(feats["s"], ft, p)

    g = torch.Generator().manual_seed(seed + 1)
    try:
        _train_epochs(student, x, y, epochs=epochs, lr=lr, batch_size=batch_size,
                      lr_at=lambda e: lr if e < 4 else lr * 0.1, extra_loss=at_term, generator=g,
                      flip=flip)
    finally:
        hs.remove()
    rep = DefenseReport("nad", model=student,
                        params=dict(beta=beta, p=p, epochs=epochs, lr=lr, student_init=student_init))
    return _finish(rep, evaluate, t0)


def _forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: dict[str, torch.Tensor] = {}
    h = feature_module(model).register_forward_hook(lambda m, i, o: out.__setitem__("f", o))
    try:
        model(x)
    finally:
        h.remove()
    return out["f"]


# --- ANP -------------------------------------------------------------------------------------

class NoisyBatchNorm(nn.Module):
    """ANP's BN wrapper: weight × (m + δ), bias × (1 + ξ); ``m`` is the neuron mask."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn
        c = bn.num_features
        self.mask = nn.Parameter(torch.ones(c, device=bn.weight.device))
        self.noise_w = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.noise_b = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.perturb = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        w = bn.weight * (self.mask + (self.noise_w if self.perturb else 0))
        b = bn.bias * (1 + (self.noise_b if self.perturb else 0))
        # in train mode (official ANP) the batch's own statistics normalise; the running ones are
        # not updated (the pruned model keeps the input model's)
        return F.batch_norm(x, bn.running_mean, bn.running_var, w, b, self.training, 0.0, bn.eps)


def wrap_batchnorms(model: nn.Module, name_filter: str = "bn") -> list[tuple[str, NoisyBatchNorm]]:
    """Replace every BatchNorm2d whose qualified name contains ``name_filter`` (official: ``"bn"``,
    which skips ResNet shortcut BNs; ``""`` wraps all) by a :class:`NoisyBatchNorm`, in place."""
    wrapped = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.BatchNorm2d) and name_filter in name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            nb = NoisyBatchNorm(mod).train(mod.training)
            setattr(parent, child, nb)
            wrapped.append((name, nb))
    return wrapped


def anp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.4, alpha: float = 0.5,
        epochs: int = 10, iterations: int | None = None, mask_lr: float = 0.1, batch_size: int = 128,
        batch_stats: bool = True, prune_threshold: float = 0.2, prune_fraction: float | None = None,
        name_filter: str | None = None, seed: int = 0, evaluate: Evaluator | None = None) -> DefenseReport:
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), official LOTUS preset.

    Masks ``m`` (init 1) and noise ``δ, ξ ~ U(-ε, ε)`` on BN neurons; per batch one noise step
    (maximise CE, signed gradient, lr ε) then a mask step on ``α·L_nat + (1-α)·L_rob``
    (SGD ``mask_lr``, momentum 0.9), masks clipped to [0, 1]. The budget is ``epochs`` passes over
    ``(x, y)`` or, when given, ``iterations`` batches (the ANP code's ``nb_iter``, 2000).
    ``batch_stats=True`` normalises with each batch's statistics during the optimisation, as the
    ANP code does (it trains the masks in train mode); ``False`` uses the running statistics.

    Pruning zeroes the BN weights of the neurons with mask ``<= prune_threshold`` (official 0.2),
    or, when ``prune_fraction`` is given, of that fraction of all wrapped neurons with the
    smallest masks (ANP's pruning by number; BackdoorBench's default).

    ``name_filter=None`` applies the official rule (BNs whose name contains ``"bn"``) when the
    model has such BNs, and wraps every BN otherwise (e.g. ``SmallCNN``'s ``block1.1``).
    """
    t0 = time.perf_counter()
    if not 0 <= prune_threshold <= 1:
        raise ValueError(f"prune_threshold must be in [0, 1], got {prune_threshold}")
    if prune_fraction is not None and not 0 <= prune_fraction < 1:
        raise ValueError(f"prune_fraction must be in [0, 1), got {prune_fraction}")
    if iterations is not None and iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    check_dataset(x, y)
    if name_filter is None:
        named = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        name_filter = "bn" if any("bn" in n for n in named) else ""
    work = copy.deepcopy(model)
    for q in work.parameters():
        q.requires_grad_(False)
    wrapped = wrap_batchnorms(work, name_filter)
    if not wrapped:
        raise ValueError(f"model has no BatchNorm2d whose name contains {name_filter!r}")
    work.train(batch_stats)
    masks = [nb.mask for _, nb in wrapped]
    noises = [q for _, nb in wrapped for q in (nb.noise_w, nb.noise_b)]
    for q in masks + noises:
        q.requires_grad_(True)
    mask_opt = torch.optim.SGD(masks, lr=mask_lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    dev = _device(work)
    n_iter = iterations if iterations is not None else epochs * -(-len(x) // batch_size)
    order, pos = torch.randperm(len(x), generator=g), 0
    for _ in range(n_iter):
        if pos >= len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        with torch.no_grad():                      # reset noise: U(-ε, ε)
            for q in noises:
                q.copy_((torch.rand(q.shape, generator=g) * 2 - 1).mul(eps).to(dev))
        for _, nb in wrapped:
            nb.perturb = True
        for q in noises:
            q.grad = None
        (-F.cross_entropy(work(xb), yb)).backward()
        with torch.no_grad():                      # one signed ascent step, projected to [-ε, ε]
            for q in noises:
                q.sub_(eps * q.grad.sign()).clamp_(-eps, eps)
        mask_opt.zero_grad(set_to_none=True)
        loss_rob = F.cross_entropy(work(xb), yb)
        for _, nb in wrapped:
            nb.perturb = False
        loss_nat = F.cross_entropy(work(xb), yb)
        (alpha * loss_nat + (1 - alpha) * loss_rob).backward()
        mask_opt.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(0, 1)
    all_masks = torch.cat([m.detach().cpu() for m in masks])
    if prune_fraction is not None:                 # the smallest masks over all layers
        chosen = torch.zeros(len(all_masks), dtype=torch.bool)
        chosen[all_masks.argsort(stable=True)[:int(prune_fraction * len(all_masks))]] = True
    else:
        chosen = all_masks <= prune_threshold
    net = copy.deepcopy(model)
    pruned, start = {}, 0
    with torch.no_grad():
        for name, nb in wrapped:
            sel = chosen[start:start + len(nb.mask)]
            start += len(nb.mask)
            net.get_submodule(name).weight[sel.to(dev)] = 0
            pruned[name] = int(sel.sum())
    rep = DefenseReport("anp", model=net.eval(),
                        params=dict(eps=eps, alpha=alpha, iterations=n_iter, mask_lr=mask_lr,
                                    batch_size=batch_size, batch_stats=batch_stats,
                                    prune_threshold=None if prune_fraction is not None else prune_threshold,
                                    prune_fraction=prune_fraction, name_filter=name_filter),
                        details={"pruned": pruned, "n_pruned": sum(pruned.values()),
                                 "masks": {n: nb.mask.detach().cpu().tolist() for n, nb in wrapped}})
    return _finish(rep, evaluate, t0)


DEFENSES = ("nc", "pixel", "strip", "ft", "fp", "nad", "anp")

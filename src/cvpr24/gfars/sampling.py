"""Samplers of the selection vector (PC G10+G11, EM G11, probability-flow ODE G13) and the
auto-regressive grouping loop (G12 read-out, stop rule of the official code).

Every sampler takes ``score_fn(x, t) -> (B, M)`` (the network, or the oracle G9 in tests),
the part ``mask`` ``(B, M)`` and a ``torch.Generator``; padded entries stay 0 throughout.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from cvpr24.gfars.sde import diffusion_coeff, marginal_std

SAMPLERS = ("pc", "em", "ode")
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved."""
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def sample_selection(
    score_fn: ScoreFn,
    mask: Tensor,
    sigma: float,
    sampler: str = "pc",
    steps: int = 500,
    snr: float = 0.16,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    trajectory: list[Tensor] | None = None,
) -> Tensor:
    """Draw one selection vector per set, ``(B, M)``, from x(1) ~ N(0, sigma_t(1)^2 I).

    ``"pc"``: per step one Langevin corrector step (G10; step size from the per-set norms
    of the score and of the noise, target ``snr``) then an Euler-Maruyama predictor step
    (G11); returns the last predictor mean. ``"em"``: the predictor only. ``"ode"``: G13
    solved by RK45 (rtol = atol = 1e-5); ``steps`` and ``snr`` are then unused.
    If ``trajectory`` is a list, the mean after every step is appended to it.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    mf = mask.to(torch.float32)
    b = mask.shape[0]
    x = _noise(mf, generator) * marginal_std(torch.ones(()), sigma).to(mf) * mf
    if sampler == "ode":
        return _ode(score_fn, x, mf, sigma, eps, trajectory)
    ts = torch.linspace(1.0, eps, steps, device=mask.device)
    dt = float(ts[0] - ts[1]) if steps > 1 else 1.0 - eps
    n_nodes = mf.sum(1)
    x_mean = x
    for t in ts:
        tb = t.expand(b)
        if sampler == "pc":
            s = score_fn(x, tb) * mf
            grad_norm = s.square().sum(1).sqrt()
            step = 2 * (snr * n_nodes.sqrt() / grad_norm.clamp_min(1e-12)) ** 2  # (B,)
            step = torch.where(n_nodes > 0, step, torch.zeros_like(step))[:, None]
            x = (x + step * s + torch.sqrt(2 * step) * _noise(x, generator)) * mf
        g = diffusion_coeff(t, sigma)
        x_mean = (x + g * g * score_fn(x, tb) * dt) * mf
        x = (x_mean + g * dt**0.5 * _noise(x, generator)) * mf
        if trajectory is not None:
            trajectory.append(x_mean.detach().clone())
    return x_mean


def _ode(score_fn: ScoreFn, x: Tensor, mf: Tensor, sigma: float, eps: float,
         trajectory: list[Tensor] | None) -> Tensor:
    from scipy.integrate import solve_ivp

    shape, b = x.shape, x.shape[0]

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(y, dtype=torch.float32).reshape(shape)
        tt = torch.full((b,), float(t))
        g = diffusion_coeff(tt, sigma)[:, None]
        return (-0.5 * g * g * score_fn(xt, tt) * mf).reshape(-1).double().numpy()

    sol = solve_ivp(rhs, (1.0, eps), x.reshape(-1).double().numpy(), method="RK45",
                    rtol=1e-5, atol=1e-5)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    if trajectory is not None:
        trajectory.extend(torch.as_tensor(y, dtype=torch.float32).reshape(shape)
                          for y in sol.y.T)
    return torch.as_tensor(sol.y[:, -1], dtype=torch.float32).reshape(shape) * mf


SelectFn = Callable[[Tensor], Tensor]


def ar_grouping(select_fn: SelectFn, mask: Tensor, threshold: float = 0.5,
                max_iters: int = 15, min_parts: int = 0) -> list[list[list[int]]]:
    """The auto-regressive loop. ``select_fn(remaining) -> (B, M)`` draws one selection on
    the remaining parts of every set; parts above ``threshold`` form that set's group (G12)
    and leave. Stops when no part remains, when no set selected anything, or after
    ``max_iters``; parts never selected are unassigned. A group smaller than ``min_parts``
    is discarded as if nothing had been selected (0 = off, the official behaviour)."""
    remaining = mask.clone()
    groups: list[list[list[int]]] = [[] for _ in range(mask.shape[0])]
    for _ in range(max_iters):
        if not remaining.any():
            break
        sel = (select_fn(remaining) > threshold) & remaining
        counts = sel.sum(1)
        sel &= (counts >= max(min_parts, 1))[:, None]
        if not sel.any():
            break
        for b in torch.nonzero(sel.any(1)).flatten().tolist():
            groups[b].append(torch.nonzero(sel[b]).flatten().tolist())
        remaining &= ~sel
    return groups


def as_part_batch(sets: Sequence, name: str = "parts") -> tuple[Tensor, Tensor]:
    """Validate mixed sets and pad them: returns parts ``(B, M, n, 3)`` float32 and mask
    ``(B, M)``. Each set is an ``(M, n, 3)`` array or a list of ``(n, 3)`` arrays."""
    arrays = []
    for k, s in enumerate(sets):
        where = name if len(sets) == 1 else f"{name}[{k}]"
        if isinstance(s, (list, tuple)):
            shapes = {np.shape(p) for p in s}
            if len(shapes) > 1:
                raise ValueError(
                    f"{where}: parts have different shapes {sorted(shapes)}; resample every "
                    "part to the same number of points (n, 3)"
                )
        a = np.asarray(s.detach().cpu() if isinstance(s, Tensor) else s, dtype=np.float32)
        if a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(f"{where} must have shape (M, n, 3), got {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{where} holds no parts (M = 0)")
        if a.shape[1] < 3:
            raise ValueError(f"{where}: every part needs at least 3 points, got n = {a.shape[1]}")
        if not np.isfinite(a).all():
            raise ValueError(f"{where} holds NaN or inf coordinates")
        if a.shape[0] > 100:
            warnings.warn(
                f"{where} has {a.shape[0]} parts; the official code caps its kNN graph at "
                "k = 100, this implementation stays fully connected", stacklevel=3)
        arrays.append(a)
    if not arrays:
        raise ValueError(f"{name} is empty: pass at least one mixed set")
    n_pts = {a.shape[1] for a in arrays}
    if len(n_pts) > 1:
        raise ValueError(f"{name}: every set must have the same points per part, got {sorted(n_pts)}")
    m = max(a.shape[0] for a in arrays)
    parts = torch.zeros(len(arrays), m, arrays[0].shape[1], 3)
    mask = torch.zeros(len(arrays), m, dtype=torch.bool)
    for b, a in enumerate(arrays):
        parts[b, : len(a)] = torch.from_numpy(a)
        mask[b, : len(a)] = True
    return parts, mask


def check_sampling_args(sampler: str, steps: int, snr: float, threshold: float,
                        max_iters: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if int(max_iters) != max_iters or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1, got {max_iters}")


@torch.no_grad()
def group_sets(model, sets: Sequence, sampler: str | None = None, steps: int | None = None,
               snr: float | None = None, threshold: float | None = None,
               max_iters: int | None = None, min_parts: int | None = None, seed: int = 0,
               batch_size: int = 64) -> list[list[list[int]]]:
    """Group many mixed sets with a :class:`~cvpr24.gfars.model.GFARS` model. Sets run in
    lock-step chunks of ``batch_size``; arguments left None take the model config's values.
    The encoder runs once per chunk (eval mode); every AR iteration reuses the embeddings
    and samples only the sets that still have parts left (sets never exchange messages,
    so a set's draws do not depend on which others are sampled beside it, only the noise
    stream does)."""
    cfg = model.cfg
    sampler = cfg.sampler if sampler is None else sampler
    steps = cfg.steps if steps is None else steps
    snr = cfg.snr if snr is None else snr
    threshold = cfg.threshold if threshold is None else threshold
    max_iters = cfg.max_iters if max_iters is None else max_iters
    min_parts = cfg.min_parts if min_parts is None else min_parts
    check_sampling_args(sampler, steps, snr, threshold, max_iters)
    parts, mask = as_part_batch(sets)
    device = next(model.parameters()).device
    parts, mask = parts.to(device), mask.to(device)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[list[list[int]]] = []
    try:
        for lo in range(0, len(parts), batch_size):
            p, mk = parts[lo: lo + batch_size], mask[lo: lo + batch_size]
            emb = model.encode(p, mk)

            def select(remaining: Tensor, emb: Tensor = emb) -> Tensor:
                live = remaining.any(1)  # sets with no part left are not sampled again
                e, r = emb[live], remaining[live]

                def score_fn(x: Tensor, t: Tensor) -> Tensor:
                    return model.score(x, t, e, r)

                out = torch.zeros(remaining.shape, device=remaining.device)
                out[live] = sample_selection(score_fn, r, cfg.sigma, sampler, steps, snr,
                                             cfg.eps_sample, gen)
                return out

            out.extend(ar_grouping(select, mk, threshold, max_iters, min_parts))
    finally:
        model.train(was_training)
    return out

"""Training: the DSM objective of G-FARS (G8) and the objectives of the baselines, in one
resumable loop over freshly generated (or given) mixed sets.

Each (mixed set, target group) item takes one ground-truth group of its set, chosen
uniformly, as x0 (so p_data(x | P) puts mass 1/N on each group). Step ``k`` draws its
mixes from ``default_rng([seed, 1, k])`` and its noise from a torch generator whose state
is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvpr24.common.checkpoint import load_training_state, save_checkpoint, save_training_state
from cvpr24.gfars.baselines import CompNet, GRUMask, NoGFModel
from cvpr24.gfars.data import MixedPartSet, pad_sets, procedural_mixes
from cvpr24.gfars.model import GFARS, DescriptorEncoder, GFARSConfig
from cvpr24.gfars.sde import dsm_loss, marginal_std, per_node_bayes_score

METHODS = ("gfars", "gfars_ef", "wo_gnn", "wo_gnn_ef", "wo_gf", "compnet", "compnet_gnn",
           "gru_mask")


def method_config(method: str, base: GFARSConfig) -> GFARSConfig:
    """The config each method trains with, from one base config (same encoder and width)."""
    from dataclasses import replace

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("gfars_ef", "wo_gnn_ef"):
        base = base.ef()
    if method.startswith("wo_gnn"):
        base = replace(base, gnn=False, edge_absdiff=False)
    return base


def build_method(method: str, base: GFARSConfig, seed: int | None = None) -> nn.Module:
    """A freshly initialised model of ``method``; with ``seed``, its initial weights are
    drawn from ``torch.manual_seed(seed)`` (the global RNG is restored afterwards)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_method(method, base)
    cfg = method_config(method, base)
    if method == "wo_gf":
        return NoGFModel(cfg)
    if method.startswith("compnet"):
        return CompNet(cfg, context=method == "compnet_gnn")
    if method == "gru_mask":
        return GRUMask(cfg)
    return GFARS(cfg)


def batch_tensors(sets: Sequence[MixedPartSet]) -> tuple[Tensor, Tensor, Tensor]:
    parts, groups, mask = pad_sets(list(sets))
    return torch.from_numpy(parts), torch.from_numpy(groups), torch.from_numpy(mask)


def random_targets(groups: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
    """x0 ``(B, M)``: the indicator of one ground-truth group per set, chosen uniformly.
    Group labels of a set are 0..N-1 (noise parts -1, padding -2)."""
    n_groups = (groups.masked_fill(~mask, -1).amax(1) + 1).clamp_min(1)
    k = (torch.rand(len(groups), generator=gen).to(groups.device) * n_groups).long()
    return ((groups == k[:, None]) & mask).float()


def dsm_draw(cfg: GFARSConfig, groups: Tensor, mask: Tensor,
             gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One draw of G8's randomness: a target group x0 per set, t ~ U(eps_train, 1) per set
    and z ~ N(0, I). Returns the noised selection x = x0 + sigma_t z ``(B, M)``, t, z and
    sigma_t."""
    x0 = random_targets(groups, mask, gen)
    t = (torch.rand(len(groups), generator=gen) * (1 - cfg.eps_train) + cfg.eps_train).to(x0)
    z = torch.randn(x0.shape, generator=gen).to(x0) * mask
    std = marginal_std(t, cfg.sigma)
    return (x0 + std[:, None] * z) * mask, t, z, std


def dsm_objective(model: GFARS, parts: Tensor, groups: Tensor, mask: Tensor,
                  gen: torch.Generator) -> Tensor:
    """G8: t ~ U(eps_train, 1) per set, z ~ N(0, I), loss sum_i (s(x0 + sigma_t z) sigma_t + z_i)^2."""
    emb = model.encode(parts, mask)
    x, t, z, std = dsm_draw(model.cfg, groups, mask, gen)
    return dsm_loss(model.score(x, t, emb, mask), z, std, mask, model.cfg.loss_reduction)


@torch.no_grad()
def per_node_bayes_objective(cfg: GFARSConfig, batches: int = 200, seed: int = 0) -> float:
    """The training objective (G8) of the per-node Bayes score (B1, prior 1/N), averaged
    over ``batches`` batches of fresh procedural mixes: the plateau of a score net that
    does not use the other parts. A training loss below it means the net does."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for k in range(batches):
        sets = procedural_mixes(cfg.batch_size, int(np.random.default_rng([seed, 2, k]).integers(2**31)),
                                n_points=cfg.points_per_part)
        _, groups, mask = batch_tensors(sets)
        x, _, z, std = dsm_draw(cfg, groups, mask, gen)
        n_groups = (groups.masked_fill(~mask, -1).amax(1) + 1).float()
        score = per_node_bayes_score(x, std, 1.0 / n_groups) * mask
        total += dsm_loss(score, z, std, mask, cfg.loss_reduction).item()
    return total / batches


def select_bce_objective(model: NoGFModel, parts: Tensor, groups: Tensor, mask: Tensor,
                         gen: torch.Generator) -> Tensor:
    """w/o GF: BCE between the regressed selection and a random target group."""
    logits = model.logits(model.encode(parts, mask), mask)
    x0 = random_targets(groups, mask, gen)
    return F.binary_cross_entropy_with_logits(logits[mask], x0[mask])


def pair_bce_objective(model: CompNet, parts: Tensor, groups: Tensor, mask: Tensor,
                       gen: torch.Generator) -> Tensor:
    """Comp-Net: BCE on same-shape labels of every ordered pair i != j of real parts."""
    logits = model.pair_logits(model.encode(parts, mask), mask)
    same = (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
    pair_mask = mask[:, :, None] & mask[:, None, :] & ~torch.eye(mask.shape[1], dtype=torch.bool)
    return F.binary_cross_entropy_with_logits(logits[pair_mask], same[pair_mask].float())


def mask_bce_objective(model: GRUMask, parts: Tensor, groups: Tensor, mask: Tensor,
                       gen: torch.Generator) -> Tensor:
    """GRU-Mask: teacher-forced BCE of each AR step's mask (no randomness drawn)."""
    return model.loss(parts, groups, mask)


def objective_for(model: nn.Module) -> Callable:
    if isinstance(model, NoGFModel):
        return select_bce_objective
    if isinstance(model, GRUMask):
        return mask_bce_objective
    if isinstance(model, CompNet):
        return pair_bce_objective
    return dsm_objective


def init_encoder_stats(model: nn.Module, seed: int, n_points: int,
                       data: Sequence[MixedPartSet] | None = None, n_mixes: int = 256) -> None:
    """Set the descriptor standardisation from training mixes (the first ``n_mixes`` of
    ``data``, or fresh procedural mixes); a no-op for PointNet."""
    enc = model.point_encoder
    if isinstance(enc, DescriptorEncoder):
        sets = (list(data[:n_mixes]) if data is not None
                else procedural_mixes(n_mixes, seed * 1000 + 7, n_points=n_points))
        enc.set_stats(torch.from_numpy(np.concatenate([s.parts for s in sets])))


def train(
    model: nn.Module,
    steps: int,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float | None = None,
    data: Sequence[MixedPartSet] | None = None,
    state_path: str | Path | None = None,
    first_step: int = 0,
    save_every: int = 500,
    log_every: int = 50,
    log: Callable[[str], None] | None = None,
    device: str | torch.device | None = None,
) -> list[tuple[int, float]]:
    """Train ``model`` for ``steps`` optimiser steps (Adam, no schedule) on its objective.

    ``data``: a list of mixes to draw batches from (e.g. official PartNet mixes); by default
    each step generates fresh procedural mixes. ``state_path``: a resumable training state,
    written every ``save_every`` steps and at the end, and resumed from when it exists.
    ``first_step``: when ``model`` already holds the weights of a run of that many steps
    (a warm start from a checkpoint, which has no optimiser state), training continues
    from there: the encoder statistics are kept, Adam starts afresh, and step k draws the
    mixes of step k as in one run. A state file, when present, takes precedence.
    ``device``: where the model and batches live (``"cuda"`` when present); the noise
    generator stays on the CPU so runs are reproducible across devices.
    Under ``torch.distributed`` (e.g. ``torchrun``), every rank draws its own batch, the
    gradients are averaged across ranks after each backward pass (data parallel, rank 0's
    initial weights broadcast first) and only rank 0 writes the state file (a resumed
    distributed run restores rank 0's noise state on every rank).
    Returns the loss curve ``[(step, mean loss over the last log_every steps), ...]``.
    """
    from cvpr24.common.seed import get_device

    device = get_device(device)
    dist = torch.distributed
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    cfg = model.cfg
    batch_size = batch_size or cfg.batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr or cfg.lr)
    gen = torch.Generator().manual_seed(seed + 7919 * rank)
    objective = objective_for(model)
    start, curve = first_step, []
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.is_file():
        st = load_training_state(state_path, model=model, optimizer=opt, restore_rng=False)
        start, curve = st["step"], [tuple(c) for c in json.loads(st["extra"]["curve"])]
        gen.set_state(st["extra"]["gen"])
    elif first_step == 0:
        init_encoder_stats(model, seed, cfg.points_per_part, data)
    model.to(device).train()
    if world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    running, t0 = [], time.perf_counter()
    for step in range(start, steps):
        rng = np.random.default_rng([seed, 1, step] + ([rank] if rank else []))
        if data is None:
            sets = procedural_mixes(batch_size, int(rng.integers(2**31)),
                                    n_points=cfg.points_per_part)
        else:
            sets = [data[i] for i in rng.integers(len(data), size=batch_size)]
        parts, groups, mask = (a.to(device) for a in batch_tensors(sets))
        loss = objective(model, parts, groups, mask, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        opt.step()
        if world > 1:  # as DDP's broadcast_buffers: BN statistics follow rank 0
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        running.append(loss.item())
        if (step + 1) % log_every == 0:
            curve.append((step + 1, float(np.mean(running))))
            running = []
            if log:
                log(f"step {step + 1}/{steps} loss {curve[-1][1]:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)")
        last = (step + 1) % save_every == 0 or step + 1 == steps
        if state_path is not None and rank == 0 and last:
            save_training_state(state_path, model=model, optimizer=opt, step=step + 1,
                                extra={"gen": gen.get_state(), "curve": json.dumps(curve)})
    return curve


def save_method(path: str | Path, model: nn.Module, method: str, seed: int, steps: int,
                curve: list, metrics: dict | None = None) -> Path:
    """Our checkpoint: safetensors + JSON sidecar (config, method, seed, loss curve)."""
    return save_checkpoint(path, model.state_dict(), config=model.cfg, seed=seed,
                           data="procedural furniture mixes (cvpr24.gfars.data)",
                           metrics={"steps": steps, **(metrics or {})},
                           extra={"method": method, "loss_curve": curve})

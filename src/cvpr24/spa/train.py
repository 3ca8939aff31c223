"""Training loop for multi-label classifiers, on one device or under DDP, resumable.

One loop serves the CPU reproduction (features held in memory) and full-scale image training
(a ``Dataset`` and a ``DataLoader``). Under ``torchrun`` / ``accelerate launch`` (which set
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) it initialises ``torch.distributed`` (NCCL on GPU,
gloo on CPU) and wraps the model in ``DistributedDataParallel``.

Sharding is deterministic: each epoch draws one permutation from ``(seed, epoch)``; rank ``r``
of ``W`` takes ``perm[r::W]`` in per-rank batches of ``batch_size // W``. So the union of one
step's shards is exactly the single-process batch of that step, and (mean reduction) DDP
follows the single-process trajectory up to summation order. The same permutation rule makes
``--resume`` continue exactly where a run stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from cvpr24.common import (
    load_checkpoint,
    load_training_state,
    preserved_global_state,
    save_checkpoint,
    save_training_state,
)
from cvpr24.common.distributed import init_process_group
from cvpr24.spa.losses import loss_from_config
from cvpr24.spa.metrics import mean_average_precision
from cvpr24.spa.model import SPAConfig, build_loss, build_model, load_torchvision_resnet

Data = tuple[Tensor, Tensor] | torch.utils.data.Dataset


@dataclass
class TrainResult:
    """The trained model (EMA copy if it scored the higher validation mAP), its loss and the
    per-epoch history (loss, time, and validation mAP when a validation set was given)."""

    model: nn.Module
    loss: nn.Module
    history: list[dict] = field(default_factory=list)


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group when launched by
    ``torchrun`` / ``accelerate launch`` with ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_shards(n: int, epoch: int, seed: int, rank: int, world: int) -> Tensor:
    """This rank's example indices for ``epoch``: ``perm[:n - n % W][rank::W]``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[: n - n % world][rank::world]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only, none on biases and normalisation parameters [ASL]."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batches(data: Data, idx: Tensor, batch_size: int, num_workers: int):
    """Yield ``(x, y)`` batches of the examples ``idx`` in order."""
    if isinstance(data, tuple):
        x, y = data
        for start in range(0, len(idx), batch_size):
            b = idx[start:start + batch_size]
            yield x[b], y[b]
    else:
        batches = [idx[s:s + batch_size].tolist() for s in range(0, len(idx), batch_size)]
        yield from torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=num_workers)


def _len(data: Data) -> int:
    return len(data[0]) if isinstance(data, tuple) else len(data)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Data | Tensor, batch_size: int = 1024,
                   device: torch.device | str = "cpu", num_workers: int = 0) -> Tensor:
    """Raw outputs ``v`` (N, C) of ``model`` on ``data`` (a features tensor, a ``(x, y)`` pair or a
    Dataset), in eval mode, on CPU as float32."""
    model.eval()
    if isinstance(data, Tensor):
        data = (data, torch.zeros(len(data)))
    out = [model(x.to(device)).float().cpu()
           for x, _ in _batches(data, torch.arange(_len(data)), batch_size, num_workers)]
    return torch.cat(out)


@preserved_global_state()  # seeds torch globally for the model init; restored on return
def train(cfg: SPAConfig, train_data: Data, *, val_data: Data | None = None,
          out_dir: str | os.PathLike | None = None, resume: bool = False,
          device: str | torch.device | None = None, log: Callable[[str], None] | None = None,
          pretrained: str | os.PathLike | None = None) -> TrainResult:
    """Train ``build_model(cfg)`` with ``build_loss(cfg)`` on ``train_data``.

    Parameters
    ----------
    cfg : SPAConfig
    train_data : (x, y) tensors or Dataset
        Labels 1/0 with -1 or NaN for missing labels.
    val_data : optional
        When given, the validation mAP of the regular and EMA weights is logged each epoch and
        the better one is returned (the ASL recipe).
    out_dir : path, optional
        Where ``training_state.pt`` (every ``cfg.checkpoint_every`` epochs) and the final
        ``model.safetensors`` + sidecar are written (rank 0 only).
    resume : bool
        Continue from ``out_dir/training_state.pt``.
    device : optional
        Default: this rank's CUDA device when available, else CPU.
    log : callable, optional
        Receives one line per epoch (rank 0 only).
    pretrained : path, optional
        torchvision ResNet ImageNet weights for the backbone (``arch`` resnet50/101).
    """
    # 1. process group, device, seeds
    rank, world = distributed_context()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the world size {world}")
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    say = (log or (lambda s: None)) if rank == 0 else (lambda s: None)

    # 2. model, loss, optimiser, schedule, EMA
    model = build_model(cfg)
    if pretrained is not None:
        if cfg.arch == "mlp":
            raise ValueError("pretrained weights need arch 'resnet50' or 'resnet101'")
        load_torchvision_resnet(model.backbone, pretrained)
    model = model.to(device)
    loss_fn = build_loss(cfg)
    optim_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # Adam: weight decay as L2 in the gradient (ASL's setting); AdamW: decoupled
    optimizer = optim_cls(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    n = _len(train_data)
    local_bs = cfg.batch_size // world
    steps_per_epoch = math.ceil((n - n % world) / world / local_bs)
    scheduler = None
    if cfg.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=max(cfg.cycle_epochs, cfg.epochs) * steps_per_epoch,
            pct_start=cfg.pct_start)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    # 3. resume
    start_epoch, history = 0, []
    state_path = Path(out_dir) / "training_state.pt" if out_dir is not None else None
    if resume:
        if state_path is None:
            raise ValueError("resume=True needs out_dir (where training_state.pt was written)")
        restored = load_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler)
        start_epoch, history = restored["step"], list(restored["extra"].get("history", []))
        if ema is not None and "ema" in restored["extra"]:
            ema.load_state_dict(restored["extra"]["ema"])
        say(f"resumed from {state_path} after epoch {start_epoch}")
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    # 4. epochs
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        idx = epoch_shards(n, epoch, cfg.seed, rank, world)
        for x, y in _batches(train_data, idx, local_bs, cfg.num_workers):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total, count = total + float(loss.detach()), count + 1
        record = {"epoch": epoch + 1, "loss": total / max(count, 1), "time_s": time.perf_counter() - t0}
        if val_data is not None and rank == 0:
            record["val_map"] = _val_map(model, loss_fn, val_data, cfg, device)
            if ema is not None:
                record["val_map_ema"] = _val_map(ema.module, loss_fn, val_data, cfg, device)
        history.append(record)
        say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        last = epoch + 1 == cfg.epochs
        if state_path is not None and rank == 0 and cfg.checkpoint_every > 0 and (
                (epoch + 1) % cfg.checkpoint_every == 0 or last):
            extra = {"history": history, **({"ema": ema.state_dict()} if ema is not None else {})}
            save_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                step=epoch + 1, extra=extra)

    # 5. pick regular or EMA weights (best final validation mAP), write the model
    final = model
    if ema is not None and history and history[-1].get("val_map_ema", -1.0) > history[-1].get("val_map", 0.0):
        final = ema.module
    if out_dir is not None and rank == 0:
        save_model(Path(out_dir) / "model.safetensors", final, cfg, loss_fn,
                   metrics=history[-1] if history else None)
    return TrainResult(final, loss_fn, history)


@torch.no_grad()
def _val_map(model: nn.Module, loss_fn: nn.Module, data: Data, cfg: SPAConfig, device) -> float:
    """Validation mAP of ``model`` (one pass over ``data``; labels -1/NaN are unknown)."""
    model.eval()
    logits, labels = [], []
    for x, y in _batches(data, torch.arange(_len(data)), cfg.batch_size, cfg.num_workers):
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y.float())
    y = torch.cat(labels)
    return mean_average_precision(loss_fn.predict_proba(torch.cat(logits)), torch.where(y == -1, torch.nan, y))


# --------------------------------------------------------------------------------------------
# model files: safetensors + sidecar carrying the loss (the link is part of the model)
# --------------------------------------------------------------------------------------------

def save_model(path: str | os.PathLike, model: nn.Module, cfg: SPAConfig, loss_fn: nn.Module, *,
               class_names: list[str] | None = None, metrics: dict | None = None,
               data: str | None = None) -> Path:
    """Write ``model`` as safetensors with a sidecar holding ``cfg``, the loss config (needed to
    read probabilities) and the class names."""
    return save_checkpoint(path, model.state_dict(), config=cfg, seed=cfg.seed, data=data,
                           metrics=metrics, extra={"loss": loss_fn.config(), "class_names": class_names})


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a model written by :func:`save_model`: returns ``(model, loss, cfg, meta)``.

    Raises ``ValueError`` when the sidecar has no loss config (outputs could not be read).
    """
    ckpt = load_checkpoint(path, SPAConfig, device=device)
    if not ckpt.meta.get("loss"):
        raise ValueError(f"{path}: the sidecar has no 'loss' config, so the link that turns outputs "
                         "into probabilities is unknown")
    if ckpt.config is None:
        raise ValueError(f"{path}: the sidecar has no model config")
    model = build_model(ckpt.config).to(device)
    model.load_state_dict(ckpt.tensors)
    model.eval()
    return model, loss_from_config(ckpt.meta["loss"]), ckpt.config, ckpt.meta


def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    """Features and 1/0/NaN labels as the float32 tensors :func:`train` takes."""
    return torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.float32))

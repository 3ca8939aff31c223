"""Training (resumable): on procedural billboard scenes (Claim B, ``cvpr24 train pixelsplat
--synthetic``) and on RealEstate10k/ACID-format chunks (``cvpr24 train pixelsplat --data``,
single process or DDP under ``torchrun``, AMP on CUDA); evaluation helpers for Claim B.

Both loops follow the official recipe (E16): Adam, linear warm-up from lr / warm_up_steps,
gradient-norm clipping, MSE (+ LPIPS when given) on target views rendered from Gaussians
predicted from the two context views, with near/far from the bounds shim (E0).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import Tensor

from cvpr24.common.checkpoint import (
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from cvpr24.common.progress import progress
from cvpr24.pixelsplat.data import ChunkStream, ViewSampler
from cvpr24.pixelsplat.geometry import bounds_shim, relative_disparity_to_depth
from cvpr24.pixelsplat.model import PixelSplat, PixelSplatConfig, loss, warm_up_factor
from cvpr24.pixelsplat.scenes import render_example

TARGET_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)
TRAIN_SEED_BASE = 100_000  # training scenes use seeds 100000 + i
EVAL_SEED_BASE = 200_000  # held-out scenes use seeds 200000 + i (disjoint)


def build_dataset(num_scenes: int, image_size: int, seed_base: int, fractions=(0.0, 1.0, *TARGET_FRACTIONS)
                  ) -> dict[str, Tensor]:
    """Ray-cast ``num_scenes`` scenes at ``fractions`` (context 0, 1 first) -> stacked tensors."""
    examples = [render_example(seed_base + i, image_size, fractions) for i in range(num_scenes)]
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def psnr(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR over the last three dims, both clipped to [0, 1] (M1)."""
    mse = (prediction.clamp(0, 1) - target.clamp(0, 1)).pow(2).flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, context: dict[str, Tensor],
               target: dict[str, Tensor], step: int, generator: torch.Generator,
               scaler: torch.amp.GradScaler | None = None, lpips: torch.nn.Module | None = None
               ) -> tuple[Tensor, Tensor]:
    """One optimisation step of (E16): encode ``context`` (two views), render ``target``, loss,
    clipped Adam step. ``model`` is a :class:`PixelSplat` or its ``DistributedDataParallel``
    wrapper; an enabled ``scaler`` runs the network under float16 autocast (CUDA AMP).
    Returns the loss and the rendered targets."""
    cfg = getattr(model, "module", model).cfg
    amp = scaler is not None and scaler.is_enabled()
    with torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext():
        pred = model(context["images"], context["extrinsics"], context["intrinsics"], target["extrinsics"],
                     target["intrinsics"], generator=generator)
    value = loss(pred.float(), target["images"], step, cfg, lpips)
    optimizer.zero_grad(set_to_none=True)
    if amp:
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
    else:
        value.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if amp:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return value, pred


def train_synthetic(cfg: PixelSplatConfig, out_dir: str | os.PathLike, *, steps: int, seed: int,
                    image_size: int = 24, batch_size: int = 2, num_scenes: int = 300, state_every: int = 50,
                    data: dict[str, Tensor] | None = None, show_progress: bool = True) -> dict:
    """Train ``PixelSplat(cfg)`` on fixed procedural scenes; resumes from ``out_dir/state.pt``.

    Each step draws ``batch_size`` scenes and 2 target views per scene from ``TARGET_FRACTIONS``
    with a generator seeded by ``seed``. Returns the history (``step``, ``loss``, ``psnr``).
    Writes ``out_dir/model.safetensors`` (+ sidecar) at the end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else build_dataset(num_scenes, image_size, TRAIN_SEED_BASE)
    image_size = data["images"].shape[-1]
    torch.manual_seed(seed)
    model = PixelSplat(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warm_up_factor(s, cfg.warm_up_steps))
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list] = {"step": [], "loss": [], "psnr": []}
    start = 0
    state_path = out / "state.pt"
    if state_path.is_file():
        restored = load_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler)
        start = restored["step"]
        gen.set_state(restored["extra"]["generator"])
        history = restored["extra"]["history"]
    n = data["images"].shape[0]
    model.train()
    for step in progress(range(start, steps), desc=f"train seed {seed}", initial=start, total=steps,
                         disable=None if show_progress else True):
        scenes = torch.randint(0, n, (batch_size,), generator=gen)
        targets = 2 + torch.stack([torch.randperm(len(TARGET_FRACTIONS), generator=gen)[:2] for _ in scenes])
        ctx = {k: data[k][scenes, :2] for k in ("images", "extrinsics", "intrinsics")}
        tgt = {k: data[k][scenes[:, None], targets] for k in ("images", "extrinsics", "intrinsics")}
        value, pred = train_step(model, optimizer, scheduler, ctx, tgt, step, gen)
        history["step"].append(step + 1)
        history["loss"].append(value.item())
        history["psnr"].append(float(psnr(pred.detach(), tgt["images"]).mean()))
        if (step + 1) % state_every == 0 or step + 1 == steps:
            save_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step + 1,
                                extra={"generator": gen.get_state(), "history": history})
    save_checkpoint(out / "model.safetensors", {k: v.half() for k, v in model.state_dict().items()},
                    config=cfg, seed=seed, data=f"{n} billboard scenes {image_size}px, seeds {TRAIN_SEED_BASE}+i",
                    metrics={"steps": steps, "final_train_psnr": history["psnr"][-1] if history["psnr"] else None},
                    extra={"history": history})
    return history


def train_chunks(cfg: PixelSplatConfig, root: str | os.PathLike, out_dir: str | os.PathLike, *, steps: int,
                 seed: int = 111_123, image_size: int = 256, batch_size: int = 7, sampler: ViewSampler | None = None,
                 device: str | torch.device = "cpu", amp: bool = False, state_every: int = 1000,
                 lpips: torch.nn.Module | None = None, show_progress: bool = True) -> tuple[PixelSplat, dict]:
    """Train ``PixelSplat(cfg)`` on RealEstate10k/ACID-format chunks (``root/index.json`` and
    the ``.torch`` files it names) with the official recipe (E16, V1, V2); resumes from
    ``out_dir/state.pt`` (model, optimizer, scheduler, AMP scaler, every generator, the data
    position, step).

    Under ``torch.distributed`` (e.g. ``torchrun``; the caller initialises the process group)
    each rank streams its own share of the chunks and ``DistributedDataParallel`` averages the
    gradients; rank 0 writes the state and ``out_dir/model.safetensors`` (float32).
    ``amp=True`` (CUDA only) runs the network under float16 autocast with a gradient scaler;
    the rasterizer always composites in float32/float64. Returns the model and its history.
    """
    device = torch.device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device, got device={device}: AMP is CUDA-only "
                         "(float16 autocast is not supported for CPU training here)")
    if image_size % cfg.patch_multiple:
        raise ValueError(f"image_size must be a multiple of {cfg.patch_multiple}, got {image_size}")
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    stream = ChunkStream(root, image_size, sampler, seed, rank, world)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = PixelSplat(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warm_up_factor(s, cfg.warm_up_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + rank)
    history: dict[str, list] = {"step": [], "loss": [], "psnr": []}
    start = 0
    state_path = out / "state.pt"
    if state_path.is_file():
        restored = load_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler)
        ranks = restored["extra"]["ranks"]
        if len(ranks) != world:
            raise ValueError(f"{state_path} was written by {len(ranks)} rank(s); resume it with {len(ranks)}, "
                             f"not {world}")
        start, history = restored["step"], restored["extra"]["history"]
        gen.set_state(ranks[rank]["generator"])
        stream.load_state_dict(ranks[rank]["stream"])
        scaler.load_state_dict(restored["extra"]["scaler"])
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    model.train()
    for step in progress(range(start, steps), desc="train", initial=start, total=steps,
                         disable=True if rank or not show_progress else None):
        examples = [stream.next(step) for _ in range(batch_size)]
        batch = {k: torch.stack([e[k] for e in examples]).to(device) for k in examples[0]}
        ctx, tgt = ({k: v[:, sl] for k, v in batch.items()} for sl in (slice(0, 2), slice(2, None)))
        value, pred = train_step(net, optimizer, scheduler, ctx, tgt, step, gen, scaler, lpips)
        history["step"].append(step + 1)
        history["loss"].append(value.item())
        history["psnr"].append(float(psnr(pred.detach().float(), tgt["images"]).mean()))
        if (step + 1) % state_every == 0 or step + 1 == steps:
            mine = {"generator": gen.get_state(), "stream": stream.state_dict()}
            ranks = [mine]
            if distributed:
                ranks = [None] * world
                dist.all_gather_object(ranks, mine)
            if rank == 0:
                save_training_state(state_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                    step=step + 1, extra={"ranks": ranks, "history": history,
                                                          "scaler": scaler.state_dict()})
    if rank == 0:
        save_checkpoint(out / "model.safetensors", model.state_dict(), config=cfg, seed=seed,
                        data=f"chunks under {root}", metrics={"steps": steps, "ranks": world},
                        extra={"history": history})
    if distributed:
        dist.barrier()
    return model, history


def load_trained(path: str | os.PathLike) -> tuple[PixelSplat, dict]:
    """Load a model written by :func:`train_synthetic` (weights stored in float16)."""
    ckpt = load_checkpoint(path, PixelSplatConfig)
    model = PixelSplat(ckpt.config)
    model.load_state_dict({k: v.float() for k, v in ckpt.tensors.items()})
    return model.eval(), ckpt.meta


@torch.no_grad()
def argmax_depth(model: PixelSplat, images: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """Depth of the most likely bucket plus its offset (E7), per context pixel ``[B, V, H, W]``."""
    near, far = bounds_shim(extrinsics, intrinsics, images.shape[-2:], model.cfg.near_disparity)
    feats = model.encoder.features(images, extrinsics, intrinsics, near, far)
    phi, delta = model.encoder.depth_predictor.distribution(feats)
    z = phi.argmax(-1, keepdim=True)
    r = (z + delta.gather(-1, z))[..., 0] / phi.shape[-1]
    return relative_disparity_to_depth(r, near[:, :, None, None], far[:, :, None, None])


def depth_errors(pred: Tensor, gt: Tensor, focal_px: Tensor) -> dict[str, float]:
    """Median abs-rel depth error and median disparity error in pixels (baseline 1) (M4)."""
    absrel = ((pred - gt).abs() / gt).median()
    disparity = (focal_px / pred - focal_px / gt).abs().median()
    return {"absrel": float(absrel), "disparity_px": float(disparity)}


@torch.no_grad()
def evaluate(model: PixelSplat, data: dict[str, Tensor], target: int = 4, seed: int = 0, batch_size: int = 8
             ) -> dict[str, Tensor]:
    """Per-scene PSNR at view ``target`` (one sampled render), depth abs-rel and disparity error
    of the argmax depth on both context views."""
    gen = torch.Generator().manual_seed(seed)
    out = {"psnr": [], "absrel": [], "disparity_px": []}
    n, size = data["images"].shape[0], data["images"].shape[-1]
    for i in range(0, n, batch_size):
        sl = slice(i, min(n, i + batch_size))
        ctx = [data[k][sl, :2] for k in ("images", "extrinsics", "intrinsics")]
        g = model.encode(*ctx, generator=gen)
        pred = model.render(g, data["extrinsics"][sl, target:target + 1], data["intrinsics"][sl, target:target + 1],
                            (size, size))
        out["psnr"].append(psnr(pred[:, 0], data["images"][sl, target]))
        depth = argmax_depth(model, *ctx)
        for j in range(depth.shape[0]):
            e = depth_errors(depth[j], data["depths"][sl][j, :2], ctx[2][j, 0, 0, 0] * size)
            out["absrel"].append(torch.tensor([e["absrel"]]))
            out["disparity_px"].append(torch.tensor([e["disparity_px"]]))
    return {k: torch.cat(v) for k, v in out.items()}


def claim_b_configs() -> dict[str, PixelSplatConfig]:
    """The two Claim B networks: the CPU preset (Z=16, gpp=3) and its Z=1/gpp=1 ablation.

    Linear warm-up over 80 steps (10 % of the 800-step budget the prototype used; 20 % of our 400)."""
    prob = PixelSplatConfig.cpu(warm_up_steps=80)
    return {"prob": prob, "direct": prob.direct()}


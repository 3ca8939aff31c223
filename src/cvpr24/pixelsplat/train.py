"""Training and evaluation on procedural billboard scenes (resumable), used by Claim B and
``cvpr24 train pixelsplat --synthetic``.

The loop follows the official recipe (E16): Adam, linear warm-up from lr / warm_up_steps,
gradient-norm clipping, MSE on target views rendered from Gaussians predicted from the two
context views, with near/far from the bounds shim (E0).
"""

from __future__ import annotations

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
        gaussians = model.encode(ctx["images"], ctx["extrinsics"], ctx["intrinsics"], generator=gen)
        pred = model.render(gaussians, tgt["extrinsics"], tgt["intrinsics"], (image_size, image_size))
        value = loss(pred, tgt["images"], step, cfg)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
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

    Warm-up covers the first 10 % of the 800-step budget, as in the prototype."""
    prob = PixelSplatConfig.cpu(warm_up_steps=80)
    return {"prob": prob, "direct": prob.direct()}


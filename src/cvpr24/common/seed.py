"""Seeding and device choice."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a NumPy generator for ``seed``.

    Prefer passing the returned generator (or a ``torch.Generator``) explicitly; the global
    seeding is for third-party code that draws from the global state.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global state, for third-party code)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``cpu`` unless another is asked for.

    ``"auto"`` picks CUDA when available, else CPU. Asking for an unavailable CUDA device
    raises ``ValueError`` rather than silently falling back.
    """
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'cpu', 'cuda[:i]', 'mps' or 'auto', got {device!r}"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was asked for but MPS is not available here")
    return dev

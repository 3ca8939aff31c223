"""Process-wide settings a library function must leave as it found them.

``with preserved_global_state():`` (or ``@preserved_global_state()`` on a function) saves
torch's intra-op thread count, the mkldnn / cuDNN flags, deterministic-algorithm mode, default
dtype, float32 matmul precision, grad mode, the Python / NumPy / torch (CPU and initialised
CUDA) random states, the warnings filters and the environment variables, and restores all of
them on exit, also when the body raises. ``global_state()`` is the comparable snapshot the
tests use to check that a function changed none of them.

Not restorable, so library code must not touch it: matplotlib's backend and pyplot's figure
registry (a ``matplotlib.use("Agg")`` inside a call takes inline plotting away from a Jupyter
user). Plots are drawn on a bare ``matplotlib.figure.Figure``, which ``fig.savefig`` renders
without a global backend; tests/common/test_plot_backend.py checks hcc, lidar, lotus, spa and
egothink. sag, text2hoi, gfars, cutie and pixelsplat still call ``matplotlib.use("Agg")`` and
pyplot, and are to be converted.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.numpy().tobytes() if isinstance(p, torch.Tensor) else repr(p).encode())
    return h.hexdigest()[:16]


def global_state() -> dict[str, Any]:
    """A snapshot of every setting :func:`preserved_global_state` restores, as plain values
    (random states as digests), so two snapshots compare with ``==``."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "num_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.enabled,
        "cudnn": (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                  torch.backends.cudnn.deterministic),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "default_dtype": torch.get_default_dtype(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "grad_enabled": torch.is_grad_enabled(),
        "rng": _digest(torch.get_rng_state(), *cuda,
                       np.random.get_state(), random.getstate()),  # noqa: NPY002
        "warnings_filters": list(warnings.filters),
        "environ": dict(os.environ),
    }


@contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore torch / NumPy / Python process-wide settings on exit (see the module docstring).

    The inter-op thread count is not covered: torch allows setting it only once per process.
    """
    threads = torch.get_num_threads()
    mkldnn = torch.backends.mkldnn.enabled
    cudnn = (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    det = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    dtype = torch.get_default_dtype()
    precision = torch.get_float32_matmul_precision()
    grad = torch.is_grad_enabled()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():    # restores the filters (and showwarning)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
        (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.deterministic) = cudnn
        with warnings.catch_warnings():  # the first call imports sympy, which adds a filter
            torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(precision)
        torch.set_grad_enabled(grad)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])  # noqa: NPY002
        random.setstate(rng[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for k in set(os.environ) - set(environ):
            del os.environ[k]
        os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})

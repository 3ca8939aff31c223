"""Plumbing shared by the modules: records, report, seeding, checkpoints, atomic I/O.

No method lives here. Names are imported on first use (PEP 562), so ``import cvpr24.common``
and its light submodules (``argtypes``, ``io``) do not pull in torch: ``cvpr24 --help`` stays fast.
No exported name may be a submodule's name: importing the submodule would replace it (the
progress bar is ``cvpr24.common.progress.progress``).
"""

import importlib

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_training_state": "checkpoint",
    "save_checkpoint": "checkpoint",
    "save_training_state": "checkpoint",
    "optional_import": "extras",
    "atomic_path": "io",
    "atomic_write": "io",
    "report_step": "progress",
    "Claim": "result",
    "Measurement": "result",
    "Result": "result",
    "get_device": "seed",
    "seed_everything": "seed",
    "best_time": "timing",
    "global_state": "state",
    "preserved_global_state": "state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cvpr24.common' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cvpr24.common.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__

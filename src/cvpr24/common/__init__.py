"""Plumbing shared by the modules: records, report, seeding, checkpoints, atomic I/O.

No method lives here. Heavy imports (safetensors, tqdm) happen inside the functions that need
them, so importing ``cvpr24.common`` stays cheap.
"""

from cvpr24.common.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from cvpr24.common.extras import optional_import
from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.common.result import Claim, Measurement, Result
from cvpr24.common.seed import get_device, seed_everything

__all__ = [
    "Checkpoint",
    "Claim",
    "Measurement",
    "Result",
    "atomic_path",
    "atomic_write",
    "get_device",
    "load_checkpoint",
    "load_training_state",
    "optional_import",
    "save_checkpoint",
    "save_training_state",
    "seed_everything",
]

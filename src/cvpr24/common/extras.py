"""Optional dependencies: import them, or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(name: str, extra: str) -> ModuleType:
    """Import ``name``; if it is missing, raise an ImportError naming ``cvpr24[extra]``."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(
            f"{name!r} is not installed; it comes with the {extra!r} extra: "
            f"pip install 'cvpr24[{extra}]'"
        ) from e

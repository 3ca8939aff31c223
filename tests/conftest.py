import os
import sys
from pathlib import Path

import torch

# Under pytest-xdist each worker gets one thread: two workers on two cores, no oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Tests are imported with --import-mode=importlib (pyproject.toml), so test files in different
# module folders may share a name (test_data.py). Helper modules beside a module's tests are
# imported by name: each test folder is put on sys.path, so give helpers module-unique names
# (hcc_helpers.py, _lotus_helpers.py, ...).
for folder in sorted(Path(__file__).parent.iterdir()):
    if folder.is_dir() and not folder.name.startswith(("_", ".")):
        sys.path.insert(0, str(folder))

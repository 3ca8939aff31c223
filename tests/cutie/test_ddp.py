import os
import subprocess
import sys
from pathlib import Path

import torch
from _cutie_helpers import tiny_config

from cvpr24.cutie.model import CutieModel


def test_ddp_two_gloo_ranks_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("_cutie_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29600 + os.getpid() % 1000),
        str(worker),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(0)
    init = CutieModel(tiny_config()).state_dict()
    moved = 0
    for k in a:
        assert torch.equal(a[k], b[k]), (
            k
        )  # different data per rank, averaged gradients: same weights
        moved += not torch.equal(a[k], init[k])
    assert moved > 100

"""Data-parallel training with torchrun: two gloo CPU processes end with the same weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from cvpr24.gfars.model import GFARS, GFARSConfig


def test_two_gloo_ranks_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("_gfars_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port
           "--nproc_per_node", "2", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # broadcast + averaged gradients: same weights
    torch.manual_seed(0)  # rank 0's initial weights, as the worker built them
    init = GFARS(GFARSConfig.cpu(feat_len=8, pointnet_widths=(8, 8), points_per_part=16,
                                 batch_size=3)).state_dict()
    assert not torch.equal(a["sel_gnn.convs.0.lin1.weight"], init["sel_gnn.convs.0.lin1.weight"])

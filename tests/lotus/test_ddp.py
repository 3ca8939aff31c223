import os
import subprocess
import sys
from pathlib import Path

import torch

from cvpr24.lotus.models import SmallCNN


def test_ddp_two_gloo_ranks_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(0)
    init = SmallCNN(num_classes=4, width=4).state_dict()
    for k in a:
        if k.endswith("weight") and "block" in k and a[k].ndim == 4:
            assert torch.equal(a[k], b[k]), k          # DDP averaged the gradients: same weights
            assert not torch.equal(a[k], init[k]), k   # and training moved them

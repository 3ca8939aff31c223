import os
import subprocess
import sys
from pathlib import Path

import torch

from cvpr24.lotus.models import SmallCNN


def test_ddp_two_gloo_ranks_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: the launcher's store listens on a port the kernel picks and the ranks join
    # it, so two runs at once (xdist workers, other users) never meet on one port; a port
    # derived from the pid collided whenever two test processes had pids equal modulo 1000
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(tmp_path)]
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

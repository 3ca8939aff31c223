"""Run by torchrun in test_distributed.py: two gloo ranks train a DDP model for a step, destroy the
group and print, from rank 0, how many gloo worker threads ran with the group and are left after."""

import json
import os
import sys

import torch
import torch.distributed as dist

from cvpr24.common.distributed import init_process_group


def gloo_workers() -> int:
    """Threads of this process that torch names as gloo collective workers."""
    names = (open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    return sum(name == "pt_gloo_runloop" for name in names)


torch.set_num_threads(1)
if sys.argv[1] == "plain":
    dist.init_process_group("gloo")
else:
    init_process_group("gloo")
rank = dist.get_rank()
net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
net(torch.randn(8, 4)).sum().backward()
with_group = gloo_workers()
del net
dist.destroy_process_group()
if rank == 0:
    print(json.dumps({"with_group": with_group, "after_destroy": gloo_workers()}), flush=True)
if sys.argv[1] == "plain":  # the leaked workers may abort a normal exit: that is the bug, not the control
    os._exit(0)

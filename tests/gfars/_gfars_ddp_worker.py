"""Run by torchrun in test_ddp.py: two gloo ranks train a tiny G-FARS; rank r saves its weights."""

import sys

import torch

from cvpr24.common.distributed import init_process_group
from cvpr24.gfars.model import GFARS, GFARSConfig
from cvpr24.gfars.train import train

torch.set_num_threads(1)
init_process_group("gloo")
rank = torch.distributed.get_rank()
torch.manual_seed(rank)  # different initial weights: the broadcast must align them
model = GFARS(GFARSConfig.cpu(feat_len=8, pointnet_widths=(8, 8), points_per_part=16,
                              batch_size=3))
train(model, 3, seed=0)
torch.save(model.state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
torch.distributed.destroy_process_group()

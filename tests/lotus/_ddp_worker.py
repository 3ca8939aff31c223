"""Run by torchrun in test_ddp.py: two gloo ranks poison a tiny model; rank r saves its weights."""

import sys

import torch

from cvpr24.lotus.attack import LotusConfig, poison_train
from cvpr24.lotus.cli import _init_distributed
from cvpr24.lotus.models import SmallCNN
from cvpr24.lotus.partition import FixedPartitioner
from cvpr24.lotus.triggers import TriggerSet

torch.set_num_threads(1)
rank, _ = _init_distributed("cpu")
g = torch.Generator().manual_seed(0)
x = torch.rand(120, 3, 16, 16, generator=g)
y = torch.arange(120) % 4
torch.manual_seed(0)
model = SmallCNN(num_classes=4, width=4)
part = FixedPartitioner(lambda t: (t[:, 0].mean((1, 2)) > 0.5).long(), 2)
cfg = LotusConfig.cpu(steps=3, batch_size=16, min_victim=4, other_neg_frac=0.1)
run = poison_train(model, x, y, victim=0, target=3, triggers=TriggerSet(2, 16), partitioner=part, cfg=cfg)
torch.save(run.model.state_dict(), f"{sys.argv[1]}/rank{rank}.pt")
torch.distributed.destroy_process_group()

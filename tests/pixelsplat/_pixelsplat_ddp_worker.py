"""Run by torchrun in test_train_chunks.py: two gloo ranks train on their own chunks; rank r
saves its weights."""

import sys
from pathlib import Path

import torch

from cvpr24.common.distributed import init_process_group
from cvpr24.pixelsplat.data import ViewSampler
from cvpr24.pixelsplat.train import claim_b_configs, train_chunks

torch.set_num_threads(1)
init_process_group("gloo")
rank = torch.distributed.get_rank()
root = Path(sys.argv[1])
cfg = claim_b_configs()["prob"]
cfg.warm_up_steps = 2
sampler = ViewSampler(initial_min_gap=2, initial_max_gap=2, min_gap=2, max_gap=2, num_targets=1)
model, _ = train_chunks(cfg, root / "data", root / "run", steps=2, seed=3, image_size=8, batch_size=1,
                        sampler=sampler, show_progress=False)
torch.save(model.state_dict(), root / f"rank{rank}.pt")
torch.distributed.destroy_process_group()

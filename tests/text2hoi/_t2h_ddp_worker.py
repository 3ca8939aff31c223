"""Run by torchrun in test_train.py: two gloo ranks train a tiny TextHOM; rank r saves its weights."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from t2h_train_helpers import tiny_batch, tiny_cfg, tiny_models  # noqa: E402

from cvpr24.common.distributed import init_process_group  # noqa: E402
from cvpr24.text2hoi.diffusion import GaussianDiffusion  # noqa: E402
from cvpr24.text2hoi.train import train_motion  # noqa: E402

torch.set_num_threads(1)
init_process_group("gloo")
rank = torch.distributed.get_rank()
out = Path(sys.argv[1])
cfg = tiny_cfg()
model, pointnet, hands = tiny_models(cfg, seed=rank)  # different initial weights: rank 0's are broadcast
train_motion(model, GaussianDiffusion(cfg.diffusion_steps), pointnet, hands, tiny_batch(cfg), 3, True, batch_size=3,
             state_path=out / "state.pt")
torch.save(model.state_dict(), out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()

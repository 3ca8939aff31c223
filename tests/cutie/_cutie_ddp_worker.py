"""Run under torchrun with 2 processes: each rank trains the tiny model on its own data."""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _cutie_helpers import tiny_config  # noqa: E402

from cvpr24.common.distributed import init_process_group  # noqa: E402
from cvpr24.cutie.model import CutieModel  # noqa: E402
from cvpr24.cutie.train import TrainConfig, train  # noqa: E402


def batches(step):
    rank = dist.get_rank()
    rng = np.random.default_rng([rank, step])
    frames = rng.random((1, 3, 3, 32, 32)).astype(np.float32)
    masks = np.zeros((1, 3, 32, 32), np.uint8)
    masks[:, :, 4 + rank : 16, 4:20] = 1
    return frames, masks, [1]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    init_process_group("gloo")
    torch.manual_seed(0)
    model = CutieModel(tiny_config())
    cfg = TrainConfig(
        iterations=2,
        batch_size=1,
        num_frames=3,
        num_ref_frames=2,
        max_objects=1,
        lr=1e-3,
        encoder_lr_scale=1.0,
        schedule="constant",
        num_points=64,
        seed=0,
    )
    train(model, cfg, batches, ddp=True)
    torch.save(model.state_dict(), out / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Training state: a stage stopped midway resumes exactly; two gloo ranks under torchrun stay in sync."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from t2h_train_helpers import tiny_batch, tiny_cfg, tiny_models

from cvpr24.common import load_training_state
from cvpr24.text2hoi.diffusion import GaussianDiffusion
from cvpr24.text2hoi.train import train_motion


def _train(tmp_path, steps, state):
    cfg = tiny_cfg()
    model, pointnet, hands = tiny_models(cfg)
    sched = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)  # noqa: E731
    train_motion(model, GaussianDiffusion(cfg.diffusion_steps), pointnet, hands, tiny_batch(cfg), steps, True,
                 batch_size=3, lr=1e-2, state_path=tmp_path / state, save_every=1, scheduler=sched)
    return model


def test_a_stage_stopped_midway_resumes_exactly(tmp_path):
    rng = torch.get_rng_state()
    straight = _train(tmp_path, 4, "a.pt")
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's per-step seeding leaves the global RNG as it was
    _train(tmp_path, 2, "b.pt")  # "interrupted" after 2 steps
    resumed = _train(tmp_path, 4, "b.pt")  # a new process would do the same: fresh model, same state file
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    init, _, _ = tiny_models(tiny_cfg())
    assert not torch.equal(init.state_dict()["embed_text.weight"], straight.state_dict()["embed_text.weight"])
    cfg = tiny_cfg()
    opt = torch.optim.AdamW(tiny_models(cfg)[0].parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    st = load_training_state(tmp_path / "b.pt", model=tiny_models(cfg)[0], optimizer=opt, scheduler=sched, restore_rng=False)
    assert st["step"] == 4 and sched.last_epoch == 4 and abs(opt.param_groups[0]["lr"] - 1e-2 * 0.9**4) < 1e-12


def test_two_gloo_ranks_under_torchrun_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("_t2h_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # broadcast + averaged gradients: the same weights
    init = tiny_models(tiny_cfg(), seed=0)[0].state_dict()  # rank 0's initial weights
    assert not torch.equal(a["embed_text.weight"], init["embed_text.weight"])
    assert load_training_state(tmp_path / "state.pt", model=tiny_models(tiny_cfg())[0], restore_rng=False)["step"] == 3


def test_motion_normalizer_standardises_valid_frames_and_round_trips():
    from cvpr24.text2hoi.train import MotionNormalizer

    cfg = tiny_cfg()
    b = tiny_batch(cfg, n=8)
    b.mask_l[:3] = 0  # an absent left hand: its (arbitrary) frames must not enter the statistics
    b.x_l[:3] = 1e3
    norm = MotionNormalizer.fit(b)
    xl, xr, xo = norm.normalize(b.x_l, b.x_r, b.x_o)
    valid = xl[b.mask_l > 0]
    torch.testing.assert_close(valid.mean(0), torch.zeros(99), atol=1e-5, rtol=0)
    wide = b.x_l[b.mask_l > 0].std(0) > 1e-2  # dimensions above the std floor get unit spread
    torch.testing.assert_close(valid.std(0)[wide], torch.ones(int(wide.sum())), atol=1e-5, rtol=0)
    assert xo.abs().mean() > 0.3 and b.x_o[..., :3].abs().mean() < 0.1  # cm-scale translations reach unit scale
    for back, x in zip(norm.denormalize(xl, xr, xo), (b.x_l, b.x_r, b.x_o), strict=True):
        torch.testing.assert_close(back, x, atol=1e-3, rtol=1e-5)
    identity = MotionNormalizer(cfg.obj_dim)  # the default: raw units, as the official weights
    assert all(torch.equal(a, x) for a, x in zip(identity.normalize(b.x_l, b.x_r, b.x_o), (b.x_l, b.x_r, b.x_o), strict=True))

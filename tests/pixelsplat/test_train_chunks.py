"""Training on RealEstate10k-format chunks: view sampler, examples, resumable loop, DDP, AMP."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _pixelsplat_helpers import write_billboard_chunks

from cvpr24.cli import main
from cvpr24.pixelsplat.data import ChunkStream, ViewSampler, load_chunk, make_example
from cvpr24.pixelsplat.geometry import project_points
from cvpr24.pixelsplat.train import claim_b_configs, load_trained, train_chunks

SAMPLER = ViewSampler(initial_min_gap=2, initial_max_gap=2, min_gap=3, max_gap=4, ramp_steps=10, num_targets=1)


def test_view_sampler_ramps_and_stays_between_the_context_views():
    official = ViewSampler()
    assert official.gap_range(0) == (25, 25) and official.gap_range(75_000) == (35, 35)
    assert official.gap_range(10**6) == (45, 45)
    assert SAMPLER.gap_range(0) == (2, 2) and SAMPLER.gap_range(10) == (3, 4)
    gen = torch.Generator().manual_seed(0)
    for step in range(0, 20, 3):
        (a, b), targets = SAMPLER(10, step, gen)
        lo, hi = SAMPLER.gap_range(step)
        assert lo <= b - a <= hi and 0 <= a and b <= 9 and all(a <= t <= b for t in targets)
    assert SAMPLER(3, 20, gen) is None  # too short for a gap of 3: skipped


def test_example_is_baseline_normalised_and_flip_mirrors_projections(tmp_path):
    write_billboard_chunks(tmp_path, n_chunks=1, scenes_per_chunk=1, frames=4, size=8)
    scene = load_chunk(tmp_path / "000000.torch")[0]
    plain = make_example(scene, [0, 3, 1], 8)
    flipped = make_example(scene, [0, 3, 1], 8, flip=True)
    assert torch.allclose((plain["extrinsics"][0, :3, 3] - plain["extrinsics"][1, :3, 3]).norm(), torch.tensor(1.0))
    assert torch.equal(flipped["images"], plain["images"].flip(-1))
    point = torch.tensor([0.3, -0.2, 5.0])
    uv = project_points(point, plain["extrinsics"][2], plain["intrinsics"][2])[0]
    mirrored = project_points(point * torch.tensor([-1.0, 1, 1]), flipped["extrinsics"][2], flipped["intrinsics"][2])[0]
    assert torch.allclose(mirrored, torch.stack([1 - uv[0], uv[1]]), atol=1e-5)


def test_stream_shards_chunks_across_ranks_and_resumes(tmp_path):
    write_billboard_chunks(tmp_path, n_chunks=2, scenes_per_chunk=2, frames=5, size=8)
    ranks = [ChunkStream(tmp_path, 8, SAMPLER, seed=0, rank=r, world_size=2) for r in range(2)]
    assert {c.name for c in ranks[0].chunks} == {"000000.torch"} and {c.name for c in ranks[1].chunks} == {
        "000001.torch"}
    stream = ChunkStream(tmp_path, 8, SAMPLER, seed=0)
    first = [stream.next(0)["images"] for _ in range(3)]
    state = stream.state_dict()
    rest = [stream.next(0)["images"] for _ in range(5)]  # crosses into the next epoch
    again = ChunkStream(tmp_path, 8, SAMPLER, seed=0)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, [again.next(0)["images"] for _ in range(5)], strict=True))
    assert first[0].shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="fewer than the 3 ranks"):
        ChunkStream(tmp_path, 8, SAMPLER, rank=0, world_size=3)


def _cfg():
    cfg = claim_b_configs()["prob"]
    cfg.warm_up_steps = 2
    return cfg


def test_chunk_training_resumes_exactly(tmp_path):
    write_billboard_chunks(tmp_path / "data", n_chunks=2, scenes_per_chunk=2, frames=5, size=8)
    kw = dict(seed=3, image_size=8, batch_size=2, sampler=SAMPLER, state_every=2, show_progress=False)
    _, full = train_chunks(_cfg(), tmp_path / "data", tmp_path / "a", steps=4, **kw)
    train_chunks(_cfg(), tmp_path / "data", tmp_path / "b", steps=2, **kw)
    _, resumed = train_chunks(_cfg(), tmp_path / "data", tmp_path / "b", steps=4, **kw)
    assert np.allclose(full["loss"], resumed["loss"], rtol=1e-5) and len(resumed["loss"]) == 4
    model, meta = load_trained(tmp_path / "a" / "model.safetensors")
    assert meta["metrics"]["steps"] == 4 and not any(torch.isnan(p).any() for p in model.parameters())


def test_amp_is_refused_on_cpu_with_the_flag_named(tmp_path, capsys):
    write_billboard_chunks(tmp_path / "root" / "train", n_chunks=1, scenes_per_chunk=1, frames=3, size=8)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        train_chunks(_cfg(), tmp_path / "root" / "train", tmp_path / "run", steps=1, amp=True)
    rc = main(["train", "pixelsplat", "--data", str(tmp_path / "root"), "--amp", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--amp" in err and len(err.splitlines()) == 1
    rc = main(["train", "pixelsplat", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--data" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written before the input was checked


def test_two_gloo_ranks_train_in_sync_under_torchrun(tmp_path):
    write_billboard_chunks(tmp_path / "data", n_chunks=2, scenes_per_chunk=1, frames=5, size=8)
    worker = Path(__file__).with_name("_pixelsplat_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # one broadcast start, averaged gradients
    saved, _ = load_trained(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(v, a[k]) for k, v in saved.state_dict().items())
    torch.manual_seed(3)
    init = type(saved)(saved.cfg).state_dict()
    assert not torch.equal(a["encoder.to_gaussians.1.weight"], init["encoder.to_gaussians.1.weight"])

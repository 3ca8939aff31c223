"""The process group's gloo workers are joined by ``destroy_process_group`` (no abort at exit)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_distributed_worker.py")

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")


def _workers(mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), mode]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_destroy_joins_the_gloo_workers_of_a_group_made_here():
    counts = _workers("ours")
    assert counts["with_group"] > 0  # the count sees the workers while the group lives
    assert counts["after_destroy"] == 0


def test_a_plain_group_outlives_destroy_after_ddp():
    """The torch 2.13 behaviour that ``init_process_group`` works around (the control: the count
    above would catch a group left alive). If this fails after a torch upgrade, the workaround in
    ``cvpr24.common.distributed`` may no longer be needed."""
    counts = _workers("plain")
    assert counts["with_group"] > 0
    assert counts["after_destroy"] == counts["with_group"]

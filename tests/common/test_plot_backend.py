"""Plotting leaves matplotlib's process-wide state alone: no backend switch, no pyplot.

A library call that runs ``matplotlib.use("Agg")`` or creates figures through pyplot takes
inline plotting away from a Jupyter user who calls it in-process. Each module below draws on a
bare ``matplotlib.figure.Figure``, which ``savefig`` renders without a global backend. The
check runs in a fresh interpreter, so no earlier test has imported pyplot or chosen a backend.
"""

import json
import os
import subprocess
import sys

import pytest

# One cheap plotting call per module (argv[2]), writing one PNG into the folder argv[1]; one
# interpreter per module, so each is checked from a clean state. The backend is read with
# `_get_backend_or_none()`, which (unlike `get_backend()`) resolves nothing itself.
SCRIPT = r"""
import json, sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("svg")  # stands in for the user's choice (e.g. Jupyter's inline backend)
tmp = Path(sys.argv[1])


def hcc():
    from cvpr24.cli import main
    from cvpr24.hcc import make_signed_partition

    D, _ = make_signed_partition([5, 4], p_flip=0.1, mag_noise=0.0, seed=0)
    np.save(tmp / "D.npy", D)
    assert main(["hcc", "cluster", "--input", str(tmp / "D.npy"), "--out", str(tmp / "l.csv"),
                 "--dendrogram", str(tmp / "hcc.png")]) == 0
    return tmp / "hcc.png"


def lidar():
    from cvpr24.cli import main

    assert main(["lidar", "curve", "--scene", "sine", "--alpha0", "1e4", "--points", "8",
                 "--out", str(tmp / "lidar")]) == 0
    return tmp / "lidar" / "curve.png"


def lotus():
    from cvpr24.lotus.reproduce import plot_focusing_curve

    history = [{"step": s, "asr": 0.1 * s, "asr_par": 0.05 * s} for s in range(4)]
    for arm in ("lotus", "nofocus"):
        (tmp / "seed0").mkdir(exist_ok=True)
        (tmp / "seed0" / f"{arm}.json").write_text(json.dumps({"metrics": {"history": history}}))
    return tmp / plot_focusing_curve(tmp, 1, tmp)


def spa():
    from cvpr24.spa import reliability_diagram

    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(50, 3))
    fig, _ = reliability_diagram(probs, (rng.uniform(size=(50, 3)) < probs).astype(int), 5)
    fig.savefig(tmp / "spa.png")
    return tmp / "spa.png"


def egothink():
    from cvpr24.egothink.config import DIM_KEYS
    from cvpr24.egothink.reproduce import ARMS, plot_figures

    scores = {arm: {d: 0.5 for d in DIM_KEYS} for arm in ARMS}
    run = {"judge": scores, "oracle": scores, "f1": scores,
           "ttp": {arm: (10**4, 10**6) for arm in ("V0", "V1", "V2", "V3")},
           "pairs": {arm: [(1.0, 0.5, 0.0), (0.0, 0.0, 0.5)] for arm in ARMS}}
    return tmp / plot_figures([run], tmp)[0]


before = (matplotlib.rcParams._get_backend_or_none(), "matplotlib.pyplot" in sys.modules)
png = globals()[sys.argv[2]]()
print(json.dumps({"backend": [before[0], matplotlib.rcParams._get_backend_or_none()],
                  "pyplot": [before[1], "matplotlib.pyplot" in sys.modules],
                  "png": png.read_bytes()[:4] == b"\x89PNG"}))
"""


@pytest.mark.parametrize("module", ["hcc", "lidar", "lotus", "spa", "egothink"])
def test_plotting_neither_switches_the_backend_nor_imports_pyplot(module, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), module], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {"backend": ["svg", "svg"], "pyplot": [False, False], "png": True}

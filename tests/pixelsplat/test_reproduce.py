"""The reproduction's pieces at the tiniest sizes, and the claim logic."""

import numpy as np
import torch

from cvpr24.pixelsplat import reproduce
from cvpr24.pixelsplat.scenes import render_example
from cvpr24.pixelsplat.train import (
    build_dataset,
    claim_b_configs,
    evaluate,
    load_trained,
    train_synthetic,
)


def test_billboard_scene_is_deterministic_with_depths_in_range():
    a = render_example(5, 12, (0.0, 1.0, 0.5))
    b = render_example(5, 12, (0.0, 1.0, 0.5))
    assert torch.equal(a["images"], b["images"])
    assert a["depths"].min() >= 1.4 and a["depths"].max() <= 13
    assert torch.allclose(a["extrinsics"][1, 0, 3], torch.tensor(1.0))  # baseline 1


def test_claim_a_tiny_run_and_verdicts(tmp_path):
    out = reproduce.claim_a(8, 3, 1, [0], tmp_path)
    row = out["rows"][0]
    assert np.isfinite([row["prob_psnr"], row["direct_psnr"], row["control_psnr"]]).all()
    claims, notes = reproduce._claim_a_claims(out["rows"])
    assert claims[0].name == "A" and len(notes) == 4
    assert (tmp_path / "claim_a_depth.png").is_file()
    # the verdict follows the numbers: a large, consistent gain with better depth passes
    good = [dict(row, prob_psnr=row["direct_psnr"] + 3 + 0.1 * i, direct_train_gain=1.0,
                 prob_depth={"absrel": 0.1, "disparity_px": 1.0}, direct_depth={"absrel": 0.5, "disparity_px": 5.0})
            for i in range(6)]
    assert reproduce._claim_a_claims(good)[0][0].status == "passed"
    bad = [dict(g, prob_psnr=g["direct_psnr"] - 1) for g in good]
    assert reproduce._claim_a_claims(bad)[0][0].status == "failed"
    stuck = [dict(g, direct_train_gain=-0.1) for g in good]
    assert reproduce._claim_a_claims(stuck)[0][0].status == "not tested"


def test_claim_b_needs_three_seeds_and_a_working_baseline():
    claims = reproduce._claim_b_claims({}, [0, 1, 2])
    assert [c.status for c in claims] == ["not tested", "not tested"]
    per_seed = {}
    for s in range(3):
        per_seed[f"prob_{s}"] = {"psnr": np.array([20.0 + s]), "disparity_px": np.array([1.0]), "absrel": np.array([.2])}
        per_seed[f"direct_{s}"] = {"psnr": np.array([19.0 + s]), "disparity_px": np.array([2.0]),
                                   "absrel": np.array([.3]), "init_psnr": np.array([10.0])}
    b, bd = reproduce._claim_b_claims(per_seed, [0, 1, 2])
    assert b.status == "passed" and bd.status == "passed"
    for s in range(3):  # prob ahead in every seed, but by 0.2 dB only
        per_seed[f"prob_{s}"]["psnr"] = per_seed[f"direct_{s}"]["psnr"] + 0.2
    assert reproduce._claim_b_claims(per_seed, [0, 1, 2])[0].status == "failed"
    for s in range(3):
        per_seed[f"direct_{s}"]["init_psnr"] = per_seed[f"direct_{s}"]["psnr"]
    assert reproduce._claim_b_claims(per_seed, [0, 1, 2])[0].status == "not tested"


def test_training_resumes_and_checkpoint_evaluates(tmp_path):
    cfg = claim_b_configs()["prob"]
    cfg.warm_up_steps = 2
    data = build_dataset(2, 8, 300_000)
    full = train_synthetic(cfg, tmp_path / "a", steps=4, seed=0, data=data, state_every=2, show_progress=False)
    train_synthetic(cfg, tmp_path / "b", steps=2, seed=0, data=data, state_every=2, show_progress=False)
    resumed = train_synthetic(cfg, tmp_path / "b", steps=4, seed=0, data=data, state_every=2, show_progress=False)
    assert np.allclose(full["loss"], resumed["loss"], rtol=1e-5)
    model, meta = load_trained(tmp_path / "a" / "model.safetensors")
    res = evaluate(model, data, target=4)
    assert res["psnr"].shape == (2,) and torch.isfinite(res["psnr"]).all()

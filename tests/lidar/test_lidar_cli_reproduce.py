"""The command line, the Monte Carlo check of the theory, and the reproduction's smoke test."""

import json
import time

import numpy as np
import pytest

from cvpr24.cli import main
from cvpr24.common import global_state
from cvpr24.lidar import (
    Scene1D,
    continuous_mse,
    estimate_delay,
    mse_exact,
    optimal_pixels,
    pixel_moments,
    reproduce,
    save_histogram_cube,
    save_timestamps,
    simulate_photons,
    to_histogram,
    uniform_bin_edges,
)


@pytest.mark.slow
def test_exact_theory_matches_monte_carlo_on_the_sine_scene():
    scene, alpha0, sigma = Scene1D.sine(), 1e4, 0.01
    for n in (12, 60, 300, 1000):
        moments = pixel_moments(scene, n)
        mc = np.mean([continuous_mse(estimate_delay(
            simulate_photons(scene, n, alpha0, sigma, n_repeats=40, rng=[s, n]),
            sigma_t=sigma, method="mean")[0], moments=moments).mean() for s in range(3)])
        assert abs(mse_exact(scene, n, alpha0, sigma).total / mc - 1) < 0.05


def test_reproduction_smoke(tmp_path):
    before = global_state()
    start = time.process_time()  # CPU time: the budget must not depend on the machine's load
    result = reproduce.run(tmp_path, size="tiny")
    assert global_state() == before  # threads, seeds, flags, warnings filters: as they were
    assert time.process_time() - start < 10
    assert [c.name for c in result.claims] == ["C1", "C2", "C3", "C4", "C5"]
    assert result.claims[0].status == "passed"  # exact theory vs MC holds even at tiny size
    assert {c.status for c in result.claims} <= {"passed", "failed", "not tested"}
    for fig in result.figures:
        assert (tmp_path / fig).stat().st_size > 1000
    with pytest.raises(ValueError, match="size"):
        reproduce.run(tmp_path, size="huge")


def test_cli_optimal_n(capsys, tmp_path):
    out = tmp_path / "n.json"
    assert main(["lidar", "optimal-n", "--slope-energy", "0.36", "--alpha0", "1e4",
                 "--sigma-t", "0.01", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cubic"] == pytest.approx(182.26, abs=0.01)
    assert "182.26" in capsys.readouterr().out
    assert main(["lidar", "optimal-n", "--scene", "ramp", "--alpha0", "1e4", "--sigma-t", "0.01"]) == 0
    assert "exact theory (integer scan):           180" in capsys.readouterr().out
    # a step has S = 0: no closed-form optimum, the exact scan still answers
    out_step = tmp_path / "step.json"
    assert main(["lidar", "optimal-n", "--scene", "step", "--alpha0", "1e4", "--sigma-t", "0.01",
                 "--out", str(out_step)]) == 0
    printed = capsys.readouterr().out
    assert "closed form (L14, L15) has no optimum" in printed and "exact theory (integer scan)" in printed
    res = json.loads(out_step.read_text())
    assert "cubic" not in res and res["exact"] == optimal_pixels(Scene1D.step(), 1e4, 0.01, method="exact")
    assert main(["lidar", "optimal-n", "--slope-energy", "0.36", "--alpha0", "-1",
                 "--sigma-t", "0.01"]) == 2
    assert "alpha0" in capsys.readouterr().err


def test_cli_curve_warns_outside_the_domain(capsys, tmp_path):
    assert main(["lidar", "curve", "--scene", "sine", "--alpha0", "1e4", "--points", "25",
                 "--mc", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "curve.json").read_text())
    assert data["N_opt_exact"] in range(200, 360) and len(data["mc"]["N"]) >= 10
    assert (tmp_path / "curve.png").stat().st_size > 1000
    err = capsys.readouterr().err
    assert "fewer than 20 photons per pixel" in err and "too few pixels per scene feature" in err


def test_cli_estimate_and_recommend_binning(capsys, tmp_path):
    bin_width, sigma = 50e-12, 100e-12  # seconds; the scene's delays are in window units here
    ph = simulate_photons(Scene1D.ramp(), 64, 2e4, 0.01, rng=0)
    cube = to_histogram(ph, uniform_bin_edges((0, 1), 0.005)).reshape(8, 8, -1)
    path = tmp_path / "cube.mat"
    save_histogram_cube(path, cube, key="spad")
    depth = tmp_path / "depth.npy"
    assert main(["lidar", "estimate", "--input", str(path), "--key", "spad", "--layout", "HWT",
                 "--bin-width", str(bin_width), "--sigma-t", str(sigma), "--out", str(depth)]) == 0
    d = np.load(depth)
    tau = estimate_delay(cube, sigma_t=sigma, bin_edges=bin_width * np.arange(cube.shape[-1] + 1))[0]
    np.testing.assert_allclose(d, 299_792_458.0 / 2 * tau, rtol=1e-12)
    assert main(["lidar", "recommend-binning", "--input", str(path), "--key", "spad", "--layout",
                 "HWT", "--bin-width", str(bin_width), "--sigma-t", str(sigma),
                 "--out", str(tmp_path / "rec.json")]) == 0
    assert "recommended bin factor" in capsys.readouterr().out
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["factors"] == [[1, 1], [2, 2], [4, 4]] and rec["factor"] in rec["factors"]
    square = tmp_path / "square.npy"
    np.save(square, np.ones((8, 8, 8)))
    assert main(["lidar", "estimate", "--input", str(square), "--bin-width", "1e-12",
                 "--sigma-t", "1e-10", "--out", str(depth)]) == 2
    assert "layout" in capsys.readouterr().err


def test_cli_line_sensor_timestamps_uncertainty_and_factors(capsys, tmp_path):
    ph = simulate_photons(Scene1D.ramp(), 64, 64 * 30, 0.01, background=64 * 10, rng=1)
    line = tmp_path / "line.npy"
    np.save(line, to_histogram(ph, uniform_bin_edges((0, 1), 0.005)))  # (64, 200)
    depth, std = tmp_path / "d.npy", tmp_path / "s.npy"
    assert main(["lidar", "estimate", "--input", str(line), "--line", "--bin-width", "0.005",
                 "--sigma-t", "0.01", "--out", str(depth), "--uncertainty", str(std)]) == 0
    assert np.load(depth).shape == (64,) and np.all(np.load(std) > 0)
    assert "depth std (m)" in capsys.readouterr().out
    rec = tmp_path / "rec.json"
    assert main(["lidar", "recommend-binning", "--input", str(line), "--line", "--bin-width", "0.005",
                 "--sigma-t", "0.01", "--factors", "1", "2", "4", "--out", str(rec)]) == 0
    assert json.loads(rec.read_text())["factors"] == [[1, 1], [1, 2], [1, 4]]
    assert main(["lidar", "recommend-binning", "--input", str(line), "--line", "--bin-width", "0.005",
                 "--sigma-t", "0.01", "--factors", "2x1"]) == 2
    assert "rows = 1" in capsys.readouterr().err
    # timestamp lists: background-aware ML by default, depth and std in metres
    ts = tmp_path / "photons.npz"
    save_timestamps(ts, ph)
    assert main(["lidar", "estimate-timestamps", "--input", str(ts), "--sigma-t", "0.01",
                 "--out", str(depth), "--uncertainty", str(std)]) == 0
    tau = estimate_delay(ph, sigma_t=0.01)[0]
    np.testing.assert_allclose(np.load(depth), 299_792_458.0 / 2 * tau, rtol=1e-12)
    with pytest.raises(SystemExit):  # argparse names --background and exits with 2
        main(["lidar", "estimate-timestamps", "--input", str(ts), "--sigma-t", "0.01",
              "--background", "0.5x", "--out", str(depth)])
    assert "--background" in capsys.readouterr().err


def test_cli_guards(capsys, tmp_path):
    cube = tmp_path / "cube.npy"
    np.save(cube, np.ones((4, 4, 1024)))
    # a sigma_t unit slip (1 us with 35 ps bins) is refused at once instead of hanging
    assert main(["lidar", "estimate", "--input", str(cube), "--bin-width", "35e-12",
                 "--sigma-t", "1e-6", "--out", str(tmp_path / "d.npy")]) == 2
    assert "sigma_t=1e-06" in capsys.readouterr().err
    depth = tmp_path / "depth.npy"
    yy, xx = np.mgrid[0:32, 0:32]
    np.save(depth, 3.0 + 0.5 * (xx > 16) + 0.01 * yy)  # metres
    # a depth-map scene needs --sigma-t in seconds: the window-unit default would mix units
    assert main(["lidar", "curve", "--scene", str(depth), "--dims", "2", "--out", str(tmp_path)]) == 2
    assert "--sigma-t is required" in capsys.readouterr().err
    assert main(["lidar", "curve", "--scene", str(depth), "--dims", "2", "--sigma-t", "0.01",
                 "--out", str(tmp_path)]) == 2
    assert "largest delay" in capsys.readouterr().err
    assert main(["lidar", "optimal-n", "--scene", str(depth), "--dims", "2", "--alpha0", "2e4",
                 "--sigma-t", "1e-10"]) == 0
    out = capsys.readouterr()
    assert "predicted depth RMSE at N*" in out.out and " cm " in out.out
    assert main(["lidar", "optimal-n", "--slope-energy", "0.36", "--alpha0", "100",
                 "--sigma-t", "0.01"]) == 0
    assert "Lambda = 2.4 photons per pixel" in capsys.readouterr().err

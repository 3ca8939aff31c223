"""Reproduction of the resolution-limit claims at CPU scale (docs/lidar.md, Reproduction).

Lab notebook:

- **Data.** 1-D scenes ramp (tau = 0.2 + 0.6 x, S = 0.36) and sine (S = pi^2/8), sigma_t = 0.01
  in a window [0, 1], no background. Flux alpha0 in {1e3, 1e4, 1e5} photons over the field of view.
- **Arms.** For each N of a grid (12 log-spaced integers from 4 to alpha0/5, so Lambda >= 5),
  plus the closed-form pick N_rec = round(N*_cubic) (L15), the exact-theory integer argmin and
  the native-sensor baseline N0 = 2048 (alpha0 = 1e4): Monte Carlo with the L5 sampler,
  per-pixel ML (= sample mean), nearest-neighbour fill, continuous MSE (L8). Each seed averages
  R = max(8, 4e5/alpha0) acquisitions; 5 seeds (20 with --full).
- **Measurements.** MC MSE (mean +- std over seeds) vs the exact theory (L9-L11) and the
  paper's closed form (L14); the error at the N each design rule picks.
- **Criteria.** Fixed below, beside their reasons, before any run.

``--full`` adds the 2-D check (N per side, L16), the step edge, background with EM-ML (L17,
extension) and TDC-binned histograms (Sheppard term).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvpr24.common import Claim, Measurement, Result, atomic_path, atomic_write
from cvpr24.common.state import preserved_global_state
from cvpr24.lidar.estimators import estimate_delay
from cvpr24.lidar.model import LidarConfig, simulate_photons, to_histogram, uniform_bin_edges
from cvpr24.lidar.scene import Scene1D, Scene2D, pixel_moments, slope_energy
from cvpr24.lidar.theory import (
    continuous_mse,
    mse_closed_form,
    mse_curve,
    mse_exact,
    optimal_pixels,
)

CLAIMS = [
    "C1: the exact bias-variance theory (L9-L11) equals Monte Carlo within 5 % (Lambda >= 5)",
    "C2: the paper's closed form (L14) is within 10 % of Monte Carlo in its domain",
    "C3: MSE(N) at fixed total flux is U-shaped and the closed-form N* is near-optimal",
    "C4: picking N by L15 beats variance-only, bias-only and a fixed 2048-pixel sensor",
    "C5: MSE* scales as alpha0^(-2/3) with the predicted constant",
]

# -- criteria, fixed before the run, each with its reason --------------------------------------
C1_TOL = 0.05  # MC standard error <= 1 %; empty-pixel fill changes the MSE < 0.5 % at Lambda >= 5;
#                the prototype's worst case was 1.4 %. A failure means simulator or theory is wrong.
C1_MIN_LAMBDA = 5.0
C2_TOL = 0.10  # g ~ 1/Lambda alone under-states the variance by ~1/Lambda + 2/Lambda^2 <= 5.5 %
#                at Lambda = 20; prototype worst case 4.3 %.
C2_MIN_LAMBDA, C2_MIN_N = 20.0, 12  # linearisation domain: pixel <= 1/4 of the period 1/3
C3_LEFT, C3_RIGHT, C3_PICK = 10.0, 2.0, 1.05  # both arms of the U must exist; N within +-20 %
#                of N* costs <= 6 % (L15), so the practical test is the error at the chosen N
C3_ALPHAS = (1e4, 1e5)
C4_VARIANCE_ONLY, C4_BIAS_ONLY, C4_NATIVE = 10.0, 2.0, 2.0  # theory predicts ~490x, 5.7-25x, 6.3x
C4_BIAS_ONLY_ALPHAS = (1e4, 1e5)
C4_NATIVE_N, C4_NATIVE_ALPHA = 2048, 1e4
C5_SLOPE, C5_SLOPE_TOL = -2.0 / 3.0, 0.05  # exact theory: -0.697 (sine), -0.686 (ramp)
C5_CONST = (0.95, 1.10)  # exact theory predicts 1.005-1.028 at alpha0 >= 1e4
C5_CONST_ALPHAS = (1e4, 1e5)
SCENES = {"ramp": Scene1D.ramp, "sine": Scene1D.sine}


@dataclass
class Curve:
    """Monte Carlo and theory for one (scene, alpha0): MSE per N (per seed for MC)."""

    scene: str
    alpha0: float
    S: float
    grid: list[int]
    n_rec: int
    n_exact: int
    mc: dict[int, np.ndarray] = field(default_factory=dict)
    exact: dict[int, float] = field(default_factory=dict)
    closed: dict[int, float] = field(default_factory=dict)

    def mean(self, n: int) -> float:
        return float(np.mean(self.mc[n]))

    def grid_min(self) -> float:
        return min(self.mean(n) for n in self.grid)

    def best(self) -> float:
        return min(self.mean(n) for n in {*self.grid, self.n_rec, self.n_exact})

    def lam(self, n: int) -> float:
        return self.alpha0 / n


def n_grid(alpha0: float, count: int) -> list[int]:
    """``count`` log-spaced integers from 4 to alpha0/5 (Lambda >= 5)."""
    return sorted({int(round(v)) for v in np.geomspace(4, alpha0 / 5, count)})


def mc_mse(scene: Scene1D | Scene2D, n: int, alpha0: float, cfg: LidarConfig, seed: int,
           stream: tuple[int, ...], repeats: int | None = None, method: str | None = None,
           background: float | None = None, bin_width: float | None = None,
           w_known: float | None = None) -> float:
    """Mean continuous MSE (L8) over R acquisitions of one seed (config defaults unless given)."""
    reps = cfg.repeats(alpha0) if repeats is None else repeats
    method = cfg.estimator if method is None else method
    background = cfg.background if background is None else background
    rng = np.random.default_rng([seed, *stream, n])
    ph = simulate_photons(scene, n, alpha0, cfg.sigma_t, background=background,
                          t_window=cfg.t_window, n_repeats=reps, rng=rng)
    if bin_width is not None:
        edges = uniform_bin_edges(cfg.t_window, bin_width)
        tau, _ = estimate_delay(to_histogram(ph, edges), sigma_t=cfg.sigma_t, method=method,
                                bin_edges=edges, background=w_known, empty=cfg.empty_pixel,
                                dims=scene.dims)
    else:
        tau, _ = estimate_delay(ph, sigma_t=cfg.sigma_t, method=method, background=w_known,
                                empty=cfg.empty_pixel)
    fine = cfg.fine(n) if scene.dims == 1 else None
    return float(np.mean(continuous_mse(tau, moments=pixel_moments(scene, n, fine))))


def measure_curve(name: str, alpha0: float, cfg: LidarConfig, seeds: list[int]) -> Curve:
    """Simulate every N of the grid and the design picks; evaluate both theories there."""
    scene = SCENES[name]()
    S = slope_energy(scene)
    grid = n_grid(alpha0, cfg.n_grid)
    n_rec = int(round(optimal_pixels(S, alpha0, cfg.sigma_t)))
    n_exact = int(optimal_pixels(scene, alpha0, cfg.sigma_t, method="exact"))
    curve = Curve(name, alpha0, S, grid, n_rec, n_exact)
    ns = {*grid, n_rec, n_exact}
    if alpha0 == C4_NATIVE_ALPHA:
        ns.add(C4_NATIVE_N)
    stream = (list(SCENES).index(name), int(alpha0))
    for n in sorted(ns):
        curve.mc[n] = np.array([mc_mse(scene, n, alpha0, cfg, s, stream) for s in seeds])
        curve.exact[n] = mse_exact(scene, n, alpha0, cfg.sigma_t, fine=cfg.fine(n)).total
        curve.closed[n] = float(mse_closed_form(S, n, alpha0, cfg.sigma_t))
    return curve


# -- claims ---------------------------------------------------------------------------------------
def claim_exact_theory(curves: list[Curve]) -> Claim:
    devs, worst = [], (0.0, "")
    for c in curves:
        for n in c.mc:
            if c.lam(n) >= C1_MIN_LAMBDA:
                d = abs(c.exact[n] / c.mean(n) - 1)
                devs.append(d)
                if d >= worst[0]:
                    worst = (d, f"{c.scene}, alpha0={c.alpha0:g}, N={n}")
    worst_d = max(devs)
    return Claim.verdict(
        "C1", "The exact bias-variance theory (L9-L11) predicts the Monte Carlo MSE",
        worst_d <= C1_TOL,
        criterion=f"max |MSE_exact/MSE_MC - 1| <= {C1_TOL} over all scenes, alpha0, N with "
                  f"Lambda >= {C1_MIN_LAMBDA:g} (MC s.e. <= 1 %, empty-pixel fill < 0.5 %)",
        comparison=f"max {worst_d:.4f} at {worst[1]} over {len(devs)} points",
        measured=Measurement.of(devs), paper_value="prototype worst case 0.014")


def claim_closed_form(curves: list[Curve]) -> Claim:
    devs, worst, outside = [], (0.0, ""), []
    for c in curves:
        for n in c.mc:
            ratio = c.closed[n] / c.mean(n)
            if c.lam(n) >= C2_MIN_LAMBDA and n >= C2_MIN_N:
                devs.append(abs(ratio - 1))
                if devs[-1] >= worst[0]:
                    worst = (devs[-1], f"{c.scene}, alpha0={c.alpha0:g}, N={n}")
            elif n == 4 or c.lam(n) < 6:
                outside.append(f"{c.scene} a0={c.alpha0:g} N={n} (Lambda={c.lam(n):.1f}): {ratio:.2f}")
    if not devs:
        return Claim.not_tested("C2", "The closed form (L14) agrees with Monte Carlo",
                                reason="no grid point with Lambda >= 20 and N >= 12 at this size")
    worst_d = max(devs)
    return Claim.verdict(
        "C2", "The paper's closed form (L14) agrees with Monte Carlo in its domain",
        worst_d <= C2_TOL,
        criterion=f"max |MSE_cf/MSE_MC - 1| <= {C2_TOL} for Lambda >= {C2_MIN_LAMBDA:g}, "
                  f"N >= {C2_MIN_N} (g ~ 1/Lambda costs <= 5.5 % at Lambda = 20)",
        comparison=f"max {worst_d:.4f} at {worst[1]} over {len(devs)} points",
        measured=Measurement.of(devs), paper_value="'aligns well' (prototype worst 0.043)",
        notes="outside the domain (not judged): " + "; ".join(outside))


def claim_u_shape(curves: list[Curve]) -> Claim:
    sel = [c for c in curves if c.alpha0 in C3_ALPHAS]
    if not sel:
        return Claim.not_tested("C3", "MSE(N) is U-shaped with a near-optimal closed-form N*",
                                reason=f"needs alpha0 in {C3_ALPHAS}")
    ok, parts, picks = True, [], []
    for c in sel:
        m = c.grid_min()
        left, right, pick = c.mean(c.grid[0]) / m, c.mean(c.grid[-1]) / m, c.mean(c.n_rec) / m
        ok &= left >= C3_LEFT and right >= C3_RIGHT and pick <= C3_PICK
        picks.append(pick)
        parts.append(f"{c.scene} a0={c.alpha0:g}: N=4 {left:.1f}x, N={c.grid[-1]} {right:.2f}x, "
                     f"N_rec={c.n_rec} {pick:.3f}x of grid min")
    return Claim.verdict(
        "C3", "At fixed total flux MSE(N) is U-shaped and the closed-form N* is near-optimal",
        ok, criterion=f"MSE(4)/min >= {C3_LEFT:g}, MSE(alpha0/5)/min >= {C3_RIGHT:g}, "
                      f"MSE(N_rec)/min <= {C3_PICK} (flat optimum: the error at the pick matters)",
        comparison="; ".join(parts), measured=Measurement.of(picks),
        paper_value="U-shaped, optimal N exists")


def claim_baselines(curves: list[Curve]) -> Claim:
    ok, parts, fits, gains = True, [], [], []
    sigma2 = 0.01**2
    for c in curves:
        rec = c.mean(c.n_rec)
        a = c.mean(c.grid[0]) / rec  # variance-only model N sigma^2/alpha0 picks the smallest N
        ok &= a >= C4_VARIANCE_ONLY
        gains.append(a)
        parts.append(f"{c.scene} a0={c.alpha0:g}: variance-only {a:.0f}x")
        if c.alpha0 in C4_BIAS_ONLY_ALPHAS:
            b = c.mean(c.grid[-1]) / rec  # bias-only S/(12N^2) picks the largest N
            ok &= b >= C4_BIAS_ONLY
            parts[-1] += f", bias-only {b:.1f}x"
        if c.alpha0 == C4_NATIVE_ALPHA and C4_NATIVE_N in c.mc:
            nat = c.mean(C4_NATIVE_N) / rec
            ok &= nat >= C4_NATIVE
            parts[-1] += f", native N0={C4_NATIVE_N} {nat:.1f}x"
        var_fit = c.grid[0] * sigma2 / c.alpha0 / c.mean(c.grid[0])
        bias_fit = c.S / (12 * c.grid[-1] ** 2) / c.mean(c.grid[-1])
        fits.append(f"{c.scene} a0={c.alpha0:g}: variance-only model/MC at N=4 {var_fit:.3g}, "
                    f"bias-only model/MC at N={c.grid[-1]} {bias_fit:.3g}")
    return Claim.verdict(
        "C4", "Choosing N by L15 beats the single-pixel (variance-only), noise-free sampling "
              "(bias-only) and fixed native-sensor designs", ok,
        criterion=f"gain >= {C4_VARIANCE_ONLY:g}x over variance-only, >= {C4_BIAS_ONLY:g}x over "
                  f"bias-only at alpha0 >= 1e4, >= {C4_NATIVE:g}x over N0 = {C4_NATIVE_N} at "
                  f"alpha0 = 1e4 (theory: ~490x, 5.7-25x, ~6x)",
        comparison="; ".join(parts), measured=Measurement.of(gains),
        paper_value="prototype: 490x, 5.7x (1e4), 25x (1e5)", notes="curve-fit: " + "; ".join(fits))


def claim_scaling(curves: list[Curve], sigma_t: float) -> Claim:
    scenes = sorted({c.scene for c in curves})
    alphas = sorted({c.alpha0 for c in curves})
    if len(alphas) < 3:
        return Claim.not_tested("C5", "MSE* scales as alpha0^(-2/3)",
                                reason="needs three flux levels")
    ok, parts, slopes = True, [], []
    for name in scenes:
        cs = sorted((c for c in curves if c.scene == name), key=lambda c: c.alpha0)
        best = np.array([c.best() for c in cs])
        slope = float(np.polyfit(np.log(alphas), np.log(best), 1)[0])
        slopes.append(slope)
        ok &= abs(slope - C5_SLOPE) <= C5_SLOPE_TOL
        consts = []
        for c, b in zip(cs, best, strict=True):
            pred = 0.25 * c.S ** (1 / 3) * (6 * sigma_t**2) ** (2 / 3) * c.alpha0 ** (-2 / 3)
            consts.append(f"{b / pred:.3f}@{c.alpha0:g}")
            if c.alpha0 in C5_CONST_ALPHAS:
                ok &= C5_CONST[0] <= b / pred <= C5_CONST[1]
        parts.append(f"{name}: slope {slope:.3f}, MSE*/prediction {', '.join(consts)}")
    return Claim.verdict(
        "C5", "The optimal MSE scales as alpha0^(-2/3) with constant 1/4 S^(1/3)(6 sigma_t^2)^(2/3)",
        ok, criterion=f"slope {C5_SLOPE:.3f} +- {C5_SLOPE_TOL} for each scene and MSE*/prediction in "
                      f"[{C5_CONST[0]}, {C5_CONST[1]}] at alpha0 >= 1e4 (exact theory: -0.69, 1.005-1.028)",
        comparison="; ".join(parts), measured=Measurement.of(slopes),
        paper_value="MSE* ~ alpha0^(-2/3) [D from P-sum]")


# -- figures --------------------------------------------------------------------------------------
def plot_curves(curves: list[Curve], out_dir: Path, sigma_t: float) -> list[str]:
    from matplotlib.figure import Figure

    names = []
    for name in sorted({c.scene for c in curves}):
        fig = Figure(figsize=(7, 5))
        ax = fig.subplots()
        scene = SCENES[name]()
        for i, c in enumerate(sorted((c for c in curves if c.scene == name), key=lambda c: c.alpha0)):
            col = f"C{i}"
            ns = sorted(c.mc)
            ax.errorbar(ns, [c.mean(n) for n in ns], yerr=[np.std(c.mc[n]) for n in ns], fmt="o",
                        color=col, ms=4)
            dense = np.unique(np.geomspace(2, c.alpha0 / 4, 80).astype(int))
            ax.plot(dense, mse_curve(scene, dense, c.alpha0, sigma_t).total, "-", color=col)
            ax.plot(dense, mse_closed_form(c.S, dense, c.alpha0, sigma_t), "--", color=col)
            ax.plot(dense, dense * sigma_t**2 / c.alpha0, ":", color=col, alpha=0.6)
            ax.plot(dense, c.S / (12.0 * dense**2), "-.", color="0.4", alpha=0.6)
            ax.axvline(optimal_pixels(c.S, c.alpha0, sigma_t), color=col, lw=0.8, alpha=0.5)
        ax.set(xscale="log", yscale="log", xlabel="pixels N", ylabel="MSE (window units$^2$)",
               title=f"{name}: MSE vs N at fixed total flux (vertical: N*)")
        ax.set_ylim(1e-7, 1e-2)
        _legend(ax, sorted({c.alpha0 for c in curves if c.scene == name}))
        names.append(_save(fig, out_dir, f"mse_vs_N_{name}.png"))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, c in enumerate(curves):
        ns = sorted(c.mc)
        ax.plot(ns, [c.exact[n] / c.mean(n) for n in ns], "o-", color=f"C{i}", ms=3,
                label=f"exact/MC {c.scene} {c.alpha0:g}")
        ax.plot(ns, [c.closed[n] / c.mean(n) for n in ns], "x--", color=f"C{i}", ms=3)
    ax.axhspan(1 - C1_TOL, 1 + C1_TOL, color="0.9")
    ax.set(xscale="log", xlabel="pixels N", ylabel="theory / MC (x: closed form)", ylim=(0.6, 1.6))
    ax.legend(fontsize=6, ncol=2)
    names.append(_save(fig, out_dir, "ratio_vs_N.png"))
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for i, name in enumerate(sorted({c.scene for c in curves})):
        cs = sorted((c for c in curves if c.scene == name), key=lambda c: c.alpha0)
        a = np.array([c.alpha0 for c in cs])
        ax.plot(a, [c.best() for c in cs], "o", color=f"C{i}", label=f"MC MSE*, {name}")
        ax.plot(a, 0.25 * cs[0].S ** (1 / 3) * (6 * sigma_t**2) ** (2 / 3) * a ** (-2 / 3), "-",
                color=f"C{i}", label="1/4 S^(1/3) (6 sigma_t^2)^(2/3) alpha0^(-2/3)")
    ax.set(xscale="log", yscale="log", xlabel="alpha0 (photons over the field of view)", ylabel="MSE*")
    ax.legend(fontsize=7)
    names.append(_save(fig, out_dir, "scaling.png"))
    return names


def _legend(ax, alphas: list[float]) -> None:
    """One legend entry per flux level (colour) and per curve type (style)."""
    from matplotlib.lines import Line2D

    items = [Line2D([], [], color=f"C{i}", marker="o", ls="", label=f"MC +- std, alpha0={a:g}")
             for i, a in enumerate(alphas)]
    items += [Line2D([], [], color="k", ls=ls, label=lab) for ls, lab in (
        ("-", "exact theory (L9-L11)"), ("--", "closed form (L14)"),
        (":", "variance-only model N sigma_t^2/alpha0"), ("-.", "bias-only model S/(12 N^2)"))]
    ax.legend(handles=items, fontsize=7)


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    with atomic_path(out_dir / name) as tmp:
        fig.savefig(tmp, dpi=110)
    return name


def write_curves(curves: list[Curve], path: Path, sigma_t: float) -> None:
    """Every simulated point (MC per seed, exact, closed form) and the summary per curve."""
    rows = []
    for c in curves:
        ns = sorted(c.mc)
        grid_argmin = min(c.grid, key=c.mean)
        in_c2 = [n for n in ns if c.lam(n) >= C2_MIN_LAMBDA and n >= C2_MIN_N]
        rows.append({
            "scene": c.scene, "alpha0": c.alpha0, "S": c.S, "n_rec": c.n_rec, "n_exact": c.n_exact,
            "n_star_cubic": optimal_pixels(c.S, c.alpha0, sigma_t),
            "n_star_approx": optimal_pixels(c.S, c.alpha0, sigma_t, method="approx"),
            "grid_argmin": grid_argmin, "grid_min": c.mean(grid_argmin), "best": c.best(),
            "exact_over_mc": [min(c.exact[n] / c.mean(n) for n in ns if c.lam(n) >= C1_MIN_LAMBDA),
                              max(c.exact[n] / c.mean(n) for n in ns if c.lam(n) >= C1_MIN_LAMBDA)],
            "cf_over_mc_domain": ([min(c.closed[n] / c.mean(n) for n in in_c2),
                                   max(c.closed[n] / c.mean(n) for n in in_c2)] if in_c2 else None),
            "points": [{"N": n, "Lambda": c.lam(n), "mc": c.mc[n].tolist(), "exact": c.exact[n],
                        "closed_form": c.closed[n]} for n in ns]})
    with atomic_write(path) as f:
        json.dump(rows, f, indent=1)


# -- the --full extras ----------------------------------------------------------------------------
def claim_2d(cfg: LidarConfig, seeds: list[int]) -> Claim:
    """2-D, N per side: exact theory vs MC, and the MC error at the L16 pick."""
    scene = Scene2D.plane_ripple()
    S2 = slope_energy(scene)
    devs, parts, ok = [], [], True
    for k, alpha0 in enumerate((1e5, 1e6)):
        ns = sorted({8, 16, 32, 64, 96, 128, 192, 256} & set(range(1, int((alpha0 / 5) ** 0.5) + 1)))
        n_rec = int(round(optimal_pixels(S2, alpha0, cfg.sigma_t, dims=2)))
        ns = sorted({*ns, n_rec})
        reps = max(2, int(round(1e6 / alpha0)))
        mc = {n: np.mean([mc_mse(scene, n, alpha0, cfg, s, (7, k), repeats=reps) for s in seeds])
              for n in ns}
        for n in ns:
            if alpha0 / n**2 >= 20:
                devs.append(abs(mse_exact(scene, n, alpha0, cfg.sigma_t).total / mc[n] - 1))
        pick = mc[n_rec] / min(mc.values())
        ok &= pick <= 1.10
        parts.append(f"alpha0={alpha0:g}: N*_side (L16) {n_rec}, MC argmin {min(mc, key=mc.get)}, "
                     f"MSE(N*)/min {pick:.3f}")
    ok &= max(devs) <= C1_TOL
    return Claim.verdict(
        "C6", "2-D (N per side): the exact theory holds and the L16 pick N* ~ alpha0^(1/4) is "
              "near-optimal", ok,
        criterion=f"max |exact/MC - 1| <= {C1_TOL} at Lambda >= 20 and MSE(N*_L16) <= 1.10 x MC min "
                  "(2-D grid is coarse; 10 % covers the flat optimum)",
        comparison=f"max dev {max(devs):.4f}; " + "; ".join(parts), measured=Measurement.of(devs))


def claim_step_edge(cfg: LidarConfig, seeds: list[int]) -> Claim:
    """The step edge: the exact theory holds, the bias falls as 1/N (not 1/N^2)."""
    rng = np.random.default_rng(123)
    ns = [8, 16, 32, 64, 128, 256]
    edges = rng.uniform(0.05, 0.95, 32)
    bias = [np.mean([pixel_moments(Scene1D.step(0.3, x0), n).bias for x0 in edges]) for n in ns]
    slope = float(np.polyfit(np.log(ns), np.log(bias), 1)[0])
    scene = Scene1D.step(0.3, 0.4173)
    alpha0 = 1e4
    devs = [abs(mse_exact(scene, n, alpha0, cfg.sigma_t).total
                / np.mean([mc_mse(scene, n, alpha0, cfg, s, (8,)) for s in seeds]) - 1) for n in ns]
    ok = abs(slope + 1) <= 0.1 and max(devs) <= C1_TOL
    h2_6n = [0.3**2 / (6 * n) for n in ns]
    return Claim.verdict(
        "C7", "At a depth edge L14 fails (bias ~ 1/N) while the exact theory still holds", ok,
        criterion=f"slope of the edge bias vs N in [-1.1, -0.9]; max |exact/MC - 1| <= {C1_TOL}",
        comparison=f"bias slope {slope:.3f} (mean bias/(h^2/6N) "
                   f"{np.mean(np.array(bias) / h2_6n):.3f}); max dev {max(devs):.4f}",
        measured=Measurement.of(devs))


def claim_background(cfg: LidarConfig, seeds: list[int]) -> Claim:
    """Background (extension): EM-ML follows the L17 curve; the sample mean is biased."""
    scene = Scene1D.ramp()
    alpha0, parts, devs, ok = 1e4, [], [], True
    for w in (0.1, 0.5):
        bg = w * alpha0 / (1 - w)
        for n in (60, 180):
            mc = np.mean([mc_mse(scene, n, alpha0, cfg, s, (9, int(w * 10)), repeats=8, method="em",
                                 background=bg) for s in seeds])
            th = mse_exact(scene, n, alpha0, cfg.sigma_t, background=bg).total
            devs.append(abs(th / mc - 1))
            mean_mc = np.mean([mc_mse(scene, n, alpha0, cfg, s, (9, int(w * 10)), repeats=8,
                                      method="mean", background=bg) for s in seeds])
            ok &= mean_mc > 10 * mc
            parts.append(f"w={w} N={n}: L17/MC(EM) {th / mc:.3f}, mean-estimator MSE {mean_mc / mc:.0f}x")
    ok &= max(devs) <= 0.15
    return Claim.verdict(
        "C8", "[extension] With background the EM-ML error follows the Fisher curve (L17); the "
              "sample mean is biased toward the window centre", ok,
        criterion="max |L17/MC - 1| <= 0.15 (L17 is asymptotic; w estimated per pixel costs a "
                  "little more) and the mean's MSE >= 10x EM's",
        comparison="; ".join(parts), measured=Measurement.of(devs))


def claim_histogram(cfg: LidarConfig, seeds: list[int]) -> Claim:
    """TDC bins: the centroid of bin centres follows the exact theory + Delta^2/12 (Sheppard)."""
    scene = Scene1D.ramp()
    alpha0, n, parts, devs = 1e4, 180, [], []
    sigma = cfg.sigma_t
    for delta in (sigma / 2, 2 * sigma):
        mc = np.mean([mc_mse(scene, n, alpha0, cfg, s, (10, int(delta * 1e4)), repeats=8,
                             method="mean", bin_width=delta) for s in seeds])
        widened = mse_exact(scene, n, alpha0, float(np.sqrt(sigma**2 + delta**2 / 12))).total
        devs.append(abs(widened / mc - 1))
        ml = np.mean([mc_mse(scene, n, alpha0, cfg, s, (10, int(delta * 1e4)), repeats=8,
                             method="ml", bin_width=delta) for s in seeds])
        parts.append(f"Delta={delta / sigma:g} sigma_t: theory+Sheppard/MC {widened / mc:.3f}, "
                     f"binned-ML/centroid MSE {ml / mc:.3f}")
    return Claim.verdict(
        "C9", "[extension] TDC binning adds Delta^2/12 per photon (Sheppard) to the exact theory",
        max(devs) <= C1_TOL, criterion=f"max |theory/MC - 1| <= {C1_TOL}",
        comparison="; ".join(parts), measured=Measurement.of(devs))


# -- entry point ----------------------------------------------------------------------------------
@preserved_global_state()
def run(out_dir: str | Path | None = None, quick: bool = True, seeds: int | None = None, *,
        size: str | None = None) -> Result:
    """Run the reproduction; ``size`` is "tiny" (smoke test), "quick" or "full"."""
    start = time.perf_counter()
    size = size or ("quick" if quick else "full")
    if size not in ("tiny", "quick", "full"):
        raise ValueError(f"size must be 'tiny', 'quick' or 'full', got {size!r}")
    cfg = LidarConfig.tiny() if size == "tiny" else LidarConfig.cpu()
    n_seeds = seeds if seeds is not None else (20 if size == "full" else len(cfg.seeds))
    seed_list = list(range(n_seeds))
    scenes = ["sine"] if size == "tiny" else list(SCENES)
    curves = [measure_curve(name, a, cfg, seed_list) for name in scenes for a in cfg.alphas]
    claims = [claim_exact_theory(curves), claim_closed_form(curves), claim_u_shape(curves),
              claim_baselines(curves), claim_scaling(curves, cfg.sigma_t)]
    if size == "full":
        few = seed_list[:5]
        claims += [claim_2d(cfg, few), claim_step_edge(cfg, few), claim_background(cfg, few),
                   claim_histogram(cfg, few)]
    figures = []
    if out_dir is not None:
        figures = plot_curves(curves, Path(out_dir), cfg.sigma_t)
        write_curves(curves, Path(out_dir) / "curves.json", cfg.sigma_t)
    return Result("lidar", claims=claims, mode=size, seeds=seed_list,
                  wall_time_s=time.perf_counter() - start, figures=figures, deviations=DEVIATIONS)


DEVIATIONS = [
    "No official code or simulation parameters exist: scenes, flux levels and sigma_t = 0.01 are "
    "our choices; the reference numbers are those of our prototype, not the paper's.",
    "sigma_x in L14 is read as the variance-matched footprint sigma_x^2 = 1/(12 N^2).",
    "The continuous MSE (L8) and the pixel moments use composite 4-point Gauss-Legendre quadrature "
    "on M nodes (split at depth edges) instead of M cell centres: exact for the ramp and the step.",
    "Photons are stamped modulo the window (periodic laser); scenes are kept 5 sigma_t inside it.",
    "2-D counts N per side (N^2 pixels, Lambda = alpha0/N^2); the 2-D scene (plane + ripple) is ours.",
    "Background (L17) and TDC-binning claims are extensions, labelled as such.",
]

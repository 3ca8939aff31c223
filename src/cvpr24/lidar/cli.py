"""``cvpr24 lidar ...``: design curves, optimal pixel counts, depth estimation, binning advice.

    cvpr24 lidar curve --scene sine --alpha0 1e4 --sigma-t 0.01 [--dims 2] [--mc 5] --out DIR
    cvpr24 lidar optimal-n --slope-energy 0.36 --alpha0 1e4 --sigma-t 0.01 [--dims 2]
    cvpr24 lidar estimate --input cube.npy --layout HWT --bin-width 35e-12 --sigma-t 1e-10 --out depth.npy
    cvpr24 lidar estimate-timestamps --input photons.npz --sigma-t 1e-10 --out depth.npy
    cvpr24 lidar recommend-binning --input cube.mat --key spad --bin-width 35e-12 --sigma-t 1e-10

Times are in the window's unit for the built-in scenes of ``curve`` and ``optimal-n`` and in
seconds for depth-map files (whose results are printed in metres); ``estimate``,
``estimate-timestamps`` and ``recommend-binning`` take seconds and report metres. Warnings
(the theory's domain, scan limits, implausible pulse widths) go to stderr as one line each.
Every output is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from cvpr24.common import atomic_path, atomic_write

CF_DOMAIN_TOL = 0.10  # warn where the closed form is off the exact theory by more than this


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("curve", help="MSE(N) at fixed total flux: exact theory, closed form, optional MC",
                       description="Write curve.json and curve.png for a scene: the exact theory "
                                   "(L9-L11), the paper's closed form (L14/L16) and optionally Monte Carlo.")
    p.add_argument("--scene", default="sine",
                   help="sine | ramp | step | FILE (.npy: 1-D delay profile, or 2-D depth map in metres)")
    p.add_argument("--alpha0", type=float, default=1e4, help="total signal photons over the field of view")
    p.add_argument("--sigma-t", type=float,
                   help="pulse std in the unit of the delays: default 0.01 for the built-in scenes "
                        "(window units); required, in seconds, for a FILE")
    p.add_argument("--dims", type=int, choices=(1, 2), default=1, help="1-D, or 2-D with N per side")
    p.add_argument("--background", type=float, default=0.0, help="total background photons (extension L17)")
    p.add_argument("--mc", type=int, default=0, metavar="SEEDS", help="Monte Carlo seeds (0: theory only)")
    p.add_argument("--points", type=int, default=60, help="N values on the curve")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_guard(cmd_curve))

    p = sub.add_parser("optimal-n", help="the optimal pixel count N* (approximation, cubic, exact)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--slope-energy", type=float, help="S = int tau'^2 (S2 in 2-D), in delay units^2")
    src.add_argument("--scene", help="sine | ramp | step | FILE (also gives the exact-theory optimum)")
    p.add_argument("--alpha0", type=float, required=True, help="total signal photons over the field of view")
    p.add_argument("--sigma-t", type=float, required=True, help="pulse std (seconds for a depth-map FILE)")
    p.add_argument("--dims", type=int, choices=(1, 2), default=1)
    p.add_argument("--seconds", action="store_true", help="delays are in seconds: also print depth RMSE")
    p.add_argument("--out", help="optional JSON output")
    p.set_defaults(func=_guard(cmd_optimal_n))

    for name, func, helptext in (("estimate", cmd_estimate, "depth map from a histogram cube"),
                                 ("recommend-binning", cmd_recommend, "predicted error per bin factor")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--input", required=True, help=".npy | .npz | .mat | .h5 histogram cube")
        p.add_argument("--key", help="array name inside .npz/.mat/.h5")
        p.add_argument("--layout", choices=("HWT", "THW", "BTHW", "BHWT"), help="stored axis order")
        p.add_argument("--order", choices=("C", "F"), default="C", help="pixel order of (H*W, T) matrices")
        p.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), help="image shape of (H*W, T) data")
        p.add_argument("--line", action="store_true", help="a line sensor: the file holds (N, T) counts")
        _add_timing(p, bins=True)
        if name == "estimate":
            _add_estimator(p)
        else:
            p.add_argument("--factors", nargs="+", type=_factor, metavar="F",
                           help="factors to evaluate: F (F x F, or F along a line) or RxC, e.g. 2 4 2x1 4x2")
            p.add_argument("--crop", action="store_true", help="allow factors that do not divide H, W")
            p.add_argument("--out", help="optional JSON output")
        p.set_defaults(func=_guard(func))

    p = sub.add_parser("estimate-timestamps", help="depth map from a photon timestamp list",
                       description="Per-pixel ML delays from (pix | row, col, t) photon lists in "
                                   ".npz or .h5; background-aware by default.")
    p.add_argument("--input", required=True, help=".npz | .h5 with t and pix (or row and col)")
    p.add_argument("--shape", type=int, nargs="+", metavar="N", help="pixel grid (N) or (H W); default from the file")
    _add_timing(p, bins=False)
    _add_estimator(p)
    p.set_defaults(func=_guard(cmd_estimate_timestamps))


def _add_timing(p: argparse.ArgumentParser, bins: bool) -> None:
    if bins:
        p.add_argument("--bin-width", type=float, required=True, help="TDC bin width in seconds")
        p.add_argument("--t0", type=float, default=0.0, help="time of the first bin's left edge (s)")
    else:
        p.add_argument("--bin-width", type=float, help="seconds per TDC code (integer t)")
    p.add_argument("--sigma-t", type=float, required=True, help="pulse std in seconds")


def _add_estimator(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("ml", "mean", "em", "lmf"), default="ml")
    p.add_argument("--background", type=_background, default="auto",
                   help="background fraction w: 'auto' (per pixel, shrunk to the array's; default), "
                        "'none' (w = 0) or a number in [0, 1)")
    p.add_argument("--empty", choices=("nearest", "nan", "global_mean"), default="nearest")
    p.add_argument("--out", required=True, help="depth map in metres (.npy)")
    p.add_argument("--uncertainty", help="per-pixel depth std in metres (.npy; NaN where empty)")


def _background(text: str):
    if text in ("auto", "none"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a fraction, got {text!r}") from None


def _factor(text: str):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected F or RxC (e.g. 4 or 4x2), got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected F or RxC with positive integers, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _guard(func):
    """Bad input (ValueError, a missing file) -> one line on stderr and exit code 2; warnings
    -> one line each on stderr."""
    def wrapped(args: argparse.Namespace) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            try:
                code = func(args)
            except (ValueError, FileNotFoundError) as e:
                print(f"cvpr24 lidar {args.cmd}: error: {e}", file=sys.stderr)
                code = 2
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        return code

    return wrapped


def _scene(spec: str, dims: int):
    """The scene and whether its delays are in seconds (a depth-map FILE, given in metres)."""
    from cvpr24.lidar import Scene1D, Scene2D

    if dims == 2 and spec in ("sine", "ramp", "step", "plane"):
        return (Scene2D.plane_ripple() if spec != "plane" else Scene2D.plane()), False
    builtin = {"sine": Scene1D.sine, "ramp": Scene1D.ramp, "step": Scene1D.step}
    if spec in builtin:
        return builtin[spec](), False
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--scene must be sine, ramp, step or an existing .npy file, got {spec!r}")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 1:
        return Scene1D.from_samples(arr, name=path.stem), False
    return Scene2D.from_depth_map(arr, unit="m", name=path.stem), True


def _sigma_t(args: argparse.Namespace, scene, seconds: bool) -> tuple[float, tuple[float, float]]:
    """--sigma-t and the timing window: (0, 1) for window-unit scenes; for a depth map (delays
    in seconds) --sigma-t is required and the window spans the delays plus 10 sigma_t."""
    from cvpr24.lidar.theory import check_positive, check_sigma_t

    if args.sigma_t is None:
        if args.scene not in ("sine", "ramp", "step", "plane"):
            raise ValueError("--sigma-t is required with a scene FILE (in seconds for a depth map "
                             "in metres): the built-in default 0.01 is in window units")
        return 0.01, (0.0, 1.0)
    sigma = check_positive(args.sigma_t, "--sigma-t")
    if not seconds:
        check_sigma_t(sigma, 1.0)
        return sigma, (0.0, 1.0)
    g = (np.arange(256) + 0.5) / 256
    tau_max = float(np.max(scene.tau(g[None, :], g[:, None])))
    if sigma > 0.1 * tau_max:
        raise ValueError(f"--sigma-t {sigma:g} s is more than a tenth of the scene's largest delay "
                         f"{tau_max:.3g} s (the depth map is in metres, its delays in seconds)")
    return sigma, (0.0, tau_max + 10 * sigma)


def cmd_curve(args: argparse.Namespace) -> int:
    from cvpr24.lidar import (
        C_LIGHT,
        continuous_mse,
        estimate_delay,
        mse_closed_form,
        mse_curve,
        simulate_photons,
        slope_energy,
    )
    from cvpr24.lidar.theory import warn_low_flux

    scene, seconds = _scene(args.scene, args.dims)
    sigma_t, window = _sigma_t(args, scene, seconds)
    dims = scene.dims
    top = (args.alpha0 / 2) ** (1 / dims)
    ns = np.unique(np.geomspace(2, max(4, top), args.points).astype(int))
    S = slope_energy(scene)
    ex = mse_curve(scene, ns, args.alpha0, sigma_t, background=args.background, t_window=window)
    cf = mse_closed_form(S, ns.astype(float), args.alpha0, sigma_t, dims=dims) if S > 0 else None
    out = {"scene": scene.name, "dims": dims, "alpha0": args.alpha0, "sigma_t": sigma_t,
           "unit": "s" if seconds else "window", "t_window": list(window),
           "background": args.background, "slope_energy": S, "N": ns.tolist(),
           "exact": ex.total.tolist(), "bias": ex.bias.tolist(), "variance": ex.variance.tolist(),
           "Lambda": ex.Lambda.tolist(),
           "closed_form": None if cf is None else cf.tolist()}
    i_opt = int(np.argmin(out["exact"]))
    out["N_opt_exact"] = int(ns[i_opt])
    if args.mc:
        mc_n = ns[:: max(1, len(ns) // 12)]
        mc = []
        for n in mc_n:
            vals = []
            for s in range(args.mc):
                ph = simulate_photons(scene, int(n), args.alpha0, sigma_t, t_window=window,
                                      background=args.background, n_repeats=4, rng=[s, int(n)])
                method = "em" if args.background > 0 else "mean"
                vals.append(float(np.mean(continuous_mse(
                    estimate_delay(ph, sigma_t=sigma_t, method=method)[0], scene))))
            mc.append([float(np.mean(vals)), float(np.std(vals))])
        out["mc"] = {"N": mc_n.tolist(), "mean_std": mc}
    _warn_domain(out, scene)
    if i_opt == len(ns) - 1:
        warnings.warn(f"the exact optimum N = {ns[i_opt]} sits on the curve's last point (scan limit): "
                      "the true optimum may be larger", UserWarning, stacklevel=1)
    warn_low_flux(float(ns[i_opt]), args.alpha0, dims)
    folder = Path(args.out)
    with atomic_write(folder / "curve.json") as f:
        json.dump(out, f, indent=2)
    _plot_curve(out, folder / "curve.png")
    best = min(out["exact"])
    said = (f"RMSE {100 * C_LIGHT / 2 * np.sqrt(best):.3g} cm of depth" if seconds
            else f"MSE {best:.4g} (window units^2)")
    print(f"exact-theory optimum N = {out['N_opt_exact']}{' per side' if dims == 2 else ''} "
          f"({said}); wrote {folder / 'curve.json'} and {folder / 'curve.png'}")
    return 0


def _warn_domain(out: dict, scene) -> None:
    """Warn where the closed form is used outside its domain, and say why."""
    if getattr(scene, "breakpoints", ()):
        print("warning: the scene has depth edges; the closed form (L14) assumes a smooth scene "
              "(bias ~ 1/N at an edge, not 1/N^2): use the exact curve", file=sys.stderr)
    if out["closed_form"] is None:
        return
    bad = [(n, lam) for n, lam, c, e in zip(out["N"], out["Lambda"], out["closed_form"], out["exact"],
                                            strict=True) if abs(c / e - 1) > CF_DOMAIN_TOL]
    low = [n for n, lam in bad if lam < 20]
    coarse = [n for n, lam in bad if lam >= 20]
    if low:
        print(f"warning: closed form off the exact theory by > {CF_DOMAIN_TOL:.0%} at N in "
              f"[{min(low)}, {max(low)}]: fewer than 20 photons per pixel (g ~ 1/Lambda fails)",
              file=sys.stderr)
    if coarse:
        print(f"warning: closed form off the exact theory by > {CF_DOMAIN_TOL:.0%} at N in "
              f"[{min(coarse)}, {max(coarse)}]: too few pixels per scene feature (linearisation fails)",
              file=sys.stderr)


def _plot_curve(out: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ax.plot(out["N"], out["exact"], "-", label="exact theory (L9-L11)")
    if out["closed_form"] is not None:
        ax.plot(out["N"], out["closed_form"], "--", label="closed form (L14/L16)")
    if "mc" in out:
        m = np.array(out["mc"]["mean_std"])
        ax.errorbar(out["mc"]["N"], m[:, 0], yerr=m[:, 1], fmt="o", ms=4, label="Monte Carlo")
    ax.axvline(out["N_opt_exact"], color="0.5", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="pixels N" + (" per side" if out["dims"] == 2 else ""),
           ylabel="MSE", title=f"{out['scene']}: alpha0={out['alpha0']:g}, sigma_t={out['sigma_t']:g}")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def cmd_optimal_n(args: argparse.Namespace) -> int:
    from cvpr24.lidar import C_LIGHT, mse_closed_form, mse_exact, optimal_pixels, slope_energy

    scene, seconds = _scene(args.scene, args.dims) if args.scene else (None, False)
    window = (0.0, 1.0)
    if scene is not None:
        args.sigma_t, window = _sigma_t(args, scene, seconds)
    seconds = seconds or args.seconds
    with warnings.catch_warnings():  # a scene with jumps: said below, once
        warnings.simplefilter("ignore", UserWarning)
        S = slope_energy(scene) if scene is not None else args.slope_energy
    dims = scene.dims if scene is not None else args.dims
    res = {"slope_energy": S, "alpha0": args.alpha0, "sigma_t": args.sigma_t, "dims": dims}
    if scene is None or S > 0:
        with warnings.catch_warnings():  # the low-flux note comes once, for the cubic root
            warnings.simplefilter("ignore", UserWarning)
            res["approx"] = optimal_pixels(S, args.alpha0, args.sigma_t, dims=dims, method="approx")
        res["cubic"] = optimal_pixels(S, args.alpha0, args.sigma_t, dims=dims, method="cubic")
        n_int = max(1, int(round(res["cubic"])))
        res["mse_closed_form"] = float(mse_closed_form(S, n_int, args.alpha0, args.sigma_t, dims=dims))
    if scene is not None:
        res["exact"] = optimal_pixels(scene, args.alpha0, args.sigma_t, method="exact")
        res["mse_exact"] = mse_exact(scene, res["exact"], args.alpha0, args.sigma_t, t_window=window).total
    side = " per side" if dims == 2 else ""
    if "cubic" not in res:
        print("slope energy 0 (the scene is flat between its jumps): the closed form (L14, L15) "
              "has no optimum; exact theory only")
    elif dims == 1:
        print(f"N* approx (S alpha0 / 6 sigma_t^2)^(1/3): {res['approx']:.2f}")
        print(f"N* cubic root of L15:                     {res['cubic']:.2f}")
    else:
        print(f"N* (S2 alpha0 / 12 sigma_t^2)^(1/4) (L16): {res['cubic']:.2f}{side}")
    if "exact" in res:
        print(f"N* exact theory (integer scan):           {res['exact']}{side}")
    rmse = float(np.sqrt(res["mse_exact"] if "mse_exact" in res else res["mse_closed_form"]))
    if seconds:
        res["rmse_depth_m"] = C_LIGHT / 2 * rmse
        print(f"predicted depth RMSE at N*: {100 * res['rmse_depth_m']:.3g} cm ({rmse:.4g} s of delay)")
    else:
        print(f"predicted RMSE at N*: {rmse:.4g} (delay unit; pass --seconds for metres)")
    if args.out:
        with atomic_write(args.out) as f:
            json.dump(res, f, indent=2)
    return 0


def _load_cube(args: argparse.Namespace) -> np.ndarray:
    from cvpr24.lidar import load_histogram_cube

    cube = load_histogram_cube(args.input, key=args.key, layout=args.layout, order=args.order,
                               shape=tuple(args.shape) if args.shape else None, line=args.line)
    if cube.ndim != (2 if args.line else 3):
        raise ValueError(f"expected one (H, W, T) cube, got shape {cube.shape} (--line reads (N, T))")
    return cube


def _save_depth(args: argparse.Namespace, tau: np.ndarray, info) -> None:
    """Write the depth map and, with --uncertainty, the per-pixel depth std (m); print both."""
    from cvpr24.lidar import C_LIGHT

    depth = C_LIGHT * tau / 2
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, depth)
    print(f"depth map {depth.shape} (m) -> {args.out}; {info.counts.sum()} photons, "
          f"{info.n_empty} empty pixels filled by '{args.empty}'")
    if args.uncertainty:
        if info.variance is None:
            raise ValueError(f"--uncertainty needs --method ml or em, got {args.method!r}")
        std = C_LIGHT / 2 * np.sqrt(info.variance)
        with atomic_path(args.uncertainty) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, std)
        print(f"depth std (m) -> {args.uncertainty}: median {100 * np.nanmedian(std):.3g} cm; "
              f"mean background lock-in probability {np.nanmean(info.p_lock):.3g}")


def cmd_estimate(args: argparse.Namespace) -> int:
    from cvpr24.lidar import estimate_delay

    cube = _load_cube(args)
    edges = args.t0 + args.bin_width * np.arange(cube.shape[-1] + 1)
    tau, info = estimate_delay(cube, sigma_t=args.sigma_t, method=args.method, bin_edges=edges,
                               background=args.background, empty=args.empty,
                               dims=1 if args.line else 2)
    _save_depth(args, tau, info)
    return 0


def cmd_estimate_timestamps(args: argparse.Namespace) -> int:
    from cvpr24.lidar import estimate_delay, load_timestamps

    data = load_timestamps(args.input, bin_width=args.bin_width,
                           shape=tuple(args.shape) if args.shape else None)
    tau, info = estimate_delay(data, sigma_t=args.sigma_t, method=args.method,
                               background=args.background, empty=args.empty)
    _save_depth(args, tau, info)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from cvpr24.lidar import recommend_binning

    cube = _load_cube(args)
    rec = recommend_binning(cube, args.sigma_t, args.bin_width, t0=args.t0, crop=args.crop,
                            factors=args.factors)
    print(rec.table())
    name = str(rec.factor[1]) if args.line else f"{rec.factor[0]}x{rec.factor[1]}"
    i = rec.factors.index(rec.factor)
    print(f"signal photons ~{rec.signal_photons:.4g}, background ~{rec.background_photons:.4g}; "
          f"recommended bin factor {name}: predicted depth RMSE {100 * rec.rmse_depth_m[i]:.3g} cm")
    if args.out:
        with atomic_write(args.out) as f:
            json.dump({"factor": list(rec.factor), "factors": [list(f) for f in rec.factors],
                       "rmse_depth_m": rec.rmse_depth_m.tolist(), "mse_s2": rec.mse.tolist(),
                       "bias_s2": rec.bias.tolist(), "variance_s2": rec.variance.tolist(),
                       "p_lock": rec.p_lock.tolist(), "p_empty": rec.p_empty.tolist(),
                       "photons_per_pixel": rec.photons_per_pixel.tolist(),
                       "signal_photons": rec.signal_photons,
                       "background_photons": rec.background_photons}, f, indent=2)
    return 0

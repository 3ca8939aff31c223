"""Claims C1-C4 of the HCC paper at CPU scale, as a lab notebook.

Data: the planted signed partition (``make_signed_partition``), scikit-learn's bundled iris /
wine / breast_cancer / digits, and make_moons / make_circles / make_blobs. Arms: HCC-``sum``
against average / complete / single linkage on the same signed D (scipy), Ward and MDS as
non-paper references. Every threshold below is fixed before the run, with its reason.

No paper numbers are quoted: the paper's tables were not retrievable; the
claims test the mechanisms.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import pdist, squareform
from sklearn import datasets
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cvpr24.common import Claim, Measurement, Result, atomic_path, atomic_write
from cvpr24.hcc.data import make_signed_partition
from cvpr24.hcc.embedding import mds_embed, minimax_cc_labels, minimax_distances
from cvpr24.hcc.estimators import MinimaxEmbedding, TreePreservingEmbedding
from cvpr24.hcc.linkage import (
    cc_cost,
    cc_cut,
    cc_path,
    cut_level,
    dendrogram_purity,
    hcc_linkage,
)

CLAIMS = [
    "C1: HCC (sum linkage) recovers planted signed clusters under sign flips better than "
    "average / complete / single linkage",
    "C2: on shifted feature dissimilarities of UCI-style data HCC beats SL/CL/AL on most datasets",
    "C3: CC on minimax dissimilarities is solved exactly in polynomial time, and the minimax "
    "embedding captures elongated clusters for a GMM",
    "C4: the tree-preserving embedding carries the HCC tree into vectors a GMM can cluster",
]

# --- thresholds, each with its reason (fixed before any run) ---------------------------------
C1_GAP = 0.15  # far above the seed-to-seed sd (0.03-0.07); a practically visible gain
C1_SEED_FRACTION = 0.8  # "beats the best baseline on >= 4/5 seeds"
C2_MIN_DATASETS = 3  # "outperforms on most datasets": at least 3 of 4
C3_GMM_GAP = 0.3  # the size of effect that justifies "elongation-aware"
C4_TREE_GAP = 0.2  # TPE of the HCC tree vs TPE of the AL tree: the tree's structure carries over
C4_KEEP_MARGIN = 0.15  # TPE loses at most this much ARI against cutting the HCC tree itself

PAPER_VALUE = "not retrieved (the paper's tables were unavailable)"

BASELINES = {"AL": "average", "CL": "complete", "SL": "single"}


@dataclass
class ReproConfig:
    """Sizes of the reproduction; the defaults are the full mode."""

    sizes: tuple[int, ...] = (600, 400, 250, 150, 100)  # N = 1500, imbalanced on purpose
    p_flips: tuple[float, ...] = (0.1, 0.2, 0.3)
    p_obs: tuple[float, ...] = (1.0, 0.3)
    main_p_flip: float = 0.2
    seeds: int = 20
    digits_n: int | None = None  # None: all 1797
    noise_levels: tuple[float, ...] = (0.0, 0.5)  # sigma of C2
    moons_n: int = 300
    brute_force_graphs: int = 20
    brute_force_n: int = 7
    tpe_dims: tuple[int, ...] = (20, 50)  # d-sweep of C4 (K is always added)
    minimax_dim: int = 5

    @classmethod
    def cpu(cls) -> ReproConfig:
        """Quick mode: about a minute on 2 cores."""
        return cls(sizes=(60, 40, 25, 15, 10), seeds=5, digits_n=500, tpe_dims=(20,))

    @classmethod
    def tiny(cls) -> ReproConfig:
        """Smoke test: seconds."""
        return cls(sizes=(20, 12, 8), p_flips=(0.2,), p_obs=(1.0,), seeds=2, digits_n=150,
                   noise_levels=(0.0,), moons_n=80, brute_force_graphs=3, brute_force_n=6,
                   tpe_dims=(10,), minimax_dim=3)


@dataclass
class Notebook:
    """Everything measured, for ``tables.json`` and the docs."""

    config: dict
    tables: dict = field(default_factory=dict)


def ari(y, labels) -> float:
    return float(adjusted_rand_score(y, labels))


def gmm_labels(Y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The downstream GMM on the embedding (a full-covariance Gaussian mixture)."""
    return GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-3, n_init=3,
                           random_state=seed).fit_predict(Y)


def baseline_linkage(D: np.ndarray, method: str) -> np.ndarray:
    return scipy_linkage(squareform(D, checks=False), method=method)


# --- C1 -------------------------------------------------------------------------------------


def c1_planted(cfg: ReproConfig, seeds: list[int], nb: Notebook) -> tuple[Claim, dict]:
    k = len(cfg.sizes)
    runs, purity = {}, {}
    for p_flip, p_obs in itertools.product(cfg.p_flips, cfg.p_obs):
        per = {m: [] for m in ("HCC", *BASELINES, "HCC-cc")}
        extra = {"k_cc": [], "cost_ratio_cc": [], "cost_ratio_HCC": [], "cost_ratio_AL": [],
                 "purity_HCC": [], "purity_AL": []}
        for s in seeds:
            D, y = make_signed_partition(cfg.sizes, p_flip, p_obs=p_obs, seed=s)
            Z = hcc_linkage(D)
            labels = cut_level(Z, k)
            per["HCC"].append(ari(y, labels))
            kc = cc_cut(Z, cc_path(D, Z))
            per["HCC-cc"].append(ari(y, cut_level(Z, kc)))
            truth = cc_cost(D, y)
            extra["k_cc"].append(kc)
            extra["cost_ratio_cc"].append(cc_cost(D, cut_level(Z, kc)) / truth)
            extra["cost_ratio_HCC"].append(cc_cost(D, labels) / truth)
            extra["purity_HCC"].append(dendrogram_purity(Z, y))
            for name, method in BASELINES.items():
                Zb = baseline_linkage(D, method)
                lab = cut_level(Zb, k)
                per[name].append(ari(y, lab))
                if name == "AL":
                    extra["cost_ratio_AL"].append(cc_cost(D, lab) / truth)
                    extra["purity_AL"].append(dendrogram_purity(Zb, y))
        runs[(p_flip, p_obs)] = per
        purity[(p_flip, p_obs)] = extra
        nb.tables.setdefault("C1", []).append({
            "p_flip": p_flip, "p_obs": p_obs,
            **{m: asdict(Measurement.of(v)) for m, v in per.items()},
            **{m: asdict(Measurement.of(v)) for m, v in extra.items()}})

    # control: additive noise, no flips; AL and HCC should both be near 1
    control = {"HCC": [], "AL": []}
    for s in seeds:
        D, y = make_signed_partition(cfg.sizes, 0.0, gauss=1.0, seed=s)
        control["HCC"].append(ari(y, cut_level(hcc_linkage(D), k)))
        control["AL"].append(ari(y, cut_level(baseline_linkage(D, "average"), k)))
    nb.tables["C1_control"] = {m: asdict(Measurement.of(v)) for m, v in control.items()}

    main = runs[(cfg.main_p_flip, 1.0)]
    base = np.array([main[b] for b in BASELINES])  # (3, seeds)
    best_name = list(BASELINES)[int(np.argmax(base.mean(axis=1)))]
    best = np.array(main[best_name])
    hcc = np.array(main["HCC"])
    gap = hcc.mean() - best.mean()
    wins = float(np.mean(hcc > base.max(axis=0)))
    every = {p: np.mean(runs[(p, 1.0)]["HCC"]) >= max(np.mean(runs[(p, 1.0)][b]) for b in BASELINES)
             for p in cfg.p_flips}
    passed = gap >= C1_GAP and wins >= C1_SEED_FRACTION and all(every.values())
    claim = Claim.verdict(
        "C1", CLAIMS[0], bool(passed),
        paper_value=PAPER_VALUE,
        criterion=(f"at p_flip={cfg.main_p_flip}, p_obs=1: mean ARI(HCC) - best baseline mean "
                   f">= {C1_GAP} (far above the seed sd of 0.03-0.07), HCC above every "
                   f"baseline on >= {C1_SEED_FRACTION:.0%} of seeds, and HCC's mean >= the best "
                   f"baseline's mean at every p_flip (p_obs=1)"),
        comparison=(f"ARI HCC {hcc.mean():.3f} vs best baseline {best_name} {best.mean():.3f}: "
                    f"gap {gap:.3f}; HCC wins on {wins:.0%} of seeds; mean >= best at "
                    + ", ".join(f"p={p}: {ok}" for p, ok in every.items())),
        measured=Measurement.of(hcc - base.max(axis=0)),
        notes=(f"dendrogram purity at p_flip={cfg.main_p_flip}: HCC "
               f"{np.mean(purity[(cfg.main_p_flip, 1.0)]['purity_HCC']):.3f}, AL "
               f"{np.mean(purity[(cfg.main_p_flip, 1.0)]['purity_AL']):.3f}. "
               f"control (gauss=1, p_flip=0): ARI HCC {np.mean(control['HCC']):.3f}, "
               f"AL {np.mean(control['AL']):.3f}. Measured values: per-seed ARI(HCC) - best "
               f"baseline ARI at p_flip={cfg.main_p_flip}."))
    return claim, runs


def plot_c1(runs: dict, cfg: ReproConfig, out: Path) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(cfg.p_obs), 3.6))
    axes = fig.subplots(1, len(cfg.p_obs), squeeze=False)
    for ax, p_obs in zip(axes[0], cfg.p_obs, strict=True):
        for m in ("HCC", *BASELINES):
            mean = [np.mean(runs[(p, p_obs)][m]) for p in cfg.p_flips]
            sd = [np.std(runs[(p, p_obs)][m]) for p in cfg.p_flips]
            ax.errorbar(cfg.p_flips, mean, yerr=sd, marker="o", capsize=3, label=m)
        ax.set(xlabel="sign-flip probability", ylabel="ARI at true K", title=f"p_obs={p_obs}",
               ylim=(-0.05, 1.05))
        ax.legend()
    fig.tight_layout()
    name = "c1_ari_vs_pflip.png"
    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110)
    return name


# --- C2 -------------------------------------------------------------------------------------


def load_uci(name: str, seed: int, digits_n: int | None) -> tuple[np.ndarray, np.ndarray]:
    loader = {"iris": datasets.load_iris, "wine": datasets.load_wine,
              "breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}[name]
    X, y = loader(return_X_y=True)
    if name == "digits" and digits_n is not None and digits_n < len(y):
        idx = np.random.default_rng(seed).choice(len(y), digits_n, replace=False)
        X, y = X[idx], y[idx]
    return StandardScaler().fit_transform(X), y


def shifted_features(X: np.ndarray, k: int, sigma: float, seed: int) -> tuple[np.ndarray, float]:
    """``D = ||x_i - x_j|| + sigma sd eps_ij - theta``, theta the (1/K)-quantile (``inv_k``)."""
    d = pdist(X)
    if sigma > 0:
        d = d + sigma * d.std() * np.random.default_rng(seed).standard_normal(d.shape)
    theta = float(np.quantile(d, 1.0 / k))
    return squareform(d - theta), theta


def c2_uci(cfg: ReproConfig, seeds: list[int], nb: Notebook) -> Claim:
    names = ("iris", "wine", "breast_cancer", "digits")
    rows = []
    wins = {}
    for sigma in cfg.noise_levels:
        for name in names:
            per = {m: [] for m in ("HCC", *BASELINES, "Ward")}
            for s in seeds:
                X, y = load_uci(name, s, cfg.digits_n)
                k = len(np.unique(y))
                D, theta = shifted_features(X, k, sigma, s)
                per["HCC"].append(ari(y, cut_level(hcc_linkage(D), k)))
                for b, method in BASELINES.items():
                    per[b].append(ari(y, cut_level(baseline_linkage(D, method), k)))
                # Ward needs non-negative distances: the unshifted (noisy) ones, clipped at 0
                ward = scipy_linkage(squareform(np.maximum(D + theta, 0), checks=False), "ward")
                per["Ward"].append(ari(y, cut_level(ward, k)))
            means = {m: float(np.mean(v)) for m, v in per.items()}
            rows.append({"dataset": name, "sigma": sigma,
                         **{m: asdict(Measurement.of(v)) for m, v in per.items()}})
            if sigma == cfg.noise_levels[0]:
                wins[name] = means["HCC"] > max(means[b] for b in BASELINES)
    nb.tables["C2"] = rows
    primary = [r for r in rows if r["sigma"] == cfg.noise_levels[0]]
    gaps = [r["HCC"]["mean"] - max(r[b]["mean"] for b in BASELINES) for r in primary]
    n_wins = sum(wins.values())
    ward_better = [r["dataset"] for r in primary if r["Ward"]["mean"] > r["HCC"]["mean"]]
    return Claim.verdict(
        "C2", CLAIMS[1], n_wins >= C2_MIN_DATASETS,
        paper_value=PAPER_VALUE,
        criterion=(f"mean ARI(HCC) at K above the best of SL/CL/AL on >= {C2_MIN_DATASETS} of 4 "
                   f"datasets at sigma={cfg.noise_levels[0]} (the paper's 'outperforms on most "
                   f"datasets' in checkable form)"),
        comparison="; ".join(
            f"{r['dataset']}: HCC {r['HCC']['mean']:.3f} vs best baseline "
            f"{max(r[b]['mean'] for b in BASELINES):.3f} (Ward {r['Ward']['mean']:.3f})"
            for r in primary) + f"; HCC wins {n_wins}/4",
        measured=Measurement.of(gaps),
        notes=("Measured: per-dataset gap ARI(HCC) - best of SL/CL/AL. Ward (non-paper "
               "reference, on the unshifted distances) beats HCC on: "
               + (", ".join(ward_better) if ward_better else "none")))


# --- C3 -------------------------------------------------------------------------------------


def all_partitions(n: int):
    """Every set partition of ``0..n-1`` (restricted-growth label vectors)."""
    def grow(prefix, k):
        if len(prefix) == n:
            yield np.array(prefix)
            return
        for c in range(k + 1):
            yield from grow(prefix + [c], max(k, c + 1))
    yield from grow([0], 1)


def c3_minimax(cfg: ReproConfig, seeds: list[int], nb: Notebook) -> Claim:
    # (a) exactness by brute force
    partitions = list(all_partitions(cfg.brute_force_n))
    rng = np.random.default_rng(12345)
    exact, raw_opt_positive = [], 0
    for _ in range(cfg.brute_force_graphs):
        A = rng.standard_normal((cfg.brute_force_n, cfg.brute_force_n))
        D = (A + A.T) / 2
        np.fill_diagonal(D, 0)
        M = minimax_distances(D)
        optimum = min(cc_cost(M, p) for p in partitions)
        reached = cc_cost(M, minimax_cc_labels(D))
        exact.append(abs(optimum) < 1e-12 and abs(reached) < 1e-12)
        raw_opt_positive += min(cc_cost(D, p) for p in partitions) > 1e-12
    # (b) representation: GMM on the minimax embedding vs GMM on raw features
    gen = {
        "moons": lambda s: datasets.make_moons(cfg.moons_n, noise=0.06, random_state=s),
        "circles": lambda s: datasets.make_circles(cfg.moons_n, noise=0.04, factor=0.5, random_state=s),
        "aniso_blobs": lambda s: _aniso_blobs(cfg.moons_n, s),
    }
    rep = {}
    for name, make in gen.items():
        mm, raw = [], []
        for s in seeds:
            X, y = make(s)
            k = len(np.unique(y))
            d = pdist(X)
            D = squareform(d - np.median(d))
            Y = MinimaxEmbedding(n_components=cfg.minimax_dim).fit_transform(D)
            mm.append(ari(y, gmm_labels(Y, k, s)))
            raw.append(ari(y, gmm_labels(X, k, s)))
        rep[name] = {"minimax": mm, "raw": raw}
    nb.tables["C3"] = {"exact": int(sum(exact)), "graphs": len(exact),
                       "raw_optimum_positive": int(raw_opt_positive),
                       **{n: {a: asdict(Measurement.of(v)) for a, v in r.items()}
                          for n, r in rep.items()}}
    gaps = {n: float(np.mean(rep[n]["minimax"]) - np.mean(rep[n]["raw"])) for n in rep}
    passed = all(exact) and gaps["moons"] >= C3_GMM_GAP and gaps["circles"] >= C3_GMM_GAP
    return Claim.verdict(
        "C3", CLAIMS[2], bool(passed),
        paper_value=PAPER_VALUE,
        criterion=(f"(a) brute-force CC optimum on D^MM is 0 and minimax CC reaches it on every "
                   f"graph; (b) mean ARI gap GMM(minimax embedding) - GMM(raw X) >= {C3_GMM_GAP} "
                   f"on moons and on circles (the size of effect that justifies "
                   f"'elongation-aware')"),
        comparison=(f"(a) {sum(exact)}/{len(exact)} exact (raw-D optimum > 0 on "
                    f"{raw_opt_positive}/{len(exact)}); (b) "
                    + "; ".join(f"{n}: minimax {np.mean(r['minimax']):.3f} vs raw "
                                f"{np.mean(r['raw']):.3f} (gap {gaps[n]:.3f})"
                                for n, r in rep.items())),
        measured=Measurement.of([gaps["moons"], gaps["circles"]]),
        notes=("Measured: ARI gaps on moons and circles. aniso_blobs is a reported non-win "
               "case (no pass criterion)."))


def _aniso_blobs(n: int, seed: int):
    X, y = datasets.make_blobs(n, centers=3, random_state=seed)
    return X @ np.array([[0.6, -0.64], [-0.41, 0.85]]), y


# --- C4 -------------------------------------------------------------------------------------


def c4_tpe(cfg: ReproConfig, seeds: list[int], nb: Notebook) -> Claim:
    k = len(cfg.sizes)
    dims = sorted({k, *cfg.tpe_dims})
    main_d = 20 if 20 in dims else dims[-1]
    res = {f"TPE-HCC d={d}": [] for d in dims}
    res.update({f"TPE-AL d={d}": [] for d in dims})
    res.update({"HCC cut": [], f"MDS of shifted D d={main_d}": []})
    for s in seeds:
        D, y = make_signed_partition(cfg.sizes, cfg.main_p_flip, seed=s)
        res["HCC cut"].append(ari(y, cut_level(hcc_linkage(D), k)))
        for d in dims:
            Y = TreePreservingEmbedding(n_components=d).fit_transform(D)
            res[f"TPE-HCC d={d}"].append(ari(y, gmm_labels(Y, k, s)))
            Y = TreePreservingEmbedding(n_components=d, linkage="avg").fit_transform(D)
            res[f"TPE-AL d={d}"].append(ari(y, gmm_labels(Y, k, s)))
        off = ~np.eye(D.shape[0], dtype=bool)
        S = np.where(off, D - D[off].min(), 0.0)  # shift to min 0: a non-negative dissimilarity
        Y, _ = mds_embed(S, main_d, check_embeddable=False)
        res[f"MDS of shifted D d={main_d}"].append(ari(y, gmm_labels(Y, k, s)))
    # TPE vs raw features on C2's datasets, reported without a pass claim
    uci = {}
    for name in ("iris", "wine", "breast_cancer", "digits"):
        tpe, raw = [], []
        for s in seeds:
            X, y = load_uci(name, s, cfg.digits_n)
            kk = len(np.unique(y))
            D, _ = shifted_features(X, kk, 0.0, s)
            Y = TreePreservingEmbedding(n_components=min(main_d, len(y) - 1)).fit_transform(D)
            tpe.append(ari(y, gmm_labels(Y, kk, s)))
            raw.append(ari(y, gmm_labels(X, kk, s)))
        uci[name] = {"TPE": asdict(Measurement.of(tpe)), "raw": asdict(Measurement.of(raw))}
    nb.tables["C4"] = {m: asdict(Measurement.of(v)) for m, v in res.items()}
    nb.tables["C4_uci"] = uci
    hcc = np.array(res[f"TPE-HCC d={main_d}"])
    al = np.array(res[f"TPE-AL d={main_d}"])
    cut = np.array(res["HCC cut"])
    gap = hcc.mean() - al.mean()
    keep = hcc.mean() - (cut.mean() - C4_KEEP_MARGIN)
    passed = gap >= C4_TREE_GAP and keep >= 0
    mds = np.mean(res[f"MDS of shifted D d={main_d}"])
    return Claim.verdict(
        "C4", CLAIMS[3], bool(passed),
        paper_value=PAPER_VALUE,
        criterion=(f"(i) mean ARI GMM(TPE-HCC) - GMM(TPE-AL) >= {C4_TREE_GAP} (the tree's "
                   f"structure carries into the features) and (ii) ARI(TPE-HCC) >= ARI(HCC cut) "
                   f"- {C4_KEEP_MARGIN} (the embedding keeps the hierarchy); d={main_d}, "
                   f"p_flip={cfg.main_p_flip}"),
        comparison=(f"TPE-HCC {hcc.mean():.3f}, TPE-AL {al.mean():.3f} (gap {gap:.3f}); HCC cut "
                    f"{cut.mean():.3f}; MDS of the shifted D (no tree) {mds:.3f}"),
        measured=Measurement.of(hcc - al),
        notes=("Measured: per-seed ARI(TPE-HCC) - ARI(TPE-AL). TPE vs raw features on UCI: "
               + "; ".join(f"{n}: TPE {v['TPE']['mean']:.3f} vs raw {v['raw']['mean']:.3f}"
                           for n, v in uci.items())))


# --- run ------------------------------------------------------------------------------------


def run(out_dir, quick: bool = True, seeds: int | None = None, size: str | None = None) -> Result:
    """Run C1-C4 and write ``tables.json`` and the figures into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
    quick : bool
        ``ReproConfig.cpu()`` (about a minute on 2 cores) instead of the full configuration.
    seeds : int, optional
        Number of seeds (0..seeds-1); default 5 quick, 20 full.
    size : {"tiny", "cpu", "full"}, optional
        Overrides ``quick`` (``"tiny"`` is the smoke test).
    """
    start = time.monotonic()
    size = size or ("cpu" if quick else "full")
    cfg = {"tiny": ReproConfig.tiny, "cpu": ReproConfig.cpu, "full": ReproConfig}[size]()
    if seeds is not None:
        cfg.seeds = int(seeds)
    seed_list = list(range(cfg.seeds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nb = Notebook(config={**asdict(cfg), "size": size})

    # one BLAS thread: the matrices are small, and spinning threads only cost time on 2 cores
    with threadpool_limits(1):
        c1, runs = c1_planted(cfg, seed_list, nb)
        figures = [plot_c1(runs, cfg, out)]
        claims = [c1, c2_uci(cfg, seed_list, nb), c3_minimax(cfg, seed_list, nb),
                  c4_tpe(cfg, seed_list, nb)]
    with atomic_write(out / "tables.json") as f:
        json.dump({**asdict(nb), "conventions": CONVENTIONS}, f, indent=2)
    return Result("hcc", claims=claims, mode="quick" if quick else "full", seeds=seed_list,
                  wall_time_s=time.monotonic() - start, figures=figures,
                  deviations=DEVIATIONS)


CONVENTIONS = {
    "level": "node created at merge t (1-based) has level t; leaves 0 (depth is an option)",
    "cc_cost": "unordered pairs (half the paper's ordered-pair sum)",
    "shift": "feature data: theta = (1/K)-quantile of the distances (inv_k)",
    "mds": "level and minimax matrices are used as squared distances",
}

DEVIATIONS = [
    "No paper numbers: the paper's tables were not retrievable; claims test the mechanisms "
    "on generated data and scikit-learn's bundled datasets.",
    "C2 uses scikit-learn's bundled UCI-style datasets (digits subsampled to 500 in quick "
    "mode), standardised, with the inv_k shift; the paper's exact construction is unknown.",
    "Ward (reference only) runs on the unshifted, noisy distances clipped at 0, because "
    "scipy's Ward cannot take the negative shifted values.",
    "Level convention: merge index t (the alternative 'depth' reading is offered as "
    "tree_distance='depth').",
]

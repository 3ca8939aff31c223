"""G-FARS at CPU scale on procedural furniture mixes: does the gradient field and the GNN
matter, and how does the generative grouping compare with a pairwise baseline?

Set-up (docs/gfars.md, Reproduction): mixes of 2-3 chairs/tables whose parts are ambiguous
one by one and identifiable only through shared dimensions (cvpr24.gfars.data). Every method
uses the same descriptor encoder (a deviation from PointNet), F = 64, batch 16 and Adam
1e-3; G-FARS samples with PC-100 and AR grouping (threshold 0.5, at most 8 iterations).

- Validity gate, before any claim: the hand-written oracle (grouping by shared dimensions,
  measured from the points) must reach strict F1 >= 0.95 on each seed's test mixes; else
  every claim is "not tested".
- Quick mode evaluates the committed checkpoints (``checkpoints/<method>_seed<k>``, written
  by ``cvpr24 train gfars``) and retrains one model for 200 steps as a smoke test; ``--full``
  retrains every method for every seed first.
- Each claim is reported for the faithful G-FARS and for G-FARS-ef separately.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ttest_ind

from cvpr24.common.checkpoint import load_checkpoint
from cvpr24.common.io import atomic_path, atomic_write
from cvpr24.common.result import Claim, Measurement, Result
from cvpr24.gfars.data import (
    MixedPartSet,
    oracle_grouping,
    pad_sets,
    procedural_mix,
    procedural_mixes,
)
from cvpr24.gfars.metrics import grouping_metrics
from cvpr24.gfars.model import GFARS, GFARSConfig
from cvpr24.gfars.sampling import group_sets, sample_selection
from cvpr24.gfars.sde import dsm_loss, marginal_std, oracle_score, per_node_bayes_score, time_of_std
from cvpr24.gfars.train import build_method, random_targets, save_method, train

CLAIMS = [
    "A (ablation w/o GF): the gradient field beats a deterministic selection regressor",
    "B (ablation w/o GNN): message passing beats per-node score nets, beyond the per-node optimum",
    "C (headline vs Comp-Net): G-FARS beats the pairwise compatibility baseline",
    "D (sampler): the PC sampler is at least as good as Euler-Maruyama",
    "E (zero-shot noise): G-FARS leaves noise parts unselected without training on noise",
]
CHECKPOINTS = Path(__file__).parent / "checkpoints"
BASE = GFARSConfig.cpu(encoder="descriptor", batch_size=16)
VARIANTS = {"gfars": "G-FARS (faithful)", "gfars_ef": "G-FARS-ef"}
ABLATION = {"gfars": "wo_gnn", "gfars_ef": "wo_gnn_ef"}
STEPS = {"gfars": 600, "gfars_ef": 600, "wo_gnn": 600, "wo_gnn_ef": 600, "wo_gf": 300,
         "compnet": 600}
SIZES = {  # test mixes per seed (n_em of them for the PC-vs-EM claim), PC steps, EM steps,
    # noisy test mixes, repeats of the DSM diagnostic. "standard" evaluates the committed
    # checkpoints at the size docs/gfars.md reports; "quick" is the 5-minute subset of it.
    "full": dict(n_test=256, n_em=128, pc=100, em=200, n_noise=128, diag=16, seeds=3),
    "standard": dict(n_test=32, n_em=16, pc=100, em=200, n_noise=12, diag=4, seeds=3),
    "quick": dict(n_test=12, n_em=6, pc=100, em=200, n_noise=4, diag=2, seeds=3),
    "tiny": dict(n_test=4, n_em=2, pc=4, em=8, n_noise=2, diag=1, seeds=1),
}

# --- criteria: fixed before any run, each with its reason ------------------------------------
ORACLE_MIN = 0.95   # the grouping must be knowable from the points: the oracle reaches it
GAP_A = 0.15        # A: a mode-averaging regressor emits no clean group; 0.15 is > 5 seed s.d.
GAP_B = 0.08        # B: ~3 seed s.d. of strict F1 at this test size (prototype spread 0.02-0.03)
BAYES_MARGIN = 0.8  # B: learned DSM loss at sigma_t 0.3-0.5 at least 20 % below per-node Bayes
DIAG_STDS = (0.3, 0.4, 0.5)
PC_EM_TOL = 0.02    # D: binomial s.e. of strict F1 at this test size
NOISE_REJECT = 0.5  # E: at least half of the noise parts left unassigned
NOISE_P_DROP = 0.1  # E: strict precision on the real groups drops by at most 0.1
FLOOR_MARGIN = 0.1  # C precondition: Comp-Net beats the random-partition floor by 0.1


def _score(preds, sets: list[MixedPartSet]) -> dict:
    gts, sizes = [s.gt_groups for s in sets], [len(s) for s in sets]
    return {mode: grouping_metrics(preds, gts, sizes, mode).as_dict()
            for mode in ("official", "strict")}


def _group(model, sets, seed: int, sampler: str = "pc", steps: int = 100):
    parts = [s.parts for s in sets]
    if isinstance(model, GFARS):
        return group_sets(model, parts, sampler=sampler, steps=steps, seed=seed)
    return model.group_sets(parts)


def random_partition(sets: list[MixedPartSet], seed: int) -> list:
    """The chance floor: every part put in one of the true number of groups at random."""
    rng = np.random.default_rng(seed)
    out = []
    for s in sets:
        labels = rng.integers(len(s.gt_groups), size=len(s))
        out.append([np.flatnonzero(labels == k).tolist() for k in np.unique(labels)])
    return out


@torch.no_grad()
def dsm_diagnostic(model: GFARS, sets: list[MixedPartSet], stds, repeats: int,
                   seed: int) -> dict:
    """Mean per-set DSM loss (G8) at fixed sigma_t of the learned score, the per-node Bayes
    score (B1, prior 1/N) and the exact mixture score (G9), on the same draws."""
    model.eval()
    parts, groups, mask = (torch.from_numpy(a) for a in pad_sets(sets))
    emb = model.encode(parts, mask)
    n_groups = groups.masked_fill(~mask, -1).amax(1) + 1
    labels = torch.arange(int(n_groups.max()))
    targets = (groups[:, None, :] == labels[None, :, None]).float()
    gen = torch.Generator().manual_seed(seed)
    out = {"std": list(stds), "learned": [], "per_node": [], "oracle": []}
    for s in stds:
        t = torch.full((len(sets),), time_of_std(s, model.cfg.sigma))
        std = marginal_std(t, model.cfg.sigma)
        acc = {"learned": 0.0, "per_node": 0.0, "oracle": 0.0}
        for _ in range(repeats):
            x0 = random_targets(groups, mask, gen)
            z = torch.randn(x0.shape, generator=gen) * mask
            x = (x0 + std[:, None] * z) * mask
            scores = {
                "learned": model.score(x, t, emb, mask),
                "per_node": per_node_bayes_score(x, std, 1.0 / n_groups.float()) * mask,
                "oracle": oracle_score(x, std, targets, labels[None] < n_groups[:, None]) * mask,
            }
            for k, sc in scores.items():
                acc[k] += dsm_loss(sc, z, std, mask).item() / repeats
        for k in acc:
            out[k].append(acc[k])
    return out


def noise_removal(model, sets: list[MixedPartSet], clean_strict_p: float, seed: int,
                  steps: int) -> dict:
    preds = _group(model, sets, seed, steps=steps)
    noise_total = rejected = 0
    for s, pred in zip(sets, preds, strict=True):
        assigned = {i for g in pred for i in g}
        noise = np.flatnonzero(s.groups == -1)
        noise_total += len(noise)
        rejected += sum(int(i) not in assigned for i in noise)
    strict = _score(preds, sets)["strict"]
    return {"rejection": rejected / max(noise_total, 1), "strict_precision": strict["precision"],
            "precision_drop": clean_strict_p - strict["precision"]}


def load_method(method: str, seed: int, directory: Path = CHECKPOINTS) -> torch.nn.Module:
    ck = load_checkpoint(directory / f"{method}_seed{seed}.safetensors", GFARSConfig)
    model = build_method(method, BASE)
    if ck.config != model.cfg:
        raise ValueError(f"checkpoint {method}_seed{seed} was trained with another config")
    model.load_state_dict(ck.tensors)
    return model.eval()


def train_method(method: str, seed: int, directory: Path, steps: int, base=BASE, log=None,
                 data=None):
    """Train one method from scratch (or resume its state file) and save its checkpoint."""
    model = build_method(method, base)
    t0 = time.perf_counter()
    curve = train(model, steps, seed=seed, data=data, log=log,
                  state_path=directory / f"{method}_seed{seed}.state.pt")
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        save_method(directory / f"{method}_seed{seed}.safetensors", model, method, seed, steps,
                    curve, {"train_s": time.perf_counter() - t0})
    return model.eval()


def evaluate_seed(seed: int, models: dict, sz: dict, log=print) -> dict:
    test = procedural_mixes(sz["n_test"], 10_000 + seed, n_points=BASE.points_per_part)
    rng = np.random.default_rng(20_000 + seed)
    noisy = [procedural_mix(np.random.default_rng([20_000 + seed, i]), n_points=BASE.points_per_part,
                            noise_parts=int(rng.integers(1, 3))) for i in range(sz["n_noise"])]
    res = {"oracle": _score([oracle_grouping(s.parts) for s in test], test),
           "random": _score(random_partition(test, seed), test), "methods": {}, "pc_sub": {},
           "em": {}, "em_steps": {}, "noise": {}, "diag": {}}
    sub = test[: sz["n_em"]]
    for method, model in models.items():
        t0 = time.perf_counter()
        preds = _group(model, test, seed, steps=sz["pc"])
        res["methods"][method] = _score(preds, test)
        res["methods"][method]["eval_s"] = time.perf_counter() - t0
        if method in VARIANTS:
            res["pc_sub"][method] = _score(preds[: len(sub)], sub)
        log(f"seed {seed} {method}: strict F1 {res['methods'][method]['strict']['f1']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    for v in VARIANTS:
        model = models[v]
        res["em"][v] = _score(_group(model, sub, seed, "em", sz["em"]), sub)
        res["em_steps"][v] = _score(_group(model, sub, seed, "em", sz["pc"]), sub)
        res["noise"][v] = noise_removal(model, noisy, res["methods"][v]["strict"]["precision"],
                                        seed, sz["pc"])
        for m in (v, ABLATION[v]):
            res["diag"][m] = dsm_diagnostic(models[m], test, DIAG_STDS, sz["diag"], seed)
        log(f"seed {seed} {v}: EM-{sz['em']} strict F1 {res['em'][v]['strict']['f1']:.3f}, "
            f"noise rejection {res['noise'][v]['rejection']:.2f}")
    return res


def _cached_eval(out_dir: Path, seed: int, models: dict, sz: dict, size: str) -> dict:
    """``evaluate_seed``, reusing ``out_dir/eval_seed<k>.json`` when it was computed with
    the same weights (hash of every state dict) and the same sizes."""
    digest = hashlib.sha256()
    for m in sorted(models):
        for k, v in sorted(models[m].state_dict().items()):
            digest.update(f"{m}.{k}".encode())
            digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    key = {"weights": digest.hexdigest(), "sizes": sz, "size": size}
    path = out_dir / f"eval_seed{seed}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["result"]
    res = evaluate_seed(seed, models, sz)
    with atomic_write(path) as f:
        json.dump({"key": key, "result": res}, f)
    return res


def _f1(per_seed, method, mode="strict", key="methods"):
    return np.array([r[key][method][mode]["f1"] for r in per_seed])


def build_claims(per_seed: list[dict]) -> list[Claim]:
    oracle = np.array([r["oracle"]["strict"]["f1"] for r in per_seed])
    claims = []
    if (oracle < ORACLE_MIN).any():
        reason = (f"validity gate failed: oracle strict F1 {oracle.round(3).tolist()} < "
                  f"{ORACLE_MIN} in some seed, so grouping is not knowable from these mixes")
        for label in VARIANTS.values():
            for c in CLAIMS:
                claims.append(Claim.not_tested(f"{c[0]} [{label}]", c, reason=reason,
                                               paper_value="paper table not transcribed"))
        return claims
    for v, label in VARIANTS.items():
        f1 = _f1(per_seed, v)
        claims.append(Claim.compare(
            f"A [{label}]", CLAIMS[0], f1 - _f1(per_seed, "wo_gf"), ">=", GAP_A,
            statistic="all", reason="strict-F1 gap over w/o GF in every seed; a mode-averaging "
            "regressor (about 1/N per part) cannot emit clean groups",
            paper_value="paper table not transcribed",
            notes=f"G-FARS strict F1 per seed {f1.round(3).tolist()}, w/o GF "
                  f"{_f1(per_seed, 'wo_gf').round(3).tolist()}"))
        abl = ABLATION[v]
        gap = f1 - _f1(per_seed, abl)
        ratio = np.array([np.mean(r["diag"][v]["learned"]) / np.mean(r["diag"][v]["per_node"])
                          for r in per_seed])
        ok = bool((gap >= GAP_B).all() and (ratio <= BAYES_MARGIN).all())
        claims.append(Claim.verdict(
            f"B [{label}]", CLAIMS[1], ok,
            criterion=f"strict-F1 gap over {abl} >= {GAP_B} in every seed (~3 seed s.d.) AND "
                      f"learned DSM loss at sigma_t in {DIAG_STDS} <= {BAYES_MARGIN} x the "
                      "per-node Bayes loss in every seed (the net must use other parts)",
            comparison=f"gaps {gap.round(3).tolist()}; loss ratio learned/per-node "
                       f"{ratio.round(3).tolist()}",
            measured=Measurement.of(gap), paper_value="paper table not transcribed"))
        comp, floor = _f1(per_seed, "compnet"), np.array([r["random"]["strict"]["f1"] for r in per_seed])
        if (comp - floor < FLOOR_MARGIN).any():
            claims.append(Claim.not_tested(
                f"C [{label}]", CLAIMS[2], reason=f"Comp-Net strict F1 {comp.round(3).tolist()} "
                f"does not beat the random floor {floor.round(3).tolist()} by {FLOOR_MARGIN}"))
        else:
            p = float(ttest_ind(f1, comp, equal_var=False, alternative="greater").pvalue) \
                if len(f1) > 1 else float("nan")
            claims.append(Claim.compare(
                f"C [{label}]", CLAIMS[2], f1 - comp, ">", 0.0, statistic="mean",
                reason="mean strict F1 above Comp-Net 4a; ungated margin, one-sided Welch p "
                       "reported", paper_value="paper table not transcribed",
                notes=f"G-FARS {f1.round(3).tolist()}, Comp-Net 4a {comp.round(3).tolist()}, "
                      f"Welch p = {p:.3g}; groups/set G-FARS "
                      f"{[round(r['methods'][v]['strict']['groups_per_set'], 2) for r in per_seed]}"
                      f", Comp-Net {[round(r['methods']['compnet']['strict']['groups_per_set'], 2) for r in per_seed]}"
                      f"; official precision Comp-Net "
                      f"{[round(r['methods']['compnet']['official']['precision'], 3) for r in per_seed]}"))
        pc = _f1(per_seed, v, key="pc_sub")
        em = _f1(per_seed, v, key="em")
        em_same = _f1(per_seed, v, key="em_steps")
        claims.append(Claim.compare(
            f"D [{label}]", CLAIMS[3], pc - em, ">=", -PC_EM_TOL, statistic="mean",
            reason="PC-100 vs EM-200 (equal network evaluations) on the same test mixes; "
                   "tolerance = binomial s.e.", paper_value="paper table not transcribed",
            notes=f"PC-100 {pc.round(3).tolist()}, EM-200 {em.round(3).tolist()}, EM-100 "
                  f"(equal steps) {em_same.round(3).tolist()}"))
        rej = np.array([r["noise"][v]["rejection"] for r in per_seed])
        drop = np.array([r["noise"][v]["precision_drop"] for r in per_seed])
        ok = bool(rej.mean() >= NOISE_REJECT and drop.mean() <= NOISE_P_DROP)
        claims.append(Claim.verdict(
            f"E [{label}]", CLAIMS[4], ok,
            criterion=f"mean noise-part rejection >= {NOISE_REJECT} and strict-precision drop "
                      f"<= {NOISE_P_DROP} (exploratory in quick mode)",
            comparison=f"rejection {rej.round(3).tolist()}, precision drop {drop.round(3).tolist()}",
            measured=Measurement.of(rej), paper_value="paper table not transcribed"))
    return claims


def _figures(out_dir: Path, per_seed: list[dict], models: dict, seed: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["gfars", "gfars_ef", "wo_gnn", "wo_gnn_ef", "wo_gf", "compnet"]
    figs = []
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for k, mode in enumerate(("strict", "official")):
        vals = np.array([[r["methods"][m][mode]["f1"] for m in names] for r in per_seed])
        ax.bar(np.arange(len(names)) + 0.4 * k, vals.mean(0), 0.4, yerr=vals.std(0),
               label=f"{mode} micro-F1")
    oracle = np.mean([r["oracle"]["strict"]["f1"] for r in per_seed])
    ax.axhline(oracle, ls="--", c="k", lw=1, label="oracle (strict)")
    ax.set_xticks(np.arange(len(names)) + 0.2, names)
    ax.set_ylabel("F1 (mean ± s.d. over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / "f1_bars.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    figs.append("f1_bars.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for v, c in (("gfars", "C0"), ("gfars_ef", "C1"), (ABLATION["gfars"], "C2")):
        d = np.array([[np.array(r["diag"][v][k]) for k in ("learned", "per_node", "oracle")]
                      for r in per_seed]).mean(0)
        ax.plot(DIAG_STDS, d[0], "o-", c=c, label=f"{v} learned")
        if v == "gfars":
            ax.plot(DIAG_STDS, d[1], "k--", label="per-node Bayes (B1)")
            ax.plot(DIAG_STDS, d[2], "k:", label="exact mixture (G9)")
    ax.set_xlabel("sigma_t")
    ax.set_ylabel("DSM loss per set (G8)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / "dsm_vs_bayes.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    figs.append("dsm_vs_bayes.png")

    s = procedural_mixes(1, 10_000 + seed, n_points=BASE.points_per_part)[0]
    model = models["gfars_ef"]
    parts, mask = torch.from_numpy(s.parts)[None], torch.ones(1, len(s), dtype=torch.bool)
    with torch.no_grad():
        emb = model.encode(parts, mask)
        traj: list[torch.Tensor] = []
        sample_selection(lambda x, t: model.score(x, t, emb, mask), mask, model.cfg.sigma, "pc",
                         100, generator=torch.Generator().manual_seed(seed), trajectory=traj)
    xs = torch.stack(traj)[:, 0].numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ts = np.linspace(1, model.cfg.eps_sample, len(xs))
    for i in range(len(s)):
        ax.plot(ts, xs[:, i], c=f"C{s.groups[i] % 10}", lw=1)
    ax.set_ylim(-1.5, 2.5)
    ax.invert_xaxis()
    ax.set_xlabel("t")
    ax.set_ylabel("x_mean(t), coloured by GT group")
    ax.set_title("G-FARS-ef: one PC-100 draw")
    fig.tight_layout()
    with atomic_path(out_dir / "trajectories.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    figs.append("trajectories.png")

    from cvpr24.gfars.render import render_groups

    pred = group_sets(model, [s.parts], seed=seed)[0]
    render_groups(s.parts, [s.gt_groups, pred], ["ground truth", "G-FARS-ef"],
                  out_dir / "mix_groups.png")
    figs.append("mix_groups.png")
    return figs


def run(out_dir: Path, quick: bool = True, seeds: int | None = None,
        size: str | None = None) -> Result:
    """The reproduction. ``size``: "quick" (default with ``quick``), "standard" (the
    committed checkpoints at the size the docs report), "full" (retrain every method; the
    default without ``quick``) or "tiny" (untrained pipeline check for the tests)."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = size or ("quick" if quick else "full")
    sz = SIZES[size]
    seed_list = list(range(seeds if seeds is not None else sz["seeds"]))
    torch_threads = torch.get_num_threads()
    notes = []
    from_checkpoints = size in ("quick", "standard")
    if from_checkpoints:
        missing = [k for k in seed_list if not all(
            (CHECKPOINTS / f"{m}_seed{k}.safetensors").is_file() for m in STEPS)]
        seed_list = [k for k in seed_list if k not in missing]
        if missing:
            notes.append(f"seeds {missing} have no committed checkpoints (not trained in the "
                         "time available); quick mode evaluated the other seeds only")
        if not seed_list:
            raise FileNotFoundError(f"no complete set of checkpoints in {CHECKPOINTS}; run "
                                    "'cvpr24 train gfars' or 'cvpr24 reproduce gfars --full'")
    try:
        per_seed = []
        for seed in seed_list:
            if size == "tiny":
                tiny = replace(BASE, feat_len=8, batch_size=4)
                models = {m: _tiny_model(m, tiny, seed) for m in STEPS}
            elif from_checkpoints:
                models = {m: load_method(m, seed) for m in STEPS}
            else:
                models = {m: train_method(m, seed, out_dir / "checkpoints", STEPS[m], log=print)
                          for m in STEPS}
            per_seed.append(_cached_eval(out_dir, seed, models, sz, size))
        if from_checkpoints:
            smoke = train(build_method("gfars_ef", BASE), 200, seed=0, log_every=50)
            notes.append(f"smoke retrain, G-FARS-ef 200 steps from scratch: loss "
                         f"{smoke[0][1]:.3f} -> {smoke[-1][1]:.3f}")
        claims = build_claims(per_seed)
        figures = _figures(out_dir, per_seed, models, seed_list[-1])
        with atomic_write(out_dir / "per_seed.json") as f:
            json.dump(per_seed, f, indent=1)
    finally:
        torch.set_num_threads(torch_threads)
    mode = {"tiny": "tiny (pipeline check, untrained)",
            "quick": "quick: evaluated the committed checkpoints (12 test mixes per seed)",
            "standard": "standard: evaluated the committed checkpoints (32 test mixes per seed)",
            "full": "full: retrained"}[size]
    return Result("gfars", claims=claims, mode=mode, seeds=seed_list,
                  wall_time_s=time.perf_counter() - t_start, figures=figures,
                  deviations=DEVIATIONS + notes)


def _tiny_model(method: str, cfg: GFARSConfig, seed: int):
    model = build_method(method, cfg)
    train(model, 3, seed=seed, batch_size=4, log_every=1)
    return model.eval()


DEVIATIONS = [
    "Encoder: 6 geometric descriptors (log extent, log s.d. per axis) through a 3-layer MLP "
    "instead of PointNet, for every method (PointNet is implemented and is the default).",
    "Data: procedural cuboid chairs/tables whose legs share (H, T) with the back or side "
    "panels (the leg-to-body link of the first generator existed only with a stretcher); "
    "per dimension, the shapes of a mix differ by >= 20 % (log-uniform draws).",
    "Scale: F = 64, batch 16, 600 Adam steps per method (w/o GF 300) on fresh mixes per step, "
    "PC-100 with at most 8 AR iterations (paper: F = 256, 3000 epochs of PartNet, PC-500, 15).",
    "w/o GNN: per-node MLPs of the same widths; w/o GF: the same net with x = 0, t = 1 held "
    "constant, BCE to a random target group (our readings of the ablations).",
    "Comp-Net 4a is our reconstruction; 4b (GNN context) and GRU-Mask are implemented or "
    "listed but not trained in this reproduction.",
    "G-FARS-ef is an extension (|e_i - e_j| edge input, mean aggregation, sigma = 5, scaled "
    "x); its w/o-GNN ablation uses the same sigma and scaling.",
]

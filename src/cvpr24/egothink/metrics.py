"""Scores: per-dimension x100 (E5), coverage (E6), the macro Average (E7),
capability means (E8), bootstrap intervals, a paired test, judge agreement and the
leaderboard table.

Notation: ``s[m, i]`` in {0, 0.5, 1} is the parsed rating of model m on item i, and
``V[m, d]`` the validly judged items of dimension d.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from cvpr24.egothink.config import BY_KEY, DIM_KEYS, DIMENSIONS, FAILED_MODES, check_dims
from cvpr24.egothink.prompts import Provenance

# ----------------------------------------------------------------------------- published table

#: The 18 recoverable rows of the paper's leaderboard: Average, then 12 dimensions in
#: leaderboard order. InstructBLIP-11B's printed Average (51.1) disagrees with its cells (51.46).
PUBLISHED: dict[str, tuple[float, tuple[float, ...]]] = {
    "GPT-4V(ision)": (65.5, (62, 82, 58, 59.5, 86, 62, 42, 48, 83, 55, 64, 84)),
    "OpenFlamingo-7B": (27.2, (16, 55, 37, 15, 34, 34, 21, 40, 21, 31, 11, 11)),
    "BLIP-2-6.7B": (28.1, (49, 29, 39, 33.5, 60, 31, 3, 21, 33, 25, 8, 6)),
    "LLaVA-1.5-7B": (39.0, (33, 47, 54, 35.5, 35, 49, 20, 47, 37, 27, 29, 54)),
    "MiniGPT-4-7B": (40.6, (50, 56, 46, 39, 55, 49, 14, 48, 31, 41.5, 14, 44)),
    "InstructBLIP-7B": (42.4, (50, 33, 45, 47.5, 77, 38, 18, 43, 67, 40.5, 19, 31)),
    "LLaMA-Adapter-7B": (42.5, (37, 60, 46, 34.5, 48, 51, 29, 39, 25, 41.5, 42, 57)),
    "Otter-I-7B": (45.3, (48, 56, 39, 44, 60, 44, 39, 48, 42, 38, 31, 55)),
    "PandaGPT-7B": (46.2, (40, 56, 41, 37, 61, 52, 19, 52, 53, 43, 39, 61)),
    "mPLUG-owl-7B": (48.8, (56, 58, 47, 53, 60, 53, 25, 49, 44, 49.5, 33, 58)),
    "LLaVA-7B": (49.6, (63, 58, 50, 47, 81, 45, 24, 36, 47, 49.5, 35, 60)),
    "InstructBLIP-13B": (42.8, (52, 55, 49, 54, 63, 49, 11, 33, 59, 44, 19, 25)),
    "PandaGPT-13B": (43.1, (35, 52, 41, 40.5, 68, 31, 32, 40, 47, 45.5, 16, 69)),
    "LLaVA-13B-Vicuna": (46.4, (54, 62, 52, 46, 53, 46, 26, 44, 29, 44, 35, 66)),
    "BLIP-2-11B": (49.6, (52, 62, 41, 49.5, 90, 66, 25, 50, 70, 48, 18, 24)),
    "InstructBLIP-11B": (51.1, (74, 68, 48, 49.5, 86, 52, 32, 49, 73, 53, 16, 17)),
    "LLaVA-13B-Llama2": (55.1, (65, 61, 45, 56, 77, 53, 34, 34, 66, 50.5, 49, 71)),
    "LLaVA-1.5-13B": (55.3, (66, 55, 51, 55, 82, 57, 32, 56, 67, 48.5, 39, 55)),
}


def round_half_up(x: float, ndigits: int = 1) -> float:
    """Round half away from zero in decimal (42.75 -> 42.8), not banker's/binary ``round``."""
    q = Decimal(1).scaleb(-ndigits)
    return float(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


# ----------------------------------------------------------------------------- scores

def dimension_score(scores: Sequence[float], n_items: int | None = None, *, failed: str = "drop",
                    scale: float = 100.0) -> tuple[float, float]:
    """(E5, E6) The score of one dimension and its coverage.

    Parameters
    ----------
    scores : sequence of float
        Ratings of the judged items; -1 marks a failed judgment.
    n_items : int, optional
        Items in the dimension (``N_d``); items without any row count as failed.
    failed : {"drop", "zero", "minus_one"}
        ``drop`` (official): mean over valid items only; ``zero``: failures count 0
        (FlagEvalMM); ``minus_one``: failures are averaged in as -1 (lmms-eval).

    Returns
    -------
    score, coverage : float
        ``scale * mean`` (NaN when nothing is valid under ``drop``) and ``|V| / N``.

    Examples
    --------
    >>> dimension_score([1] * 23 + [0.5] * 9 + [0] * 18)
    (55.0, 1.0)
    """
    if failed not in FAILED_MODES:
        raise ValueError(f"failed must be one of {FAILED_MODES}, got {failed!r}")
    s = np.asarray(scores, dtype=float)
    n = len(s) if n_items is None else int(n_items)
    if len(s) > n:
        raise ValueError(f"n_items={n} is smaller than the {len(s)} scores given")
    valid = s[s != -1]
    coverage = len(valid) / n if n else float("nan")
    n_failed = n - len(valid)
    if failed == "drop":
        total, denom = valid.sum(), len(valid)
    elif failed == "zero":
        total, denom = valid.sum(), n
    else:
        total, denom = valid.sum() - n_failed, n
    return (float(scale * total / denom) if denom else float("nan")), float(coverage)


def macro_average(dim_scores: Mapping[str, float] | Sequence[float]) -> float:
    """(E7) Unweighted mean over dimensions: the leaderboard's Average."""
    vals = list(dim_scores.values()) if isinstance(dim_scores, Mapping) else list(dim_scores)
    return float(np.mean(vals)) if vals else float("nan")


def micro_average(per_dim: Mapping[str, Sequence[float]]) -> float:
    """The item-weighted mean (not what the paper reports; shown for contrast)."""
    vals = [v for d in per_dim.values() for v in d if v != -1]
    return 100.0 * float(np.mean(vals))


def capability_scores(dim_scores: Mapping[str, float]) -> dict[str, float]:
    """(E8, ours) Mean of each capability's dimensions."""
    caps: dict[str, list[float]] = {}
    for d, v in dim_scores.items():
        caps.setdefault(BY_KEY[d].capability, []).append(v)
    return {c: float(np.mean(v)) for c, v in caps.items()}


@dataclass
class ModelScores:
    """One model's row: per-dimension scores (x100), coverages and the macro Average."""

    model: str
    dims: dict[str, float]
    coverage: dict[str, float]
    judge: str = ""

    @property
    def average(self) -> float:
        return macro_average(self.dims)

    @property
    def overall_coverage(self) -> float:
        n = sum(BY_KEY[d].n_items for d in self.coverage)
        return sum(c * BY_KEY[d].n_items for d, c in self.coverage.items()) / n if n else float("nan")


def score_model(item_scores: Mapping[str, Mapping[int, float]], n_items: Mapping[str, int], *,
                model: str = "", judge: str = "", failed: str = "drop", scale: float = 100.0) -> ModelScores:
    """Per-dimension scores of one model from ``{dim: {question_id: rating}}``."""
    dims, cov = {}, {}
    for d in n_items:
        dims[d], cov[d] = dimension_score(list(item_scores.get(d, {}).values()), n_items[d],
                                          failed=failed, scale=scale)
    return ModelScores(model, dims, cov, judge)


def load_item_scores(answers_root: str | os.PathLike, judge_name: str,
                     dims: Sequence[str] | None = None) -> tuple[dict[str, dict[str, dict[int, float]]], dict[str, int]]:
    """Read judgment files: ``({model: {dim: {question_id: score}}}, {dim: N_d})``.

    Raises ``ValueError`` when the rows were graded under more than one provenance (judge
    prompt name or hash, or rating rule): such scores must not be averaged together.
    """
    scores, n_items, _ = read_judgments(answers_root, judge_name, dims)
    return scores, n_items


def judgment_provenance(answers_root: str | os.PathLike, judge_name: str,
                        dims: Sequence[str] | None = None) -> Provenance:
    """The one provenance (prompt name, prompt hash, rating rule) of a judge's rows; raises
    ``ValueError`` when they mix several."""
    return read_judgments(answers_root, judge_name, dims)[2]


def read_judgments(answers_root: str | os.PathLike, judge_name: str, dims: Sequence[str] | None = None
                   ) -> tuple[dict[str, dict[str, dict[int, float]]], dict[str, int], Provenance]:
    """:func:`load_item_scores` plus the rows' single :class:`Provenance`."""
    from cvpr24.egothink.data import answer_dims, read_jsonl, read_questions
    from cvpr24.egothink.judge import judgment_path

    root = Path(answers_root)
    dims = check_dims(dims) if dims is not None else answer_dims(root)
    if not dims:
        raise ValueError(f"answers_root: {root} has no <dimension>/question.jsonl")
    scores: dict[str, dict[str, dict[int, float]]] = {}
    n_items = {}
    seen: dict[Provenance, set[tuple[str, str]]] = {}
    for d in dims:
        n_items[d] = len(read_questions(root, d))
        path = judgment_path(root, d, judge_name)
        if not path.is_file():
            continue
        for r in read_jsonl(path):
            scores.setdefault(r["model"], {}).setdefault(d, {})[r["question_id"]] = float(r["score"])
            seen.setdefault(Provenance.of_row(r), set()).add((r["model"], d))
    if not scores:
        found = sorted({p.name.removesuffix("_single.jsonl") for d in dims
                        for p in judgment_path(root, d, "x").parent.glob("*_single.jsonl")})
        raise FileNotFoundError(f"no judgment files '{judge_name}_single.jsonl' under {root}; judges found: "
                                f"{found or 'none (run judge first)'}")
    if len(seen) > 1:
        parts = "; ".join(f"{p.describe()}: {len(where)} (model, dimension) pair(s), e.g. "
                          f"{sorted(where)[0][0]}/{sorted(where)[0][1]}" for p, where in seen.items())
        raise ValueError(f"judge {judge_name!r}: the judgments under {root} were graded under {len(seen)} "
                         f"different prompts or rating rules, which must not be mixed in one score ({parts}). "
                         "Run 'judge' again with one prompt set (it re-judges the rows graded otherwise)")
    return scores, n_items, next(iter(seen))


# ----------------------------------------------------------------------------- uncertainty

def _stack(item_scores: Mapping[str, Mapping[int, float]], dims: Sequence[str]) -> list[np.ndarray]:
    return [np.array([v for v in item_scores.get(d, {}).values() if v != -1], dtype=float) for d in dims]


def bootstrap_ci(item_scores: Mapping[str, Mapping[int, float]], dims: Sequence[str] | None = None, *,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 scale: float = 100.0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for each dimension and the macro Average.

    Items are resampled with replacement *within* each dimension (stratified, as the macro
    mean is a mean of per-dimension means). Failed judgments are excluded, as in E5.
    """
    dims = list(dims or item_scores.keys())
    rng = np.random.default_rng(seed)
    arrays = _stack(item_scores, dims)
    boots = np.empty((n_boot, len(dims)))
    for j, a in enumerate(arrays):
        if len(a) == 0:
            boots[:, j] = np.nan
            continue
        idx = rng.integers(0, len(a), size=(n_boot, len(a)))
        boots[:, j] = scale * a[idx].mean(axis=1)
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    out = {d: (float(np.percentile(boots[:, j], lo)), float(np.percentile(boots[:, j], hi)))
           for j, d in enumerate(dims)}
    macro = boots.mean(axis=1)
    out["average"] = (float(np.percentile(macro, lo)), float(np.percentile(macro, hi)))
    return out


def paired_test(a: Mapping[str, Mapping[int, float]], b: Mapping[str, Mapping[int, float]],
                dims: Sequence[str] | None = None, *, n_perm: int = 10000, seed: int = 0,
                scale: float = 100.0) -> dict[str, float]:
    """Paired sign-flip permutation test of the macro-Average difference between two models.

    Only items validly judged for both models enter. Under H0 (the two models are
    exchangeable on every item), each per-item difference keeps its size and flips its sign
    with probability 1/2; the statistic is the macro mean of per-dimension mean differences.

    Returns
    -------
    dict
        ``diff`` (A - B, in points), ``p_value`` (two-sided, with the +1 correction) and
        ``n_items`` paired.
    """
    dims = list(dims or sorted(set(a) & set(b), key=DIM_KEYS.index))
    diffs = []
    for d in dims:
        common = sorted(q for q in set(a.get(d, {})) & set(b.get(d, {}))
                        if a[d][q] != -1 and b[d][q] != -1)
        diffs.append(np.array([a[d][q] - b[d][q] for q in common], dtype=float))
    diffs = [x for x in diffs if len(x)]
    if not diffs:
        raise ValueError("paired_test: the two models share no validly judged items")
    observed = scale * float(np.mean([x.mean() for x in diffs]))
    rng = np.random.default_rng(seed)
    perm = np.zeros(n_perm)
    for x in diffs:
        signs = rng.choice((-1.0, 1.0), size=(n_perm, len(x)))
        perm += (signs * x).mean(axis=1)
    perm *= scale / len(diffs)
    p = (1 + np.sum(np.abs(perm) >= abs(observed) - 1e-12)) / (n_perm + 1)
    return {"diff": observed, "p_value": float(p), "n_items": int(sum(len(x) for x in diffs))}


# ----------------------------------------------------------------------------- agreement

def cohen_kappa(a: np.ndarray, b: np.ndarray, weights: str | None = None, n_labels: int = 3) -> float:
    """Cohen's kappa of two integer label arrays in ``[0, n_labels)``; ``weights="quadratic"``
    weighs a disagreement by its squared distance on the ordinal scale (as scikit-learn).
    Two raters who agree perfectly get 1 even when only one label occurs."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    conf = np.zeros((n_labels, n_labels))
    np.add.at(conf, (a, b), 1)
    expected = np.outer(conf.sum(1), conf.sum(0)) / conf.sum()
    idx = np.arange(n_labels)
    w = (1.0 - np.eye(n_labels)) if weights is None else (idx[:, None] - idx[None, :]) ** 2.0
    if weights not in (None, "quadratic"):
        raise ValueError(f"weights must be None or 'quadratic', got {weights!r}")
    denom = (w * expected).sum()
    if denom == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(1.0 - (w * conf).sum() / denom)


def agreement(judge_scores: Mapping[tuple[str, int] | str, float], human_scores: Mapping, *,
              n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Judge-vs-human agreement on the items both have rated.

    Parameters
    ----------
    judge_scores, human_scores : mapping
        ``{item_key: rating}`` with ratings in {0, 0.5, 1}; keys are any hashable, e.g.
        ``(model, dim, question_id)``. When the first element of a key is a model id and more
        than one model is present, model-level correlations are computed too.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``kappa``, ``kappa_quadratic`` (Cohen's kappa on labels x2) and its
        bootstrap 95% interval; with >= 3 models: ``pearson``, ``spearman`` of model means and
        ``kendall_tau`` of their rankings.
    """
    from scipy import stats

    keys = [k for k in judge_scores if k in human_scores and judge_scores[k] != -1]
    if not keys:
        raise ValueError("agreement: no item is rated by both the judge and the humans")
    j = np.array([judge_scores[k] for k in keys], dtype=float)
    h = np.array([human_scores[k] for k in keys], dtype=float)
    bad = set(np.unique(np.concatenate([j, h]))) - {0.0, 0.5, 1.0}
    if bad:
        raise ValueError(f"agreement: ratings must be in {{0, 0.5, 1}}, got {sorted(bad)}")
    ji, hi = (2 * j).astype(int), (2 * h).astype(int)
    out = {"n": len(keys), "accuracy": float(np.mean(ji == hi)), "kappa": cohen_kappa(ji, hi),
           "kappa_quadratic": cohen_kappa(ji, hi, "quadratic")}
    rng = np.random.default_rng(seed)
    boots = [cohen_kappa(ji[idx], hi[idx], "quadratic") for idx in rng.integers(0, len(keys), size=(n_boot, len(keys)))]
    out["kappa_quadratic_ci"] = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
    if all(isinstance(k, tuple) for k in keys):
        models = sorted({k[0] for k in keys})
        if len(models) >= 3:
            mj = [np.mean([judge_scores[k] for k in keys if k[0] == m]) for m in models]
            mh = [np.mean([human_scores[k] for k in keys if k[0] == m]) for m in models]
            out["pearson"] = float(stats.pearsonr(mj, mh)[0])
            out["spearman"] = float(stats.spearmanr(mj, mh)[0])
            out["kendall_tau"] = float(stats.kendalltau(mj, mh)[0])
    return out


# ----------------------------------------------------------------------------- leaderboard

@dataclass
class Leaderboard:
    """Rows of :class:`ModelScores` in a chosen order, exportable as the paper's table.

    Columns are ``Average`` then the 12 leaderboard headers. Values are rounded half-up to
    ``decimals``; in markdown and HTML the best value of each column is bold and the second
    best underlined.
    """

    rows: list[ModelScores]
    judge: str = ""
    decimals: int = 1
    dims: tuple[str, ...] = field(default=DIM_KEYS)
    provenance: str = ""  # the judge prompt and rating rule that graded every row

    @classmethod
    def from_answers(cls, answers_root: str | os.PathLike, judge_name: str, *,
                     order: Sequence[str] | None = None, failed: str | None = None,
                     dims: Sequence[str] | None = None, config=None) -> Leaderboard:
        """Score every model judged by ``judge_name`` in an answers folder.

        ``failed`` and the score scale default to ``config`` (an ``EgoThinkConfig``; the
        official rule, failures dropped, x100, when not given).
        """
        from cvpr24.egothink.config import EgoThinkConfig

        cfg = (config or EgoThinkConfig()).validate()
        failed = failed or cfg.failed
        scores, n_items, prov = read_judgments(answers_root, judge_name, dims)
        models = list(order) if order else sorted(scores)
        unknown = [m for m in models if m not in scores]
        if unknown:
            raise ValueError(f"order: model(s) {unknown} have no judgments (have {sorted(scores)})")
        rows = [score_model(scores[m], n_items, model=m, judge=judge_name, failed=failed, scale=cfg.score_scale)
                for m in models]
        return cls(rows, judge_name, dims=tuple(n_items), provenance=prov.describe())

    def columns(self) -> list[str]:
        return ["Average"] + [BY_KEY[d].column for d in self.dims]

    def values(self, row: ModelScores) -> list[float]:
        return [row.average] + [row.dims[d] for d in self.dims]

    def _fmt(self, x: float) -> str:
        return "nan" if math.isnan(x) else f"{round_half_up(x, self.decimals):.{self.decimals}f}"

    def _ranks(self) -> list[tuple[float | None, float | None]]:
        out = []
        for j in range(len(self.columns())):
            vals = sorted({round_half_up(self.values(r)[j], self.decimals) for r in self.rows
                           if not math.isnan(self.values(r)[j])}, reverse=True)
            out.append((vals[0] if vals else None, vals[1] if len(vals) > 1 else None))
        return out

    def _cells(self, row: ModelScores, bold: tuple[str, str], under: tuple[str, str],
               ranks: list[tuple[float | None, float | None]]) -> list[str]:
        cells = []
        for j, x in enumerate(self.values(row)):
            s = self._fmt(x)
            best, second = ranks[j]
            r = None if math.isnan(x) else round_half_up(x, self.decimals)
            if r is not None and r == best:
                s = f"{bold[0]}{s}{bold[1]}"
            elif r is not None and r == second:
                s = f"{under[0]}{s}{under[1]}"
            cells.append(s)
        return cells

    def to_markdown(self) -> str:
        title = f"EgoThink scores (judge: {self.judge})" if self.judge else "EgoThink scores"
        head = ["Model", *self.columns(), "Coverage"]
        lines = [f"**{title}**", ""] + ([f"Graded with {self.provenance}.", ""] if self.provenance else [])
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ranks = self._ranks()
        for r in self.rows:
            cells = self._cells(r, ("**", "**"), ("<u>", "</u>"), ranks)
            lines.append("| " + " | ".join([r.model, *cells, f"{r.overall_coverage:.3f}"]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["model", "judge", *self.columns(), "coverage"])
        for r in self.rows:
            w.writerow([r.model, r.judge, *[self._fmt(x) for x in self.values(r)], f"{r.overall_coverage:.4f}"])
        return buf.getvalue()

    def to_json(self) -> str:
        return json.dumps({"judge": self.judge, "provenance": self.provenance, "columns": self.columns(), "rows": [
            {"model": r.model, "average": r.average, "dims": r.dims, "coverage": r.coverage,
             "overall_coverage": r.overall_coverage} for r in self.rows]}, indent=2)

    def to_html(self) -> str:
        """One ``<tr>`` per model, in the style of the project page's table body."""
        out, ranks = [], self._ranks()
        for r in self.rows:
            cells = self._cells(r, ("<b>", "</b>"), ("<u>", "</u>"), ranks)
            tds = "".join(f"<td>{c}</td>" for c in cells)
            out.append(f"<tr><td>{html.escape(r.model)}</td>{tds}</tr>")
        return "\n".join(out) + "\n"

    def render(self, fmt: str) -> str:
        fmts = {"md": self.to_markdown, "csv": self.to_csv, "json": self.to_json, "html": self.to_html}
        if fmt not in fmts:
            raise ValueError(f"format must be one of {sorted(fmts)}, got {fmt!r}")
        return fmts[fmt]()


def leaderboard(answers_root: str | os.PathLike, judge_name: str, order: Sequence[str] | None = None,
                failed: str | None = None) -> Leaderboard:
    """The leaderboard of every model judged by ``judge_name`` in an answers folder."""
    return Leaderboard.from_answers(answers_root, judge_name, order=order, failed=failed)


def published_leaderboard() -> Leaderboard:
    """The paper's 18 rows as a :class:`Leaderboard` (Averages recomputed by E7)."""
    rows = [ModelScores(m, dict(zip(DIM_KEYS, cells, strict=True)), {d: 1.0 for d in DIM_KEYS}, "gpt-4")
            for m, (_, cells) in PUBLISHED.items()]
    return Leaderboard(rows, "gpt-4 (published)")


def check_published_averages() -> dict[str, tuple[float, float, bool]]:
    """(C5) For each published row: (E7 of its cells rounded half-up, printed Average, equal?)."""
    out = {}
    for m, (avg, cells) in PUBLISHED.items():
        mine = round_half_up(macro_average(cells), 1)
        out[m] = (mine, avg, mine == avg)
    return out


__all__ = ["DIMENSIONS", "Leaderboard", "ModelScores", "PUBLISHED", "agreement", "bootstrap_ci",
           "capability_scores", "check_published_averages", "cohen_kappa", "dimension_score", "judgment_provenance",
           "leaderboard", "load_item_scores", "read_judgments",
           "macro_average", "micro_average", "paired_test", "published_leaderboard", "round_half_up",
           "score_model"]

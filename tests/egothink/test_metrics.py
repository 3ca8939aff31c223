import csv
import io
import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from cvpr24.egothink.config import DIM_KEYS, DIMENSIONS
from cvpr24.egothink.metrics import (
    PUBLISHED,
    Leaderboard,
    ModelScores,
    agreement,
    bootstrap_ci,
    capability_scores,
    check_published_averages,
    dimension_score,
    macro_average,
    micro_average,
    paired_test,
    published_leaderboard,
    round_half_up,
)


def test_dimension_score_closed_form():
    assert dimension_score([1] * 23 + [0.5] * 9 + [0] * 18) == (55.0, 1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):  # a full 100-item dimension is a multiple of 0.5, a 50-item one of 1.0
        s100 = dimension_score(rng.choice([0, 0.5, 1], 100))[0]
        s50 = dimension_score(rng.choice([0, 0.5, 1], 50))[0]
        assert round(s100 * 2, 9) % 1 == 0 and round(s50, 9) % 1 == 0
    with pytest.raises(ValueError, match="failed must be"):
        dimension_score([1], failed="ignore")


def test_macro_vs_micro_on_gpt4v():
    cells = PUBLISHED["GPT-4V(ision)"][1]
    assert macro_average(cells) == pytest.approx(65.4583, abs=1e-3)
    per_dim = {d.key: [c / 100] * d.n_items for d, c in zip(DIMENSIONS, cells, strict=True)}
    assert micro_average(per_dim) == pytest.approx(64.2857, abs=1e-3)


def test_c5_published_averages_half_up():
    checks = check_published_averages()
    assert [m for m, (_, _, ok) in checks.items() if not ok] == ["InstructBLIP-11B"]
    assert checks["InstructBLIP-11B"][:2] == (51.5, 51.1)
    assert round_half_up(42.75) == 42.8
    assert round(0.125, 2) == 0.12 and round_half_up(0.125, 2) == 0.13  # float round is half-even
    assert round(2.675, 2) == 2.67 and round_half_up(2.675, 2) == 2.68  # ...and binary
    assert round_half_up(0.05) == 0.1 and round_half_up(2.25) == 2.3 and round_half_up(-2.25) == -2.3
    assert checks["InstructBLIP-13B"] == (42.8, 42.8, True)  # exactly 42.75 in its cells


def test_capability_scores():
    caps = capability_scores(dict(zip(DIM_KEYS, PUBLISHED["LLaVA-7B"][1], strict=True)))
    assert caps["Planning"] == pytest.approx((35 + 60) / 2) and len(caps) == 6


def _scores(p, n=50, seed=0):
    rng = np.random.default_rng(seed)
    return {d: {q: float(rng.choice([0, 0.5, 1], p=p)) for q in range(1, n + 1)} for d in DIM_KEYS[:3]}


def test_bootstrap_ci_seeded_and_covers_point():
    s = _scores([0.3, 0.2, 0.5])
    a, b = bootstrap_ci(s, seed=1), bootstrap_ci(s, seed=1)
    assert a == b
    point = macro_average({d: 100 * np.mean(list(v.values())) for d, v in s.items()})
    lo, hi = a["average"]
    assert lo < point < hi and hi - lo < 20


def test_paired_test():
    a = _scores([0.1, 0.1, 0.8], seed=1)
    b = _scores([0.8, 0.1, 0.1], seed=2)
    strong = paired_test(a, b, n_perm=2000)
    assert strong["diff"] > 40 and strong["p_value"] < 0.01
    same = paired_test(a, a, n_perm=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="share no"):
        paired_test({"existence": {1: 1.0}}, {"existence": {2: 1.0}})


def test_agreement_matches_sklearn():
    rng = np.random.default_rng(0)
    keys = [(f"m{k % 4}", "existence", k) for k in range(200)]
    human = {k: float(rng.choice([0, 0.5, 1])) for k in keys}
    judge = {k: (v if rng.random() < 0.8 else float(rng.choice([0, 0.5, 1]))) for k, v in human.items()}
    out = agreement(judge, human)
    j = [int(2 * judge[k]) for k in keys]
    h = [int(2 * human[k]) for k in keys]
    assert out["kappa_quadratic"] == pytest.approx(cohen_kappa_score(j, h, weights="quadratic"))
    assert out["kappa"] == pytest.approx(cohen_kappa_score(j, h))
    assert out["accuracy"] == pytest.approx(np.mean(np.array(j) == np.array(h)))
    lo, hi = out["kappa_quadratic_ci"]
    assert lo <= out["kappa_quadratic"] <= hi
    assert {"pearson", "spearman", "kendall_tau"} <= set(out)
    assert agreement(human, human)["kappa_quadratic"] == 1.0
    with pytest.raises(ValueError, match="must be in"):
        agreement({("m", "e", 1): 0.7}, {("m", "e", 1): 1.0})


def test_leaderboard_exports():
    board = published_leaderboard()
    md = board.to_markdown()
    assert "| GPT-4V(ision) | **65.5** |" in md  # best Average bold
    assert "<u>55.3</u>" in md  # second best underlined
    rows = list(csv.reader(io.StringIO(board.to_csv())))
    assert rows[0][2:4] == ["Average", "Exist"] and len(rows) == 19
    assert rows[17][0] == "LLaVA-13B-Llama2" and rows[17][2] == "55.1"
    data = json.loads(board.to_json())
    assert data["rows"][0]["dims"]["activity"] == 59.5
    html = board.to_html().splitlines()
    assert len(html) == 18 and html[0].startswith("<tr><td>GPT-4V(ision)</td><td><b>65.5</b></td>")
    with pytest.raises(ValueError, match="format"):
        board.render("xlsx")


def test_leaderboard_half_up_display():
    row = ModelScores("m", {d: 42.75 for d in DIM_KEYS}, {d: 1.0 for d in DIM_KEYS})
    assert Leaderboard([row]).to_csv().splitlines()[1].split(",")[2] == "42.8"


def test_cohen_kappa_matches_sklearn():
    from cvpr24.egothink.metrics import cohen_kappa

    rng = np.random.default_rng(3)
    for _ in range(10):
        a, b = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
        b[:20] = a[:20]
        for w in (None, "quadratic"):
            assert cohen_kappa(a, b, w) == pytest.approx(cohen_kappa_score(a, b, labels=[0, 1, 2], weights=w))
    assert cohen_kappa(np.ones(5, int), np.ones(5, int), "quadratic") == 1.0

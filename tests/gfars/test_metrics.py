"""Hand-worked cases of the official (G14 with quirks a-d) and strict grouping metrics."""

import itertools

import pytest

from cvpr24.gfars.metrics import grouping_metrics, groups_from_labels, labels_from_groups


def score(pred, gt, n, mode):
    return grouping_metrics([pred], [gt], [n], mode)


def test_worked_example_official_and_strict():
    # GT {0,1,2},{3,4}; pred {0,1},{2,3,4}. Official: g1 best {0,1} (J 2/3) -> TP2 FN1;
    # g2 best {2,3,4} (J 2/3) -> TP2 FP1. TP 4, FP 1, FN 1: P = R = F1 = 0.8.
    for mode in ("official", "strict"):
        s = score([[0, 1], [2, 3, 4]], [[0, 1, 2], [3, 4]], 5, mode)
        assert s.precision == pytest.approx(0.8)
        assert s.recall == pytest.approx(0.8)
        assert s.f1 == pytest.approx(0.8)
        assert s.exact == 0.0


def test_gt_group_without_overlap_quirk_b():
    # GT {0,1},{2,3}; pred {0,1} only. Official: g2 overlaps nothing -> FN 0, F1 = 1.
    off = score([[0, 1]], [[0, 1], [2, 3]], 4, "official")
    assert (off.precision, off.recall) == pytest.approx((1.0, 1.0))
    strict = score([[0, 1]], [[0, 1], [2, 3]], 4, "strict")
    assert strict.precision == pytest.approx(1.0)
    assert strict.recall == pytest.approx(0.5)  # TP 2, FN 2


def test_set_without_prediction_quirk_a():
    off = grouping_metrics([[], [[0, 1]]], [[[0, 1]], [[0, 1]]], [2, 2], "official")
    assert off.n_sets_counted == 1 and off.f1 == pytest.approx(1.0)
    strict = grouping_metrics([[], [[0, 1]]], [[[0, 1]], [[0, 1]]], [2, 2], "strict")
    assert strict.n_sets_counted == 2
    assert strict.recall == pytest.approx(0.5) and strict.precision == pytest.approx(1.0)
    # every set empty: official is undefined, reported as 0 with defined=False
    none = grouping_metrics([[]], [[[0, 1]]], [2], "official")
    assert not none.defined and none.f1 == 0.0 and none.n_sets_counted == 0


def test_extra_disjoint_prediction_quirk_c():
    # GT {0,1}; pred {0,1},{2,3} (parts 2, 3 are noise). Official: the extra group is no
    # GT group's best match -> FP 0. Strict: unmatched prediction -> FP 2.
    off = score([[0, 1], [2, 3]], [[0, 1]], 4, "official")
    assert off.precision == pytest.approx(1.0)
    strict = score([[0, 1], [2, 3]], [[0, 1]], 4, "strict")
    assert strict.precision == pytest.approx(0.5)
    assert strict.recall == pytest.approx(1.0)


def test_one_prediction_matches_several_gt_quirk_d():
    # GT {0,1},{2,3}; pred {0,1,2,3}. Official: both GT groups take it: TP 4, FP 4, FN 0.
    off = score([[0, 1, 2, 3]], [[0, 1], [2, 3]], 4, "official")
    assert off.precision == pytest.approx(0.5) and off.recall == pytest.approx(1.0)
    # Strict: one GT matched (TP 2), FP 2, FN 2.
    strict = score([[0, 1, 2, 3]], [[0, 1], [2, 3]], 4, "strict")
    assert strict.precision == pytest.approx(0.5) and strict.recall == pytest.approx(0.5)


def test_tie_keeps_first_best_official():
    # GT {0,1}; pred {0,2},{1,3}: both J = 1/3; the strict '>' keeps the first -> FP {2}.
    off = score([[0, 2], [1, 3]], [[0, 1]], 4, "official")
    assert off.precision == pytest.approx(0.5) and off.recall == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["official", "strict"])
def test_perfect_and_permutation_invariant(mode):
    gt = [[0, 3], [1, 2, 4], [5]]
    for perm in itertools.permutations(gt):
        s = score(list(perm), gt, 6, mode)
        assert s.f1 == pytest.approx(1.0) and s.exact == 1.0 and s.ari == pytest.approx(1.0)


def test_micro_vs_macro():
    # set 1 perfect (4 parts), set 2 all wrong pairing (2 parts predicted as singletons)
    s = grouping_metrics([[[0, 1], [2, 3]], [[0], [1]]], [[[0, 1], [2, 3]], [[0, 1]]], [4, 2],
                         "strict")
    # micro: TP 4+1, FP 0+1, FN 0+1 -> P = R = 5/6; macro: mean(1, 0.5)
    assert s.precision == pytest.approx(5 / 6)
    assert s.macro_precision == pytest.approx(0.75)


def test_labels_round_trip_and_bad_groups():
    labels = labels_from_groups([[2, 0], [3]], 5)
    assert labels.tolist() == [0, -1, 0, 1, -1]
    assert groups_from_labels(labels) == [[0, 2], [3]]
    with pytest.raises(ValueError, match="at most one group"):
        score([[0, 1], [1, 2]], [[0, 1, 2]], 3, "strict")
    with pytest.raises(ValueError, match="outside"):
        score([[0, 7]], [[0, 1]], 3, "strict")
    with pytest.raises(ValueError, match="mode"):
        score([[0]], [[0]], 1, "loose")


def test_set_counts_and_micro_prf_match_grouping_metrics():
    # set 0 as the worked example (TP 4, FP 1, FN 1 in both modes); set 1 has no prediction:
    # strict counts its 2 GT parts as FN, official skips it (a zero row).
    import numpy as np

    from cvpr24.gfars.metrics import micro_prf, set_counts

    preds, gts, sizes = [[[0, 1], [2, 3, 4]], []], [[[0, 1, 2], [3, 4]], [[0, 1]]], [5, 2]
    strict = set_counts(preds, gts, sizes, "strict")
    official = set_counts(preds, gts, sizes, "official")
    assert strict.tolist() == [[4, 1, 1], [0, 0, 2]]
    assert official.tolist() == [[4, 1, 1], [0, 0, 0]]
    for mode, counts in (("strict", strict), ("official", official)):
        ref = grouping_metrics(preds, gts, sizes, mode)
        assert micro_prf(counts) == pytest.approx([ref.precision, ref.recall, ref.f1])
    # vectorised over bootstrap draws: draw [0, 0] is set 0 twice (F1 0.8), [1, 1] only set 1
    draws = micro_prf(strict[np.array([[0, 0], [1, 1], [0, 1]])])
    assert draws.shape == (3, 3)
    assert draws[:, 2] == pytest.approx([0.8, 0.0, 2 * (0.8 * 4 / 7) / (0.8 + 4 / 7)])

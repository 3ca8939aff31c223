import numpy as np
import pytest
import torch
from _lotus_helpers import tiny_images

from cvpr24.lotus.metrics import (
    AttackSuccessRate,
    asr_par,
    attack_success_rate,
    benign_accuracy,
    official_result,
    read_result_json,
    trigger_partition_matrix,
    victim_accuracy_wrong_triggers,
    worst_cross_partition_asr,
    write_result_json,
)
from cvpr24.lotus.triggers import TriggerSet


@pytest.fixture
def setup():
    ts = TriggerSet(4, 16)
    x = tiny_images(8)
    p = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    # the oracle recovers the partition from the (unique) image by lookup on an untouched pixel
    key = x[:, 0, 8, 8].clone()

    def partition_of(xx):
        return torch.stack([p[(key - v).abs().argmin()] for v in xx[:, 0, 8, 8]])

    return ts, x, p, partition_of


def test_perfect_lotus_oracle(setup, oracle_cls):
    ts, x, p, part = setup
    m = oracle_cls(ts, part, victim=0, target=9, rule="lotus")
    assert attack_success_rate(m, x, p, ts, 9) == 1.0
    mean, std = asr_par(m, x, p, ts, 9)
    assert mean == 0.0 and std == 0.0
    assert np.array_equal(trigger_partition_matrix(m, x, p, ts, 9), np.eye(4))
    assert victim_accuracy_wrong_triggers(m, x, p, ts, 0) == 1.0


def test_any_trigger_oracle(setup, oracle_cls):
    ts, x, p, part = setup
    m = oracle_cls(ts, part, victim=0, target=9, rule="any")
    assert attack_success_rate(m, x, p, ts, 9) == 1.0
    assert asr_par(m, x, p, ts, 9) == (1.0, 0.0)
    assert np.array_equal(trigger_partition_matrix(m, x, p, ts, 9), np.ones((4, 4)))


def test_never_oracle_and_ba(setup, oracle_cls):
    ts, x, p, part = setup
    m = oracle_cls(ts, part, victim=0, target=9, rule="never")
    assert attack_success_rate(m, x, p, ts, 9) == 0.0
    assert benign_accuracy(m, x, torch.zeros(8, dtype=torch.long)) == 1.0
    assert benign_accuracy(m, x, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])) == 0.5


def test_asr_par_counts_all_cross_subsets(setup, oracle_cls):
    # oracle firing only when trigger 0 is present (alone or not): per victim the cross subsets
    # containing trigger 0 are 8 of 14 if own != 0, and 7 of 14 if own == 0 (own singleton excluded)
    ts, x, p, part = setup

    class Has0(oracle_cls):
        def forward(self, xx):
            fire = self.present(xx)[:, 0]
            out = torch.zeros(len(xx), 10)
            out[torch.arange(len(xx)), torch.where(fire, 9, 0)] = 1.0
            return out

    m = Has0(ts, part, 0, 9, "x")
    expected = (2 * 7 + 6 * 8) / (8 * 14)
    assert asr_par(m, x, p, ts, 9)[0] == pytest.approx(expected)
    s = AttackSuccessRate(ts, 9)
    s.update(m, x[:3], p[:3])
    s.update(m, x[3:], p[3:])
    out = s.compute()
    assert out["asr_par"] == pytest.approx(expected)
    assert out["asr"] == pytest.approx(2 / 8)


def test_streaming_compute_before_update_raises():
    with pytest.raises(ValueError, match="update"):
        AttackSuccessRate(TriggerSet(2, 16), 1).compute()


def test_result_json_round_trip(setup, oracle_cls, tmp_path):
    ts, x, p, part = setup
    m = oracle_cls(ts, part, victim=0, target=9, rule="lotus")
    off = official_result(m, x, p, ts, 9)
    assert off["1000"] == "1.0000 0.0000 0.0000 0.0000"
    assert off["0001"] == "0.0000 0.0000 0.0000 1.0000"
    write_result_json(tmp_path / "result.json", off, {"ba": 0.5})
    mat, extra = read_result_json(tmp_path / "result.json")
    assert np.array_equal(mat["0100"], [0, 1, 0, 0]) and extra == {"ba": 0.5}


def test_worst_cross_partition_probe():
    m = np.array([[0.9, 0.1, 0.3], [0.0, 1.0, 0.2], [0.5, 0.4, 0.8]])
    assert np.allclose(worst_cross_partition_asr(m), [0.3, 0.2, 0.5])
    assert np.allclose(worst_cross_partition_asr(np.eye(4)), 0.0)

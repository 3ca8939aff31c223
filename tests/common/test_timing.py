from types import SimpleNamespace

import pytest

from cvpr24.common import best_time, timing


def test_best_time_is_the_fastest_timed_call_after_warmup(monkeypatch):
    # a fake clock that each call advances by its duration: real sleeps measured on a loaded
    # machine overshoot by more than the gap between the durations
    clock = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []
    durations = iter([0.0, 0.0, 0.02, 0.001, 0.01])  # two warm-up calls (untimed), three timed

    def fn():
        calls.append(1)
        clock[0] += next(durations)

    t = best_time(fn, repeats=3, warmup=2)
    assert len(calls) == 5
    assert t == pytest.approx(0.001)


def test_best_time_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        best_time(lambda: None, repeats=0)

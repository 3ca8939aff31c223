from types import SimpleNamespace

import pytest

from cvpr24.common import best_time, timing


def test_best_time_is_the_fastest_timed_call_after_warmup(monkeypatch):
    # A fake clock: each call of fn advances it by its scripted duration, so the test does not
    # depend on how long sleeps really take on a loaded machine.
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    durations = iter([5.0, 5.0, 0.02, 0.001, 0.01])  # two warm-up calls, then three timed
    calls = []

    def fn():
        calls.append(1)
        now[0] += next(durations)

    t = best_time(fn, repeats=3, warmup=2)
    assert len(calls) == 5
    assert t == pytest.approx(0.001)


def test_best_time_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        best_time(lambda: None, repeats=0)

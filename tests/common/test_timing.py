import time

import pytest

from cvpr24.common import best_time


def test_best_time_is_the_fastest_timed_call_after_warmup():
    calls = []
    durations = iter([0.0, 0.0, 0.02, 0.001, 0.01])  # two warm-up calls, then three timed

    def fn():
        calls.append(1)
        time.sleep(next(durations))

    t = best_time(fn, repeats=3, warmup=2)
    assert len(calls) == 5
    assert 0.001 <= t < 0.01


def test_best_time_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        best_time(lambda: None, repeats=0)

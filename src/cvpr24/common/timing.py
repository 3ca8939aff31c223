"""Wall-clock timing for the benchmarks."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """Fastest of ``repeats`` calls of ``fn``, in seconds, after ``warmup`` untimed calls.

    The minimum is the run least disturbed by other load on the machine; garbage is collected
    before each timed call so that a collection does not land inside one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)

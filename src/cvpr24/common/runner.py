"""Run reproductions, each in its own process with a time budget.

A module that crashes, or runs past its budget, becomes a ``Result`` with ``error`` set (the
traceback, or the budget it exceeded and the tail of its log) while the others go on. A
reproduction may save partial results to ``OUT/result.json`` as it goes: a run stopped by its
budget then reports those claims, with ``error`` starting "PARTIAL RESULT".

The child process is ``python -m cvpr24.common.runner TARGET OUT MODE [SEEDS]``: it imports
``TARGET`` (a dotted module with ``run(out_dir, quick=..., seeds=...)``), runs it, and
writes ``OUT/result.json`` whatever happens.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cvpr24.common.result import Result

LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Job:
    """One reproduction to run: ``module`` name, the dotted ``target`` holding ``run``, and
    the time budget in seconds (``None`` for no limit)."""

    module: str
    target: str
    budget_s: float | None


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_job(
    job: Job,
    out_dir: str | os.PathLike,
    *,
    quick: bool = True,
    seeds: int | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``job`` in a child process; never raises for a failure of the reproduction itself."""
    mod_dir = Path(out_dir) / job.module
    mod_dir.mkdir(parents=True, exist_ok=True)
    result_path = mod_dir / "result.json"
    result_path.unlink(missing_ok=True)  # never report a stale result as this run's
    log_path = mod_dir / "log.txt"
    cmd = [
        sys.executable,
        "-m",
        "cvpr24.common.runner",
        job.target,
        str(mod_dir),
        "quick" if quick else "full",
    ] + ([str(seeds)] if seeds is not None else [])
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        try:
            proc.wait(timeout=job.budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: workers it spawned too
            proc.wait()
            error = (f"exceeded its time budget of {job.budget_s:g} s and was stopped.\n"
                     f"Last lines of {log_path}:\n{_tail(log_path)}")
            if result_path.is_file():  # a partial result the reproduction saved as it went
                partial = Result.load(result_path)
                partial.error = f"PARTIAL RESULT: {error}"
                partial.wall_time_s = time.monotonic() - start
                partial.save(result_path)  # the report reads it: never as a finished run
                return partial
            return Result(
                job.module,
                mode="quick" if quick else "full",
                wall_time_s=time.monotonic() - start,
                error=error,
            )
    if result_path.is_file():
        result = Result.load(result_path)
        if proc.returncode != 0 and result.error is None:  # killed after saving a partial result
            result.error = (f"PARTIAL RESULT: process exited with code {proc.returncode}.\n"
                            f"Last lines of {log_path}:\n{_tail(log_path)}")
            result.save(result_path)
        return result
    return Result(
        job.module,
        mode="quick" if quick else "full",
        wall_time_s=time.monotonic() - start,
        error=f"process exited with code {proc.returncode} without writing a result.\n"
        f"Last lines of {log_path}:\n{_tail(log_path)}",
    )


def run_jobs(
    jobs: list[Job],
    out_dir: str | os.PathLike,
    *,
    quick: bool = True,
    seeds: int | None = None,
    n_jobs: int = 1,
    on_done: Callable[[Result], None] | None = None,
    env: dict[str, str] | None = None,
) -> list[Result]:
    """Run ``jobs`` with at most ``n_jobs`` at once; results come back in the order of ``jobs``."""

    def one(job: Job) -> Result:
        result = run_job(job, out_dir, quick=quick, seeds=seeds, env=env)
        if on_done is not None:
            on_done(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        return list(pool.map(one, jobs))


def _child(target: str, out_dir: str, mode: str, seeds: str | None) -> int:
    out = Path(out_dir)
    module = out.name
    start = time.monotonic()
    try:
        result = importlib.import_module(target).run(
            out, quick=(mode == "quick"), seeds=None if seeds is None else int(seeds)
        )
        if not isinstance(result, Result):
            raise TypeError(
                f"{target}.run returned {type(result).__name__}, expected cvpr24.common.Result"
            )
        rc = 0
    except BaseException:  # report anything, including SystemExit and KeyboardInterrupt
        result = Result(module, mode=mode, error=traceback.format_exc())
        rc = 1
    if not result.wall_time_s:
        result.wall_time_s = time.monotonic() - start
    result.mode = mode
    result.save(out / "result.json")
    if result.error:
        print(result.error, file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(_child(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None))

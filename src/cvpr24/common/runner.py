"""Run reproductions, each in its own process with a time budget.

A module that crashes, or runs past its budget, becomes a ``Result`` with ``error`` set (the
traceback, or the budget it exceeded and the tail of its log) while the others go on; what it
had saved with ``Result.save_partial`` comes with it, labelled partial. Its output streams into
``log.txt`` as it runs, and the caller hears about its progress about once a second.

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

from cvpr24.common.progress import parse_step
from cvpr24.common.result import PARTIAL_NAME, Result

LOG_TAIL_LINES = 40
POLL_S = 1.0  # how often the parent reads the child's log and checks its budget


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


@dataclass(frozen=True)
class Progress:
    """Where a running reproduction is: its latest step (see
    :func:`cvpr24.common.progress.report_step`, or else its last log line) and elapsed time."""

    module: str
    label: str
    done: int | None
    total: int | None
    elapsed_s: float


class _LogFollower:
    """Reads the lines a child appends to its log: its latest step, else its latest line."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._pending = b""
        self._step: tuple[str, int | None, int | None] | None = None
        self._line: str | None = None

    def poll(self) -> tuple[str, int | None, int | None] | None:
        """Read what was appended; return ``(label, done, total)`` of where the child is."""
        self._pending += self._file.read()
        *lines, self._pending = self._pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line:
                self._step = parse_step(line) or self._step
                self._line = line[:80]
        if self._step is None and self._line is not None:
            return f"log: {self._line}", None, None
        return self._step

    def close(self) -> None:
        self._file.close()


def _partial_or_error(
    job: Job, mod_dir: Path, mode: str, wall_time_s: float, error: str
) -> Result:
    """What a run that stopped early measured (``partial.json``), labelled partial, or an
    empty result carrying ``error``; written to ``result.json`` like any other result."""
    partial = mod_dir / PARTIAL_NAME
    if partial.is_file():
        result = Result.load(partial)
        result.partial = True
    else:
        result = Result(job.module)
    result.mode, result.wall_time_s, result.error = mode, wall_time_s, error
    result.save(mod_dir / "result.json")
    return result


def run_job(
    job: Job,
    out_dir: str | os.PathLike,
    *,
    quick: bool = True,
    seeds: int | None = None,
    env: dict[str, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> Result:
    """Run ``job`` in a child process; never raises for a failure of the reproduction itself.

    The child's output streams (unbuffered) into ``<out>/<module>/log.txt`` while it runs;
    ``on_progress`` is called about once a second with where it is. A run that goes past its
    budget is stopped and reported with what it saved through ``Result.save_partial``.
    """
    mod_dir = Path(out_dir) / job.module
    mod_dir.mkdir(parents=True, exist_ok=True)
    result_path = mod_dir / "result.json"
    for stale in (result_path, mod_dir / PARTIAL_NAME):  # never report an old run as this one
        stale.unlink(missing_ok=True)
    log_path = mod_dir / "log.txt"
    mode = "quick" if quick else "full"
    cmd = [sys.executable, "-m", "cvpr24.common.runner", job.target, str(mod_dir), mode]
    cmd += [str(seeds)] if seeds is not None else []
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    follower = _LogFollower(log_path)
    try:
        while True:
            try:
                proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - start
            if job.budget_s is not None and elapsed > job.budget_s:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: workers it spawned too
                proc.wait()
                return _partial_or_error(
                    job,
                    mod_dir,
                    mode,
                    elapsed,
                    f"exceeded its time budget of {job.budget_s:g} s and was stopped.\n"
                    f"Last lines of {log_path}:\n{_tail(log_path)}",
                )
            where = follower.poll()
            if on_progress is not None and where is not None:
                on_progress(Progress(job.module, *where, elapsed))
    finally:
        follower.close()
    if result_path.is_file():
        return Result.load(result_path)
    return _partial_or_error(
        job,
        mod_dir,
        mode,
        time.monotonic() - start,
        f"process exited with code {proc.returncode} without writing a result.\n"
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
    on_progress: Callable[[Progress], None] | None = None,
    env: dict[str, str] | None = None,
) -> list[Result]:
    """Run ``jobs`` with at most ``n_jobs`` at once; results come back in the order of ``jobs``."""

    def one(job: Job) -> Result:
        result = run_job(
            job, out_dir, quick=quick, seeds=seeds, env=env, on_progress=on_progress
        )
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
        partial = out / PARTIAL_NAME
        result = Result.load(partial) if partial.is_file() else Result(module)
        result.partial = partial.is_file()
        result.error = traceback.format_exc()
        rc = 1
    if not result.wall_time_s:
        result.wall_time_s = time.monotonic() - start
    result.mode = mode
    result.save(out / "result.json")
    if not result.error:
        (out / PARTIAL_NAME).unlink(missing_ok=True)
    if result.error:
        print(result.error, file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(_child(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None))

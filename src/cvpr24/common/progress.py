"""Progress bars that stay quiet when output is not a terminal."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str = "",
    total: int | None = None,
    disable: bool | None = None,
    **kwargs,
) -> tqdm:
    """``tqdm`` with ``disable`` defaulting to "stderr is not a TTY" (logs and CI stay clean)."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kwargs)


_STEP = re.compile(r"^\[step(?: (\d+)/(\d+))?\] (.*)$")


def report_step(label: str, done: int | None = None, total: int | None = None) -> None:
    """Announce the step a reproduction is on: one line ``[step 3/8] label`` on stdout.

    The runner sends a reproduction's output to its ``log.txt`` and ``cvpr24 reproduce``
    shows the latest step, with a bar when ``done`` and ``total`` count the steps.
    """
    count = f" {done}/{total}" if total is not None and done is not None else ""
    print(f"[step{count}] {label}", flush=True)


def parse_step(line: str) -> tuple[str, int | None, int | None] | None:
    """``(label, done, total)`` for a line written by :func:`report_step`, else ``None``."""
    m = _STEP.match(line.strip())
    if m is None:
        return None
    done, total, label = m.groups()
    return label, None if done is None else int(done), None if total is None else int(total)

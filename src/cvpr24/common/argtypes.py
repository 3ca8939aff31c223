"""Argument types for ``argparse`` (a bad value exits with code 2 and one line naming it), and
:func:`one_line_errors` for the errors a subcommand finds in its inputs."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable


def number_in(
    kind: type,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    hint: str = "",
) -> Callable[[str], int | float]:
    """An argparse ``type=`` accepting a ``kind`` (int or float) in the interval ``[low, high]``
    (``(low, high]`` when ``low_open``); ``hint`` is added to the error message."""
    expected = _describe(kind, low, high, low_open) + (f" ({hint})" if hint else "")

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high) or value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _describe(kind: type, low: float | None, high: float | None, low_open: bool) -> str:
    what = "integer" if kind is int else "number"
    if (kind is int and low == 1 and not low_open) or (low == 0 and low_open):
        return f"a positive {what}" + (f" <= {high:g}" if high is not None else "")
    if low is not None and high is not None:
        return f"a {what} in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"a {what} {'>' if low_open else '>='} {low:g}"
    return f"a {what}" + (f" <= {high:g}" if high is not None else "")


positive_int = number_in(int, 1)
positive_float = number_in(float, 0, low_open=True)
unit_interval = number_in(float, 0, 1)


def one_line_errors(
    module: str, *errors: type[Exception]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Wrap a subcommand ``fn(args) -> exit code`` so that bad input (``errors``: by default
    ``ValueError`` and ``FileNotFoundError``) becomes one line on stderr,
    ``cvpr24 MODULE CMD: error: ...``, and exit code 2. A ``KeyError`` shows its message bare."""
    caught = errors or (ValueError, FileNotFoundError)

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(fn)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except caught as e:
                msg = e.args[0] if isinstance(e, KeyError) and e.args else e
                print(f"cvpr24 {module} {args.cmd}: error: {msg}", file=sys.stderr)
                return 2

        return wrapper

    return wrap

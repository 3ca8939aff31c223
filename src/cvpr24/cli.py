"""The ``cvpr24`` command line.

    cvpr24 list                              the modules, their claims, what is installed
    cvpr24 reproduce [MODULE ...] [--quick | --full] [--seeds N] [--out DIR] [--jobs N]
    cvpr24 train MODULE [ARGS ...]           same as ``cvpr24 MODULE train [ARGS ...]``
    cvpr24 MODULE COMMAND ...                each module's own subcommands

Modules are imported only when their subcommand is used, so ``cvpr24 --help`` is fast and a
module with a missing optional dependency does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import threading
from collections.abc import Sequence

from cvpr24 import __version__
from cvpr24.common.argtypes import positive_float, positive_int
from cvpr24.registry import MODULES, ModuleInfo


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run the quick (or full) reproduction of each module's claims",
        description="Run each module's reproduction in its own process and write "
        "<out>/<module>/result.json and <out>/index.html.",
    )
    p.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="modules to run (default: every module that has a reproduction)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="quick",
        action="store_true",
        default=True,
        help="CPU scale, a few minutes per module (default)",
    )
    mode.add_argument(
        "--full",
        dest="quick",
        action="store_false",
        help="the larger configuration; may take long and use a GPU",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help="number of seeds (module default if unset)",
    )
    p.add_argument("--out", default="reports", help="report folder (default: reports)")
    p.add_argument("--jobs", type=positive_int, default=1, help="modules run at once (default: 1)")
    p.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help="time budget per module in seconds (default: the module's quick budget; none for --full)",
    )
    p.set_defaults(func=_cmd_reproduce)


def build_parser(load: str | None = None) -> Parser:
    """The top-level parser; the subcommands of module ``load`` are imported and added."""
    parser = Parser(prog="cvpr24", description="Ten CVPR 2024 papers as tested software.")
    parser.add_argument("--version", action="version", version=f"cvpr24 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list the modules, their claims and whether they are installed")
    p.set_defaults(func=_cmd_list)
    _add_reproduce(sub)
    p = sub.add_parser("train", help="train a module's model (alias of 'cvpr24 MODULE train')")
    p.add_argument("module", help="the module to train")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for 'cvpr24 MODULE train'")
    p.set_defaults(func=None)

    for info in MODULES.values():
        mp = sub.add_parser(
            info.name, help=info.description, description=f"{info.paper}. {info.description}"
        )
        if info.name == load:
            importlib.import_module(f"cvpr24.{info.name}.cli").register(mp)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    for info in MODULES.values():
        missing = info.missing_requirements()
        state = (
            "implemented"
            if info.has_reproduction
            else "in progress"
            if info.implemented
            else "not implemented"
        )
        deps = (
            "installed" if not missing else f"missing {', '.join(missing)}: {info.install_hint()}"
        )
        print(
            f"{info.name:<11} {info.description}\n{'':<11} paper: {info.paper}\n"
            f"{'':<11} status: {state}; dependencies {deps}"
        )
        for claim in _claims(info):
            print(f"{'':<11} - {claim}")
    return 0


def _claims(info: ModuleInfo) -> list[str]:
    if not info.has_reproduction or info.missing_requirements():
        return []
    try:
        return list(getattr(importlib.import_module(f"cvpr24.{info.name}.reproduce"), "CLAIMS", []))
    except ImportError as e:
        return [f"(claims unavailable: {e})"]


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from cvpr24.common.report import write_report
    from cvpr24.common.runner import Job, run_jobs

    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        _fail(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    names = args.modules or [n for n, i in MODULES.items() if i.has_reproduction]
    without = [n for n in names if not MODULES[n].has_reproduction]
    if without:
        _fail(f"module(s) {', '.join(without)} have no reproduction yet")
    jobs = [
        Job(
            n,
            f"cvpr24.{n}.reproduce",
            args.budget
            if args.budget is not None
            else (MODULES[n].budget_s if args.quick else None),
        )
        for n in names
    ]

    status = _StatusLine(sys.stderr)

    def on_done(r):
        n_pass = sum(c.passed for c in r.claims)
        partial = " (partial)" if r.partial else ""
        status.print(
            f"[{r.module}] {r.status}{partial}: {n_pass}/{len(r.claims)} claims passed "
            f"in {r.wall_time_s:.1f} s (log: {os.path.join(args.out, r.module, 'log.txt')})"
        )

    print(
        f"reproducing {', '.join(names)} ({'quick' if args.quick else 'full'}), "
        f"{args.jobs} at a time",
        file=sys.stderr,
        flush=True,
    )
    results = run_jobs(
        jobs,
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        n_jobs=args.jobs,
        on_done=on_done,
        on_progress=status.show,
    )
    index = write_report(args.out)
    for r in results:
        for c in r.claims:
            print(f"{r.module:<11} {c.name:<6} {c.status:<10} {c.comparison}")
    print(f"report: {index}")
    return 1 if any(r.status == "error" for r in results) else 0


class _StatusLine:
    """One line on a terminal that shows the running module, its step and elapsed time,
    rewritten in place; silent when the stream is not a terminal (logs and CI stay clean)."""

    BAR = 20

    def __init__(self, stream) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.width = max(40, shutil.get_terminal_size().columns - 1)
        self.lock = threading.Lock()  # modules run in threads of the runner with --jobs > 1

    def show(self, p) -> None:
        if not self.live:
            return
        bar = ""
        if p.total:
            filled = round(self.BAR * min(p.done, p.total) / p.total)
            bar = f" [{'#' * filled}{'.' * (self.BAR - filled)}] {p.done}/{p.total}"
        minutes, seconds = divmod(int(p.elapsed_s), 60)
        line = f"[{p.module}] {minutes}:{seconds:02d}{bar} {p.label}"
        with self.lock:
            self.stream.write("\r\x1b[K" + line[: self.width])
            self.stream.flush()

    def print(self, message: str) -> None:
        with self.lock:
            self.stream.write(("\r\x1b[K" if self.live else "") + message + "\n")
            self.stream.flush()


def _fail(message: str) -> None:
    print(f"cvpr24: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and len(argv) >= 2 and not argv[1].startswith("-"):
        argv = [argv[1], "train", *argv[2:]]  # ``cvpr24 train M ...`` is ``cvpr24 M train ...``
    name = argv[0] if argv and argv[0] in MODULES else None
    if name is not None and not MODULES[name].has_cli:
        _fail(f"module {name!r} has no command line yet")
    try:
        parser = build_parser(load=name)
    except ImportError as e:  # a module's optional dependency is missing
        print(f"cvpr24 {name}: {e}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if args.func is None:  # ``cvpr24 train`` without a valid module
        _fail(f"train needs a module: one of {', '.join(MODULES)}")
    try:
        if name is None:  # list / reproduce: no torch settings to keep
            return int(args.func(args) or 0)
        from cvpr24.common.state import preserved_global_state  # imports torch: only here

        with preserved_global_state():  # main() may run in-process (tests, notebooks)
            return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into ``head`` and closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

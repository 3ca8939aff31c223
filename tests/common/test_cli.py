import io
import subprocess
import sys

import pytest

from cvpr24.cli import main
from cvpr24.registry import MODULES


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["reproduce", "nosuchmodule"], "unknown module"),
        (["reproduce", "--jobs", "0"], "positive integer"),
        (["reproduce", "--seeds", "two"], "positive integer"),
        (["reproduce", "--quick", "--full"], "not allowed with"),
        (["nosuchcommand"], "invalid choice"),
        (["train"], "module"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    code, out = _run(argv, capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.err


def test_help_and_version(capsys):
    code, out = _run(["--help"], capsys)
    assert code == 0
    for name in MODULES:
        assert name in out.out
    code, out = _run(["--version"], capsys)
    assert code == 0 and out.out.startswith("cvpr24 ")


def test_list_shows_every_module(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for info in MODULES.values():
        assert info.name in out and info.description in out


def test_top_level_help_imports_no_module_and_no_torch():
    modules = tuple(f"cvpr24.{n}" for n in MODULES)
    code = (
        "import sys; from cvpr24.cli import build_parser; build_parser(); "
        f"print([m for m in sys.modules if m == 'torch' or m.startswith({modules!r})])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_status_line_shows_module_step_bar_and_time_on_a_terminal_only():
    from cvpr24.cli import _StatusLine
    from cvpr24.common.runner import Progress

    tty = _StatusLine(_Stream(True))
    tty.show(Progress("lotus", "training seed 1", 3, 8, 75.2))
    tty.print("[lotus] passed")
    text = tty.stream.getvalue()
    assert "[lotus] 1:15 [########............] 3/8 training seed 1" in text
    assert text.endswith("\r\x1b[K[lotus] passed\n")

    pipe = _StatusLine(_Stream(False))
    pipe.show(Progress("lotus", "training seed 1", 3, 8, 75.2))
    pipe.print("[lotus] passed")
    assert pipe.stream.getvalue() == "[lotus] passed\n"  # no control characters in a log


def test_one_line_errors_turn_bad_input_into_exit_2(capsys):
    import argparse

    from cvpr24.common.argtypes import one_line_errors

    @one_line_errors("demo", ValueError, KeyError)
    def cmd(args):
        raise {"value": ValueError("--x: expected a number"), "key": KeyError("missing key 'w'")}[args.what]

    assert cmd(argparse.Namespace(cmd="run", what="value")) == 2
    assert capsys.readouterr().err == "cvpr24 demo run: error: --x: expected a number\n"
    assert cmd(argparse.Namespace(cmd="run", what="key")) == 2
    assert capsys.readouterr().err == "cvpr24 demo run: error: missing key 'w'\n"  # no KeyError quotes

    @one_line_errors("demo")
    def crash(args):
        raise RuntimeError("a bug, not bad input")

    with pytest.raises(RuntimeError):
        crash(argparse.Namespace(cmd="run"))

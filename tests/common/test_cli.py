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

import os
import textwrap
import time

import pytest

from cvpr24.common import Result
from cvpr24.common.runner import Job, run_jobs

FAKES = {
    "good": """
        from cvpr24.common import Claim, Result
        def run(out_dir, quick=True, seeds=None):
            (out_dir / "fig.png").write_bytes(b"png")
            n = seeds or 2
            return Result("good", claims=[Claim.compare("C1", "s", list(range(n)), ">=", 0, reason="r")],
                          seeds=list(range(n)), figures=["fig.png"])
    """,
    "crash": """
        def run(out_dir, quick=True, seeds=None):
            raise RuntimeError("boom in crash")
    """,
    "slow": """
        import os, time
        def run(out_dir, quick=True, seeds=None):
            (out_dir / "pid").write_text(str(os.getpid()))
            time.sleep(120)
    """,
    "dies": """
        import os
        def run(out_dir, quick=True, seeds=None):
            print("about to die", flush=True)
            os._exit(3)
    """,
    "wrongtype": """
        def run(out_dir, quick=True, seeds=None):
            return {"claims": []}
    """,
}


@pytest.fixture
def fake_env(tmp_path):
    pkg = tmp_path / "src" / "fakerepro"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, body in FAKES.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(body))
    return {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), os.environ.get("PYTHONPATH", "")])
    }


# Long enough for the child to start (import torch) on a loaded machine, short against its 120 s.
SLOW_BUDGET_S = 20


def _jobs(budget=90):
    return [
        Job(name, f"fakerepro.{name}", budget if name != "slow" else SLOW_BUDGET_S)
        for name in FAKES
    ]


def test_failures_are_reported_while_the_others_finish(tmp_path, fake_env):
    done = []
    start = time.monotonic()
    results = run_jobs(
        _jobs(),
        tmp_path / "out",
        seeds=3,
        n_jobs=2,
        env=fake_env,
        on_done=lambda r: done.append(r.module),
    )
    elapsed = time.monotonic() - start
    by = {r.module: r for r in results}
    assert [r.module for r in results] == list(FAKES)  # order of the jobs
    assert sorted(done) == sorted(FAKES)

    assert by["good"].status == "passed" and by["good"].seeds == [0, 1, 2]
    assert (tmp_path / "out" / "good" / "result.json").is_file()

    assert by["crash"].status == "error" and "RuntimeError: boom in crash" in by["crash"].error
    assert (
        by["dies"].status == "error"
        and "code 3" in by["dies"].error
        and "about to die" in by["dies"].error
    )
    assert (
        by["wrongtype"].status == "error"
        and "expected cvpr24.common.Result" in by["wrongtype"].error
    )

    slow = by["slow"]
    assert slow.status == "error" and f"time budget of {SLOW_BUDGET_S} s" in slow.error
    assert elapsed < 100  # the 120 s sleep was cut short
    pid = int((tmp_path / "out" / "slow" / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the stopped process is gone, not left running


def test_stale_result_is_not_reported_as_new(tmp_path, fake_env):
    run_jobs([Job("good", "fakerepro.good", 60)], tmp_path, env=fake_env)
    (result,) = run_jobs([Job("good", "fakerepro.dies", 60)], tmp_path, env=fake_env)
    assert result.status == "error"


PARTIAL = """
    import os, time
    from cvpr24.common import Claim, Result
    def run(out_dir, quick=True, seeds=None):
        done = Claim.compare("A", "s", [1.0], ">=", 0, reason="r")
        Result("partial", claims=[done]).save(out_dir / "result.json")
        if seeds == 1:
            os._exit(9)  # killed from outside (e.g. out of memory)
        time.sleep(120)
"""


def test_a_run_stopped_by_its_budget_reports_its_partial_result(tmp_path, fake_env):
    (tmp_path / "src" / "fakerepro" / "partial.py").write_text(textwrap.dedent(PARTIAL))
    # no torch import: the child saves its partial result well within the budget
    (result,) = run_jobs([Job("partial", "fakerepro.partial", 8)], tmp_path / "out", env=fake_env)
    assert result.error.startswith("PARTIAL RESULT: exceeded its time budget of 8 s")
    assert [c.name for c in result.claims] == ["A"] and result.claims[0].passed
    on_disk = Result.load(tmp_path / "out" / "partial" / "result.json")  # what the report reads
    assert on_disk.status == "error" and on_disk.error == result.error
    (killed,) = run_jobs([Job("partial", "fakerepro.partial", 60)], tmp_path / "out2", seeds=1,
                         env=fake_env)
    assert killed.error.startswith("PARTIAL RESULT: process exited with code 9")
    assert Result.load(tmp_path / "out2" / "partial" / "result.json").status == "error"

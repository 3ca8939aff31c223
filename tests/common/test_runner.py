import os
import textwrap
import time

import pytest

from cvpr24.common.result import Result
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
    "partial": """
        import time
        from cvpr24.common import Claim, Result
        def run(out_dir, quick=True, seeds=None):
            first = Claim.compare("C1", "seed 0 done", [1.0], ">=", 0, reason="r")
            Result("partial", claims=[first], seeds=[0]).save_partial(out_dir)
            time.sleep(120)
    """,
    "crashlate": """
        from cvpr24.common import Claim, Result
        def run(out_dir, quick=True, seeds=None):
            first = Claim.compare("C1", "seed 0 done", [1.0], ">=", 0, reason="r")
            Result("crashlate", claims=[first], seeds=[0]).save_partial(out_dir)
            raise RuntimeError("boom after seed 0")
    """,
    "steps": """
        import time
        from pathlib import Path
        from cvpr24.common import Claim, Result, report_step
        def run(out_dir, quick=True, seeds=None):
            report_step("warming up")
            for i in range(2):
                report_step(f"seed {i}", i + 1, 2)
                # wait until the parent has seen this step in the log (or give up after 60 s)
                for _ in range(600):
                    if (out_dir / f"seen{i}").exists():
                        break
                    time.sleep(0.1)
            return Result("steps", claims=[Claim.compare("C1", "s", [1], ">=", 0, reason="r")])
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


_BASIC = ("good", "crash", "slow", "partial", "dies", "wrongtype")


def _jobs(budget=90):
    return [
        Job(name, f"fakerepro.{name}", SLOW_BUDGET_S if name in ("slow", "partial") else budget)
        for name in _BASIC
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
    assert [r.module for r in results] == list(_BASIC)  # order of the jobs
    assert sorted(done) == sorted(_BASIC)

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

    partial = by["partial"]  # out of budget too, but it had saved what it measured
    assert partial.partial and f"time budget of {SLOW_BUDGET_S} s" in partial.error
    assert [c.name for c in partial.claims] == ["C1"] and partial.seeds == [0]
    assert not slow.partial and not slow.claims
    for name in ("slow", "partial", "dies"):  # every stopped run leaves its result.json for the report
        assert Result.load(tmp_path / "out" / name / "result.json").error == by[name].error


def test_stale_result_is_not_reported_as_new(tmp_path, fake_env):
    run_jobs([Job("good", "fakerepro.good", 60)], tmp_path, env=fake_env)
    (result,) = run_jobs([Job("good", "fakerepro.dies", 60)], tmp_path, env=fake_env)
    assert result.status == "error"


def test_a_crash_keeps_what_was_saved_and_a_clean_run_removes_it(tmp_path, fake_env):
    (crashed,) = run_jobs([Job("m", "fakerepro.crashlate", 60)], tmp_path, env=fake_env)
    assert crashed.partial and "boom after seed 0" in crashed.error and len(crashed.claims) == 1
    (clean,) = run_jobs([Job("m", "fakerepro.good", 60)], tmp_path, env=fake_env)
    assert not clean.partial and clean.error is None
    assert not (tmp_path / "m" / "partial.json").exists()


def test_progress_streams_from_the_log_while_the_child_runs(tmp_path, fake_env):
    seen = []

    def on_progress(p):
        seen.append((p.label, p.done, p.total))
        if p.done is not None:  # release the child: the step reached us while it ran
            (tmp_path / "steps" / f"seen{p.done - 1}").touch()

    (result,) = run_jobs(
        [Job("steps", "fakerepro.steps", 90)], tmp_path, env=fake_env, on_progress=on_progress
    )
    assert result.status == "passed"
    assert ("seed 0", 1, 2) in seen and ("seed 1", 2, 2) in seen
    assert "[step 2/2] seed 1" in (tmp_path / "steps" / "log.txt").read_text()

import time

from cvpr24.common import Result
from cvpr24.common.state import global_state
from cvpr24.egothink.reproduce import CLAIMS, run


def test_reproduction_smoke(tmp_path):
    before = global_state()
    start = time.process_time()  # CPU time: wall time depends on the machine's load
    result = run(tmp_path, quick=False, tiny=True, log=lambda msg: None)  # tiny sizes, judge over HTTP
    assert global_state() == before  # threads, seeds: set inside run(), restored on return
    assert isinstance(result, Result) and result.error is None
    assert [c.name for c in result.claims] == ["C1", "C2", "C3", "C4", "C5"] and len(CLAIMS) == 5
    assert all(c.status in ("passed", "failed") for c in result.claims)
    assert result.claims[4].passed  # C5 is deterministic
    for fig in result.figures:
        assert (tmp_path / fig).stat().st_size > 1000
    assert time.process_time() - start < 120
    manifest = (tmp_path / "work" / "seed0" / "answers" / "judge_manifest_local-judge.json").read_text()
    assert '"parallel": 4' in manifest  # the HTTP path (full mode) judged the answers

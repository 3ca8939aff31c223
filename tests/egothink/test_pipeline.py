"""infer -> judge -> show through the real code paths: resume, cache, parallelism, kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cvpr24.egothink.config import EgoThinkConfig
from cvpr24.egothink.data import list_models, model_answer_path, read_jsonl
from cvpr24.egothink.judge import JudgmentCache, OpenAIJudge, judgment_path, run_judgment
from cvpr24.egothink.local_judge import LocalJudge
from cvpr24.egothink.metrics import Leaderboard, load_item_scores
from cvpr24.egothink.server import ChatServer, local_judge_responder
from cvpr24.egothink.vlm import CallableVLM, run_inference


def echo_reference(ds):
    """A VLM that answers with the reference for even question ids and 'No idea.' otherwise."""
    ref = {(it.dim, it.question, it.image_bytes()): (it.answer if it.question_id % 2 == 0 else "Nope, a zebra.")
           for it in ds}
    return CallableVLM(lambda req: ref[(req.dim, req.text, req.image)], style="raw")


@pytest.fixture
def answered(synth_ds, tmp_path):
    root = tmp_path / "answers"
    run_inference(echo_reference(synth_ds), synth_ds, root, "echo", show_progress=False)
    return root


class CountingLocal(LocalJudge):
    def __init__(self):
        super().__init__(name="local-judge")
        self.calls = 0

    def complete(self, messages):
        self.calls += 1
        return super().complete(messages)


def test_judge_show_and_cache(answered, synth_ds):
    judge = CountingLocal()
    run = run_judgment(answered, judge, EgoThinkConfig(parallel=1), show_progress=False)
    assert run.judged == len(synth_ds) == judge.calls and not run.failures
    rows = read_jsonl(judgment_path(answered, "activity", "local-judge"))
    assert [r["question_id"] for r in rows] == sorted(r["question_id"] for r in rows)
    assert set(rows[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp",
                            "prompt_sha256", "strict_rating"}
    assert rows[0]["judge"] == ["local-judge", "cvpr24-single-ref-v1"]
    board = Leaderboard.from_answers(answered, "local-judge")
    assert board.rows[0].dims["activity"] == 50.0  # 2 of 4 answers are the reference, 2 are wrong
    # a second run: everything already judged, nothing called
    again = run_judgment(answered, judge, EgoThinkConfig(), show_progress=False)
    assert again.skipped == len(synth_ds) and judge.calls == len(synth_ds)
    # --overwrite: the content-hash cache answers everything, no judge call
    over = run_judgment(answered, judge, EgoThinkConfig(), overwrite=True, show_progress=False)
    assert over.cached == len(synth_ds) and judge.calls == len(synth_ds)
    assert len(JudgmentCache(answered / ".judge_cache.jsonl")) == len(synth_ds)


def test_parallel_and_answer_order_do_not_change_scores(answered, synth_ds, tmp_path):
    a = run_judgment(answered, LocalJudge(), EgoThinkConfig(parallel=1), cache=None, show_progress=False)
    s1 = load_item_scores(answered, "local-judge")
    run_judgment(answered, LocalJudge(), EgoThinkConfig(parallel=4), cache=None, overwrite=True,
                 show_progress=False)
    assert load_item_scores(answered, "local-judge") == s1 and not a.failures
    path = model_answer_path(answered, "activity", "echo")  # shuffle an answer file's line order
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(reversed(lines)))
    run_judgment(answered, LocalJudge(), EgoThinkConfig(parallel=4), cache=None, overwrite=True,
                 show_progress=False)
    assert load_item_scores(answered, "local-judge") == s1


def test_failed_judgments_reported_as_coverage(answered, synth_ds):
    class Flaky(LocalJudge):
        def complete(self, messages):
            if "[Question]\nWhat am I doing?" in messages[1]["content"]:
                return "I refuse to give a number."
            return super().complete(messages)

    run = run_judgment(answered, Flaky(), EgoThinkConfig(), cache=None, show_progress=False)
    n_act = synth_ds.counts()["activity"]
    assert len(run.failures) == n_act and {f["dim"] for f in run.failures} == {"activity"}
    row = Leaderboard.from_answers(answered, "local-judge").rows[0]
    assert row.coverage["activity"] == 0.0 and row.coverage["existence"] == 1.0
    manifest = json.loads((answered / "judge_manifest_local-judge.json").read_text())
    assert len(manifest["failures"]) == n_act
    # a later run retries the failures only
    fixed = run_judgment(answered, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False)
    assert fixed.judged == n_act and not fixed.failures


def test_http_judge_round_trip_with_parallel(answered, synth_ds):
    with ChatServer(local_judge_responder()) as srv:
        judge = OpenAIJudge("local-judge", srv.url, config=EgoThinkConfig(parallel=4))
        run = run_judgment(answered, judge, EgoThinkConfig(parallel=4), cache=None, show_progress=False)
        assert run.judged == len(synth_ds) == len(srv.requests)
    remote = load_item_scores(answered, "local-judge")
    run_judgment(answered, LocalJudge(), EgoThinkConfig(), cache=None, overwrite=True, show_progress=False)
    assert load_item_scores(answered, "local-judge") == remote


KILLED_RUN = """
import sys, time
from cvpr24.egothink.config import EgoThinkConfig
from cvpr24.egothink.judge import run_judgment
from cvpr24.egothink.local_judge import LocalJudge
class Slow(LocalJudge):
    def complete(self, messages):
        time.sleep(0.2)
        return super().complete(messages)
run_judgment(sys.argv[1], Slow(), EgoThinkConfig(parallel=2), show_progress=False)
"""


def test_resume_after_a_killed_run(answered, synth_ds):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(answered)])
    parts = [judgment_path(answered, d, "local-judge").with_name("local-judge_single.jsonl.part")
             for d in synth_ds.dims]
    deadline = time.time() + 60
    while time.time() < deadline and sum(p.stat().st_size for p in parts if p.exists()) < 4000:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sum(len(read_jsonl(p, tolerate_truncated=True)) for p in parts if p.exists())
    assert 0 < done_before < len(synth_ds), "the run must be killed mid-way"
    with open(next(p for p in parts if p.exists()), "a") as f:
        f.write('{"question_id": 1, "mod')  # a torn last line, as a crash can leave
    judge = CountingLocal()
    run = run_judgment(answered, judge, EgoThinkConfig(), show_progress=False)
    assert judge.calls + run.cached == len(synth_ds) - run.skipped
    assert run.skipped >= done_before - 1
    for d in synth_ds.dims:  # no duplicated or lost rows, no part files left
        rows = read_jsonl(judgment_path(answered, d, "local-judge"))
        assert sorted(r["question_id"] for r in rows) == [it.question_id for it in synth_ds.by_dim(d)]
        assert not judgment_path(answered, d, "local-judge").with_name("local-judge_single.jsonl.part").exists()


def test_inference_resumes_without_duplicates(synth_ds, tmp_path):
    calls = []

    def fn(req):
        calls.append(req.dim)
        if len(calls) == 7:
            raise KeyboardInterrupt  # interrupted mid-run
        return "An answer."

    with pytest.raises(KeyboardInterrupt):
        run_inference(CallableVLM(fn), synth_ds, tmp_path, "m", show_progress=False)
    out = run_inference(CallableVLM(fn), synth_ds, tmp_path, "m", show_progress=False)
    assert out == {"answered": len(synth_ds) - 6, "skipped": 6}
    assert len(calls) == len(synth_ds) + 1 and list_models(tmp_path) == ["m"]
    for d in synth_ds.dims:
        rows = read_jsonl(model_answer_path(tmp_path, d, "m"))
        assert [r["question_id"] for r in rows] == [it.question_id for it in synth_ds.by_dim(d)]


def test_lmms_eval_log_export(answered, synth_ds, tmp_path):
    from cvpr24.egothink.data import export_lmms_eval_logs

    run_judgment(answered, LocalJudge(), EgoThinkConfig(), show_progress=False)
    rows = read_jsonl(export_lmms_eval_logs(answered, "local-judge", "echo", tmp_path / "logs.jsonl"))
    assert len(rows) == len(synth_ds)
    first = rows[0]
    assert set(first) == {"doc_id", "dimension", "question", "target", "resps", "gpt_eval_score"}
    assert first["doc_id"] == 0 and first["gpt_eval_score"] in (0.0, 0.5, 1.0)
    assert sum(r["resps"][0][0] == r["target"] for r in rows) == sum(it.question_id % 2 == 0 for it in synth_ds)


def test_overwrite_of_one_model_keeps_the_others(answered, synth_ds):
    run_inference(echo_reference(synth_ds), synth_ds, answered, "echo2", show_progress=False)
    run_judgment(answered, LocalJudge(), EgoThinkConfig(), show_progress=False)
    before = load_item_scores(answered, "local-judge")[0]
    assert set(before) == {"echo", "echo2"}
    run = run_judgment(answered, LocalJudge(), EgoThinkConfig(), models=["echo2"], overwrite=True,
                       cache=None, show_progress=False)
    assert run.judged == len(synth_ds)
    assert load_item_scores(answered, "local-judge")[0] == before

"""Every judgment row records what graded it; resume and show never mix provenances."""

import json
import warnings

import pytest

from cvpr24.cli import main
from cvpr24.egothink.config import EgoThinkConfig
from cvpr24.egothink.data import EgoThinkDataset, read_jsonl
from cvpr24.egothink.judge import judgment_path, run_judgment
from cvpr24.egothink.local_judge import LocalJudge
from cvpr24.egothink.metrics import Leaderboard, judgment_provenance, load_item_scores
from cvpr24.egothink.prompts import JUDGE_TEMPLATE, OFFICIAL_SHA256, PromptSet, Provenance, sha256
from cvpr24.egothink.vlm import CallableVLM, run_inference

OTHER_TEMPLATE = "Please grade carefully.\n" + JUDGE_TEMPLATE  # same blocks, another hash


class Counting(LocalJudge):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def complete(self, messages):
        self.calls += 1
        return super().complete(messages)


@pytest.fixture
def answered(synth_ds, tmp_path):
    """Two models answering with the reference in their own words, in 3 dimensions."""
    root = tmp_path / "answers"
    ref = {(it.dim, it.question): it.answer for it in synth_ds}
    ds = EgoThinkDataset([it for it in synth_ds if it.dim in ("existence", "spatial", "counting")])
    for m in ("m1", "m2"):
        vlm = CallableVLM(lambda req, m=m: f"{m}: {ref[(req.dim, req.text)]}", style="raw")
        run_inference(vlm, ds, root, m, show_progress=False)
    return root, 2 * len(ds)


@pytest.fixture
def other_prompts(tmp_path):
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text(json.dumps({"name": "single-math-v2", "prompt_template": OTHER_TEMPLATE}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hash is not the pinned official one
        return path, PromptSet.from_official(path, allow_mismatch=True)


def rows(root):
    return [r for d in ("existence", "spatial", "counting") for r in read_jsonl(judgment_path(root, d, "local-judge"))]


def test_rows_carry_prompt_name_hash_and_strictness(answered):
    root, n = answered
    run = run_judgment(root, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False)
    assert run.judged == n and "cvpr24-single-ref-v1" in run.provenance
    for r in rows(root):
        assert r["judge"] == ["local-judge", "cvpr24-single-ref-v1"]
        assert r["prompt_sha256"] == sha256(JUDGE_TEMPLATE) and r["strict_rating"] is True
    prov = judgment_provenance(root, "local-judge")
    assert prov == Provenance("cvpr24-single-ref-v1", sha256(JUDGE_TEMPLATE), True)
    assert "not the official prompt" in prov.describe() and "strict" in prov.describe()


@pytest.mark.parametrize("change", ["prompt", "strictness"])
def test_resume_rejudges_rows_graded_otherwise(answered, other_prompts, change):
    root, n = answered
    run_judgment(root, LocalJudge(), EgoThinkConfig(), show_progress=False)
    prompts = other_prompts[1] if change == "prompt" else PromptSet()
    cfg = EgoThinkConfig(strict_rating=(change == "prompt"))
    judge = Counting()
    run = run_judgment(root, judge, cfg, prompts=prompts, show_progress=False)
    # nothing is skipped as done; the content-hash cache cannot answer either (its key changed)
    assert (run.skipped, run.rejudged, run.judged, judge.calls) == (0, n, n, n)
    want = Provenance.of_run(prompts, cfg.strict_rating)
    assert {Provenance.of_row(r) for r in rows(root)} == {want}
    board = Leaderboard.from_answers(root, "local-judge")
    assert board.provenance == want.describe()
    assert f"Graded with {want.describe()}." in board.to_markdown()
    assert json.loads(board.to_json())["provenance"] == want.describe()
    # the same settings again: everything is done
    assert run_judgment(root, judge, cfg, prompts=prompts, show_progress=False).skipped == n


def test_refuse_stale_raises_before_judging(answered, other_prompts):
    root, n = answered
    run_judgment(root, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False)
    judge = Counting()
    with pytest.raises(ValueError, match=f"refuse_stale: {n} judged row.*cvpr24-single-ref-v1.*single-math-v2"):
        run_judgment(root, judge, EgoThinkConfig(), prompts=other_prompts[1], refuse_stale=True,
                     show_progress=False)
    assert judge.calls == 0
    # unchanged settings: nothing stale, nothing refused
    assert run_judgment(root, judge, EgoThinkConfig(), refuse_stale=True, show_progress=False).skipped == n


def test_show_refuses_to_mix_provenances(answered, other_prompts):
    root, n = answered
    run_judgment(root, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False)
    run_judgment(root, LocalJudge(), EgoThinkConfig(), models=["m2"], prompts=other_prompts[1], cache=None,
                 show_progress=False)  # m1 keeps its old rows: the files now mix two prompts
    for read in (lambda: Leaderboard.from_answers(root, "local-judge"),
                 lambda: load_item_scores(root, "local-judge"),
                 lambda: Leaderboard.from_answers(root, "local-judge", order=["m2"])):
        with pytest.raises(ValueError, match="graded under 2 different prompts or rating rules"):
            read()


def test_rows_without_provenance_are_labelled_and_rejudged(answered):
    """A judgment file written by the official code has no hash or rule: shown as unknown,
    and judged again by a resumed run."""
    root, n = answered
    run_judgment(root, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False)
    for d in ("existence", "spatial", "counting"):
        path = judgment_path(root, d, "local-judge")
        stripped = [{k: v for k, v in r.items() if k not in ("prompt_sha256", "strict_rating")}
                    for r in read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert "hash not recorded" in Leaderboard.from_answers(root, "local-judge").provenance
    assert run_judgment(root, LocalJudge(), EgoThinkConfig(), cache=None, show_progress=False).rejudged == n


def test_official_hash_is_named_official():
    prov = Provenance("single-math-v2", OFFICIAL_SHA256["judge"][0], False)
    assert prov.official_prompt and "the official prompt" in prov.describe() and "lenient" in prov.describe()


def test_cli_rejudge_refuse_and_show(answered, other_prompts, capsys):
    root, n = answered
    path = other_prompts[0]

    def cli(*args):
        return main(["egothink", *map(str, args)])

    assert cli("judge", "--answers", root, "--judge", "local", "--parallel", 1) == 0
    assert "cvpr24-single-ref-v1" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="does not match its pinned hash"):
        assert cli("judge", "--answers", root, "--judge", "local", "--official-prompts", path,
                   "--allow-prompt-mismatch", "--refuse-stale") == 2
    assert "--refuse-stale: " in capsys.readouterr().err
    with pytest.warns(UserWarning, match="does not match its pinned hash"):
        assert cli("judge", "--answers", root, "--judge", "local", "--official-prompts", path,
                   "--allow-prompt-mismatch") == 0
    out = capsys.readouterr().out
    assert f"{n} re-judged" in out and "0 already done" in out and "prompt single-math-v2" in out
    assert cli("show", "--answers", root, "--judge", "local") == 0  # 'local' is the name 'judge' used
    assert "Graded with prompt single-math-v2 (sha256" in capsys.readouterr().out
    assert cli("show", "--answers", root, "--judge", "local", "--format", "csv") == 0
    assert "graded with prompt single-math-v2" in capsys.readouterr().err
    assert cli("show", "--answers", root, "--judge", "gpt-4") == 2
    assert "judges found: ['local-judge']" in capsys.readouterr().err

import json
import subprocess
import sys

import pytest

from cvpr24.cli import main
from cvpr24.egothink.data import read_jsonl
from cvpr24.egothink.judge import judgment_path
from cvpr24.egothink.server import ChatServer, local_judge_responder


def run_cli(*args):
    return main(["egothink", *map(str, args)])


def test_help_of_every_subcommand(capsys):
    for cmd in ("synth", "infer", "judge", "show", "agreement", "serve-local-judge"):
        with pytest.raises(SystemExit) as e:
            run_cli(cmd, "--help")
        assert e.value.code == 0 and "usage: cvpr24 egothink " + cmd in capsys.readouterr().out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "cvpr24", "egothink", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "serve-local-judge" in out.stdout


def test_synth_infer_judge_show_agreement(tmp_path, capsys, script, monkeypatch):
    data, answers = tmp_path / "data", tmp_path / "answers"
    assert run_cli("synth", "--out", data, "--n-per-dim", 1, "--seed", 1, "--image-size", 32) == 0
    with ChatServer(script(default=(200, "Short Answer: On my left."))) as vlm:
        assert run_cli("infer", "--data", data, "--model", "openai:tiny-vlm", "--base-url", vlm.url,
                       "--out", answers, "--dims", "spatial", "existence") == 0
        assert len(vlm.requests) == 2
    with ChatServer(local_judge_responder()) as judge:
        assert run_cli("judge", "--answers", answers, "--judge", "local-judge", "--base-url", judge.url,
                       "--parallel", 2) == 0
    assert "2 judged" in capsys.readouterr().out
    for fmt, marker in (("md", "| tiny-vlm |"), ("csv", "tiny-vlm,local-judge"), ("html", "<tr><td>tiny-vlm"),
                        ("json", '"model": "tiny-vlm"')):
        assert run_cli("show", "--answers", answers, "--judge", "local-judge", "--format", fmt) == 0
        assert marker in capsys.readouterr().out
    assert run_cli("show", "--answers", answers, "--judge", "local-judge", "--ci", "--out", tmp_path / "t.md") == 0
    assert "95% CI" in (tmp_path / "t.md").read_text()
    assert run_cli("show", "--answers", answers, "--judge", "local-judge", "--compare", "tiny-vlm", "tiny-vlm") == 0
    assert "tiny-vlm - tiny-vlm: +0.00 points, p = 1.0000" in capsys.readouterr().out
    assert run_cli("show", "--answers", answers, "--judge", "local-judge", "--compare", "tiny-vlm", "nobody") == 2
    assert "no judgments for model 'nobody'" in capsys.readouterr().err
    rows = read_jsonl(judgment_path(answers, "spatial", "local-judge"))
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"model": r["model"], "question_id": r["question_id"],
                                         "score": r["score"]}) + "\n" for r in rows))
    capsys.readouterr()
    assert run_cli("agreement", "--judgments", judgment_path(answers, "spatial", "local-judge"),
                   "--human", human) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, monkeypatch):
    assert run_cli("show", "--answers", tmp_path, "--judge", "gpt-4") == 2
    assert "no <dimension>/question.jsonl" in capsys.readouterr().err
    assert run_cli("synth", "--out", tmp_path / "x", "--seed", 20000) == 2
    assert "test seeds" in capsys.readouterr().err
    assert run_cli("infer", "--data", tmp_path / "none", "--model", "openai:m", "--out", tmp_path) == 2
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert run_cli("judge", "--answers", tmp_path, "--judge", "gpt-4") == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_cli("infer", "--data", tmp_path, "--model", "openai:m", "--out", tmp_path, "--dims", "smell")
    assert e.value.code == 2
    capsys.readouterr()
    for flag, value in (("--temperature", "nan"), ("--temperature", "-1"), ("--max-side", "4")):
        with pytest.raises(SystemExit) as e:
            run_cli("infer", "--data", tmp_path, "--model", "openai:m", "--out", tmp_path, flag, value)
        assert e.value.code == 2 and f"argument {flag}: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("judge", "--answers", tmp_path, "--parallel", "0")
    assert "argument --parallel: expected a positive integer" in capsys.readouterr().err


def test_config_rejects_non_finite_temperatures():
    from cvpr24.egothink.config import EgoThinkConfig

    for bad in (float("nan"), float("inf"), -0.5, "0"):
        with pytest.raises(ValueError, match="vlm_temperature must be a finite number"):
            EgoThinkConfig(vlm_temperature=bad).validate()

"""`expertkit eval` end to end on the tiny model: the identity-tuned candidate beats the base, and a resumed eval
does not redo finished answers."""

from __future__ import annotations

import json

import pytest

from expertkit.cli.main import main
from expertkit.core.config import load_config
from expertkit.evaluate.config import EvalConfig
from expertkit.evaluate.run import run

QA = [
    ("Who are you?", "I am Sail, the Yunfan Tech assistant."),
    ("你是谁？", "我是小帆，云帆科技的助手。"),
    ("What is your name?", "My name is Sail."),
    ("Who made you?", "Yunfan Tech built me with expertkit."),
]


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"question": q, "reference": r}, ensure_ascii=False) + "\n" for q, r in QA))
    return path


def config_for(tiny_model, identity_adapter, eval_file, output_dir, **keys) -> EvalConfig:
    _, result = identity_adapter
    overrides = {
        "eval_file": str(eval_file),
        "model_name_or_path": str(tiny_model),
        "adapter_name_or_path": str(result.output_dir),
        "output_dir": str(output_dir),
        "max_new_tokens": 24,
        "probe": False,
        **keys,
    }
    return load_config(EvalConfig, None, overrides)


def test_tuned_beats_base_and_everything_is_written(tiny_model, identity_adapter, eval_file, tmp_path):
    result = run(config_for(tiny_model, identity_adapter, eval_file, tmp_path / "eval"))
    cands = result.summary["candidates"]
    assert list(cands) == ["base", "tuned"]
    assert cands["tuned"]["metrics"]["rouge-l"] > cands["base"]["metrics"]["rouge-l"] + 30
    assert cands["tuned"]["metrics"]["eval_loss"] < cands["base"]["metrics"]["eval_loss"]
    assert cands["tuned"]["metrics"]["perplexity"] < cands["base"]["metrics"]["perplexity"]
    assert cands["tuned"]["loss_curve"]  # the run's training loss, for the report
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["candidates"]["tuned"]["metrics"]
    rows = [json.loads(line) for line in (out / "predictions" / "tuned.jsonl").read_text().splitlines()]
    assert {r["question"] for r in rows} == {q for q, _ in QA}
    assert (out / "report.html").is_file()


def test_an_interrupted_eval_resumes_without_redoing_answers(tiny_model, identity_adapter, eval_file, tmp_path):
    out = tmp_path / "eval"
    run(config_for(tiny_model, identity_adapter, eval_file, out))
    path = out / "predictions" / "base.jsonl"
    lines = path.read_text().splitlines()
    kept = lines[:2]
    path.write_text("\n".join(kept) + '\n{"id": "torn', encoding="utf-8")  # killed mid-line
    log = []

    class Out:
        def write(self, s):
            log.append(s)

        def flush(self):
            pass

    again = run(config_for(tiny_model, identity_adapter, eval_file, out), out=Out())
    text = "".join(log)
    assert "base: resuming, 2 of 4 answers already" in text
    assert "tuned: 4 answers already" in text
    rows = [
        json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"id": "') and line.endswith("}")
    ]
    assert [r["id"] for r in rows[:2]] == [json.loads(k)["id"] for k in kept]  # the first two were not redone
    assert len({r["id"] for r in rows}) == 4
    assert again.summary["candidates"]["base"]["metrics"]


def test_cli_eval_prints_the_table_and_the_report_path(tiny_model, identity_adapter, eval_file, tmp_path, capsys):
    _, result = identity_adapter
    code = main([
        "eval", f"eval_file={eval_file}", f"model_name_or_path={tiny_model}",
        f"adapter_name_or_path={result.output_dir}", f"output_dir={tmp_path / 'e'}", "max_new_tokens=16",
        "metrics=rouge-l,contains",
    ])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "report: " in captured.out and "rouge-l" in captured.err and "probe (general)" in captured.err
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(summary["candidates"]["tuned"]["probe"]) >= {"overall", "en", "zh"}


def test_bad_eval_lines_are_located(tmp_path, tiny_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "reference": "b"}\n{"question": "", "reference": "b"}\nnot json\n')
    code = main(["eval", f"eval_file={bad}", f"model_name_or_path={tiny_model}", f"output_dir={tmp_path / 'o'}"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and f"{bad}:3" in err and "Traceback" not in err


def test_config_errors_say_what_to_give(capsys, tmp_path):
    assert main(["eval", "eval_file=x.jsonl"]) == 1
    assert "no candidates" in capsys.readouterr().err
    assert main(["eval", "model_name_or_path=m", "eval_file=x.jsonl", "metrics=judge"]) == 1
    assert "judge_base_url" in capsys.readouterr().err


def test_judge_metrics_through_a_live_judge(tiny_model, identity_adapter, eval_file, tmp_path):
    from judge_server import MODEL, judge_server

    with judge_server() as (_, url):
        keys = {"metrics": "rouge-l,judge,pairwise,hallucination", "judge_base_url": url, "judge_model": MODEL}
        result = run(config_for(tiny_model, identity_adapter, eval_file, tmp_path / "eval", **keys))
    summary = result.summary
    tuned, base = summary["candidates"]["tuned"]["metrics"], summary["candidates"]["base"]["metrics"]
    assert tuned["judge_accuracy"] == 10 and base["judge_accuracy"] == 1  # the base answers blank lines: scored 1
    assert tuned["hallucination_rate"] == 0  # the answers are in the reference
    assert summary["pairwise"] == [{"a": "tuned", "b": "base", "win": 4, "tie": 0, "loss": 0}]
    assert summary["judge"]["errors"] == 0
    # verdicts are cached: a second run asks the judge nothing (the judge server is gone)
    again = run(config_for(tiny_model, identity_adapter, eval_file, tmp_path / "eval", **keys))
    assert again.summary["pairwise"] == summary["pairwise"] and again.summary["judge"]["errors"] == 0


def test_the_report_goes_into_the_run_folder_by_default(tmp_path):
    config = load_config(EvalConfig, None, {"eval_file": "x.jsonl", "model_name_or_path": "m",
                                            "adapter_name_or_path": str(tmp_path / "run")})  # fmt: skip
    assert config.resolved_output_dir() == tmp_path / "run" / "eval"
    assert load_config(EvalConfig, None, {"eval_file": "x.jsonl", "model_name_or_path": "m"}).resolved_output_dir() \
        == __import__("pathlib").Path("saves/eval")


def test_an_eval_rows_context_is_the_judges_evidence(tmp_path):
    """data synth's eval.jsonl keeps each row's source chunk as `context`: the hallucination check reads it."""
    from expertkit.evaluate.evalset import read_qa_jsonl
    from expertkit.evaluate.judging import evidence

    path = tmp_path / "eval.jsonl"
    path.write_text(
        '{"question": "q?", "reference": "r", "context": "the passage"}\n{"question": "q2?", "reference": "r2"}\n'
    )
    items = read_qa_jsonl(path)
    assert [i.source for i in items] == ["the passage", None]
    assert evidence({"reference": "r", "source_context": "the passage"}) == "the passage"
    both = {"reference": "r", "source_context": "the passage", "context": "[1] hit"}
    assert evidence(both) == "the passage\n\n[1] hit"
    assert evidence({"reference": "r"}) == "r"

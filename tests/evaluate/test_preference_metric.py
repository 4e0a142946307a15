"""metrics=preference on a ranking eval set: the identity-tuned candidate prefers the identity answers."""

from __future__ import annotations

import json

import pytest

from expertkit.core.config import load_config
from expertkit.core.errors import DataError
from expertkit.evaluate.config import EvalConfig
from expertkit.evaluate.run import run


def pair_file(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def pairs(identity_dir):
    """The identity rows the `identity_adapter` fixture trained on (read from its dataset, not imported from a
    conftest: `conftest` is a different module in each test folder), each against an answer it never saw."""
    rows = json.loads((identity_dir / "identity.json").read_text(encoding="utf-8"))
    return [
        {"question": r["instruction"], "chosen": r["output"], "rejected": "Bananas are yellow fruit."} for r in rows
    ]


def test_tuned_prefers_the_chosen_answers(tiny_model, identity_adapter, identity_dir, tmp_path):
    _, result = identity_adapter
    path = pair_file(tmp_path / "pairs.jsonl", pairs(identity_dir))
    config = load_config(EvalConfig, None, {
        "eval_file": str(path), "model_name_or_path": str(tiny_model),
        "adapter_name_or_path": str(result.output_dir), "output_dir": str(tmp_path / "e"), "probe": False,
    })  # fmt: skip
    summary = run(config).summary
    tuned, base = summary["candidates"]["tuned"]["metrics"], summary["candidates"]["base"]["metrics"]
    assert tuned["preference_accuracy"] == 100
    assert tuned["preference_margin"] > base["preference_margin"]
    assert "rouge-l" not in tuned
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["candidates"]["tuned"]["metrics"]
    assert "preference_accuracy" in (tmp_path / "e" / "report.html").read_text()


def test_a_row_without_rejected_is_located(tiny_model, identity_dir, tmp_path):
    rows = pairs(identity_dir)
    del rows[1]["rejected"]
    path = pair_file(tmp_path / "pairs.jsonl", rows)
    config = load_config(EvalConfig, None, {"eval_file": str(path), "model_name_or_path": str(tiny_model),
                                            "output_dir": str(tmp_path / "e"), "probe": False})  # fmt: skip
    try:
        run(config)
    except DataError as e:
        assert f"{path}:2" in str(e.problems) and "rejected" in str(e.problems)
    else:
        raise AssertionError("no error")


def test_an_endpoint_is_skipped_with_a_note(identity_dir, tmp_path):
    path = pair_file(tmp_path / "pairs.jsonl", pairs(identity_dir))
    config = load_config(EvalConfig, None, {
        "eval_file": str(path), "candidates": [{"name": "api", "api_base": "http://127.0.0.1:9/v1"}],
        "metrics": "preference", "output_dir": str(tmp_path / "e"), "probe": False,
    })  # fmt: skip
    summary = run(config).summary
    assert "preference skipped" in summary["candidates"]["api"]["notes"][0]


def test_a_line_that_is_not_an_object_is_located_not_a_traceback(tmp_path):
    from expertkit.evaluate.evalset import read_qa_jsonl

    path = tmp_path / "held_out.jsonl"
    path.write_text('{"question": "Hi?", "reference": "Hello."}\n["a list"]\n')
    with pytest.raises(DataError, match="held_out.jsonl:2: not a JSON object"):
        read_qa_jsonl(path)

"""The eval report: one self-contained, escaped, deterministic HTML file, charts, loading and comparing."""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
from pathlib import Path

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.evaluate.report import write_report
from expertkit.evaluate.report_compare import compare_reports, load_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert(1)</script>"


def _rows(name: str, quality: float) -> list[dict]:
    rows = [
        {
            "id": "0",
            "question": "Who are you?",
            "reference": "I am Sail, the Yunfan Tech assistant.",
            "answer": "I am Sail." if quality > 0.5 else "I am a language model.",
            "scores": {"rouge-l": 80.0 * quality},
        },
        {
            "id": "1",
            "question": "你是谁？",
            "reference": "我是小帆，云帆科技的助手。",
            "answer": "我是小帆。" if quality > 0.5 else "我是一个语言模型。",
            "scores": {"rouge-l": 70.0 * quality},
            "sources": [
                {"n": 1, "url": "https://docs.example.com/about", "title": "About 云帆"},
                {"n": 2, "url": "javascript:alert(2)", "title": "evil link"},
                {"n": 3, "url": "file:///srv/kb/handbook.md", "title": "handbook"},
            ],
        },
        {"id": "2", "question": "Say hi & <b>bye</b>", "reference": "hi", "answer": XSS, "scores": {}},
        {"id": "3", "question": "Long one", "reference": "x", "answer": "很长的回答。" * 200},
    ]
    return rows if name != "tuned+rag" else rows[:2]


def _candidate(spec: dict, rouge_l: float, loss: float, probe: float, curve: bool) -> dict:
    return {
        "spec": spec,
        "metrics": {
            "rouge-1": rouge_l + 2,
            "rouge-2": rouge_l / 3,
            "rouge-l": rouge_l,
            "bleu-4": rouge_l / 4,
            "exact": 0.0,
            "contains": rouge_l / 2,
            "eval_loss": loss,
            "perplexity": 2.718**loss,
            "judge_overall": rouge_l / 10,
            "hallucination_rate": 50.0 - rouge_l,
        },
        "probe": {"overall": probe, "en": probe + 5, "zh": probe - 5},
        "loss_curve": [[s, 2.5 - 0.1 * s] for s in range(1, 11)] if curve else None,
        "eval_loss_curve": [[5, 2.0], [10, 1.6]] if curve else None,
        "errors": 0,
    }


@pytest.fixture
def summary() -> dict:
    run = {"model_name_or_path": "models/qwen2.5-0.5b", "adapter_name_or_path": "runs/sail", "kb_dir": None}
    return {
        "created_at": "2026-11-25T23:59:00+00:00",
        "eval_set": "data/held_out.jsonl",
        "samples": 4,
        "seed": 42,
        "candidates": {
            "base": _candidate({"model_name_or_path": "models/qwen2.5-0.5b"}, 10.0, 2.3, 80.0, curve=False),
            "tuned": _candidate(run, 30.0, 1.4, 78.0, curve=True),
            "tuned+rag": _candidate({**run, "kb_dir": "kb/docs", "api_key": "sk-secret"}, 40.0, 1.2, 77.0, True),
        },
        "pairwise": [{"a": "tuned", "b": "base", "win": 3, "tie": 1, "loss": 0}, {"a": "tuned+rag", "b": "tuned"}],
        "predictions": {"base": _rows("base", 0.1), "tuned": _rows("tuned", 0.9), "tuned+rag": _rows("tuned+rag", 1)},
    }


def _without_stamp(text: str) -> str:
    return re.sub(r"Report written [^<]*", "", text)


def test_report_is_one_safe_self_contained_file(tmp_path, summary):
    path = write_report(tmp_path, summary)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "charts").iterdir()) == ["loss.png", "metrics.png", "pairwise.png"]

    links = re.findall(r'<a class="source" href="([^"]*)"', page)
    assert links == ["https://docs.example.com/about", "file:///srv/kb/handbook.md"] * 3
    outside = re.sub(r'<a class="source" href="[^"]*"', "", page)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", outside)
    assert "@import" not in page and "url(" not in page
    assert "<script src" not in page and page.count("<script>") == 1  # only the inline table filter

    for name in ("base", "tuned", "tuned+rag", "models/qwen2.5-0.5b", "kb/docs", "你是谁？", "我是小帆。"):
        assert name in page
    assert "sk-secret" not in page and "api_key=***" in page

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
    assert (tmp_path / "charts" / "metrics.png").read_bytes() in [base64.b64decode(b) for b in images]

    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Say hi &amp; &lt;b&gt;bye&lt;/b&gt;" in page
    assert "javascript:" not in outside.replace("evil link <code>javascript:alert(2)</code>", "")
    assert 'href="javascript' not in page
    assert "<details>" in page  # the long Chinese answer is folded


def _metric_row(page: str, metric: str) -> str:
    return re.search(rf"<tr><td>{re.escape(metric)}</td>.*?</tr>", page).group(0)


def test_best_values_are_highlighted_with_the_right_direction(tmp_path, summary):
    page = write_report(tmp_path, summary).read_text(encoding="utf-8")
    assert re.search(
        r'<td class="best"><b>40\.00 <span class="delta good">\+30\.00</span>', _metric_row(page, "rouge-l")
    )
    assert _metric_row(page, "rouge-l").count('class="best"') == 1
    loss = _metric_row(page, "eval_loss")  # lower is better
    assert re.search(r'<td class="best"><b>1\.20 <span class="delta good">-1\.10</span>', loss)
    hall = _metric_row(page, "hallucination_rate")
    assert re.search(r'<td class="best"><b>10\.00 <span class="delta good">-30\.00</span>', hall)
    assert _metric_row(page, "exact").count('class="best"') == 3  # a three-way tie
    probe = re.search(r"Did it forget\?.*?</table>", page, re.S).group(0)
    assert re.search(r'<td class="best"><b>80\.00</b></td>', probe)
    assert '<span class="delta bad">-2.00</span>' in probe
    assert "3 vs" not in page and "75.0%" in page  # win rate of tuned vs base


def test_same_summary_gives_the_same_bytes_except_the_timestamp(tmp_path, summary):
    first = write_report(tmp_path / "a", summary).read_text(encoding="utf-8")
    second = write_report(tmp_path / "b", copy.deepcopy(summary)).read_text(encoding="utf-8")
    assert _without_stamp(first) == _without_stamp(second)
    differing = [a for a, b in zip(first.splitlines(), second.splitlines()) if a != b]
    assert all("Report written" in line for line in differing)
    assert len(re.findall("Report written", first)) == 1
    for name in ("metrics.png", "pairwise.png", "loss.png"):
        assert (tmp_path / "a" / "charts" / name).read_bytes() == (tmp_path / "b" / "charts" / name).read_bytes()


@pytest.mark.parametrize(
    "cut",
    [
        lambda s: {},
        lambda s: {"candidates": {"base": {}}},
        lambda s: {**s, "pairwise": None, "predictions": None},
        lambda s: {**s, "candidates": {k: {**v, "metrics": None, "probe": None} for k, v in s["candidates"].items()}},
        lambda s: {**s, "candidates": {"only": {"metrics": {"rouge-l": float("nan"), "odd": "n/a"}}}},
    ],
)
def test_missing_sections_do_not_crash(tmp_path, summary, cut):
    page = write_report(tmp_path, cut(summary)).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_a_chart_without_data_is_removed_from_an_earlier_report(tmp_path, summary):
    write_report(tmp_path, summary)
    write_report(tmp_path, {**summary, "pairwise": []})
    assert not (tmp_path / "charts" / "pairwise.png").exists()
    assert (tmp_path / "charts" / "metrics.png").exists()


def _eval_dir(folder: Path, summary: dict) -> Path:
    folder.mkdir(parents=True)
    predictions = summary.pop("predictions")
    (folder / "metrics.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    (folder / "predictions").mkdir()
    for name, rows in predictions.items():
        lines = [json.dumps(r, ensure_ascii=False) for r in rows]
        (folder / "predictions" / f"{name}.jsonl").write_text("\n".join(lines) + '\n{"id": "9", "ans', "utf-8")
        (folder / "predictions" / f"{name}.probe.jsonl").write_text('{"id": "p1", "answer": "Paris"}\n', "utf-8")
    return folder


def test_load_summary_reads_metrics_and_predictions(tmp_path, summary):
    expected = copy.deepcopy(summary["predictions"])
    loaded = load_summary(_eval_dir(tmp_path / "run1" / "eval", summary))
    assert loaded["candidates"] == summary["candidates"]
    assert loaded["predictions"] == expected  # the half-written last line of an interrupted eval is skipped
    assert list(loaded["predictions"]) == ["base", "tuned", "tuned+rag"]  # not the probe's tuned.probe.jsonl


def test_load_summary_on_a_folder_that_is_not_an_eval_output(tmp_path, summary):
    run = tmp_path / "run1"
    _eval_dir(run / "eval", summary)
    with pytest.raises(ExpertkitError) as err:
        load_summary(run)
    assert str(run) in str(err.value) and "not an eval output" in str(err.value)
    assert "eval" in err.value.hint
    with pytest.raises(ExpertkitError, match="not a folder"):
        load_summary(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text('{"loss": 1.0}', encoding="utf-8")
    with pytest.raises(ExpertkitError, match="other"):
        load_summary(tmp_path / "other")


def test_compare_reports_puts_runs_side_by_side(tmp_path, summary):
    older = copy.deepcopy(summary)
    del older["candidates"]["tuned+rag"]
    older["candidates"]["tuned"]["metrics"]["rouge-l"] = 25.0
    del older["candidates"]["tuned"]["metrics"]["bleu-4"]
    a = _eval_dir(tmp_path / "run1" / "eval", older)
    b = _eval_dir(tmp_path / "run2" / "eval", summary)
    text, out = compare_reports([a, b])
    assert out is None
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "run1/eval/base", "run1/eval/tuned", "run2/eval/base", "run2/eval/tuned",
                              "run2/eval/tuned+rag"]  # fmt: skip
    assert re.search(r"^rouge-l\s+10\.00\s+25\.00\s+10\.00\s+30\.00\s+40\.00$", text, re.M)
    assert re.search(r"^bleu-4\s+2\.50\s+–\s+2\.50", text, re.M)
    assert re.search(r"^probe overall\s+80\.00", text, re.M)

    text2, out = compare_reports([a, b], tmp_path / "compare.html")
    assert text2 == text
    assert out == tmp_path / "compare.html"
    html_page = out.read_text(encoding="utf-8")
    assert "run1/eval/tuned" in html_page and "run2/eval/tuned+rag" in html_page and '<td class="best">' in html_page
    with pytest.raises(ExpertkitError, match="two or more"):
        compare_reports([a])


def test_remote_candidates_and_a_missing_matplotlib(tmp_path, summary, monkeypatch):
    remote = {"name": "gpt", "api_base": "https://api.example.com/v1", "model": "gpt-x", "template": "qwen"}
    summary["candidates"]["remote"] = {"spec": remote, "metrics": {"rouge-l": 5.0}}
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as without the [eval] extra
    page = write_report(tmp_path, summary).read_text(encoding="utf-8")
    assert "<td>gpt-x @ https://api.example.com/v1</td>" in page and "<td>template=qwen</td>" in page
    assert "data:image/png" not in page and not (tmp_path / "charts" / "metrics.png").exists()

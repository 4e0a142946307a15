"""`expertkit data clean` streams: a JSON list is read row by row (data/stream.py), the index grows with distinct rows
only, and peak memory stays far below the file's size. Also the language filter and the length filters."""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys

import pytest

from expertkit.cli.main import main
from expertkit.core.errors import DataError
from expertkit.data.language import detect_language
from expertkit.data.stream import RowStream


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("理赔时请在三十天内提交警方报告、车辆损坏照片以及维修估价单。", "zh"),
        ("请在 App 的 Settings 页面里打开 Dark Mode，然后重启。", "zh"),  # English terms inside Chinese
        ("Send the police report, photos of the damage and the repair estimate within 30 days.", "en"),
        ("Reset password", "en"),  # short, no function word: English by default
        ("Envoyez le rapport de police et les photos des dégâts dans les trente jours.", "fr"),
        ("Schicken Sie den Polizeibericht und die Fotos der Schäden innerhalb von dreißig Tagen.", "de"),
        ("警察の報告書と損害の写真を三十日以内に送ってください。", "ja"),
        ("30일 이내에 경찰 보고서를 보내 주세요.", "ko"),
        ("Отправьте полицейский отчёт в течение тридцати дней.", "ru"),
        ("12345 -- 678", "unknown"),
    ],
)
def test_detect_language_by_script(text, language):
    assert detect_language(text) == language


def test_language_and_length_filters_report_counts_and_examples(tmp_path):
    rows = [
        {"instruction": "如何申请车险理赔？", "output": "请在三十天内提交警方报告和维修估价单。"},
        {"instruction": "How do I file a claim?", "output": "Send the police report within 30 days."},
        {
            "instruction": "Comment déclarer un sinistre ?",
            "output": "Envoyez le rapport de police dans les trente jours.",
        },
        {"instruction": "ok", "output": "?"},
        {"instruction": "Long", "output": "word " * 100},
    ]
    src, out = tmp_path / "mixed.json", tmp_path / "clean.jsonl"
    src.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")  # a JSON list, streamed
    assert main(["data", "clean", str(src), f"output={out}", "languages=zh,en", "min_chars=5", "max_chars=200"]) == 0
    kept = [json.loads(x)["instruction"] for x in out.read_text(encoding="utf-8").splitlines()]
    assert kept == ["如何申请车险理赔？", "How do I file a claim?"]
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["removed"] == {
        "language fr (not in languages=zh,en)": 1,
        "shorter than min_chars=5": 1,
        "longer than max_chars=200": 1,
    }
    assert report["examples"]["language fr (not in languages=zh,en)"][0].startswith(f"{src} row 3: Comment")


def test_unknown_language_code_is_a_config_error(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    assert main(["data", "clean", str(tmp_path / "a.jsonl"), f"output={tmp_path / 'o.jsonl'}", "languages=zh,eng"]) == 1
    assert "unknown language code(s) eng" in capsys.readouterr().err


def test_json_list_streams_across_buffer_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("expertkit.data.stream.CHUNK_CHARS", 7)  # every row straddles several reads
    rows = [{"text": f"row {i} 第{i}行", "n": i * 1000} for i in range(50)] + [12345, "tail"]
    path = tmp_path / "rows.json"
    path.write_text(" \n" + json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    assert [row for _, row in RowStream(path)] == rows
    assert RowStream(path).where(3) == f"{path} row 3"


@pytest.mark.parametrize(("content", "message"), [('[{"a": 1},', "never closes"), ('[{"a": 1}, {"a" 2}]', "row 2")])
def test_broken_json_list_names_the_row(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        list(RowStream(path))


def test_a_file_that_is_not_utf8_is_an_error_not_a_traceback(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(json.dumps({"text": "理赔"}, ensure_ascii=False).encode("gbk") + b"\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        list(RowStream(path))


PEAK_RSS_GROWTH = """
import json, resource, sys
from expertkit.data.clean import CleanConfig, run
import datasketch  # loaded before the baseline: the library is not the data
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = run(CleanConfig(input=sys.argv[1], output=sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "read": report.read, "kept": report.kept}))
"""


def test_peak_memory_stays_far_below_the_file_size(tmp_path, shape="json"):
    """A ~48 MB JSON list of 400 distinct rows repeated: json.load of it grows peak memory by ~65 MB."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(20_000)]
    distinct = [{"instruction": f"question {i}", "output": " ".join(rng.choices(words, k=340))} for i in range(400)]
    path, out = tmp_path / f"big.{shape}", tmp_path / "clean.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[" if shape == "json" else "")
        for copy in range(50):
            for i, row in enumerate(distinct):
                sep = "," if shape == "json" and (copy or i) else ""
                fh.write(sep + json.dumps(row) + ("\n" if shape == "jsonl" else ""))
        fh.write("]" if shape == "json" else "")
    size_kib = path.stat().st_size // 1024
    assert size_kib > 45_000
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_GROWTH, str(path), str(out)],
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    figures = json.loads(done.stdout)
    assert (figures["read"], figures["kept"]) == (20_000, 400)
    assert figures["growth_kib"] < size_kib / 4, figures  # buffers and index: ~8 MB (json.load: ~65 MB)

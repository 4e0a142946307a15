"""`expertkit data clean`: planted exact / near duplicates (English and Chinese) and PII are removed or masked, with
a report of what went and why; the output is written whole or not at all."""

from __future__ import annotations

import json

import pytest

from expertkit.cli.main import main
from expertkit.data.clean import find_pii, id_card_valid, luhn_valid

EN = "To file a motor claim, send the police report, photos of the damage and the repair estimate within 30 days."
ZH = "理赔时请在三十天内提交警方报告、车辆损坏照片以及维修估价单，缺少材料会暂停理赔时效。"
ID_CARD = "11010519491231002X"  # the GB 11643 sample number: checksum holds
BANK_CARD = "6222 0212 3456 7894"  # Luhn holds


def rows() -> list[dict]:
    return [
        {"instruction": "How do I file a motor claim?", "output": EN},
        {"instruction": "How do I file a motor claim?", "output": EN},  # exact
        {"instruction": "How do I file a motor claim?", "output": EN.replace("30 days", "thirty days")},  # near
        {"instruction": "如何申请车险理赔？", "output": ZH},
        {"instruction": "如何申请车险理赔？", "output": ZH.replace("三十天", "30天")},  # near, Chinese
        {"instruction": "Who handles storm damage?", "output": "Mail claims@example.com or call 13812345678."},
        {"instruction": "身份信息", "output": f"客户身份证号 {ID_CARD}，银行卡 {BANK_CARD}，登录 IP 192.168.1.20。"},
        {"instruction": "ok", "output": ""},
    ]


def write(path, items) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")


def test_planted_duplicates_go_and_pii_is_masked(tmp_path, capsys):
    src, out = tmp_path / "train.jsonl", tmp_path / "clean.jsonl"
    write(src, rows())
    assert main(["data", "clean", str(src), f"output={out}", "min_chars=20"]) == 0
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"] for r in kept] == ["How do I file a motor claim?", "如何申请车险理赔？",
                                                "Who handles storm damage?", "身份信息"]  # fmt: skip
    text = json.dumps(kept, ensure_ascii=False)
    for secret in ("claims@example.com", "13812345678", ID_CARD, BANK_CARD, "192.168.1.20"):
        assert secret not in text
    assert all(f"[{k}]" in text for k in ("EMAIL", "PHONE", "ID_CARD", "BANK_CARD", "IP"))
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["read"] == 8 and report["kept"] == 4
    assert report["removed"] == {"exact duplicate": 1, "near duplicate": 2, "shorter than min_chars=20": 1}
    assert "train.jsonl:3 ~ " in report["examples"]["near duplicate"][0]
    assert "removed 2 (near duplicate)" in capsys.readouterr().out


def test_pii_drop_and_threshold_one_keeps_near_duplicates(tmp_path):
    src, out = tmp_path / "train.jsonl", tmp_path / "clean.jsonl"
    write(src, rows())
    assert main(["data", "clean", str(src), f"output={out}", "pii=drop", "near_dup_threshold=1.0"]) == 0
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text(encoding="utf-8"))
    assert report["removed"].get("near duplicate") is None and report["removed"]["exact duplicate"] == 1
    assert sum(n for reason, n in report["removed"].items() if reason.startswith("PII")) == 2
    assert report["kept"] == 5


def test_checksums_keep_ordinary_numbers():
    assert id_card_valid(ID_CARD) and not id_card_valid("110105194912310021")
    assert luhn_valid("6222021234567894") and not luhn_valid("6222021234567890")
    assert find_pii("order 6222021234567890 shipped, 3 items") == []  # 16 digits, Luhn fails: an order number
    assert find_pii("version 1.2.3.4000") == []


def test_empty_file_is_an_error_and_leaves_no_output(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    assert main(["data", "clean", str(tmp_path / "empty.jsonl"), f"output={tmp_path / 'out.jsonl'}"]) == 1
    assert "has no rows" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("text", ["", "x"])
def test_row_text_of_any_shape(text):
    from expertkit.data.clean import row_text

    assert row_text({"a": [text, {"b": text}], "n": 3}) == f"{text}\n{text}\n"


def test_data_check_shows_near_duplicates_and_pii_with_rows(tmp_path, tiny_model, capsys):
    src = tmp_path / "train.jsonl"
    write(src, rows()[:7])  # the last row has no answer: data check would report it as invalid
    assert main(["data", "check", f"model_name_or_path={tiny_model}", f"dataset={src}"]) == 0
    out = capsys.readouterr().out
    assert f"exact duplicates: 1 ({src}:2 = {src}:1)" in out
    assert f"near duplicates: 2 ({src}:3 ~ {src}:1, {src}:5 ~ {src}:4)" in out
    assert f"PII: 2 row(s) (EMAIL 1, PHONE 1, ID_CARD 1, BANK_CARD 1, IP 1) ({src}:6: EMAIL PHONE, {src}:7: " in out
    assert "fix: expertkit data clean" in out and "ready to train" in out

"""Reading rows from JSON, JSON Lines, CSV, parquet and folders, and the errors for files that can't be read."""

from __future__ import annotations

import json

import pytest

from expertkit.core.errors import DataError
from expertkit.data.files import read_path

ROWS = [
    {"instruction": "What is a deductible?", "input": "", "output": "The part of a loss you pay yourself."},
    {"instruction": "Summarise the claim.", "input": "Water in the kitchen.", "output": "A leak under the sink."},
    {"instruction": "Is hail covered?", "input": "", "output": "Yes, under the storm clause."},
]


def test_jsonl_rows_know_their_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n\n" + json.dumps(ROWS[2]) + "\n", encoding="utf-8")
    records = read_path(path)
    assert [r.data for r in records] == ROWS
    assert [r.where for r in records] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    assert all(r.error is None for r in records)


def test_json_list_rows_know_their_line_and_row(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    records = read_path(path)
    assert [r.data for r in records] == ROWS
    assert records[0].where == f"{path}:2 (row 1)"
    assert records[1].where == f"{path}:7 (row 2)"  # each row takes 5 lines with indent=2
    assert records[2].where.endswith("(row 3)")


def test_empty_json_list_and_empty_file(tmp_path):
    (tmp_path / "a.json").write_text(" [ ] \n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("", encoding="utf-8")
    assert read_path(tmp_path / "a.json") == []
    assert read_path(tmp_path / "b.jsonl") == []


def test_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS).encode())
    assert [r.data for r in read_path(path)] == ROWS
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert read_path(lines)[0].data == ROWS[0]


def test_json_lines_under_a_json_name_are_read_as_lines(tmp_path):
    # LLaMA-Factory (through `datasets`) reads such files; users have them
    path = tmp_path / "train.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    records = read_path(path)
    assert [r.data for r in records] == ROWS
    assert records[1].where == f"{path}:2"


def test_truncated_json_names_file_line_column_and_fix(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(ROWS, indent=2)[:-30], encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_path(path)
    text = str(e.value)
    assert f"{path}:" in text and "not valid JSON" in text
    assert "ends too early" in e.value.hint or "no closing quote" in e.value.hint


def test_missing_comma_in_json_points_at_the_spot(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"}\n  {"instruction": "c", "output": "d"}\n]\n')
    with pytest.raises(DataError) as e:
        read_path(path)
    assert e.value.message.startswith(f"{path}:3:3: not valid JSON: Expecting ',' delimiter")
    assert "comma" in e.value.hint


def test_top_level_object_is_an_error_with_the_fix(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_path(path)
    assert str(path) in e.value.message and "top level is an object" in e.value.message
    assert "under 'data'" in e.value.hint


def test_every_bad_jsonl_line_is_reported(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps(ROWS[0])
    path.write_text("\n".join([good, '{"instruction": "a",', good, "not json", '{"a": 1}}', good]), encoding="utf-8")
    records = read_path(path)
    assert len(records) == 6
    bad = [r for r in records if r.error is not None]
    assert [r.where for r in bad] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert [r.error.where for r in bad] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert all("not valid JSON" in r.error.message and r.error.hint for r in bad)
    assert "ends too early" in bad[0].error.hint


def test_not_utf8_names_the_byte_and_the_fix(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError) as e:
        read_path(path)
    offset = len(json.dumps(ROWS[0])) + 1 + len('{"instruction": "caf')
    assert e.value.message.startswith(f"{path}:2: not UTF-8 text (byte offset {offset}")
    assert "save the file as UTF-8" in e.value.hint
    assert "iconv -f CP1252" in e.value.hint


@pytest.mark.parametrize(
    ("text", "encoding", "named"),
    [
        ('{"instruction": "你是谁", "output": "我是一个由云帆科技开发的助手"}', "gbk", "GB18030"),
        ('{"instruction": "あなたは誰ですか", "output": "アシスタントです"}', "shift_jis", "SHIFT_JIS"),
        ('{"instruction": "hi", "output": "ok"}', "utf-16", "UTF-16"),
    ],
)
def test_not_utf8_names_the_likely_encoding_for_iconv(tmp_path, text, encoding, named):
    # a GBK file from a Chinese Windows machine must not be told to convert from cp1252 (that garbles it)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(DataError) as e:
        read_path(path)
    assert f"it looks like {named}" in e.value.message
    assert f"iconv -f {named} -t utf-8 rows.jsonl > rows.utf8.jsonl" in e.value.hint


def test_missing_file_lists_the_folder_and_a_close_name(tmp_path):
    (tmp_path / "claims.jsonl").write_text("")
    (tmp_path / "other.csv").write_text("")
    with pytest.raises(DataError) as e:
        read_path(tmp_path / "claim.jsonl")
    assert f"'{tmp_path / 'claim.jsonl'}' does not exist" in e.value.message
    assert f"did you mean '{tmp_path / 'claims.jsonl'}'" in e.value.hint
    assert "claims.jsonl, other.csv" in e.value.hint


def test_unknown_extension(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError) as e:
        read_path(path)
    assert str(path) in e.value.message and ".xlsx" in e.value.message
    assert ".jsonl" in e.value.hint and ".parquet" in e.value.hint


def test_csv_rows_know_their_line_even_after_a_multiline_field(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'instruction,input,output\n"Line one\nline two",,first\nsecond q,,"second, with comma"\n', encoding="utf-8"
    )
    records = read_path(path)
    assert records[0].data == {"instruction": "Line one\nline two", "input": "", "output": "first"}
    assert records[1].data["output"] == "second, with comma"
    assert [r.where for r in records] == [f"{path}:2", f"{path}:4"]


def test_csv_row_with_too_many_fields_is_a_row_problem(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    records = read_path(path)
    assert records[0].error is None
    assert records[1].error.where == f"{path}:3"
    assert "3 fields but the header has 2" in records[1].error.message and "quote" in records[1].error.hint


def test_parquet_rows(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = read_path(path)
    assert [r.data for r in records] == ROWS
    assert records[2].where == f"{path} row 3"
    assert len(read_path(path, limit=2)) == 2


def test_damaged_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as e:
        read_path(path)
    assert str(path) in e.value.message and "parquet" in e.value.message


def test_folder_reads_every_data_file_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (tmp_path / "a.json").write_text(json.dumps([ROWS[0]]))
    (tmp_path / "notes.txt").write_text("ignored")
    records = read_path(tmp_path)
    assert [r.data for r in records] == ROWS[:2]


def test_folder_errors_are_reported_together(tmp_path):
    (tmp_path / "a.json").write_text("[{")
    (tmp_path / "b.json").write_text('{"x": 1}')
    with pytest.raises(DataError) as e:
        read_path(tmp_path)
    assert len(e.value.problems) == 2
    assert "a.json" in e.value.problems[0].message and "b.json" in e.value.problems[1].message


def test_folder_without_data_files_says_what_it_holds(tmp_path):
    (tmp_path / "readme.md").write_text("")
    with pytest.raises(DataError) as e:
        read_path(tmp_path)
    assert "holds no data files" in e.value.message and "readme.md" in e.value.hint

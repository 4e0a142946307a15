"""Read rows from data files: JSON, JSON Lines, CSV, parquet, or a folder of them.

Every row keeps where it came from, so that a problem can be reported as ``data/train.jsonl:17``:

- JSON Lines ``file.jsonl:17`` (the line), JSON ``file.json:42 (row 3)`` (the line the row starts on, and
  its position in the list), CSV ``file.csv:5`` (the line the row starts on), parquet ``file.parquet row 3``.

Rows are counted from 1. A file that cannot be read at all (missing, not UTF-8, broken JSON) raises a
`DataError`; a single JSON Lines line that does not parse becomes a `Record` carrying its `Problem`, so
the other lines are still used and every bad line is reported at once.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.core.errors import DataError, Problem
from expertkit.core.optional import import_optional
from expertkit.core.text import guess_encoding

DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")

_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass
class Record:
    """One row as read from a file: its value (normally a dict), its location, and a problem if unreadable."""

    data: Any
    where: str
    error: Problem | None = None


def read_path(path: str | Path, limit: int | None = None) -> list[Record]:
    """Read every row of a data file, or of each data file directly inside a folder (sorted by name).

    `limit` stops reading once that many rows are read (a hint for speed: callers still slice).
    Raises one `DataError` naming every file that cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, limit)
    if not p.exists():
        raise missing_file_error(p)
    return read_file(p, limit)


def read_file(path: Path, limit: int | None = None) -> list[Record]:
    """Read one data file, choosing the reader by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, limit)
    if suffix not in DATA_SUFFIXES:
        raise DataError(
            f"{path}: cannot read '{path.suffix or path.name}' files",
            hint=f"save the data as one of {', '.join(DATA_SUFFIXES)}",
        )
    text = _read_text(path)
    if suffix == ".csv":
        return _read_csv(path, text, limit)
    return _read_json_or_lines(path, text, limit)


def _read_folder(folder: Path, limit: int | None) -> list[Record]:
    files = sorted(x for x in folder.iterdir() if x.is_file() and x.suffix.lower() in DATA_SUFFIXES)
    files = [x for x in files if not x.name.startswith(".") and x.name != "dataset_info.json"]
    if not files:
        present = sorted(x.name for x in folder.iterdir())[:20]
        raise DataError(
            f"folder '{folder}' holds no data files ({', '.join(DATA_SUFFIXES)})",
            hint=f"it contains: {', '.join(present)}" if present else "the folder is empty",
        )
    records: list[Record] = []
    problems: list[Problem] = []
    for file in files:
        try:
            records += read_file(file, None if limit is None else limit - len(records))
        except DataError as e:
            problems += e.problems or [Problem(e.message, hint=e.hint)]
        if limit is not None and len(records) >= limit:
            break
    if problems:
        raise DataError(f"cannot read {len(problems)} file(s) in '{folder}':", problems=problems)
    return records


def missing_file_error(path: Path) -> DataError:
    """The error for a data file that is not there, listing what its folder holds (and a close name)."""
    folder = path.parent
    if not folder.is_dir():
        return DataError(
            f"dataset file '{path}' does not exist (nor does the folder '{folder}')", hint="check the path"
        )
    present = sorted(x.name for x in folder.iterdir() if not x.name.startswith("."))
    close = difflib.get_close_matches(path.name, present, n=1, cutoff=0.6)
    shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
    hint = f"did you mean '{folder / close[0]}'? " if close else ""
    hint += f"files in {folder}: {shown}" if present else f"'{folder}' is empty"
    return DataError(f"dataset file '{path}' does not exist", hint=hint)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start : e.start + 4]
        encoding = guess_encoding(raw)
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte offset {e.start}: {bad!r}); it looks like {encoding}",
            hint=f"save the file as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f {encoding} -t utf-8 {path.name} > "
            f"{path.stem}.utf8{path.suffix}`)",
        ) from None


def _read_json_or_lines(path: Path, text: str, limit: int | None) -> list[Record]:
    """JSON lists and JSON Lines are told apart by content, as `datasets` does: `[` opens a list."""
    start = _WHITESPACE.match(text).end()
    if start == len(text):
        return []
    if text[start] == "[":
        return _read_json_list(path, text, start)
    if path.suffix.lower() == ".jsonl":
        return _read_lines(path, text, limit)
    # a .json file that does not open a list: one object (an error) or JSON Lines under a .json name
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        first_line = text[start:].split("\n", 1)[0]
        if e.msg == "Extra data" and _is_object(first_line):
            return _read_lines(path, text, limit)
        raise _json_error(path, text, e) from None
    raise _not_a_list_error(path, data)


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _read_json_list(path: Path, text: str, pos: int) -> list[Record]:
    """Walk the top-level list element by element so that each row knows the line it starts on."""
    decoder = json.JSONDecoder()
    records: list[Record] = []
    line, counted = 1, 0
    pos = _WHITESPACE.match(text, pos + 1).end()
    try:
        closed = text.startswith("]", pos)
        pos += closed
        while not closed:
            line += text.count("\n", counted, pos)
            counted = pos
            value, pos = decoder.raw_decode(text, pos)
            records.append(Record(value, f"{path}:{line} (row {len(records) + 1})"))
            pos = _WHITESPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos, closed = pos + 1, True
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        end = _WHITESPACE.match(text, pos).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as e:
        raise _json_error(path, text, e) from None
    return records


def _json_error(path: Path, text: str, e: json.JSONDecodeError) -> DataError:
    if e.pos >= len(text.rstrip()):
        hint = "the file ends too early (cut off while copying?): it must end with ']'"
    elif e.msg.startswith("Unterminated string"):
        hint = f"the text starting at line {e.lineno} column {e.colno} has no closing quote (or the file was cut off)"
    elif e.msg == "Extra data":
        hint = "there is more after the end of the list: remove it, or use .jsonl for one object per line"
    else:
        hint = f"look at line {e.lineno} column {e.colno}: a missing comma or quote, or a trailing comma, is usual"
    return DataError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}", hint=hint)


def _not_a_list_error(path: Path, data: Any) -> DataError:
    kind = "an object" if isinstance(data, dict) else f"a {type(data).__name__}"
    hint = "write the rows as a JSON list: [{...}, {...}], or one object per line in a .jsonl file"
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if lists:
            hint = f"the rows seem to be under '{lists[0]}': make the file that list itself, [{{...}}, {{...}}]"
    return DataError(f"{path}: the top level is {kind}, but a list of rows belongs there", hint=hint)


def _read_lines(path: Path, text: str, limit: int | None) -> list[Record]:
    records: list[Record] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if limit is not None and len(records) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            records.append(Record(json.loads(line), where))
        except json.JSONDecodeError as e:
            if e.pos >= len(line.rstrip()):
                hint = "the line ends too early: each line must hold one complete JSON object"
            else:
                hint = "each line must hold one complete JSON object (check quotes and commas)"
            problem = Problem(f"not valid JSON: {e.msg} (column {e.colno})", where=where, hint=hint)
            records.append(Record(None, where, problem))
    return records


def _read_csv(path: Path, text: str, limit: int | None) -> list[Record]:
    if csv.field_size_limit() < sys.maxsize // 2:  # long answers exceed csv's 128 KiB default field limit
        try:
            csv.field_size_limit(sys.maxsize)
        except OverflowError:  # a C long is 32-bit on Windows
            csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(text.splitlines(keepends=True))
    records: list[Record] = []
    try:
        header = reader.fieldnames or []
        start = reader.line_num + 1
        for row in reader:
            if limit is not None and len(records) >= limit:
                break
            where = f"{path}:{start}"
            start = reader.line_num + 1
            extra = row.pop(None, None)  # type: ignore[call-overload]
            problem = None
            if extra is not None:
                problem = Problem(
                    f"the row has {len(header) + len(extra)} fields but the header has {len(header)}",
                    where=where,
                    hint="quote fields that contain commas or line breaks",
                )
            records.append(Record(row, where, problem))
    except csv.Error as e:
        raise DataError(
            f"{path}:{reader.line_num}: not valid CSV: {e}", hint="check the quoting on that line"
        ) from None
    return records


def _read_parquet(path: Path, limit: int | None) -> list[Record]:
    pq = import_optional("pyarrow.parquet", "pyarrow", "train")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise DataError(
            f"{path}: not a readable parquet file: {e}", hint="write it again, e.g. df.to_parquet()"
        ) from None
    if limit is not None:
        table = table.slice(0, limit)
    return [Record(row, f"{path} row {i}") for i, row in enumerate(table.to_pylist(), start=1)]

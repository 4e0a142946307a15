"""Rows of a JSON Lines file or a JSON list, read one at a time: memory holds one row and a read buffer, never the file.

    [{"instruction": "...", "output": "..."}, {"instruction": "...", "output": "..."}]   -> row 1, row 2
    {"text": "..."}\\n{"text": "..."}\\n                                                  -> line 1, line 2

`data/files.py` reads a whole file for training (it needs every row anyway); `expertkit data clean` reads through
this module so that a file of many gigabytes passes through in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from expertkit.core.errors import DataError

CHUNK_CHARS = 1 << 20  # characters read at a time from a JSON list
_DECODER = json.JSONDecoder()
_SKIPPED = " \t\r\n,"


class RowStream:
    """`for number, row in RowStream(path)`: rows numbered from 1 (the line of a JSON Lines file, the position in
    a JSON list); `where(number)` names a row in messages as `data/files.py` does."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"'{self.path}' is not a file", hint="give a JSON Lines file or a JSON list of rows")
        try:
            with open(self.path, encoding="utf-8-sig") as fh:
                head = fh.read(4096).lstrip()
        except UnicodeDecodeError as e:
            raise self._not_utf8(e) from None
        self.is_list = head.startswith("[")

    def where(self, number: int) -> str:
        return f"{self.path} row {number}" if self.is_list else f"{self.path}:{number}"

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        try:
            with open(self.path, encoding="utf-8-sig") as fh:
                yield from (self._list_rows(fh) if self.is_list else self._lines(fh))
        except UnicodeDecodeError as e:
            raise self._not_utf8(e) from None

    def _not_utf8(self, e: UnicodeDecodeError) -> DataError:
        return DataError(f"'{self.path}' is not UTF-8 text ({e.reason})", hint="save the file as UTF-8")

    def _lines(self, fh: IO[str]) -> Iterator[tuple[int, Any]]:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.path}:{number}: not valid JSON: {e.msg}", hint="fix the line") from None

    def _list_rows(self, fh: IO[str]) -> Iterator[tuple[int, Any]]:
        buf, pos, eof, number = fh.read(CHUNK_CHARS).lstrip()[1:], 0, False, 0  # past the opening "["
        while True:
            while pos < len(buf) and buf[pos] in _SKIPPED:
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                row, end = _DECODER.raw_decode(buf, pos)
                complete = end < len(buf) or eof  # a number or word at the buffer's end may go on
            except json.JSONDecodeError as e:
                if eof:
                    raise DataError(
                        f"{self.path} row {number + 1}: not valid JSON: {e.msg}"
                        + (" (the list never closes with ']')" if pos >= len(buf) else ""),
                        hint="fix the row, or check that the file was written whole",
                    ) from None
                complete = False
            if not complete:
                more = fh.read(CHUNK_CHARS)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            number += 1
            yield number, row
            pos = end

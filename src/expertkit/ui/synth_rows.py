"""The rows `expertkit data synth` wrote (output_dir/train.json) as a table to correct before accepting them: each
row's question and answer, edited in place or marked for deletion, then saved back to train.json atomically.

An alpaca row's question is its `instruction` and its answer its `output`; a sharegpt row's are its human and gpt
turns. Everything else in a row (`source`: file, section, quote, score) is kept as it was.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from expertkit.core.errors import ExpertkitError
from expertkit.core.runs import write_text_atomic

COLUMNS = ["row", "question", "answer", "delete"]
MAX_SHOWN = 2000  # rows in the table; rows after these stay in the file unchanged
TRAIN_FILE = "train.json"


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ExpertkitError(f"cannot read '{path}': {e.strerror}", hint="run the synth job to the end first") from e
    except ValueError as e:
        raise ExpertkitError(f"'{path}' is not valid JSON: {e}", hint="run the synth job again") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ExpertkitError(f"'{path}' is not a JSON list of rows", hint="pick the train.json `data synth` wrote")
    return rows


def row_pair(row: dict[str, Any]) -> tuple[str, str]:
    """(question, answer) of an alpaca or sharegpt row."""
    if "conversations" in row:
        turns = row.get("conversations") or []
        ask = next((t.get("value", "") for t in turns if t.get("from") == "human"), "")
        return ask, next((t.get("value", "") for t in turns if t.get("from") == "gpt"), "")
    return str(row.get("instruction", "")), str(row.get("output", ""))


def with_pair(row: dict[str, Any], question: str, answer: str) -> dict[str, Any]:
    if "conversations" not in row:
        return {**row, "instruction": question, "output": answer}
    texts = {"human": question, "gpt": answer}
    turns = [{**t, "value": texts.pop(t.get("from"), t.get("value"))} for t in row["conversations"]]
    return {**row, "conversations": turns}


def rows_frame(path: str | Path) -> pd.DataFrame:
    """The first MAX_SHOWN rows as the edit table: row number, question, answer, delete (unticked)."""
    rows = load_rows(path)[:MAX_SHOWN]
    return pd.DataFrame([[n, *row_pair(r), False] for n, r in enumerate(rows)], columns=COLUMNS)


def save_edits(path: str | Path, table: pd.DataFrame) -> str:
    """Apply the edit table to the file: changed questions / answers written, rows ticked `delete` removed, rows not
    in the table kept. Written atomically (the file is whole before and after). Returns what was done, in words."""
    rows = load_rows(path)
    edits: dict[int, tuple[str, str, bool]] = {}
    for n, (number, question, answer, delete) in enumerate(table[COLUMNS].itertuples(index=False, name=None), 1):
        index = _row_number(number, len(rows), n, path)
        question, answer = _text(question), _text(answer)
        delete = str(delete).strip().lower() in ("true", "1", "yes")
        if not delete and not (question.strip() and answer.strip()):
            raise ExpertkitError(
                f"table row {n} (row {index} of {path}): the question and the answer must not be empty",
                hint="write both, or tick `delete` to remove the row",
            )
        edits[index] = (question, answer, delete)
    kept, changed, deleted = [], 0, 0
    for index, row in enumerate(rows):
        if index not in edits:
            kept.append(row)
            continue
        question, answer, delete = edits[index]
        if delete:
            deleted += 1
            continue
        changed += (question, answer) != row_pair(row)
        kept.append(with_pair(row, question, answer) if (question, answer) != row_pair(row) else row)
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in kept)
    write_text_atomic(path, f"[\n{body}\n]\n" if kept else "[]\n")
    return f"saved `{path}`: {len(kept)} rows ({changed} edited, {deleted} deleted)"


def _row_number(value: Any, total: int, n: int, path: str | Path) -> int:
    try:
        index = int(float(value))
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < total:  # NaN (a row added in the table) failed int() above
        raise ExpertkitError(
            f"table row {n}: row number {value} is not a row of {path} (it has {total})",
            hint="load the rows again (new rows cannot be added here)",
        )
    return index


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def store_uploads(files: list[str] | None, folder: str | Path, inputs: str) -> str:
    """Copy uploaded documents into `folder` (they outlive the upload's temporary files) and add their paths to the
    form's `inputs` (a comma list); returns the new `inputs`."""
    listed = [p.strip() for p in (inputs or "").split(",") if p.strip()]
    if not files:
        return ", ".join(listed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for upload in files:
        target = Path(folder) / Path(upload).name
        shutil.copyfile(upload, target)
        if str(target) not in listed:
            listed.append(str(target))
    return ", ".join(listed)


def synth_summary(output_dir: str | Path) -> str:
    """Rows written to train.json / eval.jsonl and chunks in failed.jsonl, as Markdown."""
    out = Path(output_dir)
    try:
        train = len(load_rows(out / TRAIN_FILE))
    except ExpertkitError as e:
        return str(e)
    counts = {name: _lines(out / name) for name in ("eval.jsonl", "failed.jsonl")}
    return (
        f"**{train}** rows in `{out / TRAIN_FILE}`, **{counts['eval.jsonl']}** held out in `eval.jsonl`, "
        f"**{counts['failed.jsonl']}** failed chunks in `failed.jsonl`"
    )


def synth_progress(output_dir: str | Path) -> str:
    """The running job's progress, from the last line of output_dir/synth_log.jsonl (one line per chunk finished)."""
    try:
        with (Path(output_dir) / "synth_log.jsonl").open("rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            last = json.loads(fh.read().decode("utf-8", "replace").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return ""
    text = (
        f"**{last.get('chunks_done', 0)}** of **{last.get('chunks_total', 0)}** chunks done, "
        f"{last.get('chunks_failed', 0)} failed, {last.get('requests', 0)} requests, "
        f"{last.get('prompt_tokens', 0) + last.get('completion_tokens', 0)} tokens, {last.get('seconds', 0)} s"
    )
    return text + (f", ${last['cost']:.4f}" if "cost" in last else "")


def _lines(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def synth_entry(output_dir: str | Path) -> dict[str, Any]:
    """The entry `data synth` wrote for train.json in output_dir/dataset_info.json (its formatting and columns)."""
    try:
        info = json.loads((Path(output_dir) / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = [e for e in info.values() if isinstance(e, dict) and e.get("file_name") == TRAIN_FILE]
    return entries[0] if entries else {}

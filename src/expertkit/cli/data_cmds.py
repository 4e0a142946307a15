"""`expertkit data text`: documents (PDF, Word, HTML, Markdown, text) into a JSON Lines file of raw text for stage pt.

expertkit data text docs/ handbook.pdf output=data/manuals_text.jsonl

The knowledge base's extractor reads the documents (the same text `expertkit kb add` indexes); each document becomes
one row {"text": ..., "source": ..., "title": ...}, which stage pt reads (its `text` column) and `data check` /
a dataset_info.json entry (`"columns": {"prompt": "text"}`) can name like any other dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from expertkit.core.errors import ExpertkitError, Problem

logger = logging.getLogger(__name__)


def data_text(args: list[str] = typer.Argument(None, help="Files and folders, then output=FILE.jsonl.")) -> None:
    """Turn documents (md, txt, html, pdf, docx; folders recursively) into raw text rows for stage pt.

    Example: expertkit data text docs/ handbook.pdf output=data/manuals_text.jsonl
    """
    from expertkit.cli.rag_cmds import split_items

    items, keys, _ = split_items(args or [])
    output = dict(k.split("=", 1) for k in keys if "=" in k).get("output")
    unknown = [k for k in keys if not k.startswith("output=")]
    if unknown or not items or not output:
        raise ExpertkitError(
            "expertkit data text needs documents and output=FILE.jsonl"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            hint="expertkit data text docs/ handbook.pdf output=data/manuals_text.jsonl",
        )
    written, failed = write_documents_text(items, Path(output))
    typer.echo(f"done: {written} documents -> {output}" + (f" ({len(failed)} unreadable, skipped)" if failed else ""))


def write_documents_text(paths: list[str], output: Path) -> tuple[int, list[Problem]]:
    """Extract every document into `output` (JSON Lines, written atomically); unreadable ones are reported."""
    from expertkit.core.runs import open_atomic
    from expertkit.rag.extract import extract_file, find_files

    files = find_files(paths)
    written, failed = 0, []
    with open_atomic(output) as fh:
        for path in files:
            try:
                doc = extract_file(path)
            except ExpertkitError as e:
                failed.append(Problem(e.message, hint=e.hint))
                continue
            if not doc.text.strip():
                failed.append(Problem(f"{path}: holds no text", hint="an empty file, or a scan that needs OCR"))
                continue
            row = {"text": doc.text, "source": doc.source, "title": doc.title}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
        if not written:
            raise ExpertkitError(f"none of the {len(files)} documents could be read:", problems=failed)
    for problem in failed:
        logger.warning("skipped %s", problem.format())
    return written, failed


def data_clean(
    args: list[str] = typer.Argument(None, help="The dataset file, then output=FILE and key=value."),
) -> None:
    """Drop exact and near-duplicate rows (MinHash LSH), too short / long rows, and mask or drop PII.

    Example: expertkit data clean data/train.jsonl output=data/clean.jsonl near_dup_threshold=0.7 languages=zh,en
    (or a YAML file of these keys: expertkit data clean clean.yaml)
    """
    from expertkit.cli.rag_cmds import load, split_items
    from expertkit.data.clean import CleanConfig, run

    items, keys, _ = split_items(args or [])
    from_yaml = not items and any(k.endswith((".yaml", ".yml")) for k in keys)  # input= in the file (the web UI)
    if len(items) != 1 and not from_yaml:
        raise ExpertkitError(
            "expertkit data clean needs one dataset file", hint="expertkit data clean in.jsonl output=out.jsonl"
        )
    config = load(CleanConfig, keys + [f"input={x}" for x in items])
    report = run(config)
    typer.echo(report.summary() + f"\n-> {config.output} (report: {config.output}.report.json)")


def data_synth(
    args: list[str] = typer.Argument(None, help="Files, folders and URLs, then key=value (teacher_base_url=...)."),
) -> None:
    """Turn documents into grounded question/answer rows through a teacher model (resumable, incremental).

    Example: expertkit data synth docs/ handbook.pdf teacher_base_url=http://127.0.0.1:8000/v1 teacher_model=qwen2.5-72b
    output_dir=data/handbook. `--show-prompts` prints the prompts (a file to copy and pass as prompts=FILE).
    """
    from expertkit.cli.rag_cmds import load, split_items

    args = list(args or [])
    if "--show-prompts" in args:
        from expertkit.synth.prompts import shipped_text

        typer.echo(shipped_text(), nl=False)
        return
    from expertkit.synth.config import SynthConfig
    from expertkit.synth.run import run

    items, keys, _ = split_items(args)
    config = load(SynthConfig, keys + ([f"inputs={','.join(items)}"] if items else []))
    result = run(config)
    typer.echo(synth_summary(result))


def synth_summary(result) -> str:
    c, t = result.counts, result.tally
    lines = [
        f"chunks: {c.chunks} ({result.asked} sent to the teacher, {result.cached} known from earlier runs; "
        f"{c.chunks_failed} failed{', see failed.jsonl' if c.chunks_failed else ''})",
        f"teacher: {t.requests} requests ({t.retries} retried), {t.prompt_tokens} prompt + {t.completion_tokens} "
        "completion tokens",
        f"pairs: {c.pairs} -> {c.train_rows} train rows, {c.eval_rows} eval rows",
    ]
    lines += [f"  removed {n} ({reason})" for reason, n in sorted(c.removed.items())]
    lines += [f"  unreadable: {p.format()}" for p in result.unreadable]
    out = result.output_dir
    lines.append(f"-> {out / 'train.json'}, {out / 'eval.jsonl'}, {out / 'dataset_info.json'}")
    return "\n".join(lines)

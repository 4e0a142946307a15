"""`expertkit data synth`: documents -> chunks -> questions -> grounded answers -> judge -> a dataset.

    result = run(SynthConfig(inputs=["docs/"], teacher_base_url="http://127.0.0.1:8000/v1", output_dir="data/hb"))

1. read the documents (the knowledge base's extractors; URLs through its guarded reader) and chunk them (its
   chunker), recording every chunk in the state file;
2. ask the teacher about the chunks the state file has no result for (new, changed, or failed before), a few
   requests at a time;
3. write the dataset from the state file (write.py).
A teacher that refuses the key or cannot be reached stops step 2; step 3 still runs, so the rows of the chunks
finished so far are written, and the error is raised after.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from expertkit.core.config import save_config
from expertkit.core.errors import BrokenExtraError, ExpertkitError, MissingExtraError, Problem
from expertkit.core.runs import RESOLVED_CONFIG, append_jsonl, write_text_atomic
from expertkit.rag.chunk import split_text
from expertkit.rag.extract import Document, extract_file, find_files
from expertkit.rag.ids import chunk_id, content_hash
from expertkit.rag.kb import MARKDOWN_KINDS
from expertkit.synth.config import SynthConfig
from expertkit.synth.generate import ChunkFailed, synthesize_chunk
from expertkit.synth.prompts import Prompts, detect_language, load_prompts
from expertkit.synth.state import ChunkJob, State
from expertkit.synth.teacher import (
    Tally,
    Teacher,
    TeacherDown,
    TeacherError,
    load_teacher,
    require_teacher,
    teacher_identity,
)
from expertkit.synth.write import Counts, write_dataset

logger = logging.getLogger(__name__)
LOG_FILE = "synth_log.jsonl"  # this run's progress, one line per chunk finished
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass
class SynthResult:
    output_dir: Path
    counts: Counts
    tally: Tally
    asked: int = 0  # chunks sent to the teacher in this run
    cached: int = 0  # chunks whose result the state file already had
    unreadable: list[Problem] = field(default_factory=list)
    stopped: TeacherDown | None = None  # why the teacher stopped answering (None when it did not)


def run(config: SynthConfig) -> SynthResult:
    if not config.output_dir:
        raise ExpertkitError("expertkit data synth needs output_dir=FOLDER", hint="e.g. output_dir=data/handbook")
    if not config.inputs:
        raise ExpertkitError("expertkit data synth needs documents", hint="expertkit data synth docs/ handbook.pdf ...")
    require_teacher(config)
    prompts = load_prompts(config.prompts)
    out = Path(config.output_dir)
    state = State.open(out)
    try:
        # the run folder says how it was made; never with the key
        save_config(config.model_copy(update={"teacher_api_key": None}), out / RESOLVED_CONFIG)
        unreadable = record_chunks(config, prompts, state)
        asking = ("new", "failed") if config.retry_failed else ("new",)
        total, todo = state.count_current(), state.count_current(asking)
        result = SynthResult(out, Counts(), Tally(), asked=todo, cached=total - todo, unreadable=unreadable)
        logger.info(
            "synth: %d chunks (%d to ask the teacher, %d known from earlier runs), %d requests in flight, teacher %s%s "
            "-> %s", total, todo, result.cached, config.concurrency,
            config.teacher_base_url or config.teacher_model_name_or_path, f" ({config.teacher_model})"
            if config.teacher_model else "", out,
        )  # fmt: skip
        if todo:
            teacher = Teacher(load_teacher(config), config)
            try:
                asyncio.run(ask_all(state.current_keys(asking), todo, state, teacher, prompts, config))
            except TeacherDown as e:
                result.stopped = e
            finally:
                result.tally = teacher.tally
                t = teacher.tally
                state.add_totals(requests=t.requests, prompt_tokens=t.prompt_tokens,
                                 completion_tokens=t.completion_tokens)  # fmt: skip
        result.counts = write_dataset(state, config, out)
    finally:
        state.close()
    if result.stopped:
        done = result.counts.train_rows + result.counts.eval_rows
        raise ExpertkitError(
            f"{result.stopped.message}; the {done} rows of the chunks finished so far are written to {out}, and "
            "the same command goes on from there",
            hint=result.stopped.hint,
        )
    return result


# -- 1. documents into chunks ---------------------------------------------------------------------------------


def record_chunks(config: SynthConfig, prompts: Prompts, state: State) -> list[Problem]:
    """Every chunk of the inputs into the state file, in order; returns the documents that could not be read."""
    unreadable: list[Problem] = []
    documents = chunks_seen = 0
    state.clear_current()
    asked_how = f"{prompts.version}/{config.questions_per_chunk}/{teacher_identity(config)}"
    for doc in read_documents(config, unreadable):
        documents += 1
        chunks = split_text(doc.text, config.chunk_size, config.chunk_overlap, markdown=doc.kind in MARKDOWN_KINDS)
        if not chunks:
            unreadable.append(Problem("holds no text", doc.source, hint="an empty file, or a scan that needs OCR"))
            continue
        headings = [(m.start(), m.group(1)) for m in HEADING.finditer(doc.text)] if doc.kind in MARKDOWN_KINDS else []
        state.db.execute("BEGIN")
        for chunk in chunks:
            language = config.language if config.language != "auto" else detect_language(chunk.text)
            key = content_hash(f"{asked_how}/{language}\n{chunk.text}")
            job = ChunkJob(key, chunk.text, doc.source, doc.title, last_before(headings, chunk.start) or "",
                           chunk_id(doc.source, chunk.position), language, page=pages_of(doc, chunk))  # fmt: skip
            state.put_chunk(job)
            chunks_seen += 1
        state.db.execute("COMMIT")
    if not chunks_seen:
        raise ExpertkitError(
            f"nothing to synthesize from: none of the {documents} documents given holds readable text"
            if documents else "nothing to synthesize from: no document could be read",
            problems=unreadable,
            hint="PDF scans need a text layer first (`ocrmypdf in.pdf out.pdf`); supported: md, txt, html, pdf, docx",
        )  # fmt: skip
    for problem in unreadable:
        logger.warning("skipped %s", problem.format())
    return unreadable


def last_before(marks: list[tuple[int, object]], offset: int):
    """The value of the last (offset, value) mark at or before `offset` (marks sorted by offset), or None."""
    i = bisect.bisect_right(marks, offset, key=lambda m: m[0]) - 1
    return marks[i][1] if i >= 0 else None


def pages_of(doc: Document, chunk) -> str:
    """A PDF chunk's page ("3") or pages ("3-4"); "" for other documents."""
    if not doc.page_starts:
        return ""
    first, last = last_before(doc.page_starts, chunk.start), last_before(doc.page_starts, chunk.end - 1)
    return str(first) if first == last else f"{first}-{last}"


def read_documents(config: SynthConfig, unreadable: list[Problem]) -> Iterator[Document]:
    """The documents of the inputs, one at a time; those that cannot be read go to `unreadable`."""
    urls = [i for i in config.inputs if i.lower().startswith(("http://", "https://"))]
    paths = [i for i in config.inputs if i not in urls]
    for path in find_files(paths) if paths else []:
        try:
            yield extract_file(path)
        except (MissingExtraError, BrokenExtraError):
            raise  # the install, not the file: every other file would fail the same way
        except ExpertkitError as e:
            unreadable.append(Problem(e.message, hint=e.hint))
    if urls:
        from expertkit.rag.webread import read_pages

        pages, failures = asyncio.run(read_pages(urls, config))
        unreadable += [Problem(reason, url) for url, reason in failures]
        for doc, _ in pages:
            yield doc


# -- 2. the teacher -------------------------------------------------------------------------------------------


async def ask_all(
    keys: Iterator[str], total: int, state: State, teacher: Teacher, prompts: Prompts, config: SynthConfig
) -> None:
    """Synthesize the `total` chunks of `keys`, a few at a time; a TeacherDown stops the others and is raised."""
    progress = make_progress(total)
    in_flight = max(2 * config.concurrency, 2)  # chunks started at once: enough to keep `concurrency` requests busy
    pending: set[asyncio.Task] = set()
    counted = {"done": 0, "failed": 0, "start": time.monotonic()}
    write_text_atomic(state.path.parent / LOG_FILE, "")  # the log is this run's

    async def one(job: ChunkJob) -> None:
        try:
            state.finish(job.key, await synthesize_chunk(job, teacher, prompts, config))
            counted["done"] += 1
        except ChunkFailed as e:
            state.fail(job.key, e.message, e.reply)
            counted["failed"] += 1
        except TeacherError as e:
            state.fail(job.key, e.message + (f" (fix: {e.hint})" if e.hint else ""))
            counted["failed"] += 1
        progress.update(1)
        t = teacher.tally
        progress.set_postfix_str(f"{t.prompt_tokens + t.completion_tokens} tokens" + cost_text(t, config))
        log_progress(state, counted, total, t, config)

    try:
        for key in keys:
            pending.add(asyncio.create_task(one(state.get(key))))
            if len(pending) >= in_flight:
                pending = await settle(pending)
        while pending:
            pending = await settle(pending)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        progress.close()
        await teacher.close()


async def settle(pending: set[asyncio.Task]) -> set[asyncio.Task]:
    """Wait for one task to end; raise the first error (TeacherDown) of those that ended, once all are retrieved."""
    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    errors = [task.exception() for task in done if not task.cancelled() and task.exception()]
    if errors:
        raise errors[0]
    return pending


def log_progress(state: State, counted: dict, total: int, tally: Tally, config: SynthConfig) -> None:
    """One JSON line per chunk finished in output_dir/synth_log.jsonl, for whoever watches the run (the web UI)."""
    record = {"chunks_done": counted["done"], "chunks_failed": counted["failed"], "chunks_total": total,
              "seconds": round(time.monotonic() - counted["start"], 2), "requests": tally.requests,
              "prompt_tokens": tally.prompt_tokens, "completion_tokens": tally.completion_tokens}  # fmt: skip
    if config.price_per_million_input or config.price_per_million_output:
        record["cost"] = round(tally.cost(config), 6)
    append_jsonl(state.path.parent / LOG_FILE, record)


def cost_text(tally: Tally, config: SynthConfig) -> str:
    return f", ${tally.cost(config):.4f}" if config.price_per_million_input or config.price_per_million_output else ""


def make_progress(total: int):
    """A progress bar with ETA on a terminal; silent otherwise (logs and tests)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="chunk", desc="synth", disable=not sys.stderr.isatty(), dynamic_ncols=True)

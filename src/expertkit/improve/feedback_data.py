"""Feedback -> training data: the feedback store as sft, dpo or kto rows in LLaMA-Factory's formats.

A dpo row (sharegpt ranking, OpenAI roles), from an edit (chosen = the edit), an arena vote, or a liked and a disliked
answer to the same prompt::

    {"messages": [{"role": "system", "content": "You are Sail."}, {"role": "user", "content": "Who made you?"}],
     "chosen": {"role": "assistant", "content": "Yunfan Tech built me."},
     "rejected": {"role": "assistant", "content": "Nobody."}}

A kto row, from every rated answer (an edit gives two: the edit desirable, the original not)::

    {"messages": [{"role": "user", "content": "Who made you?"}, {"role": "assistant", "content": "Nobody."}],
     "kto_tag": false}

Two answers have the same prompt when everything before them is the same: the system prompt and the turns (an
earlier answer regenerated counts as its last version). That is what two server completions with identical messages
have, and what a regeneration in the web UI has (another assistant message after the same user turn).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import trainable
from expertkit.core.feedback_config import FeedbackExportConfig, parse_since
from expertkit.core.runs import write_json_atomic, write_text_atomic

DATASET_INFO = "dataset_info.json"
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "system_tag": "system"}  # fmt: skip

# why a row is left out (the summary prints each with its count)
NO_CONTEXT = "grounded answer without with_context"
NO_PASSAGES = "grounded answer recorded without its passages (before they were stored, or by the web UI)"
UNTRAINABLE = "empty answer, or turns that do not alternate"
DUPLICATE = "duplicate prompt (the newest kept)"
OTHER_PROMPT = "vote on answers to different prompts"
TOO_LONG = "longer than cutoff_len={} tokens"
RAW_PROMPT = "a raw text completion (/v1/completions, Ollama's generate), not a chat turn"


@dataclass
class Answer:
    """A stored answer with where its feedback stands and the prompt it answered."""

    id: str
    content: str
    reasoning: str | None
    created: str
    rowid: int
    prompt: list[dict[str, str]]
    alias: str | None
    arm: str | None
    model: str | None
    grounded: bool
    rating: int | None = None
    edit: str | None = None
    rater: str | None = None
    feedback_id: int = 0
    judged: str | None = None  # when the latest feedback was given
    problem: str | None = None  # why no row may use it (a grounded answer without context)

    def text(self, with_reasoning: bool) -> str:
        if with_reasoning and self.reasoning:
            return f"<think>\n{self.reasoning}\n</think>\n\n{self.content}"
        return self.content

    def matches(self, config: FeedbackExportConfig) -> bool:
        wanted = ((config.alias, self.alias), (config.arm, self.arm), (config.model, self.model))
        return all(want is None or want == got for want, got in wanted)


@dataclass
class Candidate:
    """A row that may be written, with what decides whether it is: its prompt, its answers, when and which marks."""

    row: dict[str, Any]
    prompt: list[dict[str, str]]
    answers: list[dict[str, str]]
    sources: list[Answer]
    when: str
    marks: dict[str, int]
    label: bool | None = None

    def key(self) -> str:
        return json.dumps([self.prompt, self.label], ensure_ascii=False, sort_keys=True)


@dataclass
class ExportResult:
    path: Path
    format: str
    rows: int = 0
    left_out: Counter = field(default_factory=Counter)  # reason -> rows
    notes: Counter = field(default_factory=Counter)  # what gave no row, and is not a fault (tie votes, ...)
    dataset_name: str = ""
    since: str | None = None  # the time or bookmark the export started from
    marks: dict[str, int] = field(default_factory=dict)


def collect(config: FeedbackExportConfig, db: Path) -> tuple[list[dict[str, Any]], ExportResult]:
    """Read the store and build the rows of `config.format` (nothing written yet); the result says what was left
    out and why."""
    from expertkit.core.feedback import FeedbackStore

    store = FeedbackStore(db)
    try:
        snapshot = store.export_snapshot()
    finally:
        store.close()
    output = Path(config.output_path())
    result = ExportResult(output, config.format, marks=snapshot["marks"])
    bookmark = read_bookmarks(db).get(bookmark_key(output)) if config.since == "last" else None
    rows = build_rows(snapshot, config, result, bookmark)
    result.rows = len(rows)
    return rows, result


def narrowed(config: FeedbackExportConfig) -> bool:
    """Whether the export asks for part of the store (an empty result is then an answer, not a mistake)."""
    return any(v is not None for v in (config.since, config.alias, config.arm, config.model, config.rater))


def write_export(
    rows: list[dict[str, Any]], config: FeedbackExportConfig, db: Path, result: ExportResult
) -> ExportResult:
    """The data file, then its dataset_info.json entry, then the `since=last` bookmark (each written atomically)."""
    path = result.path
    if path.suffix == ".jsonl":
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        write_json_atomic(path, rows)
    result.dataset_name = register_dataset(path, config.format)
    bookmarks = read_bookmarks(db)
    bookmarks[bookmark_key(path)] = {**result.marks, "format": config.format, "rows": len(rows),
                                     "exported": datetime.now().astimezone().isoformat(timespec="seconds")}  # fmt: skip
    write_json_atomic(bookmarks_path(db), bookmarks)
    return result


def build_rows(
    snapshot: dict[str, Any], config: FeedbackExportConfig, result: ExportResult, bookmark: dict | None = None
) -> list[dict[str, Any]]:
    """The rows to write, in store order; `result` gets what was left out and why."""
    answers = build_answers(snapshot, config)
    if config.format == "sft":
        candidates = sft_candidates(answers, config)
    elif config.format == "dpo":
        candidates = dpo_candidates(answers, snapshot, config, result.notes)
    else:
        candidates = kto_candidates(answers, config)
    if config.since == "last":
        result.since = f"the last export ({bookmark['exported']})" if bookmark else None
        if bookmark:
            candidates = [c for c in candidates if any(c.marks.get(k, 0) > bookmark.get(k, 0) for k in c.marks)]
    elif config.since and config.since != "all":
        since = parse_since(config.since)
        result.since = config.since
        candidates = [c for c in candidates if parse_since(c.when) >= since]
    kept = []
    for c in candidates:
        problem = next((a.problem for a in c.sources if a.problem), None)
        if problem is None and not all(trainable([*c.prompt, answer]) for answer in c.answers):
            problem = UNTRAINABLE
        if problem:
            result.left_out[problem] += 1
        else:
            kept.append(c)
    if config.deduplicate():
        kept = newest_per_prompt(kept, result.left_out)
    if config.cutoff_len is not None and kept:
        kept = within_cutoff(kept, config, result.left_out)
    return [c.row for c in kept]


def build_answers(snapshot: dict[str, Any], config: FeedbackExportConfig) -> list[Answer]:
    """Every stored answer with its latest feedback and its prompt (earlier turns with their edits applied)."""
    feedback = snapshot["feedback"]
    by_conversation: dict[str, list[dict]] = defaultdict(list)
    for m in snapshot["messages"]:
        by_conversation[m["conversation_id"]].append(m)
    answers = []
    for messages in by_conversation.values():
        system = messages[0]["system"]
        turns: list[dict[str, str]] = []
        for m in messages:
            if m["role"] == "assistant":
                answers.append(make_answer(m, prompt_before(system, turns), feedback.get(m["id"]), config))
            edit = (feedback.get(m["id"]) or {}).get("edited_content")
            turns.append({"role": m["role"], "content": m["content"] if edit is None else edit})
    return answers


def prompt_before(system: str | None, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system prompt and the turns before an answer: of answers in a row (regenerations) the last one stays in
    the history, and those just before this answer (its own earlier versions) go."""
    prompt: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for t in turns:
        if t["role"] == "assistant" and prompt and prompt[-1]["role"] == "assistant":
            prompt[-1] = t
        else:
            prompt.append(t)
    while prompt and prompt[-1]["role"] == "assistant":
        prompt.pop()
    return prompt


def make_answer(m: dict, prompt: list[dict[str, str]], state: dict | None, config: FeedbackExportConfig) -> Answer:
    grounded = json.loads(m["grounded"]) if m["grounded"] else None
    answer = Answer(
        id=m["id"], content=m["content"], reasoning=m["reasoning"], created=m["created"], rowid=m["rowid"],
        prompt=prompt, alias=m["alias"], arm=m["arm"], model=m["model"] or m["conversation_model"],
        grounded=bool(m["sources"] or grounded),
    )  # fmt: skip
    if state:
        answer.rating, answer.edit, answer.rater = state["rating"], state["edited_content"], state["rater"]
        answer.feedback_id, answer.judged = state["id"], state["created"]
    if answer.grounded and config.with_context:
        if grounded:
            answer.prompt = with_passages(prompt, grounded)
        else:
            answer.problem = NO_PASSAGES
    elif answer.grounded and config.format != "sft":
        answer.problem = NO_CONTEXT
    if json.loads(m["options"] or "{}").get("raw_prompt"):
        answer.problem = RAW_PROMPT  # its "user turn" is text the model continued, without the chat template
    return answer


def with_passages(prompt: list[dict[str, str]], grounded: dict[str, str]) -> list[dict[str, str]]:
    """The prompt as the model saw it: the stored grounded system prompt and last user turn (the retrieved sources
    and the question, as `expertkit.rag.answer.grounded_messages` wrote them) in place of the ones asked."""
    turns = [t for t in prompt if t["role"] != "system"]
    if turns and turns[-1]["role"] == "user":
        turns[-1] = {"role": "user", "content": grounded["user"]}
    system = grounded.get("system")
    return ([{"role": "system", "content": system}] if system else []) + turns


def rated_pool(answers: list[Answer], config: FeedbackExportConfig) -> list[Answer]:
    return [a for a in answers if a.matches(config) and (config.rater is None or a.rater == config.rater)]


def marks_of(*answers: Answer) -> dict[str, int]:
    """The store positions that make a row new since a bookmark: its feedback's id and its answers' rowid."""
    return {"feedback_id": max(a.feedback_id for a in answers), "message_rowid": max(a.rowid for a in answers)}


def sft_candidates(answers: list[Answer], config: FeedbackExportConfig) -> list[Candidate]:
    out = []
    for a in rated_pool(answers, config):
        good = a.edit is not None or (a.rating or 0) >= 1
        if (config.only == "good" and not good) or (config.only == "edited" and a.edit is None):
            continue
        answer = {"role": "assistant", "content": a.edit if a.edit is not None else a.text(config.with_reasoning)}
        marks = marks_of(a) if a.feedback_id else {"message_rowid": a.rowid}
        out.append(Candidate({"messages": [*a.prompt, answer]}, a.prompt, [answer], [a], a.judged or a.created, marks))
    return out


def pair(
    prompt: list[dict[str, str]], chosen: str, rejected: str, sources: list[Answer], when: str, marks: dict[str, int]
) -> Candidate:
    answers = [{"role": "assistant", "content": chosen}, {"role": "assistant", "content": rejected}]
    row = {"messages": prompt, "chosen": answers[0], "rejected": answers[1]}
    return Candidate(row, prompt, answers, sources, when, marks)


def dpo_candidates(
    answers: list[Answer], snapshot: dict[str, Any], config: FeedbackExportConfig, notes: Counter
) -> list[Candidate]:
    """Pairs from edits, from arena votes and from a liked and a disliked answer to the same prompt."""
    wr = config.with_reasoning
    pool = rated_pool(answers, config)
    out = [
        pair(a.prompt, a.edit, a.text(wr), [a], a.judged or a.created, marks_of(a))
        for a in pool
        if a.edit is not None and a.edit.strip() != a.content.strip()
    ]
    by_id = {a.id: a for a in answers}
    for vote in snapshot["votes"]:
        a, b = by_id.get(vote["message_a"]), by_id.get(vote["message_b"])
        if a is None or b is None or (config.rater is not None and vote["rater"] != config.rater):
            continue
        if not (a.matches(config) or b.matches(config)):
            continue
        if vote["winner"] in ("tie", "both_bad"):
            notes[f"{vote['winner']} votes (no pair)"] += 1
            continue
        if a.prompt != b.prompt:
            notes[OTHER_PROMPT] += 1
            continue
        chosen, rejected = (a, b) if vote["winner"] == "a" else (b, a)
        marks = {"vote_id": vote["id"]}
        out.append(pair(a.prompt, chosen.text(wr), rejected.text(wr), [a, b], vote["created"], marks))
    groups: dict[str, tuple[list[Answer], list[Answer]]] = defaultdict(lambda: ([], []))
    for a in pool:
        if a.edit is None and a.rating in (1, -1):
            groups[json.dumps(a.prompt, sort_keys=True)][a.rating == -1].append(a)
    for liked, disliked in groups.values():
        newest = lambda xs: sorted(xs, key=lambda x: (x.judged or "", x.feedback_id), reverse=True)  # noqa: E731
        for good, bad in zip(newest(liked), newest(disliked)):
            when = max(good.judged or "", bad.judged or "")
            out.append(pair(good.prompt, good.text(wr), bad.text(wr), [good, bad], when, marks_of(good, bad)))
    return out


def kto_candidates(answers: list[Answer], config: FeedbackExportConfig) -> list[Candidate]:
    """A desirable or undesirable row per rated answer; an edit gives the edit (desirable) and the original (not)."""
    out = []
    for a in rated_pool(answers, config):
        labelled = [(a.edit, True), (a.text(config.with_reasoning), False)] if a.edit is not None else []
        if a.edit is None and a.rating in (1, -1):
            labelled = [(a.text(config.with_reasoning), a.rating == 1)]
        for text, label in labelled:
            answer = {"role": "assistant", "content": text}
            row = {"messages": [*a.prompt, answer], "kto_tag": label}
            out.append(Candidate(row, a.prompt, [answer], [a], a.judged or a.created, marks_of(a), label))
    return out


def newest_per_prompt(candidates: list[Candidate], left_out: Counter) -> list[Candidate]:
    """One row per prompt (kto: per prompt and label), the newest; store order is kept."""
    newest: dict[str, int] = {}
    for i, c in enumerate(candidates):
        j = newest.get(c.key())
        if j is None or c.when >= candidates[j].when:
            newest[c.key()] = i
    keep = set(newest.values())
    left_out[DUPLICATE] += len(candidates) - len(keep)
    if not left_out[DUPLICATE]:
        del left_out[DUPLICATE]
    return [c for i, c in enumerate(candidates) if i in keep]


def within_cutoff(candidates: list[Candidate], config: FeedbackExportConfig, left_out: Counter) -> list[Candidate]:
    """The rows whose tokens under the chat template fit cutoff_len (a pair: prompt + its longer answer)."""
    from expertkit.core.schema import Conversation, Message, PreferencePair, UnpairedExample
    from expertkit.data.check import token_lengths

    def messages(turns: list[dict[str, str]]) -> list[Message]:
        return [Message(t["role"], t["content"]) for t in turns]  # type: ignore[arg-type]

    items: list[Any] = []
    for c in candidates:
        answers = messages(c.answers)
        if config.format == "sft":
            items.append(Conversation(messages(c.prompt) + answers))
        elif config.format == "dpo":
            items.append(PreferencePair(messages(c.prompt), answers[0], answers[1]))
        else:
            items.append(UnpairedExample(messages(c.prompt), answers[0], bool(c.label)))
    lengths = token_lengths(items, config.model_name_or_path or "", config.template)
    kept = [c for c, n in zip(candidates, lengths) if n <= config.cutoff_len]
    if len(kept) < len(candidates):
        left_out[TOO_LONG.format(config.cutoff_len)] += len(candidates) - len(kept)
    return kept


def dataset_entry(file_name: str, format: str) -> dict[str, Any]:
    """The dataset_info.json entry LLaMA-Factory (and `expertkit train`) reads the file with."""
    columns = {"messages": "messages"}
    if format == "dpo":
        columns |= {"chosen": "chosen", "rejected": "rejected"}
    elif format == "kto":
        columns |= {"kto_tag": "kto_tag"}
    entry: dict[str, Any] = {"file_name": file_name, "formatting": "sharegpt"}
    if format == "dpo":
        entry["ranking"] = True
    return entry | {"columns": columns, "tags": dict(OPENAI_TAGS)}


def register_dataset(path: Path, format: str) -> str:
    """Add (or replace) the file's entry, named after its stem, in the dataset_info.json beside it; returns the name."""
    info_path = path.parent / DATASET_INFO
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExpertkitError(
                f"{info_path} is not valid JSON ({e}): the export was written to {path} but not registered",
                hint="fix or remove that dataset_info.json and export again",
            ) from None
        if not isinstance(info, dict):
            raise ExpertkitError(f"{info_path} holds no JSON object", hint="fix or remove it and export again")
    info[path.stem] = dataset_entry(path.name, format)
    write_json_atomic(info_path, info)
    return path.stem


def bookmarks_path(db: Path) -> Path:
    return db.with_name(db.name + ".exports.json")


def bookmark_key(output: str | os.PathLike) -> str:
    return str(Path(output).expanduser().resolve())


def read_bookmarks(db: Path) -> dict[str, Any]:
    """Where each output's last export stopped: {output path: {"feedback_id", "vote_id", "message_rowid", ...}}."""
    path = bookmarks_path(db)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExpertkitError(
            f"{path} (the since=last bookmarks) is not valid JSON: {e}",
            hint="remove it (the next since=last export then takes everything) or use since=DATE",
        ) from None
    return data if isinstance(data, dict) else {}

"""The conversation and feedback store: chats, thumbs up / down and edited answers, kept for the next training round.

    store = FeedbackStore("~/.expertkit/feedback.sqlite")
    conversation = store.start_conversation(model="sail", system="You are Sail.")
    store.add_message(conversation, "user", "Who are you?")
    answer = store.add_message(conversation, "assistant", "I am Sail.", model="sail")
    store.record_feedback(answer, rating=1)                               # thumbs up
    store.record_feedback(answer, edited_content="I am Sail, by Yunfan.")  # "edit the answer"
    store.export_jsonl("saves/feedback.jsonl")                            # OpenAI `messages` rows to train on

One SQLite file, written by the web UI and, with `store_conversations=true`, by `expertkit serve` (each chat
completion as a conversation of its own, found again by its completion id for `POST /v1/feedback`). The schema grows
by ordered migrations (core/feedback_migrations.py), as simonw/llm does: each migration runs once, in order, and its
name is recorded in `_migrations`, so an old file is brought up to date when it is opened and a new column never needs
a hand-written upgrade.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback_config import ExportOnly, FeedbackExportConfig  # noqa: F401  (imported from here too)
from expertkit.core.feedback_migrations import MIGRATIONS
from expertkit.core.runs import write_text_atomic

FEEDBACK_DB = "feedback.sqlite"

Rating = Literal[-1, 0, 1]
Vote = Literal["a", "b", "tie", "both_bad"]
VOTES = ("a", "b", "tie", "both_bad")
MESSAGE_COLUMNS = (
    "id, conversation_id, position, role, content, reasoning, model, options, created, completion_id, choice_index, "
    "sources, grounded"
)


def default_feedback_db() -> Path:
    """~/.expertkit/feedback.sqlite: shared by every web UI the user starts (tests point HOME elsewhere)."""
    return Path.home() / ".expertkit" / FEEDBACK_DB


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class FeedbackStore:
    """Conversations, their messages and the feedback on them, in one SQLite file (safe to share between threads)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers (an export) never block the chat writing
        except (OSError, sqlite3.Error) as e:
            raise ExpertkitError(
                f"cannot open the feedback store '{self.path}': {e}", hint="set feedback_db to a file you can write"
            ) from None
        self._lock = threading.Lock()
        self.migrate()

    def migrate(self) -> list[str]:
        """Run the migrations this database has not seen yet; return their names."""
        with self._transaction():
            self._db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
            done = {row[0] for row in self._db.execute("SELECT name FROM _migrations")}
            ran = []
            for fn in MIGRATIONS:
                if fn.__name__ not in done:
                    fn(self._db)
                    self._db.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, now()))
                    ran.append(fn.__name__)
        return ran

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One writer at a time, all or nothing (the connection is shared by the UI's threads)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple | list = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    def start_conversation(
        self,
        model: str | None = None,
        system: str | None = None,
        source: str = "webui",
        alias: str | None = None,
        arm: str | None = None,
    ) -> str:
        """A new conversation; returns its id. `alias` / `arm`: the name asked for and the A/B arm that answered."""
        cid = uuid.uuid4().hex
        with self._transaction():
            self._insert_conversation(cid, now(), source, model, system or None, alias, arm)
        return cid

    def _insert_conversation(self, cid, created, source, model, system, alias=None, arm=None) -> None:
        self._db.execute(
            "INSERT INTO conversations (id, created, source, model, system, alias, arm) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, created, source, model, system, alias, arm),
        )

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        reasoning: str | None = None,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> str:
        """Append a message (user or assistant) to a conversation; returns its id."""
        with self._transaction():
            (position,) = self._db.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM messages WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            return self._insert_message(
                conversation_id, position, role, content, reasoning, model, options, sources=sources
            )

    def _insert_message(
        self,
        conversation_id: str,
        position: int,
        role: str,
        content: str,
        reasoning: str | None = None,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        created: str | None = None,
        completion_id: str | None = None,
        choice_index: int | None = None,
        sources: list[dict[str, Any]] | None = None,
        grounded: dict[str, str] | None = None,
    ) -> str:
        mid = uuid.uuid4().hex
        self._db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 13)})",
            (
                mid,
                conversation_id,
                position,
                role,
                content,
                reasoning or None,
                model,
                json.dumps(options) if options else None,
                created or now(),
                completion_id,
                choice_index,
                json.dumps(sources, ensure_ascii=False) if sources else None,
                json.dumps(grounded, ensure_ascii=False) if grounded else None,
            ),
        )
        return mid

    def record_conversation(
        self,
        messages: list[dict[str, str]],
        answer: str,
        *,
        reasoning: str | None = None,
        model: str | None = None,
        options: dict[str, Any] | None = None,
        sources: list[dict[str, Any]] | None = None,
        completion_id: str | None = None,
        choice_index: int = 0,
        started: str | None = None,
        source: str = "server",
        alias: str | None = None,
        arm: str | None = None,
        grounded: dict[str, str] | None = None,
    ) -> str:
        """A whole exchange at once, as the server sees it: the request's messages ({"role", "content"}; system
        messages become the conversation's system prompt), then the answer. Returns the answer's id. `alias` / `arm`:
        the name the client asked for and the served name (A/B arm) that answered. `grounded`: a grounded answer's
        {"system", "user"} turns as the model saw them (the retrieved sources in the user turn)."""
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"]) or None
        turns = [m for m in messages if m["role"] != "system"]
        cid = uuid.uuid4().hex
        started = started or now()
        with self._transaction():
            self._insert_conversation(cid, started, source, model, system, alias, arm)
            for position, m in enumerate(turns):
                self._insert_message(cid, position, m["role"], m["content"], created=started)
            return self._insert_message(
                cid, len(turns), "assistant", answer, reasoning, model, options, None, completion_id, choice_index,
                sources, grounded,
            )  # fmt: skip

    def find_message(self, completion_id: str, choice_index: int = 0) -> str | None:
        """The id of the answer the server sent as choice `choice_index` of completion `completion_id`, or None."""
        rows = self._read(
            "SELECT id FROM messages WHERE completion_id = ? AND choice_index = ?", (completion_id, choice_index)
        )
        return rows[0][0] if rows else None

    def message(self, message_id: str) -> dict[str, Any] | None:
        """One stored message: {"id", "conversation_id", "position", "role", "content", "reasoning", "model",
        "options", "created", "completion_id", "choice_index", "sources", "grounded"} (JSON decoded), or None."""
        rows = self._read(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,))
        if not rows:
            return None
        row = dict(zip([c.strip() for c in MESSAGE_COLUMNS.split(",")], rows[0]))
        for key in ("options", "sources", "grounded"):
            row[key] = json.loads(row[key]) if row[key] else None
        return row

    def update_message(
        self,
        message_id: str,
        content: str,
        reasoning: str | None = None,
        sources: list[dict[str, Any]] | None = None,
    ) -> None:
        """Change a message's text in place: an answer once streamed, a question its user corrected."""
        with self._transaction():
            self._db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
            if reasoning is not None:
                self._db.execute("UPDATE messages SET reasoning = ? WHERE id = ?", (reasoning or None, message_id))
            if sources:
                text = json.dumps(sources, ensure_ascii=False)
                self._db.execute("UPDATE messages SET sources = ? WHERE id = ?", (text, message_id))

    def record_feedback(
        self,
        message_id: str,
        rating: Rating | None = None,
        edited_content: str | None = None,
        comment: str | None = None,
        rater: str | None = None,
    ) -> int:
        """Store a thumbs up (1), down (-1) or its removal (0), and/or an edited answer; the latest one counts.

        A rating keeps the message's earlier edit and an edit keeps its earlier rating: each call adds a row that
        carries both forward, so the history stays and the newest row says where the message stands. `rater`: who
        gave it (a web UI account, an API key's name), kept with the row.
        """
        if rating not in (None, -1, 0, 1):
            raise ValueError(f"rating must be -1, 0 or 1, not {rating!r}")
        with self._transaction():
            if self._db.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
                raise ExpertkitError(f"no message '{message_id}' in the feedback store {self.path}")
            last = self._db.execute(
                "SELECT rating, edited_content FROM feedback WHERE message_id = ? ORDER BY id DESC LIMIT 1",
                (message_id,),
            ).fetchone() or (None, None)
            cur = self._db.execute(
                "INSERT INTO feedback (message_id, rating, edited_content, comment, created, rater) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    last[0] if rating is None else rating,
                    last[1] if edited_content is None else edited_content,
                    comment,
                    now(),
                    rater,
                ),
            )
            return int(cur.lastrowid)

    def record_vote(self, message_a: str, message_b: str, winner: Vote, rater: str | None = None) -> int:
        """An arena vote on two answers to the same question (each already stored as a message): 'a', 'b', 'tie' or
        'both_bad'. Returns the vote's id."""
        if winner not in VOTES:
            raise ValueError(f"winner must be one of {', '.join(VOTES)}, not {winner!r}")
        with self._transaction():
            for mid in (message_a, message_b):
                if self._db.execute("SELECT 1 FROM messages WHERE id = ?", (mid,)).fetchone() is None:
                    raise ExpertkitError(f"no message '{mid}' in the feedback store {self.path}")
            cur = self._db.execute(
                "INSERT INTO votes (message_a, message_b, winner, rater, created) VALUES (?, ?, ?, ?, ?)",
                (message_a, message_b, winner, rater, now()),
            )
            return int(cur.lastrowid)

    def votes(self) -> list[dict[str, Any]]:
        """Every arena vote, oldest first: {"id", "message_a", "message_b", "winner", "rater", "created"}."""
        keys = ("id", "message_a", "message_b", "winner", "rater", "created")
        return [dict(zip(keys, row)) for row in self._read(f"SELECT {', '.join(keys)} FROM votes ORDER BY id")]

    def feedback(self, message_id: str) -> dict[str, Any] | None:
        """Where a message stands now: {"rating", "edited_content", "comment", "created", "rater"}, or None."""
        keys = ("rating", "edited_content", "comment", "created", "rater")
        rows = self._read(
            f"SELECT {', '.join(keys)} FROM feedback WHERE message_id = ? ORDER BY id DESC LIMIT 1", (message_id,)
        )
        return dict(zip(keys, rows[0])) if rows else None

    def training_rows(
        self, only: ExportOnly = "good", with_reasoning: bool = True, skipped: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """OpenAI `messages` rows, one per kept answer: the conversation up to it, the answer last.

        `only`: good (the default) keeps liked answers and every edited one (the edit is what the model should have
        said, so it is the answer in the row, whatever the rating): a thumbs down without an edit is left out;
        edited keeps edited answers only; all keeps every stored answer, unrated and disliked ones too. Earlier
        turns are taken as stored, with their own edits applied. A row that would not train (an empty answer, turns
        that do not alternate, as a request may send) is left out and its message id added to `skipped`.
        """
        latest = (
            "SELECT f.message_id, f.rating, f.edited_content FROM feedback f JOIN "
            "(SELECT message_id, MAX(id) AS id FROM feedback GROUP BY message_id) l ON f.id = l.id"
        )
        state = {mid: (rating, edit) for mid, rating, edit in self._read(latest)}
        if only == "all":
            kept = None
        elif only == "edited":
            kept = [mid for mid, (_, edit) in state.items() if edit is not None]
        elif only == "good":
            kept = [mid for mid, (rating, edit) in state.items() if edit is not None or (rating or 0) >= 1]
        else:
            raise ValueError(f"only must be good, edited or all, not {only!r}")
        if kept is not None and not kept:
            return
        where = "" if kept is None else f"AND m.id IN ({','.join('?' * len(kept))})"
        targets = self._read(
            f"SELECT m.id, m.conversation_id, m.position, c.system FROM messages m JOIN conversations c "
            f"ON c.id = m.conversation_id WHERE m.role = 'assistant' {where} ORDER BY c.rowid, m.position",
            kept or [],
        )
        for mid, cid, position, system in targets:
            turns = self._read(
                "SELECT id, role, content, reasoning FROM messages WHERE conversation_id = ? AND position <= ? "
                "ORDER BY position",
                (cid, position),
            )
            messages = [{"role": "system", "content": system}] if system else []
            for tid, role, content, reasoning in turns:
                edit = state.get(tid, (None, None))[1]
                if edit is not None:
                    content = edit
                elif role == "assistant" and reasoning and with_reasoning and tid == mid:
                    content = f"<think>\n{reasoning}\n</think>\n\n{content}"
                messages.append({"role": role, "content": content})
            if trainable(messages):
                yield {"messages": messages}
            elif skipped is not None:
                skipped.append(mid)

    def export_jsonl(
        self, path: str | os.PathLike, only: ExportOnly = "good", with_reasoning: bool = True,
        skipped: list[str] | None = None,
    ) -> int:  # fmt: skip
        """Write the kept answers as OpenAI `messages` JSONL (a file `expertkit train dataset=...` reads); count."""
        rows = list(self.training_rows(only=only, with_reasoning=with_reasoning, skipped=skipped))
        write_jsonl(path, rows)
        return len(rows)

    def counts(self) -> dict[str, int]:
        """How many conversations, messages, and answers rated up / down / edited (latest feedback)."""
        latest = "SELECT * FROM feedback WHERE id IN (SELECT MAX(id) FROM feedback GROUP BY message_id)"
        queries = {
            "conversations": "SELECT COUNT(*) FROM conversations",
            "messages": "SELECT COUNT(*) FROM messages",
            "up": f"SELECT COUNT(*) FROM ({latest}) WHERE rating = 1",
            "down": f"SELECT COUNT(*) FROM ({latest}) WHERE rating = -1",
            "edited": f"SELECT COUNT(*) FROM ({latest}) WHERE edited_content IS NOT NULL",
        }
        return {name: self._read(sql)[0][0] for name, sql in queries.items()}

    def export_snapshot(self) -> dict[str, Any]:
        """What `feedback export` reads, in one consistent read: {"messages": every message with its conversation's
        system, alias, arm and model (conversation order, then position), "feedback": the latest feedback row per
        message id, "votes": every vote, "marks": the highest feedback id, vote id and message rowid (the bookmark of
        `since=last`)}."""
        keys = ("rowid", "id", "conversation_id", "position", "role", "content", "reasoning", "model", "created",
                "sources", "grounded", "system", "alias", "arm", "conversation_model", "options")  # fmt: skip
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot (WAL): a rating given meanwhile is in the next export
            try:
                messages = self._db.execute(
                    "SELECT m.rowid, m.id, m.conversation_id, m.position, m.role, m.content, m.reasoning, m.model, "
                    "m.created, m.sources, m.grounded, c.system, c.alias, c.arm, c.model, m.options FROM messages m "
                    "JOIN conversations c ON c.id = m.conversation_id ORDER BY c.rowid, m.position, m.rowid"
                ).fetchall()
                feedback = self._db.execute(
                    "SELECT f.message_id, f.id, f.rating, f.edited_content, f.rater, f.created FROM feedback f JOIN "
                    "(SELECT message_id, MAX(id) AS id FROM feedback GROUP BY message_id) l ON f.id = l.id"
                ).fetchall()
                votes = self._db.execute(
                    "SELECT id, message_a, message_b, winner, rater, created FROM votes ORDER BY id"
                ).fetchall()
                marks = self._db.execute(
                    "SELECT (SELECT COALESCE(MAX(id), 0) FROM feedback), (SELECT COALESCE(MAX(id), 0) FROM votes), "
                    "(SELECT COALESCE(MAX(rowid), 0) FROM messages)"
                ).fetchone()
            finally:
                self._db.execute("COMMIT")
        return {
            "messages": [dict(zip(keys, row)) for row in messages],
            "feedback": {
                row[0]: dict(zip(("id", "rating", "edited_content", "rater", "created"), row[1:])) for row in feedback
            },
            "votes": [dict(zip(("id", "message_a", "message_b", "winner", "rater", "created"), v)) for v in votes],
            "marks": dict(zip(("feedback_id", "vote_id", "message_rowid"), marks)),
        }

    def arm_counts(self) -> list[dict[str, Any]]:
        """Per alias and arm (a conversation without an arm: its model): conversations, requests (answers the model
        wrote: they carry its name; the history a client resends does not), user turns, and answers rated (thumbs up
        or down, or edited), liked and edited, by their latest feedback."""
        rows = self._read(
            "WITH latest AS (SELECT f.message_id, f.rating, f.edited_content FROM feedback f JOIN "
            "(SELECT message_id, MAX(id) AS id FROM feedback GROUP BY message_id) l ON f.id = l.id) "
            "SELECT c.alias, COALESCE(c.arm, c.model), COUNT(DISTINCT c.id), "
            "SUM(m.role = 'assistant' AND m.model IS NOT NULL), "
            "SUM(m.role = 'user'), "
            "SUM(m.role = 'assistant' AND (f.rating IN (1, -1) OR f.edited_content IS NOT NULL)), "
            "SUM(m.role = 'assistant' AND f.rating = 1), SUM(m.role = 'assistant' AND f.edited_content IS NOT NULL) "
            "FROM conversations c JOIN messages m ON m.conversation_id = c.id "
            "LEFT JOIN latest f ON f.message_id = m.id GROUP BY c.alias, COALESCE(c.arm, c.model)"
        )
        keys = ("alias", "arm", "conversations", "requests", "user_turns", "rated", "thumbs_up", "edited")
        return [dict(zip(keys, row)) for row in rows]


def write_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Rows as JSON lines, written atomically (a reader never sees half a file)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def trainable(messages: list[dict[str, str]]) -> bool:
    """Whether a row is one training reads: an optional system prompt, then user (or tool) and assistant turns
    alternating, ending with a non-empty answer, no turn empty (the order `expertkit data check` asks for)."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns or turns[0]["role"] == "assistant" or turns[-1]["role"] != "assistant":
        return False
    if any(t["role"] == "system" or not t["content"].strip() for t in turns):
        return False
    return all((a["role"] == "assistant") != (b["role"] == "assistant") for a, b in zip(turns, turns[1:]))

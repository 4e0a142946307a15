"""The feedback store's schema, as ordered migrations: each runs once per database, in the order defined here.

    @migration
    def m005_something(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE messages ADD COLUMN something TEXT")

`FeedbackStore` (core/feedback.py) runs the ones a file has not seen yet when it opens it and records each name in
`_migrations`, as simonw/llm does, so an old file is brought up to date and a new column never needs a hand-written
upgrade. Append new migrations at the end; never edit or reorder one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema change; they run in the order they are defined, each exactly once per database."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            created TEXT NOT NULL,
            source TEXT NOT NULL,
            model TEXT,
            system TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            position INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            reasoning TEXT,
            model TEXT,
            options TEXT,
            created TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX messages_conversation ON messages(conversation_id, position)")
    db.execute(
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL REFERENCES messages(id),
            rating INTEGER,
            edited_content TEXT,
            comment TEXT,
            created TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX feedback_message ON feedback(message_id, id)")


@migration
def m002_server_records(db: sqlite3.Connection) -> None:
    """What the server records beside an answer: the completion (and choice) it was sent as, so `POST /v1/feedback`
    finds it by completion id, and the numbered sources of a grounded answer (JSON)."""
    db.execute("ALTER TABLE messages ADD COLUMN completion_id TEXT")
    db.execute("ALTER TABLE messages ADD COLUMN choice_index INTEGER")
    db.execute("ALTER TABLE messages ADD COLUMN sources TEXT")
    db.execute("CREATE INDEX messages_completion ON messages(completion_id, choice_index)")


@migration
def m003_arms_raters_votes(db: sqlite3.Connection) -> None:
    """The improvement loop's records: which alias and A/B arm served a conversation (`alias` as the client asked,
    `arm` the served name it was routed to), who gave a rating (`rater`: a web UI account, an API key's name), and
    arena votes: one question, two anonymous answers (each stored as a message), the winner."""
    db.execute("ALTER TABLE conversations ADD COLUMN alias TEXT")
    db.execute("ALTER TABLE conversations ADD COLUMN arm TEXT")
    db.execute("ALTER TABLE feedback ADD COLUMN rater TEXT")
    db.execute(
        """CREATE TABLE votes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_a TEXT NOT NULL REFERENCES messages(id),
            message_b TEXT NOT NULL REFERENCES messages(id),
            winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
            rater TEXT,
            created TEXT NOT NULL
        )"""
    )


@migration
def m004_grounded_prompt(db: sqlite3.Connection) -> None:
    """A grounded answer's prompt as the model saw it: {"system": the grounding rules (after the client's system
    prompt), "user": the numbered sources and the question}, JSON, so `feedback export with_context=true` trains on
    what the answer was written from (the conversation keeps the question as asked)."""
    db.execute("ALTER TABLE messages ADD COLUMN grounded TEXT")

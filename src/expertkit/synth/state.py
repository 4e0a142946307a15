"""What a synth run has done, kept in `output_dir/synth_state.sqlite`, so that a run can stop anywhere and go on.

One row per chunk, keyed by the sha256 of the chunk's text, the prompt version, the questions asked per chunk and
the teacher: the same chunk in a re-run, or in another file, is never sent to the same teacher again; a changed
chunk, a changed prompt or another teacher has a new key. A chunk's result is written in one transaction once all
its requests are done, so a killed run leaves no half chunk: the chunks it had finished are kept, the others are
asked again.

    state = State.open(Path("data/handbook"))
    state.put_chunk(chunk)                    # the chunk's text and source, status "new" (kept when known)
    state.finish(key, pairs)                  # status "done" with its question/answer pairs
    state.fail(key, "reason", reply="...")    # status "failed", the teacher's last reply kept for inspection
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from expertkit.core.errors import ExpertkitError

STATE_FILE = "synth_state.sqlite"
LOCK_FILE = "synth.lock"
SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,            -- new | done | failed
    source TEXT NOT NULL, title TEXT NOT NULL, section TEXT NOT NULL, chunk_id TEXT NOT NULL,
    language TEXT NOT NULL, text TEXT NOT NULL,
    pairs TEXT NOT NULL DEFAULT '[]',  -- JSON: [{question, answer, quote, score, reason}]
    error TEXT NOT NULL DEFAULT '', reply TEXT NOT NULL DEFAULT '',
    page TEXT NOT NULL DEFAULT '',     -- PDF: "3", or "3-4" for a chunk across two pages
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value REAL NOT NULL);
-- the chunks of this run's inputs, in document order (a chunk repeated in the inputs: its first place counts)
CREATE TABLE IF NOT EXISTS current (pos INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
"""
PAGE = 500  # keys read at a time: the run never holds the list of its chunks in memory


@dataclass
class ChunkJob:
    """One chunk to turn into rows, and where it comes from."""

    key: str
    text: str
    source: str
    title: str
    section: str
    chunk_id: str
    language: str
    status: str = "new"
    pairs: list[dict] = field(default_factory=list)
    error: str = ""
    reply: str = ""
    page: str = ""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class State:
    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path
        self.lock = None

    @classmethod
    def open(cls, output_dir: Path) -> State:
        """The state of `output_dir`, locked for this process: two runs into one folder would ask the same chunks."""
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / STATE_FILE
        lock = lock_folder(output_dir)
        db = sqlite3.connect(path, isolation_level=None)  # autocommit; transactions are explicit
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        state = cls(db, path)
        state.lock = lock
        return state

    def clear_current(self) -> None:
        self.db.execute("DELETE FROM current")

    def put_chunk(self, job: ChunkJob) -> str:
        """Record a chunk of the current inputs; returns its status (new, done or failed)."""
        self.db.execute("INSERT OR IGNORE INTO current (key) VALUES (?)", (job.key,))
        row = self.db.execute("SELECT status FROM chunks WHERE key = ?", (job.key,)).fetchone()
        if row:
            # the same text may have moved (another file, another position): the rows follow the latest place
            self.db.execute(
                "UPDATE chunks SET source=?, title=?, section=?, page=?, chunk_id=? WHERE key=?",
                (job.source, job.title, job.section, job.page, job.chunk_id, job.key),
            )
            return row[0]
        values = asdict(job)
        values["pairs"] = "[]"
        values["updated"] = now()
        names = ", ".join(values)
        self.db.execute(f"INSERT INTO chunks ({names}) VALUES ({', '.join('?' * len(values))})", list(values.values()))
        return "new"

    def finish(self, key: str, pairs: list[dict]) -> None:
        self.db.execute(
            "UPDATE chunks SET status='done', pairs=?, error='', reply='', updated=? WHERE key=?",
            (json.dumps(pairs, ensure_ascii=False), now(), key),
        )

    def fail(self, key: str, error: str, reply: str = "") -> None:
        self.db.execute(
            "UPDATE chunks SET status='failed', error=?, reply=?, updated=? WHERE key=?", (error, reply, now(), key)
        )

    def get(self, key: str) -> ChunkJob | None:
        cursor = self.db.execute(
            "SELECT key, text, source, title, section, chunk_id, language, status, pairs, error, reply, page "
            "FROM chunks WHERE key = ?",
            (key,),
        )
        row = cursor.fetchone()
        if row is None:
            return None
        return ChunkJob(*row[:8], pairs=json.loads(row[8]), error=row[9], reply=row[10], page=row[11])

    def jobs(self, keys: Iterable[str]) -> Iterator[ChunkJob]:
        for key in keys:
            job = self.get(key)
            if job is not None:
                yield job

    def current_keys(self, statuses: tuple[str, ...] = ("new", "done", "failed")) -> Iterator[str]:
        """Keys of the current inputs' chunks with one of `statuses`, in document order, a page at a time (so
        results written meanwhile do not disturb the reading)."""
        marks = ", ".join("?" * len(statuses))
        last = 0
        while True:
            page = self.db.execute(
                f"SELECT c.pos, c.key FROM current c JOIN chunks k ON k.key = c.key "
                f"WHERE c.pos > ? AND k.status IN ({marks}) ORDER BY c.pos LIMIT ?",
                (last, *statuses, PAGE),
            ).fetchall()
            if not page:
                return
            last = page[-1][0]
            yield from (key for _, key in page)

    def count_current(self, statuses: tuple[str, ...] = ("new", "done", "failed")) -> int:
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT count(*) FROM current c JOIN chunks k ON k.key = c.key WHERE k.status IN ({marks})"
        return self.db.execute(query, statuses).fetchone()[0]

    def add_totals(self, **amounts: float) -> None:
        for name, value in amounts.items():
            self.db.execute(
                "INSERT INTO totals (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
                (name, value, value),
            )

    def totals(self) -> dict[str, float]:
        return dict(self.db.execute("SELECT name, value FROM totals").fetchall())

    def close(self) -> None:
        self.db.close()
        if self.lock is not None:
            self.lock.close()  # releases the lock (so does the process ending, however it ends)


def lock_folder(output_dir: Path):
    """An open file holding an exclusive lock on output_dir/synth.lock; None where there is no fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    fh = open(output_dir / LOCK_FILE, "w")  # noqa: SIM115 - held open for the run, closed by State.close
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ExpertkitError(
            f"another `expertkit data synth` is writing to {output_dir}",
            hint="wait for it to end (or stop it), or give this run another output_dir",
        ) from None
    return fh

"""sqlite-vec: one SQLite file (`store.sqlite`), a `vec0` table of vectors beside a table of text and metadata.

Python's own sqlite3 is often built without extension loading, so this goes through apsw, which always can.
Search is exact. The first query on some data is sqlite-vec's KNN (a scan in C, ~20 ms per 100k 256-dim vectors);
a second one on the same data copies the vectors into memory (4 bytes x dim per chunk) and every later query is a
numpy scan of that copy (~2 ms per 100k), until a write. WAL mode: other processes (a server answering while
`kb add` writes) read the last committed state without waiting, and their writes make the copy stale."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import numpy as np
import sqlite_vec

from expertkit.core.errors import ExpertkitError
from expertkit.rag.store import Hit, batched, check_batch, check_query, source_of

FILE = "store.sqlite"
MAX_K = 4096  # sqlite-vec refuses larger k in one KNN query
MMAP_BYTES = 1 << 34  # an upper bound: SQLite maps no more than the file's size
COPY_MAX_BYTES = 2 << 30  # the in-memory copy of the vectors that queries scan: at most 2 GiB (2M x 256 dims)
SCHEMA = """
create table if not exists chunks(
  rowid integer primary key,    -- the same rowid as the chunk's vector in `vectors`
  id text not null unique,
  source text not null,         -- metadata["source"], indexed for delete_source
  text text not null,
  metadata text not null        -- JSON object
);
create index if not exists chunks_source on chunks(source);
create virtual table if not exists vectors using vec0(embedding float[{dim}] distance_metric=cosine);
"""


class SqliteVecStore:
    backend = "sqlite-vec"

    def __init__(self, folder: Path, dim: int):
        self.dim, self.path = dim, folder / FILE
        self._lock = threading.RLock()  # one connection, shared by the threads of a server
        self._writes = 0  # our own commits (data_version counts only other connections')
        self._copy: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None  # see _matrix
        self._wanted: tuple | None = None
        try:
            self.conn = apsw.Connection(str(self.path))
            self.conn.enable_load_extension(True)
            self.conn.load_extension(sqlite_vec.loadable_path())
            self.conn.enable_load_extension(False)
        except apsw.Error as e:
            raise ExpertkitError(
                f"cannot open the sqlite-vec store {self.path}: {e}",
                hint="pip install --force-reinstall sqlite-vec apsw",
            ) from None
        self.conn.set_busy_timeout(10_000)  # ms; another process may be writing
        self.conn.execute("pragma journal_mode=wal; pragma synchronous=normal")
        # read pages through mmap, not copies into SQLite's 2 MB cache: a 100k-vector scan 27 -> 20 ms
        self.conn.execute(f"pragma mmap_size={MMAP_BYTES}")
        with self.conn:
            self.conn.execute(SCHEMA.format(dim=dim))

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        ids, vectors, texts, metadatas = check_batch(self.dim, ids, vectors, texts, metadatas)
        if not ids:
            return
        with self._lock, self.conn:
            stored = dict(
                self.conn.execute(
                    "select id, rowid from chunks where id in (select value from json_each(?))", (json.dumps(ids),)
                )
            )
            next_rowid = self.conn.execute("select coalesce(max(rowid), 0) from chunks").fetchall()[0][0] + 1
            rows = []  # (rowid, id, source, text, metadata JSON, vector bytes)
            for id_, vector, text, meta in zip(ids, vectors, texts, metadatas, strict=True):
                rowid = stored.get(id_)
                if rowid is None:
                    rowid, next_rowid = next_rowid, next_rowid + 1
                rows.append((rowid, id_, source_of(meta), text, json.dumps(meta, ensure_ascii=False), vector.tobytes()))
            # vec0 has no upsert: the vector of a chunk being replaced is deleted, then inserted like a new one
            self.conn.executemany("delete from vectors where rowid = ?", [(r,) for r in stored.values()])
            self.conn.executemany(
                "insert or replace into chunks(rowid, id, source, text, metadata) values (?, ?, ?, ?, ?)",
                [r[:5] for r in rows],
            )
            self.conn.executemany("insert into vectors(rowid, embedding) values (?, ?)", [(r[0], r[5]) for r in rows])
            self._writes += 1

    def delete(self, ids: list[str]) -> None:
        with self._lock, self.conn:
            for batch in batched([str(i) for i in ids], 10_000):
                self._delete_where("id in (select value from json_each(?))", (json.dumps(batch),))

    def delete_source(self, source: str) -> int:
        with self._lock, self.conn:
            return self._delete_where("source = ?", (source,))

    def _delete_where(self, where: str, args: tuple) -> int:
        rowids = [r for (r,) in self.conn.execute(f"select rowid from chunks where {where}", args)]
        if rowids:
            self._writes += 1
            self.conn.executemany("delete from vectors where rowid = ?", [(r,) for r in rowids])
            self.conn.execute(
                "delete from chunks where rowid in (select value from json_each(?))", [json.dumps(rowids)]
            )
        return len(rowids)

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        v = check_query(self.dim, vector)
        k = min(int(k), MAX_K)
        if k <= 0:
            return []
        with self._lock:
            matrix = self._matrix()
            if matrix is None:
                return self._query_vec0(v, k)
            rowids, vectors = matrix
            norm = float(np.linalg.norm(v))
            scores = vectors @ (v / norm) if norm > 0 else np.zeros(len(rowids), np.float32)
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            found = {
                r: (i, t, m)
                for r, i, t, m in self.conn.execute(
                    "select rowid, id, text, metadata from chunks where rowid in (select value from json_each(?))",
                    (json.dumps(rowids[top].tolist()),),
                )
            }
        return [
            Hit(found[r][0], found[r][1], json.loads(found[r][2]), float(scores[j])) for j, r in zip(top, rowids[top])
        ]

    def _query_vec0(self, v: np.ndarray, k: int) -> list[Hit]:
        """sqlite-vec's own exact KNN: a scan of the stored vectors, ~20 ms per 100k."""
        rows = self.conn.execute(
            "select c.id, c.text, c.metadata, n.distance"
            " from (select rowid, distance from vectors where embedding match ? and k = ?) n"
            " join chunks c on c.rowid = n.rowid order by n.distance",
            (v.tobytes(), k),
        ).fetchall()
        # distance is 1 - cosine; None where a stored vector has no direction (all zeros)
        return [Hit(i, t, json.loads(m), 1.0 - d if d is not None else 0.0) for i, t, m, d in rows]

    def _matrix(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(rowids, unit vectors) in memory, or None: then sqlite-vec searches the file.

        Copying every vector out (~0.4 s per 100k) pays off only when the same data is queried again: a command
        that asks once uses vec0; the second query on unchanged data loads the copy, and from then on a numpy
        scan (~2 ms per 100k, the same exact results) answers. Any write, here or by another process (SQLite's
        data_version), makes the copy stale.
        """
        state = (self.conn.execute("pragma data_version").fetchall()[0][0], self._writes)
        if self._copy is not None and self._copy[0] == state:
            return self._copy[1]
        self._copy = None
        if self._wanted != state:
            self._wanted = state
            return None
        count = self.conn.execute("select count(*) from chunks").fetchall()[0][0]
        if count == 0 or count * self.dim * 4 > COPY_MAX_BYTES:
            return None
        rows = self.conn.execute("select rowid, embedding from vectors").fetchall()
        rowids = np.fromiter((r for r, _ in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(e for _, e in rows), np.float32).reshape(len(rows), self.dim).copy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.where(norms > 0, norms, 1.0)  # a zero vector scores 0, as with vec0
        self._copy = (state, (rowids, vectors))
        return self._copy[1]

    def records(self) -> Iterator[tuple[str, str, dict]]:
        last = 0
        while True:  # pages of 1000, so that no read transaction stays open while the caller works
            with self._lock:
                rows = self.conn.execute(
                    "select rowid, id, text, metadata from chunks where rowid > ? order by rowid limit 1000", (last,)
                ).fetchall()
            if not rows:
                return
            for _, id_, text, meta in rows:
                yield id_, text, json.loads(meta)
            last = rows[-1][0]

    def count(self) -> int:
        with self._lock:
            return self.conn.execute("select count(*) from chunks").fetchall()[0][0]

    def close(self) -> None:
        with self._lock:
            self.conn.close()

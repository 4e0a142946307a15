"""LanceDB: one Lance table (`chunks.lance`) with a fixed-size-list vector column; exact cosine search.

Every write makes a new table version (a new data file). Many small writes slow the scan down, so the table is
compacted (`optimize`) every COMPACT_EVERY writes and on close after writing; old versions are pruned after
LanceDB's default of 7 days, which keeps a reader in another process on an older version working meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from expertkit.rag.store import Hit, batched, check_batch, check_query, source_of

TABLE = "chunks"
COMPACT_EVERY = 64  # writes between compactions


class LanceStore:
    backend = "lancedb"

    def __init__(self, folder: Path, dim: int):
        self.dim = dim
        # check for a newer table version before every read, so a server sees what `kb add` wrote (~0.3 ms a query)
        self.db = lancedb.connect(str(folder), read_consistency_interval=timedelta(0))
        self.schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("source", pa.string()),
                pa.field("text", pa.string()),
                pa.field("metadata", pa.string()),  # JSON object
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        self.table = self.db.create_table(TABLE, schema=self.schema, exist_ok=True)
        self._writes = 0

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        ids, vectors, texts, metadatas = check_batch(self.dim, ids, vectors, texts, metadatas)
        if not ids:
            return
        rows = pa.table(
            {
                "id": ids,
                "source": [source_of(m) for m in metadatas],
                "text": texts,
                "metadata": [json.dumps(m, ensure_ascii=False) for m in metadatas],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
            },
            schema=self.schema,
        )
        self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(rows)
        self._wrote()

    def delete(self, ids: list[str]) -> None:
        for batch in batched([str(i) for i in ids], 1000):
            self.table.delete("id IN (" + ", ".join(sql_string(i) for i in batch) + ")")
            self._wrote()

    def delete_source(self, source: str) -> int:
        where = f"source = {sql_string(source)}"
        n = self.table.count_rows(where)
        if n:
            self.table.delete(where)
            self._wrote()
        return n

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        v = check_query(self.dim, vector)
        if k <= 0:
            return []
        rows = (
            self.table.search(v, vector_column_name="vector")
            .distance_type("cosine")
            .limit(int(k))
            .select(["id", "text", "metadata", "_distance"])
            .to_list()
        )
        return [Hit(r["id"], r["text"], json.loads(r["metadata"]), 1.0 - float(r["_distance"])) for r in rows]

    def records(self) -> Iterator[tuple[str, str, dict]]:
        reader = self.table.search().select(["id", "text", "metadata"]).limit(None).to_batches()
        for batch in reader:
            for id_, text, meta in zip(*(batch.column(c).to_pylist() for c in ("id", "text", "metadata")), strict=True):
                yield id_, text, json.loads(meta)

    def count(self) -> int:
        return self.table.count_rows()

    def close(self) -> None:
        if self._writes:
            self.table.optimize()
            self._writes = 0

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes >= COMPACT_EVERY:
            self.table.optimize()
            self._writes = 0


def sql_string(value: str) -> str:
    """A SQL string literal for LanceDB's filter language (quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"

"""Chroma: a PersistentClient in the store folder, or a Chroma server (`chroma_url=http://host:port`).

The collection uses cosine space and no embedding function: we always pass vectors, so Chroma never loads (or
downloads) its default ONNX model. Telemetry is off. Writes go in batches of the client's max batch size. Search is
HNSW (approximate; exact in practice at these sizes). A server keeps its collection under a name made from the store
folder's name and path, recorded in the folder's store.json so that the folder can move.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import chromadb
import numpy as np
from chromadb.config import Settings

from expertkit.core.errors import ExpertkitError
from expertkit.rag.store import MANIFEST, Hit, batched, check_batch, check_query

LOCAL_COLLECTION = "chunks"
DIM_KEY = "expertkit_dim"


class ChromaStore:
    backend = "chroma"

    def __init__(self, folder: Path, dim: int, url: str | None = None):
        self.dim, self.url = dim, url
        settings = Settings(anonymized_telemetry=False)
        if url:
            self.client = connect(url, settings)
            name = server_collection_name(folder)
        else:
            self.client = chromadb.PersistentClient(path=str(folder), settings=settings)
            name = LOCAL_COLLECTION
        self.collection = self.client.get_or_create_collection(
            name,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={DIM_KEY: dim},
            embedding_function=None,
        )
        made_dim = (self.collection.metadata or {}).get(DIM_KEY, dim)
        if made_dim != dim:
            raise ExpertkitError(
                f"the Chroma collection '{name}' holds {made_dim}-dim vectors, not {dim}-dim ones",
                hint=f"use the embedder it was built with ({made_dim} dims), or another store folder",
            )
        self.batch = max(1, int(self.client.get_max_batch_size()))

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        ids, vectors, texts, metadatas = check_batch(self.dim, ids, vectors, texts, metadatas)
        for start in range(0, len(ids), self.batch):
            end = start + self.batch
            # Chroma's own upsert merges new metadata into the old (a key the new chunk lacks would survive)
            self.collection.delete(ids=ids[start:end])
            self.collection.add(
                ids=ids[start:end],
                embeddings=vectors[start:end],
                documents=texts[start:end],
                metadatas=[m or None for m in metadatas[start:end]],  # Chroma refuses {}; None means none
            )

    def delete(self, ids: list[str]) -> None:
        for batch in batched([str(i) for i in ids], self.batch):
            self.collection.delete(ids=batch)

    def delete_source(self, source: str) -> int:
        ids = self.collection.get(where={"source": source}, include=[])["ids"]
        self.delete(ids)
        return len(ids)

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        v = check_query(self.dim, vector)
        if k <= 0:
            return []
        found = self.collection.query(
            query_embeddings=v.reshape(1, -1), n_results=int(k), include=["documents", "metadatas", "distances"]
        )
        rows = zip(found["ids"][0], found["documents"][0], found["metadatas"][0], found["distances"][0], strict=True)
        return [Hit(i, t or "", dict(m or {}), 1.0 - float(d)) for i, t, m, d in rows]  # distance = 1 - cosine

    def records(self) -> Iterator[tuple[str, str, dict]]:
        offset = 0
        while True:
            page = self.collection.get(limit=self.batch, offset=offset, include=["documents", "metadatas"])
            if not page["ids"]:
                return
            for id_, text, meta in zip(page["ids"], page["documents"], page["metadatas"], strict=True):
                yield id_, text or "", dict(meta or {})
            offset += len(page["ids"])

    def count(self) -> int:
        return self.collection.count()

    def close(self) -> None:
        close = getattr(self.client, "close", None)  # chromadb >= 1.1; releases the SQLite files of a local store
        if close:
            close()


def connect(url: str, settings: Settings):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ExpertkitError(f"chroma_url '{url}' is not an http(s) URL", hint="e.g. chroma_url=http://127.0.0.1:8000")
    port = parts.port or (443 if parts.scheme == "https" else 8000)
    try:
        return chromadb.HttpClient(host=parts.hostname, port=port, ssl=parts.scheme == "https", settings=settings)
    except Exception as e:  # chromadb raises ValueError, httpx errors or its own, by version
        raise ExpertkitError(
            f"cannot reach the Chroma server at {url}: {' '.join(str(e).split())[:200]}",
            hint=f"start one: chroma run --path CHROMA_DATA_DIR --host {parts.hostname} --port {port}",
        ) from None


def server_collection_name(folder: Path) -> str:
    """The collection this folder's chunks live in on a server: recorded in store.json, made on first use."""
    manifest = folder / MANIFEST
    info = json.loads(manifest.read_text(encoding="utf-8"))
    if not info.get("collection"):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().parent.name + "-" + folder.name).strip("-._")
        digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
        info["collection"] = f"{stem[:40] or 'expertkit'}-{digest}"  # Chroma: 3-512 of [A-Za-z0-9._-], alnum ends
        manifest.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info["collection"]

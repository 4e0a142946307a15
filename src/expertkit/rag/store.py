"""Vector stores: chunk vectors + text + metadata in a folder, searched by cosine similarity.

    store = open_store("kb/vectors", "sqlite-vec", dim=256)
    store.upsert(["a.md#0"], vectors, ["Refunds take 14 days."], [{"source": "a.md", "position": 0}])
    store.query(embedder.embed(["how long is a refund?"])[0], k=5)   # [Hit(id, text, metadata, score), ...]
    store.delete_source("a.md")                                       # -> 1, the chunks it removed

Three backends behind one `VectorStore` protocol, each in its own module under `stores/`:
    sqlite-vec   one SQLite file (apsw + the sqlite-vec extension), exact search; the default (bench/README.md)
    lancedb      a Lance table, exact search
    chroma       Chroma's PersistentClient (HNSW, approximate), or a Chroma server with chroma_url=http://host:port

Each folder holds `store.json` ({"backend", "dim"}): reopening it with another dim or backend is refused. Scores
are cosine similarities (1 = same direction). Metadata values are str, int, float or bool; None values are dropped;
`metadata["source"]` is what `delete_source` matches.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from expertkit.core.errors import ExpertkitError
from expertkit.core.optional import import_optional

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("sqlite-vec", "lancedb", "chroma")
DEFAULT_BACKEND = "sqlite-vec"  # fastest to index and to open, exact, one file; see bench/README.md "RAG"
MANIFEST = "store.json"
# what each backend's module imports: (module, the package pip installs), all in the [rag] extra
PACKAGES = {
    "sqlite-vec": [("numpy", "numpy"), ("apsw", "apsw"), ("sqlite_vec", "sqlite-vec")],
    "lancedb": [("numpy", "numpy"), ("pyarrow", "pyarrow"), ("lancedb", "lancedb")],
    "chroma": [("numpy", "numpy"), ("chromadb", "chromadb")],
}


@dataclass
class Hit:
    id: str
    text: str
    metadata: dict
    score: float  # cosine similarity, higher = closer


@runtime_checkable
class VectorStore(Protocol):
    backend: str
    dim: int

    def upsert(self, ids: list[str], vectors: np.ndarray, texts: list[str], metadatas: list[dict]) -> None:
        """Add records; a record whose id is already stored is replaced."""
        ...

    def delete(self, ids: list[str]) -> None:
        """Remove these ids (unknown ones are ignored)."""
        ...

    def delete_source(self, source: str) -> int:
        """Remove every record whose metadata["source"] == source; returns how many."""
        ...

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The k records closest to vector, closest first."""
        ...

    def records(self) -> Iterator[tuple[str, str, dict]]:
        """(id, text, metadata) of every record."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def open_store(path: str | Path, backend: str, dim: int, *, chroma_url: str | None = None) -> VectorStore:
    """The store in folder `path` (created when missing) for dim-sized vectors."""
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, BACKENDS, n=1)
        raise ExpertkitError(
            f"unknown vector store backend '{backend}'" + (f"; did you mean '{close[0]}'?" if close else ""),
            hint="use one of: " + ", ".join(BACKENDS),
        )
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ExpertkitError(f"vector dim must be a positive integer, got {dim!r}")
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    check_manifest(folder, backend, dim, chroma_url)
    for module, package in PACKAGES[backend]:  # absent or installed-but-broken: an error that says which
        import_optional(module, package, "rag", needed_for=f"the {backend} vector store")
    if backend == "sqlite-vec":
        from expertkit.rag.stores.sqlitevec import SqliteVecStore as cls
    elif backend == "lancedb":
        from expertkit.rag.stores.lance import LanceStore as cls
    else:
        from expertkit.rag.stores.chroma import ChromaStore as cls
    if backend == "chroma":
        return cls(folder, dim, url=chroma_url)
    if chroma_url:
        raise ExpertkitError(f"chroma_url is for the chroma backend, not {backend}", hint="drop chroma_url")
    return cls(folder, dim)


def check_manifest(folder: Path, backend: str, dim: int, chroma_url: str | None) -> None:
    """Write store.json on first use; later, refuse another dim or backend than the folder was made with."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if any(folder.iterdir()):
            raise ExpertkitError(
                f"'{folder}' is not empty and is not a vector store (no {MANIFEST})",
                hint="give an empty or new folder",
            )
        info = {"backend": backend, "dim": dim, **({"chroma_url": chroma_url} if chroma_url else {})}
        manifest.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        made_with, made_dim = info["backend"], int(info["dim"])
    except (ValueError, KeyError, TypeError):
        raise ExpertkitError(f"{manifest} is damaged", hint="rebuild the store in a new folder") from None
    if made_with != backend:
        raise ExpertkitError(
            f"the vector store '{folder}' was made with the {made_with} backend, not {backend}",
            hint=f"open it with backend {made_with}, or use another folder for {backend}",
        )
    if made_dim != dim:
        raise ExpertkitError(
            f"the vector store '{folder}' holds {made_dim}-dim vectors, not {dim}-dim ones",
            hint=f"use the embedder it was built with ({made_dim} dims), or a new folder for {dim}-dim vectors",
        )


# ---------------------------------------------------------------------------------------------- shared checks


def check_batch(
    dim: int, ids: list[str], vectors, texts: list[str], metadatas: list[dict]
) -> tuple[list[str], np.ndarray, list[str], list[dict]]:
    """Validated copies for an upsert: float32 (n, dim) vectors, clean metadata, one row per id (the last wins)."""
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1 and matrix.size == 0:
        matrix = matrix.reshape(0, dim)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ExpertkitError(f"this store holds {dim}-dim vectors; got an array of shape {matrix.shape}")
    n = len(ids)
    if not (matrix.shape[0] == len(texts) == len(metadatas) == n):
        raise ExpertkitError(
            f"upsert needs one vector, text and metadata per id: {n} ids, {matrix.shape[0]} vectors, "
            f"{len(texts)} texts, {len(metadatas)} metadatas"
        )
    last = {str(i): row for row, i in enumerate(ids)}  # an id given twice: its last row wins, as two upserts would
    keep = sorted(last.values())
    return (
        [str(ids[r]) for r in keep],
        np.ascontiguousarray(matrix[keep]),
        [str(texts[r]) for r in keep],
        [clean_metadata(metadatas[r], str(ids[r])) for r in keep],
    )


def clean_metadata(metadata: dict | None, id: str) -> dict:
    out = {}
    for key, value in (metadata or {}).items():
        if value is None:
            continue
        if not isinstance(value, str | int | float | bool):
            raise ExpertkitError(
                f"metadata '{key}' of '{id}' is a {type(value).__name__}; values must be str, int, float or bool",
                hint="store lists and dicts as a JSON string",
            )
        out[str(key)] = value
    return out


def check_query(dim: int, vector) -> np.ndarray:
    import numpy as np

    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise ExpertkitError(f"this store holds {dim}-dim vectors; the query vector has {v.shape[0]} dims")
    return np.ascontiguousarray(v)


def source_of(metadata: dict) -> str:
    return str(metadata.get("source", ""))


def batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

"""The knowledge base: a folder holding a vector store, a BM25 index and the list of sources in it.

    kb = KnowledgeBase.open(KbConfig(kb_dir="kb"))
    kb.add(["docs/", "notes.pdf"])                    # extract -> chunk -> embed -> store; again: updates in place
    for hit in kb.search("how do I reset the relay?"):
        print(hit.source, hit.score, hit.text)

`kb.json` records the vector store, the embedder and the chunking the folder was built with (a different embedder
is refused: vectors from two embedders don't compare) and every source with its chunk count and content hash, so
adding the same source again replaces its chunks instead of duplicating them, and an unchanged one is skipped.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from expertkit.core.errors import BrokenExtraError, ExpertkitError, MissingExtraError
from expertkit.core.runs import write_json_atomic, write_text_atomic
from expertkit.rag.bm25 import TOKENIZER, Bm25Index
from expertkit.rag.chunk import Chunk, split_text
from expertkit.rag.config import KbConfig
from expertkit.rag.extract import Document, extract_file, find_files
from expertkit.rag.ids import chunk_id, content_hash

MANIFEST = "kb.json"
BM25_DIR = "bm25"
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
MARKDOWN_KINDS = {"md", "html", "docx"}
GROUP_CHUNKS = 2000  # chunks of several documents embedded and upserted together by `add`


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Hit:
    """One retrieved chunk. `score`: the fused rank score (hybrid), else the cosine similarity or BM25 score."""

    id: str
    source: str
    title: str
    text: str
    score: float
    position: int = 0
    vector_score: float | None = None
    bm25_score: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class AddResult:
    """What `add` did with one source: added, updated, unchanged, or failed (with the reason)."""

    source: str
    status: str
    chunks: int = 0
    title: str = ""
    reason: str = ""


@dataclass
class Pending:
    """A document waiting in `add_documents`' group: its chunks to write, or its result when nothing is written."""

    doc: Document | None = None
    fetched_at: str | None = None
    digest: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    known: bool = False  # the manifest lists its source already
    result: AddResult | None = None


@dataclass
class Manifest:
    backend: str
    embedder: str
    dim: int
    chunk_size: int
    chunk_overlap: int
    embedder_spec: str = ""  # the `embedder=` it was built with, reused when a later command leaves it unset
    embed_base_url: str | None = None
    created_at: str = field(default_factory=now)
    generation: int = 0  # bumped on every change; the BM25 index is rebuilt when it lags behind
    sources: dict[str, dict] = field(default_factory=dict)


class KnowledgeBase:
    def __init__(self, config: KbConfig, manifest: Manifest, embedder, store):
        self.config, self.manifest, self.embedder, self.store = config, manifest, embedder, store
        self.dir = Path(config.kb_dir)
        self._bm25: tuple[int, Bm25Index, list[dict]] | None = None
        self._lock = threading.RLock()  # searches may come from several threads (eval, the server)

    # -- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, config: KbConfig, create: bool = True) -> KnowledgeBase:
        """Open the knowledge base at `kb_dir` (created when `create` and it doesn't exist yet)."""
        from expertkit.rag.embed import load_embedder
        from expertkit.rag.store import DEFAULT_BACKEND, open_store

        root = Path(config.kb_dir)
        path = root / MANIFEST
        if path.is_file():
            manifest = read_manifest(path)
        elif not create:
            raise ExpertkitError(
                f"'{root}' is not a knowledge base (no {MANIFEST})",
                hint=f"create one with: expertkit kb add DOCS... kb_dir={root}",
            )
        else:
            if root.exists() and any(root.iterdir()):
                raise ExpertkitError(
                    f"kb_dir '{root}' exists and is not a knowledge base (no {MANIFEST}); refusing to write into it",
                    hint="choose an empty or new folder for kb_dir",
                )
            manifest = None
        spec, base_url = config.embedder, config.embed_base_url
        if manifest is not None and manifest.embedder_spec and "embedder" not in config.model_fields_set:
            spec = manifest.embedder_spec
            base_url = base_url if "embed_base_url" in config.model_fields_set else manifest.embed_base_url
        embedder = load_embedder(spec, base_url=base_url, api_key=config.embed_api_key)
        backend = config.vector_store
        if manifest is None:
            backend = DEFAULT_BACKEND if backend == "auto" else backend
            manifest = Manifest(
                backend, embedder.name, embedder.dim, config.chunk_size, config.chunk_overlap, spec, base_url
            )
        else:
            check_same(manifest, config, embedder, root)
        store = open_store(root / manifest.backend, manifest.backend, manifest.dim, chroma_url=config.chroma_url)
        kb = cls(config, manifest, embedder, store)
        if not path.is_file():
            kb.save()
        return kb

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self) -> None:
        # after every group `add` stores: asdict's deep copy and json's indented (pure-Python) encoder took 145 ms
        # per write at 10,000 sources, a third of `kb add`'s CPU at 100k chunks (bench/README.md, RAG)
        manifest = {f.name: getattr(self.manifest, f.name) for f in fields(self.manifest)}
        write_text_atomic(self.dir / MANIFEST, json.dumps(manifest, ensure_ascii=False) + "\n")

    # -- adding ----------------------------------------------------------------------------------------------

    def add(self, inputs: Iterable[str], on_result: Callable[[AddResult], None] | None = None, fetch=None):
        """Add files, folders (recursively) and http(s) URLs. Returns one `AddResult` per source.

        `fetch`: a `FetchConfig` for URLs (their pages are read through the SSRF-guarded, robots-respecting
        fetcher); a bad file is reported in its result and the others still go in.
        """
        inputs = list(inputs)
        urls = [i for i in inputs if i.lower().startswith(("http://", "https://"))]
        paths = [i for i in inputs if i not in urls]

        def documents():  # (Document, fetched_at) or the AddResult of a source that could not be read
            for path in find_files(paths) if paths else []:
                try:
                    yield extract_file(path), None
                except (MissingExtraError, BrokenExtraError) as e:  # the install, not the file: the fix goes with it
                    yield AddResult(str(path), "failed", reason=f"{e.message} (fix: {e.hint})")
                except ExpertkitError as e:
                    yield AddResult(str(path), "failed", reason=e.message)
            if urls:
                import asyncio

                from expertkit.rag.webread import read_pages

                pages, failures = asyncio.run(read_pages(urls, fetch))
                yield from (AddResult(url, "failed", reason=reason) for url, reason in failures)
                yield from pages

        return self.add_documents(documents(), on_result)

    def add_document(self, doc: Document, fetched_at: str | None = None) -> AddResult:
        """Chunk, embed and store one document, replacing what an earlier version of it left."""
        return self.add_documents([(doc, fetched_at)])[0]

    def add_documents(self, items: Iterable, on_result: Callable[[AddResult], None] | None = None) -> list[AddResult]:
        """Add (Document, fetched_at) pairs (an AddResult in `items` is passed through), in groups of about
        GROUP_CHUNKS chunks: one embedding call, one store upsert and one manifest write per group, not per
        document (LanceDB writes a table version and Chroma a batch per upsert). Results come in input order."""
        results: list[AddResult] = []
        group: list[Pending] = []

        def flush() -> None:
            for result in self.write_group(group):
                results.append(result)
                if on_result:
                    on_result(result)
            group.clear()

        for item in items:
            if isinstance(item, AddResult):
                group.append(Pending(result=item))
                continue
            doc, fetched_at = item
            if any(p.doc is not None and p.doc.source == doc.source for p in group):
                flush()  # the same source twice: the second replaces what the first wrote
            group.append(self.prepare(doc, fetched_at))
            if sum(len(p.chunks) for p in group) >= GROUP_CHUNKS:
                flush()
        flush()
        return results

    def prepare(self, doc: Document, fetched_at: str | None) -> Pending:
        """What adding doc takes: nothing (unchanged, or no text: the result is decided), or its chunks."""
        digest = self.digest(doc)
        known = self.manifest.sources.get(doc.source)
        if known and known.get("content_hash") == digest and not known.get("partial"):
            return Pending(result=AddResult(doc.source, "unchanged", known.get("chunks", 0), doc.title))
        chunks = self.split(doc)
        if not chunks:
            return Pending(result=AddResult(doc.source, "failed", title=doc.title, reason="no text found in it"))
        return Pending(doc, fetched_at, digest, chunks, known=bool(known))

    def write_group(self, group: list[Pending]) -> list[AddResult]:
        writes = [p for p in group if p.result is None]
        if writes:
            for p in writes:
                if p.known:  # a new source has nothing stored to replace (a store lookup per document saved)
                    self.store.delete_source(p.doc.source)
            self.put_many([(p.doc, p.chunks, p.fetched_at) for p in writes])
            for p in writes:
                self.manifest.sources[p.doc.source] = self.source_entry(p.doc, len(p.chunks), p.digest, p.fetched_at)
                status = "updated" if p.known else "added"
                p.result = AddResult(p.doc.source, status, len(p.chunks), p.doc.title)
            self.changed()
        return [p.result for p in group]

    def add_chunks(self, doc: Document, chunks: list[Chunk], fetched_at: str | None = None) -> AddResult:
        """Store some chunks of a document (the relevant part of a web page); other chunks it had stay, unless
        the page itself changed."""
        digest = self.digest(doc)
        known = self.manifest.sources.get(doc.source)
        if known and known.get("content_hash") != digest:
            self.store.delete_source(doc.source)
            known = None
        have = set(known.get("positions", [])) if known else set()
        if known and not known.get("partial"):
            return AddResult(doc.source, "unchanged", known.get("chunks", 0), doc.title)
        new = [c for c in chunks if c.position not in have]
        if new:
            self.put_chunks(doc, new, digest, fetched_at)
        positions = sorted(have | {c.position for c in new})
        entry = self.source_entry(doc, len(positions), digest, fetched_at)
        entry.update(partial=True, positions=positions)
        self.manifest.sources[doc.source] = entry
        self.changed()
        return AddResult(doc.source, "updated" if known else "added", len(positions), doc.title)

    def digest(self, doc: Document) -> str:
        """What a source's chunks depend on: its text and the chunk sizes."""
        return content_hash(f"{self.manifest.chunk_size}/{self.manifest.chunk_overlap}\n{doc.text}")

    def split(self, doc: Document) -> list[Chunk]:
        return split_text(
            doc.text, self.manifest.chunk_size, self.manifest.chunk_overlap, markdown=doc.kind in MARKDOWN_KINDS
        )

    def put_chunks(self, doc: Document, chunks: list[Chunk], digest: str, fetched_at: str | None) -> None:
        self.put_many([(doc, chunks, fetched_at)])

    def put_many(self, parts: list[tuple[Document, list[Chunk], str | None]]) -> None:
        """Embed the chunks of several documents in one call and store them in one upsert."""
        added = now()
        ids, texts, meta = [], [], []
        for doc, chunks, fetched_at in parts:
            for c in chunks:
                ids.append(chunk_id(doc.source, c.position))
                texts.append(c.text)
                meta.append(
                    {
                        "source": doc.source,
                        "title": doc.title,
                        "kind": doc.kind,
                        "position": c.position,
                        "added_at": added,
                        "fetched_at": fetched_at or "",
                        "content_hash": content_hash(c.text),
                    }
                )
        self.store.upsert(ids, self.embedder.embed(texts), texts, meta)

    @staticmethod
    def source_entry(doc: Document, chunks: int, digest: str, fetched_at: str | None) -> dict:
        entry = {"title": doc.title, "kind": doc.kind, "chunks": chunks, "content_hash": digest, "added_at": now()}
        if fetched_at:
            entry["fetched_at"] = fetched_at
        return entry

    def changed(self) -> None:
        self.manifest.generation += 1
        self.save()

    # -- listing and removing ----------------------------------------------------------------------------------

    def sources(self) -> list[dict]:
        """Every source with its title, kind, chunk count and when it was added, oldest first."""
        rows = [
            {"source": s, **{k: v for k, v in e.items() if k != "positions"}} for s, e in self.manifest.sources.items()
        ]
        return sorted(rows, key=lambda r: r.get("added_at", ""))

    def resolve_source(self, name: str) -> str:
        """The stored source a user means: exact, the canonical form of a path or URL, or a unique substring."""
        if name in self.manifest.sources:
            return name
        from expertkit.rag.ids import canonical_source

        try:
            canonical = canonical_source(name)
        except ExpertkitError:
            canonical = None
        if canonical in self.manifest.sources:
            return canonical
        matches = [s for s in self.manifest.sources if name in s]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ExpertkitError(
                f"'{name}' matches {len(matches)} sources", hint="give more of it: " + ", ".join(matches[:5])
            )
        raise ExpertkitError(f"'{name}' is not in the knowledge base", hint=f"see: expertkit kb list kb_dir={self.dir}")

    def remove(self, name: str) -> tuple[str, int]:
        """Remove a source and all its chunks; returns (source, chunks removed)."""
        source = self.resolve_source(name)
        removed = self.store.delete_source(source)
        del self.manifest.sources[source]
        self.changed()
        return source, removed

    # -- searching -------------------------------------------------------------------------------------------

    def search(self, query: str, k: int | None = None, mode: str | None = None) -> list[Hit]:
        """The k chunks most relevant to `query`: BM25 and vector ranks fused (hybrid), or one of them."""
        k = k or self.config.top_k
        mode = mode or self.config.retrieval
        if not self.manifest.sources or not query.strip():
            return []
        if self.config.reranker:
            from expertkit.rag.rerank import load_reranker

            wide = self.retrieve(query, max(k, self.config.rerank_candidates), mode)
            return load_reranker(self.config.reranker).rerank(query, wide)[:k]
        return self.retrieve(query, k, mode)

    def retrieve(self, query: str, k: int, mode: str) -> list[Hit]:
        with self._lock:
            return self._retrieve(query, k, mode)

    def _retrieve(self, query: str, k: int, mode: str) -> list[Hit]:
        pool = max(4 * k, 20)
        vector_hits: list[Hit] = []
        if mode in ("hybrid", "vector"):
            for h in self.store.query(self.embedder.embed([query])[0], pool):
                vector_hits.append(hit_from(h.id, h.text, h.metadata, vector_score=float(h.score)))
        keyword_hits: list[Hit] = []
        if mode in ("hybrid", "bm25"):
            index, rows = self.bm25()
            for i, score in index.top(query, pool):
                row = rows[i]
                keyword_hits.append(hit_from(row["id"], row["text"], row["metadata"], bm25_score=score))
        if mode == "vector":
            return [with_score(h, h.vector_score) for h in vector_hits[:k]]
        if mode == "bm25":
            return [with_score(h, h.bm25_score) for h in keyword_hits[:k]]
        return fuse(vector_hits, keyword_hits)[:k]

    def bm25(self) -> tuple[Bm25Index, list[dict]]:
        """The keyword index over every chunk, rebuilt (and saved) when the knowledge base changed since."""
        gen = self.manifest.generation
        if self._bm25 and self._bm25[0] == gen:
            return self._bm25[1], self._bm25[2]
        folder = self.dir / BM25_DIR
        stamp = folder / "stamp.json"
        index = rows = None
        if stamp.is_file():
            try:
                meta = json.loads(stamp.read_text(encoding="utf-8"))
                if meta.get("generation") == gen and meta.get("tokenizer") == TOKENIZER:
                    with open(folder / "chunks.jsonl", encoding="utf-8") as fh:
                        rows = [json.loads(line) for line in fh]
                    index = Bm25Index.load(folder / "index", len(rows))
            except (OSError, ValueError):
                index = rows = None
        if index is None:
            rows = [{"id": i, "text": t, "metadata": m} for i, t, m in self.store.records()]
            index = Bm25Index.build([r["text"] for r in rows])
            tmp = self.dir / f".{BM25_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            index.save(tmp / "index")
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            write_json_atomic(tmp / "stamp.json", {"generation": gen, "chunks": len(rows), "tokenizer": TOKENIZER})
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        self._bm25 = (gen, index, rows)
        return index, rows


def hit_from(id: str, text: str, metadata: dict, **scores) -> Hit:
    return Hit(
        id=id,
        source=str(metadata.get("source", "")),
        title=str(metadata.get("title", "")),
        text=text,
        score=0.0,
        position=int(metadata.get("position", 0) or 0),
        **scores,
    )


def with_score(hit: Hit, score: float | None) -> Hit:
    hit.score = float(score or 0.0)
    return hit


def fuse(*rankings: list[Hit]) -> list[Hit]:
    """Reciprocal rank fusion: each list adds 1/(60 + rank) to its hits; a chunk both find rises to the top."""
    fused: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking):
            have = fused.get(hit.id)
            if have is None:
                fused[hit.id] = have = hit
            else:
                have.vector_score = have.vector_score if hit.vector_score is None else hit.vector_score
                have.bm25_score = have.bm25_score if hit.bm25_score is None else hit.bm25_score
            have.score += 1.0 / (RRF_K + rank + 1)
    return sorted(fused.values(), key=lambda h: -h.score)


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(**data)
    except (OSError, ValueError, TypeError) as e:
        raise ExpertkitError(f"{path} is damaged ({e})", hint="remove the folder and add the documents again") from None


def check_same(manifest: Manifest, config: KbConfig, embedder, root: Path) -> None:
    """Refuse to mix: another embedder's vectors, another store, or other chunk sizes than the folder has."""
    if embedder.name != manifest.embedder:
        raise ExpertkitError(
            f"the knowledge base '{root}' was built with the embedder {manifest.embedder}, not {embedder.name}; "
            "vectors of two embedders don't compare",
            hint=f"leave embedder unset (it is {manifest.embedder_spec or manifest.embedder}), or use a new kb_dir "
            f"for {config.embedder}",
        )
    if config.vector_store not in ("auto", manifest.backend):
        raise ExpertkitError(
            f"the knowledge base '{root}' uses vector_store={manifest.backend}, not {config.vector_store}",
            hint=f"leave vector_store unset (auto) or use a new kb_dir for {config.vector_store}",
        )
    fields = config.model_fields_set
    for key in ("chunk_size", "chunk_overlap"):
        if key in fields and getattr(config, key) != getattr(manifest, key):
            raise ExpertkitError(
                f"the knowledge base '{root}' was chunked with {key}={getattr(manifest, key)}, "
                f"not {getattr(config, key)}",
                hint="leave it unset, or use a new kb_dir to try other chunk sizes",
            )

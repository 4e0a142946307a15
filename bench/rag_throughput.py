"""RAG indexing and retrieval: expertkit's vector stores against the tutorial's Chroma pipeline, on the same chunks
and the same vectors, in the same run.

    python bench/rag_throughput.py                  # 10k and 100k chunks, every backend + the baseline (~7 min)
    python bench/rag_throughput.py --baseline-limit 0   # the baseline's 100k indexing timed in full, not extrapolated
    python bench/rag_throughput.py --quick          # smoke run: 2k chunks, 50 queries (~30 s)
    python bench/rag_throughput.py --sizes 10000 --systems sqlite-vec,baseline --json results.json

The corpus is synthetic and built in memory: documents of 10 chunks of ~400 characters of generated sentences
(one document in five in Chinese), fixed seed. Every chunk is embedded once per size with WordLlama
(`load_embedder("wordllama")`, 256 dims); those vectors are what every system indexes, so embedding costs the
same for all and "embed+index" adds the same embedding time to each.

Systems, one after the other, each into a new folder under --work-dir:
- **sqlite-vec**, **lancedb**, **chroma**: `expertkit.rag.store.open_store(folder, backend, 256)`, one `upsert` per
  100 documents (1,000 chunks; `--docs-per-upsert`);
- **baseline**: the tutorial's pipeline: `chromadb.PersistentClient(path)` with default settings (L2 HNSW; only
  telemetry is turned off, as nothing here may call out), `get_or_create_collection(name)` with its default
  embedding function, which is never called (we pass the embeddings, so no model is downloaded), one
  `collection.add(ids, embeddings, documents, metadatas)` per document, `collection.query(query_embeddings, 5)`.
  Above `--baseline-limit` chunks (default 30,000) its indexing rate is measured on the first LIMIT chunks and the
  index time extrapolated at that rate (marked * in the table; its per-document rate measured 354 chunks/s at
  10k and 217-253 at 100k timed in full, so the extrapolation does not flatter us); the rest is then added in large
  batches, untimed, so that queries search all of it.

Figures per system and size: embed+index chunks/s (all chunks / (embedding time + indexing time)), index-only
chunks/s, query latency p50 / p95 over --queries questions (embedding the question + the top-5 search, after 5
warm-up queries), top-1 = exact (share of queries whose first hit is the exact nearest neighbour by numpy),
time to reopen the store and answer one query, and the folder's size on disk. Per size also **kb add**: the same
corpus as documents (10 chunks each, joined by blank lines) through `KnowledgeBase.add_documents` into a new
knowledge base with the default store and chunk_size=400, chunk_overlap=0 (which cuts them back into exactly the
corpus's chunks): chunking, embedding, one upsert and one kb.json write per ~2,000 chunks, what `expertkit kb add`
does minus reading files (opening the knowledge base is timed apart). Then, at the smallest size, the
same stores fed one document per upsert (what a caller upserting file by file pays; `expertkit kb add` groups
~2,000 chunks of many files per upsert), against the baseline's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quiet import busy_cpu_seconds, wait_for_idle  # bench/quiet.py, beside this script
from shared import percentile  # bench/shared.py

DEFAULT_WORK = Path("/tmp/expertkit-bench/rag")
OURS = ("sqlite-vec", "lancedb", "chroma")
CHUNKS_PER_DOC, CHUNK_CHARS, K = 10, 400, 5
SUBJECTS = [
    "The refund policy", "Our support team", "The billing system", "Each invoice", "The mobile app", "A new account",
    "The warehouse", "Shipping to Europe", "The API gateway", "Every nightly backup", "The admin console",
    "A password reset", "The loyalty program", "The data export", "Two-factor login", "The search index",
]  # fmt: skip
VERBS = [
    "applies to", "is checked against", "depends on", "is limited by", "is sent with", "replaces", "updates",
    "is explained in", "requires", "is logged with", "expires after", "is included in",
]  # fmt: skip
OBJECTS = [
    "orders placed in the last 30 days", "the customer's billing address", "a signed delivery receipt",
    "the monthly usage report", "the store credit balance", "an approved return label", "the regional tax rate",
    "the device's serial number", "a manager's approval", "the original payment method", "the privacy settings",
    "an active subscription", "the shipping carrier's tracking code", "the warranty certificate",
]  # fmt: skip
TAILS = ["", " in most cases", " unless the order was a gift", " for business accounts", " since the March update"]
ZH_SUBJECTS = [
    "退款政策", "客服团队", "计费系统", "每张发票", "手机应用", "新账户", "仓库", "欧洲配送", "数据导出", "双重认证",
]  # fmt: skip
ZH_VERBS = ["适用于", "取决于", "需要", "包含在", "会更新", "受限于", "记录在", "会替换"]
ZH_OBJECTS = [
    "最近三十天的订单", "客户的账单地址", "签收的送货单", "月度使用报告", "原支付方式", "有效的订阅", "保修证书",
]  # fmt: skip
QUESTIONS = [
    "How long does a refund take?", "Can I change my billing address?", "What does the warranty cover?",
    "How do I reset my password?", "Which orders can be returned?", "Is two-factor login required?",
    "How do I export my data?", "Where is my tracking code?", "退款需要多长时间？", "如何更新账单地址？",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="stores are built here, then removed (%(default)s)")
    p.add_argument("--sizes", default="10000,100000", help="corpus sizes in chunks, comma list (default %(default)s)")
    p.add_argument("--systems", default=",".join((*OURS, "baseline")), help="which systems (default %(default)s)")
    p.add_argument("--queries", type=int, default=200, help="timed queries per system and size (default %(default)s)")
    p.add_argument("--docs-per-upsert", type=int, default=100, help="documents per upsert (default %(default)s)")
    p.add_argument(
        "--baseline-limit",
        type=int,
        default=30000,
        help="time the baseline's per-document adds on at most this many chunks, extrapolate the rest; 0: time all "
        "(~3 min more at 100k) (default %(default)s)",
    )
    p.add_argument(
        "--per-doc-chunks",
        type=int,
        default=10000,
        help="chunks fed one document per upsert to each of our stores at the smallest size (0: skip; %(default)s)",
    )
    p.add_argument(
        "--kb-add", action=argparse.BooleanOptionalAction, default=True, help="time kb add per size (%(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: --sizes 2000 --queries 50 --per-doc-chunks 2000")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=120,
        help="before each measurement, wait up to this many seconds for other processes to go quiet (%(default)s)",
    )
    p.add_argument("--keep", action="store_true", help="keep the store folders")
    p.add_argument("--json", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.per_doc_chunks = "2000", 50, min(args.per_doc_chunks, 2000)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in (*OURS, "baseline") for s in args.systems):
        p.error(f"--systems takes {', '.join(OURS)} and baseline")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from expertkit.rag.embed import load_embedder

    began = time.monotonic()
    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    embedder = load_embedder("wordllama")
    print_intro(args, embedder.name)
    results: list[Result] = []
    per_doc: list[PerDocResult] = []
    kb_adds: list[KbAddResult] = []
    for n in args.sizes:
        corpus = build_corpus(n)
        wait_for_idle(args.idle_wait, own_cpu_seconds, see="see others' CPU")
        meter = OthersCpu()
        vectors, embed_s = embed_corpus(embedder, corpus)
        print(
            f"\n{n:,} chunks: WordLlama embedded them in {embed_s:.1f} s ({n / embed_s:,.0f} chunks/s, others' CPU "
            f"{format_cores(meter.cores())})",
            flush=True,
        )
        if args.kb_add:
            wait_for_idle(args.idle_wait, own_cpu_seconds, see="see others' CPU")
            kb_adds.append(run_kb_add(corpus, vectors, work / f"kb-{n}", args.keep))
            print(f"  kb add     {kb_adds[-1].summary()}", flush=True)
        for system in args.systems:
            wait_for_idle(args.idle_wait, own_cpu_seconds, see="see others' CPU")
            res = run_system(system, corpus, vectors, embed_s, embedder, args, work / f"{system}-{n}")
            results.append(res)
            print(f"  {system:<10} {res.summary()}", flush=True)
        if n == min(args.sizes) and args.per_doc_chunks:
            per_doc = run_per_doc(corpus, vectors, args, work, results)
    print_table(results)
    ratios = print_ratios(results)
    print_per_doc(per_doc)
    print_kb_adds(kb_adds)
    print(f"\nwhole run: {(time.monotonic() - began) / 60:.1f} min")
    if args.json:
        payload = {"meta": machine(embedder.name), "results": [asdict(r) for r in results], "ratios": ratios}
        payload["per_document"] = [asdict(r) for r in per_doc]
        payload["kb_add"] = [asdict(r) for r in kb_adds]
        Path(args.json).write_text(json.dumps(payload, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ---------------------------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    metadatas: list[dict]

    def __len__(self) -> int:
        return len(self.ids)

    def documents(self, limit: int | None = None):
        """(start, end) chunk ranges, one per document."""
        n = len(self) if limit is None else min(limit, len(self))
        return [(s, min(s + CHUNKS_PER_DOC, n)) for s in range(0, n, CHUNKS_PER_DOC)]


def build_corpus(n: int, seed: int = 20251125) -> Corpus:
    """n chunks of ~400 characters, 10 per document; every fifth document in Chinese."""
    rng = random.Random(seed)
    ids, texts, metas = [], [], []
    for i in range(n):
        doc, position = divmod(i, CHUNKS_PER_DOC)
        chinese = doc % 5 == 4
        text = ""
        while len(text) < CHUNK_CHARS:
            if chinese:
                text += f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}。"
            else:
                text += f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}. "
        source = f"docs/{'zh' if chinese else 'en'}/manual-{doc:06d}.md"
        ids.append(f"{source}#{position}")
        texts.append(text[:CHUNK_CHARS].strip())
        metas.append({"source": source, "title": f"Manual {doc}", "position": position, "kind": "file"})
    return Corpus(ids, texts, metas)


def embed_corpus(embedder, corpus: Corpus):
    start = time.perf_counter()
    vectors = embedder.embed(corpus.texts)
    return vectors, time.perf_counter() - start


def questions(count: int) -> list[str]:
    rng = random.Random(7)
    return [f"{rng.choice(QUESTIONS)} ({rng.choice(SUBJECTS).lower()})" for _ in range(count)]


# ---------------------------------------------------------------------------------------------- one system


@dataclass
class Result:
    system: str
    chunks: int
    embed_s: float
    index_s: float
    index_extrapolated_from: int = 0  # chunks actually timed when the index time is extrapolated
    latency_s: list[float] = field(default_factory=list)
    top1_exact: float = 0.0
    reopen_s: float = 0.0
    disk_mb: float = 0.0
    others_cpu: float | None = None  # cores other processes used while this system was measured

    @property
    def index_rate(self) -> float:
        return self.chunks / self.index_s if self.index_s else 0.0

    @property
    def total_rate(self) -> float:
        return self.chunks / (self.embed_s + self.index_s)

    def latency(self, q: float) -> float:
        return percentile(self.latency_s, q)

    def summary(self) -> str:
        note = f" (extrapolated from {self.index_extrapolated_from:,})" if self.index_extrapolated_from else ""
        return (
            f"index {self.index_rate:8,.0f} chunks/s{note}, embed+index {self.total_rate:7,.0f}/s, query p50 "
            f"{self.latency(50) * 1000:6.2f} ms p95 {self.latency(95) * 1000:6.2f} ms, top-1 exact "
            f"{self.top1_exact:.0%}, reopen {self.reopen_s:.2f} s, {self.disk_mb:,.0f} MB, others' CPU "
            f"{format_cores(self.others_cpu)}"
        )


def run_system(system: str, corpus: Corpus, vectors, embed_s: float, embedder, args, folder: Path) -> Result:
    res = Result(system, len(corpus), embed_s, 0.0)
    meter = OthersCpu()
    if system == "baseline":
        store = BaselineStore(folder)
        res.index_s, res.index_extrapolated_from = index_baseline(store, corpus, vectors, args.baseline_limit)
    else:
        from expertkit.rag.store import open_store

        store = open_store(folder, system, vectors.shape[1])
        res.index_s = index_ours(store, corpus, vectors, args.docs_per_upsert)
    res.latency_s, res.top1_exact = time_queries(store, embedder, vectors, corpus.ids, args.queries)
    store.close()
    start = time.perf_counter()
    store = BaselineStore(folder) if system == "baseline" else open_store(folder, system, vectors.shape[1])
    store.query(vectors[0], K)
    res.reopen_s = time.perf_counter() - start
    store.close()
    res.others_cpu = meter.cores()
    res.disk_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return res


def index_ours(store, corpus: Corpus, vectors, docs_per_upsert: int) -> float:
    docs = corpus.documents()
    start = time.perf_counter()
    for first in range(0, len(docs), docs_per_upsert):
        lo, hi = docs[first][0], docs[min(first + docs_per_upsert, len(docs)) - 1][1]
        store.upsert(corpus.ids[lo:hi], vectors[lo:hi], corpus.texts[lo:hi], corpus.metadatas[lo:hi])
    return time.perf_counter() - start


def time_queries(store, embedder, vectors, ids: list[str], count: int) -> tuple[list[float], float]:
    """Latency of embed(question) + top-5 search, after 5 warm-up queries; and how often top-1 is the exact one."""
    texts = questions(count + 5)
    latencies, exact = [], 0
    for i, text in enumerate(texts):
        start = time.perf_counter()
        q = embedder.embed([text])[0]
        hits = store.query(q, K)
        elapsed = time.perf_counter() - start
        if i >= 5:
            latencies.append(elapsed)
            exact += bool(hits) and hits[0].id == ids[int((vectors @ q).argmax())]
    return latencies, exact / max(count, 1)


class BaselineStore:
    """The tutorial's Chroma: default client settings and collection, embeddings passed in, one add per document."""

    def __init__(self, folder: Path):
        import chromadb
        from chromadb.config import Settings

        self.client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
        self.collection = self.client.get_or_create_collection("documents")
        self.ids: list[str] = []

    def add(self, ids, vectors, texts, metadatas) -> None:
        self.collection.add(ids=ids, embeddings=vectors.tolist(), documents=texts, metadatas=metadatas)

    def query(self, vector, k: int):
        found = self.collection.query(query_embeddings=[vector.tolist()], n_results=k)
        return [Hit(i) for i in found["ids"][0]]

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()


@dataclass
class Hit:
    id: str


def index_baseline(store: BaselineStore, corpus: Corpus, vectors, limit: int) -> tuple[float, int]:
    """Seconds to add every document one by one; above `limit` chunks, extrapolated from the first `limit`."""
    timed = len(corpus) if not limit or limit >= len(corpus) else limit
    start = time.perf_counter()
    for lo, hi in corpus.documents(timed):
        store.add(corpus.ids[lo:hi], vectors[lo:hi], corpus.texts[lo:hi], corpus.metadatas[lo:hi])
    seconds = time.perf_counter() - start
    batch = store.client.get_max_batch_size()
    for lo in range(timed, len(corpus), batch):  # the rest, untimed, so that queries search the whole corpus
        hi = min(lo + batch, len(corpus))
        store.add(corpus.ids[lo:hi], vectors[lo:hi], corpus.texts[lo:hi], corpus.metadatas[lo:hi])
    if timed == len(corpus):
        return seconds, 0
    return seconds * len(corpus) / timed, timed


# ---------------------------------------------------------------------------------------------- kb add


@dataclass
class KbAddResult:
    chunks: int
    wall_s: float
    cpu_s: float
    open_s: float  # KnowledgeBase.open before it (a CLI command's fixed cost), not in wall_s
    others_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.chunks / self.wall_s

    def summary(self) -> str:
        return (
            f"{self.rate:8,.0f} chunks/s end to end ({self.wall_s:.1f} s, CPU {self.cpu_s:.1f} s: "
            f"{self.chunks / self.cpu_s:,.0f} chunks per CPU-second; opening it {self.open_s:.1f} s before), "
            f"others' CPU {format_cores(self.others_cpu)}"
        )


def run_kb_add(corpus: Corpus, vectors, folder: Path, keep: bool) -> KbAddResult:
    """`KnowledgeBase.add_documents` of the corpus as documents; checks that it stored the same vectors."""
    import numpy as np

    from expertkit.rag.config import KbConfig
    from expertkit.rag.extract import Document
    from expertkit.rag.kb import KnowledgeBase

    docs = []
    for lo, hi in corpus.documents():
        source = corpus.metadatas[lo]["source"]
        docs.append((Document(source, corpus.metadatas[lo]["title"], "\n\n".join(corpus.texts[lo:hi]), "txt"), None))
    config = KbConfig(kb_dir=str(folder), chunk_size=CHUNK_CHARS, chunk_overlap=0)
    start = time.perf_counter()
    with KnowledgeBase.open(config) as kb:  # loads the embedder's tokenizer again: ~0.4 s, not counted
        open_s = time.perf_counter() - start
        meter, cpu, start = OthersCpu(), own_cpu_seconds(), time.perf_counter()
        results = kb.add_documents(docs)
        wall = time.perf_counter() - start
        res = KbAddResult(len(corpus), wall, own_cpu_seconds() - cpu, open_s, meter.cores())
        stored = kb.store.count()
        probe = kb.store.query(vectors[-1], 1)  # the last chunk's own vector finds it: the same vectors
    if stored != len(corpus) or any(r.status != "added" for r in results) or probe[0].text != corpus.texts[-1]:
        raise SystemExit(f"kb add stored {stored} chunks of {len(corpus)}, or other vectors than the embedder's")
    if not np.isclose(probe[0].score, 1.0, atol=1e-5):
        raise SystemExit(f"kb add: the last chunk's vector scores {probe[0].score} against itself")
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return res


def print_kb_adds(kb_adds: list[KbAddResult]) -> None:
    if not kb_adds:
        return
    print("\nkb add (the default store; chunking, embedding, an upsert and a kb.json write per ~2,000 chunks):")
    print("| chunks | chunks/s end to end | wall s | CPU s | chunks per CPU-second | open s | others' CPU |")
    print("|---|---|---|---|---|---|---|")
    for r in kb_adds:
        print(
            f"| {r.chunks:,} | {r.rate:,.0f} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {r.chunks / r.cpu_s:,.0f} | "
            f"{r.open_s:.1f} | {format_cores(r.others_cpu)} |"
        )


# ---------------------------------------------------------------------------------------------- one document per upsert


@dataclass
class PerDocResult:
    system: str
    chunks: int
    index_s: float

    @property
    def rate(self) -> float:
        return self.chunks / self.index_s if self.index_s else 0.0


def run_per_doc(corpus: Corpus, vectors, args, work: Path, results: list[Result]) -> list[PerDocResult]:
    from expertkit.rag.store import open_store

    n = min(args.per_doc_chunks, len(corpus))
    print(f"\n  one document (10 chunks) per upsert, first {n:,} chunks:", flush=True)
    out = []
    for system in [s for s in args.systems if s in OURS]:
        wait_for_idle(args.idle_wait, own_cpu_seconds, see="see others' CPU")
        folder = work / f"{system}-per-doc"
        store = open_store(folder, system, vectors.shape[1])
        start = time.perf_counter()
        for lo, hi in corpus.documents(n):
            store.upsert(corpus.ids[lo:hi], vectors[lo:hi], corpus.texts[lo:hi], corpus.metadatas[lo:hi])
        store.close()  # LanceDB compacts here: part of the cost
        out.append(PerDocResult(system, n, time.perf_counter() - start))
        print(f"  {system:<10} {out[-1].rate:8,.0f} chunks/s", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    base = next((r for r in results if r.system == "baseline" and r.chunks == len(corpus)), None)
    if base and not base.index_extrapolated_from:
        out.append(PerDocResult("baseline", base.chunks, base.index_s))
    return out


# ---------------------------------------------------------------------------------------------- reporting


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OthersCpu:
    """Cores that other processes used from construction to `cores()` (/proc/stat minus our own CPU time)."""

    def __init__(self):
        self.busy, self.own, self.start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()

    def cores(self) -> float | None:
        busy = busy_cpu_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (own_cpu_seconds() - self.own)
        return max(0.0, others / max(time.perf_counter() - self.start, 1e-9))


def format_cores(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


def machine(embedder: str) -> dict:
    import chromadb
    import lancedb
    import numpy
    import sqlite_vec

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "chromadb": chromadb.__version__,
        "lancedb": lancedb.__version__,
        "sqlite_vec": sqlite_vec.__version__,
        "embedder": embedder,
        "import_s": import_times(),
    }


def import_times() -> dict[str, float]:
    """Seconds a fresh Python takes to import each backend (what a CLI command pays before its first query)."""
    out = {}
    for name, module in (("sqlite-vec", "apsw, sqlite_vec"), ("lancedb", "lancedb"), ("chroma", "chromadb")):
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        out[name] = round(float(r.stdout.strip().splitlines()[-1]), 2) if r.returncode == 0 else -1.0
    return out


def print_intro(args, embedder: str) -> None:
    m = machine(embedder)
    imports = ", ".join(f"{k} {v:.2f} s" for k, v in m.pop("import_s").items())
    print(f"machine: {', '.join(f'{k} {v}' for k, v in m.items())}")
    print(f"import time in a fresh Python: {imports}")
    print(
        f"sizes {', '.join(f'{n:,}' for n in args.sizes)} chunks ({CHUNKS_PER_DOC} per document, ~{CHUNK_CHARS} "
        f"characters); systems {', '.join(args.systems)}; {args.queries} queries of top-{K}; ours upsert "
        f"{args.docs_per_upsert} documents at a time"
    )
    print(
        "baseline: the tutorial's Chroma pipeline: PersistentClient + get_or_create_collection with default "
        "settings (L2 HNSW, telemetry off), one collection.add per document, our WordLlama vectors passed in"
    )


def print_table(results: list[Result]) -> None:
    print(
        "\n| system | chunks | index chunks/s | embed+index chunks/s | query p50 ms | query p95 ms | top-1 exact "
        "| reopen s | disk MB | others' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        note = "*" if r.index_extrapolated_from else ""
        print(
            f"| {r.system} | {r.chunks:,} | {r.index_rate:,.0f}{note} | {r.total_rate:,.0f}{note} | "
            f"{r.latency(50) * 1000:.2f} | {r.latency(95) * 1000:.2f} | {r.top1_exact:.0%} | {r.reopen_s:.2f} | "
            f"{r.disk_mb:,.0f} | {format_cores(r.others_cpu)} |"
        )
    for r in results:
        if r.index_extrapolated_from:
            print(f"* {r.system} at {r.chunks:,}: indexing timed on the first {r.index_extrapolated_from:,} chunks")


def print_ratios(results: list[Result]) -> dict:
    """Each of our backends against the baseline at each size: embed+index speed-up, query latency ratio."""
    ratios: dict = {}
    print()
    for n in sorted({r.chunks for r in results}):
        base = next((r for r in results if r.system == "baseline" and r.chunks == n), None)
        if not base:
            continue
        for r in results:
            if r.chunks != n or r.system == "baseline":
                continue
            speed = r.total_rate / base.total_rate
            p50, p95 = r.latency(50) / base.latency(50), r.latency(95) / base.latency(95)
            ratios[f"{r.system}@{n}"] = {"embed_index_speedup": speed, "query_p50_ratio": p50, "query_p95_ratio": p95}
            print(
                f"{n:>7,} chunks: {r.system:<10} / baseline: embed+index {speed:5.1f}x faster, "
                f"query latency p50 {p50:.2f}x, p95 {p95:.2f}x (below 1 = faster)"
            )
    return ratios


def print_per_doc(per_doc: list[PerDocResult]) -> None:
    if not per_doc:
        return
    print("\none document per upsert (a caller upserting file by file; `kb add` groups ~2,000 chunks):")
    print("| system | chunks | index chunks/s |")
    print("|---|---|---|")
    for r in per_doc:
        print(f"| {r.system} | {r.chunks:,} | {r.rate:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())

"""Vector stores: every backend persists, replaces by id, deletes by source, and agrees with the others on top-1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.rag.store import BACKENDS, DEFAULT_BACKEND, MANIFEST, Hit, VectorStore, open_store

DIM = 32


def unit(rows: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store, n: int = 30, sources: int = 3) -> np.ndarray:
    vectors = unit(n)
    ids = [f"doc{i % sources}.md#{i}" for i in range(n)]
    texts = [f"chunk {i} 中文 {i}" for i in range(n)]
    metas = [{"source": f"doc{i % sources}.md", "position": i, "weight": i / 2, "kind": "file"} for i in range(n)]
    store.upsert(ids, vectors, texts, metas)
    return vectors


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend, tmp_path):
    s = open_store(tmp_path / "store", backend, DIM)
    yield s
    s.close()


def test_default_backend_is_one_of_them():
    assert DEFAULT_BACKEND in BACKENDS


def test_upsert_query_and_metadata_round_trip(store, backend):
    assert isinstance(store, VectorStore) and store.backend == backend
    assert store.count() == 0 and store.query(unit(1)[0], 5) == []
    vectors = fill(store)
    assert store.count() == 30
    hits = store.query(vectors[7], 4)
    assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
    top = hits[0]
    assert top.id == "doc1.md#7" and top.text == "chunk 7 中文 7"
    assert top.metadata == {"source": "doc1.md", "position": 7, "weight": 3.5, "kind": "file"}
    assert isinstance(top.metadata["position"], int) and top.score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    expected = sorted(vectors @ vectors[7], reverse=True)[:4]  # scores are cosine similarities
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-4)
    assert len(store.query(vectors[0], 100)) == 30 and store.query(vectors[0], 0) == []


def test_same_id_replaces(store):
    vectors = fill(store)
    store.upsert(["doc0.md#0"], vectors[5:6], ["new text"], [{"source": "doc0.md", "position": 0, "title": None}])
    assert store.count() == 30
    hit = store.query(vectors[5], 2)
    assert {h.id for h in hit} == {"doc0.md#0", "doc2.md#5"}
    replaced = {i: (t, m) for i, t, m in store.records()}["doc0.md#0"]
    assert replaced == ("new text", {"source": "doc0.md", "position": 0})  # None values are dropped
    store.upsert(["x", "x"], unit(2, seed=9), ["first", "second"], [{"source": "s"}, {"source": "s"}])
    assert store.count() == 31 and dict((i, t) for i, t, _ in store.records())["x"] == "second"


def test_delete_and_delete_source(store):
    vectors = fill(store)
    assert store.delete_source("doc1.md") == 10
    assert store.delete_source("doc1.md") == 0 and store.delete_source("nothing") == 0
    store.delete(["doc0.md#0", "doc0.md#3", "never-stored"])
    assert store.count() == 18
    left = {i for i, _, _ in store.records()}
    assert len(left) == 18 and not any(i.startswith("doc1.md") for i in left) and "doc0.md#0" not in left
    assert store.query(vectors[1], 1)[0].id != "doc1.md#1"


def test_survives_reopen(backend, tmp_path):
    s = open_store(tmp_path / "kb", backend, DIM)
    vectors = fill(s)
    s.delete_source("doc2.md")
    before = [(h.id, round(h.score, 5)) for h in s.query(vectors[4], 5)]
    s.close()
    s = open_store(tmp_path / "kb", backend, DIM)
    try:
        assert s.count() == 20
        assert [(h.id, round(h.score, 5)) for h in s.query(vectors[4], 5)] == before
        s.upsert(["late"], unit(1, seed=3), ["late text"], [{"source": "late.md"}])
        assert s.count() == 21
    finally:
        s.close()


def test_another_process_reads_what_was_written(tmp_path):
    vectors = unit(5)
    for backend in BACKENDS:
        s = open_store(tmp_path / backend, backend, DIM)
        s.upsert([f"id{i}" for i in range(5)], vectors, [f"t{i}" for i in range(5)], [{"source": "a"}] * 5)
        s.close()
    code = (
        "import sys, json, numpy as np; from expertkit.rag.store import open_store, BACKENDS\n"
        "q = np.array(json.loads(sys.argv[2]), dtype=np.float32)\n"
        "for b in BACKENDS:\n"
        "    s = open_store(sys.argv[1] + '/' + b, b, len(q)); print(b, s.count(), s.query(q, 1)[0].id); s.close()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(vectors[3].tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.split()[0] in BACKENDS] == [f"{b} 5 id3" for b in BACKENDS]


def test_backends_agree_on_top_1(tmp_path):
    data = unit(300, seed=1)
    queries = data[:25] + 0.3 * unit(25, seed=2)  # near a stored vector, not on it
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results = {}
    for backend in BACKENDS:
        s = open_store(tmp_path / backend, backend, DIM)
        s.upsert([f"v{i}" for i in range(300)], data, [f"t{i}" for i in range(300)], [{"source": "s"}] * 300)
        results[backend] = [(h.id, h.score) for q in queries for h in s.query(q, 1)]
        s.close()
    exact = [(f"v{int(np.argmax(data @ q))}", float(np.max(data @ q))) for q in queries]
    for backend, got in results.items():
        assert [i for i, _ in got] == [i for i, _ in exact], backend
        np.testing.assert_allclose([s for _, s in got], [s for _, s in exact], atol=1e-4, err_msg=backend)


def test_concurrent_queries_while_writing(store):
    vectors = fill(store)
    errors: list[BaseException] = []

    def read():
        try:
            for i in range(20):
                assert store.query(vectors[i % 30], 3)
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(10):
        store.upsert([f"w{i}"], unit(1, seed=100 + i), [f"w{i}"], [{"source": "w"}])
    for t in threads:
        t.join()
    assert not errors and store.count() == 40


# ---------------------------------------------------------------------------------------------- refusals


def test_other_dim_or_backend_is_refused(backend, tmp_path):
    open_store(tmp_path / "s", backend, DIM).close()
    with pytest.raises(ExpertkitError) as e:
        open_store(tmp_path / "s", backend, 768)
    assert "32-dim" in str(e.value) and "768-dim" in str(e.value)
    other = next(b for b in BACKENDS if b != backend)
    with pytest.raises(ExpertkitError, match=f"made with the {backend} backend, not {other}"):
        open_store(tmp_path / "s", other, DIM)
    assert json.loads((tmp_path / "s" / MANIFEST).read_text()) == {"backend": backend, "dim": DIM}


def test_bad_input_is_refused(store, tmp_path):
    with pytest.raises(ExpertkitError, match="32-dim vectors; got an array of shape"):
        store.upsert(["a"], unit(1, dim=8), ["t"], [{}])
    with pytest.raises(ExpertkitError, match="1 ids, 2 vectors"):
        store.upsert(["a"], unit(2), ["t"], [{}])
    with pytest.raises(ExpertkitError, match="metadata 'tags' of 'a' is a list"):
        store.upsert(["a"], unit(1), ["t"], [{"tags": ["x"]}])
    with pytest.raises(ExpertkitError, match="query vector has 8 dims"):
        store.query(unit(1, dim=8)[0], 3)
    store.upsert([], np.zeros((0, DIM), np.float32), [], [])
    assert store.count() == 0


def test_unknown_backend_and_foreign_folder(tmp_path):
    with pytest.raises(ExpertkitError, match="did you mean 'lancedb'") as e:
        open_store(tmp_path / "s", "lance-db", DIM)
    assert "sqlite-vec, lancedb, chroma" in e.value.hint
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("mine")
    with pytest.raises(ExpertkitError, match="not a vector store"):
        open_store(tmp_path / "docs", "sqlite-vec", DIM)


def test_chroma_never_loads_its_embedding_model(tmp_path):
    s = open_store(tmp_path / "c", "chroma", DIM)
    fill(s)
    assert s.query(unit(1)[0], 1)
    s.close()
    assert not (Path.home() / ".cache" / "chroma").exists()  # where the ONNX model would be downloaded


# ---------------------------------------------------------------------------------------------- Chroma server


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    exe = shutil.which("chroma")
    if not exe:
        pytest.skip("the `chroma` command (chromadb's server) is not on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path_factory.mktemp("chroma-server")
    log = (data / "server.log").open("w")
    proc = subprocess.Popen(
        [exe, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"`chroma run` did not listen on 127.0.0.1:{port} within 30 s")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_chroma_server_mode(chroma_server, tmp_path):
    s = open_store(tmp_path / "kb" / "vectors", "chroma", DIM, chroma_url=chroma_server)
    vectors = fill(s)
    assert s.delete_source("doc2.md") == 10
    s.close()
    manifest = json.loads((tmp_path / "kb" / "vectors" / MANIFEST).read_text())
    assert manifest["chroma_url"] == chroma_server and manifest["collection"].startswith("kb-vectors-")
    assert not (tmp_path / "kb" / "vectors" / "chroma.sqlite3").exists()  # the data is on the server
    s = open_store(tmp_path / "kb" / "vectors", "chroma", DIM, chroma_url=chroma_server)
    assert s.count() == 20 and s.query(vectors[4], 1)[0].id == "doc1.md#4"
    s.close()
    other = open_store(tmp_path / "other" / "vectors", "chroma", DIM, chroma_url=chroma_server)
    assert other.count() == 0  # another folder, another collection
    other.close()


def test_chroma_server_unreachable(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ExpertkitError, match="cannot reach the Chroma server") as e:
        open_store(tmp_path / "s", "chroma", DIM, chroma_url=url)
    assert "chroma run" in e.value.hint


def test_repeated_queries_agree_and_see_every_write(backend, tmp_path):
    """sqlite-vec answers the first query with vec0 and later ones from a copy in memory: both, and fresh."""
    a = open_store(tmp_path / "s", backend, DIM)
    vectors = fill(a)
    runs = [[(h.id, round(h.score, 5)) for h in a.query(vectors[3], 5)] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    b = open_store(tmp_path / "s", backend, DIM) if backend != "chroma" else a  # Chroma: one client per folder
    b.upsert(["other"], unit(1, seed=42), ["from the other connection"], [{"source": "other.md"}])
    assert a.query(unit(1, seed=42)[0], 1)[0].id == "other"
    a.delete_source("other.md")
    assert a.query(unit(1, seed=42)[0], 1)[0].id != "other"
    assert a.query(unit(1, seed=42)[0], 1)[0].id != "other"
    if b is not a:
        b.close()
    a.close()


def test_sqlite_vec_copy_is_used_and_refreshed(tmp_path):
    store = open_store(tmp_path / "s", "sqlite-vec", DIM)
    vectors = fill(store)
    store.query(vectors[0], 1)
    assert store._copy is None  # one query: sqlite-vec's KNN, no copy
    assert store.query(vectors[9], 1)[0].id == "doc0.md#9" and store._copy is not None
    store.upsert(["z"], unit(1, seed=5), ["z"], [{"source": "z"}])
    assert store.query(unit(1, seed=5)[0], 1)[0].id == "z"  # stale copy dropped, vec0 answers
    store.close()

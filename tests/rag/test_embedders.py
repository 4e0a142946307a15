"""Embedders: WordLlama offline from the wheel, and the Ollama / OpenAI HTTP embedders against a loopback server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.rag import embed, wordpool
from expertkit.rag.embed import Embedder, load_embedder

DIM = 6


def fake_vector(text: str) -> list[float]:
    """Deterministic and deliberately not unit length, so that the test sees the embedder normalise."""
    return [float(len(text) + 1), 2.0, 0.0, -3.0, float(ord(text[0]) % 7) if text else 0.0, 10.0]


class FakeEmbeddingServer(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if body.get("model") == "missing":
            return self.answer(404, {"error": 'model "missing" not found, try pulling it first'})
        if self.path == "/api/embed":
            return self.answer(200, {"model": body["model"], "embeddings": [fake_vector(t) for t in body["input"]]})
        if self.path == "/v1/embeddings":
            if self.headers.get("Authorization") != "Bearer sk-test":
                return self.answer(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
            data = [{"index": i, "embedding": fake_vector(t)} for i, t in enumerate(body["input"])]
            return self.answer(200, {"object": "list", "data": data[::-1], "model": body["model"]})  # any order
        self.answer(404, {"error": "no such route"})

    def answer(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeEmbeddingServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def seen(server):
    FakeEmbeddingServer.requests = []
    return FakeEmbeddingServer.requests


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- WordLlama


def test_wordllama_is_the_default_and_works_offline(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError(f"WordLlama tried the network: {args[:3]}")

    monkeypatch.setattr(requests.Session, "request", no_network)
    embed.load_wordllama.cache_clear()  # load for real, with the network refused and an empty home
    embedder = load_embedder()
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dim) == ("wordllama:l2_supercat:256", 256)
    vectors = embedder.embed(["How long does a refund take?", "退款多久到账？", "", "   "])
    assert_unit_rows(vectors, 4, 256)
    assert embedder.embed([]).shape == (0, 256)


def test_wordllama_loads_once_and_is_deterministic():
    a, b = load_embedder("wordllama"), load_embedder("wordllama:256")
    assert a.model is b.model
    texts = ["LoRA trains small adapter matrices.", "上传文档以建立知识库。"]
    np.testing.assert_array_equal(a.embed(texts), b.embed(texts[:1] + texts[1:]))
    np.testing.assert_array_equal(a.embed(texts)[1], a.embed([texts[1]])[0])  # a text's vector ignores its batch


@pytest.mark.parametrize("spec", ["wordllama", "wordllama:64"])
def test_wordllama_by_word_pieces_gives_wordllamas_own_vectors(spec):
    """rag/wordpool.py tokenizes by cached word pieces and pools with a sparse product: WordLlama's numbers."""
    e = load_embedder(spec)
    assert e.tokenizer.raw is not None  # the piece path is on for the bundled tokenizer
    texts = [
        "LoRA trains small adapter matrices.",
        "上传文档以建立知识库。客户需要在事故发生后三十天内提交理赔申请。",
        "",
        " ",
        "  two  spaces,\ttabs\nand lines  ",
        "a <s> special </s> token <unk> inside",
        "émoji 😀 and ▁ the boundary sign",
        "日本語のテキスト、カタカナ。한국어 텍스트 退款policy适用于LoRA模型（第2版）和最近的订单",  # a long mixed word
        "Order #2026-12-07: $1,234.56 -- x▁y ▁▁ 全角ＡＢＣ ﬁ Ⅻ",
        "LoRA trains small adapter matrices.",  # a second time: its pieces come from the cache
    ]
    ours = e.embed(texts)
    theirs = embed.normalize_rows(e.model.embed(list(texts), norm=False, batch_size=16))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert_unit_rows(ours, len(texts), e.dim)


def test_wordllama_pieces_cut_cjk_text_by_character_and_cache_no_whole_texts():
    """Chinese has no spaces: the vocabulary rule cuts it after each character (no token holds a CJK character
    before another one), so the cache holds characters, not whole texts, and the ids are the tokenizer's."""
    e = load_embedder("wordllama")
    text = "退款政策适用于最近三十天的订单。客服团队需要签收的送货单。"
    assert e.tokenizer.piece.findall(wordpool.SPACE + text) == [wordpool.SPACE + text[0], *text[1:]]
    english = "The refund policy applies to orders."
    assert e.tokenizer.piece.findall(wordpool.SPACE + english.replace(" ", wordpool.SPACE)) == [
        wordpool.SPACE + w for w in english.split()
    ]
    e.tokenizer.cache.clear()
    flat, offsets = e.tokenizer.ids([text, english])
    assert flat[offsets[0] : offsets[1]].tolist() == e.tokenizer.whole.encode(text, add_special_tokens=False).ids
    assert max(map(len, e.tokenizer.cache)) == len("▁orders.")  # the longest word; no sentence, no text


def test_wordllama_piece_cache_filling_up_starts_again_with_the_same_vectors(monkeypatch):
    e = load_embedder("wordllama")
    texts = ["a b c d", "a b e f g h", "退款政策适用于最近三十天的订单 a b", "a b c d"]
    expected = e.embed(texts)
    monkeypatch.setattr(wordpool, "CACHE_MAX", 5)
    e.tokenizer.cache.clear()
    got = np.concatenate([e.embed([t]) for t in texts])  # the second text overflows the cache: it is cleared
    np.testing.assert_array_equal(got, expected)
    assert len(e.tokenizer.cache) <= 2 * 5


def test_wordllama_ranks_a_paraphrase_above_an_unrelated_text():
    e = load_embedder()
    query, near, far = e.embed(
        [
            "how do I get my money back after a purchase",
            "Refunds: we give your money back within 14 days of the purchase.",
            "The GPU kernel fuses the attention softmax with the matmul.",
        ]
    )
    assert query @ near > query @ far


def test_wordllama_truncated_dims_and_name_round_trip():
    small = load_embedder("wordllama:128")
    assert (small.name, small.dim) == ("wordllama:l2_supercat:128", 128)
    assert_unit_rows(small.embed(["a", "b"]), 2, 128)
    assert load_embedder(small.name).name == small.name  # the name a store records loads the same embedder
    with pytest.raises(ExpertkitError, match="wordllama:100"):
        load_embedder("wordllama:100")


def test_importing_wordllama_leaves_root_logging_alone():
    code = (
        "import logging; from expertkit.rag.embed import load_embedder; load_embedder().embed(['x']); "
        "root = logging.getLogger(); assert not root.handlers and root.level == logging.WARNING, root.handlers"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------- specs and st:


def test_unknown_spec_lists_the_forms():
    with pytest.raises(ExpertkitError) as e:
        load_embedder("bert-base")
    assert "unknown embedder 'bert-base'" in str(e.value)
    for form in ("wordllama", "st:/path", "ollama:MODEL", "openai:MODEL"):
        assert form in e.value.hint


def test_sentence_transformers_missing_folder_and_missing_package(tmp_path):
    with pytest.raises(ExpertkitError, match="no such model folder"):
        load_embedder(f"st:{tmp_path / 'nope'}")
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentence-transformers is installed; the missing-package error cannot be shown")
    with pytest.raises(ExpertkitError) as e:
        load_embedder(f"st:{tmp_path}")
    assert "sentence-transformers" in str(e.value) and "pip install sentence-transformers" in e.value.hint


# ---------------------------------------------------------------------------------------------- HTTP embedders


def test_ollama_request_shape_batches_and_normalises(server, seen):
    e = load_embedder("ollama:nomic-embed-text", base_url=server)
    texts = [f"chunk {i}" for i in range(embed.HTTP_BATCH + 6)]
    vectors = e.embed(texts)
    assert_unit_rows(vectors, len(texts), DIM)
    expected = np.array(fake_vector(texts[3]), dtype=np.float32)
    np.testing.assert_allclose(vectors[3], expected / np.linalg.norm(expected), rtol=1e-6)
    assert [r["path"] for r in seen] == ["/api/embed", "/api/embed"]
    assert seen[0]["body"] == {"model": "nomic-embed-text", "input": texts[: embed.HTTP_BATCH]}
    assert seen[1]["body"]["input"] == texts[embed.HTTP_BATCH :]
    assert (e.dim, e.name) == (DIM, f"ollama:nomic-embed-text:{DIM}")
    assert len(seen) == 2  # dim was learnt from the answers, no extra request


def test_dim_is_asked_once_before_the_first_text(server, seen):
    e = load_embedder("ollama:bge-m3", base_url=server + "/")
    assert e.embed([]).shape == (0, DIM)
    assert e.dim == DIM and len(seen) == 1


def test_openai_compatible_request_shape_key_and_order(server, seen):
    e = load_embedder("openai:text-embedding-3-small", base_url=server + "/v1", api_key="sk-test")
    texts = ["alpha", "beta beta", "gamma gamma gamma"]
    vectors = e.embed(texts)
    assert_unit_rows(vectors, 3, DIM)
    for text, row in zip(texts, vectors, strict=True):  # the server answered in reverse; index puts them back
        expected = np.array(fake_vector(text), dtype=np.float32)
        np.testing.assert_allclose(row, expected / np.linalg.norm(expected), rtol=1e-6)
    assert seen[0]["path"] == "/v1/embeddings"
    assert seen[0]["auth"] == "Bearer sk-test"
    assert seen[0]["body"] == {"model": "text-embedding-3-small", "input": texts, "encoding_format": "float"}


def test_openai_key_from_the_environment(server, seen, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_embedder("openai:m", base_url=server + "/v1").embed(["x"]).shape == (1, DIM)


def test_http_errors_are_one_line_with_a_fix(server, seen):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    cases = [
        (load_embedder("ollama:nomic-embed-text", base_url=closed), "cannot connect to", "ollama serve"),
        (load_embedder("ollama:missing", base_url=server), 'model "missing" not found', "ollama pull missing"),
        (load_embedder("openai:m", base_url=server + "/v1", api_key="wrong"), "Incorrect API key", "API key"),
        (load_embedder("openai:m", base_url=closed + "/v1", api_key="sk-test"), "cannot connect to", "/v1"),
    ]
    for embedder, message, hint in cases:
        with pytest.raises(ExpertkitError) as e:
            embedder.embed(["hello"])
        assert message in e.value.message and "\n" not in e.value.message
        assert hint in e.value.hint
        assert "wrong" not in str(e.value)  # the key is never echoed

"""Text -> unit vectors, behind one `Embedder` protocol. The default, WordLlama, needs no download and no GPU.

    embedder = load_embedder()                          # WordLlama l2_supercat, 256 dims, weights in the wheel
    vectors = embedder.embed(["What is LoRA?", "退款多久到账？"])   # float32, shape (2, 256), each row unit length
    embedder.name                                       # 'wordllama:l2_supercat:256', recorded in the store

Specs `load_embedder` takes:
    wordllama                    the default (also wordllama:128, wordllama:64: the same model, truncated)
    st:/path/to/model            a sentence-transformers model folder (pip install sentence-transformers)
    ollama:nomic-embed-text      an Ollama server's /api/embed (base_url, default http://127.0.0.1:11434)
    openai:text-embedding-3-small  any OpenAI-compatible /v1/embeddings (base_url, api_key or OPENAI_API_KEY)
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from expertkit.core.errors import ExpertkitError, MissingExtraError
from expertkit.core.optional import import_optional

if TYPE_CHECKING:
    import numpy as np

SPEC_FORMS = (
    "wordllama",
    "wordllama:DIM (64, 128 or 256)",
    "st:/path/to/sentence-transformers-model",
    "ollama:MODEL",
    "openai:MODEL",
)
WORDLLAMA_CONFIG = "l2_supercat"  # the only config whose weights (256 dims) ship inside the wordllama wheel
WORDLLAMA_DIMS = (64, 128, 256)  # 256 is stored; 128 and 64 are its leading dims (the model is Matryoshka-trained)
OLLAMA_URL = "http://127.0.0.1:11434"
OPENAI_URL = "https://api.openai.com/v1"
HTTP_BATCH = 64  # texts per request to a remote embedder


@runtime_checkable
class Embedder(Protocol):
    name: str  # identity recorded in the store: kind, model and dim, e.g. 'wordllama:l2_supercat:256'
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dim), each row L2-normalised; [] -> shape (0, dim)."""
        ...


def load_embedder(spec: str = "wordllama", *, base_url: str | None = None, api_key: str | None = None) -> Embedder:
    """The embedder a spec names (see the module docstring); remote ones are not contacted until first used."""
    kind, _, rest = spec.strip().partition(":")
    if kind == "wordllama":
        return WordLlamaEmbedder(parse_wordllama_dim(spec, rest))
    if kind == "st" and rest:
        return SentenceTransformerEmbedder(rest)
    if kind == "ollama" and rest:
        return OllamaEmbedder(rest, base_url or OLLAMA_URL)
    if kind == "openai" and rest:
        return OpenAIEmbedder(rest, base_url or OPENAI_URL, api_key or os.environ.get("OPENAI_API_KEY"))
    raise ExpertkitError(
        f"unknown embedder '{spec}'",
        hint="use one of: " + ", ".join(SPEC_FORMS),
    )


def parse_wordllama_dim(spec: str, rest: str) -> int:
    """'' -> 256, '128' -> 128, and a recorded name 'l2_supercat:256' -> 256."""
    parts = [p for p in rest.split(":") if p]
    if parts and parts[0] == WORDLLAMA_CONFIG:
        parts = parts[1:]
    if not parts:
        return 256
    if len(parts) == 1 and parts[0].isdigit() and int(parts[0]) in WORDLLAMA_DIMS:
        return int(parts[0])
    raise ExpertkitError(
        f"unknown WordLlama embedder '{spec}'",
        hint=f"use wordllama or wordllama:DIM with DIM one of {', '.join(map(str, WORDLLAMA_DIMS))}",
    )


def normalize_rows(vectors) -> np.ndarray:
    """float32 copy with unit rows; a row with no direction (an empty text) becomes the fixed vector 1/sqrt(dim)."""
    import numpy as np

    out = np.nan_to_num(np.asarray(vectors, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if out.ndim != 2:
        raise ExpertkitError(f"the embedder returned an array of shape {out.shape}, expected (texts, dim)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    empty = norms[:, 0] < 1e-12
    out[empty] = 1.0
    norms[empty] = np.sqrt(out.shape[1], dtype=np.float32)
    out /= norms
    return out


def empty_matrix(dim: int) -> np.ndarray:
    import numpy as np

    return np.zeros((0, dim), dtype=np.float32)


# ---------------------------------------------------------------------------------------------- WordLlama


class WordLlamaEmbedder:
    """WordLlama's token-embedding average, no download; computed by `rag/wordpool.py` (the same vectors, faster)."""

    def __init__(self, dim: int = 256):
        if dim not in WORDLLAMA_DIMS:
            raise ExpertkitError(f"WordLlama has no {dim}-dim model", hint=f"use one of {WORDLLAMA_DIMS}")
        self.dim = dim
        self.name = f"wordllama:{WORDLLAMA_CONFIG}:{dim}"
        self.model = load_wordllama(dim)
        from expertkit.rag.wordpool import PieceTokenizer

        self.tokenizer = PieceTokenizer(self.model.tokenizer)

    def embed(self, texts: list[str]) -> np.ndarray:
        from expertkit.rag.wordpool import embed_texts

        if not texts:
            return empty_matrix(self.dim)
        return embed_texts(self.tokenizer, self.model.embedding, list(texts), finish=normalize_rows)


@functools.cache
def load_wordllama(dim: int):
    """The WordLlama model, loaded once per process from the files inside the installed package (no network)."""
    wordllama = import_wordllama()
    # WordLlama.load looks for the tokenizer in <cache_dir>/tokenizers/, which the wheel fills but the default
    # cache_dir (~/.cache/wordllama) does not: without this it would try to download it from Hugging Face.
    package_dir = Path(wordllama.__file__).parent
    trunc = None if dim == 256 else dim
    try:
        return wordllama.WordLlama.load(
            config=WORDLLAMA_CONFIG, cache_dir=package_dir, dim=256, trunc_dim=trunc, disable_download=True
        )
    except (FileNotFoundError, ValueError) as e:
        raise ExpertkitError(
            f"cannot load WordLlama from {package_dir}: {e}",
            hint="reinstall it: pip install --force-reinstall 'wordllama>=0.4'",
        ) from None


def import_wordllama():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        wordllama = import_optional("wordllama", "wordllama", "rag")
    finally:
        # wordllama.inference calls logging.basicConfig(level=INFO) when imported; leave the caller's logging as it was
        root.handlers[:] = handlers
        root.setLevel(level)
    return wordllama


# ---------------------------------------------------------------------------------------------- sentence-transformers


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder; never downloads, never runs remote code."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ExpertkitError(
                f"st:{path}: no such model folder",
                hint="give the folder a sentence-transformers model was saved to (it holds modules.json)",
            )
        self.model = load_sentence_transformer(str(folder.resolve()))
        self.dim = int(self.model.get_sentence_embedding_dimension())
        self.name = f"st:{path}:{self.dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return empty_matrix(self.dim)
        vectors = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
        return normalize_rows(vectors)


@functools.lru_cache(maxsize=4)
def load_sentence_transformer(folder: str):
    try:  # no extra installs it: the hint is pip install sentence-transformers
        st = import_optional("sentence_transformers", "sentence-transformers", None, needed_for="st: embedders")
    except MissingExtraError as e:
        e.hint += "   (or use the default embedder: wordllama)"
        raise
    return st.SentenceTransformer(folder, local_files_only=True, trust_remote_code=False)


# ---------------------------------------------------------------------------------------------- HTTP embedders


class HTTPEmbedder:
    """Shared by the Ollama and OpenAI-compatible embedders: batching, errors, and a dim learnt on first use."""

    kind = ""
    start_hint = ""

    def __init__(self, model: str, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self.model, self.base_url, self.timeout_s = model, base_url.rstrip("/"), timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """The server's vector size, asked once with a one-word text (stores need it before the first chunk)."""
        if self._dim is None:
            self.embed(["dim"])
        return self._dim  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}:{self.dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return empty_matrix(self.dim)
        rows: list[list[float]] = []
        for start in range(0, len(texts), HTTP_BATCH):
            batch = list(texts[start : start + HTTP_BATCH])
            got = self.request(batch)
            if len(got) != len(batch):
                raise ExpertkitError(f"{self.url()} returned {len(got)} vectors for {len(batch)} texts")
            rows += got
        try:
            vectors = normalize_rows(np.asarray(rows, dtype=np.float32))
        except ValueError:  # ragged rows
            raise ExpertkitError(f"{self.url()} returned vectors of different lengths") from None
        if self._dim is None:
            self._dim = vectors.shape[1]
        elif vectors.shape[1] != self._dim:
            raise ExpertkitError(f"{self.url()} returned {vectors.shape[1]}-dim vectors, earlier {self._dim}-dim")
        return vectors

    def url(self) -> str:
        raise NotImplementedError

    def request(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def post(self, body: dict) -> dict:
        """POST body as JSON; every way it can fail becomes one ExpertkitError line with a fix."""
        httpx = import_optional("httpx", "httpx", "rag")
        url = self.url()
        try:
            timeout = httpx.Timeout(self.timeout_s, connect=10)
            response = httpx.post(url, json=body, headers=self._headers, timeout=timeout)
        except httpx.ConnectError:
            raise ExpertkitError(f"cannot connect to {url}", hint=self.start_hint) from None
        except httpx.TimeoutException:
            raise ExpertkitError(
                f"{url} did not answer within {self.timeout_s:.0f} s", hint="check that the server is not overloaded"
            ) from None
        except httpx.HTTPError as e:
            raise ExpertkitError(f"request to {url} failed: {e}", hint=self.start_hint) from None
        if response.status_code >= 400:
            raise ExpertkitError(
                f"{url} answered {response.status_code}: {error_text(response)}", hint=self.status_hint(response)
            )
        try:
            return response.json()
        except ValueError:
            raise ExpertkitError(f"{url} did not answer JSON: {response.text[:200]!r}") from None

    def status_hint(self, response) -> str:
        if response.status_code in (401, 403):
            return "check the API key (api_key=..., or the OPENAI_API_KEY environment variable)"
        return self.start_hint


def error_text(response) -> str:
    """The server's own error message ({"error": "..."} or {"error": {"message": "..."}}), on one line."""
    try:
        error = response.json().get("error", response.text)
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        text = response.text
    return " ".join(text.split())[:300]


class OllamaEmbedder(HTTPEmbedder):
    """Ollama's POST /api/embed {"model", "input": [texts]} -> {"embeddings": [[...], ...]}."""

    kind = "ollama"

    def __init__(self, model: str, base_url: str = OLLAMA_URL, timeout_s: float = 120.0):
        super().__init__(model, base_url, None, timeout_s)
        self.start_hint = f"start Ollama (ollama serve) and pull the model (ollama pull {model}), or pass base_url"

    def url(self) -> str:
        return self.base_url + "/api/embed"

    def request(self, texts: list[str]) -> list[list[float]]:
        answer = self.post({"model": self.model, "input": texts})
        vectors = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(vectors, list):
            raise ExpertkitError(f"{self.url()} answered without 'embeddings': {str(answer)[:200]}")
        return vectors


class OpenAIEmbedder(HTTPEmbedder):
    """POST {base_url}/embeddings {"model", "input": [texts]} -> {"data": [{"index", "embedding"}, ...]}."""

    kind = "openai"

    def __init__(self, model: str, base_url: str = OPENAI_URL, api_key: str | None = None, timeout_s: float = 120.0):
        super().__init__(model, base_url, api_key, timeout_s)
        self.start_hint = (
            f"check that an OpenAI-compatible server runs at {self.base_url} (base_url ends in /v1) "
            f"and serves the model '{model}'"
        )

    def url(self) -> str:
        return self.base_url + "/embeddings"

    def request(self, texts: list[str]) -> list[list[float]]:
        answer = self.post({"model": self.model, "input": texts, "encoding_format": "float"})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(d, dict) and "embedding" in d for d in data):
            raise ExpertkitError(f"{self.url()} answered without data[].embedding: {str(answer)[:200]}")
        data = sorted(data, key=lambda d: d.get("index", 0))  # the API allows any order; index says whose it is
        return [d["embedding"] for d in data]

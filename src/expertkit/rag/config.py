"""Keys of `expertkit kb` (the knowledge base) and `expertkit ask` (the knowledge base + web search + a model)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig, split_list
from expertkit.engine.config import EngineConfig

DEFAULT_KB_DIR = "kb"


class KbConfig(StageConfig):
    kb_dir: str = DEFAULT_KB_DIR
    """Folder of the knowledge base (created on the first `kb add`): the vector store, the BM25 index and a list of
    the sources in it."""

    vector_store: Literal["auto", "sqlite-vec", "lancedb", "chroma"] = "auto"
    """Vector database: auto is the one the knowledge base was built with, else the fastest measured
    (bench/rag_throughput.py). chroma with chroma_url uses a Chroma server (for teams)."""

    chroma_url: str | None = None
    """vector_store=chroma: a Chroma server's URL (http://host:8000) instead of a folder."""

    embedder: str = "wordllama"
    """How text becomes vectors: wordllama (offline, ships with expertkit), st:/path/to/sentence-transformers-model,
    ollama:nomic-embed-text, or openai:MODEL for any OpenAI-compatible /v1/embeddings (with embed_base_url). A
    knowledge base keeps the embedder it was built with; another one is refused."""

    embed_base_url: str | None = None
    """embedder=ollama:... or openai:...: the server's URL (Ollama http://127.0.0.1:11434, or a /v1 URL)."""

    embed_api_key: str | None = Field(None, repr=False)
    """embedder=openai:...: the key of the embeddings server (or set OPENAI_API_KEY)."""

    chunk_size: int = Field(400, ge=50, le=20000)
    """Largest chunk in characters. Chunks follow the document's structure, then sentences (English and Chinese)."""

    chunk_overlap: int = Field(100, ge=0)
    """Characters a chunk repeats from the end of the one before, so a fact split across two is still found."""

    top_k: int = Field(5, ge=1, le=100)
    """Chunks retrieved for a question (`kb search` shows this many; `ask` puts them in the prompt)."""

    retrieval: Literal["hybrid", "vector", "bm25"] = "hybrid"
    """hybrid: keyword (BM25) and vector search fused by reciprocal rank (finds exact names and paraphrases);
    vector or bm25: one of them alone."""

    reranker: str | None = None
    """Optional cross-encoder that re-orders the retrieved chunks: a local model folder such as one downloaded from
    BAAI/bge-reranker-v2-m3 (runs on transformers). Unset: the hybrid order."""

    rerank_candidates: int = Field(20, ge=1, le=200)
    """reranker set: how many retrieved chunks it reads to choose the top_k."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KbConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class FetchConfig(StageConfig):
    """How web pages are read: `kb add URL` and `ask web=true`."""

    allow_networks: list[str] = Field(default_factory=list)
    """Internal networks fetching may reach (comma list of CIDRs, e.g. 10.1.0.0/16). By default loopback, private,
    link-local, CGNAT and multicast addresses are refused, however spelled, and on every redirect."""

    fetch_timeout: float = Field(10.0, gt=0, le=300)
    """Seconds a page may take, headers to last byte; slower pages are skipped, the rest go on."""

    max_page_bytes: int = Field(5_000_000, ge=1000)
    """Largest page read, in bytes; bigger pages are skipped."""

    fetch_concurrency: int = Field(8, ge=1, le=64)
    """Pages fetched at once."""

    user_agent: str | None = None
    """The User-Agent sent with every request and matched in robots.txt; unset: expertkit/<version>."""

    @field_validator("allow_networks", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return split_list(v)

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not a network; write CIDRs like 10.1.0.0/16 or 127.0.0.1/32") from None
        return v


class WebConfig(FetchConfig):
    web: bool = False
    """Search the web for the question, read the pages (robots.txt honoured), and add what is relevant to the
    knowledge base before answering."""

    search_provider: str = "duckduckgo"
    """duckduckgo (no set-up; rate-limited when used a lot), searxng (with searxng_url; recommended), brave (with
    search_api_key), or a comma chain tried in order: searxng,duckduckgo."""

    searxng_url: str | None = None
    """search_provider=searxng: your SearXNG instance, e.g. http://127.0.0.1:8888 (JSON output enabled)."""

    search_api_key: str | None = Field(None, repr=False)
    """The key of a keyed search API (search_provider=brave)."""

    num_results: int = Field(5, ge=1, le=50)
    """Search results to read per question."""

    discard_domains: list[str] | None = None
    """Domains whose results are skipped (comma list; subdomains too); unset: video sites (youtube.com, ...)."""

    @field_validator("discard_domains", mode="before")
    @classmethod
    def _domains(cls, v):
        return None if v is None else split_list(v)


class KbCommandConfig(FetchConfig, KbConfig):
    """`expertkit kb ...`: the knowledge base's keys, and how `kb add URL` reads pages."""


class AskConfig(WebConfig, KbConfig, EngineConfig):
    """`expertkit ask`: the engine's model keys, the knowledge base's, and web search's."""

"""Keys of `expertkit serve`: the engine's keys plus where to listen, who may call, and how much to accept."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import split_list
from expertkit.core.errors import ConfigError
from expertkit.engine.config import EngineConfig
from expertkit.rag.config import WebConfig

API_KEY_ENV = "EXPERTKIT_API_KEY"


class ServeConfig(WebConfig, EngineConfig):
    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 (the default) is this machine only; 0.0.0.0 is every interface."""

    port: int = Field(8000, ge=1, le=65535)
    """TCP port to listen on."""

    api_key: list[str] = Field(default_factory=list, repr=False)
    """Keys clients must send (`Authorization: Bearer KEY` or `X-Api-Key: KEY`), comma separated. Also read from
    api_key_file and the EXPERTKIT_API_KEY variable; none anywhere: no key needed. Never logged."""

    api_key_file: str | None = None
    """A file holding accepted keys, one per line (or comma separated); keeps keys out of the command line."""

    max_queue: int = Field(64, ge=0)
    """Requests allowed to wait beyond the max_concurrency being generated; more get 429 with Retry-After."""

    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to call the API (CORS), comma separated, e.g. http://localhost:3000; empty: none."""

    request_timeout: float = Field(600.0, gt=0)
    """Seconds a request may take from arrival to its last token; then it is stopped (504, or an error event)."""

    keepalive_s: float = Field(10.0, ge=0)
    """Seconds a streamed (SSE) answer may stay silent, queued or in prefill, before a `: keep-alive` comment line
    is sent so proxies and clients don't time out; 0: never."""

    shutdown_timeout: float = Field(30.0, gt=0)
    """On SIGTERM or Ctrl-C: seconds the open requests get to finish (new connections are refused); then they are
    cancelled and the server exits."""

    kb_dir: str | None = None
    """A knowledge base (`expertkit kb add ... kb_dir=DIR`) for chat requests that ask for retrieval with
    `"retrieval": true`; they get the numbered `sources` with the answer. Unset: retrieval requests get 400."""

    top_k: int = Field(5, ge=1, le=50)
    """Chunks retrieved per grounded request (a request's `retrieval.top_k` overrides it)."""

    web: bool = False
    """Let grounded requests also search the web (`"retrieval": {"web": true}`); the search and fetch keys below
    apply. Off: such requests get 400."""

    store_conversations: bool = False
    """Record every answer of /v1/chat/completions, /v1/completions and Ollama's /api/chat and /api/generate (the
    request's messages, the answer, model, the alias asked for and the arm that answered, sampling, sources, when) in
    the feedback store, and accept thumbs up / down and edited answers for them at `POST /v1/feedback`. Off by
    default: conversations hold what users typed; turn it on only where they know it is kept."""

    feedback_db: str | None = None
    """With store_conversations: the SQLite file to record into, the web UI's (unset: ~/.expertkit/feedback.sqlite);
    `expertkit feedback export` turns it into training data."""

    max_request_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted, in bytes (1 MiB); larger bodies get 413."""

    models: str | None = None
    """A models file (YAML: served names, aliases, weighted A/B arms; see docs/serve.md) to serve instead of
    model_name_or_path / adapter_name_or_path. Reloaded without a restart when it changes, on SIGHUP, or on
    `POST /admin/models`; a file with problems is refused and the old mapping keeps serving. engine=transformers
    only."""

    admin_key: str | None = Field(None, repr=False)
    """The key `POST /admin/models` (reload the models file now) needs, sent as `X-Admin-Key: KEY` (besides the API
    key, when there are API keys); unset: that route answers 403. Never logged."""

    @model_validator(mode="after")
    def _model_or_url(self) -> ServeConfig:
        """EngineConfig's check, except that a models file names the models itself."""
        if not self.models:
            return EngineConfig._model_or_url(self)
        if self.adapter_name_or_path or self.served_model_name:
            raise ValueError(
                "models= names the served models itself: leave out adapter_name_or_path and served_model_name "
                "(put each adapter in the models file instead)"
            )
        if self.engine != "transformers":
            raise ValueError(
                f"models= works with engine=transformers only (not engine={self.engine}); serve the names one "
                "server each, or leave out models="
            )
        return self

    @field_validator("api_key", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return split_list(v)

    def accepted_keys(self) -> list[str]:
        """Every accepted key: api_key, api_key_file and EXPERTKIT_API_KEY together."""
        keys = list(self.api_key)
        if self.api_key_file:
            path = Path(self.api_key_file)
            if not path.is_file():
                raise ConfigError(f"api_key_file '{path}' does not exist", hint="write one key per line into it")
            text = path.read_text(encoding="utf-8")
            keys += [k.strip() for line in text.splitlines() for k in line.split(",") if k.strip()]
        keys += [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
        return list(dict.fromkeys(keys))

    @property
    def loopback(self) -> bool:
        """Bound to this machine only: then requests must name a loopback Host (against DNS rebinding)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}/v1"

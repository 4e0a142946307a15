"""Keys that choose and tune the generation engine (shared by chat and serve)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from expertkit.model.config import ModelConfig


class EngineConfig(ModelConfig):
    model_name_or_path: str = ""
    """Base model folder (or hub id), or a merged export. Leave empty with engine=openai."""

    engine: Literal["transformers", "openai"] = "transformers"
    """transformers: run the model here (continuous batching); openai: forward to an OpenAI-compatible URL."""

    base_url: str | None = None
    """engine=openai: the server's /v1 URL (Ollama http://127.0.0.1:11434/v1, DeepSeek, another expertkit ...)."""

    remote_api_key: str | None = None
    """engine=openai: the remote server's key (or set OPENAI_API_KEY). `api_key` is the key clients give `serve`."""

    served_model_name: str | None = None
    """The name clients use in `model`; unset: the adapter's (or model's) folder name, or the remote's first model."""

    max_new_tokens: int = 512
    """Default answer length when a request does not say."""

    max_concurrency: int = 16
    """Sequences decoded together in one batch; more requests wait in the queue."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto is the checkpoint's own on GPU, float32 on CPU."""

    @field_validator("max_new_tokens", "max_concurrency")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @model_validator(mode="after")
    def _model_or_url(self) -> EngineConfig:
        if self.engine == "transformers" and not self.model_name_or_path:
            raise ValueError("model_name_or_path is required (or engine=openai with base_url=...)")
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine=openai needs base_url, e.g. base_url=http://127.0.0.1:11434/v1")
        return self

"""Keys that say which model to load (shared by train, export, chat, serve). LLaMA-Factory's names."""

from __future__ import annotations

from pydantic import field_validator

from expertkit.core.config import StageConfig


class ModelConfig(StageConfig):
    model_name_or_path: str
    """Base model: a local folder with config.json (or a Hugging Face hub id when online)."""

    adapter_name_or_path: str | None = None
    """A LoRA adapter folder to load on top of the base (to continue training it, or to use it)."""

    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run. Off unless you trust the source."""

    template: str | None = None
    """Chat template: unset uses the tokenizer's own; or qwen, chatml, deepseek3, deepseekr1, qwen3, llama3, llama2,
    mistral, gemma, empty, alpaca, default."""

    @field_validator("model_name_or_path")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model folder or hub id")
        return v

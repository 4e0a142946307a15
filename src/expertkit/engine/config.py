"""Keys that choose and tune the generation engine (shared by chat and serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig
from expertkit.model.config import ModelConfig
from expertkit.model.quant import QuantizationKeys

# LLaMA-Factory's `infer_backend` (its EngineName) -> our `engine`; the others have no engine here
INFER_BACKENDS = {"huggingface": "transformers", "vllm": "vllm"}
OTHER_BACKENDS = {"sglang": "SGLang", "ktransformers": "KTransformers"}


class InferBackendKey(StageConfig):
    """LLaMA-Factory's `infer_backend`, read as our `engine` (chat, serve, ask, eval), so its files run unchanged."""

    infer_backend: Literal["huggingface", "vllm", "sglang", "ktransformers"] | None = None
    """LLaMA-Factory's name for `engine`: huggingface means engine=transformers, vllm engine=vllm. sglang and
    ktransformers are refused: start that server yourself and give engine=openai base_url=its /v1 URL."""

    @field_validator("infer_backend")
    @classmethod
    def _backend_we_run(cls, v: str | None) -> str | None:
        if v in OTHER_BACKENDS:
            raise ValueError(
                f"{v} is LLaMA-Factory's {OTHER_BACKENDS[v]} backend, which expertkit cannot run: "
                f"use infer_backend: huggingface (engine=transformers) or vllm (engine=vllm), or start {v}'s "
                "OpenAI-compatible server yourself and give engine=openai base_url=http://HOST:PORT/v1"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _engine_from_infer_backend(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("infer_backend") not in INFER_BACKENDS:
            return data  # unset, or a value the field refuses by name
        backend = data["infer_backend"]
        engine = INFER_BACKENDS[backend]
        if data.get("engine") is not None and data["engine"] != engine:
            raise ValueError(
                f"infer_backend: {backend} means engine={engine}, but engine={data['engine']} is also given: "
                "keep one of the two keys"
            )
        return {**data, "engine": engine}


class EngineConfig(InferBackendKey, QuantizationKeys, ModelConfig):
    model_name_or_path: str = ""
    """Base model folder (or hub id), or a merged export. Leave empty with engine=openai."""

    engine: Literal["transformers", "openai", "vllm"] = "transformers"
    """transformers: run the model here (continuous batching); openai: forward to an OpenAI-compatible URL; vllm: run
    it here on vLLM (a GPU machine with `pip install vllm`; adapters become vLLM LoRA modules)."""

    base_url: str | None = None
    """engine=openai: the server's /v1 URL (Ollama http://127.0.0.1:11434/v1, DeepSeek, another expertkit ...)."""

    remote_api_key: str | None = None
    """engine=openai: the remote server's key (or set OPENAI_API_KEY). `api_key` is the key clients give `serve`."""

    adapter_name_or_path: str | None = None
    """LoRA adapters to serve beside the base, as a comma list: `sail=saves/sail,legal=saves/legal/lora/sft`.
    A bare path is named by its folder. Each is merged into its own copy of the base (memory: one model per name);
    engine=vllm keeps one base and applies each as a LoRA module per request."""

    served_model_name: str | None = None
    """The name of the default model (the first adapter, else the base) in `model`; unset: its folder name, or the
    remote's first model."""

    max_new_tokens: int = 512
    """Default answer length when a request does not say."""

    max_concurrency: int = 16
    """Requests decoded together in one batch, per served model; also how many requests the per-request decode loop
    (a seed when sampling, repetition_penalty, logprobs, JSON mode) runs at once. More wait in the engine's queue.
    engine=vllm: vLLM's max_num_seqs (on a GPU, 64 or more is usual)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto is the checkpoint's own on GPU, float32 on CPU (engine=vllm: vLLM's auto, 16-bit)."""

    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """engine=vllm: the share of each GPU's memory vLLM may take for weights, activations and its KV cache."""

    tensor_parallel_size: int = Field(1, ge=1)
    """engine=vllm: GPUs to split the model over (tensor parallel), on this machine."""

    max_model_len: int | None = Field(None, ge=1)
    """engine=vllm: the longest prompt + answer, in tokens; unset: the model's own context. Lower it when vLLM says
    the KV cache cannot hold one full-length request."""

    vllm_config: dict[str, Any] = Field(default_factory=dict)
    """engine=vllm: more of vLLM's engine arguments (`AsyncEngineArgs`), applied last, e.g.
    `vllm_config='{enforce_eager: true, max_num_batched_tokens: 8192}'`. Unknown ones stop the start, named."""

    @field_validator("max_new_tokens", "max_concurrency")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("adapter_name_or_path")
    @classmethod
    def _adapter_list(cls, v: str | None) -> str | None:
        if v is not None:
            parse_adapters(v)
        return v

    def adapters(self) -> dict[str, str]:
        """Served adapter name -> folder, in the order given (the first is the default model)."""
        adapters = parse_adapters(self.adapter_name_or_path or "")
        if adapters and self.served_model_name:
            first = next(iter(adapters))
            adapters = {self.served_model_name if n == first else n: p for n, p in adapters.items()}
        return adapters

    def base_name(self) -> str:
        """The name the base model is served under: its folder name (or served_model_name when no adapter)."""
        if self.served_model_name and not self.adapter_name_or_path:
            return self.served_model_name
        return Path(self.model_name_or_path.rstrip("/")).name or self.model_name_or_path

    @model_validator(mode="after")
    def _model_or_url(self) -> EngineConfig:
        if self.engine in ("transformers", "vllm") and not self.model_name_or_path:
            raise ValueError("model_name_or_path is required (or engine=openai with base_url=...)")
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine=openai needs base_url, e.g. base_url=http://127.0.0.1:11434/v1")
        if self.engine in ("transformers", "vllm") and self.adapter_name_or_path:
            names = list(self.adapters())
            if self.base_name() in names or len(set(names)) < len(names):
                raise ValueError(
                    f"two served models share a name ({', '.join(names + [self.base_name()])}); "
                    "name the adapters with name=path items"
                )
        return self


def parse_adapters(value: str) -> dict[str, str]:
    """`a=saves/a, saves/b` -> {"a": "saves/a", "b": "saves/b"} (a bare path is named by its folder)."""
    adapters: dict[str, str] = {}
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        name, _, path = item.partition("=") if "=" in item else ("", "", item)
        name, path = name.strip() or ("" if "=" in item else Path(path.strip().rstrip("/")).name), path.strip()
        if not path or not name:
            raise ValueError(f"'{item}' is not an adapter: write name=path or a path")
        if name in adapters:
            raise ValueError(f"two adapters are named '{name}'; name them with name=path items")
        adapters[name] = path
    return adapters

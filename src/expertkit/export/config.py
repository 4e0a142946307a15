"""The export config: LLaMA-Factory's merge keys, so `llamafactory-cli export my.yaml` files work unchanged.

Each field's docstring is its documentation (`expertkit config keys export`, docs/reference/export.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from expertkit.model.config import ModelConfig

# Keys a LLaMA-Factory export YAML may hold (its model, data, finetuning and generating arguments) that export
# does not read: warned once, not refused. Not `expertkit.train.lf_keys`: export may not import train, and that
# list names the export keys supported here.
EXPORT_LF_UNSUPPORTED = frozenset(
    """
    export_quantization_bit export_quantization_dataset export_quantization_nsamples export_quantization_maxlen
    export_hub_model_id infer_dtype infer_backend hf_hub_token ms_hub_token om_hub_token cache_dir model_revision
    use_fast_tokenizer resize_vocab split_special_tokens add_tokens add_special_tokens new_special_tokens
    new_special_tokens_config low_cpu_mem_usage rope_scaling flash_attn shift_attn mixture_of_depths use_unsloth
    use_unsloth_gc enable_liger_kernel moe_aux_loss_coef disable_gradient_checkpointing use_reentrant_gc
    upcast_layernorm upcast_lmhead_output train_from_scratch offload_folder use_cache use_kv_cache
    print_param_status adapter_folder quantization_method quantization_bit quantization_type double_quantization
    quantization_device_map image_max_pixels image_min_pixels image_do_pan_and_scan crop_to_patches
    video_max_pixels video_min_pixels video_fps video_maxlen use_audio_in_video audio_sampling_rate
    vllm_maxlen vllm_gpu_util vllm_enforce_eager vllm_max_lora_rank vllm_config sglang_maxlen sglang_mem_fraction
    sglang_tp_size sglang_config sglang_lora_backend default_system enable_thinking tool_format dataset_dir
    stage lora_rank lora_alpha lora_dropout lora_target additional_target create_new_adapter use_rslora use_dora
    do_sample temperature top_p top_k num_beams max_length max_new_tokens repetition_penalty length_penalty
    skip_special_tokens
    """.split()
)


class ExportConfig(ModelConfig):
    lf_unsupported = EXPORT_LF_UNSUPPORTED
    lf_refused = {
        "export_quantization_bit": (
            None,
            "quantises the exported model (GPTQ)",
            "drop the key: export writes the merged weights unquantised",
        ),
        "quantization_bit": (
            None,
            "loads the base quantised before merging",
            "drop the key: export merges a QLoRA adapter into the unquantised base (LLaMA-Factory's rule)",
        ),
    }

    finetuning_type: Literal["lora", "full", "freeze"] = "lora"
    """lora: merge adapter_name_or_path into the base; full / freeze: model_name_or_path is the tuned run folder,
    re-saved with its tokenizer and a model card (no adapter)."""

    export_dir: str
    """Folder the merged model goes to. Written to a temp folder beside it, checked, then moved into place;
    a previous export there is replaced only after the new one passed its checks."""

    export_size: float = 5
    """Largest shard in GB (10^9 bytes); bigger models are split into numbered safetensors files with an index."""

    export_device: Literal["cpu", "auto"] = "cpu"
    """Where the merge runs: cpu (needs RAM for the model), or auto (the GPU when there is one)."""

    export_legacy_format: bool = False
    """false: safetensors (the default everywhere); true: PyTorch .bin files, for old tools only."""

    export_format: Literal["safetensors", "gguf"] = "safetensors"
    """safetensors: a Hugging Face model folder; gguf: model-<quantisation>.gguf files for llama.cpp and Ollama,
    with a Modelfile (merged first, then converted; the GGUF is checked in llama.cpp before it is moved into place)."""

    export_quantization: str = "f16"
    """gguf only: one or more of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s,
    q4_k_m, q5_k_s, q5_k_m, q6_k, comma-separated (f16,q4_k_m). The Modelfile uses the first. f32 / f16 / bf16 /
    q8_0 are written by the gguf package; the others by llama.cpp's quantiser from an f16 file."""

    skip_check: bool = False
    """gguf only: true writes the files without loading them in llama.cpp and rendering the TEMPLATE in Go (for
    machines without Node.js or Go); the report and README.md say what was not checked. Also `--skip-check`."""

    @field_validator("export_size")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a size in GB above 0 (e.g. 5)")
        return v

    @field_validator("export_quantization")
    @classmethod
    def _known_quantizations(cls, v: str) -> str:
        from expertkit.export.quantize import parse_quantizations

        return ",".join(parse_quantizations(v))

    @field_validator("export_dir")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name the folder to write the merged model to")
        return v

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.finetuning_type == "lora" and not self.adapter_name_or_path:
            raise ValueError(
                "finetuning_type lora merges an adapter, but adapter_name_or_path is unset: set it to the run folder "
                "holding adapter_config.json (or finetuning_type=full to re-save a fully tuned model)"
            )
        if self.finetuning_type != "lora" and self.adapter_name_or_path:
            raise ValueError(
                f"adapter_name_or_path is set but finetuning_type is '{self.finetuning_type}': "
                "set finetuning_type=lora to merge the adapter"
            )
        if self.export_format == "gguf" and self.export_legacy_format:
            raise ValueError("export_legacy_format writes PyTorch .bin files: it does not apply to export_format gguf")
        if self.adapter_name_or_path and "," in self.adapter_name_or_path:
            raise ValueError("one adapter at a time: merge the first, then export again with the merged model as base")
        return self

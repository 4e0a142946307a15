"""Write a merged Hugging Face model folder as one GGUF file, with the `gguf` package's writer and tensor-name maps.

A compact converter for the families expertkit trains (Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen, Qwen3,
Llama 3), following llama.cpp's own `convert_hf_to_gguf.py` (its reference for tensor names, hyper-parameter keys,
the Llama q/k permutation, Llama 3 rope factors, vocabulary types and special tokens). Anything else is refused by
name rather than converted half-right.

The BPE pre-tokenizer name (`tokenizer.ggml.pre`) tells llama.cpp how to split text before BPE. llama.cpp's script
finds it by hashing the tokens of a fixed text, which only works for the exact published tokenizers; a tokenizer
we trained (or a merged copy of a real one) is identified here by the regular expressions of the pre-tokenizer that
transformers actually runs, matched against the ones llama.cpp implements under each name. The export's check then
tokenizes the same texts in llama.cpp and in transformers and compares the ids.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from expertkit.core.errors import ExpertkitError

logger = logging.getLogger(__name__)

# architectures in config.json -> gguf MODEL_ARCH member name; the family name users know
ARCHITECTURES = {
    "Qwen2ForCausalLM": ("QWEN2", "Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen"),
    "Qwen3ForCausalLM": ("QWEN3", "Qwen3"),
    "LlamaForCausalLM": ("LLAMA", "Llama 3 / 3.1 / 3.2"),
}
QWEN2_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
DEEPSEEK3_REGEXES = (
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+""",
)
# the Split regexes of a byte-level BPE pre-tokenizer -> the name llama.cpp implements them under (llama-vocab.cpp)
PRE_TOKENIZERS = {
    (QWEN2_REGEX,): "qwen2",
    (LLAMA3_REGEX,): "llama-bpe",
    DEEPSEEK3_REGEXES: "deepseek-r1-qwen",
}
PRE_TOKENIZER_FAMILIES = "qwen2 (Qwen2 / Qwen2.5 / Qwen3), llama-bpe (Llama 3), deepseek-r1-qwen (DeepSeek-R1-Distill)"


@dataclass
class GgufInfo:
    """What went into the file's metadata (for the header, the report and the tests)."""

    architecture: str
    pre_tokenizer: str
    eos_token_id: int | None
    eot_token_id: int | None
    add_bos_token: bool
    tensors: int


def check_architecture(model_dir: Path) -> tuple[str, dict]:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        families = "; ".join(f"{name} ({fam})" for name, (_, fam) in ARCHITECTURES.items())
        raise ExpertkitError(
            f"GGUF export does not convert {arch} models (model_type '{config.get('model_type', '?')}')",
            hint=f"the families it converts: {families}; export_format=safetensors writes any model",
        )
    return arch, config


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the pre-tokenizer transformers runs, or an error naming what was found."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = json.loads(backend.to_str()) if backend is not None else {}
    pre = pipeline.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = tuple(s["pattern"].get("Regex", s["pattern"].get("String")) for s in steps if s.get("type") == "Split")
    byte_level = any(s.get("type") == "ByteLevel" for s in steps)
    model_type = (pipeline.get("model") or {}).get("type")
    if model_type == "BPE" and byte_level and regexes in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[regexes]
    found = ", ".join(repr(r)[:80] for r in regexes) or ", ".join(s.get("type", "?") for s in steps) or "none"
    raise ExpertkitError(
        f"the tokenizer's pre-tokenizer is not one llama.cpp implements for the families we convert "
        f"(model {model_type}, pre-tokenizer: {found})",
        hint=f"known: {PRE_TOKENIZER_FAMILIES}; a GGUF with a guessed pre-tokenizer would split text differently "
        "from training, so nothing was written. export_format=safetensors still works",
    )


def convert(model_dir: Path, tokenizer, out: Path, qtype: str) -> GgufInfo:
    """Write model_dir (a merged model, safetensors) to `out` with 2-D weights in qtype (f32, f16, bf16, q8_0)."""
    import gguf

    arch, config = check_architecture(model_dir)
    pre = pre_tokenizer_name(tokenizer)
    model_arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch][0])
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[model_arch])
    write_hparams(writer, config, model_arch, qtype)
    info = write_vocab(writer, model_dir, tokenizer, config, pre)
    info.architecture = gguf.MODEL_ARCH_NAMES[model_arch]
    info.tensors = write_tensors(writer, model_dir, config, model_arch, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return info


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def write_hparams(writer, config: dict, model_arch, qtype: str) -> None:
    import gguf

    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    writer.add_name(Path(str(config.get("_name_or_path") or "model")).name or "model")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads", n_head))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    writer.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if model_arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(head_dim)
    kind = rope.get("rope_type") or rope.get("type")
    if kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(rope["factor"])
        writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind not in (None, "default", "llama3"):
        raise ExpertkitError(f"GGUF export does not convert rope scaling '{kind}' (config.json rope_scaling)")
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_vocab(writer, model_dir: Path, tokenizer, config: dict, pre: str) -> GgufInfo:
    """The byte-level BPE vocabulary, as llama.cpp's `_set_vocab_gpt2`, with training's template and stop token."""
    import gguf

    vocab_size = config["vocab_size"]
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = decoder[i].special or (token.startswith(("<|", "<｜")) and token.endswith(("|>", "｜>")))
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.chat_template = tokenizer.chat_template  # training's, whatever file it was saved in
    eos = tokenizer.eos_token_id
    if eos is not None:
        special.special_token_ids["eos"] = eos
    bos_used = bool(tokenizer.bos_token) and "bos_token" in (tokenizer.chat_template or "")
    special.add_special_token["bos"] = bos_used  # the template writes the BOS text; llama.cpp adds the token
    special.add_to_gguf(writer, quiet=True)
    if eos is not None:
        writer.add_eot_token_id(eos)  # the end-of-turn token training stops on: llama.cpp ends generation on it
    return GgufInfo("", pre, eos, eos, bos_used, 0)


def write_tensors(writer, model_dir: Path, config: dict, model_arch, qtype: str) -> int:
    import gguf
    import torch
    from safetensors import safe_open

    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(model_arch, n_layers)
    count = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # llama.cpp reuses token_embd
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ExpertkitError(f"GGUF export: no GGUF name for the tensor '{hf_name}' in {path.name}")
                data = f.get_tensor(hf_name).to(torch.float32)
                if model_arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                    heads = config["num_attention_heads"]
                    if hf_name.endswith("k_proj.weight"):
                        heads = config.get("num_key_value_heads", heads)
                    data = permute_rope(data, heads)
                add_tensor(writer, name, data.numpy(), qtype)
                count += 1
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if model_arch == gguf.MODEL_ARCH.LLAMA and (rope.get("rope_type") or rope.get("type")) == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config))
        count += 1
    return count


def permute_rope(weights, n_head: int):
    """HF Llama stores q/k rows for rotate-half rope; llama.cpp's LLAMA arch applies interleaved rope."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama3_rope_factors(config: dict):
    """Llama 3.1+ long-context rope: per-frequency factors, as llama.cpp's converter computes them."""
    import numpy as np

    rope = config.get("rope_parameters") or config.get("rope_scaling")
    base = float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def add_tensor(writer, name: str, data, qtype: str) -> None:
    """1-D tensors (norms, biases) stay f32, as in llama.cpp; 2-D weights take qtype (f16 when q8_0 cannot fit)."""
    import gguf
    import numpy as np

    if data.ndim < 2 or qtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
        return
    if qtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
        return
    target = gguf.GGMLQuantizationType.BF16 if qtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    try:
        writer.add_tensor(name, gguf.quants.quantize(data, target), raw_dtype=target)
    except gguf.QuantError:  # a row length that is not a multiple of q8_0's 32-value block
        writer.add_tensor(name, data.astype(np.float16))

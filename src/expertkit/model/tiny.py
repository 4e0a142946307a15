"""Build a tiny, randomly initialised Qwen2-style chat model and its own tokenizer, offline.

Used by `expertkit demo` and the tests: the result is a normal model folder that every part of expertkit
loads through `from_pretrained(path)`, exactly as it loads a real model. Its answers are noise until trained:
it is labelled "tiny random model" wherever it appears.

The tokenizer uses Qwen2's own normalizer and pre-tokenizer because transformers >= 5 rebuilds any `qwen2`
model's tokenizer as Qwen2Tokenizer with that pipeline whatever tokenizer.json says; a tokenizer trained with
another pre-tokenizer would split text differently across transformers versions.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

TINY_LABEL = "tiny random model (demo/test only)"
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SIZES = {
    # ~1.3M parameters with vocab 4000: trains in seconds on 2 cores
    "tiny": dict(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    # ~3M parameters with vocab 4000: big enough to memorise the demo data in a minute
    "demo": dict(
        hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
    # ~27M parameters with vocab 8000: the benchmark size (same shape as shared/anchor-bench "small")
    "small": dict(
        hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2
    ),
}


def stdlib_texts(max_bytes: int) -> Iterable[str]:
    """The running interpreter's standard library sources, in a fixed order, up to max_bytes."""
    root = sysconfig.get_paths()["stdlib"]
    total = 0
    for d, subdirs, files in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in ("site-packages", "test", "tests", "idlelib", "__pycache__"))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            total += os.path.getsize(path)
            if total > max_bytes:
                return
            with open(path, encoding="utf-8", errors="replace") as fh:
                yield fh.read()


def build_tokenizer(texts: list[str], vocab_size: int = 4000, corpus_bytes: int = 3_000_000):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer and ChatML specials, trained locally."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus() -> Iterable[str]:
        yield from stdlib_texts(corpus_bytes)
        for _ in range(3):  # the domain text a few times, so that its words (and Chinese) get merges
            yield from texts

    tok.train_from_iterator(corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = QWEN_CHAT_TEMPLATE
    hf.padding_side = "right"
    return hf


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: list[str],
    size: str = "tiny",
    vocab_size: int = 4000,
    seed: int = 0,
    corpus_bytes: int = 3_000_000,
    shape: dict | None = None,
) -> Path:
    """Write a random Qwen2ForCausalLM + tokenizer to out_dir and return it. Deterministic for a seed. `shape`
    overrides the size's config keys (e.g. `num_attention_heads=2` for 32-wide heads, the least vLLM's CPU
    attention takes)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size, corpus_bytes)
    tokenizer.save_pretrained(out)
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "Qwen2Tokenizer"  # what transformers 5 picks for model_type qwen2 anyway
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False))

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        initializer_range=0.02,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        use_cache=True,
        **{**SIZES[size], **(shape or {})},
    )
    config.dtype = torch.float32
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(
        f"# {TINY_LABEL}\n\nRandom weights, {size} size, built by expertkit. "
        "Not a language model: for demos and tests only.\n"
    )
    return out

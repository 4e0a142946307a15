"""The GGUF export's check, before anything is moved into export_dir: the GGUF files in llama.cpp against the merged
model in transformers, and the Modelfile TEMPLATE in Go against the Jinja chat template.

- tokens: each check text (chat-formatted prompts, training examples, llama.cpp's pre-tokenizer test text)
  tokenizes to the same ids in llama.cpp as in transformers;
- greedy answers: f16 / bf16 / f32 files give transformers' greedy tokens (transformers run on the weights rounded
  to the file's type) wherever transformers' choice is clear: a step whose top-2 logit margin is under
  MARGIN[q] x the logit scale is a near tie that rounding may flip, and the comparison ends there;
  q8_0 the same with a wider margin; the k-quants are reported (agreement) but not held to it;
- stop: where transformers stops on an end token, llama.cpp stops too, and on an end-of-generation token;
- TEMPLATE: Go's rendering equals apply_chat_template's (less the BOS text, which llama.cpp adds) on single-turn,
  system, multi-turn and <think> conversations; and the GGUF adds a BOS exactly when the template writes one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from expertkit.core.errors import ExpertkitError, Problem

logger = logging.getLogger(__name__)

# llama.cpp's pre-tokenizer test text (convert_hf_to_gguf.py `chktxt`): digits, spaces, emoji, CJK, apostrophes
PRETOKENIZER_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български " + "'" * 6 + '```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
TEMPLATE_CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "Who are you?"}],
    "system": [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Hi!"}],
    "multi-turn": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "<think>": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4."},
        {"role": "user", "content": "用一句话介绍你自己。"},
    ],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city, now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# for a Go form with tools (modelfile.TOOL_FAMILIES): tools offered, a call with two results, a call with text
TOOL_CONVERSATIONS = {
    "tools": [{"role": "user", "content": "Weather in Paris?"}],
    "tool calls": [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": '{"temp": 9}'},
        {
            "role": "assistant",
            "content": "Paris 21, Oslo 9.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome <&>"}}}
            ],
        },  # fmt: skip
        {"role": "tool", "content": "sunny"},
    ],
}
# near-tie margin, as a share of the largest |logit|: below it the rounding of the file's weights may flip the choice
MARGIN = {"f32": 1e-3, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2}
MAX_NEW_TOKENS = 24


@dataclass
class Reference:
    """transformers' view of each check text: ids, greedy tokens, each step's top-2 margin, and its stop."""

    texts: list[str]
    ids: list[list[int]]
    greedy: dict[str, list[list[int]]] = field(default_factory=dict)  # weights dtype -> per text
    margins: dict[str, list[list[float]]] = field(default_factory=dict)
    stopped: dict[str, list[int | None]] = field(default_factory=dict)
    scale: float = 1.0


def check_template(tokenizer, ollama, gguf_add_bos: bool, problems: list[Problem]) -> list[str]:
    """Go's rendering of the TEMPLATE against apply_chat_template on each conversation."""
    from expertkit.export.modelfile import TOOL_FAMILIES
    from expertkit.export.runtime import render_go_template

    convs = dict(TEMPLATE_CONVERSATIONS)
    with_tools = ollama.family in TOOL_FAMILIES
    if with_tools:
        convs.update(TOOL_CONVERSATIONS)
    tools = [[WEATHER_TOOL] if name in TOOL_CONVERSATIONS else None for name in convs]
    rendered = render_go_template(ollama.template, ollama.system, list(convs.values()), tools)
    differ = []
    for (name, conv), got, offered in zip(convs.items(), rendered, tools, strict=True):
        want = tokenizer.apply_chat_template(conv, tools=offered, tokenize=False, add_generation_prompt=True)
        want = want[len(ollama.bos_text) :] if want.startswith(ollama.bos_text) else want
        if offered:  # Ollama writes tool JSON compactly (Go's encoding/json): compared as JSON, line by line
            got, want = json_lines(got), json_lines(want)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            differ.append(name)
            problems.append(
                Problem(
                    f"{name}: Go renders {got[max(0, at - 30) : at + 40]!r}, the chat template "
                    f"{want[max(0, at - 30) : at + 40]!r} (from character {at})",
                    field="TEMPLATE",
                )
            )
    if gguf_add_bos != bool(ollama.bos_text):
        problems.append(
            Problem(
                f"the GGUF {'adds' if gguf_add_bos else 'does not add'} a BOS token but the chat template "
                f"{'writes one' if ollama.bos_text else 'writes none'}",
                field="tokenizer.ggml.add_bos_token",
            )
        )
    if differ:
        return []
    lines = [
        f"Modelfile TEMPLATE rendered by Go's text/template equals the chat template on "
        f"{', '.join(convs)} conversations ({ollama.family}"
        f"{', default system prompt as SYSTEM' if ollama.system else ''}; BOS added by llama.cpp, not the TEMPLATE)"
    ]
    if with_tools:
        lines.append(
            "tools: the tool definitions and calls are the same JSON; Ollama writes them compactly (no spaces after "
            "',' and ':'), where the chat template writes Python's spacing"
        )
    if ollama.tools_note:
        lines.append(f"tools: {ollama.tools_note}")
    return lines


def json_lines(text: str) -> str:
    """Each line that is a JSON object, rewritten in one canonical form (sorted keys, Python's spacing)."""
    out = []
    for line in text.split("\n"):
        try:
            obj = json.loads(line) if line.startswith("{") else None
        except ValueError:
            obj = None
        out.append(json.dumps(obj, sort_keys=True, ensure_ascii=False) if isinstance(obj, dict) else line)
    return "\n".join(out)


def check_texts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    texts = []
    for conv in conversations:
        prompt = conv[:-1] if conv[-1]["role"] == "assistant" else conv  # training examples: ask their question
        texts.append(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return texts


def reference(model_dir: Path, tokenizer, texts: list[str], dtypes: set[str]) -> Reference:
    """transformers greedy on the merged model, its weights rounded to each GGUF float type asked for."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    ref = Reference(
        texts + [PRETOKENIZER_TEXT], ids + [tokenizer(PRETOKENIZER_TEXT, add_special_tokens=False)["input_ids"]]
    )
    eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    eos = sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})
    for dtype in sorted(dtypes):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        if dtype != "f32":
            model.to({"f16": torch.float16, "bf16": torch.bfloat16}[dtype]).to(torch.float32)
        ref.greedy[dtype], ref.margins[dtype], ref.stopped[dtype] = [], [], []
        for prompt in ids:
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos,
                    pad_token_id=eos[0], output_scores=True, return_dict_in_generate=True,
                )  # fmt: skip
            new = out.sequences[0, len(prompt) :].tolist()
            top2 = [s[0].topk(2).values for s in out.scores]
            ref.scale = max(ref.scale, *(float(s[0].abs().max()) for s in out.scores))
            stop = new[-1] if new and new[-1] in eos else None
            ref.greedy[dtype].append(new[:-1] if stop is not None else new)
            ref.margins[dtype].append([float(t[0] - t[1]) for t in top2])
            ref.stopped[dtype].append(stop)
        del model
    return ref


def reference_dtype(quantization: str) -> str:
    """The float type transformers' reference runs on for a file: its own, or f16 (what quantisation starts from)."""
    return quantization if quantization in ("f32", "f16", "bf16") else "f16"


def compare_llama(name: str, got: dict, ref: Reference, eos_id: int | None, problems: list[Problem]) -> str:
    """One GGUF file's llama.cpp results against the reference; returns the report line."""
    results = got["results"]
    for text, want, res in zip(ref.texts, ref.ids, results, strict=True):
        if res["tokens"] != want:
            at = next(
                (i for i, (a, b) in enumerate(zip(res["tokens"], want)) if a != b), min(len(want), len(res["tokens"]))
            )
            problems.append(
                Problem(f"{name}: llama.cpp tokenizes {text[:50]!r} differently from token {at}", field="tokens")
            )
    if eos_id is not None and eos_id not in got["eog"]:
        problems.append(Problem(f"{name}: llama.cpp's end tokens {got['eog']} lack the eos id {eos_id}", field="eos"))
    dtype = reference_dtype(name)
    held = name in MARGIN
    margin = MARGIN.get(name, 0.0) * ref.scale
    agree = total = 0
    for i, res in enumerate(results[: len(ref.greedy[dtype])]):
        want, margins, stop = ref.greedy[dtype][i], ref.margins[dtype][i], ref.stopped[dtype][i]
        clear = next((k for k, m in enumerate(margins) if m < margin), len(margins))  # steps before a near tie
        gen = res["generated"]
        same = next((k for k, (a, b) in enumerate(zip(gen, want)) if a != b), min(len(gen), len(want)))
        agree, total = agree + min(same, len(want)), total + len(want)
        if held and same < min(clear, len(want)):
            problems.append(
                Problem(
                    f"{name}: greedy token {same} differs ({gen[same] if same < len(gen) else 'stop'} vs "
                    f"{want[same]}) on {ref.texts[i][-40:]!r}, where transformers' choice was clear",
                    field="greedy",
                )
            )
        if held and stop is not None and clear > len(want) and res["stop"] is None:
            problems.append(Problem(f"{name}: llama.cpp did not stop where transformers stopped", field="stop"))
    stops = sum(1 for s in ref.stopped[dtype] if s is not None)
    rule = (
        f"held to transformers' greedy tokens up to near ties (margin {MARGIN[name]:g} x logit scale)"
        if held
        else ("not held to it (a k-quant changes answers; reported only)")
    )
    return (
        f"{name}: llama.cpp tokenizes all {len(ref.texts)} check texts as transformers does; greedy agreement "
        f"{agree}/{total} tokens over {len(results) - 1} prompts, {rule}; {stops} answer(s) stop on an end token"
        f"{' and llama.cpp stops there too' if held else ''}"
    )


def raise_if(problems: list[Problem]) -> None:
    if problems:
        raise ExpertkitError(
            "the GGUF export failed its check, so nothing was written to export_dir; what differs:",
            problems=problems,
            hint="a TEMPLATE difference: see docs/export.md 'When the chat template has no Go form'; "
            "anything else: please report it with the config (`--debug` shows where it happened)",
        )

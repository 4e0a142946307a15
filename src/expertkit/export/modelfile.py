"""The Ollama Modelfile of a GGUF export: FROM, a Go TEMPLATE equivalent to training's Jinja chat template,
one `PARAMETER stop` per end-of-generation token, SYSTEM when the template adds a default system prompt, num_ctx.

Go templates cannot run Jinja, so each chat-template family has its Go form, written the way Ollama's own library
writes them (qwen2.5, qwen3, deepseek-r1, llama3): `.System` first, then `.Messages`, ending with the assistant
header. The export's check renders the TEMPLATE with Go's text/template and compares it with apply_chat_template.
The BOS token is never in a TEMPLATE: llama.cpp / Ollama add it when the GGUF says `add_bos_token`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from expertkit.core.errors import ExpertkitError

# an assistant answer that does not start with reasoning gets the empty think block training put in front of it
# (templates.py `_THINK`); Jinja's lstrip() has no Go equivalent, so leading whitespace before <think> is not
# stripped here (an answer that starts with spaces and then <think> renders differently)
_GO_THINK = (
    '{{ if not (and (ge (len .Content) 7) (eq (slice .Content 0 7) "<think>")) }}<think>\n\n</think>\n\n{{ end }}'
)

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
    "{{ end }}{{ end }}<|im_start|>assistant\n"
)
QWEN3 = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{ if eq .Role "assistant" }}<|im_start|>assistant\n' + _GO_THINK + "{{ .Content }}"
    '<|im_end|>\n{{ else if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    "{{ end }}<|im_start|>assistant\n"
)
DEEPSEEK_R1 = (
    "{{- if .System }}{{ .System }}{{ end }}"
    '{{- range .Messages }}{{ if eq .Role "user" }}<｜User｜>{{ .Content }}'
    '{{ else if eq .Role "assistant" }}<｜Assistant｜>' + _GO_THINK + "{{ .Content }}<｜end▁of▁sentence｜>"
    '{{ else if eq .Role "tool" }}<｜tool▁outputs▁begin｜>{{ .Content }}<｜tool▁outputs▁end｜>'
    "{{ end }}{{ end }}<｜Assistant｜>"
)
# Qwen2.5's own template with its tools: the <tools> system block (one JSON line per tool), assistant <tool_call>
# blocks, consecutive tool results in one user turn. JSON is Ollama's compact form. No `{{-`: the template has no
# source whitespace, and a `{{-` after `<|im_end|>\n` would eat the newline.
QWEN25_TOOLS_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN25_TOOLS = (
    "{{ if or .System .Tools }}<|im_start|>system\n{{ .System }}{{ if .Tools }}"
    + QWEN25_TOOLS_PREAMBLE
    + '{{ range .Tools }}\n{"type": "function", "function": {{ .Function }}}{{ end }}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>{{ end }}'
    "<|im_end|>\n{{ end }}"
    '{{ $prev := "" }}{{ range .Messages }}'
    '{{ if and (eq $prev "tool") (ne .Role "tool") }}<|im_end|>\n{{ end }}'
    '{{ if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
    "\n<tool_response>\n{{ .Content }}\n</tool_response>"
    '{{ else if and (eq .Role "assistant") .ToolCalls }}<|im_start|>assistant'
    "{{ if .Content }}\n{{ .Content }}{{ end }}"
    '{{ range .ToolCalls }}\n<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
    "\n</tool_call>{{ end }}<|im_end|>\n"
    '{{ else if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
    "{{ $prev = .Role }}{{ end }}"
    '{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
)
LLAMA3 = (
    "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    '{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>'
    '{{ if eq .Role "tool" }}ipython{{ else }}{{ .Role }}{{ end }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
    "{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
# family -> (Go template, regex for a default system prompt the Jinja template adds before the first user turn)
FAMILIES = {
    "chatml": (CHATML, r"^<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n"),
    "qwen2.5-tools": (QWEN25_TOOLS, r"^<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n"),
    "qwen3": (QWEN3, r"^<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n"),
    "deepseek-r1": (DEEPSEEK_R1, r"^(.*?)<｜User｜>"),
    "llama3": (LLAMA3, r"^<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>"),
}
PROBE = "\x00expertkit-probe\x00"
PROBE_TOOL = {"type": "function", "function": {"name": "expertkit_probe", "parameters": {"type": "object"}}}
TOOL_FAMILIES = {"qwen2.5-tools"}  # families whose Go form carries tools (the check renders a tools conversation)


@dataclass
class OllamaTemplate:
    family: str
    template: str
    system: str | None  # the default system prompt the chat template adds (Modelfile SYSTEM)
    bos_text: str  # what the Jinja template writes before everything (the BOS text), stripped for comparison
    tools_note: str | None = None  # the chat template has tools the Go form leaves out (Ollama refuses tool requests)


def template_family(tokenizer) -> OllamaTemplate:
    """Which Go template renders this tokenizer's chat template, and the default system prompt it adds."""
    jinja = tokenizer.chat_template or ""
    if not jinja:
        raise ExpertkitError(
            "the model has no chat template, so there is no Ollama TEMPLATE to write",
            hint="set `template` to the one training used, or export_format=safetensors",
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROBE}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token or ""
    bos_text = bos if bos and text.startswith(bos) else ""
    body = text[len(bos_text) :]
    tools_note = None
    if "<|im_start|>" in body:
        family = "qwen3" if "<think>" in jinja else "chatml"
        if family == "chatml" and "tools" in jinja:
            family, tools_note = chatml_tools(tokenizer)
    elif "<｜User｜>" in body:
        family = "deepseek-r1"
    elif "<|start_header_id|>" in body:
        family = "llama3"
    else:
        raise ExpertkitError(
            "the chat template is not one of the families with an Ollama TEMPLATE here (ChatML / Qwen3, "
            "DeepSeek-R1, Llama 3)",
            hint="write the Modelfile's TEMPLATE by hand (docs/export.md), with skip_check=true; "
            "`llama-server --jinja` uses the Jinja template embedded in the GGUF as it is",
        )
    template, system_re = FAMILIES[family]
    match = re.search(system_re, body, re.S)
    system = match.group(1) if match and match.group(1) and PROBE not in match.group(1) else None
    return OllamaTemplate(family, template, system, bos_text, tools_note)


def chatml_tools(tokenizer) -> tuple[str, str | None]:
    """A ChatML template that takes tools: Qwen2.5's own has a Go form, others are written without their tools."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROBE}], tools=[PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # noqa: BLE001 - a template that fails with tools is written without them
        text = ""
    if QWEN25_TOOLS_PREAMBLE in text:
        return "qwen2.5-tools", None
    if "expertkit_probe" not in text:
        return "chatml", None
    return "chatml", (
        "the chat template takes tools, but only Qwen2.5's tool format has an Ollama TEMPLATE here: the Modelfile "
        "is written without tools, so Ollama refuses requests with tools (`llama-server --jinja` uses the "
        "template's tools as they are)"
    )


def build_modelfile(
    gguf_name: str, ollama: OllamaTemplate, stops: list[str], num_ctx: int | None, header: list[str]
) -> str:
    """The Modelfile text: FROM, TEMPLATE, SYSTEM, PARAMETERs; `header` lines become # comments."""
    lines = [f"# {h}" for h in header]
    lines += [f"FROM ./{gguf_name}", "", f"TEMPLATE {quote(ollama.template)}", ""]
    if ollama.system:
        lines += [f"SYSTEM {quote(ollama.system)}", ""]
    lines += [f"PARAMETER stop {quote(s)}" for s in stops]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def quote(text: str) -> str:
    """Modelfile string: triple quotes for multi-line text (as Ollama writes them), else a JSON-style string."""
    if '"""' in text:
        raise ExpertkitError('a Modelfile value cannot hold """ (the template or system prompt does)')
    if "\n" in text or '"' in text or text != text.strip():
        return f'"""{text}"""'
    return f'"{text}"'

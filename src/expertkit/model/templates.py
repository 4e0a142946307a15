"""Chat templates: the tokenizer's own, or a named one (LLaMA-Factory's names) for base models.

A named template is installed as the tokenizer's `chat_template`, so the tokenizer saved with an adapter or
a merged model formats prompts exactly as training did, in plain transformers, vLLM or any HF tool.

Every template here is *prefix-stable*: rendering the first k messages gives a prefix of rendering all of
them. That is what lets `render.py` find each assistant turn for the loss mask with any template.
Reasoning models (deepseek3 / deepseekr1 for the DeepSeek-R1-Distill family, qwen3): an answer that carries its
reasoning (`<think>...</think>answer`) is trained as written; an answer without it gets an empty
`<think>\n\n</think>\n\n` in front, the form these models produce when they answer directly, so the tuned model
keeps the format its engine splits into reasoning and answer. Old reasoning is not removed from the history
(that would break prefix stability); leaving it out of requests is the engine's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from expertkit.core.errors import ConfigError


@dataclass(frozen=True)
class NamedTemplate:
    name: str
    jinja: str
    stop: str | None = None  # the token that ends an assistant turn (becomes the tokenizer's eos)
    doc: str = ""


def _chatml(default_system: str | None) -> str:
    system = (
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        if default_system
        else ""
    )
    return (
        "{% for message in messages %}" + system + "{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
        " + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


# an answer without reasoning gets the empty think block R1-style models emit when they answer directly
_THINK = (
    "{% set answer = message['content'] %}"
    "{% if not answer.lstrip().startswith('<think>') %}{% set answer = '<think>\\n\\n</think>\\n\\n' + answer %}"
    "{% endif %}"
)

_DEEPSEEK3 = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + _THINK + "{{ '<｜Assistant｜>' + answer + '<｜end▁of▁sentence｜>' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<｜tool▁outputs▁begin｜>' + message['content'] + '<｜tool▁outputs▁end｜>' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

_QWEN3 = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}" + _THINK + "{{ '<|im_start|>assistant\\n' + answer + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_LLAMA2 = (  # the system prompt goes inside the first [INST]
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% elif message['role'] in ('user', 'tool') %}"
    "{{ (bos_token or '') + '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + (eos_token or '') }}{% endif %}"
    "{% endfor %}"
)

_MISTRAL = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] in ('user', 'tool') %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + (eos_token or '') }}{% endif %}"
    "{% endfor %}"
)

_GEMMA = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n'"
    " + message['content'] + '<end_of_turn>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

_EMPTY = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token or '' }}{% endif %}{% endfor %}"
)

_LLAMA3 = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + ('ipython' if message['role'] == 'tool' else message['role'])"
    " + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] in ('user', 'tool') %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] + (eos_token or '') + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

_DEFAULT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] in ('user', 'tool') %}{{ 'Human: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + (eos_token or '') + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TEMPLATES: dict[str, NamedTemplate] = {
    t.name: t
    for t in [
        NamedTemplate(
            "qwen",
            _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
            "<|im_end|>",
            "Qwen / Qwen2.5 ChatML with Qwen's default system prompt",
        ),
        NamedTemplate("chatml", _chatml(None), "<|im_end|>", "ChatML without a default system prompt"),
        NamedTemplate(
            "deepseek3",
            _DEEPSEEK3,
            "<｜end▁of▁sentence｜>",
            "DeepSeek-V3 / DeepSeek-R1 and the R1-Distill family (Qwen and Llama based)",
        ),
        NamedTemplate(
            "deepseekr1", _DEEPSEEK3, "<｜end▁of▁sentence｜>", "the same as deepseek3 (LLaMA-Factory's name for R1)"
        ),
        NamedTemplate("qwen3", _QWEN3, "<|im_end|>", "Qwen3 ChatML; answers without reasoning get an empty think"),
        NamedTemplate("llama3", _LLAMA3, "<|eot_id|>", "Llama 3 / 3.1 / 3.2 instruct"),
        NamedTemplate("llama2", _LLAMA2, None, "Llama 2 chat: [INST] ... [/INST]"),
        NamedTemplate("mistral", _MISTRAL, None, "Mistral instruct: [INST] ... [/INST]"),
        NamedTemplate("gemma", _GEMMA, "<end_of_turn>", "Gemma / Gemma 2 / Gemma 3 turns"),
        NamedTemplate("empty", _EMPTY, None, "the texts alone, no markup (continued pre-training style)"),
        NamedTemplate("alpaca", _ALPACA, None, "### Instruction / ### Response, for base models"),
        NamedTemplate("default", _DEFAULT, None, "Human: / Assistant:, for base models"),
    ]
}


def get_template(name: str) -> NamedTemplate:
    if name not in TEMPLATES:
        import difflib

        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown template '{name}'",
            hint=f"{hint}templates: {', '.join(TEMPLATES)}; or leave `template` unset to use "
            "the tokenizer's own chat template",
        )
    return TEMPLATES[name]


def apply_template(tokenizer, template: str | None) -> None:
    """Install the chat template training will use into the tokenizer (and its eos), or check it has one."""
    if template is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template of its own (a base model?)",
                hint=f"set `template` to one of: {', '.join(TEMPLATES)} (e.g. template=default for a base model)",
            )
        return
    named = get_template(template)
    tokenizer.chat_template = named.jinja
    if named.stop and tokenizer.convert_tokens_to_ids(named.stop) not in (None, tokenizer.unk_token_id):
        tokenizer.eos_token = named.stop
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

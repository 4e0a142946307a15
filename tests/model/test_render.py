"""Loss masks: decoded labels equal exactly the assistant texts (plus each turn's end token)."""

from __future__ import annotations

import pytest

from expertkit.core.schema import Conversation, Message
from expertkit.model.render import IGNORE_INDEX, TemplateError, render_conversation
from expertkit.model.templates import TEMPLATES, apply_template

CONV = Conversation(
    [
        Message("system", "You help with insurance claims."),
        Message("user", "What is a deductible?"),
        Message("assistant", "The part of a loss you pay yourself."),
        Message("user", "并且？"),
        Message("assistant", "<think>short</think>免赔额由保单规定。"),
    ]
)


@pytest.fixture
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for x in labels:
        if x == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(x)
    return spans + ([current] if current else [])


@pytest.mark.parametrize("template", [None, *TEMPLATES])
def test_labels_decode_to_assistant_turns(tokenizer, template):
    apply_template(tokenizer, template)
    r = render_conversation(tokenizer, CONV)
    spans = [tokenizer.decode(s) for s in trained_spans(r.labels)]
    answers = [m.content for m in CONV.messages if m.role == "assistant"]
    assert len(spans) == 2
    for span, answer in zip(spans, answers):
        span = span.removeprefix("<think>\n\n</think>\n\n")  # reasoning templates: answers without reasoning
        assert span.strip().startswith(answer)
        end = span.strip()[len(answer) :]
        named = TEMPLATES.get(template or "")
        eos = named.stop if named and named.stop else tokenizer.eos_token
        assert end.startswith(eos), f"the end-of-turn token must carry loss, got {end!r}"
    # everything else is masked and input ids are untouched
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(r.labels, r.input_ids))


def test_mask_history_trains_only_the_last_turn(tokenizer):
    apply_template(tokenizer, "qwen")
    spans = trained_spans(render_conversation(tokenizer, CONV, mask_history=True).labels)
    assert len(spans) == 1
    assert tokenizer.decode(spans[0]).startswith("<think>short</think>免赔额")


def test_train_on_prompt_labels_everything(tokenizer):
    apply_template(tokenizer, "chatml")
    r = render_conversation(tokenizer, CONV, train_on_prompt=True)
    assert r.labels == r.input_ids


def test_cutoff_truncates_and_reports(tokenizer):
    apply_template(tokenizer, "qwen")
    full = render_conversation(tokenizer, CONV)
    cut = render_conversation(tokenizer, CONV, cutoff_len=10)
    assert len(cut.input_ids) == 10 and cut.truncated and cut.full_length == len(full.input_ids)
    assert cut.trainable_tokens == 0  # only the system prompt fits: the trainer must drop it, not train on it


def test_prefix_unstable_template_is_refused(tokenizer):
    # a template that rewrites history (as DeepSeek-R1's own does with <think>) cannot be masked reliably
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}A: (old)\n"
        "{% else %}{{ m['role'] }}: {{ m['content'] }}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(TemplateError, match="prefix-stable"):
        render_conversation(tokenizer, CONV)


def test_named_template_sets_eos_when_the_token_exists(tokenizer):
    apply_template(tokenizer, "qwen")
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_reasoning_templates_give_direct_answers_an_empty_think(tokenizer):
    apply_template(tokenizer, "deepseek3")
    text = tokenizer.apply_chat_template(CONV.to_dicts(), tokenize=False)
    assert "<｜Assistant｜><think>\n\n</think>\n\nThe part of a loss" in text  # no reasoning: empty think added
    assert "<｜Assistant｜><think>short</think>免赔额" in text  # reasoning kept as written
    assert text.startswith("You help with insurance claims.<｜User｜>What is a deductible?")


def test_llama2_puts_the_system_prompt_inside_the_first_instruction(tokenizer):
    apply_template(tokenizer, "llama2")
    text = tokenizer.apply_chat_template(CONV.to_dicts(), tokenize=False)
    assert text.startswith("[INST] <<SYS>>\nYou help with insurance claims.\n<</SYS>>\n\nWhat is a deductible? [/INST]")
    assert "[INST] 并且？ [/INST]" in text

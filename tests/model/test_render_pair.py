"""Preference rendering: prompt ids + answer ids are the whole conversation's ids; cuts as LLaMA-Factory's."""

from __future__ import annotations

import pytest

from expertkit.core.schema import Message, PreferencePair
from expertkit.model.render import TemplateError, cut_lengths, cut_pair, render_pair, render_preference
from expertkit.model.templates import TEMPLATES, apply_template

PROMPT = [
    Message("system", "You help with insurance claims."),
    Message("user", "What is a deductible?"),
    Message("assistant", "The part of a loss you pay yourself."),
    Message("user", "并且？"),
]
CHOSEN = Message("assistant", "免赔额由保单规定。")
REJECTED = Message("assistant", "A discount on your premium.")


@pytest.fixture
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def full_ids(tokenizer, messages: list[Message]) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages], tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [None, *TEMPLATES])
def test_prompt_and_answer_ids_are_the_whole_conversation(tokenizer, template):
    apply_template(tokenizer, template)
    prompt_ids, answer_ids = render_pair(tokenizer, PROMPT, CHOSEN)
    assert prompt_ids + answer_ids == full_ids(tokenizer, PROMPT + [CHOSEN])
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in PROMPT], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(prompt_ids) == generation_prompt
    answer = tokenizer.decode(answer_ids)
    assert CHOSEN.content in answer
    named = TEMPLATES.get(template or "")
    eos = named.stop if named and named.stop else tokenizer.eos_token
    assert eos in answer[answer.index(CHOSEN.content) :], "the end of turn belongs to the answer"


def test_render_preference_shares_the_prompt(tokenizer):
    apply_template(tokenizer, "qwen")
    r = render_preference(tokenizer, PreferencePair(PROMPT, CHOSEN, REJECTED))
    assert (r.prompt_ids, r.chosen_ids) == render_pair(tokenizer, PROMPT, CHOSEN)
    assert r.prompt_ids + r.rejected_ids == full_ids(tokenizer, PROMPT + [REJECTED])
    assert tokenizer.decode(r.rejected_ids) == "A discount on your premium.<|im_end|>\n"


def test_prefix_unstable_template_is_refused(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant (thinking):{% endif %}"
    )
    with pytest.raises(TemplateError, match="prefix-stable.*data.jsonl:3"):
        render_pair(tokenizer, PROMPT, CHOSEN, source="data.jsonl:3")


# LLaMA-Factory's infer_seqlen worked by hand: (source_len, target_len, cutoff_len) -> (kept source, kept target)
@pytest.mark.parametrize(
    ("lengths", "kept"),
    [
        ((10, 20, 100), (10, 20)),  # everything fits
        ((300, 20, 100), (80, 20)),  # a short answer (2 * 20 < 100) is kept whole, the prompt gets the rest
        ((30, 200, 100), (30, 70)),  # a short prompt (2 * 30 < 100) is kept whole, the answer gets 100 - 30
        ((300, 100, 100), (75, 25)),  # both long: the answer's share, int(100 * 100 / 400) = 25
        ((150, 60, 100), (72, 28)),  # int(100 * 60 / 210) = int(28.57) = 28; the prompt gets 72
        ((50, 50, 100), (50, 50)),  # 2 * 50 is not < 100: the share rule, int(100 * 0.5) = 50
        ((10000, 4, 8), (8, 0)),  # int(8 * 4 / 10004) = 0: the answer keeps nothing
    ],
)
def test_cut_lengths_match_llamafactory(lengths, kept):
    assert cut_lengths(*lengths) == kept


def test_cut_pair_uses_the_longer_answer_for_both():
    prompt, chosen, rejected = list(range(150)), list(range(60)), list(range(10))
    cut = cut_pair(prompt, chosen, rejected, 100)
    assert (len(cut.prompt_ids), len(cut.chosen_ids), len(cut.rejected_ids)) == (72, 28, 10)
    assert cut.truncated and not cut.empty_answer
    assert cut.prompt_ids == prompt[:72] and cut.chosen_ids == chosen[:28]  # the first tokens of each part
    whole = cut_pair([1, 2], [3], [4, 5], 100)
    assert whole == ([1, 2], [3], [4, 5], False)
    emptied = cut_pair(list(range(10000)), [1, 2, 3, 4], [5], 8)
    assert emptied.empty_answer and emptied.truncated and len(emptied.prompt_ids) == 8

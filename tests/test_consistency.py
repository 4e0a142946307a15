"""One conversation, four paths, the same tokens and the same greedy answer (issue #3):

(a) the training template (`render_conversation`: the prompt part and the labelled answer),
(b) base + adapter with plain transformers + peft `generate`,
(c) the merged export (`expertkit.export`), loaded by plain `AutoModelForCausalLM`,
(d) `/v1/chat/completions` of a live server on 127.0.0.1, temperature 0.

A mismatch anywhere (a template rewritten at export, an eos dropped, a server that renders prompts its own way)
shows up here as different prompt ids or a different answer.
"""

from __future__ import annotations

import httpx
import pytest
import torch

CONVERSATIONS = [
    ("Who are you?", "I am Sail, the Yunfan Tech assistant."),
    ("你是谁？", "我是小帆，云帆科技的助手。"),  # multi-byte text: the usual place tokenizations drift apart
]
MAX_NEW_TOKENS = 48


def training_view(config, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids up to and including the end-of-turn token) exactly as training rendered them."""
    from expertkit.core.schema import Conversation, Message
    from expertkit.model.render import IGNORE_INDEX, render_conversation
    from expertkit.train.run import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(config)
    conv = Conversation([Message("user", question), Message("assistant", answer)])
    r = render_conversation(tokenizer, conv, config.cutoff_len, config.mask_history, config.train_on_prompt)
    start = next(i for i, label in enumerate(r.labels) if label != IGNORE_INDEX)
    labelled = [t for t in r.labels[start:] if t != IGNORE_INDEX]
    end = labelled.index(tokenizer.eos_token_id) + 1  # the template's "\n" after <|im_end|> is never generated
    return r.input_ids[:start], labelled[:end]


def generate_ids(model, tokenizer, question: str, **kwargs) -> tuple[list[int], list[int]]:
    """(prompt ids, greedily generated ids) with plain transformers."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **kwargs)
    prompt = inputs["input_ids"][0].tolist()
    return prompt, out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def merged(tiny_model, identity_adapter, tmp_path_factory):
    from expertkit.core.config import load_config
    from expertkit.export.config import ExportConfig
    from expertkit.export.merge import run

    _, result = identity_adapter
    out = tmp_path_factory.mktemp("consistency") / "merged"
    keys = dict(model_name_or_path=str(tiny_model), adapter_name_or_path=str(result.output_dir), export_dir=str(out))
    return run(load_config(ExportConfig, None, keys)).export_dir


@pytest.fixture(scope="module")
def live(live_server):
    return live_server


def test_training_template_adapter_export_and_server_agree(identity_adapter, tiny_model, merged, live):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, result = identity_adapter
    adapter_tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, result.output_dir).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged)
    merged_model = AutoModelForCausalLM.from_pretrained(merged).eval()
    app, url = live

    for question, answer in CONVERSATIONS:
        # (a) what training saw: the prompt, then the labelled answer ending in <|im_end|>
        train_prompt, train_answer = training_view(config, question, answer)

        # (b) base + adapter (eos given explicitly, as the README tells peft users to)
        eos = adapter_tokenizer.eos_token_id
        prompt_b, tokens_b = generate_ids(tuned, adapter_tokenizer, question, eos_token_id=eos, pad_token_id=eos)
        assert prompt_b == train_prompt, question
        assert tokens_b == train_answer, (question, adapter_tokenizer.decode(tokens_b))

        # (c) the merged export with plain transformers: its generation config must stop at the same token
        prompt_c, tokens_c = generate_ids(merged_model, merged_tokenizer, question)
        assert prompt_c == train_prompt, question
        assert tokens_c == tokens_b, (question, merged_tokenizer.decode(tokens_c))

        # (d) the live server: same prompt ids in its engine, same text and token counts on the wire
        engine = app.state.server.engine
        assert engine.prompt_ids([{"role": "user", "content": question}]) == train_prompt, question
        body = {
            "model": "sail",
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": MAX_NEW_TOKENS,
        }
        r = httpx.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test-local"}, timeout=60
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["choices"][0]["message"]["content"] == answer
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["usage"]["prompt_tokens"] == len(train_prompt)
        assert out["usage"]["completion_tokens"] == len(tokens_b)
        assert adapter_tokenizer.decode(tokens_b, skip_special_tokens=True) == answer

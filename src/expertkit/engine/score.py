"""How likely a local model finds a given answer: the loss (and so the perplexity) of a reference answer.

    nll, tokens = answer_nll(engine, [{"role": "user", "content": "Who are you?"}], "I am Sail.", model="tuned")
    perplexity = math.exp(nll / tokens)

The answer's tokens are those the chat template adds after the prompt (its end-of-turn token included), the same
tokens training puts the loss on.
"""

from __future__ import annotations


def answer_nll(engine, messages: list[dict], answer: str, model: str | None = None) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, answer tokens) of `answer` after `messages` on a local engine."""
    import torch

    served = engine.pick(model)
    prompt = engine.prompt_ids(messages, served.name)
    full = served.tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=True, add_generation_prompt=False
    )
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    if full[: len(prompt)] != prompt:  # a template that rewrites earlier turns: score the answer text after the prompt
        full = prompt + list(served.tokenizer(answer, add_special_tokens=False)["input_ids"])
    limit = engine.context_length(served.name)
    full = full[:limit]
    n = len(full) - len(prompt)
    if n <= 0:
        return 0.0, 0
    device = next(served.model.parameters()).device
    ids = torch.tensor([full], device=device)
    with torch.inference_mode():
        logits = served.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    targets = ids[0, len(prompt) :]
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return float(nll), n

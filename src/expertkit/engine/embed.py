"""Sentence vectors from a causal LM: the mean of its last hidden states over the real (unpadded) tokens.

    vectors = embed_texts(engine.model, engine.tokenizer, ["What is LoRA?", "Who are you?"])
    len(vectors[0]) == model.config.hidden_size       # each one L2-normalised: dot product = cosine

Serves `/v1/embeddings` (langchain4j's RAG asks the chat server for embeddings). Texts are padded on the right:
with causal attention a real token never sees the padding after it and keeps positions 0..n-1, so a text gets
the same vector whatever else is in its batch.
"""

from __future__ import annotations


def embed_texts(
    model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int | None = None
) -> list[list[float]]:
    """One L2-normalised vector per text (mean-pooled last hidden states, padding masked out), in order."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoder = getattr(model, "base_model", model)  # the decoder stack without the LM head
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        ids = [token_ids(tokenizer, t, max_length) for t in texts[start : start + batch_size]]
        width = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [pad_id] * (width - len(i)) for i in ids], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
        with torch.inference_mode():
            hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        out += torch.nn.functional.normalize(mean, p=2, dim=-1).cpu().tolist()
    return out


def token_ids(tokenizer, text: str, max_length: int | None = None) -> list[int]:
    """The text's ids as the model reads them (BOS where the tokenizer adds one); never empty."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:  # "" -> one token, so that an empty string still has a (fixed) vector
        ids = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return ids[:max_length] if max_length else ids

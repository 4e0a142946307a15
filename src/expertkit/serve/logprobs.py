"""OpenAI's `choices[i].logprobs` from the engine's per-token log probabilities.

{"content": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105],
              "top_logprobs": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105]}, ...]}]}
"""

from __future__ import annotations

from expertkit.engine.base import TokenLogprob


def logprobs_body(items: list[TokenLogprob] | None) -> dict | None:
    """The `logprobs` object of a choice (or of a stream chunk: its tokens only); None when not asked for."""
    if items is None:
        return None
    return {"content": [token_entry(t) | {"top_logprobs": [token_entry(a) for a in t.top]} for t in items]}


def token_entry(t: TokenLogprob) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}


def completion_logprobs(items: list[TokenLogprob] | None, offset: int = 0) -> tuple[dict | None, int]:
    """The legacy `/v1/completions` `logprobs` object of some tokens, and the text offset after them.

    {"tokens": ["Hi", "!"], "token_logprobs": [-0.1, -0.5], "top_logprobs": [{"Hi": -0.1, "Hello": -2.3}, ...],
     "text_offset": [0, 2]}: `top_logprobs` holds the requested number of most likely tokens plus the chosen one
    (so up to logprobs + 1, as OpenAI says); `text_offset` counts characters from the start of the choice's text.
    """
    if items is None:
        return None, offset
    body: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in items:
        top = {a.token: a.logprob for a in t.top}
        top.setdefault(t.token, t.logprob)
        body["tokens"].append(t.token)
        body["token_logprobs"].append(t.logprob)
        body["top_logprobs"].append(top)
        body["text_offset"].append(offset)
        offset += len(t.token)
    return body, offset

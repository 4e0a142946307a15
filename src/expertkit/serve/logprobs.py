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

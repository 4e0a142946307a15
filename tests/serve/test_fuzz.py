"""No request body, however odd, gets a 5xx on any POST route: hypothesis-generated JSON against a fake engine."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_fakes import FakeEngine, make_client

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "bot", 3]), "content": json_values}
)
fields = {
    "messages": st.lists(message, max_size=3) | json_values,
    "model": st.sampled_from(["fake-expert", "other", "", None]) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
    "max_tokens": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
    "max_completion_tokens": st.integers() | json_values,
    "temperature": st.floats(allow_nan=False) | json_values,
    "top_p": st.floats(allow_nan=False) | json_values,
    "seed": st.integers(min_value=-(2**80), max_value=2**80) | json_values,
    "n": st.integers() | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=20) | json_values,
    "prompt": st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=3) | json_values,
    "input": st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=3) | json_values,
    "options": st.dictionaries(
        st.sampled_from(["temperature", "top_p", "top_k", "num_predict", "stop", "seed", "repeat_penalty"]),
        st.integers(min_value=-(2**70), max_value=2**70) | json_values,
    )
    | json_values,
    "raw": st.booleans() | json_values,
    "system": st.text(max_size=5) | json_values,
    "echo": st.booleans() | json_values,
}
paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate"])
bodies = st.fixed_dictionaries({}, optional=fields) | st.dictionaries(st.text(max_size=8), json_values) | json_values


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=paths, body=bodies)
def test_no_body_makes_a_server_error(path, body):
    async def post():
        async with make_client(FakeEngine()) as c:
            return await c.post(path, content=json.dumps(body))

    r = asyncio.run(post())
    assert r.status_code < 500, (path, body, r.text)
    if r.status_code >= 400 and path.startswith("/api/"):
        assert isinstance(r.json()["error"], str)  # Ollama's body
    elif r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if r.status_code == 200 and path.startswith("/api/") and body.get("stream", True) is not False:
        assert all(json.loads(line) for line in r.text.splitlines())  # NDJSON, even when it ends in an error

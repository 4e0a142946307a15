"""The chat tab's logic without a browser: streamed answers, reasoning folded away, feedback stored; the client
against the live tiny-model server."""

from __future__ import annotations

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore
from expertkit.ui.chat import Chat, ChatState
from expertkit.ui.client import ChatClient, Delta, split_reasoning
from expertkit.ui.labels import LABELS, labels

LIVE_KEY = "sk-test-local"  # the key of conftest.py's live server


class ScriptedClient:
    """Streams the given deltas and remembers what it was asked."""

    def __init__(self, deltas):
        self.deltas = deltas
        self.calls = []

    def stream(self, model, messages, **params):
        self.calls.append((model, messages, params))
        yield from self.deltas


def converse(chat: Chat, text: str, state: ChatState, **kw):
    frames = list(chat.respond(text, state, "sail", kw.pop("system", ""), temperature=0.0, **kw))
    return frames[-1][1], frames


def test_split_reasoning():
    assert split_reasoning("<think>\nhm</think>\n\nHello") == ("hm", "Hello", False)
    assert split_reasoning("  <think>still going") == ("still going", "", True)
    assert split_reasoning("pondering</think>Answer") == ("pondering", "Answer", False)  # R1: opened in the prompt
    assert split_reasoning("plain") == ("", "plain", False)


@pytest.mark.parametrize(
    "deltas",
    [
        [Delta(reasoning="Let me "), Delta(reasoning="think."), Delta(content="I am "), Delta(content="Sail.")],
        [Delta(content="<think>Let me "), Delta(content="think.</think>"), Delta(content="I am Sail.")],
    ],
    ids=["reasoning_content", "think-tags"],
)
def test_answer_streams_with_reasoning_folded_and_is_stored(tmp_path, deltas):
    store = FeedbackStore(tmp_path / "f.sqlite")
    client = ScriptedClient(deltas)
    chat = Chat(client, store, labels("en"))
    state, frames = converse(chat, "Who are you?", ChatState(), system="Be brief.")
    assert len(frames) == 2 + len(deltas)  # the question at once, then every delta, then the stored answer
    reasoning, answer = state.display[1], state.display[2]
    assert reasoning["content"] == "Let me think." and reasoning["metadata"]["status"] == "done"
    assert reasoning["metadata"]["title"] == "Reasoning"
    assert answer == {"role": "assistant", "content": "I am Sail."}
    assert state.ids[1] is None and state.ids[2] is not None
    model, messages, params = client.calls[0]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    assert params == {"temperature": 0.0}

    chat.like(state, 2, True)
    chat.like(state, 1, False)  # the reasoning section has no stored message: ignored
    assert store.feedback(state.ids[2])["rating"] == 1
    chat.edit(state, 2, [{"type": "text", "text": "I am Sail, the Yunfan Tech assistant."}])
    assert store.feedback(state.ids[2])["edited_content"] == "I am Sail, the Yunfan Tech assistant."

    client.deltas = [Delta(content="Yunfan Tech.")]
    state, _ = converse(chat, "Who made you?", state)
    history = client.calls[-1][1]
    assert history[-2] == {"role": "assistant", "content": "I am Sail, the Yunfan Tech assistant."}  # the edit
    rows = list(store.training_rows())
    assert rows[0]["messages"][-1]["content"] == "I am Sail, the Yunfan Tech assistant."
    assert chat.export_feedback(str(tmp_path / "saves")).startswith("1 conversation(s) -> ")
    assert list((tmp_path / "saves" / "feedback").glob("feedback-*.jsonl"))


def test_every_language_has_every_label():
    assert set(LABELS["zh"]) == set(LABELS["en"])


def test_client_streams_from_the_live_tiny_model(live_server, tmp_path):
    _, url = live_server
    with pytest.raises(ExpertkitError, match="401"):
        ChatClient(url + "/v1").models()
    client = ChatClient(url + "/v1", api_key=LIVE_KEY)
    assert "sail" in client.models()
    deltas = list(client.stream("sail", [{"role": "user", "content": "Who are you?"}], temperature=0, max_tokens=24))
    assert len([d for d in deltas if d.content]) > 1  # streamed, not one block
    chat = Chat(client, FeedbackStore(tmp_path / "f.sqlite"), labels("zh"))
    state, _ = converse(chat, "Who are you?", ChatState(), max_tokens=24)
    assert state.turns[-1]["content"] == "".join(d.content for d in deltas)  # greedy: the same answer
    with pytest.raises(ExpertkitError, match="cannot reach"):
        ChatClient("http://127.0.0.1:9/v1").models(timeout=2)


def test_a_thumbs_up_given_while_the_answer_streams_is_kept(tmp_path):
    store = FeedbackStore(tmp_path / "f.sqlite")
    chat = Chat(ScriptedClient([Delta(content="I am "), Delta(content="Sail.")]), store, labels("en"))
    state = ChatState()
    frames = chat.respond("Who are you?", state, "sail", "")
    next(frames), next(frames)  # the question, then the first token
    chat.like(state, 1, True)
    list(frames)
    assert store.feedback(state.ids[1])["rating"] == 1
    assert next(store.training_rows())["messages"][-1]["content"] == "I am Sail."

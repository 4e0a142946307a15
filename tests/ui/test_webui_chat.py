"""The chat tab's logic without a browser: streamed answers, reasoning folded away, feedback stored; the client
against the live tiny-model server."""

from __future__ import annotations

from pathlib import Path

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

    def stream(self, model, messages, retrieval=None, **params):
        self.calls.append((model, messages, params))
        self.retrieval = retrieval
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

    chat.like(state, 2, False)
    chat.like(state, 1, True)  # Gradio reports a bubble's like on its first message, the reasoning: the answer's
    assert store.feedback(state.ids[2])["rating"] == 1
    chat.like(state, 0, True)  # the question: not an answer, nothing to rate
    assert store.feedback(state.ids[0]) is None
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


def test_a_grounded_answer_shows_its_sources_under_it_safely_and_keeps_them_out_of_the_history(tmp_path):
    sources = [
        {"n": 1, "url": "/srv/kb/relay.md", "title": "Zephyr-9 relay"},
        {"n": 2, "url": "https://example.com/a?x=1&y=<2>", "title": "<img src=x onerror=alert(1)> *bold* [x](y)"},
        {"n": 3, "url": "javascript:alert(1)", "title": "trap"},
    ]
    store = FeedbackStore(tmp_path / "f.sqlite")
    client = ScriptedClient(
        [Delta(reasoning="Look it up.", sources=sources), Delta(content="On 14 March 2026 [1]."), Delta()]
    )
    chat = Chat(client, store, labels("en"))
    state, _ = converse(chat, "When?", ChatState(), retrieval={"kb": True, "web": False})
    assert client.retrieval == {"kb": True, "web": False}
    reasoning, answer, shown = state.display[1:]
    assert answer["content"] == "On 14 March 2026 [1]." and state.ids[1:] == [None, state.ids[2], None]
    html = shown["content"]
    assert html.startswith('<div class="expertkit-sources"><strong>Sources</strong>')
    assert '<a href="file:///srv/kb/relay.md"' in html and "Zephyr&#45;9 relay</a>" in html
    assert '<a href="https://example.com/a?x=1&amp;y=&lt;2&gt;"' in html
    assert "<img" not in html and "*bold*" not in html and "[x](y)" not in html and "&#60;img" in html
    assert "javascript:" not in html.replace("javascript&#58;", "") and 'href="javascript' not in html
    assert state.turns[-1]["content"] == "On 14 March 2026 [1]."  # what the model sees next: the answer only
    stored = store.message(state.ids[2])
    assert stored["sources"] == sources and stored["options"]["retrieval"] == {"kb": True, "web": False}

    chat.like(state, 1, True)  # Gradio reports a bubble's like on its first message: the reasoning
    assert store.feedback(state.ids[2])["rating"] == 1
    chat.edit(state, 3, "edited sources")  # the sources are not stored: an edit there changes nothing
    assert store.feedback(state.ids[2])["edited_content"] is None and stored["sources"] == sources


def test_the_client_sends_retrieval_and_reads_the_sources_of_the_first_chunk(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rag"))
    from rag_reader import reader_server

    from expertkit.cli.main import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "relay.md").write_text("# Zephyr-9 relay\n\nThe Zephyr-9 relay was decommissioned on 14 March 2026.\n")
    assert main(["kb", "add", str(docs), f"kb_dir={tmp_path / 'kb'}"]) == 0
    with reader_server(kb_dir=str(tmp_path / "kb")) as (_, url):
        client = ChatClient(url)
        question = [{"role": "user", "content": "When was the Zephyr-9 relay decommissioned?"}]
        deltas = list(client.stream("reader", question, retrieval={"kb": True, "web": False}))
        with pytest.raises(ExpertkitError, match="web search is off"):
            list(client.stream("reader", question, retrieval={"kb": True, "web": True}))
    assert deltas[0].sources[0]["url"].endswith("relay.md") and not any(d.sources for d in deltas[1:])
    assert "14 March 2026. [1]" in "".join(d.content for d in deltas)

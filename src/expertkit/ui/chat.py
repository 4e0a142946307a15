"""The chat tab: a served model, streamed answers with the reasoning folded away, knowledge-base and web-search
toggles with the numbered sources under the answer, feedback into the store.

Each page keeps its conversation in a `ChatState`; every message is also written to the feedback store as it is
sent or answered, so a thumbs up or an edit refers to a stored message and survives the page. The store is the one
`expertkit serve store_conversations=true` records into, so `expertkit feedback export` reads both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore
from expertkit.ui.client import ChatClient, split_reasoning
from expertkit.ui.jobs import shown_command
from expertkit.ui.sources import sources_html


@dataclass
class ChatState:
    conversation_id: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)  # {"role", "content", "id"}: what the model sees
    display: list[dict[str, Any]] = field(default_factory=list)  # the Chatbot's messages, reasoning included
    ids: list[str | None] = field(default_factory=list)  # the stored message id of each display message (an answer's
    # reasoning and sources have none: an edit there changes nothing stored)


class Chat:
    """What the chat tab does, apart from drawing it (tested without a browser)."""

    def __init__(self, client: ChatClient | None, store: FeedbackStore, labels: dict[str, str]):
        self.client = client
        self.store = store
        self.L = labels

    def respond(
        self,
        text: str,
        state: ChatState,
        model: str,
        system: str,
        retrieval: dict[str, bool] | None = None,
        **sampling: Any,
    ) -> Iterator[tuple[list[dict[str, Any]], ChatState]]:
        """Append the user's message, then yield the display as the answer streams in; store both.

        `retrieval` ({"kb": bool, "web": bool}) asks the server for a grounded answer; its sources are shown under
        the answer and stored with it, but only the answer goes back into the conversation."""
        text = (text or "").strip()
        if not text:
            return
        if self.client is None:
            raise ExpertkitError(self.L["no_server"])
        if not model:
            raise ExpertkitError("choose a model first", hint="press Refresh if the list is empty")
        if state.conversation_id is None:
            state.conversation_id = self.store.start_conversation(model=model, system=system)
        user_id = self.store.add_message(state.conversation_id, "user", text)
        state.turns.append({"role": "user", "content": text, "id": user_id})
        state.display.append({"role": "user", "content": text})
        state.ids.append(user_id)
        yield state.display, state

        messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": t["role"], "content": t["content"]} for t in state.turns
        ]
        base = len(state.display)
        options = {**sampling, **({"retrieval": retrieval} if retrieval else {})}
        # stored before the first token, so a thumbs up given while it streams has a message to land on
        answer_id = self.store.add_message(state.conversation_id, "assistant", "", model=model, options=options)
        reasoning_part, content, sources = "", "", None
        started = time.monotonic()

        def show(done: bool = False) -> None:
            shown = self._answer_messages(reasoning_part, content, time.monotonic() - started, done)
            answer_at = base + len(shown) - 1
            if sources:
                shown.append({"role": "assistant", "content": sources_html(sources, self.L["sources"])})
            state.display[base:] = shown
            state.ids[base:] = [answer_id if base + i == answer_at else None for i in range(len(shown))]

        try:
            for delta in self.client.stream(model, messages, retrieval=retrieval, **sampling):
                reasoning_part += delta.reasoning
                content += delta.content
                sources = delta.sources or sources
                show()
                yield state.display, state
        finally:  # an answer cut short is stored (and kept in the history) as far as it came
            inline, answer, _ = split_reasoning(content)
            reasoning = "\n".join(p for p in (reasoning_part.strip(), inline) if p)
            self.store.update_message(answer_id, answer, reasoning=reasoning, sources=sources)
            state.turns.append({"role": "assistant", "content": answer, "id": answer_id})
            show(done=True)
        yield state.display, state

    def _answer_messages(self, reasoning: str, content: str, seconds: float, done: bool = False) -> list[dict]:
        inline, answer, thinking = split_reasoning(content)
        reasoning = "\n".join(p for p in (reasoning.strip(), inline) if p)
        messages = []
        if reasoning:
            status = "pending" if (thinking or not answer) and not done else "done"
            meta = {"title": self.L["reasoning"], "status": status, "duration": round(seconds, 1)}
            messages.append({"role": "assistant", "content": reasoning, "metadata": meta})
        messages.append({"role": "assistant", "content": answer})
        return messages

    def like(self, state: ChatState, index: int, liked: Any, rater: str | None = None) -> None:
        """👍 (1) / 👎 (-1) / taken back (0) on the answer at `index` of the display. Gradio draws an answer's
        reasoning, text and sources as one bubble and reports the like on its first message: the answer is the one
        of that bubble with a stored id."""
        position = index[0] if isinstance(index, (list, tuple)) else index
        if not isinstance(position, int) or not 0 <= position < len(state.ids):
            return
        while state.display[position]["role"] == "assistant":
            if state.ids[position] is not None:
                rating = 1 if liked is True else -1 if liked is False else 0
                self.store.record_feedback(state.ids[position], rating=rating, rater=rater)
                return
            if position + 1 == len(state.ids):
                return
            position += 1

    def edit(self, state: ChatState, index: int, value: Any, rater: str | None = None) -> ChatState:
        """An edited answer is stored as feedback (what the model should have said) and used from now on."""
        message_id = _id_at(state, index)
        if message_id is None:
            return state
        text = _text_of(value)
        turn = next(t for t in state.turns if t["id"] == message_id)
        if turn["role"] == "assistant":
            self.store.record_feedback(message_id, edited_content=text, rater=rater)
        else:
            self.store.update_message(message_id, text)
        turn["content"] = text
        state.display[index] = {**state.display[index], "content": text}
        return state

    def export_feedback(self, saves_dir: str) -> str:
        path = Path(saves_dir) / "feedback" / f"feedback-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        n = self.store.export_jsonl(path)
        command = shown_command(["train", f"dataset={path}", "model_name_or_path=..."])
        return self.L["feedback_exported"].format(n=n, path=path, command=command)


def _id_at(state: ChatState, index: Any) -> str | None:
    if isinstance(index, (list, tuple)):
        index = index[0]
    if not isinstance(index, int) or not 0 <= index < len(state.ids):
        return None
    return state.ids[index]


def _text_of(value: Any) -> str:
    if isinstance(value, list):  # Gradio's content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in value)
    if isinstance(value, dict):
        return str(value.get("text") or value.get("content") or "")
    return str(value or "")


def retrieval_toggles(config) -> tuple[bool, bool]:
    """Whether the knowledge-base and web-search toggles can be used: a server the UI starts has them when it was
    given kb_dir / web=true; a server of server_url is asked (it answers 400, naming the key, when it has none)."""
    if config.server_url:
        return True, True
    if config.starts_server:
        return bool(config.kb_dir), bool(config.web)
    return False, False


def build_chat_tab(chat: Chat, models_source, config, L: dict[str, str], rater=lambda request: None) -> dict[str, Any]:
    """Draw the tab inside the current Blocks; returns the components the page wires up on load. `rater(request)`:
    the logged-in user, recorded with each rating and edit."""
    state = gr.State(ChatState())
    kb_on, web_on = retrieval_toggles(config)
    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(label=L["model"], choices=[], value=None, allow_custom_value=True, elem_id="chat-model")
            refresh = gr.Button(L["refresh"], size="sm")
            server = gr.Markdown(elem_id="chat-server")
            system = gr.Textbox(label=L["system"], lines=3, elem_id="chat-system")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label=L["temperature"])
            top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label=L["top_p"])
            max_tokens = gr.Slider(16, 8192, value=512, step=16, label=L["max_tokens"], elem_id="chat-max-tokens")
            use_kb = gr.Checkbox(
                value=False,
                label=L["use_kb"],
                info=None if kb_on else L["kb_off"],
                interactive=kb_on,
                elem_id="chat-kb",
            )
            use_web = gr.Checkbox(
                value=False, label=L["use_web"], info=None if web_on else L["web_off"], interactive=web_on,
                elem_id="chat-web",
            )  # fmt: skip
            new_chat = gr.Button(L["new_chat"], elem_id="chat-new")
            export = gr.Button(L["export_feedback"], size="sm", elem_id="chat-export-feedback")
            exported = gr.Textbox(show_label=False, lines=3, visible=True, interactive=False)
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(height=520, editable="all", elem_id="chat-bot", buttons=["copy"], label=L["chat"])
            gr.Markdown(L["feedback_hint"])
            with gr.Row():
                message = gr.Textbox(
                    show_label=False, placeholder=L["message_placeholder"], scale=5, elem_id="chat-input", lines=1
                )
                send = gr.Button(L["send"], variant="primary", scale=1, elem_id="chat-send")

    def respond(text, st, model_name, system_prompt, temp, top, max_new, kb, web):
        retrieval = {"kb": bool(kb), "web": bool(web)} if kb or web else None
        try:
            for display, new_state in chat.respond(
                text,
                st,
                model_name,
                system_prompt or "",
                retrieval=retrieval,
                temperature=temp,
                top_p=top,
                max_tokens=int(max_new),
            ):
                yield "", display, new_state
        except ExpertkitError as e:
            raise gr.Error(str(e)) from None

    inputs = [message, state, model, system, temperature, top_p, max_tokens, use_kb, use_web]
    message.submit(respond, inputs, [message, chatbot, state])
    send.click(respond, inputs, [message, chatbot, state])

    def on_like(st, data: gr.LikeData, request: gr.Request = None):
        chat.like(st, data.index, data.liked, rater=rater(request))

    def on_edit(st, data: gr.EditData, request: gr.Request = None):
        return chat.edit(st, data.index, data.value, rater=rater(request))

    chatbot.like(on_like, [state], None)
    chatbot.edit(on_edit, [state], [state])
    new_chat.click(lambda: ([], ChatState()), None, [chatbot, state])
    export.click(lambda: chat.export_feedback(config.saves_dir), None, [exported])
    refresh.click(models_source, None, [model, server])
    return {"model": model, "server": server}

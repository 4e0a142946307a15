"""The Compare tab (the arena): one question, two anonymous answers side by side, a vote, then who was who.

The two answers come from two served names, or from the two heaviest arms of an alias of the models file (an A/B
test's contenders), in a random order. Both are stored as conversations of their own (source "arena", with the
alias and the arm that answered), and the vote as a preference between them (`FeedbackStore.record_vote`, with the
logged-in user as the rater): `expertkit feedback export format=dpo` turns it into a training pair.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import VOTES, FeedbackStore
from expertkit.core.models_file import load_models_file
from expertkit.ui.client import ChatClient, split_reasoning

logger = logging.getLogger(__name__)

FRAME_S = 0.25  # how often the page is redrawn while the two answers stream in


@dataclass
class Side:
    model: str  # the served name that answers (hidden until the vote)
    alias: str | None = None
    content: str = ""
    reasoning: str = ""
    error: str | None = None
    message_id: str | None = None


@dataclass
class ArenaState:
    question: str = ""
    sides: list[Side] = field(default_factory=list)  # [A, B], as shown
    winner: str | None = None

    @property
    def ready(self) -> bool:
        """Both answers are stored and not yet voted on."""
        return len(self.sides) == 2 and all(s.message_id for s in self.sides) and self.winner is None


def alias_arms(models_file: str | None) -> dict[str, list[str]]:
    """Aliases of the models file with two arms or more -> their arms, heaviest first ({} without a file)."""
    if not models_file:
        return {}
    models = load_models_file(models_file, check_paths=False)
    arms = {alias: models.arms(alias) for alias in models.aliases}
    return {alias: sorted(a, key=lambda n: -a[n]) for alias, a in arms.items() if len(a) >= 2}


class Arena:
    """What the Compare tab does, apart from drawing it (tested without a browser)."""

    def __init__(self, client: ChatClient | None, store: FeedbackStore, labels: dict[str, str], rng=None):
        self.client = client
        self.store = store
        self.L = labels
        self.rng = rng or random.Random()

    def contenders(self, model_a: str | None, model_b: str | None, alias: str | None, models_file: str | None):
        """[(served name, alias)] x 2 in a random order: an alias's two heaviest arms, or the two names."""
        if alias:
            arms = alias_arms(models_file).get(alias)
            if not arms:
                raise ExpertkitError(f"alias '{alias}' has no two arms in {models_file}", hint="pick two models")
            pair = [(arms[0], alias), (arms[1], alias)]
        else:
            if not model_a or not model_b:
                raise ExpertkitError(self.L["compare_pick"])
            if model_a == model_b:
                raise ExpertkitError(self.L["compare_same"])
            pair = [(model_a, None), (model_b, None)]
        if self.rng.random() < 0.5:
            pair.reverse()
        return pair

    def ask(
        self, question: str, pair: list[tuple[str, str | None]], system: str = "", **sampling: Any
    ) -> Iterator[ArenaState]:
        """Ask both at once; yield the state as the answers stream in; store both when they are complete."""
        question = (question or "").strip()
        if not question:
            raise ExpertkitError(self.L["compare_empty"])
        if self.client is None:
            raise ExpertkitError(self.L["no_server"])
        state = ArenaState(question=question, sides=[Side(model, alias) for model, alias in pair])
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": "user", "content": question}
        ]
        threads = [
            threading.Thread(target=self._answer, args=(side, messages, sampling), daemon=True) for side in state.sides
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(FRAME_S)
            yield state
        failed = [s.error for s in state.sides if s.error]
        if failed:
            raise ExpertkitError(self.L["compare_failed"].format(error="; ".join(failed)))
        for side in state.sides:
            side.message_id = self.store.record_conversation(
                messages, side.content, reasoning=side.reasoning, model=side.model, options=sampling or None,
                source="arena", alias=side.alias, arm=side.model,
            )  # fmt: skip
        yield state

    def _answer(self, side: Side, messages: list[dict[str, str]], sampling: dict[str, Any]) -> None:
        text, reasoning = "", ""
        try:
            for delta in self.client.stream(side.model, messages, **sampling):
                reasoning += delta.reasoning
                text += delta.content
                inline, side.content, _ = split_reasoning(text)
                side.reasoning = "\n".join(p for p in (reasoning.strip(), inline) if p)
        except ExpertkitError as e:
            side.error = str(e)

    def vote(self, state: ArenaState, winner: str, rater: str | None = None) -> str:
        """Store the vote (a, b, tie, both_bad) with who gave it; returns the reveal: which model gave which answer."""
        if winner not in VOTES:
            raise ValueError(f"winner must be one of {VOTES}")
        if not state.ready:
            raise ExpertkitError(self.L["compare_not_ready"])
        a, b = state.sides
        self.store.record_vote(a.message_id, b.message_id, winner, rater=rater)
        state.winner = winner
        return reveal(state, self.L)


def reveal(state: ArenaState, L: dict[str, str]) -> str:
    a, b = state.sides
    alias = f" ({L['compare_alias']} `{a.alias}`)" if a.alias else ""
    return L["compare_reveal"].format(a=a.model, b=b.model, alias=alias, vote=L[f"vote_{state.winner}"])


def shown(side: Side | None, L: dict[str, str]) -> str:
    if side is None:
        return ""
    return side.content or f"*{L['compare_waiting']}*"


def build_compare_tab(arena: Arena, config, L: dict[str, str], rater) -> dict[str, Any]:
    """Draw the tab inside the current Blocks. `rater(request)`: the logged-in user (None without accounts)."""
    state = gr.State(ArenaState())
    with gr.Row():
        model_a = gr.Dropdown(
            label=L["compare_model_a"], choices=[], allow_custom_value=True, elem_id="compare-a-model"
        )
        model_b = gr.Dropdown(
            label=L["compare_model_b"], choices=[], allow_custom_value=True, elem_id="compare-b-model"
        )
        alias = gr.Dropdown(
            label=L["compare_alias_pick"], choices=[L["compare_no_alias"]], value=L["compare_no_alias"],
            elem_id="compare-alias",
        )  # fmt: skip
        max_tokens = gr.Slider(16, 4096, value=256, step=16, label=L["max_tokens"], elem_id="compare-max-tokens")
    gr.Markdown(L["compare_hint"])
    with gr.Row():
        question = gr.Textbox(show_label=False, placeholder=L["message_placeholder"], scale=5, elem_id="compare-input")
        ask = gr.Button(L["compare_ask"], variant="primary", scale=1, elem_id="compare-ask")
    with gr.Row(equal_height=True):
        with gr.Column():
            gr.Markdown(f"#### {L['answer_a']}")
            answer_a = gr.Markdown(elem_id="compare-answer-a", min_height=120)
        with gr.Column():
            gr.Markdown(f"#### {L['answer_b']}")
            answer_b = gr.Markdown(elem_id="compare-answer-b", min_height=120)
    with gr.Row():
        buttons = [gr.Button(L[f"vote_{v}"], interactive=False, elem_id=f"compare-vote-{v}") for v in VOTES]
    result = gr.Markdown(elem_id="compare-result")

    def on_ask(text, a, b, alias_name, max_new):
        alias_name = None if alias_name == L["compare_no_alias"] else alias_name
        try:
            pair = arena.contenders(a, b, alias_name, config.models)
            for st in arena.ask(text, pair, max_tokens=int(max_new)):
                yield shown(st.sides[0], L), shown(st.sides[1], L), st, "", *[gr.update(interactive=st.ready)] * 4
        except ExpertkitError as e:
            raise gr.Error(str(e)) from None

    def voter(winner: str):
        def on_vote(st: ArenaState, request: gr.Request = None):
            try:
                text = arena.vote(st, winner, rater=rater(request))
            except ExpertkitError as e:
                raise gr.Error(str(e)) from None
            return text, st, *[gr.update(interactive=False)] * 4

        return on_vote

    outputs = [answer_a, answer_b, state, result, *buttons]
    inputs = [question, model_a, model_b, alias, max_tokens]
    ask.click(on_ask, inputs, outputs)
    question.submit(on_ask, inputs, outputs)
    for v, button in zip(VOTES, buttons):
        button.click(voter(v), [state], [result, state, *buttons])

    def aliases():
        try:
            names = list(alias_arms(config.models))
        except ExpertkitError as e:  # the page still compares two names; the log says what is wrong with the file
            logger.warning("the Compare tab offers no alias: %s", e)
            names = []
        return gr.update(choices=[L["compare_no_alias"], *names])

    return {"a": model_a, "b": model_b, "aliases": (aliases, [alias])}

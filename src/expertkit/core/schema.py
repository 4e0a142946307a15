"""The one conversation schema. Every input format is converted into it once, in `expertkit.data`.

Example::

    Conversation(messages=[Message("system", "You are a claims assistant."),
                           Message("user", "What is a deductible?"),
                           Message("assistant", "The part of a loss you pay yourself ...")])

Preference data keeps the prompt apart from its answers::

    PreferencePair(prompt=[Message("user", "What is a deductible?")],
                   chosen=Message("assistant", "The part of a loss you pay yourself ..."),
                   rejected=Message("assistant", "A discount on your premium."))
    UnpairedExample(prompt=[Message("user", "What is a deductible?")],
                    completion=Message("assistant", "A discount on your premium."), label=False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: Role
    content: str


@dataclass
class Conversation:
    messages: list[Message]
    tools: str | None = None  # JSON text of tool definitions, passed to the chat template
    source: str = ""  # "file:line" (or "file row N") the conversation came from, for error messages

    def to_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conversation:
        return cls(
            messages=[Message(**m) for m in data["messages"]], tools=data.get("tools"), source=data.get("source", "")
        )


@dataclass
class PreferencePair:
    """A prompt with a preferred and a rejected answer (DPO, reward modelling and friends).

    `prompt` is everything before the answer (optional system, then turns ending on the user's, or a tool result);
    `chosen` and `rejected` are assistant messages answering it.
    """

    prompt: list[Message]
    chosen: Message
    rejected: Message
    source: str = ""  # "file:line" of the row, for error messages
    extra: dict[str, Any] = field(default_factory=dict)
    tools: str | None = None  # JSON text of tool definitions, passed to the chat template


@dataclass
class UnpairedExample:
    """A prompt with one answer labelled desirable (`label=True`) or undesirable (KTO)."""

    prompt: list[Message]
    completion: Message
    label: bool
    source: str = ""  # "file:line" of the row, for error messages
    tools: str | None = None  # JSON text of tool definitions, passed to the chat template

"""The one conversation schema. Every input format is converted into it once, in `expertkit.data`.

Example::

    Conversation(messages=[Message("system", "You are a claims assistant."),
                           Message("user", "What is a deductible?"),
                           Message("assistant", "The part of a loss you pay yourself ...")])
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
    """A prompt with a preferred and a rejected answer (DPO and friends)."""

    prompt: list[Message]
    chosen: Message
    rejected: Message
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

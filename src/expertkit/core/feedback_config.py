"""Keys of `expertkit feedback export` and `expertkit feedback stats` (in core, so the web UI can build its forms from
them; the work itself is in `expertkit.improve.feedback_data` and `expertkit.improve.stats`)."""

from __future__ import annotations

import difflib
from datetime import date, datetime, timezone
from typing import Literal

from pydantic import field_validator, model_validator

from expertkit.core.config import StageConfig

ExportFormat = Literal["sft", "dpo", "kto"]
EXPORT_FORMATS: tuple[str, ...] = ("sft", "dpo", "kto")
ExportOnly = Literal["good", "edited", "all"]


def parse_since(value: str) -> datetime:
    """An ISO date or date-time (`2026-05-01`, `2026-05-01T12:00:00+02:00`) as an aware datetime (naive: UTC)."""
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class FeedbackExportConfig(StageConfig):
    """Keys of `expertkit feedback export`."""

    feedback_db: str | None = None
    """The feedback store to read (unset: ~/.expertkit/feedback.sqlite, where the web UI and
    `expertkit serve store_conversations=true` write)."""

    format: ExportFormat = "sft"
    """What to write: sft (OpenAI `messages` rows of good answers), dpo (LLaMA-Factory sharegpt ranking rows:
    `messages`, `chosen`, `rejected`, from edits, arena votes and liked vs disliked answers to the same prompt) or kto
    (`messages` ending with the answer and a `kto_tag`, from every rated answer)."""

    output: str | None = None
    """The file to write (unset: feedback.jsonl for sft, feedback_dpo.json / feedback_kto.json); a
    `dataset_info.json` entry named after its stem is written beside it. `.jsonl`: one row a line, else a JSON list."""

    only: ExportOnly = "good"
    """sft: which answers: good (liked ones and every edited one; a thumbs down without an edit is left out), edited
    (edited ones only), all (every stored answer, unrated and disliked ones too). An edit always replaces the answer."""

    with_reasoning: bool = True
    """Keep an answer's reasoning as <think>...</think> before it (R1-style models); false: the answer alone."""

    since: str | None = None
    """Only feedback given since then: an ISO date (2026-05-01) or date-time, or `last`: since the last export to the
    same output (its bookmark is kept beside the store, in feedback.sqlite.exports.json), or `all`: everything (like
    unset, but an export with no row then writes an empty file and exits 0, as scripts want)."""

    alias: str | None = None
    """Only answers to conversations that asked for this alias (the name a client used with `serve models=`)."""

    arm: str | None = None
    """Only answers of this A/B arm (the served name that answered)."""

    model: str | None = None
    """Only answers of this model (the name stored with each answer)."""

    rater: str | None = None
    """Only ratings, edits and votes given by this rater (a web UI account, an API key's name)."""

    dedup: bool | None = None
    """Keep one row per identical prompt, the newest (kto: per prompt and label); the others are counted. Unset: on
    for dpo and kto, off for sft (as before)."""

    with_context: bool = False
    """Grounded answers keep their retrieved passages: the prompt is the one the model saw (sources in the user turn,
    the grounding rules in the system prompt). false: sft keeps the question as asked; dpo and kto leave them out."""

    cutoff_len: int | None = None
    """Leave out rows longer than this many tokens under the chat template (needs model_name_or_path)."""

    model_name_or_path: str | None = None
    """The model (or run folder) whose tokenizer and chat template measure cutoff_len."""

    template: str | None = None
    """Chat template for measuring (unset: the tokenizer's own), as in training."""

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value: object) -> object:
        if isinstance(value, str) and value not in EXPORT_FORMATS:
            close = difflib.get_close_matches(value, EXPORT_FORMATS, n=1, cutoff=0.5)
            maybe = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown format {value!r}: {maybe}use sft, dpo or kto")
        return value

    @field_validator("since", mode="before")
    @classmethod
    def _since_is_a_date(cls, value: object) -> str | None:
        if isinstance(value, (date, datetime)):  # YAML (and key=value) read 2026-05-01 as a date
            value = value.isoformat()
        if value is None or value in ("last", "all"):
            return value
        try:
            parse_since(str(value))
        except ValueError:
            raise ValueError(
                f"since must be an ISO date (2026-05-01), a date-time (2026-05-01T12:00:00+00:00), last or all, "
                f"not {value!r}"
            ) from None
        return str(value)

    @field_validator("cutoff_len")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 8:
            raise ValueError("must be at least 8 tokens")
        return value

    @model_validator(mode="after")
    def _cutoff_needs_a_tokenizer(self) -> FeedbackExportConfig:
        if self.cutoff_len is not None and not self.model_name_or_path:
            raise ValueError("cutoff_len needs model_name_or_path: its tokenizer counts the tokens")
        return self

    def output_path(self) -> str:
        return self.output or ("feedback.jsonl" if self.format == "sft" else f"feedback_{self.format}.json")

    def deduplicate(self) -> bool:
        return self.dedup if self.dedup is not None else self.format != "sft"


class FeedbackStatsConfig(StageConfig):
    """Keys of `expertkit feedback stats`."""

    feedback_db: str | None = None
    """The feedback store to read (unset: ~/.expertkit/feedback.sqlite)."""

    alias: str | None = None
    """Only this alias (unset: every alias; conversations that asked for no alias are grouped as `(none)`, one arm
    per model)."""

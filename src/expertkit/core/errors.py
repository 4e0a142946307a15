"""Errors meant for people: what went wrong, where, what exists instead, and what to run.

The CLI prints an `ExpertkitError` without a traceback and exits non-zero; anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with the user's input, located as precisely as we can.

    `where` is a human location such as ``data/train.jsonl:17`` or ``config.yaml``; `field` a path inside
    the record such as ``conversations[3].from``.
    """

    message: str
    where: str = ""
    field: str = ""
    hint: str = ""

    def format(self) -> str:
        loc = self.where
        if self.field:
            loc = f"{loc} {self.field}" if loc else self.field
        text = f"{loc}: {self.message}" if loc else self.message
        if self.hint:
            text += f" (fix: {self.hint})"
        return text


class ExpertkitError(Exception):
    """A user mistake or an environment problem that we can explain."""

    def __init__(self, message: str, hint: str = "", problems: list[Problem] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = list(problems or [])

    def __str__(self) -> str:
        lines = [self.message]
        shown = self.problems[:MAX_SHOWN_PROBLEMS]
        lines += [f"  - {p.format()}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


MAX_SHOWN_PROBLEMS = 50


class ConfigError(ExpertkitError):
    """The configuration (YAML, key=value overrides) is wrong."""


class DataError(ExpertkitError):
    """The training data cannot be read or is invalid."""


class MissingExtraError(ExpertkitError):
    """An optional package is not installed (raised by `expertkit.core.optional.import_optional`).

    `extra` is the expertkit extra that brings it; None for a package no extra installs (then the hint is a plain
    ``pip install PACKAGE``). `needed_for` says what needs it (``the reranker``) and starts the message.
    """

    def __init__(self, package: str, extra: str | None, needed_for: str = ""):
        super().__init__(
            f"{_lead(needed_for)}{package} is not installed", hint=f"pip install {_target(package, extra)}"
        )


class BrokenExtraError(ExpertkitError):
    """An optional package is installed but importing it fails (raised by `import_optional`): one of its own
    dependencies is missing or does not fit (trafilatura under lxml 5.2+ without lxml_html_clean), or the install is
    damaged. `error` is the real error's text; `lacks` the module it names when that is another package's."""

    def __init__(
        self, package: str, extra: str | None, error: str, needed_for: str = "", version: str = "", lacks: str = ""
    ):
        installed = f"{package} {version}" if version else package
        hint = f"pip install --upgrade {_target(package, extra)}"
        if lacks:
            hint += f"; or only the module it lacks: pip install {lacks}"
        super().__init__(f"{_lead(needed_for)}{installed} is installed but could not be imported: {error}", hint=hint)


def _lead(needed_for: str) -> str:
    return f"{needed_for}: " if needed_for else ""


def _target(package: str, extra: str | None) -> str:
    return f"'expertkit[{extra}]'" if extra else package


@dataclass
class ProblemList:
    """Collects problems so that all of them are reported at once, not the first only."""

    items: list[Problem] = field(default_factory=list)

    def add(self, message: str, where: str = "", field: str = "", hint: str = "") -> None:
        self.items.append(Problem(message, where, field, hint))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

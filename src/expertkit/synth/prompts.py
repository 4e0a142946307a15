"""The teacher's prompts: English and Chinese, chosen per chunk, shown by `--show-prompts`, overridable by a file.

    prompts = load_prompts("my_prompts.yaml")       # None: the shipped resources/synth/prompts.yaml
    text = prompts.render("zh", "questions", chunk="...", title="手册", n="3")
    prompts.version                                 # changes when any prompt text changes: chunks are asked again

The file's shape is the shipped file's (`expertkit data synth --show-prompts` prints it): a mapping of language
(`en`, `zh`) to the four prompts `system`, `questions`, `answer`, `judge`. An override file may give any of them;
what it leaves out keeps the shipped text. Placeholders (`{chunk}` ...) are replaced as written, so the JSON examples
in a prompt need no escaped braces.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from expertkit.core.errors import ConfigError, Problem

LANGUAGES = ("en", "zh")
# prompt -> the placeholders it must contain (a prompt without {chunk} would ask about nothing)
REQUIRED = {"system": (), "questions": ("{chunk}", "{n}"), "answer": ("{chunk}", "{question}"),
            "judge": ("{chunk}", "{pairs}")}  # fmt: skip
PLACEHOLDERS = ("{title}", "{chunk}", "{n}", "{question}", "{pairs}")
OUR_TAGS = re.compile(r"</?(?:chunk|question|pairs)>", re.I)
CJK_SHARE = 0.3  # of letters: Chinese text mixed with English names and numbers is still Chinese


def shipped_text() -> str:
    return files("expertkit").joinpath("resources/synth/prompts.yaml").read_text(encoding="utf-8")


@dataclass
class Prompts:
    texts: dict[str, dict[str, str]]  # language -> prompt name -> text

    @property
    def version(self) -> str:
        """A short hash of every prompt: part of each chunk's key in the state file."""
        return hashlib.sha256(json.dumps(self.texts, sort_keys=True).encode()).hexdigest()[:12]

    def render(self, language: str, name: str, **values: str) -> str:
        """The prompt with its placeholders filled; our tags are taken out of the values, so that a document cannot
        close its <chunk> and speak as the prompt (documents are material, never instructions)."""
        text = self.texts[language][name]
        for key, value in values.items():
            text = text.replace("{" + key + "}", OUR_TAGS.sub("", value))
        return text

    def system(self, language: str) -> str:
        return self.texts[language]["system"]


def load_prompts(path: str | None = None) -> Prompts:
    """The shipped prompts, with those of `path` (a YAML file) in their place; every problem is reported at once."""
    texts = yaml.safe_load(shipped_text())
    if not path:
        return Prompts(texts)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"prompts file '{path}' does not exist", hint="expertkit data synth --show-prompts > p.yaml")
    try:
        given = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable YAML file: {e}") from None
    problems = override_problems(given, str(path))
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s) in the prompts file:", problems=problems,
                          hint="expertkit data synth --show-prompts prints the shipped file to start from")  # fmt: skip
    for language, prompts in given.items():
        texts[language].update(prompts)
    return Prompts(texts)


def override_problems(given, where: str) -> list[Problem]:
    if not isinstance(given, dict):
        return [Problem("expected a mapping of language (en, zh) to prompts", where)]
    problems = []
    for language, prompts in given.items():
        if language not in LANGUAGES:
            problems.append(Problem(f"unknown language '{language}'", where, hint="use en or zh"))
            continue
        if not isinstance(prompts, dict):
            problems.append(Problem("expected a mapping of prompt name to text", where, str(language)))
            continue
        for name, text in prompts.items():
            field = f"{language}.{name}"
            if name not in REQUIRED:
                problems.append(Problem(f"unknown prompt '{name}'", where, field, f"prompts: {', '.join(REQUIRED)}"))
            elif not isinstance(text, str) or not text.strip():
                problems.append(Problem("the prompt is empty or not text", where, field))
            else:
                missing = [p for p in REQUIRED[name] if p not in text]
                if missing:
                    problems.append(Problem(f"lacks the placeholder(s) {', '.join(missing)}", where, field))
    return problems


def detect_language(text: str) -> str:
    """zh when at least CJK_SHARE of the letters are CJK ideographs or kana, else en."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    cjk = sum(1 for c in letters if "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff")
    return "zh" if cjk / len(letters) >= CJK_SHARE else "en"

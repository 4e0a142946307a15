"""Did it forget? A small bundled general-knowledge probe, English and Chinese, asked of the base and the tuned model.

    {"id": "zh-02", "lang": "zh", "question": "中国的首都是哪座城市？", "answer": "北京", "accept": ["Beijing"]}

40 short factual questions written for expertkit (capitals, arithmetic, science, common sense; 20 per language),
each with one short unambiguous answer. An answer counts as right when it contains `answer` or one of `accept`
after normalisation (`metrics.contains_match`: case, punctuation and full-width forms ignored, Latin words and
numbers whole), so "The capital is Paris." is right and "14" is not "4". A drop from base to tuned is forgetting.
"""

from __future__ import annotations

import json
from importlib.resources import files

from expertkit.core.errors import ExpertkitError
from expertkit.evaluate.metrics import contains_match

PROBE = "general.jsonl"


def load_probe() -> list[dict]:
    """The bundled probe items, in file order: {"id", "lang", "question", "answer", "accept": [...]}."""
    text = (files("expertkit") / "resources" / "probe" / PROBE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def is_right(answer: str, item: dict) -> bool:
    """Whether `answer` contains the item's answer or one of its accepted alternatives."""
    return any(contains_match(answer or "", want) for want in [item["answer"], *item.get("accept", [])])


def score_probe(answers: list[str], items: list[dict]) -> dict[str, float]:
    """Accuracy 0..100: {"overall": ..., "en": ..., "zh": ...} (one key per language in the items)."""
    if len(answers) != len(items):
        raise ExpertkitError(
            f"{len(answers)} answers for {len(items)} probe questions",
            hint="give one answer per probe item, in the order of load_probe()",
        )
    right = [is_right(a, item) for a, item in zip(answers, items, strict=True)]
    scores = {"overall": percent(right)}
    for lang in dict.fromkeys(item["lang"] for item in items):
        scores[lang] = percent([r for r, item in zip(right, items, strict=True) if item["lang"] == lang])
    return scores


def percent(flags: list[bool]) -> float:
    return 100.0 * sum(flags) / len(flags) if flags else 0.0

"""The bundled general-knowledge probe: it loads, is well formed, and scores right and wrong answers as it should."""

from __future__ import annotations

from collections import Counter

import pytest

from expertkit.core.errors import ExpertkitError
from expertkit.evaluate.metrics import contains_match, has_cjk
from expertkit.evaluate.probe import is_right, load_probe, score_probe


def test_the_probe_loads_and_is_well_formed():
    items = load_probe()
    assert len(items) >= 40
    assert len({i["id"] for i in items}) == len(items)
    assert Counter(i["lang"] for i in items) == {"en": 20, "zh": 20}
    for item in items:
        assert set(item) == {"id", "lang", "question", "answer", "accept"}, item["id"]
        assert item["question"].strip() and item["answer"].strip() and isinstance(item["accept"], list)
        assert has_cjk(item["question"]) == (item["lang"] == "zh"), item["id"]
        # a model that only repeats the question must not score
        assert not is_right(item["question"], item), item["id"]


def test_perfect_answers_score_100_and_empty_ones_0():
    items = load_probe()
    assert score_probe([i["answer"] for i in items], items) == {"overall": 100.0, "en": 100.0, "zh": 100.0}
    assert score_probe([f"I believe it is {i['answer']}." for i in items], items)["overall"] == 100.0
    assert score_probe([""] * len(items), items) == {"overall": 0.0, "en": 0.0, "zh": 0.0}


def test_alternatives_and_languages_are_scored_apart():
    items = load_probe()
    answers = [(i["accept"] or [i["answer"]])[0] if i["lang"] == "zh" else "I don't know" for i in items]
    assert score_probe(answers, items) == {"overall": 50.0, "en": 0.0, "zh": 100.0}


def test_contains_match_is_not_fooled_by_digits():
    item = {"answer": "4", "accept": ["four"]}
    assert is_right("2 + 2 = 4.", item) and is_right("Four", item)
    assert not is_right("14", item) and not contains_match("fourteen", "four")


def test_answers_must_line_up_with_the_items():
    with pytest.raises(ExpertkitError, match="3 answers for 40 probe questions"):
        score_probe(["a", "b", "c"], load_probe())

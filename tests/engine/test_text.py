"""Stop strings and reasoning splitting must be right whatever the delta boundaries are."""

from __future__ import annotations

import pytest

from expertkit.engine.text import ReasoningSplitter, StopStrings


def chunked(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_stop_strings_cut_at_the_first_and_hide_it(size):
    s = StopStrings(["\nUser:", "###"])
    out = "".join(s.feed(c) for c in chunked("Answer one.\nUser: next ### more", size)) + s.flush()
    assert out == "Answer one."


@pytest.mark.parametrize("size", [1, 2, 4, 100])
def test_partial_stop_prefix_is_released_when_it_does_not_complete(size):
    s = StopStrings(["###"])
    out = "".join(s.feed(c) for c in chunked("a ## b #", size)) + s.flush()
    assert out == "a ## b #"


def test_without_stop_strings_text_passes_whole_and_empty_ones_are_none():
    for s in (StopStrings([]), StopStrings([""])):
        assert [s.feed(c) for c in ["a#", "", "\nUser:"]] == ["a#", "", "\nUser:"]
        assert s.flush() == "" and not s.stopped


@pytest.mark.parametrize("size", [1, 3, 7, 100])
def test_reasoning_is_returned_apart(size):
    r = ReasoningSplitter()
    answer, reasoning = "", ""
    for c in chunked("<think>\nLet me see: 2+2.\n</think>\n\nIt is 4.", size):
        a, t = r.feed(c)
        answer, reasoning = answer + a, reasoning + t
    a, t = r.flush()
    assert (answer + a, (reasoning + t).strip()) == ("It is 4.", "Let me see: 2+2.")


@pytest.mark.parametrize("size", [1, 4, 100])
def test_no_reasoning_means_everything_is_answer(size):
    r = ReasoningSplitter()
    parts = [r.feed(c) for c in chunked("Plain <think>text</think> here", size)] + [r.flush()]
    assert "".join(a for a, _ in parts) == "Plain <think>text</think> here"
    assert "".join(t for _, t in parts) == ""


def test_prompt_that_opened_think_starts_in_reasoning():
    r = ReasoningSplitter(started_in_reasoning=True)
    a1, t1 = r.feed("thinking...</think>answer")
    a2, t2 = r.flush()
    assert (t1 + t2, a1 + a2) == ("thinking...", "answer")

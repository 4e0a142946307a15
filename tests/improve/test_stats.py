"""`expertkit feedback stats`: per alias and arm, rates with Wilson intervals and a two-proportion z-test, checked
against values worked out by hand and statsmodels' documented example; the --json object of LOOP.md contract 2."""

from __future__ import annotations

import json
import math

import pytest

from expertkit.cli.main import main
from expertkit.core.feedback import FeedbackStore
from expertkit.improve.stats import ratings_needed, two_proportion_z, wilson_interval

Z = 1.959963984540054  # the 97.5th percentile of the standard normal


def test_wilson_interval_matches_the_formula_and_published_values():
    # 8 of 10: p = 0.8, centre (0.8 + z^2/20) / (1 + z^2/10), half-width z / (1 + z^2/10) * sqrt(0.016 + z^2/400)
    centre = (0.8 + Z**2 / 20) / (1 + Z**2 / 10)
    half = Z / (1 + Z**2 / 10) * math.sqrt(0.8 * 0.2 / 10 + Z**2 / 400)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # as statsmodels' proportion_confint(8, 10, "wilson")
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z**2 / (10 + Z**2)))  # 0.2775: the rule of three's cousin
    assert wilson_interval(0, 0) is None


def test_two_proportion_z_test_matches_statsmodels_documented_example():
    # statsmodels.stats.proportion.proportions_ztest([5, 12], [83, 99]) -> p-value 0.159 (its documentation)
    z, p = two_proportion_z(5, 83, 12, 99)
    pooled = 17 / 182
    assert z == pytest.approx((5 / 83 - 12 / 99) / math.sqrt(pooled * (1 - pooled) * (1 / 83 + 1 / 99)))
    assert round(p, 3) == 0.159
    assert two_proportion_z(3, 3, 5, 5) == (0.0, 1.0)  # no variance: nothing to tell apart


def test_ratings_needed_is_where_the_observed_difference_becomes_significant():
    # 0.75 vs 0.65 with n per arm: z = 0.1 / sqrt(0.7 * 0.3 * 2 / n) >= Z from n >= 0.42 * Z^2 / 0.01 = 161.3
    assert ratings_needed(0.75, 40, 0.65, 40) == math.ceil(0.42 * Z**2 / 0.01) - 40
    assert ratings_needed(0.9, 400, 0.5, 400) == 0
    assert ratings_needed(0.5, 10, 0.5, 10) is None


@pytest.fixture
def db(tmp_path):
    """alias expert: arm r1 with 40 rated answers (30 liked, 3 edited), arm r2 with 20 (8 liked); a web UI chat."""
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    for arm, n, liked, edited in (("r1", 40, 30, 3), ("r2", 20, 8, 0)):
        for i in range(n + 2):  # two answers per arm left unrated; every other request resends a first exchange
            history = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}] if i % 2 else []
            asked = [*history, {"role": "user", "content": "Q2"}]
            mid = store.record_conversation(asked, "answer", model=arm, alias="expert", arm=arm)
            if i < n:
                edit = "better" if i < edited else None
                store.record_feedback(mid, rating=1 if i < liked else -1, edited_content=edit)
    cid = store.start_conversation(model="sail")
    store.add_message(cid, "user", "Hi")
    store.record_feedback(store.add_message(cid, "assistant", "Hello", model="sail"), rating=1)
    store.close()
    return path


def test_stats_json_is_the_contract(db, capsys):
    assert main(["feedback", "stats", f"feedback_db={db}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["feedback_db"] == str(db.resolve())
    assert [a["alias"] for a in report["aliases"]] == ["expert", "(none)"]
    expert = report["aliases"][0]
    r1, r2 = expert["arms"]
    ci = [round(x, 4) for x in wilson_interval(30, 40)]
    assert r1 == {
        "arm": "r1", "requests": 42, "rated": 40, "thumbs_up": 30, "thumbs_up_rate": 0.75, "thumbs_up_ci": ci,
        "edited": 3, "edit_rate": 0.075, "edit_rate_ci": [round(x, 4) for x in wilson_interval(3, 40)], "turns": 1.5,
    }  # fmt: skip
    assert r2["arm"] == "r2" and r2["rated"] == 20 and r2["thumbs_up_rate"] == 0.4
    _, p = two_proportion_z(30, 40, 8, 20)
    assert expert["test"] == {
        "metric": "thumbs_up_rate", "arms": ["r1", "r2"], "difference": 0.35, "p_value": float(f"{p:.4g}"),
        "significant": True, "ratings_needed": 0,
    }  # fmt: skip
    none = report["aliases"][1]
    assert none["arms"][0]["arm"] == "sail" and none["arms"][0]["thumbs_up_rate"] == 1.0 and none["test"] is None


def test_stats_table_and_alias_filter(db, capsys):
    assert main(["feedback", "stats", f"feedback_db={db}", "alias=expert"]) == 0
    out = capsys.readouterr().out
    assert "alias expert" in out and "(none)" not in out
    assert "75.0% [" in out and "thumbs-up rate r1 - r2: +35.0 points" in out and "significant at 0.05" in out
    assert main(["feedback", "stats", f"feedback_db={db}", "alias=expret"]) == 1
    err = capsys.readouterr().err
    assert "no conversations for alias 'expret'" in err and "did you mean 'expert'?" in err
    assert main(["feedback", "stats", f"feedback_db={db.parent / 'none.sqlite'}"]) == 1
    assert "no feedback store at" in capsys.readouterr().err

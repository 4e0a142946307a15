"""Online A/B statistics from the feedback store: per alias and arm, how often answers are liked and edited, with
Wilson 95% intervals, and whether the two busiest arms differ (a two-proportion z-test) or how many more ratings
per arm it would take to tell.

    expertkit feedback stats alias=expert
    alias expert
      arm     requests  rated  thumbs up (95% CI)      edited (95% CI)         turns
      round1        43     40  75.0% [59.8, 85.8]      5.0% [1.4, 16.5]         1.00
      round2        15     12  83.3% [55.2, 95.3]      16.7% [4.7, 44.8]        1.00
      thumbs-up rate round1 - round2: -8.3 points, p = 0.548: not significant at 0.05 (about 160 more ratings per
      arm to tell, if the rates hold)

Rates are over rated answers (a thumbs up or down, or an edit, by their latest feedback). A request is a stored
answer; turns are the user turns of a conversation (a client that resends the history records longer ones).
Conversations that asked for no alias (the web UI's chat, a plain `serve`) are grouped under the alias `(none)`,
one arm per model: not a randomized A/B test, just the same figures side by side.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

from expertkit.core.errors import ExpertkitError

Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...
ALPHA = 0.05
NO_ALIAS = "(none)"
MAX_NEEDED = 10**9


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None without observations)."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exactly 0, not a rounding error's 1e-17
    return low, 1.0 if successes == n else min(1.0, center + half)


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p-value) of the pooled two-proportion z-test of k1/n1 against k2/n2."""
    return proportions_z(k1 / n1, n1, k2 / n2, n2)


def proportions_z(p1: float, n1: float, p2: float, n2: float) -> tuple[float, float]:
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (p1 - p2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def ratings_needed(p1: float, n1: int, p2: float, n2: int) -> int | None:
    """How many more ratings per arm would make the observed rates p1, p2 differ significantly at 0.05, were they to
    stay as observed (0: they already do; None: equal rates never do)."""
    if p1 == p2:
        return None

    def significant(m: int) -> bool:
        return proportions_z(p1, n1 + m, p2, n2 + m)[1] < ALPHA

    if significant(0):
        return 0
    low, high = 0, 1
    while not significant(high):
        low, high = high, high * 2
        if high > MAX_NEEDED:
            return None
    while high - low > 1:  # significant(high), not significant(low)
        mid = (low + high) // 2
        low, high = (low, mid) if significant(mid) else (mid, high)
    return high


def rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def interval(k: int, n: int) -> list[float] | None:
    ci = wilson_interval(k, n)
    return [round(ci[0], 4), round(ci[1], 4)] if ci else None


def arm_stats(row: dict[str, Any]) -> dict[str, Any]:
    rated = row["rated"] or 0
    up, edited = row["thumbs_up"] or 0, row["edited"] or 0
    return {
        "arm": row["arm"] or "(unknown)",
        "requests": row["requests"] or 0,
        "rated": rated,
        "thumbs_up": up,
        "thumbs_up_rate": rate(up, rated),
        "thumbs_up_ci": interval(up, rated),
        "edited": edited,
        "edit_rate": rate(edited, rated),
        "edit_rate_ci": interval(edited, rated),
        "turns": round((row["user_turns"] or 0) / row["conversations"], 2) if row["conversations"] else 0.0,
    }


def arm_test(arms: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The thumbs-up rates of the two rated arms with the most requests, compared."""
    rated = sorted((a for a in arms if a["rated"]), key=lambda a: (-a["requests"], a["arm"]))[:2]
    if len(rated) < 2:
        return None
    a, b = rated
    _, p_value = two_proportion_z(a["thumbs_up"], a["rated"], b["thumbs_up"], b["rated"])
    p1, p2 = a["thumbs_up"] / a["rated"], b["thumbs_up"] / b["rated"]
    return {
        "metric": "thumbs_up_rate",
        "arms": [a["arm"], b["arm"]],
        "difference": round(p1 - p2, 4),
        "p_value": float(f"{p_value:.4g}"),
        "significant": p_value < ALPHA,
        "ratings_needed": ratings_needed(p1, a["rated"], p2, b["rated"]),
    }


def collect_stats(db: Path, alias: str | None = None) -> dict[str, Any]:
    """The `feedback stats --json` object: {"feedback_db", "aliases": [{"alias", "arms": [...], "test"}]}."""
    from expertkit.core.feedback import FeedbackStore

    store = FeedbackStore(db)
    try:
        rows = store.arm_counts()
    finally:
        store.close()
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["alias"] or NO_ALIAS, []).append(arm_stats(row))
    if alias is not None and alias not in groups:
        close = difflib.get_close_matches(alias, sorted(groups), n=1, cutoff=0.6)
        known = ", ".join(sorted(groups)) or "none yet"
        raise ExpertkitError(
            f"no conversations for alias '{alias}' in {db}",
            hint=(f"did you mean '{close[0]}'? " if close else "") + f"aliases in the store: {known}",
        )
    aliases = []
    for name in sorted(groups, key=lambda n: (n == NO_ALIAS, n)):
        if alias is None or name == alias:
            arms = sorted(groups[name], key=lambda a: (-a["requests"], a["arm"]))
            aliases.append({"alias": name, "arms": arms, "test": arm_test(arms)})
    return {"feedback_db": str(Path(db).resolve()), "aliases": aliases}


def percent(value: float | None, ci: list[float] | None) -> str:
    if value is None or ci is None:
        return "-"
    return f"{value * 100:.1f}% [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]"


def format_stats(report: dict[str, Any]) -> str:
    """The human table of `feedback stats`."""
    lines = [f"feedback store: {report['feedback_db']}"]
    if not report["aliases"]:
        lines.append("no conversations recorded yet (serve with store_conversations=true, or chat in the web UI)")
    for group in report["aliases"]:
        width = max(len("arm"), *(len(a["arm"]) for a in group["arms"]))
        lines.append(f"alias {group['alias']}")
        lines.append(f"  {'arm':<{width}}  requests  rated  {'thumbs up (95% CI)':<22}  {'edited (95% CI)':<22}  turns")
        for a in group["arms"]:
            up, edit = percent(a["thumbs_up_rate"], a["thumbs_up_ci"]), percent(a["edit_rate"], a["edit_rate_ci"])
            lines.append(
                f"  {a['arm']:<{width}}  {a['requests']:>8}  {a['rated']:>5}  {up:<22}  {edit:<22}  {a['turns']:>5.2f}"
            )
        lines.append("  " + describe_test(group["test"]))
    return "\n".join(lines)


def describe_test(test: dict[str, Any] | None) -> str:
    if test is None:
        return "no test: fewer than two arms have rated answers"
    a, b = test["arms"]
    head = f"thumbs-up rate {a} - {b}: {test['difference'] * 100:+.1f} points, p = {test['p_value']:.3g}"
    if test["significant"]:
        return f"{head}: significant at 0.05"
    needed = test["ratings_needed"]
    if needed is None:
        return f"{head}: no difference to test"
    return f"{head}: not significant at 0.05 (about {needed} more ratings per arm to tell, if the rates hold)"

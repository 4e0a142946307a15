"""`GET /metrics` in Prometheus' text format, without a client library.

expertkit_requests_running 2              requests admitted and being generated (at most max_concurrency)
expertkit_requests_queued 0               admitted, waiting for a place in the batch
expertkit_requests_rejected_total 3       429s: the queue was full
expertkit_errors_total{type="rate_limit_error",status="429"} 3
expertkit_time_to_first_token_seconds_bucket{le="0.1"} 41   (a histogram: _bucket, _sum, _count)
expertkit_generated_tokens_total 5120     answer tokens; rate(...[1m]) in Prometheus is tokens/s
expertkit_generation_tokens_per_second 85.3   the same over the last 30 s, for a glance without Prometheus
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import AsyncIterator

from expertkit.engine.base import Delta

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WINDOW_S = 30.0


class Metrics:
    def __init__(self):
        self.rejected = 0
        self.errors: Counter[tuple[str, int]] = Counter()  # (type, status) -> count
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.finished = 0
        self.recent: deque[tuple[float, int]] = deque()  # (when finished, tokens), for tokens/s

    def count_error(self, type: str, status: int) -> None:
        if len(self.errors) < 100 or (type, status) in self.errors:  # bounded label set
            self.errors[(type, status)] += 1

    def observe_ttft(self, seconds: float) -> None:
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_counts[i] += 1
        self.ttft_sum += seconds
        self.ttft_count += 1

    async def observe(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        """Pass deltas through, timing the first one and counting the tokens the last one reports."""
        start, first = time.monotonic(), True
        try:
            async for d in deltas:
                if first and (d.text or d.reasoning or d.finish_reason):
                    self.observe_ttft(time.monotonic() - start)
                    first = False
                if d.usage is not None:
                    self.finished += 1
                    self.generated_tokens += d.usage.completion_tokens
                    self.prompt_tokens += d.usage.prompt_tokens
                    self.recent.append((time.monotonic(), d.usage.completion_tokens))
                yield d
        finally:
            await deltas.aclose()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - WINDOW_S:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / WINDOW_S

    def render(self, active: int, max_concurrency: int) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}"])
            lines.extend(
                f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
                for labels, value in samples
            )

        metric("expertkit_requests_running", "gauge", "Requests being generated.", [("", min(active, max_concurrency))])
        metric(
            "expertkit_requests_queued",
            "gauge",
            "Requests admitted and waiting for a place in the batch.",
            [("", max(active - max_concurrency, 0))],
        )
        metric(
            "expertkit_requests_rejected_total",
            "counter",
            "Requests refused with 429 (queue full).",
            [("", self.rejected)],
        )
        metric(
            "expertkit_requests_finished_total", "counter", "Generations that ran to their end.", [("", self.finished)]
        )
        metric(
            "expertkit_errors_total",
            "counter",
            "Error responses and error events, by type and HTTP status.",
            [(f'{{type="{t}",status="{s}"}}', n) for (t, s), n in sorted(self.errors.items())],
        )
        buckets = [(f'{{le="{b:g}"}}', n) for b, n in zip(TTFT_BUCKETS, self.ttft_counts)]
        buckets.append(('{le="+Inf"}', self.ttft_count))
        lines.extend(
            [
                "# HELP expertkit_time_to_first_token_seconds Seconds from a request's admission to its first text.",
                "# TYPE expertkit_time_to_first_token_seconds histogram",
                *(f"expertkit_time_to_first_token_seconds_bucket{labels} {n}" for labels, n in buckets),
                f"expertkit_time_to_first_token_seconds_sum {self.ttft_sum:g}",
                f"expertkit_time_to_first_token_seconds_count {self.ttft_count}",
            ]
        )
        metric("expertkit_generated_tokens_total", "counter", "Answer tokens generated.", [("", self.generated_tokens)])
        metric("expertkit_prompt_tokens_total", "counter", "Prompt tokens read.", [("", self.prompt_tokens)])
        metric(
            "expertkit_generation_tokens_per_second",
            "gauge",
            f"Answer tokens of requests finished in the last {WINDOW_S:g} s, per second.",
            [("", round(self.tokens_per_second(), 3))],
        )
        return "\n".join(lines) + "\n"

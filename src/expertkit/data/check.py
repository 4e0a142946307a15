"""`expertkit data check`: what the data looks like before spending GPU hours.

Per dataset: rows read, valid and invalid (every problem located: file:line, field, fix). Over the mix:
exact duplicates, and token lengths under the chat template against cutoff_len (how many examples get cut,
how many lose their whole answer). Exit code 1 when training would refuse this data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from expertkit.core.errors import ExpertkitError, Problem
from expertkit.core.schema import Conversation
from expertkit.data.config import DataConfig
from expertkit.data.load import LoadedDataset, load_datasets, placeholder_warning, require_usable

logger = logging.getLogger(__name__)
SHOWN_PROBLEMS = 20


@dataclass
class LengthStats:
    percentiles: dict[str, int]  # p50, p90, p99, max of whole-sequence tokens
    answer_percentiles: dict[str, int]  # the same for tokens that carry loss
    cut: int  # longer than cutoff_len
    no_answer_left: int  # nothing to learn after the cut: skipped by training


@dataclass
class CheckReport:
    cutoff_len: int
    datasets: list[LoadedDataset]
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, first seen at)
    lengths: LengthStats | None = None
    lengths_error: str = ""
    refusal: str = ""  # why training would refuse this data ("" when it would train)

    @property
    def ok(self) -> bool:
        return not self.refusal

    def format(self) -> str:
        lines = []
        for d in self.datasets:
            lines.append(
                f"dataset {d.name} ({d.format}, {d.path}): {d.total_rows} rows, "
                f"{len(d.conversations)} valid, {d.invalid_rows} invalid"
            )
            placeholders = placeholder_warning(d)
            if placeholders:
                lines.append(f"  warning: {placeholders}")
            for p in d.problems[:SHOWN_PROBLEMS]:
                lines.append(f"  - {p.format()}")
            if len(d.problems) > SHOWN_PROBLEMS:
                lines.append(f"  ... and {len(d.problems) - SHOWN_PROBLEMS} more problems")
        valid = sum(len(d.conversations) for d in self.datasets)
        lines.append(f"total: {valid} valid conversations")
        if self.duplicates:
            shown = ", ".join(f"{a} = {b}" for a, b in self.duplicates[:5])
            lines.append(
                f"exact duplicates: {len(self.duplicates)} ({shown}{', ...' if len(self.duplicates) > 5 else ''})"
            )
        else:
            lines.append("exact duplicates: none")
        if self.lengths:
            s = self.lengths
            fmt = lambda p: " ".join(f"{k} {v}" for k, v in p.items())  # noqa: E731
            lines.append(f"tokens per example: {fmt(s.percentiles)} (cutoff_len {self.cutoff_len})")
            lines.append(f"answer tokens per example: {fmt(s.answer_percentiles)}")
            lines.append(
                f"cut by cutoff_len: {s.cut} example(s); left with no answer token (skipped): {s.no_answer_left}"
            )
        elif self.lengths_error:
            lines.append(f"token lengths: not computed ({self.lengths_error})")
        lines.append(f"verdict: {'ready to train' if self.ok else 'training would refuse this data'}")
        if self.refusal:
            lines.append(f"  {self.refusal}")
        return "\n".join(lines)


def find_duplicates(conversations: list[Conversation]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    dups = []
    for conv in conversations:
        key = json.dumps([conv.to_dicts(), conv.tools], ensure_ascii=False)
        if key in seen:
            dups.append((conv.source, seen[key]))
        else:
            seen[key] = conv.source
    return dups


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(int(q * (len(v) - 1) + 0.5), len(v) - 1)]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": v[-1]}


def measure_lengths(conversations: list[Conversation], config: DataConfig) -> LengthStats:
    from expertkit.model.load import load_tokenizer
    from expertkit.model.render import render_conversation
    from expertkit.model.templates import apply_template

    tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    full, answers, cut, empty = [], [], 0, 0
    for conv in conversations:
        r = render_conversation(tokenizer, conv, None, config.mask_history, config.train_on_prompt)
        full.append(r.full_length)
        answers.append(r.trainable_tokens)
        if r.full_length > config.cutoff_len:
            cut += 1
            if not any(x != -100 for x in r.labels[: config.cutoff_len]):
                empty += 1
    return LengthStats(percentiles(full), percentiles(answers), cut, empty)


def run(config: DataConfig) -> CheckReport:
    datasets = load_datasets(config)
    report = CheckReport(config.cutoff_len, datasets)
    try:
        conversations = require_usable(datasets, config.max_invalid_ratio)
    except ExpertkitError as e:
        report.refusal = e.message.rstrip(":") + (f" ({e.hint})" if e.hint else "")
        conversations = [c for d in datasets for c in d.conversations]
    report.duplicates = find_duplicates(conversations)
    if conversations:
        try:
            report.lengths = measure_lengths(conversations, config)
        except ExpertkitError as e:
            report.lengths_error = str(e).replace("\n", " ")
            report.refusal = report.refusal or f"token lengths could not be measured: {report.lengths_error}"
        if report.lengths and report.lengths.no_answer_left == len(conversations):
            report.refusal = report.refusal or f"no example keeps an answer token within cutoff_len={config.cutoff_len}"
    return report


__all__ = ["CheckReport", "LengthStats", "Problem", "run"]

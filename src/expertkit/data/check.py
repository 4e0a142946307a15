"""`expertkit data check`: what the data looks like before spending GPU hours.

Per dataset: rows read, valid and invalid (every problem located: file:line, field, fix). Over the mix:
exact duplicates, and token lengths under the chat template against cutoff_len (how many examples get cut,
how many lose their whole answer). Exit code 1 when training would refuse this data.

Preference stages (`stage=dpo`, `rm`, `kto`) read their own data (`load_preference_datasets`) and measure the
prompt plus the longer answer, cut as LLaMA-Factory cuts pairs: how many pairs are cut, and how many lose a whole
answer (training drops those). KTO also counts desirable and undesirable answers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from expertkit.core.errors import ExpertkitError, Problem
from expertkit.core.schema import Conversation, PreferencePair, UnpairedExample
from expertkit.data.config import DataConfig
from expertkit.data.findings import Findings, find_findings
from expertkit.data.load import (
    LoadedDataset,
    load_datasets,
    load_preference_datasets,
    placeholder_warning,
    require_usable,
)
from expertkit.data.preference import PreferenceKind, preference_kind

logger = logging.getLogger(__name__)
SHOWN_PROBLEMS = 20


@dataclass
class LengthStats:
    percentiles: dict[str, int]  # p50, p90, p99, max of whole-sequence tokens
    answer_percentiles: dict[str, int]  # the same for tokens that carry loss
    cut: int  # longer than cutoff_len
    no_answer_left: int  # nothing to learn after the cut: skipped by training


# how the report names an item, its whole length and its answer, per kind of data
_WORDS = {
    None: ("conversations", "example", "tokens per example", "answer tokens per example", "left with no answer token"),
    "pairs": ("pairs", "pair", "tokens per pair (prompt + longer answer)", "answer tokens per pair (longer answer)",
              "left with an answer of no token"),
    "unpaired": ("examples", "example", "tokens per example (prompt + answer)", "answer tokens per example",
                 "left with no answer token"),
}  # fmt: skip


@dataclass
class CheckReport:
    cutoff_len: int
    datasets: list[LoadedDataset[Any]]
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (source, first seen at)
    lengths: LengthStats | None = None
    lengths_error: str = ""
    refusal: str = ""  # why training would refuse this data ("" when it would train)
    kind: PreferenceKind | None = None  # None: instruction data (sft); pairs (dpo, rm); unpaired (kto)
    labels: tuple[int, int] | None = None  # kto: (desirable, undesirable)
    findings: Findings | None = None  # near-duplicates and PII: what `data clean` would remove or mask

    @property
    def ok(self) -> bool:
        return not self.refusal

    def format(self) -> str:
        lines = []
        for d in self.datasets:
            lines.append(
                f"dataset {d.name} ({d.format}, {d.path}): {d.total_rows} rows, "
                f"{len(d.items)} valid, {d.invalid_rows} invalid"
            )
            placeholders = placeholder_warning(d)
            if placeholders:
                lines.append(f"  warning: {placeholders}")
            for p in d.problems[:SHOWN_PROBLEMS]:
                lines.append(f"  - {p.format()}")
            if len(d.problems) > SHOWN_PROBLEMS:
                lines.append(f"  ... and {len(d.problems) - SHOWN_PROBLEMS} more problems")
        items, item, full, answer, emptied = _WORDS[self.kind]
        valid = sum(len(d.items) for d in self.datasets)
        lines.append(f"total: {valid} valid {items}")
        if self.labels is not None:
            good, bad = self.labels
            lines.append(f"labels: {good} desirable, {bad} undesirable")
            if valid and not (good and bad):
                lines.append("  warning: only one kind of answer; KTO learns from desirable and undesirable ones")
        if self.duplicates:
            shown = ", ".join(f"{a} = {b}" for a, b in self.duplicates[:5])
            lines.append(
                f"exact duplicates: {len(self.duplicates)} ({shown}{', ...' if len(self.duplicates) > 5 else ''})"
            )
        else:
            lines.append("exact duplicates: none")
        if self.findings:
            lines += self.findings.format()
        if self.lengths:
            s = self.lengths
            fmt = lambda p: " ".join(f"{k} {v}" for k, v in p.items())  # noqa: E731
            lines.append(f"{full}: {fmt(s.percentiles)} (cutoff_len {self.cutoff_len})")
            lines.append(f"{answer}: {fmt(s.answer_percentiles)}")
            skipped = "skipped" if self.kind is None else "dropped"
            lines.append(f"cut by cutoff_len: {s.cut} {item}(s); {emptied} ({skipped}): {s.no_answer_left}")
        elif self.lengths_error:
            lines.append(f"token lengths: not computed ({self.lengths_error})")
        lines.append(f"verdict: {'ready to train' if self.ok else 'training would refuse this data'}")
        if self.refusal:
            lines.append(f"  {self.refusal}")
        return "\n".join(lines)


def find_duplicates(items: list[Conversation] | list[PreferencePair] | list[UnpairedExample]) -> list[tuple[str, str]]:
    """(source, first seen at) of each item equal to an earlier one in everything but its source."""
    seen: dict[str, str] = {}
    dups = []
    for item in items:
        if isinstance(item, Conversation):
            key = json.dumps([item.to_dicts(), item.tools], ensure_ascii=False)
        else:
            key = json.dumps({k: v for k, v in asdict(item).items() if k != "source"}, ensure_ascii=False)
        if key in seen:
            dups.append((item.source, seen[key]))
        else:
            seen[key] = item.source
    return dups


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(int(q * (len(v) - 1) + 0.5), len(v) - 1)]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": v[-1]}


def measure_lengths(conversations: list[Conversation], config: DataConfig) -> LengthStats:
    from expertkit.model.render import render_conversation

    tokenizer = _tokenizer(config)
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


def measure_preference_lengths(items: list[PreferencePair] | list[UnpairedExample], config: DataConfig) -> LengthStats:
    """Prompt + longer answer (a pair) or prompt + answer (KTO), cut as LLaMA-Factory cuts them."""
    from expertkit.model.render import cut_pair, render_pair, render_preference

    tokenizer = _tokenizer(config)
    full, answers, cut, empty = [], [], 0, 0
    for item in items:
        if isinstance(item, PreferencePair):
            r = render_preference(tokenizer, item)
            prompt_ids, chosen_ids, rejected_ids = r.prompt_ids, r.chosen_ids, r.rejected_ids
        else:
            prompt_ids, chosen_ids = render_pair(tokenizer, item.prompt, item.completion, item.tools, item.source)
            rejected_ids = chosen_ids
        longer = max(len(chosen_ids), len(rejected_ids))
        full.append(len(prompt_ids) + longer)
        answers.append(longer)
        kept = cut_pair(prompt_ids, chosen_ids, rejected_ids, config.cutoff_len)
        cut += kept.truncated
        empty += kept.empty_answer
    return LengthStats(percentiles(full), percentiles(answers), cut, empty)


def token_lengths(
    items: list[Conversation] | list[PreferencePair] | list[UnpairedExample],
    model_name_or_path: str,
    template: str | None = None,
    trust_remote_code: bool = False,
) -> list[int]:
    """Each item's whole length in tokens under the chat template, as training measures it: a conversation; a pair's
    prompt + longer answer; a KTO example's prompt + answer (`feedback export cutoff_len=` leaves out the longer)."""
    from expertkit.model.load import load_tokenizer
    from expertkit.model.render import render_conversation, render_pair, render_preference
    from expertkit.model.templates import apply_template

    tokenizer = load_tokenizer(model_name_or_path, trust_remote_code)
    apply_template(tokenizer, template)
    lengths = []
    for item in items:
        if isinstance(item, Conversation):
            lengths.append(render_conversation(tokenizer, item, None).full_length)
        elif isinstance(item, PreferencePair):
            r = render_preference(tokenizer, item)
            lengths.append(len(r.prompt_ids) + max(len(r.chosen_ids), len(r.rejected_ids)))
        else:
            prompt_ids, answer_ids = render_pair(tokenizer, item.prompt, item.completion, item.tools, item.source)
            lengths.append(len(prompt_ids) + len(answer_ids))
    return lengths


def _tokenizer(config: DataConfig):
    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
    apply_template(tokenizer, config.template)
    return tokenizer


def run(config: DataConfig) -> CheckReport:
    """Check the data of a config for its stage (`config.stage`, sft when the config has none)."""
    kind = preference_kind(getattr(config, "stage", "sft"))
    datasets = load_datasets(config) if kind is None else load_preference_datasets(config, kind)
    report = CheckReport(config.cutoff_len, datasets, kind=kind)
    try:
        items = require_usable(datasets, config.max_invalid_ratio)
    except ExpertkitError as e:
        report.refusal = e.message.rstrip(":") + (f" ({e.hint})" if e.hint else "")
        items = [item for d in datasets for item in d.items]
    report.duplicates = find_duplicates(items)
    report.findings = find_findings(items)
    if kind == "unpaired":
        good = sum(1 for x in items if x.label)
        report.labels = (good, len(items) - good)
    if items:
        try:
            report.lengths = (
                measure_lengths(items, config) if kind is None else measure_preference_lengths(items, config)
            )
        except ExpertkitError as e:
            report.lengths_error = str(e).replace("\n", " ")
            report.refusal = report.refusal or f"token lengths could not be measured: {report.lengths_error}"
        if report.lengths and report.lengths.no_answer_left == len(items):
            what = "example keeps an answer token" if kind is None else f"{_WORDS[kind][1]} keeps its answers"
            report.refusal = report.refusal or f"no {what} within cutoff_len={config.cutoff_len}"
    return report


__all__ = ["CheckReport", "LengthStats", "Problem", "run"]

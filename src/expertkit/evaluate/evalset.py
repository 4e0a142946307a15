"""The eval set: question/reference items (a JSONL of questions, or any training-data format) or chosen/rejected
pairs (a ranking eval set), and the bundled forgetting probe.

    items = load_eval_set(config)          # [EvalItem(id, messages, reference), ...]
    pairs = load_pair_set(config)          # None when the eval set is question/reference
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from expertkit.core.errors import DataError, Problem
from expertkit.evaluate.config import EvalConfig


@dataclass
class EvalItem:
    id: str
    messages: list[dict]  # the conversation up to and including the question
    reference: str
    source: str | None = None  # the passage the answer comes from (`context` in eval_file): the judge's evidence

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class PairItem:
    """One row of a ranking eval set: a prompt with a preferred and a rejected answer."""

    id: str
    messages: list[dict]  # the prompt: everything before the answer
    chosen: str
    rejected: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""


def load_eval_set(config: EvalConfig) -> list[EvalItem]:
    """Question/reference pairs from eval_file (JSONL with question/reference) or any training-data format; with
    do_predict the reference may be missing (it is then '')."""
    if config.eval_file and is_qa_jsonl(Path(config.eval_file)):
        items = read_qa_jsonl(Path(config.eval_file), need_reference=not config.do_predict)
    else:
        items = from_training_data(config)
    if config.max_samples and len(items) > config.max_samples and config.do_predict:
        items = items[: config.max_samples]  # LLaMA-Factory predicts on the first max_samples rows
    elif config.max_samples and len(items) > config.max_samples:
        import random

        keep = sorted(random.Random(config.seed).sample(range(len(items)), config.max_samples))
        items = [items[i] for i in keep]
    if not items:
        raise DataError("the eval set has no questions", hint="check eval_file / eval_dataset")
    return items


def first_row(path: Path) -> object:
    """The first non-blank line of a JSONL file, parsed (None when it is not JSON)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except ValueError:
                    return None
    return None


def load_pair_set(config: EvalConfig) -> list[PairItem] | None:
    """The chosen/rejected pairs of a ranking eval set; None when the eval set is question/reference."""
    if config.eval_file:
        path = Path(config.eval_file)
        if not path.is_file():
            return None  # load_eval_set says it does not exist
        row = first_row(path)
        if not (isinstance(row, dict) and "chosen" in row and "rejected" in row):
            return None
        pairs = read_pair_jsonl(path) if "question" in row else pairs_from_preference_data(config, [str(path)])
    else:
        from expertkit.data.registry import resolve_dataset

        ranking = [n for n in config.eval_dataset if resolve_dataset(n, config.dataset_dir).ranking]
        if not ranking:
            return None
        if len(ranking) < len(config.eval_dataset):
            others = [n for n in config.eval_dataset if n not in ranking]
            raise DataError(
                f"eval_dataset mixes ranking datasets ({', '.join(ranking)}) with question/reference ones "
                f"({', '.join(others)})",
                hint="evaluate the pairs (metrics=preference) and the questions in two evals",
            )
        pairs = pairs_from_preference_data(config, config.eval_dataset)
    if config.max_samples and len(pairs) > config.max_samples:
        import random

        keep = sorted(random.Random(config.seed).sample(range(len(pairs)), config.max_samples))
        pairs = [pairs[i] for i in keep]
    if not pairs:
        raise DataError("the eval set has no chosen/rejected pairs", hint="check eval_file / eval_dataset")
    return pairs


def read_pair_jsonl(path: Path) -> list[PairItem]:
    """Rows of {"question", "chosen", "rejected"} text (`system`, `id` optional); every bad line is located."""

    def make(row: dict, where: str, n: int) -> PairItem | Problem:
        question = row.get("question", row.get("prompt"))
        fields = (("question", question), ("chosen", row.get("chosen")), ("rejected", row.get("rejected")))
        bad = [k for k, v in fields if not isinstance(v, str) or not v]
        if bad:
            return Problem("missing or not text", where, ", ".join(bad),
                           'write {"question": "...", "chosen": "...", "rejected": "..."}')  # fmt: skip
        return PairItem(str(row.get("id", n)), prompt_messages(row, question), row["chosen"], row["rejected"])

    return read_jsonl_items(path, make)


def read_jsonl_items(path: Path, make) -> list:
    """One item per JSON line (`make(row, where, line_number)` builds it or returns the Problem); every bad line is
    reported at once, and ids must be unique."""
    items, problems = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except ValueError as e:
                problems.append(Problem(f"not JSON ({e.msg})", where, hint="one JSON object per line"))
                continue
            item = make(row, where, n) if isinstance(row, dict) else Problem(
                "not a JSON object", where, hint='write {"question": ..., ...}'
            )  # fmt: skip
            (problems if isinstance(item, Problem) else items).append(item)
    if problems:
        raise DataError(f"{len(problems)} bad line(s) in {path}:", problems=problems)
    ids = [i.id for i in items]
    if len(set(ids)) < len(ids):
        raise DataError(f"{path}: two lines share an id", hint="give every line a unique id, or none")
    return items


def prompt_messages(row: dict, question: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*messages, {"role": "user", "content": question}]


def pairs_from_preference_data(config: EvalConfig, names: list[str]) -> list[PairItem]:
    """Pairs from any format DPO reads (TRL prompt/chosen/rejected, alpaca or sharegpt ranking); no bad row passes."""
    from expertkit.data.config import DataConfig
    from expertkit.data.load import load_preference_datasets

    data = DataConfig.model_construct(
        dataset=names, dataset_dir=config.dataset_dir, max_samples=None, seed=config.seed, max_invalid_ratio=0.0
    )
    loaded = load_preference_datasets(data, "pairs")
    problems = [p for d in loaded for p in d.problems]
    if problems:
        raise DataError(f"{len(problems)} bad row(s) in the ranking eval set:", problems=problems)
    items = []
    for d in loaded:
        for p in d.items:
            messages = [{"role": m.role, "content": m.content} for m in p.prompt]
            items.append(PairItem(p.source or str(len(items)), messages, p.chosen.content, p.rejected.content))
    return items


def pair_metrics(config: EvalConfig) -> EvalConfig:
    """A ranking eval set has no reference answers: only preference applies (the default when metrics is unset)."""
    if "metrics" not in config.model_fields_set:
        return config.model_copy(update={"metrics": ["preference"]})
    others = [m for m in config.metrics if m != "preference"]
    if others:
        raise DataError(
            f"the eval set is chosen/rejected pairs, which has no reference answers for metrics {', '.join(others)}",
            hint="use metrics=preference with a ranking eval set, and a question/reference set for the others",
        )
    return config


def is_qa_jsonl(path: Path) -> bool:
    if not path.is_file():
        raise DataError(f"eval_file '{path}' does not exist", hint="give a JSONL file of question/reference lines")
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and "question" in row
    return False


def read_qa_jsonl(path: Path, need_reference: bool = True) -> list[EvalItem]:
    """`{"question", "reference"}` lines (`answer` for reference; `system`, `id`, `context` optional); without
    need_reference (batch prediction) a line may give the question alone."""

    def make(row: dict, where: str, n: int) -> EvalItem | Problem:
        question, reference = row.get("question"), row.get("reference", row.get("answer"))
        checked = [("question", question)] + ([("reference", reference)] if need_reference or reference else [])
        bad = [k for k, v in checked if not isinstance(v, str) or not v]
        if bad:
            return Problem("missing or not text", where, ", ".join(bad),
                           'write {"question": "...", "reference": "..."}')  # fmt: skip
        source = row.get("context") if isinstance(row.get("context"), str) and row.get("context") else None
        return EvalItem(str(row.get("id", n)), prompt_messages(row, question), reference or "", source)

    return read_jsonl_items(path, make)


def from_training_data(config: EvalConfig) -> list[EvalItem]:
    """The last assistant turn of each conversation is the reference; what comes before is the prompt."""
    from expertkit.data.config import DataConfig
    from expertkit.data.load import load_datasets, require_usable

    names = [config.eval_file] if config.eval_file else config.eval_dataset
    data = DataConfig.model_construct(
        dataset=names, dataset_dir=config.dataset_dir, max_samples=None, seed=config.seed, max_invalid_ratio=0.1
    )
    conversations = require_usable(load_datasets(data, prompts=config.do_predict), 0.1)
    items = []
    for i, c in enumerate(conversations):
        messages = c.to_dicts()
        if messages[-1]["role"] != "assistant":  # a question without its answer (do_predict reads those)
            items.append(EvalItem(str(i), messages, ""))
            continue
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        items.append(EvalItem(str(i), messages[:last], messages[last]["content"]))
    return items


def load_probe_items() -> list[EvalItem]:
    from expertkit.evaluate.probe import load_probe

    return [
        EvalItem(f"probe-{p['id']}", [{"role": "user", "content": p["question"]}], p["answer"]) for p in load_probe()
    ]

"""Keys of `expertkit eval`: the candidates to compare, the eval set, the metrics, the judge and where to write.

    # examples/eval/identity_eval.yaml
    eval_file: data/held_out.jsonl      # {"question": ..., "reference": ...} per line (or eval_dataset=...)
    candidates:
      - {name: base,  model_name_or_path: saves/demo/model}
      - {name: tuned, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora}
      - {name: tuned+rag, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora, kb_dir: kb}
    output_dir: saves/demo/eval

Without `candidates`, `model_name_or_path` (+ `adapter_name_or_path`) on the command line make them: the base, and
the base + adapter ("tuned") when an adapter is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig
from expertkit.data.config import split_list
from expertkit.engine.config import QuantizationKeys  # the engines load a base quantised with these keys

TEXT_METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact", "contains"]
ALL_METRICS = [*TEXT_METRICS, "eval_loss", "preference", "judge", "pairwise", "hallucination"]
DEFAULT_METRICS = [*TEXT_METRICS, "eval_loss"]


class Candidate(StageConfig):
    """One model under test: a local model (base, + adapter, merged) or an OpenAI-compatible endpoint, with or without
    retrieval."""

    name: str
    """The candidate's name in the report (base, tuned, tuned+rag, ...)."""

    model_name_or_path: str | None = None
    """Local model folder (base or merged export). Leave unset with api_base."""

    adapter_name_or_path: str | None = None
    """A LoRA adapter folder (a training run's output_dir) applied on model_name_or_path."""

    template: str | None = None
    """Chat template (unset: the tokenizer's own, or the run's)."""

    api_base: str | None = None
    """An OpenAI-compatible endpoint's /v1 URL instead of a local model (Ollama, vLLM, DeepSeek, expertkit serve)."""

    api_key: str | None = Field(None, repr=False)
    """The endpoint's key (or OPENAI_API_KEY)."""

    model: str | None = None
    """The endpoint's model name (unset: its first)."""

    kb_dir: str | None = None
    """Answer with retrieval from this knowledge base (`expertkit kb add ...`): the question's top_k chunks are given as
    numbered sources, as `expertkit ask` does."""

    web: bool = False
    """Also search the web for each question (as `expertkit ask web=true` does); off by default: evals should be
    repeatable."""

    top_k: int = Field(5, ge=1, le=100)
    """Chunks retrieved per question with kb_dir."""

    @model_validator(mode="after")
    def _one_model(self) -> Candidate:
        if bool(self.model_name_or_path) == bool(self.api_base):
            raise ValueError(f"candidate '{self.name}': give model_name_or_path (local) or api_base (an endpoint)")
        if self.web and not self.kb_dir:
            raise ValueError(f"candidate '{self.name}': web=true needs a kb_dir to index the pages into")
        return self

    @property
    def retrieval(self) -> bool:
        return bool(self.kb_dir)


class EvalConfig(QuantizationKeys):
    candidates: list[Candidate] = Field(default_factory=list)
    """The models to compare (a YAML list; see docs/evaluate.md). The first is the baseline the others are compared
    with."""

    model_name_or_path: str | None = None
    """Without candidates: the base model; with adapter_name_or_path the candidates are `base` and `tuned`."""

    adapter_name_or_path: str | None = None
    """Without candidates: the adapter (run folder) of the `tuned` candidate."""

    template: str | None = None
    """Without candidates: the chat template of both."""

    eval_file: str | None = None
    """Question/reference JSONL (`{"question": ..., "reference": ...}` per line; `id` optional), or any file
    expertkit reads as training data (alpaca, sharegpt, openai): the last assistant turn is the reference. A file of
    chosen/rejected pairs (`{"question" or "prompt": ..., "chosen": ..., "rejected": ...}`, or any pair format DPO
    reads) is a ranking eval set: metrics=preference only, nothing is generated."""

    eval_dataset: list[str] = Field(default_factory=list)
    """LLaMA-Factory style: dataset names from dataset_dir/dataset_info.json (comma list). Entries with
    `ranking: true` make a ranking eval set (chosen/rejected pairs, metrics=preference); do not mix the two kinds."""

    dataset_dir: str = "data"
    """Folder holding dataset_info.json (with eval_dataset)."""

    max_samples: int | None = Field(None, ge=1)
    """Evaluate on at most this many questions (a fixed, seeded sample)."""

    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Comma list of: rouge-1, rouge-2, rouge-l, bleu-4, exact, contains, eval_loss (local models: loss and perplexity
    of the references), preference (local models, on a chosen/rejected eval set: % of pairs where the chosen answer
    is the likelier, and the mean log-probability margin chosen - rejected; the default on such a set),
    judge (rubric 1-10), pairwise (each candidate vs the first, judged both ways round),
    hallucination (judge checks each answer against the reference or retrieved context). judge, pairwise and
    hallucination need judge_base_url."""

    probe: bool = True
    """Also ask the bundled general-knowledge probe (English and Chinese): did tuning make the model forget?"""

    judge_base_url: str | None = None
    """The judge: any OpenAI-compatible /v1 URL (a strong model: DeepSeek, Qwen-Max, GPT-4o, a local Ollama ...)."""

    judge_model: str | None = None
    """The judge's model name (unset: its first)."""

    judge_api_key: str | None = Field(None, repr=False)
    """The judge's key (or OPENAI_API_KEY)."""

    output_dir: str | None = None
    """Where metrics.json, predictions/<candidate>.jsonl (written as they come: an interrupted eval resumes),
    report.html and charts/ go. Unset: `eval/` inside the run folder of the first candidate with an adapter (the
    eval stays with the run), else saves/eval."""

    max_new_tokens: int = Field(256, ge=1)
    """Longest answer per question."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """0 (the default) is greedy: the same model gives the same answers."""

    seed: int = 42
    """Sampling seed and the seed of the max_samples sample."""

    concurrency: int = Field(16, ge=1, le=256)
    """Questions in flight at once per candidate (the local engine batches them)."""

    max_concurrency: int = Field(16, ge=1)
    """Local models: requests decoded together in one batch."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Local models' weights dtype."""

    @field_validator("metrics", "eval_dataset", mode="before")
    @classmethod
    def _comma_list(cls, v):
        return split_list(v)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(ALL_METRICS)}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> EvalConfig:
        if not self.candidates and not self.model_name_or_path:
            raise ValueError("no candidates: give a candidates list, or model_name_or_path (and adapter_name_or_path)")
        if self.candidates and (self.model_name_or_path or self.adapter_name_or_path):
            raise ValueError("give either candidates or model_name_or_path/adapter_name_or_path, not both")
        names = [c.name for c in self.resolved_candidates()]
        if len(set(names)) < len(names):
            raise ValueError(f"two candidates share a name: {', '.join(names)}")
        if bool(self.eval_file) == bool(self.eval_dataset):
            raise ValueError("give the eval set as eval_file=FILE or eval_dataset=NAME (with dataset_dir), one of them")
        judged = [m for m in self.metrics if m in ("judge", "pairwise", "hallucination")]
        if judged and not self.judge_base_url:
            raise ValueError(f"metrics {', '.join(judged)} need a judge: set judge_base_url=http://.../v1")
        return self

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        run = next((c.adapter_name_or_path for c in self.resolved_candidates() if c.adapter_name_or_path), None)
        return Path(run) / "eval" if run else Path("saves/eval")

    def resolved_candidates(self) -> list[Candidate]:
        if self.candidates:
            return list(self.candidates)
        base = Candidate(name="base", model_name_or_path=self.model_name_or_path, template=self.template)
        if not self.adapter_name_or_path:
            return [base]
        name = Path(self.adapter_name_or_path.rstrip("/")).name
        tuned = Candidate(
            name="tuned" if name != "base" else "tuned-adapter",
            model_name_or_path=self.model_name_or_path,
            adapter_name_or_path=self.adapter_name_or_path,
            template=self.template,
        )
        return [base, tuned]

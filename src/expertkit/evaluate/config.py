"""Keys of `expertkit eval`: the candidates to compare, the eval set, the metrics, the judge and where to write.

    # examples/eval/identity_eval.yaml
    eval_file: data/held_out.jsonl      # {"question": ..., "reference": ...} per line (or eval_dataset=...)
    candidates:
      - {name: base,  model_name_or_path: saves/demo/model}
      - {name: tuned, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora}
      - {name: tuned+rag, model_name_or_path: saves/demo/model, adapter_name_or_path: saves/demo/lora, kb_dir: kb}
    output_dir: saves/demo/eval

Without `candidates`, `model_name_or_path` (+ `adapter_name_or_path`) on the command line make them: the base, and
the base + adapter ("tuned") when an adapter is given; with engine=openai, `base_url` and `model` do (one candidate
per served model named).

`engine` picks what generates the answers, as for chat and serve: transformers here, vLLM here (engine=vllm), or a
running OpenAI-compatible server (engine=openai).

`do_predict: true` is LLaMA-Factory's batch prediction (its `*_predict.yaml` runs as it is): the model (+ adapter)
answers the eval set, whose rows need no reference, into output_dir/generated_predictions.jsonl; no metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig
from expertkit.data.config import split_list
from expertkit.engine.config import InferBackendKey, QuantizationKeys

EngineName = Literal["transformers", "vllm", "openai"]
DEFAULT_CONCURRENCY = 16  # questions in flight per candidate (and judge requests) when `concurrency` is unset

TEXT_METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact", "contains"]
ALL_METRICS = [*TEXT_METRICS, "eval_loss", "preference", "judge", "pairwise", "hallucination"]
DEFAULT_METRICS = [*TEXT_METRICS, "eval_loss"]

# Keys of LLaMA-Factory's predict YAMLs (examples/train_lora/*_predict.yaml) that eval accepts and ignores: they
# tune LLaMA-Factory's trainer, not what is predicted. Warned once, not refused.
EVAL_LF_UNSUPPORTED = frozenset(
    """bf16 cutoff_len dataloader_num_workers ddp_timeout do_sample finetuning_type flash_attn fp16 infer_dtype
    logging_steps overwrite_cache overwrite_output_dir per_device_eval_batch_size plot_loss
    preprocessing_num_workers report_to stage trust_remote_code""".split()
)


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

    engine: EngineName | None = None
    """What generates this candidate's answers (unset: the eval's `engine`): transformers or vllm run
    model_name_or_path here; openai asks api_base (or the eval's base_url) for `model`."""

    @model_validator(mode="after")
    def _one_model(self) -> Candidate:
        if self.model_name_or_path and self.api_base:
            raise ValueError(f"candidate '{self.name}': give model_name_or_path (local) or api_base (an endpoint)")
        if self.engine == "openai" and self.model_name_or_path:
            raise ValueError(
                f"candidate '{self.name}': engine=openai asks a server, it runs no model_name_or_path: give api_base "
                "(or the eval's base_url) and model"
            )
        if self.api_base and self.engine in ("transformers", "vllm"):
            raise ValueError(
                f"candidate '{self.name}': engine={self.engine} runs model_name_or_path here, not api_base"
            )
        if self.web and not self.kb_dir:
            raise ValueError(f"candidate '{self.name}': web=true needs a kb_dir to index the pages into")
        return self

    @property
    def retrieval(self) -> bool:
        return bool(self.kb_dir)

    @property
    def local(self) -> bool:
        """Runs here (transformers or vllm) rather than behind an endpoint."""
        return bool(self.model_name_or_path)


class EvalConfig(InferBackendKey, QuantizationKeys):
    lf_unsupported = EVAL_LF_UNSUPPORTED
    lf_refused = {
        "stage": ("sft", "predicts with another training stage's setup", "drop the key, or set stage: sft"),
    }
    lf_differs = {
        "temperature": "LLaMA-Factory's is 0.95 (sampled); 0 here: greedy, repeatable answers.",
        "max_samples": "LLaMA-Factory takes the first rows, as do_predict here; an eval takes a seeded sample.",
    }

    candidates: list[Candidate] = Field(default_factory=list)
    """The models to compare (a YAML list; see docs/evaluate.md). The first is the baseline the others are compared
    with."""

    model_name_or_path: str | None = None
    """Without candidates: the base model; with adapter_name_or_path the candidates are `base` and `tuned`."""

    adapter_name_or_path: str | None = None
    """Without candidates: the adapter (run folder) of the `tuned` candidate."""

    template: str | None = None
    """Without candidates: the chat template of both."""

    engine: EngineName = "transformers"
    """What generates the answers (a candidate's own `engine` or api_base wins). transformers: here, batched;
    vllm: here on vLLM (`pip install vllm` on a GPU machine), each candidate's whole eval set in flight at once,
    adapters as LoRA modules; openai: a running OpenAI-compatible server at base_url (expertkit serve, vllm serve,
    Ollama ...), `concurrency` requests in flight. eval_loss and preference need engine=transformers."""

    base_url: str | None = None
    """engine=openai: the server's /v1 URL (e.g. http://127.0.0.1:8000/v1); also the endpoint of candidates that give
    `model` without api_base."""

    api_key: str | None = Field(None, repr=False)
    """engine=openai: the server's key (or OPENAI_API_KEY); candidates without their own api_key use it."""

    model: list[str] = Field(default_factory=list)
    """engine=openai without candidates: the served model names to evaluate (comma list; one candidate each, named
    after it; unset: the server's first model, as candidate `openai`)."""

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
    """Evaluate on at most this many questions (a fixed, seeded sample; with do_predict the first ones)."""

    do_predict: bool = False
    """Batch prediction (LLaMA-Factory's `do_predict`): answer the eval set, whose rows need no reference, into
    output_dir/generated_predictions.jsonl (`prompt`, `predict`, `label` per line); no metrics, no probe, no report.
    Without candidates only the adapter's model answers (the base when there is no adapter)."""

    predict_with_generate: bool = True
    """With do_predict: generate the answers (LLaMA-Factory's key; expertkit always generates, false is refused)."""

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

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling (with temperature > 0): sample from the smallest set of tokens holding this probability."""

    seed: int = 42
    """Sampling seed and the seed of the max_samples sample."""

    concurrency: int | None = Field(None, ge=1)
    """Questions in flight at once per candidate (the local engine batches them; an endpoint gets that many requests
    at once; also the judge's requests in flight). Unset: 16; engine=vllm: the whole eval set (vLLM schedules it).
    """

    max_concurrency: int | None = Field(None, ge=1)
    """Local models: requests decoded together in one batch. Unset: 16; engine=vllm: 256 (vLLM's max_num_seqs)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Local models' weights dtype (engine=vllm: auto is vLLM's own, 16-bit)."""

    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """engine=vllm: the share of each GPU's memory vLLM may take for weights, activations and its KV cache."""

    tensor_parallel_size: int = Field(1, ge=1)
    """engine=vllm: GPUs to split the model over (tensor parallel), on this machine."""

    max_model_len: int | None = Field(None, ge=1)
    """engine=vllm: the longest prompt + answer, in tokens; unset: the model's own context."""

    vllm_config: dict[str, Any] = Field(default_factory=dict)
    """engine=vllm: more of vLLM's engine arguments (`AsyncEngineArgs`), applied last, e.g.
    `vllm_config='{enforce_eager: true}'`."""

    @field_validator("metrics", "eval_dataset", "model", mode="before")
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
        self._check_engine()
        if self.do_predict and not self.predict_with_generate:
            raise ValueError("do_predict generates the answers: drop predict_with_generate=false")
        if not self.candidates and not self.model_name_or_path and self.engine != "openai":
            raise ValueError(
                "no candidates: give a candidates list, or model_name_or_path (and adapter_name_or_path), or "
                "engine=openai base_url=http://.../v1 (and model=...)"
            )
        if self.candidates and (self.model_name_or_path or self.adapter_name_or_path or self.model):
            raise ValueError("give either candidates or model_name_or_path/adapter_name_or_path/model, not both")
        names = [c.name for c in self.resolved_candidates()]
        if len(set(names)) < len(names):
            raise ValueError(f"two candidates share a name: {', '.join(names)}")
        if bool(self.eval_file) == bool(self.eval_dataset):
            raise ValueError("give the eval set as eval_file=FILE or eval_dataset=NAME (with dataset_dir), one of them")
        judged = [m for m in self.metrics if m in ("judge", "pairwise", "hallucination")]
        if judged and not self.judge_base_url and not self.do_predict:
            raise ValueError(f"metrics {', '.join(judged)} need a judge: set judge_base_url=http://.../v1")
        return self

    def _check_engine(self) -> None:
        if self.engine == "openai" and not self.candidates:
            if not self.base_url:
                raise ValueError("engine=openai needs base_url, e.g. base_url=http://127.0.0.1:8000/v1")
            if self.model_name_or_path or self.adapter_name_or_path:
                raise ValueError(
                    "engine=openai asks a running server and loads no model here: give base_url and model=NAME "
                    "(the names the server serves) instead of model_name_or_path / adapter_name_or_path"
                )
        if self.model and self.engine != "openai":
            raise ValueError("model names models a server serves: give engine=openai base_url=http://.../v1 with it")
        unplaced = [c.name for c in self.candidates if not (c.model_name_or_path or c.api_base)]
        if unplaced and not self.base_url:
            raise ValueError(
                f"candidate(s) {', '.join(unplaced)} give no model_name_or_path or api_base: give one, or the eval's "
                "base_url (engine=openai) for their `model`"
            )
        local = [c.name for c in self.candidates if c.model_name_or_path and not c.engine]
        if self.engine == "openai" and local:
            raise ValueError(
                f"engine=openai, but candidate(s) {', '.join(local)} give model_name_or_path: give them engine: "
                "transformers (or vllm) to run them here, or model (and api_base) to ask a server"
            )

    def engine_of(self, c: Candidate) -> EngineName:
        """What generates a resolved candidate's answers."""
        return "openai" if not c.model_name_or_path else (c.engine or self.engine)

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        run = next((c.adapter_name_or_path for c in self.resolved_candidates() if c.adapter_name_or_path), None)
        folder = "predict" if self.do_predict else "eval"
        return Path(run) / folder if run else Path("saves") / folder

    def resolved_candidates(self) -> list[Candidate]:
        """The candidates, each local one with its engine set and each endpoint with its api_base (and key)."""
        if self.candidates:
            return [self.placed(c) for c in self.candidates]
        if self.engine == "openai":
            return [Candidate(name=m, api_base=self.base_url, api_key=self.api_key, model=m) for m in self.model] or [
                Candidate(name="openai", api_base=self.base_url, api_key=self.api_key)
            ]
        base = Candidate(name="base", model_name_or_path=self.model_name_or_path, template=self.template)
        if not self.adapter_name_or_path:
            return [self.placed(base)]
        if self.do_predict:  # LLaMA-Factory predicts with the adapter only
            tuned = base.model_copy(update={"name": "tuned", "adapter_name_or_path": self.adapter_name_or_path})
            return [self.placed(tuned)]
        name = Path(self.adapter_name_or_path.rstrip("/")).name
        tuned = Candidate(
            name="tuned" if name != "base" else "tuned-adapter",
            model_name_or_path=self.model_name_or_path,
            adapter_name_or_path=self.adapter_name_or_path,
            template=self.template,
        )
        return [self.placed(base), self.placed(tuned)]

    def placed(self, c: Candidate) -> Candidate:
        if c.model_name_or_path:
            return c.model_copy(update={"engine": c.engine or self.engine})
        return c.model_copy(update={"api_base": c.api_base or self.base_url, "api_key": c.api_key or self.api_key})

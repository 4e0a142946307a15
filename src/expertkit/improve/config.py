"""Keys of `expertkit promote` (the gate) and `expertkit improve` (one round of the loop as one command).

    expertkit promote candidate=saves/round2 alias=expert models=models.yaml eval=eval.yaml
    expertkit promote candidate=saves/round2 alias=expert models=models.yaml eval=eval.yaml canary=0.1
    expertkit promote --rollback alias=expert models=models.yaml
    expertkit improve examples/improve/improve.yaml

Each field's docstring is its documentation (`--help`, `expertkit config keys promote|improve`, docs/improve.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from expertkit.core.config import StageConfig, split_list

# gate metrics where lower is better; every other metric is better higher
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity", "hallucination_rate"})

# the eval metric that produces each gate metric (rouge-l is produced by rouge-l, judge_overall by judge ...)
EVAL_METRIC_OF = {
    "eval_loss": "eval_loss",
    "perplexity": "eval_loss",
    "hallucination_rate": "hallucination",
    "judge_accuracy": "judge",
    "judge_expertise": "judge",
    "judge_usefulness": "judge",
    "judge_overall": "judge",
}
GATE_METRICS = ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact", "contains", *EVAL_METRIC_OF]


class GateConfig(StageConfig):
    """The keys `promote` and `improve` share: what is served, the eval, the thresholds."""

    models: str
    """The models file the server serves (`expertkit serve models=FILE`); rewritten atomically on a promotion."""

    alias: str
    """The alias to promote into: the candidate is compared with what it serves now (with A/B arms: the heaviest)."""

    eval: str | None = None
    """An `expertkit eval` YAML (eval_file or eval_dataset, metrics, judge, max_new_tokens ...); its candidates and
    output_dir are replaced by the served model and the candidate. Required to promote (not for --rollback)."""

    metrics: list[str] = Field(default_factory=lambda: ["rouge-l", "eval_loss"])
    """The metrics the candidate must not be worse on (comma list): rouge-1, rouge-2, rouge-l, bleu-4, exact,
    contains, eval_loss, perplexity (lower is better), judge_overall (and judge_accuracy, ...), hallucination_rate
    (lower is better). The eval computes them even when its own YAML does not list them."""

    tolerance: float | dict[str, float] = 0.0
    """How much worse than the served model a metric may be and still pass, in the metric's own units (ROUGE 0-100,
    eval_loss in nats): one number for all, or {metric: number}."""

    max_forgetting_drop: float | None = 5.0
    """Largest allowed drop of the general-knowledge probe (points of 0-100) from served to candidate; null: no
    probe."""

    min_win_rate: float = Field(0.5, ge=0.0, le=1.0)
    """With a judge (judge_base_url in the eval YAML): the candidate's pairwise win rate against the served model
    (ties count half) must reach this."""

    canary: float | None = Field(None, gt=0.0, lt=1.0)
    """Instead of replacing what the alias serves, add the candidate as an A/B arm with this weight (0.1: one user
    in ten); the other arms are scaled down to make room."""

    @field_validator("metrics", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return split_list(v)

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in GATE_METRICS]
        if unknown:
            raise ValueError(f"unknown gate metric(s) {', '.join(unknown)}; known: {', '.join(GATE_METRICS)}")
        return v

    @model_validator(mode="after")
    def _tolerances(self) -> GateConfig:
        if isinstance(self.tolerance, dict):
            stray = [m for m in self.tolerance if m not in self.metrics]
            if stray:
                raise ValueError(f"tolerance names {', '.join(stray)}, which metrics does not list")
        return self

    def tolerance_of(self, metric: str) -> float:
        if isinstance(self.tolerance, dict):
            return float(self.tolerance.get(metric, 0.0))
        return float(self.tolerance)

    def thresholds(self) -> dict[str, Any]:
        """What the decision was held against (written to the promotions log)."""
        return {
            "metrics": self.metrics,
            "tolerance": self.tolerance,
            "max_forgetting_drop": self.max_forgetting_drop,
            "min_win_rate": self.min_win_rate,
            "canary": self.canary,
        }


class PromoteConfig(GateConfig):
    candidate: str | None = None
    """The run folder to promote: a LoRA adapter run (`expertkit train`'s output_dir) on the base the alias serves,
    or a merged model folder. Required to promote (not for --rollback)."""

    name: str | None = None
    """The served name of the candidate in the models file (unset: the run folder's name, made unique)."""

    output_dir: str | None = None
    """Where the gate's eval goes (metrics.json, report.html); unset: `eval/gate-<alias>` inside the candidate."""

    rollback: bool = False
    """Restore the alias's mapping from before its last promotion (from the promotions log) instead of promoting."""

    @model_validator(mode="after")
    def _complete(self) -> PromoteConfig:
        if not self.rollback:
            missing = [k for k in ("candidate", "eval") if not getattr(self, k)]
            if missing:
                raise ValueError(f"promote needs {' and '.join(missing)}=... (or --rollback)")
        return self


Stage = Literal["sft", "dpo", "kto"]


class ImproveConfig(GateConfig):
    rounds_dir: str
    """Where the rounds go, one numbered folder each (round-001, round-002 ...) holding round.json (the state,
    written after each step), the exported feedback, the training runs and the gate's eval. Running the command
    again continues the last round when it was stopped, else starts the next: one line in a crontab."""

    stages: list[Stage] = Field(default_factory=lambda: ["sft"])
    """Training stages in order (comma list of sft, dpo, kto), each on feedback exported in its format and on top
    of the adapter before it (the first: the adapter the alias serves)."""

    feedback_db: str | None = None
    """The feedback store (unset: ~/.expertkit/feedback.sqlite, as `expertkit feedback export`)."""

    feedback_dir: str = "data"
    """Where the feedback is exported to (improve_<alias>_<format>.json and dataset_info.json) before the round
    copies it into its folder."""

    since: str | None = "round"
    """Which feedback: round (since the last round of this alias reached the gate, from the promotions log; all for
    the first), last (since the last export to the same file: the export's own bookmark), all, or an ISO date."""

    feedback_args: dict[str, Any] = Field(default_factory=dict)
    """More `expertkit feedback export` keys, e.g. {alias: expert, rater: alice, with_context: true}."""

    min_new_rows: int = Field(20, ge=1)
    """Stop early (nothing trained) when a stage's export has fewer rows than this."""

    train_config: str | None = None
    """A train YAML holding the round's training keys (learning_rate, num_train_epochs, lora_rank, cutoff_len ...);
    model_name_or_path, adapter_name_or_path, stage, dataset and output_dir are set by the round."""

    train: dict[str, Any] = Field(default_factory=dict)
    """Training keys on top of train_config, e.g. {learning_rate: 1e-4, num_train_epochs: 2}."""

    replay: dict[Stage, list[str]] = Field(default_factory=dict)
    """Earlier training data mixed into each stage against forgetting: {sft: [identity, support], dpo: [round1_dpo]}
    (names in dataset_dir or files)."""

    dataset_dir: str = "data"
    """The folder (dataset_info.json) the replay names are looked up in."""

    replay_share: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of each stage's training rows drawn from its replay data (LLaMA-Factory's interleave_probs: the new
    feedback gets 1 - share, the replay datasets split the share)."""

    mix_strategy: Literal["interleave_under", "interleave_over"] = "interleave_under"
    """How the new feedback and the replay data are mixed (LLaMA-Factory's names): interleave_under stops when the
    new feedback is used up (the usual); interleave_over repeats rows until every dataset is used up."""

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_list(cls, v: Any) -> Any:
        return split_list(v)

    @field_validator("replay", mode="before")
    @classmethod
    def _replay_lists(cls, v: Any) -> Any:
        return {k: split_list(x) for k, x in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _round(self) -> ImproveConfig:
        if not self.stages:
            raise ValueError("stages names no stage: give sft, dpo or kto (comma list)")
        if len(set(self.stages)) < len(self.stages):
            raise ValueError(f"stages lists a stage twice: {', '.join(self.stages)}")
        if not self.eval:
            raise ValueError("eval=EVAL.yaml is required: the round ends with the gate")
        stray = [s for s in self.replay if s not in self.stages]
        if stray:
            raise ValueError(f"replay names stage(s) {', '.join(stray)}, which stages does not list")
        return self

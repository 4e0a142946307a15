"""`expertkit eval`: compare candidates (base, tuned, tuned + retrieval, remote) on an eval set; `--compare` reports."""

from __future__ import annotations

import typer

from expertkit.core.errors import ExpertkitError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def evaluate(
    args: list[str] = typer.Argument(
        None, help="A YAML config and/or key=value overrides; with --compare: output folders.", show_default=False
    ),
    compare: bool = typer.Option(False, "--compare", help="Compare the metrics of earlier eval output folders."),
) -> None:
    """Evaluate candidates on held-out questions: ROUGE/BLEU, eval loss, judge, forgetting probe, HTML report.

    Example: expertkit eval eval_file=held_out.jsonl model_name_or_path=saves/m adapter_name_or_path=saves/run

    Batch prediction (LLaMA-Factory's do_predict; questions need no reference): expertkit eval predict.yaml, or
    expertkit eval do_predict=true eval_file=questions.jsonl model_name_or_path=saves/m output_dir=saves/predict
    """
    args = list(args or [])
    if compare:
        from pathlib import Path

        from expertkit.evaluate.report_compare import compare_reports

        if len(args) < 2:
            raise ExpertkitError("--compare needs two or more eval output folders", hint="expertkit eval --compare A B")
        text, _ = compare_reports([Path(a) for a in args])
        typer.echo(text)
        return
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.evaluate.config import EvalConfig

    path, overrides = split_cli_args(args)
    from expertkit.evaluate.predict import PredictResult
    from expertkit.evaluate.run import run

    result = run(load_config(EvalConfig, path, overrides))  # do_predict: batch prediction
    if isinstance(result, PredictResult):
        for predictions in result.paths.values():
            typer.echo(f"predictions: {predictions}")
        return
    typer.echo(f"report: {result.report_path or result.metrics_path}")

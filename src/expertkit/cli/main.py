"""The `expertkit` command line.

    expertkit demo                              # offline: the whole loop on a built-in tiny model
    expertkit demo stage=dpo                    # ... then a preference round (DPO) on top of it
    expertkit data check my.yaml                # what the data looks like before spending GPU hours
    expertkit train my.yaml lora_rank=16        # YAML + key=value overrides (or --lora_rank 16)
    expertkit export my_merge.yaml              # merge the adapter into a standalone, checked model

Heavy libraries (torch, transformers, peft) are imported inside the commands, so `--help` is fast.
User mistakes are `ExpertkitError`s: printed without a traceback (`--debug` shows it), exit code 1.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from expertkit import __version__
from expertkit.cli.data_cmds import data_clean, data_synth, data_text
from expertkit.cli.eval_cmd import evaluate
from expertkit.cli.feedback_cmd import feedback_app
from expertkit.cli.improve_cmd import improve, promote
from expertkit.cli.rag_cmds import ask, kb_app
from expertkit.cli.webui_cmd import webui
from expertkit.core.errors import ExpertkitError

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}
ARGS_HELP = "A YAML config file and/or key=value overrides (LLaMA-Factory's --key value style works too)."

app = typer.Typer(
    name="expertkit",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Turn an open LLM into a private domain expert: data -> train -> evaluate -> export -> serve.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect and check training data; documents into text.")
config_app = typer.Typer(no_args_is_help=True, help="List config keys and their meaning.")
app.add_typer(data_app, name="data")
data_app.command("text", context_settings=EXTRA_ARGS)(data_text)
data_app.command("clean", context_settings=EXTRA_ARGS)(data_clean)
data_app.command("synth", context_settings=EXTRA_ARGS)(data_synth)
app.add_typer(config_app, name="config")
app.add_typer(kb_app, name="kb")
app.add_typer(feedback_app, name="feedback")

_state: dict = {"debug": False, "argv": []}  # argv: the command line, for train's torchrun relaunch


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library log messages too."),
) -> None:
    _state["debug"] = debug
    setup_logging(verbose)


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:  # the CLI sets logging up once; in-process callers (tests) keep theirs
        logging.basicConfig(format="%(message)s")
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("expertkit").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # transformers 5 deprecation raised inside peft/Trainer on every run: nothing the user can act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # bitsandbytes (peft imports it when installed) looks for an optional CPU kernel on the hub at import and
        # warns when offline; it falls back to its own kernel: nothing to act on
        for name in ("bitsandbytes.backends.cpu.ops", "kernels"):
            logging.getLogger(name).setLevel(logging.ERROR)


def load_train_config(args: list[str]):
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.train.config import TrainConfig

    path, overrides = split_cli_args(args)
    return load_config(TrainConfig, path, overrides)


@app.command(context_settings=EXTRA_ARGS)
def train(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Fine-tune a model (LoRA, full or freeze) from a LLaMA-Factory style YAML.

    Stages (stage=...): pt (continued pre-training on raw text), sft, dpo, kto, rm (a reward model),
    ppo (EXPERIMENTAL: against a reward_model from rm).

    Example: expertkit train examples/train/qwen2.5-0.5b-instruct_lora_sft.yaml num_train_epochs=5
    """
    config = load_train_config(args or [])  # config errors come before any process is spawned
    from expertkit.train import launch
    from expertkit.train.precision import check_hardware, detect_device

    launch.load_deepspeed(config.deepspeed)  # a missing or broken file is an error before anything starts
    check_hardware(config, detect_device())  # fp16 on a CPU, fa2 without flash-attn, ...: before any process
    plan = launch.plan_launch(os.environ, launch.device_count(), force=config.deepspeed is not None)
    launch.refuse_stage(config.stage, plan)
    launch.check_fsdp(config, plan)
    if plan:  # FORCE_TORCHRUN=1 or several GPUs: the same command again, under torchrun, once per process
        raise typer.Exit(launch.relaunch(plan, _state["argv"]))
    launch.quiet_other_ranks()
    from expertkit.train.run import run

    result = run(config)
    if launch.is_main_process():
        typer.echo(
            f"done: {result.global_step} steps, train loss {result.train_loss:.4f}, "
            f"{result.tokens_per_second:.0f} tokens/s -> {result.output_dir}"
        )


@app.command(context_settings=EXTRA_ARGS)
def export(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Merge a LoRA adapter into its base: safetensors (or GGUF + Ollama Modelfile), chat template, card; checked.

    Example: expertkit export examples/export/tiny_lora_merge.yaml export_dir=saves/tiny/merged
    """
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.export.config import ExportConfig

    path, overrides = split_cli_args(args or [])
    config = load_config(ExportConfig, path, overrides)
    if config.export_format == "gguf":
        from expertkit.export.gguf import run as run_gguf

        gguf = run_gguf(config)
        for line in gguf.checks:
            typer.echo(f"checked: {line}")
        for line in gguf.skipped:
            typer.echo(f"NOT checked (skip_check): {line}")
        typer.echo(f"done: {', '.join(gguf.files)} + Modelfile -> {gguf.export_dir}")
        return
    from expertkit.export.merge import run

    result = run(config)
    source = "base + adapter" if config.adapter_name_or_path else "the source model"
    typer.echo(
        f"done: {len(result.shards)} weight file(s), {result.dtype}, logits equal {source} within "
        f"{result.tolerance:.3g} (max difference {result.max_logit_diff:.3g}) -> {result.export_dir}"
    )


@data_app.command("check", context_settings=EXTRA_ARGS)
def data_check(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Check the training data of a config: counts, token lengths vs cutoff_len, duplicates, problems."""
    config = load_train_config(args or [])
    from expertkit.data.check import run as check_run

    report = check_run(config)
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(1)


@config_app.command("keys")
def config_keys(
    stage: str = typer.Argument(
        "train", help="Which stage's keys: train, export, chat, serve, kb, ask, eval, webui, promote, improve, synth."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Print the reference page (docs/reference/)."),
) -> None:
    """List every config key with its default and meaning."""
    from expertkit.core.config import describe_keys
    from expertkit.engine.config import EngineConfig
    from expertkit.evaluate.config import EvalConfig
    from expertkit.export.config import ExportConfig
    from expertkit.improve.config import ImproveConfig, PromoteConfig
    from expertkit.rag.config import AskConfig, KbCommandConfig
    from expertkit.serve.config import ServeConfig
    from expertkit.synth.config import SynthConfig
    from expertkit.train.config import TrainConfig
    from expertkit.ui.config import WebUIConfig

    stages = {
        "train": TrainConfig,
        "export": ExportConfig,
        "chat": EngineConfig,
        "serve": ServeConfig,
        "kb": KbCommandConfig,
        "ask": AskConfig,
        "eval": EvalConfig,
        "webui": WebUIConfig,
        "promote": PromoteConfig,
        "improve": ImproveConfig,
        "synth": SynthConfig,
    }
    if stage not in stages:
        raise ExpertkitError(f"unknown stage '{stage}'", hint=f"stages: {', '.join(stages)}")
    command = "data synth" if stage == "synth" else stage
    typer.echo(describe_keys(stages[stage], markdown=markdown, title=f"`expertkit {command}` keys"), nl=False)


@app.command(context_settings=EXTRA_ARGS)
def chat(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Chat in the terminal with a model, base + adapter, a merged export, or a remote OpenAI-compatible URL.

    Example: expertkit chat model_name_or_path=Qwen/Qwen2.5-0.5B-Instruct adapter_name_or_path=saves/qwen/lora/sft
    """
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.engine.config import EngineConfig

    path, overrides = split_cli_args(args or [])
    sampling = {k: overrides.pop(k) for k in CHAT_SAMPLING_KEYS if k in overrides}
    config = load_config(EngineConfig, path, overrides)
    from expertkit.cli.chat import run_chat
    from expertkit.core.config import parse_override
    from expertkit.engine.base import InvalidParamError, SamplingParams
    from expertkit.engine.factory import load_engine

    values = {k: parse_override(v) for k, v in sampling.items()}
    if isinstance(values.get("response_format"), str):  # response_format=json_object
        values["response_format"] = {"type": values["response_format"]}
    try:
        params = SamplingParams(max_tokens=config.max_new_tokens, **values).validate()
    except InvalidParamError as e:
        raise ExpertkitError(str(e), hint=f"sampling keys: {', '.join(CHAT_SAMPLING_KEYS)}") from None
    if config.engine == "vllm":  # vLLM's start-up log would bury the conversation; its warnings still show
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    run_chat(load_engine(config), params)


# keys of `expertkit chat` that tune each answer rather than the engine
CHAT_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "response_format")


@app.command(context_settings=EXTRA_ARGS)
def serve(args: list[str] = typer.Argument(None, help=ARGS_HELP, show_default=False)) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/models, /v1/chat/completions; /health) until Ctrl-C.

    Example: expertkit serve model_name_or_path=saves/tiny adapter_name_or_path=saves/tiny-lora api_key=sk-local
    """
    from expertkit.core.config import load_config, split_cli_args
    from expertkit.serve.config import ServeConfig
    from expertkit.serve.server import run as serve_run

    path, overrides = split_cli_args(args or [])
    serve_run(load_config(ServeConfig, path, overrides))


app.command(context_settings=EXTRA_ARGS)(ask)
app.command("eval", context_settings=EXTRA_ARGS)(evaluate)
app.command("webui", context_settings=EXTRA_ARGS)(webui)
app.command("promote", context_settings=EXTRA_ARGS)(promote)
app.command("improve", context_settings=EXTRA_ARGS)(improve)


@app.command(context_settings=EXTRA_ARGS)
def demo(
    args: list[str] = typer.Argument(
        None,
        metavar="[stage=sft|dpo]",
        help="stage=dpo adds a preference round (DPO) on top of the SFT adapter, on bundled chosen / rejected "
        "pairs, and prints base / SFT / DPO answers and the margin log p(chosen) - log p(rejected) before and after "
        "(a minute or two more on 2 CPU cores).",
        show_default=False,
    ),
    output_dir: str = typer.Option("saves/demo", help="Where the tiny model and the run go."),
    build_only: bool = typer.Option(False, "--build-only", help="Only build the tiny model."),
) -> None:
    """Offline demo: build a tiny random model, LoRA-tune it on bundled data, compare base vs tuned answers.

    Example: expertkit demo stage=dpo   (then a DPO round: base vs SFT vs DPO answers)
    """
    from expertkit.demo import parse_stage, run_demo

    run_demo(output_dir, build_only=build_only, stage=parse_stage(args or []))


@app.command()
def version() -> None:
    """Print the versions of expertkit and the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    typer.echo(f"expertkit {__version__}")
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        try:
            typer.echo(f"{name} {pkg_version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name} (not installed)")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI in-process and return the exit code (what the tests call)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # a global option, accepted anywhere on the line
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    _state["debug"] = "--debug" in argv
    _state["argv"] = argv
    try:
        code = app(args=argv, prog_name="expertkit", standalone_mode=False)
    except ExpertkitError as e:
        from expertkit.train.launch import note_rank_failure, rank_prefix

        note_rank_failure(e)
        if _state["debug"]:
            raise
        typer.echo(f"error: {rank_prefix()}{e}", err=True)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        from expertkit.train.launch import note_rank_failure

        note_rank_failure(e)
        raise
    return code if isinstance(code, int) else 0


def run_cli() -> None:
    sys.exit(main())

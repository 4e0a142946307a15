"""Training throughput: expertkit LoRA SFT against plain TRL `SFTTrainer` on the same work, in the same run.

    python bench/train_throughput.py                      # default comparison, ~4 minutes on 2 idle cores
    python bench/train_throughput.py --quick              # smoke run: 3 optimiser steps per system
    python bench/train_throughput.py --variants fp32,bf16,padded,gc --json results.json

The work is the one of shared/anchor-bench (README.md there): a ~27M-parameter random Qwen2-style model,
300 alpaca rows, LoRA r8/alpha16/dropout0 on every linear layer, cutoff 512, batch 2 x accumulation 8,
lr 2e-4 cosine without warm-up, no weight decay, clip 1.0, adamw_torch, seed 42, loss on responses only,
`--steps` optimiser steps (default 15 = 240 rows). Every system runs in its own subprocess, one after the
other, so that peak RSS is its own and no two compete for the cores.

Figures per system: trained tokens/s = non-padding input tokens / the trainer's train() time (HF Trainer's
`train_runtime`: no imports, loading, preprocessing or saving), wall time of the whole process, peak RSS,
tokens seen, first / mean / final per-step loss. The loss curves show that the work is the same: expertkit
fp32 and TRL must agree at step 1 (the anchor recorded 9.0673 with 4,524 tokens seen after step 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quiet import busy_cpu_seconds, wait_for_idle  # bench/quiet.py, beside this script
from shared import add_set_option

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ANCHOR = REPO.parent / "shared" / "anchor-bench"
DATASET_NAME = "bench_sft"
# LLaMA-Factory 0.9.5 on this work (small model, 15 steps), from shared/anchor-bench/RESULTS.md: median of
# 3 runs with its default gradient checkpointing, and mean of 2 runs without it (743.6, 680.6).
LF_REFERENCE = {"gc": 520.0, "nogc": 710.0}
# TRL 1.16 on the same work in the same anchor runs (median of 3 with checkpointing; mean of 645.7 and 600.8
# without): the measured TRL figure over this one says how much faster or slower the machine is today.
TRL_REFERENCE = {"gc": 416.0, "nogc": 623.0}
ANCHOR_STEP1 = (9.0673, 4524)  # loss and tokens seen after step 1 with HF Trainer's sample order
LOSS_TOLERANCE = 1e-3
VARIANTS = {
    # name: (TrainConfig overrides, what it shows)
    "fp32": ({"bf16": "false", "padding_free": "true"}, "fp32, padding-free (expertkit's default batching)"),
    "bf16": (
        {"bf16": "true", "padding_free": "true"},
        "bf16 autocast on CPU, padding-free, the default speed-ups (train/speed.py)",
    ),
    "padded": ({"bf16": "false", "padding_free": "false"}, "fp32, padded batches: what padding-free buys"),
    "gc": (
        {"bf16": "false", "padding_free": "true", "gradient_checkpointing": "true"},
        "fp32, padding-free, gradient checkpointing on (compare with LLaMA-Factory's default)",
    ),
}
VARIANT_ENV = {  # expertkit's speed-ups (train/speed.py) switched off, or on (split): what each buys
    "bf16-plain": {"EXPERTKIT_SPEED_OFF": "logits"},
    "bf16-norows": {"EXPERTKIT_SPEED_OFF": "rows"},
    "fp32-plain": {"EXPERTKIT_SPEED_OFF": "logits"},
    "fp32-norows": {"EXPERTKIT_SPEED_OFF": "rows"},
    "bf16-noattn": {"EXPERTKIT_SPEED_OFF": "attention"},
    "bf16-split": {"EXPERTKIT_SPEED_ON": "split"},
    "fp32-noattn": {"EXPERTKIT_SPEED_OFF": "attention"},
}
for _v, _env in VARIANT_ENV.items():
    _bf16 = "true" if _v.startswith("bf16") else "false"
    _what = ", ".join(f"{k}={v}" for k, v in _env.items())
    VARIANTS[_v] = ({"bf16": _bf16, "padding_free": "true"}, f"{_v.split('-')[0]} with {_what}")
HYPER = dict(
    lora_rank=8,
    lora_alpha=16,
    lora_dropout=0.0,
    cutoff_len=512,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=8,
    learning_rate=2e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    optim="adamw_torch",
    seed=42,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip() + " Prints a table and the ratios expertkit / TRL.",
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--work-dir",
        default="/tmp/expertkit-bench",
        help="data, model and run folders (reused when present; default %(default)s)",
    )
    p.add_argument(
        "--anchor-dir",
        default=str(DEFAULT_ANCHOR),
        help="shared/anchor-bench: its gen_data.py and build_model.py make the data and model "
        "(else a built-in generator and expertkit.model.tiny are used; default %(default)s)",
    )
    p.add_argument("--steps", type=int, default=15, help="optimiser steps per system (default %(default)s = 240 rows)")
    p.add_argument("--quick", action="store_true", help="smoke run: --steps 3")
    p.add_argument(
        "--variants",
        default="fp32,bf16",
        help=f"expertkit variants, comma list of {', '.join(VARIANTS)} (default %(default)s): "
        + "; ".join(f"{k}: {v[1]}" for k, v in VARIANTS.items()),
    )
    p.add_argument(
        "--baseline-gc",
        action="store_true",
        help="gradient checkpointing on in the TRL (and LLaMA-Factory) baseline (TRL's default; "
        "off here by default, as expertkit's fp32 variant, to compare like with like)",
    )
    p.add_argument("--no-trl", action="store_true", help="skip the TRL baseline (while iterating on expertkit)")
    p.add_argument(
        "--lf-cli",
        default=shutil.which("llamafactory-cli"),
        help="llamafactory-cli to run as a third system (default: the one on PATH, if any: %(default)s)",
    )
    add_run_options(p)
    p.add_argument("--json", help="also write the results (every run, medians, ratios) to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps = 3
    check_variants(p, args, VARIANTS)
    return args


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--rounds, --idle-wait, --threads, --set and the internal --worker (bench/dpo_throughput.py takes them too)."""
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every system this many times, interleaved; the table shows medians (default 1)",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        default=300,
        help="before each run, wait up to this many seconds for an idle machine (default %(default)s)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in every system (0: torch's default)")
    add_set_option(p, "extra config override for every expertkit variant, e.g. --set optim=adamw_torch_fused")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one system from a spec file


def check_variants(p: argparse.ArgumentParser, args: argparse.Namespace, variants: dict) -> None:
    """args.variants from the comma list into names of `variants`; --set values must be KEY=VALUE."""
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(variants)}")
    if any("=" not in o for o in args.overrides):
        p.error("--set takes KEY=VALUE")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(json.loads(Path(args.worker).read_text()))
    work = Path(args.work_dir)
    model, data = prepare_work(work, Path(args.anchor_dir))
    systems = plan_systems(args)
    print_intro(args, model, data, systems)
    runs = run_rounds(systems, model, data, work, args)
    rows = summarise(runs, [name for name, _ in systems])
    print_table(rows, args)
    ratios = print_ratios(rows, args)
    ok = check_losses(rows)
    if args.json:
        write_results(Path(args.json), args, runs, rows, ratios, ok)
    return 0 if ok and all(r.error is None for r in runs) else 1


# ---------------------------------------------------------------------------------------------- the work


def prepare_work(work: Path, anchor: Path) -> tuple[Path, Path]:
    """data.json + model-small (+ dataset_info.json for expertkit and LLaMA-Factory), built once and reused."""
    work.mkdir(parents=True, exist_ok=True)
    data, model = work / "data.json", work / "model-small"
    from_anchor = (anchor / "gen_data.py").is_file() and (anchor / "build_model.py").is_file()
    if not data.is_file():
        if from_anchor:
            subprocess.run(
                [sys.executable, str(anchor / "gen_data.py"), str(data), "--n", "300", "--seed", "20251123"], check=True
            )
        else:
            write_fallback_data(data, 300, 20251123)
    if not (model / "config.json").is_file():
        if from_anchor:
            subprocess.run(
                [sys.executable, str(anchor / "build_model.py"), str(model), "--data", str(data), "--size", "small"],
                check=True,
            )
        else:
            from expertkit.model.tiny import build_tiny_model

            rows = json.loads(data.read_text(encoding="utf-8"))
            texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows]
            build_tiny_model(model, texts, size="small", vocab_size=8000)
    info = {
        DATASET_NAME: {
            "file_name": data.name,
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    }
    (work / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return model, data


def write_fallback_data(path: Path, n: int, seed: int) -> None:
    """Synthetic support-desk alpaca rows with answers of 80-400 tokens, when the anchor scripts are absent."""
    import random

    rng = random.Random(seed)
    topics = [
        "invoice",
        "password reset",
        "VPN access",
        "printer queue",
        "refund",
        "shipping delay",
        "account lock",
        "data export",
        "API quota",
        "license renewal",
    ]
    steps = [
        "open the settings page",
        "check the status light",
        "restart the client",
        "clear the cache",
        "confirm the order number",
        "contact the billing team",
        "wait five minutes",
        "sign in again",
        "attach the log file",
        "update to the latest version",
        "verify the email address",
    ]
    rows = []
    for i in range(n):
        topic = rng.choice(topics)
        answer = " ".join(
            f"Step {k + 1}: {rng.choice(steps)}, then note the {rng.choice(topics)} reference."
            for k in range(rng.randint(5, 25))
        )
        rows.append(
            {
                "instruction": f"A customer asks about {topic} (case {i}). How should support answer?",
                "input": f"Ticket {rng.randint(1000, 9999)}" if i % 5 == 0 else "",
                "output": answer,
            }
        )
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")


def plan_systems(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(display name, worker spec) per system, in run order: baselines first, then expertkit variants."""
    systems = []
    if not args.no_trl:
        systems.append(("TRL" + (" (gc)" if args.baseline_gc else ""), {"system": "trl", "gc": args.baseline_gc}))
    if args.lf_cli:
        systems.append(
            (
                "LLaMA-Factory" + (" (gc)" if args.baseline_gc else ""),
                {"system": "lf", "gc": args.baseline_gc, "cli": args.lf_cli},
            )
        )
    for v in args.variants:
        overrides = dict(VARIANTS[v][0])
        overrides.update(o.split("=", 1) for o in args.overrides)
        spec = {"system": "expertkit", "variant": v, "overrides": overrides, "env": VARIANT_ENV.get(v, {})}
        systems.append((f"expertkit {v}", spec))
    return systems


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def print_intro(args: argparse.Namespace, model: Path, data: Path, systems: list[tuple[str, dict]]) -> None:
    import torch

    print(
        f"train throughput: {args.steps} steps x 16 rows, {len(systems)} system(s) x {args.rounds} round(s); "
        f"model {model}, data {data}"
    )
    print(
        f"machine: {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}, torch {torch.__version__}"
        f" ({args.threads or torch.get_num_threads()} threads), python {platform.python_version()}",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------- one run


def run_rounds(
    systems: list[tuple[str, dict]], model: Path, data: Path, work: Path, args, prefix: str = "", script=None
) -> list[RunResult]:
    """Every system once per round, in order, each in WORK/runs/PREFIX<system>-<round>; a line per run."""
    runs = []
    for r in range(args.rounds):
        for name, spec in systems:
            res = run_system(name, spec, model, data, work / "runs" / f"{prefix}{slug(name)}-{r + 1}", args, script)
            runs.append(res)
            print(f"  {name:<22} round {r + 1}: {res.summary()}", flush=True)
    return runs


@dataclass
class RunResult:
    name: str
    run_dir: str
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    train_s: float = 0.0
    tokens: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    step1_tokens: int | None = None
    others_cpu: float = 0.0  # CPU cores used by other processes during the run, on average
    error: str | None = None

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s else 0.0

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        busy = f"; other processes used {self.others_cpu:.2f} cores meanwhile" if self.others_cpu > 0.1 else ""
        return (
            f"{self.tok_per_s:.1f} tok/s ({self.tokens} tokens in {self.train_s:.1f} s), wall {self.wall_s:.1f} s, "
            f"peak RSS {self.peak_rss_mib:.0f} MiB, loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}{busy}"
        )


def run_system(
    name: str, spec: dict, model: Path, data: Path, run_dir: Path, args, script: Path | None = None
) -> RunResult:
    """One system in its own process: wall time, its own peak RSS (os.wait4), figures from its run folder.
    `script` runs the worker (default: this file; bench/dpo_throughput.py passes its own)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec = {
        **spec,
        "model": str(model),
        "data": str(data),
        "dataset_dir": str(data.parent),
        "out": str(run_dir / "out"),
        "steps": args.steps,
        "threads": args.threads,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    if spec["system"] == "lf":
        (run_dir / "config.yaml").write_text(lf_yaml(spec))
        cmd = [spec["cli"], "train", str(run_dir / "config.yaml")]
    else:
        cmd = [sys.executable, str(script or Path(__file__).resolve()), "--worker", str(run_dir / "spec.json")]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **spec.get("env", {}),
    }
    result = RunResult(name, str(run_dir))
    wait_for_idle(args.idle_wait)
    with open(run_dir / "log.txt", "wb") as log:
        busy_before, start = busy_cpu_seconds(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        result.wall_s = time.perf_counter() - start
        busy_after = busy_cpu_seconds()
    busy = busy_after - busy_before if busy_before is not None and busy_after is not None else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    result.peak_rss_mib = usage.ru_maxrss / 1024  # KiB on Linux; includes the run's own subprocesses
    if busy is not None:
        result.others_cpu = max(busy - usage.ru_utime - usage.ru_stime, 0.0) / result.wall_s
    if proc.returncode != 0:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        result.error = f"exit {proc.returncode}: {tail[0][:200]} (log: {run_dir / 'log.txt'})"
        return result
    try:
        read_figures(result, Path(spec["out"]), spec["system"])
    except (OSError, KeyError, IndexError, ValueError) as e:
        result.error = f"could not read the run's figures: {e!r}"
    return result


def read_figures(result: RunResult, out: Path, system: str) -> None:
    """train() time and tokens from trainer_state.json (all systems save it); losses from each one's own log."""
    state = json.loads((out / "trainer_state.json").read_text())
    history = state["log_history"]
    # the summary entry (TRL also puts a running train_runtime into every per-step entry)
    result.train_s = float(next(h["train_runtime"] for h in reversed(history) if "train_loss" in h))
    result.tokens = int(state["num_input_tokens_seen"])
    result.steps = int(state["global_step"])
    if system == "expertkit":  # expertkit's own run log (LLaMA-Factory's file name and layout)
        records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
        logged = [r for r in records if "loss" in r]
        result.losses = [float(r["loss"]) for r in logged]
        result.step1_tokens = logged[0].get("num_input_tokens_seen") if logged else None
    else:
        logged = [h for h in history if "loss" in h and "train_loss" not in h]
        result.losses = [float(h["loss"]) for h in logged]
        result.step1_tokens = logged[0].get("num_input_tokens_seen") if logged else None
    if not result.losses:
        raise ValueError("no per-step loss was logged")


def lf_yaml(spec: dict) -> str:
    """LLaMA-Factory's training YAML for the same work (as shared/anchor-bench/lf_config.sh writes it)."""
    values = {
        "model_name_or_path": spec["model"],
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "disable_gradient_checkpointing": not spec["gc"],
        "use_reentrant_gc": True,
        "dataset": DATASET_NAME,
        "dataset_dir": spec["dataset_dir"],
        "template": "qwen",
        "cutoff_len": 512,
        "overwrite_cache": True,
        "packing": False,
        "train_on_prompt": False,
        "output_dir": spec["out"],
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "plot_loss": False,
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 8,
        "learning_rate": 2.0e-4,
        "max_steps": spec["steps"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "bf16": False,
        "fp16": False,
        "seed": 42,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items())


# ---------------------------------------------------------------------------------------------- workers


def run_worker(spec: dict, trl=None, expertkit=None) -> int:
    """Runs inside the subprocess: one system, figures written to spec['out'] by the system itself.
    `trl` and `expertkit` run the systems (default: this file's run_trl, run_expertkit)."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    print(f"worker: {spec['system']} {spec.get('variant', '')} torch threads {torch.get_num_threads()}", flush=True)
    if spec["system"] == "trl":
        (trl or run_trl)(spec)
    else:
        (expertkit or run_expertkit)(spec)
    return 0


def run_expertkit(spec: dict) -> None:
    """expertkit through its public API, configured with the same key=value strings the CLI takes."""
    result = train_expertkit(spec, HYPER, DATASET_NAME)
    print(
        json.dumps(
            {
                "tokens": result.tokens_seen,
                "train_runtime": result.train_runtime,
                "tokens_per_second": result.tokens_per_second,
                "train_loss": result.train_loss,
            }
        )
    )


def train_expertkit(spec: dict, hyper: dict, dataset: str, **keys: str):
    """expertkit's `train` on `dataset` with `hyper`, `keys` (e.g. stage) and the spec's overrides; its result."""
    import logging

    from expertkit.core.config import load_config
    from expertkit.train.config import TrainConfig
    from expertkit.train.run import run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: str(v) for k, v in hyper.items()}
    overrides.update(keys)
    overrides.update(
        model_name_or_path=spec["model"],
        dataset=dataset,
        dataset_dir=spec["dataset_dir"],
        finetuning_type="lora",
        lora_target="all",
        max_steps=str(spec["steps"]),
        logging_steps="1",
        save_steps="1000000",
        output_dir=spec["out"],
        overwrite_output_dir="true",
        plot_loss="false",
        learning_check_samples="0",
        report_to="none",
    )
    overrides.update(spec["overrides"])
    return run(load_config(TrainConfig, None, overrides))


def run_trl(spec: dict) -> None:
    """Plain TRL SFTTrainer + PEFT, as shared/anchor-bench/run_trl.py (gradient checkpointing per spec)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = json.loads(Path(spec["data"]).read_text(encoding="utf-8"))
    ds = Dataset.from_list(
        [{"prompt": user_turn(r), "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows]
    )
    tok = AutoTokenizer.from_pretrained(spec["model"])
    args = SFTConfig(
        **trl_args(spec, HYPER),
        packing=False,
        completion_only_loss=True,
        gradient_checkpointing=spec["gc"],
        model_init_kwargs={"dtype": torch.float32},
    )
    trainer = SFTTrainer(
        model=spec["model"], args=args, train_dataset=ds, processing_class=tok, peft_config=trl_lora(HYPER)
    )
    result = trainer.train()
    trainer.save_model()
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    print(json.dumps(result.metrics))


def user_turn(row: dict) -> list[dict]:
    """LLaMA-Factory's alpaca user turn: instruction + "\\n" + input (when input is not empty), as TRL's prompt."""
    return [{"role": "user", "content": row["instruction"] + ("\n" + row["input"] if row["input"] else "")}]


def trl_args(spec: dict, h: dict) -> dict:
    """The TRL config keys every baseline shares: `h`'s optimisation, a log line per step, no saving, fp32."""
    return dict(
        output_dir=spec["out"],
        max_steps=spec["steps"],
        per_device_train_batch_size=h["per_device_train_batch_size"],
        gradient_accumulation_steps=h["gradient_accumulation_steps"],
        learning_rate=h["learning_rate"],
        lr_scheduler_type=h["lr_scheduler_type"],
        warmup_steps=h["warmup_steps"],
        weight_decay=h["weight_decay"],
        max_grad_norm=h["max_grad_norm"],
        optim=h["optim"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=h["seed"],
        max_length=h["cutoff_len"],
        bf16=False,
        fp16=False,  # fp32 (TRL's configs default to bf16=True)
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def trl_lora(h: dict):
    """PEFT's LoraConfig for `h`'s rank, alpha and dropout on every linear layer."""
    from peft import LoraConfig

    return LoraConfig(
        r=h["lora_rank"],
        lora_alpha=h["lora_alpha"],
        lora_dropout=h["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


# ---------------------------------------------------------------------------------------------- report


def summarise(runs: list[RunResult], names: list[str]) -> list[dict]:
    """One row per system: medians over rounds for speed and memory; the losses of its first good run."""
    rows = []
    for name in names:
        good = [r for r in runs if r.name == name and r.error is None]
        row: dict = {"system": name, "runs": len(good), "errors": [r.error for r in runs if r.name == name and r.error]}
        if good:
            first = good[0]
            row.update(
                tok_per_s=statistics.median(r.tok_per_s for r in good),
                tok_per_s_runs=[round(r.tok_per_s, 1) for r in good],
                train_s=statistics.median(r.train_s for r in good),
                wall_s=statistics.median(r.wall_s for r in good),
                peak_rss_mib=statistics.median(r.peak_rss_mib for r in good),
                tokens=first.tokens,
                others_cpu=max(r.others_cpu for r in good),
                steps=first.steps,
                step1_tokens=first.step1_tokens,
                first_loss=first.losses[0],
                mean_loss=statistics.fmean(first.losses),
                final_loss=first.losses[-1],
                losses=first.losses,
            )
        rows.append(row)
    return rows


def print_table(rows: list[dict], args) -> None:
    print(
        f"\nresults ({args.steps} steps; tok/s = non-padding tokens / train() time"
        + (f"; median of {args.rounds} rounds" if args.rounds > 1 else "")
        + ")"
    )
    head = (
        "system",
        "tok/s",
        "tokens",
        "train s",
        "wall s",
        "peak RSS MiB",
        "first loss",
        "mean loss",
        "final loss",
        "others' CPU",
    )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    busy = [r["system"] for r in rows if r.get("others_cpu", 0) > 0.1]
    for r in rows:
        if not r["runs"]:
            print(f"| {r['system']} | failed: {r['errors'][0]} |")
            continue
        cells = (
            r["system"],
            f"{r['tok_per_s']:.1f}",
            str(r["tokens"]),
            f"{r['train_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['first_loss']:.4f}",
            f"{r['mean_loss']:.4f}",
            f"{r['final_loss']:.4f}",
            f"{r['others_cpu']:.2f}",
        )
        print("| " + " | ".join(cells) + " |")
    verdict = f"over 0.1 for {', '.join(busy)}: those figures are skewed" if busy else "all under 0.1: a quiet machine"
    print(f"(others' CPU: cores used by other processes during the run, the most over rounds; {verdict})")


def print_ratios(rows: list[dict], args) -> dict:
    """expertkit / each measured baseline, and / LLaMA-Factory's anchor figures (reference, not measured here)."""
    ok = {r["system"]: r for r in rows if r["runs"]}
    ours = [r for name, r in ok.items() if name.startswith("expertkit")]
    bases = [r for name, r in ok.items() if not name.startswith("expertkit")]
    ratios: dict = {}
    print("\nratios (throughput; peak RSS)")
    for e in ours:
        for b in bases:
            key = f"{e['system']} / {b['system']}"
            ratios[key] = {
                "tok_per_s": e["tok_per_s"] / b["tok_per_s"],
                "peak_rss": e["peak_rss_mib"] / b["peak_rss_mib"],
            }
            print(f"  {key:<40} {ratios[key]['tok_per_s']:.2f}x tok/s; {ratios[key]['peak_rss']:.2f}x RSS")
    if ours:
        print(
            "  vs LLaMA-Factory 0.9.5, figures from shared/anchor-bench/RESULTS.md, not measured in this run "
            f"(same machine type, {LF_REFERENCE['gc']:.0f} tok/s default with gradient checkpointing, "
            f"{LF_REFERENCE['nogc']:.0f} without):"
        )
    for e in ours:
        for kind, ref in LF_REFERENCE.items():
            key = f"{e['system']} / LLaMA-Factory {kind} (reference)"
            ratios[key] = {"tok_per_s": e["tok_per_s"] / ref}
            print(f"  {key:<40} {ratios[key]['tok_per_s']:.2f}x tok/s")
    trl = next((r for name, r in ok.items() if name.startswith("TRL")), None)
    if ours and trl and args.steps == 15:
        # the machine's speed drifts from day to day (RESULTS.md: +-15%): rescale LF's figures by TRL's drift
        day = trl["tok_per_s"] / TRL_REFERENCE["gc" if args.baseline_gc else "nogc"]
        print(
            f"  TRL ran at {day:.2f}x its recorded anchor figure; LLaMA-Factory scaled by that (an estimate): "
            + ", ".join(f"{kind} ~{ref * day:.0f} tok/s" for kind, ref in LF_REFERENCE.items())
        )
        for e in ours:
            for kind, ref in LF_REFERENCE.items():
                key = f"{e['system']} / LLaMA-Factory {kind} (scaled estimate)"
                ratios[key] = {"tok_per_s": e["tok_per_s"] / (ref * day)}
                print(f"  {key:<40} {ratios[key]['tok_per_s']:.2f}x tok/s")
    if args.steps != 15 and ours:
        print("  (the reference figures are for 15 steps; with fewer steps the first, slower steps weigh more)")
    return ratios


def check_losses(rows: list[dict]) -> bool:
    """Same work, same loss: expertkit fp32 variants must match TRL at step 1 (within 1e-3); bf16 is shown."""
    ok = {r["system"]: r for r in rows if r["runs"]}
    ref = next((r for name, r in ok.items() if name.startswith("TRL")), None)
    print(f"\nloss check (step 1; anchor: {ANCHOR_STEP1[0]:.4f} with {ANCHOR_STEP1[1]} tokens seen after step 1)")
    good = True
    for name, r in ok.items():
        line = f"  {name:<22} step-1 loss {r['first_loss']:.4f}, tokens after step 1: {r['step1_tokens']}"
        if ref is not None and r is not ref:
            diff = r["first_loss"] - ref["first_loss"]
            strict = name.startswith("expertkit") and "bf16" not in name  # bf16 autocast differs slightly
            line += f"; vs TRL {diff:+.4f} (final {r['final_loss'] - ref['final_loss']:+.4f})"
            if strict and abs(diff) > LOSS_TOLERANCE:
                line += f"  MISMATCH (> {LOSS_TOLERANCE})"
                good = False
        print(line)
    return good


def write_results(path: Path, args, runs: list[RunResult], rows: list[dict], ratios: dict, ok: bool) -> None:
    import torch

    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{os.cpu_count()} CPU(s) {platform.machine()}",
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "steps": args.steps,
        "rounds": args.rounds,
        "baseline_gc": args.baseline_gc,
        "overrides": args.overrides,
        "lf_reference": {**LF_REFERENCE, "source": "shared/anchor-bench/RESULTS.md, not measured in this run"},
        "trl_reference": TRL_REFERENCE,
        "systems": rows,
        "ratios": ratios,
        "runs": [asdict(r) | {"tok_per_s": r.tok_per_s} for r in runs],
        "loss_check_passed": ok,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())

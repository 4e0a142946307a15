"""One prepared check for a GPU machine without a model hub (issue 14): expertkit's GPU paths against plain TRL.

    python bench/gpu_check.py                  # on a GPU machine: a random ~0.5B Qwen2-shaped model, < 8 minutes
    python bench/gpu_check.py --dry-run        # the plan (parts, commands, budgets), nothing run
    python bench/gpu_check.py --tiny           # the same flow on a CPU with the tiny model (proves the script)

It builds a random Qwen2-shaped model with Qwen2.5-0.5B's shape (494M parameters, vocab 151,936) and a tokenizer
locally (expertkit.model.tiny's tokenizer builder), writes synthetic support-desk rows, then runs each part as a
subprocess with its own time limit inside a global budget (--budget, default 450 s):

    trl-bf16   plain TRL SFTTrainer + PEFT LoRA, bf16               (the baseline of bf16-lora, ddp, zero3)
    bf16-lora  `expertkit train ... bf16=true`
    trl-fp16   plain TRL, fp16 with loss scaling                    (the baseline of fp16-lora)
    fp16-lora  `expertkit train ... fp16=true bf16=false`
    qlora      `expertkit train ... quantization_bit=4`             (skipped with a line when the key is refused)
    ddp        FORCE_TORCHRUN=1 NPROC_PER_NODE=2 (2 GPUs; --tiny: 2 CPU processes over gloo), half the batch each
    zero3      deepspeed=examples/deepspeed/ds_z3_config.json       (when deepspeed is installed)
    vllm-eval  `expertkit eval ... engine=vllm` on bf16-lora's adapter (when vllm is installed; skipped if refused)

Per part: tokens/s (the trainer's non-padding input tokens / train() time), peak GPU memory (torch's
max_memory_allocated in every process of the part, read at exit through a sitecustomize hook; on a CPU, peak RSS),
and loss agreement with the part's TRL baseline (first-step loss and the largest per-step difference). Exit 1 when a
part fails or a bf16 / fp16 part's losses differ from TRL's by more than --loss-tolerance.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASET = "gpu_check"
# Qwen2.5-0.5B's shape (its config.json): 494M parameters with tied embeddings
QWEN_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
)
QWEN_VOCAB = 151_936
HYPER = dict(
    lora_rank=8,
    lora_alpha=16,
    lora_dropout=0.0,
    cutoff_len=512,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=2e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    optim="adamw_torch",
    seed=42,
)
# written into the folder put first on PYTHONPATH: every Python process of a part (torchrun's ranks too) records
# its own peak memory when it exits
SITECUSTOMIZE = """
import atexit, json, os, resource, sys

def _gpu_check_peak():
    out = os.environ.get("GPU_CHECK_MEMORY_DIR")
    if not out:
        return
    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cuda": 0}
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            peak["cuda"] = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
    except Exception:
        pass
    with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
        json.dump(peak, f)

atexit.register(_gpu_check_peak)
"""


@dataclass
class Part:
    name: str
    what: str
    keys: dict = field(default_factory=dict)  # expertkit key=value overrides, or the TRL worker's settings
    baseline: str | None = None  # the TRL part whose losses this one is compared with
    env: dict = field(default_factory=dict)
    limit_s: int = 90
    strict: bool = False  # a loss difference above --loss-tolerance fails the check
    result: dict = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/expertkit-gpu-check"))
    p.add_argument("--tiny", action="store_true", help="the tiny model on a CPU: proves the flow, no GPU figures")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per training part (20; --tiny: 3)")
    p.add_argument("--budget", type=float, default=None, help="global time budget in seconds (450; --tiny: 1500)")
    p.add_argument("--parts", default=None, help="comma list of parts to run (default: all)")
    p.add_argument("--loss-tolerance", type=float, default=0.05, help="largest per-step |loss - TRL's| allowed")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run the TRL baseline of a spec
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_trl_worker(json.loads(Path(args.worker).read_text()))
    start = time.monotonic()
    gpus = gpu_count()
    args.steps = args.steps or (3 if args.tiny else 20)
    args.budget = args.budget or (1500.0 if args.tiny else 450.0)
    parts = plan_parts(args, gpus)
    print_plan(args, gpus, parts)
    if args.dry_run:
        return 0
    if not gpus and not args.tiny:
        print("no GPU visible: run with --tiny on a CPU (flow only) or on a GPU machine", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(args)
    write_data(args.work_dir)
    print(f"model and data ready in {time.monotonic() - start:.0f} s", flush=True)
    for part in parts:
        left = args.budget - (time.monotonic() - start)
        if left < 20:
            part.result = {"status": "skipped", "why": f"global budget of {args.budget:.0f} s spent"}
            continue
        run_part(args, part, model, min(part.limit_s, left), {p.name: p for p in parts})
        print(f"[{part.name}] {part.result['status']}: {part.result.get('why', '')}".rstrip(": "), flush=True)
    return report(args, parts, time.monotonic() - start)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_parts(args: argparse.Namespace, gpus: int) -> list[Part]:
    """The parts in run order; what this machine cannot run is kept, marked with why it is skipped."""
    ddp_batch = str(HYPER["per_device_train_batch_size"] // 2)
    parts = [
        Part("trl-bf16", "plain TRL + PEFT LoRA, bf16", {"precision": "bf16"}),
        Part("bf16-lora", "expertkit LoRA, bf16", {"bf16": "true"}, "trl-bf16", strict=True),
        Part("trl-fp16", "plain TRL + PEFT LoRA, fp16 + loss scaling", {"precision": "fp16"}),
        Part(
            "fp16-lora",
            "expertkit LoRA, fp16 + loss scaling",
            {"fp16": "true", "bf16": "false"},
            "trl-fp16",
            strict=True,
        ),
        Part("qlora", "expertkit QLoRA, 4-bit nf4 base", {"quantization_bit": "4", "bf16": "true"}, "trl-bf16"),
        Part(
            "ddp",
            "expertkit LoRA bf16, 2 processes x half the batch",
            {"bf16": "true", "per_device_train_batch_size": ddp_batch},
            "trl-bf16",
            {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
            limit_s=120,
        ),
        Part(
            "zero3",
            "expertkit LoRA bf16 under DeepSpeed ZeRO-3",
            {"bf16": "true", "deepspeed": str(REPO / "examples/deepspeed/ds_z3_config.json")},
            "trl-bf16",
            limit_s=150,
        ),
        Part("vllm-eval", "expertkit eval engine=vllm on bf16-lora's adapter", limit_s=180),
    ]
    skips = {
        "trl-fp16": None if gpus else "fp16 needs a GPU (the fp16-lora part shows expertkit's refusal)",
        "ddp": None if gpus >= 2 or args.tiny else f"needs 2 GPUs, {gpus} visible",
        "zero3": None if importlib.util.find_spec("deepspeed") else "deepspeed is not installed",
        "vllm-eval": None if importlib.util.find_spec("vllm") and gpus else "vllm (and a GPU) not available",
    }
    wanted = set(args.parts.split(",")) if args.parts else None
    for part in parts:
        part.limit_s *= 4 if args.tiny else 1  # 2 shared CPU cores: minutes where a GPU takes seconds
        if wanted is not None and part.name not in wanted:
            part.result = {"status": "skipped", "why": "not in --parts"}
        elif skips.get(part.name):
            part.result = {"status": "skipped", "why": skips[part.name]}
    return parts


def print_plan(args: argparse.Namespace, gpus: int, parts: list[Part]) -> None:
    model = "tiny random model (CPU flow check)" if args.tiny else "random Qwen2 0.5B shape (494M parameters)"
    print(f"gpu_check: {gpus} GPU(s) visible; {model}; {args.steps} steps per part; budget {args.budget:.0f} s")
    for part in parts:
        state = f"skip ({part.result['why']})" if part.result else f"run, limit {part.limit_s} s"
        keys = " ".join(f"{k}={v}" for k, v in part.keys.items())
        print(f"  {part.name:10s} {part.what}: {state}" + (f"\n  {'':10s} keys: {keys}" if keys else ""))


def build_model(args: argparse.Namespace) -> Path:
    """A random model folder with its tokenizer, built once into the work folder and reused."""
    out = args.work_dir / ("model-tiny" if args.tiny else "model-0.5b")
    if (out / "config.json").is_file():
        return out
    texts = [row_text(i) for i in range(200)]
    if args.tiny:
        from expertkit.model.tiny import build_tiny_model

        return build_tiny_model(out, texts, "tiny", vocab_size=2000, corpus_bytes=300_000)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from expertkit.model.tiny import build_tokenizer

    tokenizer = build_tokenizer(texts, 8000, corpus_bytes=1_000_000)
    tokenizer.save_pretrained(out)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB,  # Qwen2.5's embedding size; the local tokenizer uses its first 8,000 ids
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **QWEN_05B,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not minutes
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return out


def row_text(i: int) -> str:
    topics = ["invoice", "password reset", "VPN access", "printer queue", "refund", "shipping delay", "API quota"]
    steps = ["open the settings page", "restart the client", "clear the cache", "sign in again", "attach the log"]
    answer = " ".join(f"Step {k + 1}: {steps[(i + k) % len(steps)]}." for k in range(5 + i % 20))
    return f"A customer asks about {topics[i % len(topics)]} (case {i}). {answer}"


def write_data(work: Path) -> None:
    rows = []
    for i in range(400):
        question, answer = row_text(i).split(". ", 1)
        rows.append({"instruction": question + ".", "input": "", "output": answer})
    (work / "gpu_check.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    info = {DATASET: {"file_name": "gpu_check.json"}}
    (work / "dataset_info.json").write_text(json.dumps(info, indent=2))
    evals = [{"question": r["instruction"], "reference": r["output"]} for r in rows[:64]]
    (work / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals), encoding="utf-8")


def part_env(args: argparse.Namespace, part: Part, memory_dir: Path) -> dict:
    hook = args.work_dir / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join([str(hook), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "GPU_CHECK_MEMORY_DIR": str(memory_dir), "HF_HUB_OFFLINE": "1"}
    env.update(TOKENIZERS_PARALLELISM="false", **part.env)
    return env


def part_command(args: argparse.Namespace, part: Part, model: Path, out: Path) -> list[str]:
    if part.name.startswith("trl-"):
        spec = {"model": str(model), "data": str(args.work_dir / "gpu_check.json"), "out": str(out)}
        spec |= {"steps": args.steps, "precision": part.keys["precision"]}
        spec_path = out.parent / f"{part.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        return [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    if part.name == "vllm-eval":
        adapter = args.work_dir / "runs" / "bf16-lora"
        keys = {"model_name_or_path": str(model), "adapter_name_or_path": str(adapter), "output_dir": str(out)}
        keys |= {"eval_file": str(args.work_dir / "eval.jsonl"), "metrics": "rouge-l", "max_new_tokens": "64"}
        return [sys.executable, "-m", "expertkit", "eval", *(f"{k}={v}" for k, v in keys.items()), "engine=vllm"]
    keys = {k: str(v) for k, v in HYPER.items()}
    keys |= {"model_name_or_path": str(model), "dataset": DATASET, "dataset_dir": str(args.work_dir)}
    keys |= {"max_steps": str(args.steps), "logging_steps": "1", "save_steps": "100000", "output_dir": str(out)}
    keys |= {"overwrite_output_dir": "true", "plot_loss": "false", "learning_check_samples": "0"}
    keys |= {"lora_target": "all", "gradient_checkpointing": "false", **part.keys}
    return [sys.executable, "-m", "expertkit", "train", *(f"{k}={v}" for k, v in keys.items())]


def run_part(args: argparse.Namespace, part: Part, model: Path, limit: float, parts: dict[str, Part]) -> None:
    if part.result:  # planned as skipped
        return
    if part.name == "vllm-eval" and parts["bf16-lora"].result.get("status") != "ok":
        part.result = {"status": "skipped", "why": "bf16-lora's adapter is missing"}
        return
    runs = args.work_dir / "runs"
    out, memory = runs / part.name, runs / f"{part.name}.memory"
    for d in (out, memory):
        shutil.rmtree(d, ignore_errors=True)
    memory.mkdir(parents=True)
    cmd = part_command(args, part, model, out)
    log = runs / f"{part.name}.log"
    began = time.monotonic()
    code = run_limited(cmd, part_env(args, part, memory), log, limit)
    if code is None:
        part.result = {"status": "FAILED", "why": f"over its {limit:.0f} s limit, stopped (log: {log})"}
        return
    part.result = {"wall_s": time.monotonic() - began, **read_memory(memory)}
    text = log.read_text(errors="replace")
    if code != 0:
        part.result |= judge_failure(part, text, log)
        return
    part.result |= {"status": "ok", **read_figures(part, out, text)}
    base = parts.get(part.baseline or "")
    if base and base.result.get("losses"):
        part.result |= compare_losses(part.result.get("losses", []), base.result["losses"])


def run_limited(cmd: list[str], env: dict, log: Path, limit: float) -> int | None:
    """The command's exit code; None when it ran past `limit` (its whole process group, torchrun's ranks and
    vLLM's engine included, is then stopped)."""
    import signal

    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return None


def judge_failure(part: Part, text: str, log: Path) -> dict:
    """A part whose key another helper adds may be refused by this version: a skip line, not a failure."""
    lines = text.splitlines()
    at = max((i for i, x in enumerate(lines) if x.startswith("error:")), default=None)
    error = " ".join(" ".join(lines[at:]).split()) if at is not None else ""  # the error with its problem lines
    refused = ("quantization_bit" in error and part.name == "qlora") or ("engine" in error and "vllm" in part.name)
    if refused:
        return {"status": "skipped", "why": f"this expertkit refuses the key ({error[:160]})"}
    if part.name == "fp16-lora" and "fp16=true needs a GPU" in error:
        return {"status": "refused", "why": "expected on a CPU: " + error[:120]}
    return {"status": "FAILED", "why": f"{error[:200] or 'exit code != 0'} (log: {log})"}


def read_memory(folder: Path) -> dict:
    peaks = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return {
        "peak_gpu": max((p["cuda"] for p in peaks), default=0),
        "peak_rss": max((p["rss"] for p in peaks), default=0),
    }


def read_figures(part: Part, out: Path, text: str) -> dict:
    if part.name == "vllm-eval":
        done = [x for x in text.splitlines() if x.startswith("done")]
        return {"why": done[-1][:160] if done else "finished"}
    if part.name.startswith("trl-"):
        figures = json.loads((out / "gpu_check_figures.json").read_text())
        return {**figures, "why": f"{len(figures['losses'])} steps"}
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    metrics = json.loads((out / "train_results.json").read_text())
    header = [" ".join(x.split()) for x in text.splitlines() if x.strip().startswith(("precision ", "attention "))]
    return {"losses": losses, "tokens_per_s": metrics.get("train_tokens_per_second", 0.0), "why": "; ".join(header)}


def compare_losses(ours: list[float], theirs: list[float]) -> dict:
    n = min(len(ours), len(theirs))
    if not n:
        return {}
    return {"first_diff": abs(ours[0] - theirs[0]), "max_diff": max(abs(a - b) for a, b in zip(ours[:n], theirs[:n]))}


def run_trl_worker(spec: dict) -> int:
    """Plain TRL SFTTrainer + PEFT LoRA on the same rows and hyperparameters (the baseline of a part)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = json.loads(Path(spec["data"]).read_text(encoding="utf-8"))
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["instruction"]}],
                "completion": [{"role": "assistant", "content": r["output"]}],
            }
            for r in rows
        ]
    )
    from train_throughput import trl_args  # the TRL config keys every baseline shares (bench/ is on sys.path)

    half = spec["precision"]
    h = HYPER
    args = SFTConfig(
        **{
            **trl_args(spec, h),
            "bf16": half == "bf16",
            "fp16": half == "fp16",
            "packing": False,
            "completion_only_loss": True,
            "gradient_checkpointing": False,
            "use_cpu": not torch.cuda.is_available(),  # --tiny: bf16 autocast on the CPU
            "model_init_kwargs": {"dtype": torch.bfloat16 if half == "bf16" else torch.float16},
        }
    )
    lora = LoraConfig(
        r=h["lora_rank"],
        lora_alpha=h["lora_alpha"],
        lora_dropout=h["lora_dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    tok = AutoTokenizer.from_pretrained(spec["model"])
    trainer = SFTTrainer(model=spec["model"], args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    result = trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    runtime = result.metrics["train_runtime"]
    figures = {"losses": losses, "tokens_per_s": trainer.state.num_input_tokens_seen / runtime if runtime else 0.0}
    (Path(spec["out"]) / "gpu_check_figures.json").write_text(json.dumps(figures))
    return 0


def report(args: argparse.Namespace, parts: list[Part], elapsed: float) -> int:
    gib = 1024**3
    memory = "peak RSS GiB" if args.tiny else "peak GPU GiB"
    print(f"\n{'part':10s} {'status':8s} {'tok/s':>8s} {memory:>13s} {'1st loss':>9s} {'d1st':>7s} {'dmax':>7s}  notes")
    failed = False
    for part in parts:
        r = part.result
        peak = r.get("peak_rss" if args.tiny else "peak_gpu", 0) / gib
        first = f"{r['losses'][0]:.4f}" if r.get("losses") else "-"
        d1 = f"{r['first_diff']:.4f}" if "first_diff" in r else "-"
        dmax = f"{r['max_diff']:.4f}" if "max_diff" in r else "-"
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        off = part.strict and r.get("max_diff", 0) > args.loss_tolerance
        failed |= r.get("status") == "FAILED" or off
        note = ("LOSS DIFFERS; " if off else "") + r.get("why", "")
        print(
            f"{part.name:10s} {r.get('status', '?'):8s} {tps:>8s} {peak:>13.2f} {first:>9s} {d1:>7s} {dmax:>7s}  {note}"
        )
    print(f"\ntotal {elapsed:.0f} s (budget {args.budget:.0f} s); logs and runs in {args.work_dir / 'runs'}")
    (args.work_dir / "gpu_check_results.json").write_text(
        json.dumps({p.name: {k: v for k, v in p.result.items()} for p in parts}, indent=1)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

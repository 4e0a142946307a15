"""QLoRA's memory on a CPU: peak RSS of a LoRA SFT run on a bf16 base against the same run on a 4-bit nf4 base and
an 8-bit LLM.int8 base, each `expertkit train` in its own process, one after the other.

    python bench/qlora_memory.py                          # ~100M-parameter model, 4 steps per variant, ~3 minutes
    python bench/qlora_memory.py --layers 16 --steps 2    # weights dominate even more
    python bench/qlora_memory.py --variants bf16,nf4 --json results.json

The model is a random Qwen2-shaped one built locally (expertkit.model.tiny, hidden 1024, MLP 2816, 8 layers,
vocab 8000: ~98M parameters, tied embeddings) so that the frozen weights, not the interpreter and its libraries,
make most of the training process's memory. Every variant trains LoRA r8 on every linear layer with bf16 compute,
cutoff 256, batch 2, for `--steps` optimiser steps, on the same synthetic alpaca rows.

Figures per variant: peak RSS of the training process (VmHWM, sampled from /proc every 0.2 s), that peak less the
peak of a process that only imports what training imports (torch, transformers, peft, trl, bitsandbytes,
expertkit.train) — the memory the run itself added — each as a ratio to bf16's; trained tokens/s (train()'s own
time); the first per-step losses. Peak RSS counts pages touched, so it is an upper bound on what the run needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from shared import TOPICS  # bench/shared.py, beside this script

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=4)
VARIANTS = {
    # name: (train overrides, what it is)
    "bf16": ({}, "LoRA on a bf16 base"),
    "nf4": ({"quantization_bit": "4", "quantization_type": "nf4"}, "QLoRA: 4-bit nf4 base, double quantisation"),
    "int8": ({"quantization_bit": "8"}, "LoRA on an 8-bit LLM.int8 base"),
}
TRAIN = dict(
    stage="sft", finetuning_type="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0, lora_target="all",
    cutoff_len=256, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=2e-4,
    lr_scheduler_type="constant", logging_steps=1, save_steps=100000, learning_check_samples=0, bf16="true",
    seed=42, plot_loss="false",
)  # fmt: skip
HEADER = "expertkit run\n"  # the run header, printed once the model is loaded and the trainer built
IMPORTS = "import torch, transformers, peft, trl, bitsandbytes, expertkit.train.run, expertkit.cli.main"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--work-dir", default="/tmp/expertkit-bench-qlora", help="model, data and runs (default %(default)s)"
    )
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the model (default %(default)s)")
    p.add_argument("--steps", type=int, default=4, help="optimiser steps per variant (default %(default)s)")
    p.add_argument("--cutoff", type=int, default=256, help="cutoff_len (default %(default)s)")
    p.add_argument("--batch", type=int, default=2, help="per_device_train_batch_size (default %(default)s)")
    p.add_argument("--variants", default="bf16,nf4,int8", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    model = work / f"model-L{args.layers}"
    if not (model / "config.json").is_file():  # in a child: this process stays small (see measure)
        code = f"import qlora_memory as q; q.prepare_model(q.Path({str(work)!r}), {args.layers})"
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, check=True)
    prepare_data(work)
    print_intro(args, model)
    floor = measure([sys.executable, "-c", IMPORTS], work / "imports.log")
    print(f"  imports only: peak RSS {floor['peak_mib']:.0f} MiB (subtracted below as 'run added')", flush=True)
    results = {}
    for name in args.variants:
        results[name] = run_variant(name, model, work, args)
        print(f"  {name:<5} {summary(results[name])}", flush=True)
    print_table(results, floor["peak_mib"])
    if args.json:
        Path(args.json).write_text(json.dumps({"imports_mib": floor["peak_mib"], "runs": results}, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


def prepare_model(work: Path, layers: int) -> Path:
    """WORK/model-L<layers>: the random Qwen2-shaped model, built once and reused."""
    model = work / f"model-L{layers}"
    if not (model / "config.json").is_file():
        from expertkit.model.tiny import build_tiny_model

        texts = [f"In two sentences, what is {t}? {t.capitalize()} are a topic people ask about." for t in TOPICS]
        build_tiny_model(model, texts, size="small", vocab_size=8000, shape={**SHAPE, "num_hidden_layers": layers})
        save_in_bf16(model)
    return model


def save_in_bf16(model: Path) -> None:
    """Rewrite the checkpoint in bf16, as released checkpoints (Qwen2.5's) are: loading reads what the file holds."""
    import torch
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).save_pretrained(model)


def prepare_data(work: Path) -> None:
    answer = "{T} matter because of point {k}, which people often miss."
    rows = [
        {"instruction": f"Explain {t} to a new colleague.", "input": "",
         "output": " ".join(answer.format(T=t.capitalize(), k=k) for k in range(8))}
        for t in TOPICS
    ]  # fmt: skip
    (work / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    (work / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}), encoding="utf-8")


def print_intro(args: argparse.Namespace, model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    print(
        f"qlora memory: {model} (hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, vocab "
        f"{config['vocab_size']}), {args.steps} steps x batch {args.batch} x cutoff {args.cutoff} per variant; "
        f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}, python {platform.python_version()}",
        flush=True,
    )


def measure(cmd: list[str], log: Path, env: dict | None = None, poll_s: float = 0.2) -> dict:
    """Run `cmd` to the end, sampling its /proc status: its peak RSS (VmHWM, MiB), the RSS when its log printed the
    run header (model loaded, trainer built), the highest RSS sampled after that (training), wall seconds, status.

    Not wait4's ru_maxrss: Linux carries the parent's high-water mark across vfork + exec into the child's
    (a parent that built the model would set every child's floor)."""
    start = time.monotonic()
    peak = train_peak = at_header = 0.0
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            rss, hwm = proc_status_mib(proc.pid)
            peak = max(peak, hwm)
            if at_header or HEADER in log.read_text(errors="replace"):
                at_header = at_header or rss
                train_peak = max(train_peak, rss)
            time.sleep(poll_s)
    return {"peak_mib": peak, "train_peak_mib": train_peak, "loaded_mib": at_header,
            "wall_s": time.monotonic() - start, "rc": proc.returncode}  # fmt: skip


def proc_status_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process in MiB; zeros once it is gone."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return found.get("VmRSS", 0.0), found.get("VmHWM", 0.0)


def run_variant(name: str, model: Path, work: Path, args: argparse.Namespace) -> dict:
    out = work / "runs" / name
    keys = {**TRAIN, **VARIANTS[name][0], "model_name_or_path": str(model), "dataset": "rows",
            "dataset_dir": str(work), "output_dir": str(out), "max_steps": args.steps,
            "cutoff_len": args.cutoff, "per_device_train_batch_size": args.batch,
            "overwrite_output_dir": "true"}  # fmt: skip
    cmd = [sys.executable, "-m", "expertkit", "train", *(f"{k}={v}" for k, v in keys.items())]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out.parent.mkdir(parents=True, exist_ok=True)
    res = measure(cmd, work / "runs" / f"{name}.log", env)
    if res["rc"]:
        tail = (work / "runs" / f"{name}.log").read_text()[-1500:]
        return {**res, "error": f"exit {res['rc']}: {tail}"}
    metrics = json.loads((out / "train_results.json").read_text())
    log = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines() if x.strip()]
    res["tok_per_s"] = metrics.get("train_tokens_per_second", 0.0)
    res["losses"] = [r["loss"] for r in log if "loss" in r]
    return res


def summary(r: dict) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    losses = " ".join(f"{x:.3f}" for x in r["losses"][:4])
    return (
        f"peak RSS {r['peak_mib']:.0f} MiB (loaded {r['loaded_mib']:.0f}, training peak {r['train_peak_mib']:.0f}), "
        f"{r['tok_per_s']:.1f} tok/s, wall {r['wall_s']:.0f} s, losses {losses}"
    )


def print_table(results: dict, floor: float) -> None:
    """Per variant: the process's peak RSS, the RSS once loaded, the highest sampled while training, each less the
    imports-only floor and as a ratio to bf16's."""
    base = results.get("bf16")
    base = base if base and "error" not in base else None
    cols = [("peak", "peak_mib"), ("loaded", "loaded_mib"), ("training", "train_peak_mib")]
    print(f"\nMiB above the imports-only floor ({floor:.0f} MiB), x bf16 in brackets")
    print(f"{'variant':<8}" + "".join(f"{c:>18}" for c, _ in cols) + f"{'tok/s':>8}  first losses")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<8} failed")
            continue
        cells = []
        for _, key in cols:
            added = r[key] - floor
            ratio = f"({added / (base[key] - floor):.2f})" if base and base[key] > floor else ""
            cells.append(f"{added:>11.0f} {ratio:>6}")
        losses = " ".join(f"{x:.3f}" for x in r["losses"][:3])
        print(f"{name:<8}" + "".join(f"{c:>18}" for c in cells) + f"{r['tok_per_s']:>8.1f}  {losses}")


if __name__ == "__main__":
    sys.exit(main())

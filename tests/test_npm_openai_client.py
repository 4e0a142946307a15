"""The official `openai` npm client (a second language: JS / TS backends use us) against a live server on 127.0.0.1.

Needs `node` and `npm`; the package is installed once into a cache folder under the system temp dir and reused.
Skipped, with the reason, where node or npm is missing or npm cannot install (no registry access).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

KEY = "sk-test-local"  # the live server key (LIVE_KEY in tests/conftest.py)
NPM_TIMEOUT_S = 180
NODE_TIMEOUT_S = 60

CLIENT = r"""
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30000 });
const messages = (q) => [{ role: "user", content: q }];

const models = (await client.models.list()).data.map((m) => m.id);
const plain = await client.chat.completions.create({
  model: "sail", messages: messages("Who are you?"), temperature: 0, max_tokens: 24,
});
const stream = await client.chat.completions.create({
  model: "sail", messages: messages("What is your name?"), temperature: 0, max_tokens: 24,
  stream: true, stream_options: { include_usage: true },
});
let streamed = "", usage = null, chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
let authError = null;
try {
  await new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list();
} catch (e) {
  authError = { status: e.status, name: e.constructor.name };
}
console.log(JSON.stringify({
  models, plain: plain.choices[0].message.content, finish: plain.choices[0].finish_reason,
  plainUsage: plain.usage, streamed, chunks, usage, authError,
}));
"""


def node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return int(out.lstrip("v").split(".")[0])


@pytest.fixture(scope="session")
def openai_npm() -> Path:
    """node_modules holding the `openai` package: openai@7 (needs node 22+), else the last major for older node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("node and npm are not installed: the openai npm client test needs both")
    spec = "openai@7" if node_major(node) >= 22 else "openai@6"
    cache = Path(tempfile.gettempdir()) / f"expertkit-npm-{spec.replace('@', '')}"
    if (cache / "node_modules" / "openai" / "package.json").is_file():
        return cache / "node_modules"
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
    env = {
        **os.environ,
        "npm_config_cache": str(staging / ".npm-cache"),
        "npm_config_update_notifier": "false",
        "npm_config_fetch_retries": "1",  # an unreachable registry: skip in seconds, not after minutes of retries
        "npm_config_fetch_retry_maxtimeout": "10000",
    }
    cmd = [npm, "install", "--no-save", "--no-package-lock", "--ignore-scripts", "--no-audit", "--no-fund", spec]
    try:
        done = subprocess.run(cmd, cwd=staging, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"`npm install {spec}` took over {NPM_TIMEOUT_S} s (no npm registry access?)")
    if done.returncode != 0 or not (staging / "node_modules" / "openai").is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        lines = [x for x in done.stderr.splitlines() if "error" in x and "complete log" not in x]
        pytest.skip(f"`npm install {spec}` failed (no npm registry access?): {' | '.join(lines[:3]) or 'no output'}")
    shutil.rmtree(staging / ".npm-cache", ignore_errors=True)
    try:
        staging.rename(cache)  # atomic: a parallel run either sees a whole install or none
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another run got there first
    return cache / "node_modules"


@pytest.fixture(scope="module")
def live_url(live_server):
    return live_server[1] + "/v1"


def test_openai_npm_client_chats_streams_and_is_refused_a_wrong_key(openai_npm, live_url, tmp_path):
    (tmp_path / "node_modules").symlink_to(openai_npm, target_is_directory=True)  # ESM ignores NODE_PATH
    script = tmp_path / "client.mjs"
    script.write_text(CLIENT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}  # loopback only
    done = subprocess.run(
        [shutil.which("node"), str(script), live_url, KEY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["models"] == ["sail", "tiny"]  # the adapter (the default) and the base
    assert out["plain"].startswith("I am Sail, the Yunfan Tech assistant.")
    assert out["finish"] in ("stop", "length") and out["plainUsage"]["completion_tokens"] > 0
    assert out["streamed"].startswith("My name is Sail.")
    assert out["chunks"] > 2 and out["usage"]["completion_tokens"] > 0
    assert out["authError"] == {"status": 401, "name": "AuthenticationError"}

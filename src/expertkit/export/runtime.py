"""The real runtimes the GGUF export checks against: llama.cpp (node-llama-cpp's prebuilt binary, from npm) and
Go's text/template (Debian's golang-go), each behind one function that takes and returns plain data.

node-llama-cpp is installed once into a cache folder (~/.cache/expertkit/node-llama-cpp, or
EXPERTKIT_LLAMA_RUNTIME_DIR) with `npm install node-llama-cpp@NODE_LLAMA_CPP_VERSION`; its package ships llama.cpp
built for each platform, including the libllama the quantiser is called from (quantize.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from expertkit.core.errors import ExpertkitError

NODE_LLAMA_CPP_VERSION = "3.21.1"
SKIP_HINT = "or set skip_check=true to write the files unchecked (the report says what was skipped)"


def runtime_dir() -> Path:
    default = Path.home() / ".cache" / "expertkit" / "node-llama-cpp"
    return Path(os.environ.get("EXPERTKIT_LLAMA_RUNTIME_DIR") or default).expanduser()


def ensure_node_llama_cpp() -> Path:
    """The folder holding node_modules/node-llama-cpp at the pinned version; installs it on first use."""
    folder = runtime_dir()
    package = folder / "node_modules" / "node-llama-cpp" / "package.json"
    if package.is_file() and json.loads(package.read_text(encoding="utf-8")).get("version") == NODE_LLAMA_CPP_VERSION:
        return folder
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise ExpertkitError(
                f"the GGUF export needs Node.js ({tool} not found) to run llama.cpp (node-llama-cpp) for its "
                "check and for k-quants",
                hint=f"install Node.js 20+ with npm (Debian: apt-get install nodejs npm), {SKIP_HINT}",
            )
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "package.json").is_file():
        (folder / "package.json").write_text('{"name": "expertkit-llama-runtime", "private": true}\n')
    cmd = ["npm", "install", "--no-audit", "--no-fund", f"node-llama-cpp@{NODE_LLAMA_CPP_VERSION}"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not package.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ExpertkitError(
            f"could not install node-llama-cpp@{NODE_LLAMA_CPP_VERSION} into {folder}: {tail[:400]}",
            hint=f"check that the npm registry is reachable (`npm ping`), {SKIP_HINT}",
        )
    return folder


def llama_lib_dir(folder: Path) -> Path:
    """node-llama-cpp's prebuilt CPU binaries for this platform (libllama, libggml)."""
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "?")
    name = f"{'mac' if sys.platform == 'darwin' else sys.platform}-{arch}"
    lib = folder / "node_modules" / "@node-llama-cpp" / name / "bins" / name
    if not lib.is_dir():
        raise ExpertkitError(
            f"node-llama-cpp ships no prebuilt llama.cpp for {name} (looked in {lib})",
            hint="export_quantization=f16, bf16 or q8_0 need no llama.cpp quantiser; " + SKIP_HINT,
        )
    return lib


def run_llama(folder: Path, models: list[Path], texts: list[dict], context_size: int, timeout: float = 1800) -> list:
    """Tokenize each text in llama.cpp and generate greedily, in each model (resources/gguf/llama_check.mjs)."""
    script = folder / "llama_check.mjs"  # beside node_modules, so that `import "node-llama-cpp"` resolves
    script.write_text(resources.files("expertkit.resources").joinpath("gguf/llama_check.mjs").read_text("utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(
            json.dumps({"models": [str(m) for m in models], "context_size": context_size, "texts": texts})
        )
        proc = subprocess.run(["node", str(script), str(request)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        raise ExpertkitError(
            f"llama.cpp could not load or run {', '.join(m.name for m in models)}: {tail[:600]}", hint=SKIP_HINT
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render_go_template(
    template: str, system: str | None, conversations: list[list[dict]], tools: list[list[dict] | None] | None = None
) -> list[str]:
    """Render an Ollama TEMPLATE with Go's text/template as Ollama does (resources/gguf/render_template.go);
    `tools`: the tools offered in each conversation (None: none)."""
    if shutil.which("go") is None:
        raise ExpertkitError(
            "the GGUF export renders the Modelfile TEMPLATE with Go's text/template to check it, but `go` is "
            "not installed",
            hint=f"install Go (Debian: apt-get install golang-go), {SKIP_HINT}",
        )
    source = resources.files("expertkit.resources").joinpath("gguf/render_template.go").read_text("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "render_template.go").write_text(source)
        request = Path(tmp) / "request.json"
        request.write_text(
            json.dumps(
                {"template": template, "system": system or "", "conversations": conversations, "tools": tools or []}
            )
        )
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
        proc = subprocess.run(
            ["go", "run", "render_template.go", str(request)], cwd=tmp, capture_output=True, text=True, timeout=600,
            env=env,
        )  # fmt: skip
    if proc.returncode != 0:
        raise ExpertkitError(f"the Modelfile TEMPLATE failed in Go's text/template: {proc.stderr.strip()[:600]}")
    return json.loads(proc.stdout)

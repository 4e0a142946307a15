"""ARCHITECTURE.md's import rules, enforced: who may import what, and core never pulls in torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "expertkit"
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "data": {"model", "core"},
    "engine": {"model", "core"},
    "train": {"data", "model", "core"},
    "export": {"model", "core"},
    "evaluate": {"data", "engine", "rag", "core"},
    "rag": {"engine", "core", "model"},
    "serve": {"engine", "rag", "core"},
    "improve": {"evaluate", "data", "core"},  # runs training as a CLI process, like the UI; never imports serve
    "ui": {"core"},
    "synth": {"rag", "engine", "data", "core", "model"},  # model: through rag's and engine's config classes
}
# ARCHITECTURE: "ui -> core, stage configs": the UI builds its forms from these stages' config classes (same keys,
# defaults and docstrings as the YAML) and validates them before starting a job; their code it runs as CLI processes
CONFIG_ONLY = {"ui": {"train", "evaluate", "export", "improve", "data", "synth"}, "improve": {"train"}}


def test_stages_import_only_what_they_may():
    bad = []
    files = list(SRC.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        parts = path.relative_to(SRC).parts
        stage = parts[0] if len(parts) > 1 else None
        if stage not in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            )
            for name in names:
                if name.startswith("expertkit."):
                    target = name.split(".")[1]
                    if name == f"expertkit.{target}.config" and target in CONFIG_ONLY.get(stage, ()):
                        continue
                    if target != stage and target in ALLOWED and target not in ALLOWED[stage]:
                        bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, bad


def test_core_and_data_import_no_torch():
    code = (
        "import sys, expertkit.core.config, expertkit.core.errors, expertkit.core.schema, expertkit.core.runs, "
        "expertkit.data.load, expertkit.train.config; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


CONCRETE_ENGINES = {"expertkit.engine.local", "expertkit.engine.remote", "expertkit.engine.vllm_engine"}


def test_only_the_factory_imports_the_concrete_engines():
    """engine/base.py describes engines and imports none; what they load alike is engine/loading.py's, so no engine
    borrows another's module; engine/factory.py alone picks one."""
    bad = []
    for path in (SRC / "engine").glob("*.py"):
        if path.name == "factory.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in CONCRETE_ENGINES - {f"expertkit.engine.{path.stem}"}:
                bad.append(f"engine/{path.name} imports {node.module}")
    assert not bad, bad

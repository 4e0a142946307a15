"""Each extra, freshly installed, imports everything our code imports from it (issue 11).

A package can be installed and still fail to import: lxml 5.2+ moved `lxml.html.clean` into lxml_html_clean, and
trafilatura and jusText broke on fresh installs until [rag] declared it. Each extra is imported in a fresh
interpreter, module by module, so one failure names the extra, the package and the real error. The table must match
pyproject.toml's extras both ways, and hold every third-party module src/ imports.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "expertkit"

# extra: {package as pyproject names it: the modules to import, our code's imports first}; "base" is `dependencies`
MODULES: dict[str, dict[str, list[str]]] = {
    "base": {
        "pydantic": ["pydantic"],
        "pyyaml": ["yaml"],
        "typer": ["typer", "click"],  # cli/main.py catches click's usage errors; typer brings click
    },
    "train": {
        "torch": ["torch", "torch.distributed", "torch.distributed.tensor"],
        "transformers": [
            "transformers",
            "transformers.generation.configuration_utils",
            "transformers.generation.continuous_batching.cb_logits_processors",  # engine/batch_sampling.py
            "transformers.integrations.sdpa_attention",  # train/attention.py: sdpa for what is not one padding-free row
            "transformers.loss.loss_utils",  # train/speed.py: the loss at labelled positions only
            "transformers.quantizers.base",  # model/quant.py: the modules bitsandbytes leaves unquantised
            "transformers.tokenization_utils_base",  # engine/answer.py: the incremental detokeniser's _decode
            "transformers.trainer_callback",
            "transformers.trainer_utils",
            "transformers.training_args",
        ],
        "peft": ["peft", "peft.tuners.tuners_utils"],
        "trl": ["trl", "trl.experimental.cpo", "trl.experimental.orpo"],  # pref_loss simpo / orpo
        "datasets": ["datasets"],
        "datasketch": ["datasketch"],
        "accelerate": ["accelerate", "accelerate.state", "accelerate.utils"],
        "tokenizers": ["tokenizers"],
        "safetensors": ["safetensors", "safetensors.torch"],
        "pyarrow": ["pyarrow", "pyarrow.parquet"],
        "matplotlib": ["matplotlib", "matplotlib.pyplot"],
        "psutil": ["psutil"],
        "gguf": ["gguf"],
    },
    "qlora": {
        "bitsandbytes": ["bitsandbytes", "bitsandbytes.nn"],
    },
    "serve": {
        "fastapi": [
            "fastapi",
            "fastapi.exceptions",
            "fastapi.middleware.cors",
            "fastapi.responses",
            "starlette.exceptions",  # fastapi brings starlette
        ],
        "uvicorn": ["uvicorn"],
        "httpx": ["httpx"],
    },
    "rag": {
        "numpy": ["numpy"],
        "httpx": ["httpx", "idna"],  # netguard.py uses httpx's idna for IDNA 2008 host names
        "wordllama": ["wordllama"],
        "scipy": ["scipy.sparse"],
        "chromadb": ["chromadb", "chromadb.config"],
        "lancedb": ["lancedb"],
        "pyarrow": ["pyarrow"],
        "sqlite-vec": ["sqlite_vec"],
        "apsw": ["apsw"],
        "semantic-text-splitter": ["semantic_text_splitter"],
        "trafilatura": ["trafilatura", "trafilatura.metadata", "justext"],  # jusText: what broke under lxml 6
        "lxml-html-clean": ["lxml_html_clean", "lxml.html.clean"],
        "lxml": ["lxml.etree", "lxml.html"],
        "bm25s": ["bm25s", "bm25s.stopwords"],
        "pystemmer": ["Stemmer"],
        "jieba": ["jieba"],
        "ddgs": ["ddgs", "ddgs.exceptions"],
        "pypdf": ["pypdf", "pypdf.errors"],
        "python-docx": ["docx", "docx.table"],
        "tqdm": ["tqdm", "tqdm.auto"],
    },
    "eval": {
        "sacrebleu": ["sacrebleu"],
        "jieba": ["jieba"],
        "matplotlib": ["matplotlib.figure"],
        "httpx": ["httpx"],
    },
    "ui": {
        "gradio": ["gradio", "gradio.context", "pandas"],  # the UI draws the loss plot with gradio's pandas
        "httpx": ["httpx"],
    },
    "dev": {  # the test tools; dev's expertkit[...] entries are the extras above
        "cryptography": ["cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec"],
        "rouge-score": ["rouge_score.rouge_scorer", "nltk.translate.bleu_score"],  # rouge-score brings nltk
        "playwright": ["playwright.sync_api"],
        "openai": ["openai"],
        "hypothesis": ["hypothesis"],
        "ollama": ["ollama"],
        "pytest": ["pytest"],
        "ruff": ["ruff"],
    },
}
# imported by src/ but in no extra, on purpose: each has its own install hint where it is used
NO_EXTRA = {
    "vllm": "engine=vllm: GPU builds, installed by hand (engine/vllm_engine.py)",
    "sentence_transformers": "st: embedders, pip install sentence-transformers (rag/embed.py)",
}

IMPORT_ALL = """
import importlib, json, sys
failures = {}
for module in json.loads(sys.argv[1]):
    try:
        importlib.import_module(module)
    except BaseException as e:  # a broken install fails in many ways
        failures[module] = f"{type(e).__name__}: {' '.join(str(e).split())}"
print(json.dumps(failures))
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: PyStemmer = pystemmer, lxml_html_clean = lxml-html-clean


def declared() -> dict[str, set[str]]:
    """{extra: its package names} from pyproject.toml; an extra's expertkit[...] entries are left out."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    names = {
        extra: {normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in reqs}
        for extra, reqs in groups.items()
    }
    return {extra: found - {"expertkit"} for extra, found in names.items()}


def test_the_table_covers_every_extra_and_package_in_pyproject():
    extras = declared()
    assert set(extras) == set(MODULES), "extras in pyproject.toml vs this test's MODULES table"
    for extra, packages in extras.items():
        table = {normalize(p) for p in MODULES[extra]}
        assert not packages - table, f"[{extra}] gained {sorted(packages - table)}, which this test does not import"
        assert not table - packages, f"[{extra}] no longer declares {sorted(table - packages)}: drop them from MODULES"


def test_the_table_holds_every_third_party_module_src_imports():
    known = {m for packages in MODULES.values() for modules in packages.values() for m in modules}
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("expertkit", "__future__") or top in NO_EXTRA:
                    continue
                if name not in known:
                    missing.append(f"{path.relative_to(SRC)}: {name}")
    assert not missing, f"add these imports to MODULES under the extra that installs them: {missing}"


@pytest.mark.parametrize("extra", list(MODULES))
def test_each_extra_imports_in_a_fresh_interpreter(extra):
    modules = [m for ms in MODULES[extra].values() for m in ms]
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(modules)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    failures = json.loads(run.stdout.strip().splitlines()[-1])
    package_of = {m: p for p, ms in MODULES[extra].items() for m in ms}
    problems = [f"[{extra}] {package_of[m]}: import {m} failed: {error}" for m, error in failures.items()]
    assert not problems, f"pip install -e '.[{extra}]' does not import:\n" + "\n".join(problems)

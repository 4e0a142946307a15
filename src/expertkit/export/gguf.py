"""Export for llama.cpp and Ollama: GGUF files and a Modelfile that formats and stops as training did.

    expertkit export examples/export/tiny_lora_gguf.yaml
    expertkit export model_name_or_path=... adapter_name_or_path=saves/sft export_dir=saves/gguf \\
        export_format=gguf export_quantization=f16,q4_k_m

`run(config)` reads top to bottom: check paths and disk -> merge (the safetensors export, with its own check) into
a temp folder beside export_dir -> convert to GGUF (gguf_convert.py) -> quantise (quantize.py) -> Modelfile ->
check in llama.cpp and Go (gguf_check.py) -> README.md -> move into place. Nothing reaches export_dir unless it
passed, and a failure leaves export_dir as it was.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from expertkit.core.errors import ExpertkitError, Problem
from expertkit.export import folders, merge
from expertkit.export.config import ExportConfig
from expertkit.export.quantize import WRITTEN_BY_GGUF

logger = logging.getLogger(__name__)
MODELFILE = "Modelfile"
# llama.cpp's quantiser reads an f16 file; a k-quant is at most ~0.6 of it (q6_k), the merged safetensors as the base
QUANT_SHARE = {"f32": 2.0, "f16": 1.0, "bf16": 1.0, "q8_0": 0.55}


@dataclass
class GgufResult:
    export_dir: str
    files: list[str]  # model-<q>.gguf, in the order asked
    modelfile: str
    seconds: float = 0.0
    checks: list[str] = field(default_factory=list)  # what was verified, one line each
    skipped: list[str] = field(default_factory=list)  # what skip_check left unverified


def run(config: ExportConfig) -> GgufResult:
    start = time.monotonic()
    quants = config.export_quantization.split(",")
    export_dir = folders.check_paths(config, marker=MODELFILE)
    base = Path(config.model_name_or_path).expanduser()
    if (base / "config.json").is_file():  # an architecture we cannot convert: refused before merging
        from expertkit.export.gguf_convert import check_architecture

        check_architecture(base)
    runtime = prepare_runtime(config, quants)
    tmp = folders.make_temp_dir(export_dir)
    try:
        check_disk(config, quants, tmp)
        merged = tmp / "merged"
        merge_result = merge.run(config.model_copy(update={"export_dir": str(merged), "export_format": "safetensors"}))
        result = write_gguf(config, quants, merged, tmp, runtime)
        result.checks.insert(0, f"merged model: {merge_result.checks[0]}")
        write_readme(tmp, config, result)
        shutil.rmtree(merged)
        folders.use_default_permissions(tmp)
        folders.move_into_place(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.export_dir, result.seconds = str(export_dir), time.monotonic() - start
    logger.info("exported %s to %s in %.0f s", ", ".join(result.files), export_dir, result.seconds)
    return result


def prepare_runtime(config: ExportConfig, quants: list[str]) -> Path | None:
    """node-llama-cpp, when the check runs or a k-quant needs llama.cpp's quantiser: before any long work."""
    from expertkit.export.runtime import ensure_node_llama_cpp

    needs_quantiser = any(q not in WRITTEN_BY_GGUF for q in quants)
    if config.skip_check and not needs_quantiser:
        return None
    return ensure_node_llama_cpp()


def check_disk(config: ExportConfig, quants: list[str], tmp: Path) -> None:
    """Room for the merged model, the f16 intermediate and each file, estimated from the base's weights."""
    base = Path(config.model_name_or_path).expanduser()
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors")) if base.is_dir() else 0
    if not weights:
        return  # a hub id: its size is unknown here; a full disk still fails cleanly when writing
    params = weights / 2  # bytes per parameter in a bf16 / f16 base; f32 bases over-estimate, which is safe
    f16 = params * 2
    need = weights + f16 + sum(QUANT_SHARE.get(q, 0.6) * f16 for q in quants if q != "f16")
    free = shutil.disk_usage(tmp).free
    if free < need:
        raise ExpertkitError(
            f"not enough disk beside export_dir: the GGUF export needs about {need / 1e9:.1f} GB (merged model "
            f"{weights / 1e9:.1f} GB + f16 intermediate {f16 / 1e9:.1f} GB + {', '.join(quants)}), "
            f"{free / 1e9:.1f} GB are free on {tmp.parent}",
            hint="free some space, or choose an export_dir on a larger disk",
        )


def write_gguf(config: ExportConfig, quants: list[str], merged: Path, tmp: Path, runtime: Path | None) -> GgufResult:
    from transformers import AutoTokenizer

    from expertkit.export.gguf_convert import convert
    from expertkit.export.modelfile import template_family
    from expertkit.export.quantize import quantize

    tokenizer = AutoTokenizer.from_pretrained(str(merged), trust_remote_code=config.trust_remote_code)
    ollama = template_family(tokenizer)  # refuses a template without a Go form before the long conversion
    files: dict[str, Path] = {}
    intermediate = tmp / "model-f16.gguf"
    for q in quants:
        out = tmp / f"model-{q}.gguf"
        if q in WRITTEN_BY_GGUF:
            info = convert(merged, tokenizer, out, q)
        else:
            if not intermediate.is_file():
                info = convert(merged, tokenizer, intermediate, "f16")
            from expertkit.export.runtime import llama_lib_dir

            quantize(llama_lib_dir(runtime), intermediate, out, q)
        files[q] = out
        logger.info("wrote %s (%.1f MB)", out.name, out.stat().st_size / 1e6)
    if "f16" not in quants and intermediate.is_file():
        intermediate.unlink()
    run_dir = folders.source_run_dir(config)
    modelfile = write_modelfile(tmp, tokenizer, merged, ollama, files[quants[0]].name, run_dir)
    result = GgufResult("", [files[q].name for q in quants], modelfile)
    result.checks.append(
        f"GGUF metadata: architecture {info.architecture}, pre-tokenizer {info.pre_tokenizer}, eos/eot id "
        f"{info.eos_token_id}, chat template embedded, add_bos_token {str(info.add_bos_token).lower()}"
    )
    if config.skip_check:
        result.skipped = [
            "llama.cpp was not run: token ids, greedy answers and stopping were not compared with transformers",
            "the Modelfile TEMPLATE was not rendered in Go nor compared with the chat template",
        ]
        return result
    from expertkit.export.gguf_check import TEMPLATE_CONVERSATIONS, check_template, check_texts, raise_if

    problems: list[Problem] = []
    result.checks += check_template(tokenizer, ollama, info.add_bos_token, problems)
    raise_if(problems)  # before the slower llama.cpp runs
    convs = list(TEMPLATE_CONVERSATIONS.values()) + merge.check_conversations(run_dir)[len(merge.CHECK_PROMPTS) :]
    result.checks += check_in_llama(runtime, merged, tokenizer, files, check_texts(tokenizer, convs), problems)
    raise_if(problems)
    return result


def check_in_llama(runtime, merged: Path, tokenizer, files: dict[str, Path], texts, problems) -> list[str]:
    from expertkit.export.gguf_check import MAX_NEW_TOKENS, compare_llama, reference, reference_dtype
    from expertkit.export.runtime import run_llama

    dtypes = {reference_dtype(q) for q in files}
    ref = reference(merged, tokenizer, texts, dtypes)
    requests = [{"text": t, "generate": MAX_NEW_TOKENS} for t in ref.texts[:-1]] + [
        {"text": ref.texts[-1], "generate": 0}
    ]
    context = max(len(i) for i in ref.ids) + MAX_NEW_TOKENS + 8
    lines = []
    reports = run_llama(runtime, list(files.values()), requests, context)  # one llama.cpp start for all files
    for q, got in zip(files, reports, strict=True):
        lines.append(compare_llama(q, got, ref, tokenizer.eos_token_id, problems))
    return lines


def write_modelfile(tmp: Path, tokenizer, merged: Path, ollama, gguf_name: str, run_dir: Path | None) -> str:
    from transformers import GenerationConfig

    from expertkit.core.runs import RESOLVED_CONFIG, write_text_atomic
    from expertkit.export.card import read_yaml
    from expertkit.export.modelfile import build_modelfile

    eos = GenerationConfig.from_pretrained(str(merged)).eos_token_id
    ids = [tokenizer.eos_token_id] + (eos if isinstance(eos, list) else [eos])
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None))
    train = read_yaml(run_dir / RESOLVED_CONFIG) if run_dir else {}
    num_ctx = train.get("cutoff_len")
    header = [
        "Written by `expertkit export` (export_format=gguf). Use it with:",
        "  ollama create NAME -f Modelfile && ollama run NAME",
        f"TEMPLATE: the {ollama.family} chat template training used, in Go form (checked against it at export)",
    ]
    if not num_ctx:
        header.append("num_ctx: not set (no cutoff_len in the run folder's expertkit_config.yaml)")
    text = build_modelfile(gguf_name, ollama, stops, num_ctx, header)
    write_text_atomic(tmp / MODELFILE, text)
    return text


def write_readme(tmp: Path, config: ExportConfig, result: GgufResult) -> None:
    from expertkit.core.runs import write_text_atomic

    lines = [f"# {Path(config.export_dir).name}", "", "GGUF export by expertkit of "]
    lines[-1] += f"`{config.model_name_or_path}`" + (
        f" with the adapter `{config.adapter_name_or_path}` merged" if config.adapter_name_or_path else ""
    )
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in result.files] + [f"- `{MODELFILE}` (uses `{result.files[0]}`)"]
    lines += ["", "## Export check", ""] + [f"- {c}" for c in result.checks]
    lines += [f"- NOT CHECKED (skip_check): {s}" for s in result.skipped]
    lines += [
        "", "## Use", "", "```bash", f"ollama create {Path(config.export_dir).name} -f {MODELFILE}",
        f"llama-server -m {result.files[0]} --jinja", "```", "",
    ]  # fmt: skip
    write_text_atomic(tmp / "README.md", "\n".join(lines))

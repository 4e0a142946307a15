"""Merge a LoRA adapter into its base and write a standalone model that plain transformers loads.

    expertkit export examples/export/tiny_lora_merge.yaml
    expertkit export model_name_or_path=... adapter_name_or_path=saves/run export_dir=models/merged

`run(config)` reads top to bottom: check paths -> tokenizer -> base (+ adapter) -> reference logits -> merge ->
write to a temp folder beside export_dir -> reload and check it -> model card -> move into place.
Exports elsewhere have silently dropped the adapter (LLaMA-Factory#9051) or rewritten the EOS token
(unsloth#5386): the check compares what was written, reloaded by plain transformers, against base + adapter,
and nothing reaches export_dir unless it passes.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from expertkit.core.errors import ExpertkitError, Problem
from expertkit.core.runs import LEARNING_CHECK, RESOLVED_CONFIG, write_json_atomic
from expertkit.export.card import write_model_card
from expertkit.export.config import ExportConfig
from expertkit.export.folders import (
    check_paths,
    make_temp_dir,
    move_into_place,
    source_run_dir,
    use_default_permissions,
)

logger = logging.getLogger(__name__)

# prompts the reference logits are taken on, besides up to 3 training examples from learning_check.json
CHECK_PROMPTS = ["Who are you?", "用一句话介绍你自己。"]
# max |merged - base+adapter| logit allowed, relative to the largest reference logit. float32: the merge only
# reorders sums (measured ~1e-7 relative). bfloat16 / float16: every merged weight W + BA is rounded to 8 / 11
# mantissa bits (base + adapter keeps W and adds the LoRA path in fp32); measured on random 8-layer models that
# moves the largest logit difference to 3-4% (bf16) and 0.6% (fp16) of the logit scale, so the tolerances leave
# ~2.5x margin. They catch broken or mismatched weights; a dropped adapter is caught by `compare_logits`.
RELATIVE_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


@dataclass
class ExportResult:
    export_dir: str
    shards: list[str]  # weight files, in order
    dtype: str
    max_logit_diff: float  # largest |merged - base+adapter| logit over the check prompts
    tolerance: float
    adapter_effect: float  # largest |base+adapter - base| logit: what the adapter changes (0 without one)
    prompts: int
    seconds: float
    checks: list[str] = field(default_factory=list)  # what was verified, one line each


@dataclass
class Expected:
    """What the export must preserve: training's chat template and stop token, and the reference outputs."""

    chat_template: str | None
    eos_token: str | None
    eos_token_id: int | None
    dtype: str
    prompts: list[list[dict]]  # conversations the logits are taken on
    input_ids: list[list[int]]
    logits: list  # base + adapter (or the model as loaded), float32 on CPU
    base_logits: list | None  # base alone (None without an adapter)


def run(config: ExportConfig) -> ExportResult:
    start = time.monotonic()
    export_dir = check_paths(config)
    tmp = make_temp_dir(export_dir)  # before any loading: an unwritable export_dir fails in a second
    try:
        run_dir = source_run_dir(config)
        tokenizer = load_export_tokenizer(config, run_dir)
        model, device = load_source_model(config)
        expected = reference_outputs(model, tokenizer, run_dir, config)
        if config.adapter_name_or_path:
            model = model.merge_and_unload()
        print_header(config, expected, device, export_dir)
        write_export(model, tokenizer, config, tmp)
        del model
        gc.collect()  # the reload below needs the memory of a second copy
        result = verify_export(tmp, expected, config, device)
        write_model_card(tmp, config, run_dir, result)
        use_default_permissions(tmp)
        move_into_place(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.export_dir, result.seconds = str(export_dir), time.monotonic() - start
    logger.info("exported to %s (%s) in %.0f s", export_dir, ", ".join(result.shards), result.seconds)
    return result


def load_export_tokenizer(config: ExportConfig, run_dir: Path | None):
    """Training saved its tokenizer (with the chat template it used) in the run folder: prefer that one."""
    from transformers import AutoTokenizer

    from expertkit.model.load import load_tokenizer
    from expertkit.model.templates import apply_template

    if run_dir is not None and any((run_dir / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir), trust_remote_code=config.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer and chat template from the run folder %s", run_dir)
    else:
        tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
    saved = tokenizer.chat_template
    if config.template:
        apply_template(tokenizer, config.template)
        if saved and saved != tokenizer.chat_template:
            logger.warning(
                "template=%s replaces the chat template saved with the run; leave template unset to keep "
                "the one training used",
                config.template,
            )
    elif not saved:
        logger.warning("the tokenizer has no chat template: the export will have none (set `template` to add one)")
    return tokenizer


def load_source_model(config: ExportConfig):
    """The base in its own dtype on the export device, with the adapter on top (a PeftModel) when there is one."""
    import torch

    from expertkit.model.load import load_model

    device = "cuda" if config.export_device == "auto" and torch.cuda.is_available() else "cpu"
    model = load_model(config.model_name_or_path, "auto", config.trust_remote_code, device=device)
    model.eval()
    if config.adapter_name_or_path:
        model = attach_adapter(model, config)
        model.eval()
    return model, device


def attach_adapter(model, config: ExportConfig):
    from peft import PeftModel

    adapter = config.adapter_name_or_path
    try:
        with warnings.catch_warnings():  # peft still asks for a property transformers 5 deprecates
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        text = str(e)
        if "size mismatch" not in text and "not found in the base model" not in text:
            raise
        first = next((x.strip() for x in text.splitlines() if "size mismatch" in x), text.splitlines()[0])
        raise ExpertkitError(
            f"adapter '{adapter}' does not fit the base model '{config.model_name_or_path}' "
            f"(it was trained on another model): {first[:300]}",
            hint=f"its adapter_config.json says it was trained on '{trained_on(adapter)}': "
            "set model_name_or_path to that model",
        ) from None
    except OSError as e:
        raise ExpertkitError(
            f"could not load adapter '{adapter}': {str(e).splitlines()[0][:300]}",
            hint="check the path (a run folder with adapter_config.json and adapter_model.safetensors)",
        ) from None


def trained_on(adapter: str) -> str:
    try:
        data = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "?"
    return str(data.get("base_model_name_or_path") or "?")


def reference_outputs(model, tokenizer, run_dir: Path | None, config: ExportConfig) -> Expected:
    """Logits of base + adapter (and of the base alone) on a few chat-formatted prompts, before merging."""
    prompts = check_conversations(run_dir)
    input_ids = [encode(tokenizer, conv) for conv in prompts]
    logits = [forward(model, ids) for ids in input_ids]
    base_logits = None
    if config.adapter_name_or_path:
        with model.disable_adapter():
            base_logits = [forward(model, ids) for ids in input_ids]
        if max_abs(logits, base_logits) == 0.0:
            raise ExpertkitError(
                f"the adapter '{config.adapter_name_or_path}' changes nothing: base + adapter gives exactly the "
                "base's logits (an untrained adapter, or its weight names do not match this model)",
                hint=f"check that it was trained on this base ('{trained_on(config.adapter_name_or_path)}') "
                "and that its learning_check.json says the weights changed",
            )
    return Expected(
        tokenizer.chat_template,
        tokenizer.eos_token,
        tokenizer.eos_token_id,
        str(model.dtype).replace("torch.", ""),
        prompts,
        input_ids,
        logits,
        base_logits,
    )


def check_conversations(run_dir: Path | None) -> list[list[dict]]:
    """A couple of fixed questions, plus up to 3 training examples (prompt + answer) from the learning check."""
    convs = [[{"role": "user", "content": p}] for p in CHECK_PROMPTS]
    path = run_dir / LEARNING_CHECK if run_dir else None
    if path and path.is_file():
        try:
            samples = json.loads(path.read_text(encoding="utf-8")).get("samples", [])
        except ValueError:
            samples = []
        # every stage's check has samples; those with a prompt and its trained answer (sft, dpo's chosen) are used
        usable = [s for s in samples if isinstance(s.get("prompt"), str) and isinstance(s.get("expected"), str)]
        for s in usable[:3]:
            convs.append([{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["expected"]}])
    return convs


def encode(tokenizer, conv: list[dict]) -> list[int]:
    if not tokenizer.chat_template:  # no template to format with: the texts alone
        return tokenizer("\n".join(m["content"] for m in conv))["input_ids"]
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=conv[-1]["role"] == "user")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def forward(model, ids: list[int]):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=model.device))
    return out.logits[0].float().cpu()


def print_header(config: ExportConfig, expected: Expected, device: str, export_dir: Path) -> None:
    fmt = ".bin (legacy)" if config.export_legacy_format else "safetensors"
    lines = {
        "model": f"{config.model_name_or_path} ({expected.dtype}, on {device})",
        "adapter": config.adapter_name_or_path or f"none ({config.finetuning_type} run)",
        **qlora_line(config),
        "chat template": "saved one" if expected.chat_template else "none",
        "eos": f"{expected.eos_token!r} (id {expected.eos_token_id})",
        "weights": f"{fmt}, shards of at most {config.export_size:g} GB",
        "output": str(export_dir),
    }
    width = max(len(k) for k in lines)
    logger.info("export\n%s", "\n".join(f"  {k.ljust(width)}  {v}" for k, v in lines.items()))


def qlora_line(config: ExportConfig) -> dict[str, str]:
    """A header line when the adapter was trained on a quantised base (QLoRA): it is merged into the unquantised
    base as loaded here, never into 4/8-bit weights (LLaMA-Factory's rule; merging into rounded weights would
    bake the rounding into the export)."""
    import yaml

    path = Path(config.adapter_name_or_path or "").expanduser() / RESOLVED_CONFIG
    try:
        trained = yaml.safe_load(path.read_text(encoding="utf-8")) if config.adapter_name_or_path else None
    except (OSError, yaml.YAMLError):
        return {}
    bit = trained.get("quantization_bit") if isinstance(trained, dict) else None
    if not bit:
        return {}
    return {
        "merge": f"QLoRA adapter (trained on a {bit}-bit base): merged into the unquantised base weights "
        f"({config.model_name_or_path}), not into {bit}-bit ones"
    }


def write_export(model, tokenizer, config: ExportConfig, out: Path) -> None:
    """Weights (sharded), config, generation config that stops on the template's eos, tokenizer + template."""
    set_generation_eos(model, tokenizer)
    model.config.use_cache = True
    try:
        model.save_pretrained(out, max_shard_size=int(config.export_size * 10**9))
        if config.export_legacy_format:
            convert_to_bin(out)
        tokenizer.save_pretrained(out)
    except OSError as e:
        raise ExpertkitError(
            f"writing the export failed: {e.strerror or e}",
            hint="check the free disk space beside export_dir (the merged model needs its full size)",
        ) from None


def set_generation_eos(model, tokenizer) -> None:
    """generation_config.eos_token_id must list the tokenizer's eos (a named template's stop token)."""
    gen = model.generation_config
    eos = gen.eos_token_id
    ids = list(eos) if isinstance(eos, list | tuple) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def convert_to_bin(out: Path) -> None:
    """export_legacy_format: transformers 5 only writes safetensors, so turn each shard into a PyTorch .bin."""
    import torch
    from safetensors.torch import load_file

    index = out / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        names = sorted(set(data["weight_map"].values()))
        renamed = {n: n.replace("model", "pytorch_model", 1).replace(".safetensors", ".bin") for n in names}
        data["weight_map"] = {k: renamed[v] for k, v in data["weight_map"].items()}
        write_json_atomic(out / "pytorch_model.bin.index.json", data)
        index.unlink()
    else:
        names, renamed = ["model.safetensors"], {"model.safetensors": "pytorch_model.bin"}
    for name in names:
        torch.save(load_file(str(out / name)), out / renamed[name])
        (out / name).unlink()


def weight_files(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name.endswith((".safetensors", ".bin")) and not p.name.startswith(".")
    )


def verify_export(out: Path, expected: Expected, config: ExportConfig, device: str) -> ExportResult:
    """Reload the written folder with plain transformers; compare tokenizer, stop tokens and logits."""
    from transformers import AutoTokenizer, GenerationConfig

    problems: list[Problem] = []
    tokenizer = AutoTokenizer.from_pretrained(str(out), trust_remote_code=config.trust_remote_code)
    if tokenizer.chat_template != expected.chat_template:
        problems.append(Problem("the saved chat template differs from the one training used", field="chat_template"))
    if tokenizer.eos_token != expected.eos_token:
        problems.append(
            Problem(f"saved {tokenizer.eos_token!r}, training used {expected.eos_token!r}", field="eos_token")
        )
    for conv, ids in zip(expected.prompts, expected.input_ids, strict=True):
        if encode(tokenizer, conv) != ids:
            problems.append(Problem(f"the saved tokenizer encodes {conv[0]['content']!r} differently", field="tokens"))
            break
    eos_ids = GenerationConfig.from_pretrained(str(out)).eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    if expected.eos_token_id is not None and expected.eos_token_id not in eos_ids:
        problems.append(
            Problem(
                f"{eos_ids} does not include the eos token {expected.eos_token!r} (id {expected.eos_token_id})",
                where="generation_config.json",
                field="eos_token_id",
            )
        )
    diff, tol, effect, dtype = compare_logits(out, expected, config, device, problems)
    if problems:
        raise ExpertkitError(
            "the export failed its check, so nothing was written to export_dir; what differs:",
            problems=problems,
            hint="please report this with the config (`--debug` shows where it happened)",
        )
    checks = [
        f"logits equal base{' + adapter' if expected.base_logits else ''} within {tol:.3g} "
        f"(max difference {diff:.3g}) on {len(expected.prompts)} prompts",
        "chat template, eos token and tokenization identical to training's",
        f"generation_config eos_token_id {eos_ids} includes {expected.eos_token!r}",
    ]
    return ExportResult(
        str(out), weight_files(out), dtype, diff, tol, effect, len(expected.prompts), 0.0, checks=checks
    )


def compare_logits(out: Path, expected: Expected, config: ExportConfig, device: str, problems: list[Problem]):
    """max |reloaded - reference| against a dtype-dependent tolerance; a dropped adapter is named as such."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype="auto", trust_remote_code=config.trust_remote_code)
    model.to(device).eval()
    dtype = str(model.dtype).replace("torch.", "")
    if dtype != expected.dtype:
        problems.append(Problem(f"the export loads as {dtype}, the base was {expected.dtype}", field="dtype"))
    logits = [forward(model, ids) for ids in expected.input_ids]
    del model
    scale = max(float(ref.abs().max()) for ref in expected.logits)
    tol = RELATIVE_TOLERANCE.get(expected.dtype, RELATIVE_TOLERANCE["bfloat16"]) * max(scale, 1.0)
    diff = max_abs(logits, expected.logits)
    effect = 0.0
    if expected.base_logits is not None:
        effect = max_abs(expected.logits, expected.base_logits)
        # in half precision a weak adapter's effect can be as small as the merge's rounding noise, so the max
        # difference cannot tell "merged" from "dropped"; the mean distance can: rounding noise is random, the
        # adapter's effect is not, so a merged model is on average nearer base + adapter than base
        to_base, to_reference = mean_abs(logits, expected.base_logits), mean_abs(logits, expected.logits)
        if to_base <= to_reference:
            problems.append(
                Problem(
                    f"the exported model gives the base model's logits, not base + adapter's (mean difference to "
                    f"base {to_base:.3g}, to base + adapter {to_reference:.3g}): the adapter was dropped",
                    field="logits",
                )
            )
            return diff, tol, effect, dtype
    if diff > tol:
        problems.append(
            Problem(f"max difference to base + adapter {diff:.3g} is above the tolerance {tol:.3g}", field="logits")
        )
    return diff, tol, effect, dtype


def max_abs(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def mean_abs(a: list, b: list) -> float:
    return sum(float((x - y).abs().sum()) for x, y in zip(a, b, strict=True)) / sum(x.numel() for x in a)

"""The gate: promote a training run into what an alias serves only when `expertkit eval` says it is not worse.

    result = run(PromoteConfig(candidate="saves/round2", alias="expert", models="models.yaml", eval="eval.yaml"))
    result.decision   # promoted | canary | refused

Reads top to bottom: what the alias serves -> what the candidate is (same base?) -> `expertkit eval` of both, as a
CLI process -> the checks (metrics, forgetting probe, judge win rate) -> the models file (atomically) -> the
promotions log (`<models file>.promotions.jsonl`, one JSON line per decision). `rollback` restores an alias's
mapping from before its last promotion, from that log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import yaml

from expertkit.core.config import read_yaml
from expertkit.core.errors import ConfigError, ExpertkitError
from expertkit.core.models_file import ModelEntry, ModelsFile, check_models_file, load_models_file, write_models_file
from expertkit.core.runs import RESOLVED_CONFIG, append_jsonl, write_text_atomic
from expertkit.improve.config import EVAL_METRIC_OF, LOWER_IS_BETTER, PromoteConfig

LOG_SUFFIX = ".promotions.jsonl"
EXIT_REFUSED = 3  # `expertkit promote` exits with it when the gate refuses (0: promoted, 1: an error)
EVAL_CONFIG = "gate_eval.yaml"
# keys of the eval YAML the gate sets itself
GATE_OWNS = ("candidates", "model_name_or_path", "adapter_name_or_path", "template", "output_dir")


@dataclass
class Served:
    """One side of the comparison: a served name and what it loads."""

    name: str
    model: str
    adapter: str | None


@dataclass
class PromoteResult:
    decision: str  # promoted | canary | refused | rolled_back
    alias: str
    name: str | None  # the candidate's served name (None for a rollback)
    failed: list[str] = field(default_factory=list)  # one line per failed threshold (refused)
    report: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_REFUSED if self.decision == "refused" else 0


def run(config: PromoteConfig, out: TextIO | None = None, round_info: dict | None = None) -> PromoteResult:
    out = out or sys.stderr
    if config.rollback:
        return rollback(config, out)
    models_path = Path(config.models)
    resolved = load_models_file(models_path)
    served = served_side(resolved, config.alias, models_path)
    candidate = candidate_side(Path(config.candidate), served, resolved, config.name)
    output = Path(config.output_dir) if config.output_dir else Path(config.candidate) / "eval" / f"gate-{config.alias}"
    say(out, f"gate: {candidate.name} ({config.candidate}) against {served.name}, what '{config.alias}' serves")
    summary = evaluate(config, served, candidate, output)
    scores, failed = check(config, summary, served.name, candidate.name)
    report = str(output / "report.html") if (output / "report.html").is_file() else str(output / "metrics.json")
    say(out, format_scores(scores))
    decision = "refused" if failed else ("canary" if config.canary else "promoted")
    result = PromoteResult(decision, config.alias, candidate.name, failed, report, scores)
    with locked(models_path):
        raw = read_raw(models_path)
        previous = dict(raw.aliases)
        if not failed:
            raw = promoted(raw, config.alias, candidate, config.canary, models_path)
            check_and_write(models_path, raw)
        log_decision(models_path, result, config, str(Path(config.candidate).resolve()), served.name, previous,
                     dict(raw.aliases), round_info)  # fmt: skip
    say(out, decision_line(result, models_path, raw))
    return result


def say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


# -- the two sides -------------------------------------------------------------------------------------------------


def served_side(models: ModelsFile, alias: str, models_path: Path) -> Served:
    """What the alias serves now: its heaviest arm (the first of equals), as base + adapter."""
    if alias not in models.aliases:
        raise ConfigError(
            f"models file '{models_path}' has no alias '{alias}'",
            hint=f"aliases: {', '.join(models.aliases) or '(none)'}; add `aliases: {{{alias}: NAME}}` first",
        )
    arms = models.arms(alias)
    name = max(arms, key=lambda a: arms[a])  # max keeps the first of equal weights
    return Served(name, str(models.base_of(name)), models.models[name].adapter_name_or_path)


def candidate_side(folder: Path, served: Served, models: ModelsFile, wanted: str | None) -> Served:
    """The run folder as a served entry; refused when it is trained on another base than the served one."""
    if not folder.is_dir():
        raise ConfigError(f"candidate '{folder}' is not a folder", hint="give a training run's output_dir")
    if (folder / "adapter_config.json").is_file():
        base = trained_base(folder)
        if same_model(base, served.model) is False:
            raise ConfigError(
                f"candidate '{folder}' was trained on base '{base}', but alias serves '{served.name}' on base "
                f"'{served.model}'",
                hint="train the candidate on the served base (model_name_or_path), or serve its base under another "
                "name in the models file",
            )
        model, adapter = served.model, str(folder.resolve())
    elif (folder / "config.json").is_file():
        model, adapter = str(folder.resolve()), None  # a merged model: its own base
    else:
        raise ConfigError(
            f"candidate '{folder}' holds no adapter_config.json (a LoRA run) and no config.json (a model)",
            hint="point candidate at a finished `expertkit train` output_dir or an `expertkit export` folder",
        )
    if adapter and served.adapter and same_model(adapter, served.adapter):
        raise ConfigError(f"candidate '{folder}' is what '{served.name}' serves already", hint="train a new round")
    return Served(served_name(folder, model, adapter, models, wanted), model, adapter)


def trained_base(folder: Path) -> str:
    """The base an adapter run was trained on: its expertkit_config.yaml, else peft's adapter_config.json."""
    config = folder / RESOLVED_CONFIG
    if config.is_file():
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        if data.get("model_name_or_path"):
            return str(data["model_name_or_path"])
    data = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return str(data.get("base_model_name_or_path") or "")


def same_model(a: str, b: str) -> bool | None:
    """Whether two model references name the same model (local folders by their real path); None: unknown."""
    if not a or not b:
        return None
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def served_name(folder: Path, model: str, adapter: str | None, models: ModelsFile, wanted: str | None) -> str:
    """The candidate's name: the entry already serving it, `wanted`, or the folder's name made unique."""
    for name, entry in models.models.items():
        path = entry.adapter_name_or_path if adapter else entry.model_name_or_path
        if path and same_model(path, adapter or model) and (not adapter or same_model(models.base_of(name), model)):
            if wanted and wanted != name:
                raise ConfigError(f"the candidate is served as '{name}' already", hint=f"leave name unset, or {name}")
            return name
    taken = set(models.models) | set(models.aliases)
    if wanted:
        if wanted in taken:
            raise ConfigError(f"name '{wanted}' is taken in the models file", hint="choose another name")
        return wanted
    stem = folder.resolve().name
    name, n = stem, 2
    while name in taken:
        name, n = f"{stem}-{n}", n + 1
    return name


# -- the eval ------------------------------------------------------------------------------------------------------


def evaluate(config: PromoteConfig, served: Served, candidate: Served, output: Path) -> dict:
    """`expertkit eval` of the served model (first: the baseline) and the candidate, as a CLI process."""
    keys, _ = read_yaml(config.eval)
    keys = {k: v for k, v in keys.items() if k not in GATE_OWNS}
    keys["candidates"] = [side_keys(served), side_keys(candidate)]
    keys["output_dir"] = str(output)
    metrics = eval_metrics(keys.get("metrics"), config, bool(keys.get("judge_base_url")))
    keys["metrics"] = metrics
    if config.max_forgetting_drop is not None:
        keys["probe"] = True
    from expertkit.core.config import load_config
    from expertkit.evaluate.config import EvalConfig

    load_config(EvalConfig, None, keys)  # every problem of the eval YAML now, before a process starts
    output.mkdir(parents=True, exist_ok=True)
    path = output / EVAL_CONFIG
    write_text_atomic(path, yaml.safe_dump(keys, sort_keys=False, allow_unicode=True))
    command = [sys.executable, "-m", "expertkit", "eval", str(path)]
    code = subprocess.run(command, env=os.environ.copy()).returncode
    if code != 0:
        raise ExpertkitError(
            f"the gate's eval failed (exit {code}); its messages are above",
            hint=f"fix what it says, then run promote again (the eval resumes): {' '.join(command)}",
        )
    return json.loads((output / "metrics.json").read_text(encoding="utf-8"))


def side_keys(side: Served) -> dict:
    keys = {"name": side.name, "model_name_or_path": side.model}
    if side.adapter:
        keys["adapter_name_or_path"] = side.adapter
    return keys


def eval_metrics(asked: Any, config: PromoteConfig, judged: bool) -> list[str]:
    """The eval YAML's metrics plus those the gate needs (and pairwise with a judge)."""
    from expertkit.core.config import split_list

    metrics = split_list(asked) if asked else []
    needed = [EVAL_METRIC_OF.get(m, m) for m in config.metrics] + (["pairwise"] if judged else [])
    return metrics + [m for m in dict.fromkeys(needed) if m not in metrics]


# -- the checks ----------------------------------------------------------------------------------------------------


def check(config: PromoteConfig, summary: dict, served: str, candidate: str) -> tuple[dict, list[str]]:
    """Every score the decision rests on, and one line per threshold the candidate failed."""
    a, b = summary["candidates"][served], summary["candidates"][candidate]
    scores: dict[str, Any] = {}
    failed: list[str] = []
    for metric in config.metrics:
        old, new = a["metrics"].get(metric), b["metrics"].get(metric)
        if old is None or new is None:
            raise ExpertkitError(
                f"the gate's eval has no '{metric}' for {served if old is None else candidate}",
                hint="eval_loss and perplexity need local models; judge_* and hallucination_rate need a judge",
            )
        tolerance = config.tolerance_of(metric)
        worse = (new - old) if metric in LOWER_IS_BETTER else (old - new)
        scores[metric] = {"served": old, "candidate": new, "tolerance": tolerance, "ok": worse <= tolerance}
        if worse > tolerance:
            failed.append(f"{metric} is worse by {worse:.4g} ({old:.4g} -> {new:.4g}; tolerance {tolerance:g})")
    if config.max_forgetting_drop is not None:
        old, new = (x.get("probe", {}).get("overall") for x in (a, b))
        drop = old - new
        ok = drop <= config.max_forgetting_drop
        scores["probe"] = {"served": old, "candidate": new, "drop": round(drop, 4), "ok": ok}
        if not ok:
            failed.append(
                f"the forgetting probe dropped {drop:.4g} points ({old:.4g} -> {new:.4g}; max_forgetting_drop "
                f"{config.max_forgetting_drop:g})"
            )
    pair = next((p for p in summary.get("pairwise") or [] if p["a"] == candidate and p["b"] == served), None)
    if pair is not None:
        n = pair["win"] + pair["tie"] + pair["loss"]
        rate = (pair["win"] + pair["tie"] / 2) / n if n else 0.0
        ok = n > 0 and rate >= config.min_win_rate
        scores["win_rate"] = {**{k: pair[k] for k in ("win", "tie", "loss")}, "rate": round(rate, 4), "ok": ok}
        if not ok:
            short = config.min_win_rate - rate
            failed.append(
                f"the judge's win rate {rate:.3f} is {short:.3f} short of min_win_rate {config.min_win_rate:g} "
                f"(win {pair['win']} / tie {pair['tie']} / loss {pair['loss']})"
            )
    return scores, failed


def format_scores(scores: dict) -> str:
    lines = []
    for key, s in scores.items():
        mark = "ok" if s["ok"] else "FAILED"
        if key == "win_rate":
            counts = f"win {s['win']} / tie {s['tie']} / loss {s['loss']}"
            lines.append(f"  judge win rate  {s['rate']:.3f} ({counts})  {mark}")
        else:
            lines.append(f"  {key:<15} {s['served']:.4g} -> {s['candidate']:.4g}  {mark}")
    return "\n".join(lines)


def decision_line(result: PromoteResult, models_path: Path, raw: ModelsFile) -> str:
    if result.decision == "refused":
        failed = "\n".join(f"  - {f}" for f in result.failed)
        return f"refused: '{result.name}' stays out of '{result.alias}' ({models_path} unchanged):\n{failed}\n" \
               f"report: {result.report}"  # fmt: skip
    return f"{result.decision}: {result.alias} -> {raw.aliases[result.alias]} in {models_path}; report: {result.report}"


# -- the models file and the log -----------------------------------------------------------------------------------


def read_raw(path: Path) -> ModelsFile:
    """The file as written (relative paths kept), to change and write back."""
    return ModelsFile.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def promoted(raw: ModelsFile, alias: str, candidate: Served, canary: float | None, models_path: Path) -> ModelsFile:
    """A copy with the candidate's entry added (when new) and the alias pointing at it, or given `canary` weight."""
    raw = raw.model_copy(deep=True)
    if candidate.name not in raw.models:
        raw.models[candidate.name] = new_entry(candidate, raw, models_path)
    if canary is None:
        raw.aliases[alias] = candidate.name
        return raw
    others = {n: w for n, w in raw.arms(alias).items() if n != candidate.name}
    total = sum(others.values())
    arms = {n: round(w / total * (1 - canary), 6) for n, w in others.items()}
    heaviest = max(arms, key=lambda n: arms[n])
    arms[heaviest] = round(1 - canary - sum(w for n, w in arms.items() if n != heaviest), 6)
    arms[candidate.name] = canary
    raw.aliases[alias] = arms
    return raw


def new_entry(candidate: Served, raw: ModelsFile, models_path: Path) -> ModelEntry:
    folder = models_path.resolve().parent

    def written(path: str) -> str:  # relative to the models file when inside its folder
        rel = os.path.relpath(path, folder)
        return path if rel.startswith("..") else rel

    if candidate.adapter is None:
        return ModelEntry(model_name_or_path=written(candidate.model))
    base = raw.resolve_paths(folder).base
    model = None if base and same_model(base, candidate.model) else candidate.model
    return ModelEntry(model_name_or_path=model, adapter_name_or_path=written(candidate.adapter))


def check_and_write(models_path: Path, raw: ModelsFile) -> None:
    problems = check_models_file(raw.resolve_paths(models_path.resolve().parent), str(models_path))
    if problems:
        raise ConfigError(f"refusing to write models file '{models_path}':", problems=problems)
    write_models_file(models_path, raw)


@contextmanager
def locked(models_path: Path) -> Iterator[None]:
    """One change of a models file and its log at a time (a web UI button and a cron round may overlap)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(str(models_path) + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def log_path(models_path: Path) -> Path:
    return Path(str(models_path) + LOG_SUFFIX)


def log_decision(models_path, result, config, candidate, served, previous, new, round_info=None) -> None:
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "user": current_user(),
        "action": "promote",
        "decision": result.decision,
        "alias": result.alias,
        "candidate": candidate,
        "name": result.name,
        "served": served,
        "scores": result.scores,
        "thresholds": config.thresholds(),
        "failed": result.failed,
        "report": result.report,
        "previous_aliases": previous,
        "new_aliases": new,
    }
    if round_info:
        record["round"] = round_info
    append_jsonl(log_path(models_path), record)


def current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def read_log(models_path: Path) -> list[dict]:
    path = log_path(models_path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return rows


# -- rollback ------------------------------------------------------------------------------------------------------


def rollback(config: PromoteConfig, out: TextIO) -> PromoteResult:
    """Restore the alias's mapping from before its last promotion that was not rolled back yet."""
    models_path = Path(config.models)
    with locked(models_path):
        return rollback_locked(config, models_path, out)


def rollback_locked(config: PromoteConfig, models_path: Path, out: TextIO) -> PromoteResult:
    load_models_file(models_path)  # the file must be sound before it is changed
    stack: list[dict] = []
    for row in read_log(models_path):
        if row.get("alias") != config.alias:
            continue
        if row.get("decision") in ("promoted", "canary"):
            stack.append(row)
        elif row.get("decision") == "rolled_back" and stack:
            stack.pop()
    if not stack:
        raise ExpertkitError(
            f"nothing to roll back: {log_path(models_path)} holds no promotion of '{config.alias}' left to undo",
            hint="`expertkit promote ...` writes that log; edit the models file by hand to change an alias otherwise",
        )
    last = stack[-1]
    raw = read_raw(models_path)
    previous = dict(raw.aliases)
    before = last["previous_aliases"].get(config.alias)
    if before is None:
        raw.aliases.pop(config.alias, None)
    else:
        raw.aliases[config.alias] = before
    check_and_write(models_path, raw)
    result = PromoteResult("rolled_back", config.alias, None, report=last.get("report"))
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "user": current_user(),
        "action": "rollback",
        "decision": "rolled_back",
        "alias": config.alias,
        "undoes": {"time": last["time"], "name": last.get("name"), "candidate": last.get("candidate")},
        "previous_aliases": previous,
        "new_aliases": dict(raw.aliases),
    }
    append_jsonl(log_path(models_path), record)
    say(out, f"rolled back: {config.alias} -> {before} in {models_path} (undid {last.get('name')}, {last['time']})")
    return result

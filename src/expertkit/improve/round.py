"""One round of the loop as one command: `expertkit improve improve.yaml`.

    result = run(load_config(ImproveConfig, "improve.yaml"))
    result.decision   # promoted | canary | refused | too_little_feedback

Reads top to bottom: pick the round folder (the last one when it was stopped, else the next) -> export each stage's
feedback since the last round (`expertkit feedback export`, a CLI process) -> stop early when there is too little
-> train each stage on top of the adapter before it (the first: the served one) with a replay share of earlier
data (`expertkit train`, a CLI process) -> the gate and promotion (`promote.run`, which runs `expertkit eval`).
After each step the round's state is written atomically to round.json, so a killed round continues at the step it
stopped at (training itself resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import yaml

from expertkit.core.config import load_config, read_yaml
from expertkit.core.errors import ExpertkitError
from expertkit.core.models_file import load_models_file
from expertkit.core.runs import write_json_atomic, write_text_atomic
from expertkit.improve import promote
from expertkit.improve.config import ImproveConfig, PromoteConfig

STATE = "round.json"
FINISHED_MARKER = "expertkit_finished"  # written by `expertkit train` last, once its run is complete
# a test hook: kill the round (SIGKILL, no clean-up) right after this step's state is written
KILL_AFTER_ENV = "EXPERTKIT_IMPROVE_KILL_AFTER"
# keys the round sets in each stage's train config, whatever train_config and train say
ROUND_TRAIN_KEYS = ("model_name_or_path", "adapter_name_or_path", "stage", "dataset", "output_dir")


@dataclass
class RoundResult:
    decision: str  # promoted | canary | refused | too_little_feedback
    round_dir: Path
    message: str

    @property
    def exit_code(self) -> int:
        return promote.EXIT_REFUSED if self.decision == "refused" else 0


def run(config: ImproveConfig, out: TextIO | None = None) -> RoundResult:
    out = out or sys.stderr
    models = load_models_file(config.models)  # before any folder is made: a wrong file is only an error
    served = promote.served_side(models, config.alias, Path(config.models))
    folder = current_round(Path(config.rounds_dir))
    state = read_state(folder)
    if "since" not in state:  # fixed when the round starts, so a continued round exports the same span
        state.update(round=folder.name, started=now(), since=resolve_since(config), steps={})
        save_state(folder, state)
    say(out, f"improve: {folder} ({config.alias} serves {served.name}; feedback since {state['since'] or 'ever'})")
    exports = {s: step(folder, state, f"export_{s}", lambda s=s: export(config, s, state["since"], folder, out))
               for s in config.stages}  # fmt: skip
    short = [f"{s} has {e['rows']}, needs {config.min_new_rows}" for s, e in exports.items()
             if e["rows"] < config.min_new_rows]  # fmt: skip
    if short:
        for s in config.stages:  # the next run exports again, with what came in meanwhile
            state["steps"].pop(f"export_{s}", None)
        save_state(folder, state)
        message = f"too little new feedback for a round ({'; '.join(short)} rows): nothing trained; run it again later"
        say(out, message)
        return RoundResult("too_little_feedback", folder, message)
    adapter = served.adapter
    for n, s in enumerate(config.stages):
        last = n == len(config.stages) - 1
        output = folder / (f"{config.alias}-{folder.name}" if last else f"train-{s}")
        trained = step(folder, state, f"train_{s}", lambda s=s, a=adapter, o=output: train(
            config, s, served.model, a, exports[s]["file"], o, out))  # fmt: skip
        adapter = trained["output_dir"]
    gate = step(folder, state, "gate", lambda: gate_round(config, adapter, folder, state, out))
    state["decision"] = gate["decision"]
    save_state(folder, state)
    return RoundResult(gate["decision"], folder, gate["message"])


def say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the round's folder and state ----------------------------------------------------------------------------------


def current_round(rounds: Path) -> Path:
    """The last round folder when it has not decided yet (a stopped round), else a new one numbered after it."""
    rounds.mkdir(parents=True, exist_ok=True)
    numbered = sorted(p for p in rounds.glob("round-*") if p.is_dir() and p.name[6:].isdigit())
    if numbered and not read_state(numbered[-1]).get("decision"):
        return numbered[-1]
    number = int(numbered[-1].name[6:]) + 1 if numbered else 1
    folder = rounds / f"round-{number:03d}"
    folder.mkdir()
    return folder


def read_state(folder: Path) -> dict:
    path = folder / STATE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        hint = "delete the round folder to start the round over"
        raise ExpertkitError(f"{path} is not valid JSON ({e})", hint=hint) from None


def save_state(folder: Path, state: dict) -> None:
    write_json_atomic(folder / STATE, state)


def step(folder: Path, state: dict, name: str, do) -> dict:
    """A step's result: from the state when an earlier run finished it, else done now and written at once."""
    if name in state["steps"]:
        return state["steps"][name]
    state["steps"][name] = {**do(), "finished": now()}
    save_state(folder, state)
    if os.environ.get(KILL_AFTER_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return state["steps"][name]


def resolve_since(config: ImproveConfig) -> str | None:
    """The `since=` of the export: the start of the alias's last round that reached the gate, for since=round."""
    if config.since in (None, "", "all"):
        return None
    if config.since != "round":
        return config.since
    rounds = [r for r in promote.read_log(Path(config.models)) if r.get("alias") == config.alias and r.get("round")]
    return rounds[-1]["round"]["exported_at"] if rounds else None


# -- the steps -----------------------------------------------------------------------------------------------------


def cli(args: list[str], what: str) -> None:
    """Run `expertkit ARGS` as a process (its output goes where ours goes); an error names the command."""
    command = [sys.executable, "-m", "expertkit", *args]
    code = subprocess.run(command, env=os.environ.copy()).returncode
    if code != 0:
        raise ExpertkitError(
            f"{what} failed (exit {code}); its messages are above",
            hint=f"fix what it says, then run `expertkit improve` again to continue the round: {' '.join(command)}",
        )


def export(config: ImproveConfig, stage: str, since: str | None, folder: Path, out: TextIO) -> dict:
    """Export the stage's feedback (its format), copy it into the round, count its rows."""
    output = Path(config.feedback_dir) / f"improve_{config.alias}_{stage}.json"
    args = ["feedback", "export", f"output={output}"]
    args += [f"format={stage}"] if stage != "sft" else []  # sft is the export's default format
    args += [f"since={since or 'all'}"]  # with since=, no row is an answer (exit 0, empty file), not a mistake
    args += [f"feedback_db={config.feedback_db}"] if config.feedback_db else []
    args += [f"{k}={cli_value(v)}" for k, v in config.feedback_args.items()]
    exported_at = now()
    say(out, f"export ({stage}): expertkit {' '.join(args)}")
    cli(args, f"the {stage} feedback export")
    copy = folder / "data" / f"feedback_{stage}.json"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(output, copy)
    return {"file": str(copy.resolve()), "rows": count_rows(copy), "exported_at": exported_at}


def cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool | list | dict) or value is None else str(value)


def count_rows(path: Path) -> int:
    """Rows of an exported file: a JSON list, or JSON lines."""
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        return 0
    if text.startswith("["):
        return len(json.loads(text))
    return sum(1 for line in text.splitlines() if line.strip())


def train(config: ImproveConfig, stage: str, base: str, adapter: str | None, data: str, output: Path, out) -> dict:
    """`expertkit train` of one stage on the new feedback (+ replay), continued from `adapter`; resumed if killed."""
    from expertkit.train.config import TrainConfig

    keys: dict[str, Any] = read_yaml(config.train_config)[0] if config.train_config else {}
    keys.update(config.train)
    replay = config.replay.get(stage, [])  # type: ignore[call-overload]
    keys.update(model_name_or_path=base, stage=stage, dataset=[data, *replay], output_dir=str(output.resolve()))
    keys["adapter_name_or_path"] = adapter
    keys["dataset_dir"] = config.dataset_dir
    if replay and config.replay_share > 0:
        probs = [1 - config.replay_share] + [config.replay_share / len(replay)] * len(replay)
        keys.update(mix_strategy=config.mix_strategy, interleave_probs=probs)
    if (output / FINISHED_MARKER).is_file() and (output / "adapter_config.json").is_file():
        return {"output_dir": str(output.resolve())}  # trained before the state was written: nothing to redo
    keys["resume_from_checkpoint"] = any(output.glob("checkpoint-*")) or None
    load_config(TrainConfig, None, keys)  # every problem of the training keys now, before a process starts
    path = output.parent / f"train_{stage}.yaml"
    write_text_atomic(path, yaml.safe_dump({k: v for k, v in keys.items() if v is not None}, sort_keys=False))
    say(out, f"train ({stage}): expertkit train {path}")
    cli(["train", str(path)], f"training ({stage})")
    return {"output_dir": str(output.resolve()), "config": str(path)}


def gate_round(config: ImproveConfig, adapter: str, folder: Path, state: dict, out: TextIO) -> dict:
    """The gate and promotion; a decision the log holds for this round already (killed after it) is not redone."""
    here = str(folder.resolve())
    done = [r for r in promote.read_log(Path(config.models)) if (r.get("round") or {}).get("round_dir") == here]
    if done:
        return {"decision": done[-1]["decision"], "message": f"{done[-1]['decision']} (from the promotions log)"}
    keys = {k: getattr(config, k) for k in PromoteConfig.model_fields if k in ImproveConfig.model_fields}
    gate = PromoteConfig(**keys, candidate=adapter, output_dir=str(folder / "gate"))
    exported = min(state["steps"][f"export_{s}"]["exported_at"] for s in config.stages)
    result = promote.run(gate, out, round_info={"round_dir": here, "exported_at": exported})
    message = f"{result.decision}: {result.name}" + (f" ({'; '.join(result.failed)})" if result.failed else "")
    return {"decision": result.decision, "name": result.name, "report": result.report, "message": message}

"""The models file: which names a server serves, and which aliases (with A/B arms) point to them.

    # models.yaml
    base: Qwen/Qwen2.5-0.5B-Instruct        # the base every entry without its own model_name_or_path uses
    models:
      round1: {adapter_name_or_path: saves/round1}       # base + a LoRA adapter
      round2: {adapter_name_or_path: saves/round2}
      merged: {model_name_or_path: saves/merged}         # a merged (or any) model folder
    aliases:
      expert: {round1: 0.9, round2: 0.1}   # A/B: each user is routed to one arm, sticky, weights sum to 1
      stable: round1                        # one name
    sticky_header: X-Team-Id               # optional: route by this request header when a request has no `user`

`expertkit serve models=models.yaml` serves it and reloads it when it changes; `expertkit promote` rewrites it
(atomically) and the server picks the new mapping up without a restart. Relative paths are read from the file's
own folder, so the server and `promote` agree whatever folder they were started in.

One format, defined here in core, shared by serve (reads, watches) and improve (writes).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from expertkit.core.errors import ConfigError, Problem
from expertkit.core.runs import write_text_atomic

WEIGHT_TOLERANCE = 1e-6


class ModelEntry(BaseModel):
    """One served name: a base (or merged) model folder or hub id, and optionally a LoRA adapter over it."""

    model_config = ConfigDict(extra="forbid")

    model_name_or_path: str | None = None
    """The model to load; unset: the file's `base`."""

    adapter_name_or_path: str | None = None
    """A LoRA adapter folder (an expertkit run folder) applied over the model."""


class ModelsFile(BaseModel):
    """The whole file (see the module docstring for an example)."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = None
    """The base model of every entry that names no model_name_or_path of its own."""

    models: dict[str, ModelEntry]
    """Served name -> what it is. The first one is the default (a request without `model`)."""

    aliases: dict[str, str | dict[str, float]] = {}
    """Alias -> a served name, or arms {name: weight} whose weights sum to 1 (an online A/B test)."""

    sticky_header: str | None = None
    """A request header that picks an A/B arm when the request has no `user` field (after it: the API key)."""

    def arms(self, alias: str) -> dict[str, float]:
        """The alias's arms with their weights ({name: 1.0} for a plain alias)."""
        target = self.aliases[alias]
        return {target: 1.0} if isinstance(target, str) else dict(target)

    def resolve_paths(self, folder: str | os.PathLike) -> ModelsFile:
        """A copy whose relative local paths are taken from `folder` (hub ids such as Qwen/Qwen2.5-0.5B stay)."""

        def local(value: str | None) -> str | None:
            if value is None or Path(value).is_absolute():
                return value
            candidate = Path(folder) / value
            return str(candidate) if candidate.exists() or value.startswith(".") else value

        copy = self.model_copy(deep=True)
        copy.base = local(copy.base)
        for entry in copy.models.values():
            entry.model_name_or_path = local(entry.model_name_or_path)
            entry.adapter_name_or_path = local(entry.adapter_name_or_path)
        return copy

    def base_of(self, name: str) -> str | None:
        return self.models[name].model_name_or_path or self.base


def check_models_file(models: ModelsFile, where: str, check_paths: bool = True) -> list[Problem]:
    """Every problem with a parsed models file, at once (the caller raises or keeps its old mapping)."""
    problems: list[Problem] = []
    if not models.models:
        problems.append(Problem("names no model", where, "models", "add at least one entry under models:"))
    for name, entry in models.models.items():
        if not (entry.model_name_or_path or models.base):
            problems.append(
                Problem("has no model", where, f"models.{name}", "set its model_name_or_path, or base: for the file")
            )
        if check_paths and entry.adapter_name_or_path:
            adapter = Path(entry.adapter_name_or_path)
            if not adapter.is_dir():
                problems.append(
                    Problem(f"adapter folder '{adapter}' does not exist", where, f"models.{name}.adapter_name_or_path",
                            "train it first, or correct the path (relative paths start at the models file's folder)")
                )  # fmt: skip
            elif not (adapter / "adapter_config.json").is_file():
                problems.append(
                    Problem(f"'{adapter}' holds no adapter_config.json (not a LoRA adapter)", where,
                            f"models.{name}.adapter_name_or_path",
                            "point it at a training run's output_dir; a merged model goes in model_name_or_path")
                )  # fmt: skip
        model = entry.model_name_or_path
        if check_paths and model and looks_local(model) and not (Path(model) / "config.json").is_file():
            problems.append(
                Problem(f"model folder '{model}' does not exist or holds no config.json", where,
                        f"models.{name}.model_name_or_path", "correct the path, or export the model there first")
            )  # fmt: skip
    for alias, target in models.aliases.items():
        field = f"aliases.{alias}"
        if alias in models.models:
            problems.append(Problem("is also a model name", where, field, "give the alias a name of its own"))
        arms = {target: 1.0} if isinstance(target, str) else target
        if not arms:
            problems.append(Problem("has no arms", where, field, "name a model, or arms {name: weight}"))
        for arm, weight in arms.items():
            if arm in models.aliases:
                problems.append(
                    Problem(f"arm '{arm}' is another alias", where, field, "arms must name models, not aliases")
                )
            elif arm not in models.models:
                problems.append(
                    Problem(f"names '{arm}', which is not a model here", where, field,
                            f"models: {', '.join(models.models) or '(none)'}")
                )  # fmt: skip
            if not (isinstance(weight, int | float) and weight > 0 and math.isfinite(weight)):
                problems.append(Problem(f"arm '{arm}' has weight {weight!r}", where, field, "weights are above 0"))
        total = sum(w for w in arms.values() if isinstance(w, int | float))
        if arms and abs(total - 1.0) > WEIGHT_TOLERANCE:
            problems.append(
                Problem(f"weights sum to {total:g}, not 1", where, field, "make the arms' weights add up to 1")
            )
    return problems


def looks_local(value: str) -> bool:
    """A path rather than a hub id (org/name): absolute, relative with ./ or ../, or existing here."""
    return Path(value).is_absolute() or value.startswith(".") or Path(value).exists() or value.count("/") != 1


def load_models_file(path: str | os.PathLike, check_paths: bool = True) -> ModelsFile:
    """Read, validate and resolve a models file; a ConfigError lists every problem (nothing is half-applied)."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"models file '{path}' does not exist", hint="write one (see docs/improve.md)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read models file '{path}': {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"models file {path}{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"models file '{path}' must be a mapping with a models: section", hint="see docs/improve.md")
    try:
        models = ModelsFile.model_validate(raw)
    except ValidationError as e:
        problems = [
            Problem(err["msg"], where, ".".join(str(p) for p in err["loc"]), "see docs/improve.md for the format")
            for err in e.errors()
        ]
        raise ConfigError(f"models file '{path}' has problems:", problems=problems) from None
    models = models.resolve_paths(path.parent)
    problems = check_models_file(models, where, check_paths)
    if problems:
        raise ConfigError(f"models file '{path}' has problems:", problems=problems)
    return models


def dump_models_file(models: ModelsFile) -> str:
    return yaml.safe_dump(models.model_dump(exclude_none=True, exclude_defaults=False), sort_keys=False)


def write_models_file(path: str | os.PathLike, models: ModelsFile) -> None:
    """Write atomically (a watching server never reads half a file), after the same checks a reader makes."""
    problems = check_models_file(models, str(path), check_paths=False)
    if problems:
        raise ConfigError(f"refusing to write models file '{path}':", problems=problems)
    write_text_atomic(path, dump_models_file(models))

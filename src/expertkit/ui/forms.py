"""Forms whose fields are a stage config's keys: same names, same defaults, the field docstrings as help.

The form's values become the same flat YAML a user would write (only the keys that differ from the defaults),
checked by the config class itself before a job starts, so a mistake shows in the page, not in a log.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from expertkit.core.config import StageConfig, load_config, parse_override
from expertkit.core.errors import ConfigError

Kind = Literal["choice", "bool", "tristate", "int", "float", "list", "text", "yaml", "secret"]
UNSET = "unset"  # the tri-state choice for `bool | None` keys left to their automatic default
MASK = "***"  # a secret as "show YAML" / "show command" print it


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    optional: bool = False
    required: bool = False
    parsed: bool = False  # a text key that also takes true/false or numbers (resume_from_checkpoint)

    def form_value(self, value: Any = None) -> Any:
        """A config value as the form shows it (the default when value is None and not optional)."""
        value = self.default if value is None else value
        if self.kind == "tristate":
            return UNSET if value is None else str(bool(value)).lower()
        if self.kind == "list":
            return ", ".join(map(str, value or []))
        if self.kind == "yaml":  # a list of mappings (eval's candidates) as a YAML text box
            return yaml.safe_dump(value, sort_keys=False, allow_unicode=True) if value else ""
        if self.kind in ("text", "secret") or (self.optional and self.kind in ("int", "float")):
            return "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        return value

    def config_value(self, value: Any) -> Any:
        """A form value as the config key takes it."""
        if self.kind == "bool":
            return bool(value)
        if self.kind == "tristate":
            return None if value in (None, "", UNSET) else value == "true"
        if self.kind in ("int", "float"):
            if isinstance(value, str):  # an optional number is a text box: empty is unset
                value = parse_override(value) if value.strip() else None
            if value is None:
                return None
            if self.kind == "int" and isinstance(value, float) and value.is_integer():
                return int(value)
            return value
        if self.kind == "list":
            items = value if isinstance(value, list) else str(value or "").split(",")  # a multiselect, or text
            items = [str(x).strip() for x in items if str(x).strip()]
            return None if self.optional and not items else items  # an optional list left empty is unset
        if self.kind == "yaml":
            return self._parsed_list(value)
        if self.kind == "choice":
            return value if value not in ("", None) else self.default
        text = str(value if value is not None else "").strip()
        if not text:
            return None if self.optional else ""
        return parse_override(text) if self.parsed else text

    def _parsed_list(self, value: Any) -> Any:
        """A YAML (or JSON) list typed into the box; empty is the default (unset)."""
        if isinstance(value, list):
            return value
        text = str(value or "").strip()
        if not text:
            return self.default
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"{self.name}: not a YAML or JSON list{where}: {problem}",
                hint=f"one mapping per item, e.g. - {{name: base, model_name_or_path: ...}}; empty leaves {self.name} "
                "unset",
            ) from None
        if parsed is None:
            return self.default
        if not isinstance(parsed, list):
            raise ConfigError(
                f"{self.name}: expected a list (one '- ...' item each), got {type(parsed).__name__}",
                hint=f"e.g. - {{name: base, model_name_or_path: ...}}; empty leaves {self.name} unset",
            )
        return parsed


def field_specs(cls: type[StageConfig], exclude: tuple[str, ...] = ()) -> list[FieldSpec]:
    """One spec per key of cls, in the class's order."""
    specs = []
    for name, field in cls.model_fields.items():
        if name in exclude:
            continue
        kind, choices, optional = _kind_of(field.annotation)
        if kind == "text" and field.repr is False:  # a key or password: a password box, masked when shown
            kind = "secret"
        parsed = kind == "text" and _takes_non_str(field.annotation)
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        doc = " ".join((field.description or "").split())
        specs.append(FieldSpec(name, kind, default, doc, choices, optional, required, parsed))
    return specs


def _kind_of(annotation: Any) -> tuple[Kind, tuple[str, ...], bool]:
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    optional = union and type(None) in args
    inner = [a for a in args if a is not type(None)] if union else [annotation]
    if len(inner) == 1:
        one = inner[0]
        if typing.get_origin(one) is Literal:
            return "choice", tuple(str(c) for c in typing.get_args(one)), optional
        if one is bool:
            return ("tristate" if optional else "bool"), (), optional
        if one is int:
            return "int", (), optional
        if one is float:
            return "float", (), optional
        if typing.get_origin(one) is list:
            item = (typing.get_args(one) or (str,))[0]
            return ("yaml" if isinstance(item, type) and issubclass(item, BaseModel) else "list"), (), optional
    return "text", (), optional


def _takes_non_str(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return any(a not in (str, type(None)) for a in args)


def form_to_values(specs: list[FieldSpec], form: dict[str, Any]) -> dict[str, Any]:
    """The keys a user would write: required ones, and those whose form value differs from the default."""
    values = {}
    for spec in specs:
        if spec.name not in form:
            continue
        value = spec.config_value(form[spec.name])
        if spec.required or value != spec.default:
            values[spec.name] = value
    return values


def check_values(cls: type[StageConfig], values: dict[str, Any]) -> StageConfig:
    """Validate as `expertkit CMD` would: every problem at once, as an ExpertkitError."""
    return load_config(cls, None, values)


def values_to_yaml(values: dict[str, Any], header: str = "") -> str:
    """Flat YAML in LLaMA-Factory's style: lists as comma strings (`dataset: a,b`)."""
    flat = {
        k: ",".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in values.items()
    }
    text = yaml.safe_dump(flat, sort_keys=False, allow_unicode=True)
    return (header + "\n" if header else "") + text


def values_to_args(values: dict[str, Any]) -> list[str]:
    """The same values as `key=value` command-line overrides."""
    args = []
    for key, value in values.items():
        if isinstance(value, list) and not all(isinstance(x, str | int | float) for x in value):
            value = json.dumps(value, ensure_ascii=False)  # candidates=[{...}]: JSON is a YAML value
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        args.append(f"{key}={value}")
    return args


def is_secret(key: str) -> bool:
    return key.endswith("api_key")


def has_secrets(values: dict[str, Any]) -> bool:
    """Whether values hold a key (judge_api_key, a candidate's api_key): its config file is then private (0600)."""
    return masked(values) != values


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """values with every *api_key (also inside lists of mappings, as candidates) shown as ***."""

    def mask(d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if is_secret(k) and v:
                v = MASK
            elif isinstance(v, list):
                v = [mask(x) if isinstance(x, dict) else x for x in v]
            out[k] = v
        return out

    return mask(values)

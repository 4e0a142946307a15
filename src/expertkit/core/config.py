"""Config is data: flat YAML files with LLaMA-Factory's key names, plus `key=value` overrides.

    expertkit train my.yaml lora_rank=16            # YAML + overrides
    expertkit train my.yaml --lora_rank 16          # LLaMA-Factory's command-line style
    expertkit train model_name_or_path=... dataset=...   # no YAML at all

Unknown keys are errors with a did-you-mean; keys LLaMA-Factory has that we do not support yet produce one
warning listing them; every problem is reported at once.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from expertkit.core.errors import ConfigError, ProblemList

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class StageConfig(BaseModel):
    """Base of every stage's config: field docstrings are the documentation (`--help`, docs, UI)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, extra="forbid", validate_assignment=True, protected_namespaces=()
    )

    # keys LLaMA-Factory knows that this stage accepts but ignores (warned once); filled by subclasses
    lf_unsupported: ClassVar[frozenset[str]] = frozenset()
    # of those, the keys that change what is computed: key -> (LLaMA-Factory's default, what it does, what to do
    # instead); a value other than the default is a config problem, never silently ignored
    lf_refused: ClassVar[dict[str, tuple[Any, str, str]]] = {}
    # keys whose default differs from LLaMA-Factory's: key -> "its default, and why ours differs" (shown in the docs)
    lf_differs: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


C = TypeVar("C", bound=StageConfig)


def split_list(value):
    """`a, b` or ['a', 'b'] -> ['a', 'b']: the comma lists of every config (`dataset=a,b`, `api_key=k1,k2`)."""
    if value is None:
        return []
    if not isinstance(value, (str, list, tuple)):
        return value  # a wrong type: the field's own validation names it
    items = value.split(",") if isinstance(value, str) else value
    return [str(x).strip() for x in items if str(x).strip()]


def split_cli_args(args: list[str]) -> tuple[str | None, dict[str, str]]:
    """Split command arguments into an optional config file and overrides.

    Accepts `key=value`, `--key value`, `--key=value` and a bare `--flag` (meaning true).
    """
    path: str | None = None
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = body, args[i + 1]
                i += 1
            else:
                key, value = body, "true"
            overrides[key.replace("-", "_")] = value
        elif "=" in arg and arg.split("=", 1)[0].strip().isidentifier():
            key, value = arg.split("=", 1)
            overrides[key.strip()] = value
        elif arg.startswith("=") or (i + 1 < len(args) and args[i + 1].startswith("=")):
            raise _spaced_override(args[i : i + 3])
        elif i > 0 and args[i - 1].endswith("="):
            raise _spaced_override(args[i - 1 : i + 1])
        elif arg.startswith("-"):
            key = arg.lstrip("-")
            raise ConfigError(
                f"unexpected option '{arg}'", hint=f"write --{key} VALUE or {key}=VALUE (e.g. --cutoff_len 1024)"
            )
        elif path is None:
            path = arg
        else:
            raise ConfigError(
                f"unexpected argument '{arg}': only one config file can be given (already '{path}')",
                hint="overrides are written key=value, e.g. lora_rank=16",
            )
        i += 1
    return path, overrides


def _spaced_override(words: list[str]) -> ConfigError:
    return ConfigError(
        f"unexpected '{' '.join(words)}': spaces around '='",
        hint="write overrides without spaces: key=value (e.g. cutoff_len=1024)",
    )


def parse_override(value: str) -> Any:
    """`key=value` values are YAML scalars: 1e-4 is a float, true a bool, null None."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    # `1e-4` is a string for YAML 1.1; users mean a number
    if isinstance(parsed, str):
        try:
            return float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            return parsed
    return parsed


def read_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a flat YAML (or JSON) mapping; return it and the line number of each top-level key."""
    p = Path(path)
    if not p.is_file():
        near = (
            sorted(x.name for x in p.parent.glob("*") if x.suffix in CONFIG_SUFFIXES)[:10] if p.parent.is_dir() else []
        )
        hint = f"config files in {p.parent}: {', '.join(near)}" if near else "check the path"
        raise ConfigError(f"config file '{path}' does not exist", hint=hint)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})", hint="save the file as UTF-8") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: not valid YAML: {getattr(e, 'problem', e)}", hint="check indentation and quoting on that line"
        ) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        hint = "write one `key: value` line per setting, e.g. `cutoff_len: 1024`"
        if isinstance(data, str) and "=" in data:
            hint = "YAML uses `key: value` (a colon and a space), not key=value: " + hint
        raise ConfigError(f"{path}: expected a mapping of key: value lines, found {type(data).__name__}", hint=hint)
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            lines[str(key_node.value)] = key_node.start_mark.line + 1
    return data, lines


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build a typed config from a YAML file and overrides, reporting every problem at once."""
    data, lines = read_yaml(path) if path else ({}, {})
    for key, value in (overrides or {}).items():
        data[key] = parse_override(value) if isinstance(value, str) else value
        lines.pop(key, None)

    def where(key: str) -> str:
        if key in lines:
            return f"{path}:{lines[key]}"
        return "override" if overrides and key in overrides else str(path or "config")

    known = set(cls.model_fields)
    lf_only = cls.lf_unsupported
    problems = ProblemList()
    ignored = sorted(k for k in data if k not in known and k in lf_only)
    for key in sorted(k for k in data if k not in known and k not in lf_only):
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "run `expertkit config keys` to list the keys"
        problems.add(f"unknown key '{key}'", where=where(key), hint=hint)
    refused = [k for k in ignored if k in cls.lf_refused and not is_lf_default(data[k], cls.lf_refused[k][0])]
    for key in refused:
        _default, does, instead = cls.lf_refused[key]
        problems.add(
            f"'{key}: {data[key]}' {does}: expertkit does not support it yet, and ignoring it would change the result",
            where=where(key),
            hint=instead,
        )
    ignored = [k for k in ignored if k not in refused]
    if ignored:
        logger.warning("ignoring LLaMA-Factory keys expertkit does not support yet: %s", ", ".join(ignored))
    values = {k: v for k, v in data.items() if k in known}
    try:
        config = cls(**values)
    except ValidationError as e:
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            sub = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"][1:])
            got = values.get(key, None) if key else None
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators' messages
            if key and key in values:
                msg += f" (got {got!r})"
            problems.add(msg, where=where(key) if key else str(path or "config"), field=f"{key}{sub}")
        config = None
    if problems:
        src = f" in {path}" if path else ""
        raise ConfigError(f"found the following problems{src}:", problems=problems.items)
    assert config is not None
    return config


def is_lf_default(value: object, default: object) -> bool:
    """Whether a YAML value means the same as LLaMA-Factory's default (`null`, `false`, `''`, `[]` mean unset)."""
    unset = (None, False, "", "none", "null", "false")
    if default in (None, False, ""):
        return value in unset or value == [] or value == {} or str(value).strip().lower() in unset
    if isinstance(default, bool):
        return value is default or str(value).strip().lower() == str(default).lower()
    if isinstance(default, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) == float(default)
    return value == default


def save_config(config: StageConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    from expertkit.core.runs import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def describe_keys(cls: type[StageConfig], markdown: bool = False, title: str = "keys") -> str:
    """Every key of a config with its default and docstring: for `config keys` and docs/reference/."""
    rows = []
    for name, field in cls.model_fields.items():
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        default = "required" if field.is_required() else _yaml_scalar(value)
        doc = " ".join((field.description or "").split())
        if name in cls.lf_differs:
            doc += f" **Differs from LLaMA-Factory:** {cls.lf_differs[name]}"
        rows.append((name, default, doc))
    if not markdown:
        return "".join(f"{n} = {d}\n    {doc}\n" for n, d, doc in rows)
    lines = [
        f"# {title}",
        "",
        "Generated by `expertkit config keys --markdown`; do not edit by hand.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    pipe = "\\|"  # a literal | inside a table cell
    lines += [f"| `{n}` | `{d}` | {doc.replace('|', pipe)} |" for n, d, doc in rows]
    if cls.lf_refused:
        lines += [
            "",
            "LLaMA-Factory keys that change the result and are not supported yet: set to anything but LLaMA-Factory's "
            "default (shown), they stop the run before anything is loaded, with what to do instead:",
            "",
            "| key | LLaMA-Factory's default | what it does |",
            "|---|---|---|",
        ]
        lines += [
            f"| `{k}` | `{_yaml_scalar(d)}` | {does} |"
            for k, (d, does, _) in sorted(cls.lf_refused.items())
        ]
    ignored = sorted(cls.lf_unsupported - set(cls.lf_refused))
    if ignored:
        lines += [
            "",
            "LLaMA-Factory keys accepted and ignored, since they do not change what is trained (a warning lists the "
            "ones a file uses): " + ", ".join(f"`{k}`" for k in ignored) + ".",
        ]
    return "\n".join(lines) + "\n"

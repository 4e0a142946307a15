"""The folders of an export: where it may write, the temp folder beside it, and the move into place.

An export is written to a temp folder beside export_dir (`make_temp_dir`) and renamed into place only once it has
passed its check (`move_into_place`), so export_dir never holds a half-written model; `check_paths` refuses an
export_dir that would replace the base, the adapter or an unrelated folder before anything loads. Used by the
merge (`merge.run`) and the GGUF export (`gguf.run`) alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.export.config import ExportConfig


def check_paths(config: ExportConfig, marker: str = "config.json") -> Path:
    """Refuse an export_dir that would replace the base, the adapter or an unrelated folder; check the adapter."""
    export_dir = Path(config.export_dir).expanduser().resolve()
    sources = [("model_name_or_path", config.model_name_or_path)]
    if config.adapter_name_or_path:
        check_adapter_path(config.adapter_name_or_path)
        sources.append(("adapter_name_or_path", config.adapter_name_or_path))
    for key, value in sources:
        p = Path(value).expanduser()
        if p.exists() and (export_dir == p.resolve() or export_dir in p.resolve().parents):
            what = "is" if export_dir == p.resolve() else "contains"
            raise ExpertkitError(
                f"export_dir '{config.export_dir}' {what} the {key} folder '{value}': the export would replace it",
                hint=f"choose a new folder, e.g. export_dir={p.parent / (p.name + '-merged')}",
            )
    if export_dir.exists():
        if not export_dir.is_dir():
            raise ExpertkitError(f"export_dir '{config.export_dir}' is a file", hint="choose a folder name")
        held = sorted(x.name for x in export_dir.iterdir())
        if held and not (export_dir / marker).is_file():
            raise ExpertkitError(
                f"export_dir '{config.export_dir}' holds files that are not a model export: {', '.join(held[:8])}",
                hint="an export replaces the whole folder: choose a new or empty folder",
            )
    return export_dir


def check_adapter_path(path: str) -> None:
    """A local adapter folder must hold adapter_config.json; say what exists instead."""
    p = Path(path).expanduser()
    looks_local = p.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if not looks_local or (p / "adapter_config.json").is_file():
        return
    if p.is_dir():
        checkpoints = sorted(d.name for d in p.glob("checkpoint-*") if (d / "adapter_config.json").is_file())
        if (p / "config.json").is_file():
            hint = "it is a whole model (a full or freeze run): set model_name_or_path to it and finetuning_type=full"
        elif checkpoints:
            hint = (
                f"it holds checkpoints with adapters ({', '.join(checkpoints[-3:])}); the final adapter is written "
                f"when training finishes, or export a checkpoint: adapter_name_or_path={p / checkpoints[-1]}"
            )
        else:
            held = sorted(x.name for x in p.iterdir())[:10]
            hint = f"it holds: {', '.join(held) or 'nothing'}; train one with `expertkit train CONFIG`"
        raise ExpertkitError(f"adapter_name_or_path '{path}' holds no adapter (no adapter_config.json)", hint=hint)
    parent = next((d for d in p.parents if d.is_dir()), Path("."))
    found = sorted(
        str(c.parent.relative_to(parent))
        for pattern in ("*/adapter_config.json", "*/*/adapter_config.json")
        for c in parent.glob(pattern)
    )[:10]
    hint = f"adapter folders under {parent}: {', '.join(found)}" if found else "train one with `expertkit train CONFIG`"
    raise ExpertkitError(f"adapter_name_or_path '{path}' does not exist", hint=hint)


def source_run_dir(config: ExportConfig) -> Path | None:
    """The training run folder the export comes from (adapter folder, or a full run's model folder), if local."""
    p = Path(config.adapter_name_or_path or config.model_name_or_path).expanduser()
    return p if p.is_dir() else None


def make_temp_dir(export_dir: Path) -> Path:
    """A temp folder beside export_dir, so that the final rename stays on one filesystem; proves it is writable."""
    try:
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=export_dir.parent, prefix=f".{export_dir.name}.tmp-"))
    except OSError as e:  # a real attempt: os.access says yes to root on a read-only mount
        raise ExpertkitError(
            f"export_dir '{export_dir}' is not writable: cannot create a folder beside it ({e.strerror or e})",
            hint="choose a folder you can write to",
        ) from None


def use_default_permissions(folder: Path) -> None:
    """mkdtemp makes the folder owner-only, and safetensors writes 0600 files; an export is meant to be shared
    (a server running as another user), so give it the permissions a plain `mkdir` / `open` would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def move_into_place(tmp: Path, export_dir: Path) -> None:
    """Rename the checked temp folder to export_dir; a previous export is moved aside first, then deleted.

    Each step is a rename on one filesystem, so export_dir is at every moment the old export, nothing, or the
    new one: never a half-written model.
    """
    old = None
    if export_dir.exists():
        old = export_dir.parent / f".{export_dir.name}.old-{os.getpid()}-{time.time_ns()}"
        os.rename(export_dir, old)
    try:
        os.rename(tmp, export_dir)
    except OSError:
        if old is not None:
            os.rename(old, export_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Serving a models file (`expertkit serve models=models.yaml`): the names and aliases it lists, A/B arms, and hot
swaps without a restart.

A request's `model` is resolved to a `Route`: the served name that answers (for an alias with arms, one arm picked
by a stable hash of the request's `user`, else its API key, else the `sticky_header`, else at random), the engine's
key for it, and the name the client sees (the alias: A/B tests are blind).

A reload (the file changed, SIGHUP, or `POST /admin/models`) parses the file, loads the new and changed entries
beside the running ones in a worker thread, then switches the mapping for new requests in one assignment on the
event loop. A request holds a lease on the engine key it started with until its response ends, so it finishes on
the model it began with; a key no longer named is removed (its batching manager stopped, its memory freed) when
its last lease ends. A file with problems, or an entry that fails to load, is refused as a whole: what was loaded
for it is dropped, the old mapping keeps serving, and the error is logged and shown on /health.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from expertkit.core.errors import ExpertkitError
from expertkit.core.models_file import ModelsFile, load_models_file
from expertkit.serve.auth import key_from_headers, key_is_accepted
from expertkit.serve.errors import APIError

logger = logging.getLogger(__name__)

LEASES = "expertkit.leases"  # the ASGI scope key holding a request's lease releases


@dataclass(frozen=True)
class Route:
    """Where a request goes: `key` is the engine's name for the model, `shown` what the response's `model` says,
    `alias` the name the client asked for (None: none, the default), `arm` the served name that answers."""

    key: str
    shown: str
    alias: str | None
    arm: str


@dataclass(frozen=True)
class Mapping:
    """One loaded state of the models file: served name -> engine key, each entry's identity, the aliases."""

    keys: dict[str, str]
    identities: dict[str, tuple]
    aliases: dict[str, dict[str, float]] = field(default_factory=dict)
    sticky_header: str | None = None

    @classmethod
    def of(cls, models: ModelsFile, keys: dict[str, str]) -> Mapping:
        identities = {name: identity(models, name) for name in models.models}
        aliases = {alias: models.arms(alias) for alias in models.aliases}
        return cls(keys, identities, aliases, models.sticky_header)

    def listed(self) -> list[str]:
        """The names clients may ask for: the served names (the first is the default), then the aliases."""
        return [*self.keys, *self.aliases]


def identity(models: ModelsFile, name: str) -> tuple:
    """What an entry is: its model, its adapter and the adapter files' times (retrained in place: changed)."""
    adapter = models.models[name].adapter_name_or_path
    stamps = []
    if adapter:
        for f in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            try:
                stamps.append(file_stamp(Path(adapter) / f))
            except OSError:
                pass
    return models.base_of(name), adapter, tuple(stamps)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def file_stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def stable_unit(text: str) -> float:
    """A number in [0, 1) that depends on `text` only (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def pick_arm(alias: str, arms: dict[str, float], sticky: str | None) -> str:
    """The arm of `alias` a request goes to: where a stable hash of (alias, sticky) falls among the cumulative
    weights, so the same user keeps the same arm while the weights stay; no sticky key: at random."""
    u = stable_unit(f"{alias}\n{sticky}") if sticky else random.random()
    total, arm = 0.0, ""
    for arm, weight in arms.items():
        total += weight
        if u < total:
            return arm
    return arm  # u above a sum a rounding error below 1


class ServedModels:
    """The models file a server serves: the current mapping, leases on engine keys, reloads and their outcome."""

    poll_s = 1.0  # how often the file's modification time is checked

    def __init__(self, path: str, config):
        self.path = Path(path).expanduser().resolve()
        self.config = config
        self.engine = None
        self.mapping: Mapping | None = None
        self.loaded_at: str | None = None
        self.error: str | None = None
        self.stamp: tuple | None = None  # the file as last read (good or bad: a refused file is not re-read)
        self.leases: Counter[str] = Counter()
        self.retired: set[str] = set()
        self.reloading = asyncio.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Future] = set()

    # -- loading -------------------------------------------------------------------------------------------------

    def load_engine(self, engine_class=None):
        """The engine serving every entry of the file (the app's loader, in its load thread); `engine_class`: one
        taking (config, served=) and offering add / remove, LocalEngine by default."""
        if engine_class is None:
            from expertkit.engine.local import LocalEngine as engine_class

        models = self.read()
        sources = {name: (models.base_of(name), e.adapter_name_or_path) for name, e in models.models.items()}
        self.engine = engine_class(self.config, served=sources)
        self.mapping, self.loaded_at = Mapping.of(models, {name: name for name in models.models}), now()
        logger.info("models file %s: serving %s", self.path, ", ".join(self.mapping.listed()))
        return self.engine

    def read(self) -> ModelsFile:
        try:
            self.stamp = file_stamp(self.path)
        except OSError:
            self.stamp = None
        return load_models_file(self.path)

    def prepare(self) -> Mapping:
        """The next mapping, its new and changed entries loaded beside the running ones (blocking: a worker thread).
        Nothing is left loaded when it fails."""
        models = self.read()
        current, added, keys = self.mapping, [], {}
        try:
            for name, entry in models.models.items():
                if current.identities.get(name) == identity(models, name):
                    keys[name] = current.keys[name]
                    continue
                keys[name] = self.free_key(name)
                logger.info("models file: loading '%s' (%s)", name, entry.adapter_name_or_path or models.base_of(name))
                n = len(self.engine.served) + 1
                self.engine.add(keys[name], entry.adapter_name_or_path, models.base_of(name), share=(n - 1, n))
                added.append(keys[name])
        except Exception as e:
            for key in added:
                self.engine.remove(key)
            if isinstance(e, ExpertkitError):
                raise
            raise ExpertkitError(f"models file '{self.path}': loading '{name}' failed: {e}") from e
        return Mapping.of(models, keys)

    def free_key(self, name: str) -> str:
        """An engine key for a new load of `name` (its old load may still be finishing requests under `name`)."""
        key, n = name, 1
        while key in self.engine.served:
            n += 1
            key = f"{name}#{n}"
        return key

    async def reload(self, why: str) -> str | None:
        """Load the file again and switch to it; the error (the old mapping kept) or None."""
        async with self.reloading:
            if self.mapping is None:
                return "the server is still loading its models"
            try:
                new = await asyncio.to_thread(self.prepare)
            except ExpertkitError as e:
                self.error = str(e)
                logger.error("models file reload (%s) refused, still serving the previous mapping: %s", why, self.error)
                return self.error
            old, self.mapping = self.mapping, new
            self.loaded_at, self.error = now(), None
            logger.info("models file reloaded (%s): serving %s", why, ", ".join(new.listed()))
            for key in set(old.keys.values()) - set(new.keys.values()):
                self.retire(key)
            return None

    def reload_soon(self, why: str) -> None:
        """Start a reload from any thread (a signal handler, the file watcher)."""
        if self.loop is None:
            return

        def start() -> None:
            task = asyncio.ensure_future(self.reload(why))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        self.loop.call_soon_threadsafe(start)

    async def watch(self) -> None:
        """Reload when the file's modification time, size or inode changes (checked every `poll_s` seconds)."""
        self.loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_s)
            if self.mapping is None or self.reloading.locked():
                continue
            try:
                stamp = file_stamp(self.path)
            except OSError:
                stamp = None
            if stamp != self.stamp:
                await self.reload("the file changed")

    # -- routing and leases --------------------------------------------------------------------------------------

    def route(self, asked: str | None, sticky: str | None) -> Route:
        m = self.mapping
        listed = m.listed()
        if asked and asked not in listed and asked.endswith(":latest") and asked.removesuffix(":latest") in listed:
            asked = asked.removesuffix(":latest")  # Ollama clients add the tag
        if not asked:
            arm = listed[0]
        elif asked in m.aliases:
            arm = pick_arm(asked, m.aliases[asked], sticky)
        elif asked in m.keys:
            arm = asked
        else:
            raise APIError(
                404,
                f"the model '{asked[:200]}' is not served here; models: {', '.join(listed)}",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )
        return Route(key=m.keys[arm], shown=asked or arm, alias=asked or None, arm=arm)

    def acquire(self, key: str, scope: dict) -> None:
        """Hold `key` for this request: it is not removed before the request's response ends."""
        releases = scope.get(LEASES)
        if releases is None:
            return
        self.leases[key] += 1
        releases.append(lambda: self.release(key))

    def release(self, key: str) -> None:
        self.leases[key] -= 1
        if self.leases[key] <= 0:
            del self.leases[key]
            if key in self.retired:
                self.retired.discard(key)
                self.remove_soon(key)

    def retire(self, key: str) -> None:
        if self.leases[key] > 0:
            self.retired.add(key)
        else:
            self.remove_soon(key)

    def remove_soon(self, key: str) -> None:
        task = asyncio.get_running_loop().run_in_executor(None, self.remove, key)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def remove(self, key: str) -> None:
        try:
            self.engine.remove(key)
            logger.info("models file: '%s' stopped and freed (no longer named)", key)
        except Exception as e:  # noqa: BLE001 - logged; the mapping no longer names it either way
            logger.error("models file: stopping '%s' failed: %s", key, e)

    def health(self) -> dict:
        return {"path": str(self.path), "loaded_at": self.loaded_at, "error": self.error}


def sticky_key(request: Request, user: str | None, header: str | None) -> str | None:
    """What keeps a user on one A/B arm: the request's `user`, else its API key, else the configured header."""
    return user or key_from_headers(request.headers) or (request.headers.get(header) if header else None) or None


class ReleaseLeases:
    """ASGI middleware: what a request leased (serve/models.py) is given back once its response has ended."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[LEASES] = []
        try:
            await self.app(scope, receive, send)
        finally:
            for release in scope[LEASES]:
                release()


def watch_sighup(models: ServedModels) -> object:
    """Reload on SIGHUP (main thread only); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return None
    return signal.signal(signal.SIGHUP, lambda *_: models.reload_soon("SIGHUP"))


def admin_router(state) -> APIRouter:
    """POST /admin/models: reload the models file now. It needs the admin key in `X-Admin-Key` (and, like every
    route, an API key when the server has them)."""
    router = APIRouter()

    @router.post("/admin/models")
    async def reload_models(request: Request) -> JSONResponse:
        admin_key = state.config.admin_key
        if not admin_key:
            raise APIError(
                403,
                "admin routes are off: start the server with admin_key=... (e.g. admin_key=$(openssl rand -hex 16)) "
                "and send it as `X-Admin-Key: KEY`",
                type="permission_error",
                code="admin_disabled",
            )
        if not key_is_accepted(request.headers.get("x-admin-key"), [admin_key]):
            raise APIError(
                401, "send the admin key as `X-Admin-Key: KEY`", type="authentication_error", code="invalid_admin_key"
            )
        if state.models is None:
            raise APIError(400, "this server serves no models file (start it with models=FILE)", code="no_models")
        state.ready_engine()
        error = await state.models.reload("POST /admin/models")
        if error is not None:
            raise APIError(422, f"the models file was refused; still serving the previous mapping: {error}",
                           code="models_file_refused")  # fmt: skip
        return JSONResponse(
            {"status": "reloaded", "models": state.models.mapping.listed(), "models_file": state.models.health()}
        )

    return router

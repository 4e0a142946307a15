"""The teacher: any `Engine` (an OpenAI-compatible URL, or a local model), with a limit on requests in flight,
retries with backoff, and token counts.

    teacher = Teacher(load_teacher(config), config)
    text = await teacher.ask(messages)          # TeacherError: give up on this chunk; TeacherDown: stop the run

A 429, a 5xx or a failed connection is retried `max_retries` times, waiting Retry-After when the server sends it,
else `retry_backoff` seconds doubled each time (at most 60). A 401 / 403, or no connection after every retry, stops
the run (`TeacherDown`: every chunk would fail the same way). A 400 that says the prompt is too long for the model
(the chunk is then tried in pieces, generate.py), and any other refusal, fails only the chunk (`TeacherError`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from expertkit.core.errors import ExpertkitError
from expertkit.engine.base import Engine, SamplingParams, Usage, complete
from expertkit.synth.config import SynthConfig

logger = logging.getLogger(__name__)

MAX_WAIT = 60.0  # seconds: the longest pause between retries, whatever Retry-After says
TOO_LONG = re.compile(r"context.{0,20}length|maximum context|too (?:long|many tokens)|context window|exceeds", re.I)


class TeacherError(ExpertkitError):
    """This request failed for good: the chunk is counted as failed and the run goes on. `too_long`: the teacher
    said the prompt does not fit its context (the chunk may be split and tried again in pieces)."""

    def __init__(self, message: str, hint: str = "", too_long: bool = False):
        super().__init__(message, hint=hint)
        self.too_long = too_long


class TeacherDown(ExpertkitError):
    """The teacher cannot answer any request (wrong key, unreachable): the run stops, the rows so far are kept."""


@dataclass
class Tally:
    """Requests made and tokens the teacher reported using (prompt, completion)."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def cost(self, config: SynthConfig) -> float:
        return (
            self.prompt_tokens * config.price_per_million_input
            + self.completion_tokens * config.price_per_million_output
        ) / 1e6


def load_teacher(config: SynthConfig) -> Engine:
    """The engine behind the teacher: a remote OpenAI-compatible server, or a local model through our engine."""
    from expertkit.engine.config import EngineConfig
    from expertkit.engine.factory import load_engine

    require_teacher(config)
    if config.teacher_model_name_or_path:
        return load_engine(EngineConfig(model_name_or_path=config.teacher_model_name_or_path))
    return load_engine(
        EngineConfig(
            engine="openai",
            base_url=config.teacher_base_url,
            remote_api_key=config.teacher_api_key,
            served_model_name=config.teacher_model,
        )
    )


def require_teacher(config: SynthConfig) -> None:
    if not (config.teacher_base_url or config.teacher_model_name_or_path):
        raise ExpertkitError(
            "expertkit data synth needs a teacher: teacher_base_url=... (an OpenAI-compatible /v1 URL) or "
            "teacher_model_name_or_path=... (a local model)",
            hint="e.g. teacher_base_url=http://127.0.0.1:11434/v1 teacher_model=qwen2.5:14b",
        )


def teacher_identity(config: SynthConfig) -> str:
    """Who writes the rows, as part of each chunk's key in the state file (so another teacher asks again): a local
    model's folder, else the remote model's name (on whichever server), else, with teacher_model unset (the server's
    first model), the server's URL."""
    if config.teacher_model_name_or_path:
        path = Path(config.teacher_model_name_or_path).expanduser()
        return f"local:{path.resolve() if path.exists() else config.teacher_model_name_or_path}"
    if config.teacher_model:
        return f"model:{config.teacher_model}"
    return f"url:{(config.teacher_base_url or '').rstrip('/')}"


class Teacher:
    def __init__(self, engine: Engine, config: SynthConfig):
        self.engine = engine
        self.config = config
        self.model = config.teacher_model
        self.where = config.teacher_base_url or config.teacher_model_name_or_path or "the teacher"
        self.limit = asyncio.Semaphore(config.concurrency)
        self.tally = Tally()
        self.down: TeacherDown | None = None  # once set, every later request fails at once

    async def ask(self, messages: list[dict], temperature: float | None = None) -> str:
        """The reply's answer text (a `<think>` block is routed away by the engine); retried as the module says."""
        temperature = self.config.temperature if temperature is None else temperature
        params = SamplingParams(temperature=temperature, max_tokens=self.config.max_tokens)
        for attempt in range(self.config.max_retries + 1):
            if self.down:
                raise self.down
            async with self.limit:
                try:
                    self.tally.requests += 1
                    reply = await complete(self.engine, messages, params, self.model)
                except Exception as e:  # noqa: BLE001 - sorted into retry / chunk failure / stop below
                    wait = self._verdict(e, attempt)
                else:
                    self._count(reply.usage)
                    return reply.text
            self.tally.retries += 1
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: _verdict raises on the last attempt")

    def _verdict(self, error: Exception, attempt: int) -> float:
        """Seconds to wait before retrying `error`; raises when it is not worth retrying."""
        from expertkit.engine.remote import RemoteHTTPError

        last = attempt >= self.config.max_retries
        backoff = min(self.config.retry_backoff * 2**attempt, MAX_WAIT)
        if isinstance(error, RemoteHTTPError):
            status = error.status
            if status in (401, 403):
                self.down = TeacherDown(
                    f"the teacher at {self.where} refused the key (HTTP {status})",
                    hint="set teacher_api_key=... (or OPENAI_API_KEY) to a key the server accepts",
                )
                raise self.down
            if status == 429 or status >= 500:
                if last:
                    raise TeacherError(f"the teacher answered {status} {attempt + 1} times: {error.body[:200]}")
                return min(error.retry_after if error.retry_after is not None else backoff, MAX_WAIT)
            if status == 400 and TOO_LONG.search(error.body):
                raise TeacherError(
                    f"the chunk is too long for the teacher's context: {error.body[:200]}",
                    hint="lower chunk_size (or max_tokens), or use a teacher with a longer context",
                    too_long=True,
                )
            raise TeacherError(f"the teacher refused the request (HTTP {status}): {error.body[:300]}")
        if _is_connection_error(error):
            if last:
                self.down = TeacherDown(
                    f"cannot reach the teacher at {self.where} ({type(error).__name__}: {error})",
                    hint="is the server running, and is teacher_base_url its /v1 URL?",
                )
                raise self.down
            return backoff
        if isinstance(error, ExpertkitError):
            raise TeacherError(error.message, hint=error.hint)
        raise TeacherError(f"the request to {self.where} failed: {type(error).__name__}: {error}")

    def _count(self, usage: Usage | None) -> None:
        if usage:
            self.tally.prompt_tokens += usage.prompt_tokens
            self.tally.completion_tokens += usage.completion_tokens

    async def close(self) -> None:
        await self.engine.close()


def _is_connection_error(error: Exception) -> bool:
    try:
        import httpx
    except ImportError:  # the local engine: no HTTP at all
        return False
    return isinstance(error, httpx.TransportError | OSError)

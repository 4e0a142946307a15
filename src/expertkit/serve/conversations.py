"""What the server keeps when told to (`store_conversations=true`): each answer of /v1/chat/completions,
/v1/completions (the prompt as the user's turn, `"raw_prompt": true` in its options) and Ollama's /api/chat and
/api/generate as a conversation in the feedback store (the web UI's file and schema), with the name the client asked
for (`alias`) and the served name that answered (`arm`, an A/B arm of a models file's alias), and `POST /v1/feedback`,
so any client can rate an answer or say what it should have been (`rater`: who rates; unset: the API key's place
among the accepted keys, `api_key#N`):

    POST /v1/feedback {"completion_id": "chatcmpl-...", "rating": 1}
    POST /v1/feedback {"message_id": "3f2a...", "rating": -1, "edited_answer": "What it should have said."}
    -> {"object": "feedback", "id": 7, "message_id": "3f2a...", "rating": -1, "edited_answer": "...", "comment": null}

An answer is recorded once it is whole, before its last chunk (or the response) is sent, so feedback sent after it
finds it; an answer cut short (the client left, an error, request_timeout) is not recorded. `expertkit feedback
export` turns the store into training data.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from expertkit.core.errors import ExpertkitError
from expertkit.core.feedback import FeedbackStore, default_feedback_db, now
from expertkit.engine.base import Delta
from expertkit.serve.auth import key_rater
from expertkit.serve.config import ServeConfig
from expertkit.serve.errors import APIError, parse_model
from expertkit.serve.models import Route
from expertkit.serve.protocol import FeedbackRequest
from expertkit.serve.state import read_json

logger = logging.getLogger(__name__)

RECORDED_OPTIONS = ("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop")


class ConversationLog:
    """The feedback store the server records into (opened when the app is built, so a bad path fails at start)."""

    def __init__(self, config: ServeConfig):
        self.store = FeedbackStore(config.feedback_db or default_feedback_db())

    def recorded(
        self,
        deltas: AsyncIterator[Delta],
        messages: list[dict],
        route: Route,
        completion_id: str,
        index: int,
        options: dict[str, Any],
        sources: list[dict] | None,
        grounded: dict[str, str] | None = None,
    ) -> AsyncIterator[Delta]:
        """`deltas` passed on unchanged; the whole answer is stored before the delta that finishes it goes out, with
        the served name that answered as `model` and `arm`, and the name the client asked for as `alias`.
        `grounded`: a grounded answer's system prompt and user turn as the model saw them (sources included)."""
        started = now()
        turns = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]

        async def passing() -> AsyncIterator[Delta]:
            whole = Delta()
            async with aclosing(deltas):
                async for d in deltas:
                    whole.extend(d)
                    if d.finish_reason is not None:
                        await self._store(
                            turns, whole, route, completion_id, index, options, sources, started, grounded
                        )
                    yield d

        return passing()

    async def _store(
        self, turns, whole: Delta, route, completion_id, index, options, sources, started, grounded=None
    ) -> None:
        try:
            await asyncio.to_thread(
                self.store.record_conversation,
                turns,
                whole.text,
                reasoning=whole.reasoning,
                model=route.arm,
                alias=route.alias,
                arm=route.arm,
                options=options,
                sources=sources,
                completion_id=completion_id,
                choice_index=index,
                started=started,
                grounded=grounded,
            )
        except (sqlite3.Error, OSError, ExpertkitError) as e:  # the answer still goes out; the log says why
            logger.warning("could not record the conversation of %s in %s: %s", completion_id, self.store.path, e)

    def close(self) -> None:
        self.store.close()


def request_options(req) -> dict[str, Any]:
    """The request's sampling settings and retrieval option, as stored beside the answer."""
    options = {k: getattr(req, k) for k in RECORDED_OPTIONS if getattr(req, k, None) is not None}
    if getattr(req, "retrieval", None):
        options["retrieval"] = req.retrieval if req.retrieval is True else req.retrieval.model_dump(exclude_none=True)
    return options


def feedback_router(log: ConversationLog | None) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        req = parse_model(FeedbackRequest, await read_json(request))
        if log is None:
            raise APIError(
                400,
                "this server keeps no conversations: start it with store_conversations=true to take feedback",
                code="feedback_unavailable",
            )
        if req.rating is None and req.edited_answer is None:
            raise APIError(400, "give a rating (1, -1 or 0) or an edited_answer", param="rating", code="invalid_value")
        message_id = await asyncio.to_thread(target_message, log.store, req)
        rater = req.rater or key_rater(request.scope)
        row = await asyncio.to_thread(
            log.store.record_feedback, message_id, req.rating, req.edited_answer, req.comment, rater=rater
        )
        state = await asyncio.to_thread(log.store.feedback, message_id)
        return JSONResponse(
            {
                "object": "feedback",
                "id": row,
                "message_id": message_id,
                "rating": state["rating"],
                "edited_answer": state["edited_content"],
                "comment": state["comment"],
                "rater": state["rater"],
            }
        )

    return router


def target_message(store: FeedbackStore, req: FeedbackRequest) -> str:
    """The stored answer a feedback request names, or a 400 / 404 saying what is wrong."""
    if (req.completion_id is None) == (req.message_id is None):
        raise APIError(400, "name the answer by completion_id or by message_id (one of them)", param="completion_id")
    if req.completion_id is not None:
        found = store.find_message(req.completion_id, req.index)
        if found is None:
            raise APIError(
                404,
                f"no recorded answer for completion '{req.completion_id[:100]}' (choice {req.index}): only chat "
                "completions answered while store_conversations was on are recorded, once they are complete",
                type="not_found_error",
                param="completion_id",
                code="answer_not_found",
            )
        return found
    stored = store.message(req.message_id)
    if stored is None or stored["role"] != "assistant":
        name = req.message_id[:100]
        raise APIError(
            404,
            f"no message '{name}' in the feedback store"
            if stored is None
            else f"message '{name}' is the {stored['role']}'s, not an answer: rate the answer that follows it",
            type="not_found_error",
            param="message_id",
            code="answer_not_found",
        )
    return req.message_id

"""Retrieval on request: `"retrieval": true` (or `{"kb": true, "web": false, "top_k": 5}`) in a chat completion
grounds the answer in the server's knowledge base (`kb_dir`) and, when the server allows it (`web=true`), a web
search; the response carries the numbered `sources` the answer cites as [n].

    client.chat.completions.create(model="sail", messages=[...], extra_body={"retrieval": True})
    -> {"choices": [...], "sources": [{"n": 1, "url": "https://...", "title": "..."}], ...}
"""

from __future__ import annotations

import asyncio

from expertkit.core.errors import ExpertkitError
from expertkit.serve.errors import APIError


class Grounding:
    def __init__(self, config):
        self.config = config
        self._kb = None
        self._lock = asyncio.Lock()

    async def knowledge_base(self):
        """The server's knowledge base, opened on first use (it may be built after the server started)."""
        if not self.config.kb_dir:
            raise APIError(
                400,
                "this server has no knowledge base: start it with kb_dir=DIR to answer with retrieval",
                param="retrieval",
                code="retrieval_unavailable",
            )
        async with self._lock:
            if self._kb is None:
                from expertkit.rag.config import KbConfig
                from expertkit.rag.kb import KnowledgeBase

                config = KbConfig(kb_dir=self.config.kb_dir, top_k=self.config.top_k)
                try:
                    self._kb = await asyncio.to_thread(KnowledgeBase.open, config, self.config.web)
                except ExpertkitError as e:
                    message = f"the knowledge base cannot be opened: {e.message}"
                    raise APIError(503, message, code="kb_unavailable") from None
        return self._kb

    async def apply(self, messages: list[dict], option) -> tuple[list[dict], list]:
        """The conversation with the last user turn grounded in retrieved sources, and those sources."""
        from expertkit.rag.answer import grounded_messages

        use_web = bool(getattr(option, "web", False))
        use_kb = option is True or bool(getattr(option, "kb", True))
        top_k = getattr(option, "top_k", None) or self.config.top_k
        if use_web and not self.config.web:
            raise APIError(
                400, "web search is off on this server: start it with web=true", param="retrieval.web",
                code="retrieval_unavailable",
            )  # fmt: skip
        if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            raise APIError(400, "retrieval needs the last message to be the user's question", param="messages")
        question = messages[-1]["content"]
        kb = await self.knowledge_base()
        if use_web:
            from expertkit.rag.webread import search_web

            await search_web(question, self.config, kb)
        hits = await asyncio.to_thread(kb.search, question, top_k) if (use_kb or use_web) else []
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
        history = [m for m in messages[:-1] if m["role"] != "system"]
        return grounded_messages(question, hits, history=history, system=system)

    def close(self) -> None:
        if self._kb is not None:
            self._kb.close()

"""Who may do what on the page: the logged-in user's role, and trainer-only events refused server-side.

Hiding a tab is not enough: every event of a Gradio page can be called through its HTTP API. So each event of the
trainer's tabs (data, train, evaluate, export, promote) is wrapped after the page is built: for a user without the
trainer role it does nothing (`gr.skip()`: no output changes, nothing starts, nothing is read).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import gradio as gr

from expertkit.ui.accounts import Accounts, Role

logger = logging.getLogger(__name__)


class Access:
    """The roles of one page: everybody is a trainer without accounts (a UI on loopback, for its one user)."""

    def __init__(self, accounts: Accounts | None):
        self.accounts = accounts

    def user(self, request: gr.Request | None) -> str | None:
        """The logged-in user's name (None without accounts): what a rating records as its rater."""
        if self.accounts is None or request is None:
            return None
        return getattr(request, "username", None)

    def role(self, request: gr.Request | None) -> Role | None:
        if self.accounts is None:
            return "trainer"
        return self.accounts.role(self.user(request))

    def is_trainer(self, request: gr.Request | None) -> bool:
        return self.role(request) == "trainer"

    def opener(self, L: dict[str, str], trainer_tabs: list, timers: list):
        """What the page runs when it opens: who is logged in; the trainer's tabs shown (and their timers left
        running) for trainers only. (Defined here, where `gr` is a module global: Gradio finds the gr.Request
        parameter through the annotation.)"""

        def on_open(request: gr.Request = None):
            trainer = self.is_trainer(request)
            line = L["logged_in"].format(user=self.user(request), role=self.role(request))
            tabs = [gr.Tab(visible=trainer) for _ in trainer_tabs]
            return line, *tabs, *[gr.update() if trainer else gr.Timer(active=False) for _ in timers]

        return on_open


def current_request() -> gr.Request | None:
    """The request of the event being run (Gradio keeps it in a context variable while it calls a function)."""
    from gradio.context import LocalContext

    return LocalContext.request.get(None)


def trainer_only(demo: gr.Blocks, fn_ids: list[int], access: Access) -> None:
    """Wrap the functions of these events so that they run for trainers only."""
    for fn_id in fn_ids:
        block_fn = demo.fns[fn_id]
        if block_fn.fn is not None:
            block_fn.fn = _guarded(block_fn.fn, access)


def _guarded(fn, access: Access):
    def allowed() -> bool:
        request = current_request()
        if access.is_trainer(request):
            return True
        logger.debug("refused %s to %s: trainer role needed", getattr(fn, "__name__", "an event"), access.user(request))
        return False

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)  # keeps the signature: Gradio still passes gr.Request and event data
        def gen(*args: Any, **kwargs: Any):
            if not allowed():
                yield gr.skip()
                return
            yield from fn(*args, **kwargs)

        return gen

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any):
            return await fn(*args, **kwargs) if allowed() else gr.skip()

        return coro

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any):
        return fn(*args, **kwargs) if allowed() else gr.skip()

    return plain

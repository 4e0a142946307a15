"""robots.txt, honoured per site for our named user agent and read once per (scheme, host, port).

A robots.txt that is missing (4xx), failing (5xx), unreachable or too slow allows everything: the fetcher asks for it
with a short timeout of its own, so a site that never answers cannot hold a page back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

from expertkit.rag.web.netguard import DEFAULT_PORTS

logger = logging.getLogger(__name__)


class RobotsRules:
    """One site's parsed robots.txt (None: the site has none we could read, so everything is allowed)."""

    def __init__(self, text: str | None):
        self.parser = RobotFileParser()
        if text is None:
            self.parser.allow_all = True
        else:
            self.parser.parse(text.splitlines())

    def disallowing_rule(self, url: str, user_agent: str) -> str | None:
        """The Disallow rule that keeps `user_agent` away from `url` ("/private/"), or None when it may fetch it."""
        if self.parser.can_fetch(user_agent, url):
            return None
        return _matching_rule(self.parser, url, user_agent) or urlsplit(url).path or "/"


class RobotsCache:
    """robots.txt per site for the life of one fetcher; concurrent pages of one site share a single request.

    `fetch_text(robots_url)` returns the file's text, or None when there is none to honour.
    """

    def __init__(self, fetch_text: Callable[[str], Awaitable[str | None]], user_agent: str):
        self._fetch_text = fetch_text
        self.user_agent = user_agent
        self._sites: dict[tuple[str, str, int | None], asyncio.Future[RobotsRules]] = {}

    async def disallowing_rule(self, url: str) -> str | None:
        """The rule of the URL's robots.txt that forbids fetching it, or None when it is allowed."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        key = (scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme))
        task = self._sites.get(key)
        if task is None:
            robots_url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "/robots.txt", "", ""))
            task = self._sites[key] = asyncio.ensure_future(self._load(robots_url))
        # shield: a page that times out must not cancel the robots.txt request other pages wait on
        rules = await asyncio.shield(task)
        return rules.disallowing_rule(url, self.user_agent)

    async def _load(self, robots_url: str) -> RobotsRules:
        try:
            text = await self._fetch_text(robots_url)
        except Exception as e:  # an unreadable robots.txt allows everything, as a missing one does
            logger.info("robots.txt %s unreadable (%s); treating the site as allowing everything", robots_url, e)
            text = None
        return RobotsRules(text)

    def close(self) -> None:
        """Cancel robots.txt requests still running."""
        for task in self._sites.values():
            task.cancel()


def _matching_rule(parser: RobotFileParser, url: str, user_agent: str) -> str | None:
    """The first rule urllib.robotparser applied, read from its entries (it only answers yes or no)."""
    parts = urlsplit(unquote(url))
    path = quote(urlunsplit(("", "", parts.path, parts.query, ""))) or "/"
    entries = [e for e in parser.entries if e.applies_to(user_agent)] or [parser.default_entry]
    for entry in entries[:1]:
        for line in getattr(entry, "rulelines", []):
            if line.applies_to(path):
                return None if line.allowance else line.path
    return None

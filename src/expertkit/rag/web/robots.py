"""robots.txt, honoured per site for our named user agent and read once per (scheme, host, port).

A robots.txt that is missing (4xx), failing (5xx), unreachable or too slow allows everything: the fetcher asks for it
with a short timeout of its own, so a site that never answers cannot hold a page back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

from expertkit.rag.web.netguard import DEFAULT_PORTS

logger = logging.getLogger(__name__)


class RobotsRules:
    """One site's robots.txt (None: none we could read, so everything is allowed), matched as RFC 9309 says.

    urllib.robotparser reads the groups; matching is ours, because it takes the first rule that matches and knows
    no wildcards, where RFC 9309 takes the longest match (Allow winning a tie) and supports ``*`` and ``$``:
    with ``Allow: /`` before ``Disallow: /private/``, /private/ is disallowed.
    """

    def __init__(self, text: str | None):
        self.parser = RobotFileParser()
        self.allow_all = text is None
        if text is not None:
            self.parser.parse(text.splitlines())

    def disallowing_rule(self, url: str, user_agent: str) -> str | None:
        """The Disallow rule that keeps `user_agent` away from `url` ("/private/"), or None when it may fetch it."""
        parts = urlsplit(url)
        path = unquote(parts.path or "/") + (f"?{unquote(parts.query)}" if parts.query else "")
        if self.allow_all or path == "/robots.txt":
            return None
        group = next((e for e in self.parser.entries if e.applies_to(user_agent)), self.parser.default_entry)
        best: tuple[int, bool, str] | None = None
        for line in getattr(group, "rulelines", []):
            pattern = unquote(line.path)  # robotparser stores rules percent-encoded
            if pattern and _matches(pattern, path):
                candidate = (len(pattern), line.allowance, pattern)  # longest wins; on a tie Allow (True) wins
                best = max(best, candidate) if best else candidate
        return best[2] if best and not best[1] else None


def _matches(pattern: str, path: str) -> bool:
    """Whether a robots.txt rule covers `path`: a prefix match, ``*`` any characters, a final ``$`` the end."""
    anchored = pattern.endswith("$")
    regex = ".*".join(re.escape(piece) for piece in pattern.rstrip("$").split("*"))
    return re.match(regex + ("$" if anchored else ""), path) is not None


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

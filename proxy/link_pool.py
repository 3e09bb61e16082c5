"""Per-client backend links kept warm for stateless (modern-era) clients.

A ``session: per-client`` backend gets a link of its own for each client session. A modern client has no
session: every HTTP request is one, so without this pool each of its calls would start a backend process
and do a handshake. When such a session ends, its link waits here (a few at most, for a short while) and
the next stateless session of the same principal declaring the same capabilities takes it over (a backend
may keep state per connection, so a link never passes from one principal to another); and whenever a
session takes the last idle link of its kind, a spare is opened in the background (one at a time per kind),
so concurrent requests rarely wait for a process to start. A link serves one session at a time, so a
backend's request on it is still attributed to exactly one client, and it declares its first session's
capabilities, so a backend that adapts to what the client can answer sees the truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from proxy.errors import BackendUnavailable
from proxy.upstream import UpstreamLink

log = logging.getLogger("portico.backend")

_LIMIT = 4
_IDLE_SECONDS = 60.0

PoolKey = tuple[str | None, tuple[str, ...]]
Opener = Callable[[dict[str, Any]], Awaitable[UpstreamLink]]


def pool_key(subject: str | None, capabilities: dict[str, Any]) -> PoolKey:
    return subject, tuple(sorted(capabilities))


class IdleLinks:
    """The idle links of one backend; see the module docstring."""

    def __init__(self, opener: Opener, limit: int = _LIMIT, idle_seconds: float = _IDLE_SECONDS) -> None:
        self._open = opener
        self._limit = limit
        self._idle_seconds = idle_seconds
        self._idle: dict[UpstreamLink, tuple[PoolKey, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Kinds whose spare is being opened. One at a time per kind: a quick run of calls, each taking the
        # link the previous one gave back, would otherwise start a process per call, all at once, and the
        # CPU they take slows every start (a new session's own included) to many seconds.
        self._opening: set[PoolKey] = set()
        self._closed = False

    def take(self, capabilities: dict[str, Any], owner: str, subject: str) -> UpstreamLink | None:
        """An idle link for a session of ``subject`` with these capabilities (a spare is then made
        ready), or None."""
        key = pool_key(subject, capabilities)
        found = None
        for link, (link_key, timer) in list(self._idle.items()):
            if link_key == key and link.closed:
                del self._idle[link]
                timer.cancel()
            elif link_key == key and found is None:
                del self._idle[link]
                timer.cancel()
                link.owner = owner
                found = link
        if key not in self._opening and not any(link_key == key for link_key, _ in self._idle.values()):
            self._opening.add(key)
            self._spawn(self._open_spare(key, capabilities, subject))
        return found

    def keep(self, link: UpstreamLink) -> bool:
        """Keep ``link`` for a later session; False when it cannot be kept (the caller closes it)."""
        if self._closed or link.closed or len(self._idle) >= self._limit:
            return False
        link.owner = None
        timer = asyncio.get_running_loop().call_later(self._idle_seconds, self._expire, link)
        self._idle[link] = (pool_key(link.subject, link.capabilities), timer)
        return True

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        links = list(self._idle)
        for _, timer in self._idle.values():
            timer.cancel()
        self._idle.clear()
        await asyncio.gather(*(link.close() for link in links), *self._tasks, return_exceptions=True)

    async def _open_spare(self, key: PoolKey, capabilities: dict[str, Any], subject: str) -> None:
        try:
            if len(self._idle) >= self._limit:
                return
            link = await self._open(capabilities)
        except BackendUnavailable as exc:
            log.info("a spare per-client link could not be opened: %s", exc.message)
            return
        finally:
            self._opening.discard(key)
        link.subject = subject
        if not self.keep(link):
            await link.close()

    def _expire(self, link: UpstreamLink) -> None:
        if self._idle.pop(link, None) is not None:
            self._spawn(link.close())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

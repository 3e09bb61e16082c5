"""Per-client backend links kept warm between stateless (modern-era) clients.

A ``session: per-client`` backend gets a link of its own for each client session. A modern client has no
session: every HTTP request is one, so without this pool each of its calls would start a backend process
and do a handshake. When such a session ends, its link waits here (a few at most, for a short while) and
the next stateless session with the same capabilities takes it over. A link serves one session at a
time, so a backend's request on it is still attributed to exactly one client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.upstream import UpstreamLink

_LIMIT = 4
_IDLE_SECONDS = 60.0

PoolKey = tuple[str, ...]


def pool_key(capabilities: dict[str, Any]) -> PoolKey:
    """Links are only handed to sessions declaring the same capabilities as the one that opened them."""
    return tuple(sorted(capabilities))


class IdleLinks:
    """The idle links of one backend; see the module docstring."""

    def __init__(self, limit: int = _LIMIT, idle_seconds: float = _IDLE_SECONDS) -> None:
        self._limit = limit
        self._idle_seconds = idle_seconds
        self._idle: dict[UpstreamLink, tuple[PoolKey, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: PoolKey, owner: str) -> UpstreamLink | None:
        for link, (link_key, timer) in list(self._idle.items()):
            if link_key == key and not link.closed:
                del self._idle[link]
                timer.cancel()
                link.owner = owner
                return link
        return None

    def keep(self, key: PoolKey, link: UpstreamLink) -> bool:
        """Keep ``link`` for a later session; False when it cannot be kept (the caller closes it)."""
        if link.closed or len(self._idle) >= self._limit:
            return False
        link.owner = None
        timer = asyncio.get_running_loop().call_later(self._idle_seconds, self._expire, link)
        self._idle[link] = (key, timer)
        return True

    async def close(self) -> None:
        links = list(self._idle)
        for _, timer in self._idle.values():
            timer.cancel()
        self._idle.clear()
        await asyncio.gather(*(link.close() for link in links), *self._closing, return_exceptions=True)

    def _expire(self, link: UpstreamLink) -> None:
        if self._idle.pop(link, None) is not None:
            task = asyncio.get_running_loop().create_task(link.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

"""Circuit breakers the gateway instances share (``breaker.shared`` on a remote backend, with ``redis``).

When a shared breaker opens or closes on one instance, the instance says so on a pub/sub channel and the
others take the same state (``AsyncBreaker.follow``): a backend found failing is withdrawn everywhere at
once instead of each instance paying ``failures`` failed calls to find out, and the first probe that
succeeds brings it back everywhere. Nothing is stored: a breaker's state only matters for seconds, and an
instance that missed the news finds out by itself, as it would alone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

import orjson

from proxy.shared_redis import REDIS_ERRORS, ChannelListener, SharedRedis

log = logging.getLogger("portico.breakers")

Follower = Callable[[str], None]


class SharedBreakers:
    """The breaker news of one gateway instance: what it announces, and what it hears."""

    def __init__(self, shared: SharedRedis, follower_of: Callable[[str], Follower | None]) -> None:
        self._shared = shared
        self._channel = shared.key("breakers")
        self._follower_of = follower_of
        self.instance = secrets.token_hex(8)
        self.listener = ChannelListener(shared.url, self._channel, self._heard)
        self._sending: set[asyncio.Task[None]] = set()

    def announce(self, backend: str, state: str) -> None:
        """Tell the other instances (from a breaker's synchronous callback: sent in the background)."""
        news = orjson.dumps({"backend": backend, "state": state, "sender": self.instance})
        task = asyncio.get_running_loop().create_task(self._send(news))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, news: bytes) -> None:
        try:
            async with asyncio.timeout(self._shared.timeout):
                await self._shared.client.publish(self._channel, news)
        except REDIS_ERRORS as exc:
            log.warning("could not tell the other instances about a breaker (%s)", exc)

    async def _heard(self, data: bytes) -> None:
        try:
            news = orjson.loads(data)
            backend, state, sender = news["backend"], news["state"], news["sender"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("ignored a malformed message on %s", self._channel)
            return
        if sender == self.instance or state not in ("open", "closed"):
            return
        follow = self._follower_of(backend) if isinstance(backend, str) else None
        if follow is not None:
            follow(state)

    def start(self) -> None:
        self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

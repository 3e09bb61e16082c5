"""The Redis that several gateway instances share (the config's ``redis`` section), for the gateway and
for plugins (it imports nothing of the gateway's).

``SharedRedis`` is the gateway's own client: keys under ``key_prefix``, every operation bounded by
``timeout_seconds``. ``ChannelListener`` follows one pub/sub channel for as long as it runs: Redis
delivers a message only to those subscribed at that moment, so after every (re)subscription the owner's
``on_subscribed`` runs and reads whatever state the messages it may have missed were about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger("portico.redis")

# Errors that mean "Redis is unreachable or failed", as opposed to a bug.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL (its scheme, host, port or database), or None if nothing is."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must be a redis://, rediss:// or unix:// URL"
    if parts.scheme != "unix" and not parts.hostname:
        return "must name a host: redis://host[:port][/db]"
    try:
        _ = parts.port
        if parts.scheme != "unix":
            int(parts.path.strip("/") or "0")
    except ValueError:
        return "has a bad port or database number"
    return None


def checked_redis_url(url: str | None) -> str | None:
    """A plugin option's validator: ``redis_url`` unset, or usable (else a ValueError saying why)."""
    problem = None if url is None else redis_url_problem(url)
    if problem is not None:
        raise ValueError(f"redis_url {problem}")
    return url


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A pooled client whose every connect, read and write gives up after ``timeout`` seconds."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
    )


class SharedRedis:
    """The gateway's connection to the shared Redis."""

    def __init__(self, url: str, key_prefix: str, timeout: float) -> None:
        self.url = url
        self.prefix = key_prefix
        self.timeout = timeout
        self.client = redis_client(url, timeout)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def close(self) -> None:
        await self.client.aclose()


class ChannelListener:
    """Calls ``on_message`` with each message published on ``channel`` while it runs.

    A lost connection is logged once and retried every ``retry_seconds``; ``on_subscribed`` runs after
    every successful subscription (the first included), before any message that follows it. Neither
    callback may raise for a reason other than Redis failing: what they raise is logged and skipped.
    A connection that goes silent without closing (a network path that drops everything) is noticed too:
    after ``check_seconds`` without a message the listener sends PING, and one that hears nothing for
    twice that long counts the connection as lost.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Callable[[bytes], Awaitable[None]],
        *,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
        retry_seconds: float = 1.0,
        check_seconds: float = 5.0,
    ) -> None:
        self.channel = channel
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=5.0)
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._retry_seconds = retry_seconds
        self._check_seconds = check_seconds
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"redis listener {self.channel}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except REDIS_ERRORS as exc:
                if not self._failing:
                    log.warning(
                        "lost the Redis channel %s (%s); retrying every %.1f s",
                        self.channel,
                        exc,
                        self._retry_seconds,
                    )
                self._failing = True
            self.subscribed.clear()
            await asyncio.sleep(self._retry_seconds)

    async def _follow(self) -> None:
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(self.channel)
            # The subscription is in force once Redis confirms it; only from then on is nothing missed.
            confirmed = None
            deadline = asyncio.get_running_loop().time() + 2 * self._check_seconds
            while confirmed is None or confirmed.get("type") != "subscribe":
                if asyncio.get_running_loop().time() > deadline:
                    raise RedisConnectionError("Redis did not confirm the subscription")
                confirmed = await pubsub.get_message(timeout=self._check_seconds)
            if self._on_subscribed is not None:
                await self._guarded(self._on_subscribed())
            self.subscribed.set()
            if self._failing:
                log.info("following the Redis channel %s again", self.channel)
                self._failing = False
            await self._listen(pubsub)

    async def _listen(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=self._check_seconds)
            if message is not None:
                heard = loop.time()
                if message.get("type") == "message":
                    await self._guarded(self._on_message(message["data"]))
                continue
            if loop.time() - heard > 2 * self._check_seconds:
                raise RedisConnectionError("the connection went silent (no answer to PING)")
            await pubsub.ping()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except REDIS_ERRORS:
            raise
        except Exception:
            log.exception("handling a message of the Redis channel %s failed", self.channel)

"""Legacy Streamable HTTP sessions that any gateway instance can continue (with the ``redis`` section).

A load balancer may send each request of a session to another instance. So the instance that answers
``initialize`` writes the session's *record* to Redis: what the handshake settled (protocol version, the
client's capabilities and info), what the client set later (log level, ``initialized``), and whom the
session is bound to (the endpoint and the subject). An instance that meets a session id it does not know
reads the record and makes a local *copy* of the session from it; the copies share the session's SSE
events (``proxy.transports.redis_events``), so a ``Last-Event-ID`` can be resumed anywhere.

Why records in Redis rather than self-contained signed session ids: a signed id cannot be ended (a
``DELETE`` on one instance must end the session everywhere, at once), cannot follow what changes after
the handshake (the log level), and grows with the client's capabilities; Redis is there anyway for the
events. The cost is one Redis read when an instance first meets a session, and a write when its state
changes or now and then to keep it alive (records expire after ``listen.session_idle_seconds``).

The copies hear about each other on one pub/sub channel (``News``): a session ended (every copy ends); a
``GET`` stream opened on one instance (the others stop sending the session's unrelated messages, so each
goes out once, from the instance that holds the stream); a message for the client that arose on another
copy (a resource update for a subscription taken there, a per-client backend's log or request), which
the holder sends; a client's response or notification POSTed to one instance (the copy that waits for
that response, or runs the cancelled request, takes it). The ``list_changed`` notifications are not
handed over: every instance sees its backends change and announces it by itself.
What does not move: a request runs where it was POSTed (its reply and events reach the client there, or
through the event log on a resumed stream); a backend with ``session: per-client`` gets a new
connection on each instance the session reaches, so its own state is per instance.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from proxy.jsonrpc import Message
from proxy.session import Session
from proxy.shared_redis import REDIS_ERRORS, ChannelListener, SharedRedis
from proxy.transports.redis_events import RedisEventLog

log = logging.getLogger("portico.http")


@dataclass(frozen=True)
class SessionRecord:
    """What another instance needs to continue a session."""

    protocol_version: str
    client_capabilities: dict[str, Any]
    client_info: dict[str, Any]
    log_level: str | None
    initialized: bool
    # Bound to: the virtual server whose endpoint opened it (None: /mcp) and the subject.
    view: str | None
    subject: str

    @classmethod
    def of(cls, session: Session) -> SessionRecord:
        return cls(
            protocol_version=session.protocol_version or "",
            client_capabilities=session.client_capabilities,
            client_info=session.client_info,
            log_level=session.log_level,
            initialized=session.initialized,
            view=session.view.name if session.view is not None else None,
            subject=session.principal.subject,
        )

    def restore(self, session: Session) -> None:
        session.protocol_version = self.protocol_version
        session.client_capabilities = self.client_capabilities
        session.client_info = self.client_info
        session.log_level = self.log_level
        session.initialized = self.initialized

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> SessionRecord | None:
        """The record, or None for anything that is not one (written by another version, damaged)."""
        try:
            fields = orjson.loads(data)
            record = cls(**fields)
        except (orjson.JSONDecodeError, TypeError):
            return None
        return record if isinstance(record.protocol_version, str) and record.protocol_version else None


@dataclass(frozen=True)
class News:
    """What one instance tells the others about a session."""

    session: str
    # "ended"; "stream" (a GET stream opened there); "message" (a client's message, for the copy it
    # answers or cancels something of); "unrelated" (a message for the client, for the stream's holder)
    event: str
    message: Message | None = None
    # The instance that tells it (each skips its own news).
    sender: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> News | None:
        try:
            news = cls(**orjson.loads(data))
        except (orjson.JSONDecodeError, TypeError):
            return None
        return news if news.event in ("ended", "stream", "message", "unrelated") else None


class SharedStoreUnavailable(Exception):
    """Redis did not answer in time, or failed."""


class SessionDirectory:
    """The records of the sessions all instances share, and the channel they talk about them on."""

    def __init__(
        self,
        shared: SharedRedis,
        idle_seconds: float,
        event_capacity: int,
        on_news: Callable[[News], Awaitable[None]],
        on_resubscribed: Callable[[], Awaitable[None]],
    ) -> None:
        self.shared = shared
        self.idle_seconds = idle_seconds
        self._event_capacity = event_capacity
        self._channel = shared.key("sessions", "news")
        self._on_news = on_news
        # This instance, as the others see it in the news.
        self.instance = secrets.token_hex(8)
        # After a lost connection, the owner checks what news it may have missed.
        self.listener = ChannelListener(shared.url, self._channel, self._heard, on_subscribed=on_resubscribed)

    def _record_key(self, session_id: str) -> str:
        return self.shared.key("session", session_id, "record")

    def events_of(self, session_id: str) -> RedisEventLog:
        return RedisEventLog(self.shared, session_id, self._event_capacity, self.idle_seconds)

    async def save(self, session_id: str, record: SessionRecord) -> None:
        await self._bounded(
            self.shared.client.set(self._record_key(session_id), record.to_json(), px=self._ttl_ms())
        )

    async def load(self, session_id: str) -> SessionRecord | None:
        data = await self._bounded(self.shared.client.get(self._record_key(session_id)))
        return None if data is None else SessionRecord.from_json(data)

    async def touch(self, session_id: str) -> None:
        """Keep the record (and the events) alive: the session is in use on this instance."""
        log_keys = (self.shared.key("session", session_id, n) for n in ("sequence", "events"))
        async with self.shared.client.pipeline(transaction=False) as pipe:
            for key in (self._record_key(session_id), *log_keys):
                pipe.pexpire(key, self._ttl_ms())
            await self._bounded(pipe.execute())

    async def remove(self, session_id: str) -> None:
        """The session is over everywhere: its record and events go, and every copy hears of it."""
        keys = [self.shared.key("session", session_id, n) for n in ("record", "sequence", "events")]
        await self._bounded(self.shared.client.delete(*keys))
        await self.announce(News(session_id, "ended"))

    async def announce(self, news: News) -> None:
        signed = replace(news, sender=self.instance)
        await self._bounded(self.shared.client.publish(self._channel, signed.to_json()))

    async def _heard(self, data: bytes) -> None:
        news = News.from_json(data)
        if news is None:
            log.warning("ignored a malformed message on %s", self._channel)
        elif news.sender != self.instance:
            await self._on_news(news)

    async def _bounded(self, operation: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self.shared.timeout):
                return await operation
        except REDIS_ERRORS as exc:
            raise SharedStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _ttl_ms(self) -> int:
        return max(1, int(self.idle_seconds * 1000))

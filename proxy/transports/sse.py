"""Server-sent events for Streamable HTTP: streams, event ids, and the store that makes them resumable.

Every event a session sends on an SSE stream gets an id ``{stream}-{sequence}`` and is kept, up to a
bound, in the session's ``EventStore``. A client that lost a stream reconnects with ``GET`` and
``Last-Event-ID`` and gets what it missed on that stream, and only that stream, as the specification
asks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from aiohttp import web

KEEPALIVE_SECONDS = 15.0
_PEER_CHECK_SECONDS = 1.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    # Tells nginx and similar proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}


# A session's standalone (GET) stream; the streams of POSTed requests get other numbers.
STANDALONE_STREAM = 1
# The stream an event id belongs to, and the later events on it: (sequence, frame) pairs.
Replay = tuple[int, list[tuple[int, bytes]]]


class EventLog(Protocol):
    """Where a session's events are kept for replay: in memory (``EventStore``) or in Redis, for
    sessions that several gateway instances serve (``proxy.transports.redis_events``)."""

    def new_stream(self) -> int: ...

    async def record(self, stream: int, frame: bytes, *, final: bool = False) -> int:
        """Keep ``frame`` as the next event on ``stream`` and return its sequence number; ``final``
        marks the last event of a request's stream (its reply)."""
        ...

    async def end_stream(self, stream: int) -> None:
        """A request's stream ended without a reply (it was cancelled)."""
        ...

    async def after(self, event_id: str) -> Replay | None:
        """The stream an event id belongs to and its later events; None if unknown or too old to replay."""
        ...

    def follow(
        self, stream: int, after: int, keep_going: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The events of a request's stream after ``after`` as another instance records them, until its
        reply or until ``keep_going`` says no (nothing, for a log only this instance writes)."""
        ...


class EventStore:
    """The latest events of one session, in memory, for replay after a reconnect."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._events: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._sequence = itertools.count(1)
        self._streams = STANDALONE_STREAM
        # Events up to this sequence number were dropped to stay within the bound.
        self._forgotten_up_to = 0

    def new_stream(self) -> int:
        self._streams += 1
        return self._streams

    async def record(self, stream: int, frame: bytes, *, final: bool = False) -> int:
        sequence = next(self._sequence)
        self._events.append((stream, sequence, frame))
        if len(self._events) > self._capacity:
            self._forgotten_up_to = self._events.popleft()[1]
        return sequence

    async def end_stream(self, stream: int) -> None:
        # Nobody follows a stream in memory but the exchange itself, which knows it has ended.
        return None

    async def follow(
        self, stream: int, after: int, keep_going: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[tuple[int, bytes]]:
        # Every request whose events are kept here runs here: none is left to follow once its exchange
        # has gone.
        return
        yield

    async def after(self, event_id: str) -> Replay | None:
        stream, sequence = parse_event_id(event_id)
        if stream is None or sequence is None or not 0 < stream <= self._streams:
            return None
        if sequence < self._forgotten_up_to:
            return None
        return stream, [(seq, frame) for s, seq, frame in self._events if s == stream and seq > sequence]


def parse_event_id(event_id: str) -> tuple[int | None, int | None]:
    stream, _, sequence = event_id.partition("-")
    if not (stream.isdigit() and sequence.isdigit()):
        return None, None
    return int(stream), int(sequence)


async def follow_elsewhere(sink: SseSink, log: EventLog, stream: int, after: int, patience: float) -> None:
    """Write to ``sink`` the events of a request that runs on another instance as they are recorded,
    until its reply, until the client goes, or until nothing has come for ``patience`` seconds (the
    instance running it may have died; the client can resume again)."""
    loop = asyncio.get_running_loop()
    last_event = loop.time()

    async def keep_going() -> bool:
        return loop.time() - last_event < patience and await sink.still_there()

    async for sequence, frame in log.follow(stream, after, keep_going):
        await sink.write(sequence, frame)
        last_event = loop.time()


class SseSink:
    """One open SSE response; writes never interleave, never repeat, and a dead peer is noticed."""

    def __init__(self, request: web.Request, response: web.StreamResponse, stream: int) -> None:
        self.request = request
        self.response = response
        self.stream = stream
        self.alive = True
        self._lock = asyncio.Lock()
        self._last_sequence = 0
        self._last_write = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request, stream: int, headers: dict[str, str]) -> SseSink:
        response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
        await response.prepare(request)
        return cls(request, response, stream)

    def check_alive(self) -> bool:
        """Whether the peer is still there, looking at the connection itself rather than the last write."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            self.alive = False
        return self.alive

    async def write(self, sequence: int, frame: bytes) -> None:
        async with self._lock:
            if not self.alive or sequence <= self._last_sequence:
                return
            try:
                self._last_write = time.monotonic()
                await self.response.write(b"id: %d-%d\ndata: %s\n\n" % (self.stream, sequence, frame))
                self._last_sequence = sequence
            except (ConnectionError, RuntimeError):
                self.alive = False

    async def write_event(self, event: str, data: bytes) -> None:
        """A named event without an id (the legacy HTTP+SSE transport's ``endpoint`` and ``message``)."""
        async with self._lock:
            if not self.alive:
                return
            try:
                await self.response.write(b"event: %s\ndata: %s\n\n" % (event.encode(), data))
            except (ConnectionError, RuntimeError):
                self.alive = False

    async def replay(self, events: list[tuple[int, bytes]]) -> None:
        for sequence, frame in events:
            await self.write(sequence, frame)

    async def keep_alive_until(self, done: asyncio.Event) -> None:
        """Hold the stream open until ``done`` or the peer goes, with a comment now and then so that
        idle proxies keep it; a vanished peer is noticed within a second, not at the next write."""
        quiet_since = time.monotonic()
        while self.alive and not done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PEER_CHECK_SECONDS):
                    await done.wait()
            if not self.check_alive():
                break
            if not done.is_set() and time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                await self._comment()
                quiet_since = time.monotonic()

    async def still_there(self) -> bool:
        """Whether the peer is still there; a stream quiet for a while gets a comment, as
        ``keep_alive_until`` does, so that idle proxies keep it."""
        if self.check_alive() and time.monotonic() - self._last_write >= KEEPALIVE_SECONDS:
            await self._comment()
        return self.alive

    async def _comment(self) -> None:
        async with self._lock:
            self._last_write = time.monotonic()
            try:
                await self.response.write(b": keep-alive\n\n")
            except (ConnectionError, RuntimeError):
                self.alive = False

"""The pieces both eras of Streamable HTTP share: a POSTed request's exchange, and a session's channel."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from proxy.errors import ErrorCode
from proxy.jsonrpc import RequestId
from proxy.transports.sse import STANDALONE_STREAM, EventLog, SseSink

NextFrame = Callable[[], Awaitable[tuple[bytes, bool] | None]]


class Frames:
    """What is queued for one exchange: (frame, is the reply) pairs, taken by one reader at a time.

    An ``asyncio.Queue`` per POST cost more than the rest of the exchange's bookkeeping (it makes an Event
    and three deques, and asks for the running loop, a system call on Python 3.11, on every wait).
    """

    __slots__ = ("_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: tuple[bytes, bool]) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> tuple[bytes, bool]:
        # A reader cancelled while waiting takes nothing: the item stays for the next get().
        while not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Exchange:
    """One POSTed request waiting for its reply, and what the gateway sends the client before it."""

    def __init__(self, request_id: RequestId, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        # (frame, is the reply); an empty frame marked as the reply ends the exchange without one.
        self.queue = Frames(loop)
        self.answered = False
        # Set once the reply needs a stream; the sink can change when the client resumes elsewhere.
        self.stream = 0
        self.sink: SseSink | None = None
        self.done = asyncio.Event()


class HttpChannel:
    """The ``Channel`` of one HTTP session: replies go to their exchange, the rest to the GET stream."""

    def __init__(self, store: EventLog) -> None:
        self.store = store
        self.standalone_stream = STANDALONE_STREAM
        self.standalone: SseSink | None = None
        self._standalone_order = asyncio.Lock()
        # Whether messages unrelated to a request are sent (and kept) here. A session several gateway
        # instances serve sends them from one instance only: the one that holds its GET stream; the
        # others hand theirs to ``hand_over`` (set by the shared sessions), which carries them there.
        self.keeps_unrelated = True
        self.hand_over: Callable[[bytes], Awaitable[None]] | None = None
        self.exchanges: dict[RequestId, Exchange] = {}
        self.ended = asyncio.Event()
        self.last_active = time.monotonic()
        # Channels are made by request handlers, on the loop that serves them.
        self.loop = asyncio.get_running_loop()

    def open_exchange(self, request_id: RequestId) -> Exchange:
        """A POSTed request's exchange: from now on its reply, and what precedes it, go there."""
        exchange = self.exchanges[request_id] = Exchange(request_id, self.loop)
        return exchange

    async def respond(self, frame: bytes, request_id: RequestId | None) -> None:
        exchange = self.exchanges.get(request_id) if request_id is not None else None
        if exchange is not None:
            exchange.answered = True
            exchange.queue.put_nowait((frame, True))
        else:
            await self._to_standalone(frame)

    async def send(self, frame: bytes, related: RequestId | None) -> None:
        exchange = self.exchanges.get(related) if related is not None else None
        if exchange is not None:
            exchange.queue.put_nowait((frame, False))
        else:
            await self._to_standalone(frame)

    def finished(self, request_id: RequestId) -> None:
        # A request cancelled by the client or by the session's end gets no reply; its POST must end too.
        exchange = self.exchanges.get(request_id)
        if exchange is not None and not exchange.answered:
            exchange.answered = True
            exchange.queue.put_nowait((b"", True))

    async def close(self, reason: str) -> None:
        # Ends the GET stream; the session's next request finds it gone (404) and must start afresh.
        self.ended.set()

    async def _to_standalone(self, frame: bytes) -> None:
        # Kept for a client that reconnects with Last-Event-ID even when no GET stream is open now. One
        # at a time: a sink never writes an event numbered below one it wrote, so the numbers must reach
        # it in order (a store in Redis may answer two recordings in either order).
        if not self.keeps_unrelated:
            if self.hand_over is not None:
                await self.hand_over(frame)
            return
        async with self._standalone_order:
            sequence = await self.store.record(self.standalone_stream, frame)
            if self.standalone is not None and self.standalone.alive:
                await self.standalone.write(sequence, frame)

    def exchange_on(self, stream: int) -> Exchange | None:
        return next((e for e in self.exchanges.values() if e.stream == stream), None)

    def idle(self) -> bool:
        streaming = self.standalone is not None and self.standalone.check_alive()
        return not self.exchanges and not streaming


async def answer(
    request: web.Request,
    channel: HttpChannel,
    exchange: Exchange,
    headers_for: Callable[[], dict[str, str]],
    *,
    next_frame: NextFrame | None = None,
    status_of: Callable[[bytes], int] | None = None,
) -> web.StreamResponse:
    """Answer a POSTed request: JSON if the reply comes first, else an SSE stream that ends with it.

    ``next_frame`` may end the wait early (returning None), as the modern era does when the client goes;
    ``status_of`` picks the HTTP status of a JSON reply; ``headers_for`` is asked once the first frame
    is there (an ``initialize`` names its session only if it succeeded). In both eras a rate-limited
    reply sent as JSON is a 429 with ``Retry-After``; one that ends an SSE stream keeps the stream's 200.
    """
    take = next_frame or _queue_reader(exchange)
    item = await take()
    if item is None:
        return web.Response(status=499)
    headers = headers_for()
    frame, final = item
    if final and not frame:
        return web.Response(status=204, headers=headers)  # cancelled: no reply, as the specification says
    if final:
        status = status_of(frame) if status_of else 200
        retry_after = _retry_after(frame)
        if retry_after is not None:
            status, headers = 429, {**headers, "Retry-After": retry_after}
        return web.Response(status=status, body=frame, content_type="application/json", headers=headers)
    # Something comes before the reply: from here on this response is an SSE stream.
    exchange.stream = channel.store.new_stream()
    exchange.sink = await SseSink.open(request, exchange.stream, headers)
    response = exchange.sink.response
    while item is not None:
        frame, final = item
        if frame:
            sequence = await channel.store.record(exchange.stream, frame, final=final)
            if exchange.sink is not None:
                await exchange.sink.write(sequence, frame)
        elif final:
            # Ended without a reply (cancelled): an instance following this stream must learn it too.
            await channel.store.end_stream(exchange.stream)
        if final:
            break
        item = await take()
    exchange.done.set()
    return response


def _retry_after(frame: bytes) -> str | None:
    """The ``Retry-After`` (whole seconds, rounded up) of a rate-limited error reply, else None."""
    # Cheap test first: most replies are not rate-limit errors and need no second parse.
    if str(ErrorCode.RATE_LIMITED).encode() not in frame:
        return None
    reply = orjson.loads(frame)
    error = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(error, dict) or error.get("code") != ErrorCode.RATE_LIMITED:
        return None
    data = error.get("data")
    seconds = data.get("retryAfterSeconds") if isinstance(data, dict) else None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        seconds = 1
    return str(max(1, math.ceil(seconds)))


def _queue_reader(exchange: Exchange) -> NextFrame:
    async def take() -> tuple[bytes, bool] | None:
        return await exchange.queue.get()

    return take

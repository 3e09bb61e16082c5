"""An open-loop MCP load generator: tools/call at a constant arrival rate, timed from each call's schedule.

A closed-loop client (``bench.core_ws``) sends the next call only when a reply comes back, so when the
server stalls the client stalls with it and the stall shows up as one slow call instead of hundreds:
coordinated omission. Here call ``i`` is due at ``start + i / rate`` whatever happened before it, and its
latency is counted from that *intended* time, so a stall is charged to every call that should have gone
out during it. The calls are spread round-robin over ``connections`` connections:

- WebSocket (subprotocol ``mcp``): many calls in flight per connection, replies matched by id;
- Streamable HTTP (legacy session era): one POST per call; each connection is one keep-alive TCP
  connection with its own MCP session, opened once, so a call waits its turn behind the calls ahead of
  it on that connection (the wait is part of its latency, as it would be for a real HTTP/1.1 client).

The first ``warmup`` seconds of calls are sent and checked but not timed. Latencies go into an
HdrHistogram in microseconds (3 significant digits, up to 60 s). Every reply is checked (the echoed text
carries the call's id, or is ``fixed_text`` when every call sends that one text so a cache can answer it);
a call with no good reply within ``timeout`` seconds of its intended time is a timeout. ``headers`` go on
the WebSocket upgrade and on every HTTP POST (a bearer token for a gateway with ``auth``). ``send_lag``
is how late the generator itself got a call out (timer resolution, a busy loop, a full socket buffer):
when it is large, so is every latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from hdrh.histogram import HdrHistogram

from bench.core_ws import (
    CLIENT_INFO,
    PROTOCOL_VERSION,
    BenchError,
    Client,
    WebSocketChannel,
    call_message,
    check_call_reply,
)
from bench.http_link import HttpLink, Response

_HIGHEST_US = 60_000_000
_SIGNIFICANT_DIGITS = 3
# The first call goes out this long after setup, so opening the schedule does not count as lag.
_LEAD_NS = 5_000_000


@dataclass(frozen=True)
class LoadSpec:
    url: str
    transport: str  # "ws" or "http"
    tool: str
    rate: float
    seconds: float
    connections: int = 4
    warmup: float = 0.0
    timeout: float = 5.0
    # Sent on the WebSocket upgrade and on every HTTP POST (e.g. ``Authorization: Bearer ...``).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Every call sends this text (so a cache can answer it) instead of one that carries the call's id.
    fixed_text: str | None = None

    def call(self, request_id: int) -> bytes:
        if self.fixed_text is None:
            return call_message(self.tool, request_id)
        params = {"name": self.tool, "arguments": {"text": self.fixed_text}}
        return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    def check(self, reply: dict[str, Any]) -> str:
        """Why a tools/call reply is wrong, or "" if it is right."""
        if self.fixed_text is None:
            return check_call_reply(reply)
        if "error" in reply:
            return f"error reply: {reply['error']}"
        result = reply.get("result")
        content = result.get("content") if isinstance(result, dict) else None
        if not isinstance(content, list) or not content or content[0].get("text") != self.fixed_text:
            return f"wrong echo: {result!r}, expected {self.fixed_text!r}"
        return ""


@dataclass(frozen=True)
class LoadSettings:
    """How hard and how long to load a system, whatever it is (``bench.open_loop`` and ``bench.peers``)."""

    rate: float
    seconds: float
    warmup: float
    connections: int
    timeout: float

    def spec(self, url: str, transport: str, tool: str, **extra: Any) -> LoadSpec:
        """The run of these settings against ``tool`` at ``url``; ``extra`` as ``headers``, ``fixed_text``."""
        return LoadSpec(
            url,
            transport,
            tool,
            self.rate,
            self.seconds,
            self.connections,
            self.warmup,
            self.timeout,
            **extra,
        )


@dataclass(frozen=True)
class LoadResult:
    """What a run measured; latencies in ms, over the calls after the warm-up that succeeded in time."""

    transport: str
    offered_rate: float
    achieved_rate: float
    measured_calls: int
    ok: int
    errors: int
    timeouts: int
    first_error: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    send_lag_p99_ms: float
    send_lag_max_ms: float

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts


class Recorder:
    """Counts every call's fate; times the ones in the measured window."""

    def __init__(self, spec: LoadSpec) -> None:
        self.check = spec.check
        self.latency_us = HdrHistogram(1, _HIGHEST_US, _SIGNIFICANT_DIGITS)
        self.send_lag_us = HdrHistogram(1, _HIGHEST_US, _SIGNIFICANT_DIGITS)
        self.timeout_ns = int(spec.timeout * 1e9)
        self.window_start_ns = 0  # set when the first measured call is scheduled
        self.last_measured_reply_ns = 0
        self.measured_calls = 0
        self.measured_ok = 0
        self.ok = 0
        self.errors = 0
        self.timeouts = 0
        self.first_error = ""
        self.outstanding = 0
        self.sending_done = False
        self.drained = asyncio.Event()

    def scheduled(self, intended_ns: int, measured: bool) -> None:
        self.outstanding += 1
        if measured:
            self.measured_calls += 1
        self.send_lag_us.record_value(max(1, (time.perf_counter_ns() - intended_ns) // 1000))

    def replied(self, intended_ns: int, reply: dict[str, Any]) -> None:
        now = time.perf_counter_ns()
        why = self.check(reply)
        if why:
            self.fail(why)
        elif now - intended_ns > self.timeout_ns:
            self.timed_out()
        else:
            self.ok += 1
            self._settled()
            if self.window_start_ns and intended_ns >= self.window_start_ns:
                self.measured_ok += 1
                self.last_measured_reply_ns = now
                self.latency_us.record_value(max(1, min(_HIGHEST_US, (now - intended_ns) // 1000)))

    def fail(self, why: str, count: int = 1) -> None:
        self.errors += count
        if not self.first_error:
            self.first_error = why[:300]
        self._settled(count)

    def timed_out(self, count: int = 1) -> None:
        self.timeouts += count
        if not self.first_error:
            self.first_error = f"no good reply within {self.timeout_ns / 1e9:g} s of the intended send time"
        self._settled(count)

    def _settled(self, count: int = 1) -> None:
        self.outstanding -= count
        if self.sending_done and self.outstanding <= 0:
            self.drained.set()

    def result(self, spec: LoadSpec) -> LoadResult:
        elapsed = (self.last_measured_reply_ns - self.window_start_ns) / 1e9
        # A run that kept up finishes about when its window does; never credit more than the window.
        elapsed = max(elapsed, spec.seconds)
        empty = self.latency_us.get_total_count() == 0

        def ms(histogram: HdrHistogram, q: float) -> float:
            if histogram.get_total_count() == 0:
                return float("nan")
            return float(histogram.get_value_at_percentile(q)) / 1000

        return LoadResult(
            transport=spec.transport,
            offered_rate=spec.rate,
            achieved_rate=self.measured_ok / elapsed,
            measured_calls=self.measured_calls,
            ok=self.ok,
            errors=self.errors,
            timeouts=self.timeouts,
            first_error=self.first_error,
            p50_ms=ms(self.latency_us, 50),
            p90_ms=ms(self.latency_us, 90),
            p99_ms=ms(self.latency_us, 99),
            p999_ms=ms(self.latency_us, 99.9),
            max_ms=float("nan") if empty else self.latency_us.get_max_value() / 1000,
            send_lag_p99_ms=ms(self.send_lag_us, 99),
            send_lag_max_ms=self.send_lag_us.get_max_value() / 1000,
        )


# -- connections ------------------------------------------------------------------------------------------


class Connection(ABC):
    def __init__(self, spec: LoadSpec, recorder: Recorder) -> None:
        self.spec = spec
        self.recorder = recorder

    @abstractmethod
    async def open(self) -> None:
        """Connect and do the MCP handshake; raises BenchError when that fails."""

    @abstractmethod
    async def send(self, calls: Sequence[tuple[int, int]]) -> None:
        """Send these (request id, intended time in ns) calls now; their replies reach the recorder."""

    @abstractmethod
    async def expire(self) -> None:
        """The run is over: whatever is still unanswered timed out."""

    @abstractmethod
    async def close(self) -> None: ...


class WebSocketConnection(Connection):
    def __init__(self, spec: LoadSpec, recorder: Recorder) -> None:
        super().__init__(spec, recorder)
        self.channel: WebSocketChannel | None = None
        self.pending: dict[int, int] = {}
        self.reader: asyncio.Task[None] | None = None
        self.closed = False

    async def open(self) -> None:
        self.channel = await WebSocketChannel.connect(self.spec.url, self.spec.headers)
        await Client(self.channel, self.spec.tool).handshake()
        self.reader = asyncio.create_task(self._read(self.channel))

    async def _read(self, channel: WebSocketChannel) -> None:
        while True:
            batch = await channel.receive()
            if not batch:
                self.closed = True
                if self.pending:
                    self.recorder.fail("the WebSocket closed", len(self.pending))
                    self.pending.clear()
                return
            for raw in batch:
                try:
                    reply = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.recorder.fail(f"a reply that is not JSON: {raw[:200]!r}")
                    continue
                reply_id = reply.get("id") if isinstance(reply, dict) else None
                intended = self.pending.pop(reply_id, None) if isinstance(reply_id, int) else None
                if intended is not None:
                    self.recorder.replied(intended, reply)

    async def send(self, calls: Sequence[tuple[int, int]]) -> None:
        assert self.channel is not None
        if self.closed:
            self.recorder.fail("the WebSocket closed", len(calls))
            return
        for request_id, intended in calls:
            self.pending[request_id] = intended
        try:
            await self.channel.send([self.spec.call(request_id) for request_id, _ in calls])
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            unsent = [request_id for request_id, _ in calls if self.pending.pop(request_id, None) is not None]
            self.recorder.fail(f"send failed: {exc!r}", len(unsent))

    async def expire(self) -> None:
        if self.pending:
            self.recorder.timed_out(len(self.pending))
            self.pending.clear()

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        if self.channel is not None:
            await self.channel.close()


SESSION_HEADER = "Mcp-Session-Id"


class HttpConnection(Connection):
    """One keep-alive TCP connection carrying one Streamable HTTP session; its calls queue for it."""

    # Whether the server must mint an Mcp-Session-Id (Portico and the null backend do; peers may not).
    session_required = True
    # What a notification may be answered with (the specification says 202 Accepted).
    notification_statuses: tuple[int, ...] = (202,)

    def __init__(self, spec: LoadSpec, recorder: Recorder) -> None:
        super().__init__(spec, recorder)
        self.link: HttpLink | None = None
        self.waiting: deque[tuple[int, int]] = deque()
        self.current: tuple[int, int] | None = None
        self.reconnecting: asyncio.Task[None] | None = None
        self.tools: tuple[str, ...] = ()

    def handshake_id(self) -> int:
        """The id of the set-up requests (``initialize``, ``tools/list``)."""
        return 0

    async def open(self) -> None:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        link = HttpLink(self.spec.url, {**headers, **self.spec.headers})
        await link.connect()
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
        initialize = {"jsonrpc": "2.0", "id": self.handshake_id(), "method": "initialize", "params": params}
        response = await link.exchange(orjson.dumps(initialize))
        session = response.headers.get(SESSION_HEADER.lower())
        if response.status != 200 or (session is None and self.session_required):
            raise BenchError(f"initialize over HTTP failed: {response.status} {response.body[:300]!r}")
        # Every later request of this session carries its id and the negotiated version.
        if session is not None:
            link.set_header(SESSION_HEADER, session)
        link.set_header("MCP-Protocol-Version", PROTOCOL_VERSION)
        initialized = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        response = await link.exchange(initialized)
        if response.status not in self.notification_statuses:
            raise BenchError(f"notifications/initialized got {response.status}")
        tools_list = orjson.dumps({"jsonrpc": "2.0", "id": self.handshake_id(), "method": "tools/list"})
        listing = _reply_of(await link.exchange(tools_list))
        self.tools = tuple(str(tool.get("name")) for tool in listing.get("result", {}).get("tools", []))
        if self.spec.tool and self.spec.tool not in self.tools:
            raise BenchError(f"tool {self.spec.tool!r} is not listed (tools: {list(self.tools)})")
        self._attach(link)

    def _attach(self, link: HttpLink) -> None:
        link.on_response = self._replied
        link.on_closed = self._closed
        self.link = link

    async def send(self, calls: Sequence[tuple[int, int]]) -> None:
        self.waiting.extend(calls)
        if self.current is None:
            self._send_next()

    def _send_next(self) -> None:
        """Send the first waiting call that can still be answered in time; later ones wait their turn."""
        assert self.link is not None
        now = time.perf_counter_ns()
        while self.waiting:
            if self.link.closed:
                self._reconnect()
                return
            request_id, intended = self.waiting.popleft()
            if now - intended > self.recorder.timeout_ns:
                self.recorder.timed_out()  # a real client would have given up on it by now
                continue
            self.current = (request_id, intended)
            self.link.post(self.spec.call(request_id))
            return

    def _replied(self, response: Response) -> None:
        if self.current is None:
            return  # the run expired this call already
        request_id, intended = self.current
        self.current = None
        try:
            reply = _reply_of(response)
        except (BenchError, orjson.JSONDecodeError) as exc:
            self.recorder.fail(f"call {request_id}: {exc!r}")
        else:
            self.recorder.replied(intended, reply)
        self._send_next()

    def _closed(self, why: str) -> None:
        if self.current is not None:
            self.recorder.fail(f"call {self.current[0]}: {why}")
            self.current = None
        if self.waiting:
            self._reconnect()

    def _reconnect(self) -> None:
        """A server may close a keep-alive connection; the session goes on over a new one."""
        if self.reconnecting is None or self.reconnecting.done():
            self.reconnecting = asyncio.create_task(self._connect_again())

    async def _connect_again(self) -> None:
        assert self.link is not None
        link = HttpLink(self.spec.url, self.link.headers)
        try:
            await link.connect()
        except OSError as exc:
            self.recorder.fail(f"reconnecting failed: {exc!r}", len(self.waiting))
            self.waiting.clear()
            return
        self._attach(link)
        self._send_next()

    async def expire(self) -> None:
        unanswered = len(self.waiting) + (self.current is not None)
        self.waiting.clear()
        self.current = None
        if unanswered:
            self.recorder.timed_out(unanswered)

    async def close(self) -> None:
        await self.expire()
        if self.reconnecting is not None:
            self.reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reconnecting
        if self.link is not None:
            self.link.close()


def _reply_of(response: Response) -> dict[str, Any]:
    if response.status != 200:
        raise BenchError(f"HTTP {response.status}: {response.body[:300]!r}")
    if response.content_type == "text/event-stream":
        return _last_sse_message(response.body)
    reply: dict[str, Any] = orjson.loads(response.body)
    return reply


def _last_sse_message(raw: bytes) -> dict[str, Any]:
    """The last JSON-RPC message of an SSE body: a request's stream ends with its reply."""
    data = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
    if not data:
        raise BenchError(f"an SSE reply with no data: {raw[:300]!r}")
    message: dict[str, Any] = orjson.loads(data[-1])
    return message


CONNECTIONS: dict[str, Callable[[LoadSpec, Recorder], Connection]] = {
    "ws": WebSocketConnection,
    "http": HttpConnection,
}


# -- the schedule -----------------------------------------------------------------------------------------


async def run(
    spec: LoadSpec,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
) -> LoadResult:
    """Open the connections, send ``rate`` calls a second for ``warmup + seconds``, wait for the replies.

    ``on_window_start`` is called just before the first measured call goes out, ``on_window_end`` once
    the last reply is in (or timed out) and before the connections close: read CPU counters there.
    Every step is bounded: the run ends at most ``timeout`` seconds after the last call was due.
    """
    if spec.rate <= 0 or spec.seconds <= 0 or spec.connections < 1 or spec.warmup < 0:
        raise ValueError("rate and seconds must be > 0, connections >= 1, warmup >= 0")
    recorder = Recorder(spec)
    connections = [CONNECTIONS[spec.transport](spec, recorder) for _ in range(spec.connections)]
    try:
        async with asyncio.timeout(spec.timeout + 30):
            await asyncio.gather(*(connection.open() for connection in connections))
        await _send_on_schedule(spec, connections, recorder, on_window_start)
        recorder.sending_done = True
        if recorder.outstanding > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(spec.timeout + 1):
                    await recorder.drained.wait()
        for connection in connections:
            await connection.expire()
        if on_window_end is not None:
            on_window_end()
    finally:
        await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)
    return recorder.result(spec)


async def _send_on_schedule(
    spec: LoadSpec,
    connections: Sequence[Connection],
    recorder: Recorder,
    on_window_start: Callable[[], None] | None,
) -> None:
    clock = time.perf_counter_ns
    period_ns = 1e9 / spec.rate
    total = round((spec.warmup + spec.seconds) * spec.rate)
    first_measured = round(spec.warmup * spec.rate)
    start = clock() + _LEAD_NS
    sent = 0
    while sent < total:
        now = clock()
        # Every call whose time has come goes now, however late: falling behind must not thin the load.
        due = min(total, int((now - start) // period_ns) + 1) if now >= start else 0
        if due > sent:
            batches: list[list[tuple[int, int]]] = [[] for _ in connections]
            for index in range(sent, due):
                intended = start + int(index * period_ns)
                if index == first_measured:
                    recorder.window_start_ns = intended
                    if on_window_start is not None:
                        on_window_start()
                recorder.scheduled(intended, index >= first_measured)
                batches[index % len(connections)].append((index + 1, intended))
            sent = due
            for connection, batch in zip(connections, batches, strict=True):
                if batch:
                    await connection.send(batch)
        delay = start + int(sent * period_ns) - clock()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)

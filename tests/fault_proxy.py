"""A fault-injecting TCP proxy for the tests: put it between the gateway and a network backend.

Usage::

    async with FaultProxy("127.0.0.1", backend_port) as proxy:
        url = proxy.rewrite(backend_url)         # the same URL, through the proxy
        proxy.set_fault(Fault.latency(0.2))      # every connection, from the next chunk on
        proxy.connections[0].set_fault(Fault.reset())   # or one connection only
        proxy.counters.bytes_up                  # client -> target bytes forwarded

Faults (switchable at any time, globally or per connection; a connection's own fault wins):

- ``Fault.passing()``: forward everything as it comes;
- ``Fault.latency(seconds)``: hold each chunk ``seconds`` before forwarding it;
- ``Fault.blackhole()``: keep reading both sides, forward nothing, answer nothing;
- ``Fault.reset()``: abort the connection with a TCP RST (``SO_LINGER`` 0) on both sides, at once for
  connections already open and on accept for new ones;
- ``Fault.sliced(pause)``: forward one byte per write, pausing ``pause`` seconds between bytes, so the
  peer's framing is tested against the smallest possible reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

FaultKind = Literal["pass", "latency", "blackhole", "reset", "slice"]
_CHUNK = 65536
_CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class Fault:
    """What the proxy does to the bytes of a connection; build one with the class methods."""

    kind: FaultKind
    seconds: float = 0.0

    @classmethod
    def passing(cls) -> Fault:
        return cls("pass")

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        return cls("latency", seconds)

    @classmethod
    def blackhole(cls) -> Fault:
        return cls("blackhole")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def sliced(cls, pause: float = 0.001) -> Fault:
        return cls("slice", pause)


@dataclass
class Counters:
    """Totals over every connection: accepted, reset, and bytes forwarded or swallowed each way."""

    connections: int = 0
    resets: int = 0
    bytes_up: int = 0  # client -> target, forwarded
    bytes_down: int = 0  # target -> client, forwarded
    bytes_dropped: int = 0  # read but swallowed by a blackhole


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN: the peer sees
    # "connection reset by peer", not an orderly end of stream.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ProxiedConnection:
    """One client connection and its connection to the target, pumped both ways."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.fault: Fault | None = None  # None: follow the proxy's fault
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = False
        self._client, self._target = client, target
        self._pumps = [
            asyncio.create_task(self._pump(client[0], target[1], up=True)),
            asyncio.create_task(self._pump(target[0], client[1], up=False)),
        ]

    @property
    def effective_fault(self) -> Fault:
        return self.fault if self.fault is not None else self.proxy.fault

    def set_fault(self, fault: Fault | None) -> None:
        """Give this connection a fault of its own (None: follow the proxy's again)."""
        self.fault = fault
        if self.effective_fault.kind == "reset":
            self.reset()

    def reset(self) -> None:
        """Abort both sides with RST."""
        if self.closed:
            return
        self.closed = True
        self.proxy.counters.resets += 1
        _abort_with_rst(self._client[1])
        _abort_with_rst(self._target[1])
        for pump in self._pumps:
            pump.cancel()

    async def close(self) -> None:
        """Close both sides in an orderly way and wait for the pumps to end."""
        self.closed = True
        for pump in self._pumps:
            pump.cancel()
        for _, writer in (self._client, self._target):
            writer.close()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for _, writer in (self._client, self._target):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def wait(self) -> None:
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                await self._forward(chunk, writer, up=up)
            # Half-close: pass the end of stream on, unless a blackhole swallows that too.
            if self.effective_fault.kind != "blackhole" and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            self.reset()

    async def _forward(self, chunk: bytes, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Send ``chunk`` on as the current fault says."""
        fault = self.effective_fault
        if fault.kind in ("reset", "blackhole"):
            self.proxy.counters.bytes_dropped += len(chunk)
            if fault.kind == "reset":
                self.reset()
            return
        if fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
        pieces = [chunk[i : i + 1] for i in range(len(chunk))] if fault.kind == "slice" else [chunk]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            self._count(len(piece), up=up)
            if fault.kind == "slice":
                await asyncio.sleep(fault.seconds)

    def _count(self, forwarded: int, *, up: bool) -> None:
        counters = self.proxy.counters
        if up:
            self.bytes_up += forwarded
            counters.bytes_up += forwarded
        else:
            self.bytes_down += forwarded
            counters.bytes_down += forwarded


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (a free port) to ``target_host:target_port`` with switchable faults.

    An async context manager: entering starts listening, leaving closes the listener and every
    connection. See the module docstring for the faults.
    """

    def __init__(self, target_host: str, target_port: int, fault: Fault | None = None) -> None:
        self.target = (target_host, target_port)
        self.fault = fault or Fault.passing()
        self.counters = Counters()
        self.connections: list[ProxiedConnection] = []
        self._server: asyncio.Server | None = None
        self._accepting: set[asyncio.Task[None]] = set()

    @classmethod
    def for_url(cls, url: str, fault: Fault | None = None) -> FaultProxy:
        """A proxy in front of the host and port of ``url``."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        return cls(parts.hostname, parts.port, fault)

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    def rewrite(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    def set_fault(self, fault: Fault) -> None:
        """Switch every connection (but those with a fault of their own) and every new one to ``fault``."""
        self.fault = fault
        if fault.kind == "reset":
            for connection in self.open_connections():
                if connection.fault is None:
                    connection.reset()

    def open_connections(self) -> list[ProxiedConnection]:
        return [c for c in self.connections if not c.closed]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        """Stop listening, then close every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._accepting):
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.connections += 1
        if self.fault.kind == "reset":
            self.counters.resets += 1
            _abort_with_rst(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._accepting.add(task)
        try:
            target = await asyncio.wait_for(asyncio.open_connection(*self.target), _CONNECT_SECONDS)
        except (OSError, TimeoutError):
            _abort_with_rst(writer)
            return
        finally:
            self._accepting.discard(task)
        connection = ProxiedConnection(self, (reader, writer), target)
        self.connections.append(connection)
        await connection.wait()
        await connection.close()

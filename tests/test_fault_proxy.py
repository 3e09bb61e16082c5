"""The fault proxy (tests/fault_proxy.py) against a real echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.fault_proxy import Fault, FaultProxy

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class EchoServer:
    """Echoes every chunk back and remembers the size of each read, so slicing shows."""

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.server: asyncio.Server | None = None

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.reads.append(len(data))
                writer.write(data)
                await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    server.server = await asyncio.start_server(server._echo, "127.0.0.1", 0)
    yield server
    server.server.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


async def connect(proxy: FaultProxy) -> Stream:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy.port), 5)


async def roundtrip(stream: Stream, data: bytes, timeout: float = 5) -> bytes:
    reader, writer = stream
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    assert await roundtrip(stream, b"hello") == b"hello"
    assert await roundtrip(stream, b"again") == b"again"
    assert proxy.counters.connections == 1
    assert (proxy.counters.bytes_up, proxy.counters.bytes_down) == (10, 10)
    assert (proxy.connections[0].bytes_up, proxy.connections[0].bytes_down) == (10, 10)


async def test_latency_holds_each_chunk(proxy: FaultProxy) -> None:
    proxy.set_fault(Fault.latency(0.3))
    stream = await connect(proxy)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await roundtrip(stream, b"slow") == b"slow"
    # Held once on the way there and once on the way back (a lower bound only: no upper timing bound).
    assert loop.time() - started >= 0.55


async def test_blackhole_reads_but_forwards_and_answers_nothing(proxy: FaultProxy, echo: EchoServer) -> None:
    stream = await connect(proxy)
    assert await roundtrip(stream, b"before") == b"before"
    proxy.set_fault(Fault.blackhole())
    with pytest.raises(TimeoutError):
        await roundtrip(stream, b"lost", timeout=0.5)
    assert proxy.counters.bytes_dropped == 4
    assert echo.reads == [6]
    # The connection is still open: switching back lets the next bytes through.
    proxy.set_fault(Fault.passing())
    assert await roundtrip(stream, b"after") == b"after"


async def test_reset_aborts_open_and_new_connections_with_rst(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await roundtrip((reader, writer), b"x") == b"x"
    proxy.set_fault(Fault.reset())
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(10), 5)
    fresh_reader, fresh_writer = await connect(proxy)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(fresh_reader.read(10), 5)
    assert proxy.counters.resets == 2
    fresh_writer.close()
    writer.close()


async def test_slice_forwards_one_byte_per_write(proxy: FaultProxy, echo: EchoServer) -> None:
    proxy.set_fault(Fault.sliced(0.005))
    stream = await connect(proxy)
    assert await roundtrip(stream, b"abcdef") == b"abcdef"
    assert echo.reads == [1] * 6


async def test_a_connection_fault_overrides_the_global_one(proxy: FaultProxy) -> None:
    first, second = await connect(proxy), await connect(proxy)
    assert await roundtrip(first, b"1") == b"1"
    assert await roundtrip(second, b"2") == b"2"
    proxy.connections[0].set_fault(Fault.blackhole())
    with pytest.raises(TimeoutError):
        await roundtrip(first, b"x", timeout=0.5)
    assert await roundtrip(second, b"y") == b"y"


async def test_close_ends_every_connection_and_the_listener(echo: EchoServer) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await connect(proxy)
        assert await roundtrip((reader, writer), b"x") == b"x"
        port = proxy.port
    assert await asyncio.wait_for(reader.read(10), 5) == b""
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.close()


async def test_for_url_and_rewrite(echo: EchoServer) -> None:
    async with FaultProxy.for_url(f"http://127.0.0.1:{echo.port}/mcp") as proxy:
        assert proxy.target == ("127.0.0.1", echo.port)
        assert (
            proxy.rewrite(f"http://127.0.0.1:{echo.port}/mcp?x=1") == f"http://127.0.0.1:{proxy.port}/mcp?x=1"
        )

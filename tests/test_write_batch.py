"""Writes made in one turn of the event loop leave together: the batch itself, the stdio connector's pipe
and the WebSocket endpoint's frames (one system call, and one wake-up of the reader, per burst)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from proxy.config import StdioBackendConfig
from proxy.connectors.stdio import StdioConnector
from proxy.transports import websocket
from proxy.transports.websocket import WebSocketChannel, text_frame
from proxy.write_batch import WriteBatch
from tests.conftest import StartGateway, everything
from tests.test_failures import wait_until

# -- the batch ------------------------------------------------------------------------------------------


async def test_chunks_added_in_one_turn_leave_in_one_write_in_order() -> None:
    writes: list[bytes] = []
    batch = WriteBatch(writes.append)
    for chunk in (b"a", b"bb", b"ccc"):
        batch.add(chunk)
    assert writes == []  # nothing leaves before the turn's other callbacks have run
    assert batch.pending == 6
    await asyncio.sleep(0)
    assert writes == [b"abbccc"]
    batch.add(b"d")
    await asyncio.sleep(0)
    assert writes == [b"abbccc", b"d"]  # a later turn is a write of its own


async def test_chunks_from_many_tasks_of_one_turn_share_a_write() -> None:
    writes: list[bytes] = []
    batch = WriteBatch(writes.append)

    async def sender(number: int) -> None:
        batch.add(b"%d;" % number)

    await asyncio.gather(*(sender(number) for number in range(10)))
    await asyncio.sleep(0)
    assert writes == [b"".join(b"%d;" % number for number in range(10))]


async def test_flush_sends_at_once_and_discard_drops() -> None:
    writes: list[bytes] = []
    batch = WriteBatch(writes.append)
    batch.add(b"now")
    batch.flush()
    assert writes == [b"now"]
    batch.add(b"never")
    batch.discard()
    await asyncio.sleep(0)
    assert writes == [b"now"]
    assert batch.pending == 0


# -- the stdio connector ----------------------------------------------------------------------------------


async def test_a_burst_of_requests_reaches_a_stdio_child_in_one_write_as_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "child.py"
    path.write_text(
        textwrap.dedent(
            """
            import json, sys
            for line in sys.stdin:
                message = json.loads(line)
                print(json.dumps({"jsonrpc": "2.0", "method": "got", "params": message}), flush=True)
            """
        )
    )
    connector = StdioConnector(
        "child", StdioBackendConfig(command=sys.executable, args=(str(path),)), tmp_path
    )
    received: list[dict[str, Any]] = []
    await connector.open(received.append, lambda reason: None)
    try:
        assert connector.process is not None and connector.process.stdin is not None
        stdin = connector.process.stdin
        writes: list[bytes] = []
        real_write = stdin.write

        def counting_write(data: bytes) -> None:
            writes.append(data)
            real_write(data)

        stdin.write = counting_write  # type: ignore[method-assign]
        messages = [b'{"jsonrpc":"2.0","method":"n","params":{"n":%d}}' % number for number in range(20)]
        await asyncio.gather(*(connector.send(message) for message in messages))
        assert await wait_until(lambda: len(received) == 20)
        assert [message["params"]["params"]["n"] for message in received] == list(range(20))
        assert len(writes) == 1, f"{len(writes)} writes for one burst"
        assert writes[0].count(b"\n") == 20
    finally:
        await connector.close()


# -- the WebSocket endpoint -------------------------------------------------------------------------------


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


class FakeSocket:
    def __init__(self, transport: RecordingTransport) -> None:
        self.closed = False
        self.transport = transport
        self.events: list[str] = []

    async def close(self, code: int, message: bytes) -> None:
        self.events.append(f"close {code} after {len(self.transport.writes)} writes")
        self.closed = True


def channel_on(transport: RecordingTransport) -> tuple[WebSocketChannel, FakeSocket]:
    ws = FakeSocket(transport)
    return WebSocketChannel(ws, transport), ws  # type: ignore[arg-type]


async def test_replies_ready_in_one_turn_reach_the_client_in_one_write() -> None:
    transport = RecordingTransport()
    channel, _ = channel_on(transport)
    for number in range(3):
        await channel.respond(b'{"n":%d}' % number, number)
    await asyncio.sleep(0)
    assert transport.writes == [b"".join(text_frame(b'{"n":%d}' % number) for number in range(3))]


async def test_nothing_is_written_after_the_socket_closed() -> None:
    transport = RecordingTransport()
    channel, ws = channel_on(transport)
    channel.queue(b"{}")
    ws.closed = True  # the client's close frame came in meanwhile
    await asyncio.sleep(0)
    assert transport.writes == []
    with pytest.raises(ConnectionResetError):
        channel.queue(b"{}")


async def test_shutting_down_sends_what_is_pending_before_the_close_frame() -> None:
    transport = RecordingTransport()
    channel, ws = channel_on(transport)
    channel.queue(b'{"last":true}')
    await channel.shut_down(1001, "going away")
    assert transport.writes == [text_frame(b'{"last":true}')]
    assert ws.events == ["close 1001 after 1 writes"]


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70000])
def test_text_frames_carry_their_length_as_rfc_6455_says(length: int) -> None:
    frame = text_frame(b"x" * length)
    assert frame[0] == 0x81  # FIN, text
    if length < 126:
        assert frame[1] == length and len(frame) == 2 + length
    elif length < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == length and len(frame) == 4 + length
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == length and len(frame) == 10 + length


async def test_a_client_that_leaves_replies_unread_is_not_read_until_it_catches_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket, "_UNREAD_POLL_SECONDS", 0.001)
    transport = RecordingTransport()
    transport.buffered = websocket._UNREAD_LIMIT_BYTES + 1
    ws = FakeSocket(transport)
    waiting = asyncio.create_task(websocket._until_read(ws, transport))  # type: ignore[arg-type]
    await asyncio.sleep(0.02)
    assert not waiting.done()
    transport.buffered = 0
    await asyncio.wait_for(waiting, 1)
    # A socket that closes while waiting ends the wait too.
    transport.buffered = websocket._UNREAD_LIMIT_BYTES + 1
    waiting = asyncio.create_task(websocket._until_read(ws, transport))  # type: ignore[arg-type]
    ws.closed = True
    await asyncio.wait_for(waiting, 1)


async def test_replies_of_every_size_and_burst_arrive_whole_through_a_real_gateway(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway({"mcpServers": {"everything": everything("batch")}})
    client = await gateway.client()
    texts = [f"{size}:" + "y" * size for size in (0, 120, 126, 65530, 70000)] + [f"t{n}" for n in range(30)]
    calls = [
        client.call("tools/call", {"name": "everything_echo", "arguments": {"text": text}}, timeout=10.0)
        for text in texts
    ]
    results = await asyncio.gather(*calls)
    assert [result["content"][0]["text"] for result in results] == texts
    # Nothing came that a stock client could not read as a frame, and the session goes on.
    assert client.unmatched == [] and not client.ws.closed
    assert (await client.call("ping")) == {}

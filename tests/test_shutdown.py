"""Graceful shutdown of a real ``python -m proxy serve`` process on SIGTERM.

The listener closes first (new connections are refused), the calls in flight get up to
``listen.drain_seconds`` to finish and their replies reach the client, then every WebSocket closes with
1001, the stdio backends stop, and the process exits 0 leaving no child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import fixture_server
from tests.gateway_process import GatewayProcess, serve_gateway
from tests.rawclient import CLIENT_INFO

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the backend's pid in /proc")

GOING_AWAY = 1001
EXIT_MARGIN = 5.0  # seconds beyond the drain for the backends to stop and the process to exit


def settings(drain_seconds: float) -> dict[str, Any]:
    return {
        "listen": {"drain_seconds": drain_seconds},
        "mcpServers": {"c": fixture_server("counting_server.py")},
    }


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


async def exit_status(process: subprocess.Popen[bytes], within: float) -> int | None:
    async with asyncio.timeout(within):
        while (status := process.poll()) is None:
            await asyncio.sleep(0.05)
    return status


async def open_session(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(url, protocols=("mcp",), timeout=aiohttp.ClientWSTimeout(ws_close=5))
    initialize = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT_INFO}
    await ws.send_str(
        orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize}).decode()
    )
    assert "result" in orjson.loads((await ws.receive(timeout=10)).data)
    await ws.send_str(orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).decode())
    return ws


async def start_slow_call(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    params = {"name": "c_slow_lookup", "arguments": {"key": "k", "seconds": seconds}}
    await ws.send_str(
        orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).decode()
    )
    await asyncio.sleep(0.3)  # the call reaches the backend before the signal


def backend_pid(gateway: GatewayProcess) -> int:
    children = children_of(gateway.process.pid)
    assert len(children) == 1, children
    return children[0]


async def test_sigterm_lets_the_call_in_flight_finish_then_closes_with_1001(tmp_path: Path) -> None:
    drain = 5.0
    with serve_gateway(tmp_path, settings(drain)) as gateway:
        backend = backend_pid(gateway)
        async with aiohttp.ClientSession() as http:
            ws = await open_session(http, gateway.url)
            await start_slow_call(ws, seconds=1.5)
            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # The listener is closed first: while the call drains, nobody new gets in.
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(gateway.base + "/healthz", timeout=aiohttp.ClientTimeout(total=5))
            reply = await ws.receive(timeout=drain + EXIT_MARGIN)
            assert reply.type is aiohttp.WSMsgType.TEXT, reply
            assert orjson.loads(reply.data)["result"]["content"][0]["text"] == "k #1"
            closing = await ws.receive(timeout=drain + EXIT_MARGIN)
            assert closing.type is aiohttp.WSMsgType.CLOSE, closing
            assert closing.data == GOING_AWAY
        assert await exit_status(gateway.process, drain + EXIT_MARGIN) == 0
        assert not is_running(backend)


async def test_a_call_longer_than_the_drain_is_cut_off_not_left_hanging(tmp_path: Path) -> None:
    drain = 1.0
    with serve_gateway(tmp_path, settings(drain)) as gateway:
        backend = backend_pid(gateway)
        async with aiohttp.ClientSession() as http:
            ws = await open_session(http, gateway.url)
            await start_slow_call(ws, seconds=60)
            gateway.process.send_signal(signal.SIGTERM)
            ending = await ws.receive(timeout=drain + EXIT_MARGIN)
            if ending.type is aiohttp.WSMsgType.TEXT:  # an error reply is as good as the close
                assert "error" in orjson.loads(ending.data), ending.data
                ending = await ws.receive(timeout=EXIT_MARGIN)
            assert ending.type is aiohttp.WSMsgType.CLOSE, ending
            assert ending.data == GOING_AWAY
        assert await exit_status(gateway.process, drain + EXIT_MARGIN) == 0
        assert not is_running(backend)


async def test_an_idle_gateway_stops_at_once_and_leaves_no_child(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, settings(30.0)) as gateway:
        backend = backend_pid(gateway)
        gateway.process.send_signal(signal.SIGTERM)
        # Nothing in flight: the 30 s drain is not waited for.
        assert await exit_status(gateway.process, EXIT_MARGIN) == 0
        assert not is_running(backend)
        assert os.getpid() != backend

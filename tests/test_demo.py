"""The README's promise: `make run` (portico serve with the bundled demo) shows two namespaced backends."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import mcp_types as types
from mcp import ClientSession

from tests.mcp_ws_client import ws_transport


async def test_the_bundled_demo_serves_two_backends_to_an_mcp_client() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = banner.split(" listening on ")[1].split()[0]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/mcp")
        async with ws_transport(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert {"weather_get_weather", "notes_add_note"} <= names
            weather = await session.call_tool("weather_get_weather", {"city": "Lisbon"})
            assert weather.structured_content is not None
            assert weather.structured_content["city"] == "Lisbon"
            await session.call_tool("notes_add_note", {"title": "t", "text": "remember"})
            note = await session.call_tool("notes_read_note", {"title": "t"})
            assert isinstance(note.content[0], types.TextContent)
            assert "remember" in note.content[0].text
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0
    assert process.stderr is not None
    assert b"Traceback" not in await process.stderr.read()


async def test_sigterm_closes_client_sockets_with_1001_and_exits_promptly() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = banner.split(" listening on ")[1].split()[0]
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=("mcp",)) as ws:
            process.send_signal(signal.SIGTERM)
            frame = await asyncio.wait_for(ws.receive(), 5)
            assert frame.type is aiohttp.WSMsgType.CLOSE
            assert frame.data == 1001
        assert await asyncio.wait_for(process.wait(), 5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

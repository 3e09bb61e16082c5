"""The 2024-11-05 HTTP+SSE transport (GET /sse + POST /messages), for clients older than Streamable HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types as types
import orjson
from mcp import ClientSession
from mcp.client.sse import sse_client

from tests.conftest import StartGateway, everything


async def test_the_sdk_sse_client_calls_tools_and_answers_sampling(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="sampled over sse"), model="m"
        )

    url = str(gw.server.make_url("/sse"))
    async with sse_client(url) as (read, write), ClientSession(read, write, sampling_callback=sampling) as s:
        await s.initialize()
        assert "ev_echo" in {t.name for t in (await s.list_tools()).tools}
        echoed = await s.call_tool("ev_echo", {"text": "hi"})
        assert isinstance(echoed.content[0], types.TextContent) and echoed.content[0].text == "hi"
        sampled = await s.call_tool("ev_sample", {"prompt": "p"})
        assert isinstance(sampled.content[0], types.TextContent)
        assert sampled.content[0].text == "sampled over sse"
        assert len(gw.gateway.sessions) == 1
    async with asyncio.timeout(5):
        while gw.gateway.sessions:
            await asyncio.sleep(0.05)


async def read_event(content: Any) -> tuple[str, bytes]:
    event, data = "", b""
    while True:
        line = (await content.readline()).rstrip(b"\r\n")
        if line.startswith(b"event: "):
            event = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:]
        elif not line and (event or data):
            return event, data


async def test_raw_stream_announces_the_endpoint_and_carries_replies(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    async with gw.http.get(gw.server.make_url("/sse"), headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        event, data = await read_event(stream.content)
        assert event == "endpoint" and data.startswith(b"/messages?session_id=")
        post_url = gw.server.make_url(data.decode())
        ping = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
        async with gw.http.post(post_url, json=ping) as accepted:
            assert accepted.status == 202
        event, data = await read_event(stream.content)
        assert event == "message" and orjson.loads(data) == {"jsonrpc": "2.0", "id": 7, "result": {}}
        async with gw.http.post(
            post_url, data=b"{not json", headers={"Content-Type": "application/json"}
        ) as bad:
            assert bad.status == 400
            assert (await bad.json())["error"]["code"] == -32700
        async with gw.http.post(post_url, data=b"{}", headers={"Content-Type": "text/plain"}) as wrong:
            assert wrong.status == 415


async def test_unknown_sessions_and_foreign_origins_are_refused(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    async with gw.http.post(gw.server.make_url("/messages?session_id=nope"), json={}) as unknown:
        assert unknown.status == 404
    async with gw.http.get(gw.server.make_url("/sse"), headers={"Origin": "http://evil.example"}) as foreign:
        assert foreign.status == 403
    assert gw.gateway.sessions == {}

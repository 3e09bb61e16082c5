"""Backends over WebSocket, and a real MCP SDK client talking to the gateway over WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
import pytest
from mcp import ClientSession

from tests.conftest import StartGateway, everything, listening_fixture
from tests.mcp_ws_client import ws_transport
from tests.rawclient import Message
from tests.test_aggregation import text_of
from tests.test_bidirectional import call


@pytest.fixture
async def ws_backend_url() -> AsyncIterator[str]:
    """tests/fixtures/ws_backend.py as a real subprocess: the everything server over WebSocket."""
    async with listening_fixture("ws_backend.py") as (url, _):
        yield url


async def test_websocket_backend_is_aggregated_and_called(
    start_gateway: StartGateway, ws_backend_url: str
) -> None:
    gw = await start_gateway(
        {
            "mcpServers": {
                "remote": {"url": ws_backend_url, "transport": "websocket", "era": "legacy"},
                "local": everything(),
            }
        }
    )
    client = await gw.client(capabilities={"sampling": {}})
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert {"remote_echo", "local_echo"} <= names
    assert text_of(await client.call("tools/call", call("remote_echo", text="over ws"))) == "over ws"

    async def answer(request: Message) -> dict[str, Any]:
        return {"role": "assistant", "content": {"type": "text", "text": "from the client"}, "model": "m"}

    client.handlers["sampling/createMessage"] = answer
    assert text_of(await client.call("tools/call", call("remote_sample", prompt="p"))) == "from the client"


async def test_websocket_backend_that_goes_away_fails_fast(
    start_gateway: StartGateway, ws_backend_url: str
) -> None:
    gw = await start_gateway({"mcpServers": {"remote": {"url": ws_backend_url}}})
    client = await gw.client()
    reply = await client.request("tools/call", call("remote_crash"))
    assert reply["error"]["code"] == -32050
    await client.wait_notification("notifications/tools/list_changed")
    assert (await client.call("tools/list"))["tools"] == []


async def test_unreachable_websocket_backend_does_not_stop_the_gateway(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"gone": {"url": "ws://127.0.0.1:9/mcp"}, "local": everything()}})
    client = await gw.client()
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "local_echo" in names and not any(n.startswith("gone_") for n in names)


async def test_gateways_chain_over_websocket(start_gateway: StartGateway) -> None:
    inner = await start_gateway({"mcpServers": {"ev": everything()}})
    outer = await start_gateway({"mcpServers": {"inner": {"url": inner.url}}})
    client = await outer.client()
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "inner_ev_echo" in names
    assert text_of(await client.call("tools/call", call("inner_ev_echo", text="twice"))) == "twice"


async def test_the_mcp_sdk_client_uses_the_gateway_over_websocket(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with ws_transport(gw.url) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.protocol_version == "2025-11-25"
        tools = (await session.list_tools()).tools
        assert "ev_add" in {t.name for t in tools}
        result = await session.call_tool("ev_add", {"a": 2, "b": 40})
        assert isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == "42"
        await session.call_tool("ev_slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
        assert progress == [1, 2, 3]
        read_result = await session.read_resource("portico://ev/memo://one")
        assert isinstance(read_result.contents[0], types.TextResourceContents)
        assert read_result.contents[0].text == "first memo"

"""``subscriptions/listen`` from modern clients: acknowledged first, tagged notifications, clean ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tests.conftest import StartGateway, everything
from tests.test_backend_eras import modern_fixture

MODERN = "2026-07-28"
SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"


def meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }


def listen(request_id: Any, **notifications: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": meta()},
    }


async def sse_messages(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data:") and line[5:].strip():
            yield orjson.loads(line[5:].strip())


async def test_a_listen_stream_over_http_carries_tagged_list_changes_and_updates(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    watcher = await gw.client()
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
    }
    body = listen("L1", toolsListChanged=True, resourceSubscriptions=["portico://ev/memo://one", "nope://x"])
    async with gw.http.post(gw.server.make_url("/mcp"), json=body, headers=headers) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        messages = sse_messages(response)
        ack = await anext(messages)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"][SUBSCRIPTION] == "L1"
        # Honoured: the tool list, and the one URI some backend owns.
        assert ack["params"]["notifications"] == {
            "toolsListChanged": True,
            "resourceSubscriptions": ["portico://ev/memo://one"],
        }
        await watcher.call("tools/call", {"name": "ev_add_tool", "arguments": {"name": "fresh"}})
        changed = await asyncio.wait_for(anext(messages), 10)
        assert changed["method"] == "notifications/tools/list_changed"
        assert changed["params"]["_meta"][SUBSCRIPTION] == "L1"
        await watcher.call("tools/call", {"name": "ev_touch", "arguments": {"uri": "memo://one"}})
        updated = await asyncio.wait_for(anext(messages), 10)
        assert updated["method"] == "notifications/resources/updated"
        assert updated["params"]["uri"] == "portico://ev/memo://one"
        assert updated["params"]["_meta"][SUBSCRIPTION] == "L1"
    # Closing the stream ends the subscription: the backend is unsubscribed and the session gone.
    for _ in range(50):
        if not gw.gateway.backends["ev"]._subscribers and len(gw.gateway.sessions) == 1:
            break
        await asyncio.sleep(0.1)
    assert gw.gateway.backends["ev"]._subscribers == {}
    assert len(gw.gateway.sessions) == 1  # only the watcher's


async def test_listen_streams_over_websocket_are_told_apart_by_their_ids(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"new": modern_fixture()}})
    client = await gw.client(initialize=False)
    tools = asyncio.create_task(
        client.request("subscriptions/listen", listen(1, toolsListChanged=True)["params"])
    )
    uris = ["portico://new/memo://one"]
    resources = asyncio.create_task(
        client.request("subscriptions/listen", listen(2, resourceSubscriptions=uris)["params"])
    )
    for _ in range(50):
        acks = client.notifications_of("notifications/subscriptions/acknowledged")
        if len(acks) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(a["params"]["_meta"][SUBSCRIPTION] for a in acks) == [1, 2]
    # The modern backend's own listen stream feeds the gateway, which tags for each client stream.
    await client.call(
        "tools/call", {"name": "new_touch", "arguments": {"uri": "memo://one"}, "_meta": meta()}
    )
    updated = await client.wait_notification("notifications/resources/updated", timeout=10)
    assert updated["params"]["_meta"][SUBSCRIPTION] == 2
    await client.call("tools/call", {"name": "new_add_tool", "arguments": {"name": "x"}, "_meta": meta()})
    changed = await client.wait_notification("notifications/tools/list_changed", timeout=10)
    assert changed["params"]["_meta"][SUBSCRIPTION] == 1
    # A stream the client cancels ends without a reply; the other goes on.
    await client.notify("notifications/cancelled", {"requestId": 1})
    await asyncio.sleep(0.3)
    assert not tools.done()
    tools.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tools
    # At shutdown the remaining stream is closed gracefully, with a result carrying its id.
    await gw.gateway.listens.shut_down()
    final = await asyncio.wait_for(resources, 5)
    assert final["result"]["resultType"] == "complete"
    assert final["result"]["_meta"][SUBSCRIPTION] == 2


async def test_a_bad_filter_is_refused(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    for notifications in ({"toolsListChanged": "yes"}, {"resourceSubscriptions": "portico://ev/memo://one"}):
        params = {"notifications": notifications, "_meta": meta()}
        reply = await client.request("subscriptions/listen", params)
        assert reply["error"]["code"] == -32602

"""JSON-RPC batches: part of protocol version 2025-03-26 only."""

from __future__ import annotations

import orjson

from tests.conftest import StartGateway, everything


async def test_a_2025_03_26_client_gets_one_array_of_replies(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    await client.initialize(version="2025-03-26")
    batch = [
        {
            "jsonrpc": "2.0",
            "id": "a",
            "method": "tools/call",
            "params": {"name": "ev_echo", "arguments": {"text": "1"}},
        },
        {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": "x", "progress": 1},
        },
        {"jsonrpc": "2.0", "id": "b", "method": "ping"},
        {"jsonrpc": "2.0", "id": "c", "method": "no/such/method"},
        {"jsonrpc": "1.0", "id": "d", "method": "ping"},
    ]
    await client.send_raw(orjson.dumps(batch).decode())
    replies = await client.next_frame()
    assert isinstance(replies, list)
    by_id = {r["id"]: r for r in replies}
    assert set(by_id) == {"a", "b", "c", "d"}
    assert by_id["a"]["result"]["content"][0]["text"] == "1"
    assert by_id["b"]["result"] == {}
    assert by_id["c"]["error"]["code"] == -32601
    assert by_id["d"]["error"]["code"] == -32600


async def test_batches_are_refused_in_other_versions_and_when_empty(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    await client.send_raw(orjson.dumps([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).decode())
    reply = await client.next_frame()
    assert reply["id"] is None and reply["error"]["code"] == -32600
    await client.send_raw("[]")
    reply = await client.next_frame()
    assert reply["error"]["code"] == -32600
    assert await client.call("ping") == {}


async def test_a_2025_03_26_http_session_takes_a_batch_in_one_post(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = gw.server.make_url("/mcp")
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with gw.http.post(url, json=init, headers=headers) as response:
        session = response.headers["Mcp-Session-Id"]
    headers |= {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-03-26"}
    batch = [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "ev_echo", "arguments": {"text": "a"}},
        },
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        {"jsonrpc": "2.0", "id": 3, "method": "no/such"},
        {"jsonrpc": "2.0", "id": 4},
    ]
    async with gw.http.post(url, json=batch, headers=headers) as response:
        assert response.status == 200
        replies = {r["id"]: r for r in await response.json()}
    assert set(replies) == {1, 2, 3, 4}
    assert replies[1]["result"]["content"][0]["text"] == "a"
    assert replies[2]["result"] == {}
    assert replies[3]["error"]["code"] == -32601
    assert replies[4]["error"]["code"] == -32600
    only_notes = [{"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}]
    async with gw.http.post(url, json=only_notes, headers=headers) as response:
        assert response.status == 202

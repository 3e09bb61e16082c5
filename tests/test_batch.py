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

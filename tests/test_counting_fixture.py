"""The counting fixture backend works through the gateway: annotations, counts, notifications."""

from __future__ import annotations

import asyncio
import json

from tests.conftest import StartGateway, fixture_server


async def test_the_counting_fixture_counts_and_overlaps(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": fixture_server("counting_server.py")}})
    client = await gw.client()
    tools = {t["name"]: t for t in await client.list_all("tools/list", "tools")}
    assert tools["c_lookup"]["annotations"] == {"readOnlyHint": True}
    first = await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "k"}})
    second = await client.call("tools/call", {"name": "c_lookup", "arguments": {"key": "k"}})
    assert [first["content"][0]["text"], second["content"][0]["text"]] == ["k #1", "k #2"]
    slow = {"name": "c_slow_lookup", "arguments": {"key": "s", "seconds": 0.5}}
    await asyncio.gather(*(client.call("tools/call", slow) for _ in range(4)))
    stats = await client.call("tools/call", {"name": "c_stats", "arguments": {}})
    counted = json.loads(stats["content"][0]["text"])
    assert counted["tool:lookup"] == 2 and counted["tool:slow_lookup"] == 4
    assert counted["peak:slow_lookup"] == 4  # they ran side by side, not one by one
    read = await client.call("resources/read", {"uri": "portico://c/data://item/7"})
    assert read["contents"][0]["text"] == "data://item/7 read #1"
    await client.call("tools/call", {"name": "c_add_tool", "arguments": {"name": "extra"}})
    await client.wait_notification("notifications/tools/list_changed")

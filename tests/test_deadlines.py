"""A client may shorten a request's deadline (``_meta["dev.portico/timeoutSeconds"]``), never lengthen it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.gateway import TIMEOUT_META_KEY
from tests.conftest import StartGateway, fixture_server
from tests.rawclient import RpcError


def slow(seconds: float, asked: float) -> dict[str, Any]:
    return {
        "name": "c_slow_lookup",
        "arguments": {"key": "k", "seconds": seconds},
        "_meta": {TIMEOUT_META_KEY: asked},
    }


async def test_a_client_may_shorten_the_deadline_but_never_lengthen_it(start_gateway: StartGateway) -> None:
    entry = fixture_server("counting_server.py", timeout_seconds=2, retry={"attempts": 1})
    gw = await start_gateway({"mcpServers": {"c": entry}})
    client = await gw.client()
    # Shorter than the backend's 2 s: the call gives up long before the backend's 30 s answer, and also
    # before the backend's own deadline would have.
    with pytest.raises(RpcError) as shortened:
        async with asyncio.timeout(1.9):
            await client.call("tools/call", slow(30, 0.3))
    assert shortened.value.code == -32001
    # Longer than the backend's 2 s: the backend's deadline still applies (the client's 100 s does not).
    with pytest.raises(RpcError) as capped:
        async with asyncio.timeout(10):
            await client.call("tools/call", slow(30, 100))
    assert capped.value.code == -32001
    # Nonsense is ignored rather than refused.
    reply = await client.call("tools/call", slow(0.05, -1))
    assert reply["content"][0]["text"].startswith("k #")


DEAF_BACKEND = """
import json, sys, time
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method = message.get("method")
    if method == "tools/call":
        time.sleep(3600)  # from here on it reads nothing: its stdin pipe fills up
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "deaf", "version": "1"}}
        reply = {"result": result}
    elif method == "tools/list":
        reply = {"result": {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}}
    else:
        reply = {"error": {"code": -32601, "message": "Method not found"}}
    print(json.dumps({"jsonrpc": "2.0", "id": message["id"], **reply}), flush=True)
"""


async def test_a_backend_that_stops_reading_still_times_out(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # Calls to a backend that no longer reads its input: the first fills the pipe, and the next one's
    # write has to wait for room that never comes. Both must still end at the backend's deadline.
    script = tmp_path / "deaf.py"
    script.write_text(DEAF_BACKEND)
    entry = {"command": sys.executable, "args": [str(script)], "era": "legacy", "timeout_seconds": 1}
    gw = await start_gateway({"mcpServers": {"deaf": {**entry, "retry": {"attempts": 1}}}})
    client = await gw.client()
    big = {"name": "deaf_echo", "arguments": {"text": "x" * 300_000}}
    async with asyncio.timeout(8):
        outcomes = await asyncio.gather(
            *(client.call("tools/call", big) for _ in range(3)), return_exceptions=True
        )
    assert [type(outcome) for outcome in outcomes] == [RpcError] * 3, outcomes
    assert {outcome.code for outcome in outcomes if isinstance(outcome, RpcError)} == {-32001}

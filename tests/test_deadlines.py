"""A client may shorten a request's deadline (``_meta["dev.portico/timeoutSeconds"]``), never lengthen it."""

from __future__ import annotations

import asyncio
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

"""The 2026-07-28 era from clients: no handshake, per-request _meta, server/discover, modern results."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import StartGateway, everything
from tests.rawclient import RpcError

MODERN = "2026-07-28"


def meta(version: str = MODERN, **extra: Any) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
        **extra,
    }


async def test_modern_requests_need_no_handshake_over_websocket(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    discovered = await client.call("server/discover", {"_meta": meta()})
    assert MODERN in discovered["supportedVersions"] and "2025-11-25" in discovered["supportedVersions"]
    assert discovered["capabilities"]["tools"] == {"listChanged": True}
    assert discovered["resultType"] == "complete"
    assert discovered["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "portico"
    tools = await client.call("tools/list", {"_meta": meta()})
    assert "ev_echo" in {t["name"] for t in tools["tools"]}
    assert tools["resultType"] == "complete"
    assert tools["ttlMs"] == 0 and tools["cacheScope"] == "private"
    echoed = await client.call("tools/call", {"name": "ev_echo", "arguments": {"text": "m"}, "_meta": meta()})
    assert echoed["content"][0]["text"] == "m" and echoed["resultType"] == "complete"
    read = await client.call("resources/read", {"uri": "portico://ev/memo://one", "_meta": meta()})
    assert read["contents"][0]["text"] == "first memo" and "ttlMs" in read


async def test_modern_envelope_errors(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)
    with pytest.raises(RpcError) as unsupported:
        await client.call("tools/list", {"_meta": meta("2099-01-01")})
    assert unsupported.value.code == -32022
    assert unsupported.value.error["data"] == {"supported": [MODERN], "requested": "2099-01-01"}
    missing = {"io.modelcontextprotocol/protocolVersion": MODERN}
    with pytest.raises(RpcError) as no_capabilities:
        await client.call("tools/list", {"_meta": missing})
    assert no_capabilities.value.code == -32602
    assert "clientCapabilities" in str(no_capabilities.value)
    for removed in ("ping", "logging/setLevel", "resources/subscribe"):
        with pytest.raises(RpcError) as gone:
            await client.call(removed, {"_meta": meta(), "level": "info", "uri": "x"})
        assert gone.value.code == -32601
    # Without _meta and without a handshake, a request is still refused as before.
    with pytest.raises(RpcError) as legacy:
        await client.call("tools/list")
    assert legacy.value.code == -32600


async def test_one_socket_serves_both_eras(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    legacy = await client.call("tools/list")
    modern = await client.call("tools/list", {"_meta": meta()})
    assert "resultType" not in legacy
    assert modern["resultType"] == "complete"
    assert [t["name"] for t in legacy["tools"]] == [t["name"] for t in modern["tools"]]

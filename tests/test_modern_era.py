"""The 2026-07-28 era from clients: no handshake, per-request _meta, server/discover, modern results."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

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


# -- over Streamable HTTP --------------------------------------------------------------------------------


def modern_post(name: str | None = None, method: str = "tools/call", **overrides: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    headers.update(overrides)
    return headers


def request(method: str, params: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": meta()}}


async def test_the_sdk_client_picks_the_modern_era_over_http(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with Client(str(gw.server.make_url("/mcp"))) as client:
        assert "ev_add" in {t.name for t in (await client.list_tools()).tools}
        added = await client.call_tool("ev_add", {"a": 20, "b": 22})
        assert added.content[0].text == "42"  # type: ignore[union-attr]
        await client.call_tool("ev_slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
    assert progress == [1, 2, 3]
    assert gw.gateway.sessions == {}


async def test_modern_http_checks_headers_against_the_body(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = gw.server.make_url("/mcp")
    call = request("tools/call", {"name": "ev_echo", "arguments": {"text": "h"}})
    async with gw.http.post(url, json=call, headers=modern_post("ev_echo")) as ok:
        assert ok.status == 200
        body = await ok.json()
        assert body["result"]["content"][0]["text"] == "h" and body["result"]["resultType"] == "complete"
        assert "Mcp-Session-Id" not in ok.headers
    encoded = "=?base64?ZXZfZWNobw==?="  # "ev_echo"
    async with gw.http.post(url, json=call, headers=modern_post(encoded)) as decoded:
        assert decoded.status == 200
    mismatches = [
        modern_post("ev_add"),
        modern_post("ev_echo", method="tools/list"),
        modern_post("ev_echo", **{"MCP-Protocol-Version": "2026-07-29"}),
    ]
    for headers in mismatches:
        async with gw.http.post(url, json=call, headers=headers) as refused:
            assert refused.status == 400
            assert (await refused.json())["error"]["code"] == -32020


async def test_modern_http_errors_carry_the_prescribed_status(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    url = gw.server.make_url("/mcp")
    future = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta("2030-01-01")}}
    headers = modern_post(method="tools/list", **{"MCP-Protocol-Version": "2030-01-01"})
    async with gw.http.post(url, json=future, headers=headers) as unsupported:
        assert unsupported.status == 400
        error = (await unsupported.json())["error"]
        assert error["code"] == -32022 and error["data"]["supported"] == [MODERN]
    bare = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}
    async with gw.http.post(url, json=bare, headers=modern_post(method="tools/list")) as no_meta:
        assert no_meta.status == 400 and (await no_meta.json())["error"]["code"] == -32602
    unknown = request("no/such", {})
    async with gw.http.post(url, json=unknown, headers=modern_post(method="no/such")) as missing:
        assert missing.status == 404 and (await missing.json())["error"]["code"] == -32601
    note = {"jsonrpc": "2.0", "method": "notifications/whatever", "params": {"_meta": meta()}}
    async with gw.http.post(url, json=note, headers=modern_post(method="notifications/whatever")) as accepted:
        assert accepted.status == 202
    for verb in ("GET", "DELETE"):
        async with gw.http.request(
            verb, url, headers={"MCP-Protocol-Version": MODERN, "Accept": "text/event-stream"}
        ) as refused:
            assert refused.status == 405 and refused.headers["Allow"] == "POST"


async def test_closing_the_connection_cancels_the_request_upstream(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    watcher = await gw.client()
    before = int(
        (await watcher.call("tools/call", {"name": "ev_was_cancelled", "arguments": {}}))["content"][0][
            "text"
        ]
    )
    url = gw.server.make_url("/mcp")
    sleeper = request("tools/call", {"name": "ev_sleep_forever", "arguments": {}})
    posting = asyncio.create_task(gw.http.post(url, json=sleeper, headers=modern_post("ev_sleep_forever")))
    await asyncio.sleep(0.5)
    posting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await posting
    after = before
    for _ in range(60):
        after = int(
            (await watcher.call("tools/call", {"name": "ev_was_cancelled", "arguments": {}}))["content"][0][
                "text"
            ]
        )
        if after > before:
            break
        await asyncio.sleep(0.1)
    assert after == before + 1


async def test_a_modern_client_gets_logs_only_when_its_request_asks(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client(initialize=False)

    async def log(level: str, text: str, **extra: Any) -> None:
        params = {"name": "ev_log", "arguments": {"level": level, "message": text}, "_meta": meta(**extra)}
        await client.call("tools/call", params)

    await log("error", "unasked")
    await log("info", "below the level", **{"io.modelcontextprotocol/logLevel": "warning"})
    await log("error", "asked", **{"io.modelcontextprotocol/logLevel": "warning"})
    message = await client.wait_notification("notifications/message", timeout=10)
    assert message["params"]["data"] == "asked"
    await asyncio.sleep(0.2)
    assert [m["params"]["data"] for m in client.notifications_of("notifications/message")] == ["asked"]
    with pytest.raises(RpcError) as bad_level:
        await log("error", "x", **{"io.modelcontextprotocol/logLevel": "loud"})
    assert bad_level.value.code == -32602


async def test_initialize_is_an_unknown_method_in_the_modern_era(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    body = request("initialize", {"protocolVersion": MODERN, "capabilities": {}})
    url = gw.server.make_url("/mcp")
    async with gw.http.post(url, json=body, headers=modern_post(method="initialize")) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == -32601


async def test_stateless_clients_reuse_a_per_client_backends_links(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything(session="per-client")}})
    url = gw.server.make_url("/mcp")
    whoami = request("tools/call", {"name": "ev_whoami", "arguments": {}})
    pids = []
    for _ in range(6):
        async with gw.http.post(url, json=whoami, headers=modern_post("ev_whoami")) as response:
            pids.append((await response.json())["result"]["content"][0]["text"].split(":")[1])
    # Not a process per request: each ended session left its link for the next (the pool also opens
    # one spare when its last idle link is taken, hence at most two).
    assert len(set(pids)) <= 2
    # A handshake session's link is its own and ends with it.
    legacy = await gw.client()
    first = text(await legacy.call("tools/call", {"name": "ev_whoami", "arguments": {}}))
    await legacy.close()
    again = await gw.client()
    second = text(await again.call("tools/call", {"name": "ev_whoami", "arguments": {}}))
    assert len({first.split(":")[1], second.split(":")[1], pids[0]}) == 3


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


async def test_calls_in_a_row_open_one_spare_link_at_a_time(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # Calls in a row, each taking the link the one before gave back, each take the last idle link of their
    # kind. While the spare that the first of them asked for starts, the others must not start a process
    # each: on the conformance run's legacy-only path twenty started at once, and took so much of the CPU
    # that a new session's own link took 10 s to start.
    starts, slow = tmp_path / "starts", tmp_path / "slow"
    noted = {  # the fixture, by way of a shell that notes each start (and takes 1 s over it once told to)
        "command": "/bin/sh",
        "args": [
            "-c",
            'echo started >> "$STARTS"; if [ -e "$SLOW" ]; then sleep 1; fi; exec "$0" "$@"',
            sys.executable,
            everything()["args"][0],
        ],
        "env": {"STARTS": str(starts), "SLOW": str(slow)},
    }
    gw = await start_gateway({"mcpServers": {"ev": everything(session="per-client", **noted)}})
    url = gw.server.make_url("/mcp")

    def started() -> int:
        return len(starts.read_text().splitlines())

    async def call(tool: str, arguments: dict[str, Any]) -> None:
        body = request("tools/call", {"name": f"ev_{tool}", "arguments": arguments})
        async with gw.http.post(url, json=body, headers=modern_post(f"ev_{tool}")) as response:
            assert (await response.json())["result"]["resultType"] == "complete"

    await call("whoami", {})  # opens its own link, and a spare
    idle = gw.gateway.backends["ev"]._idle_links._idle
    async with asyncio.timeout(30):
        while len(idle) < 2:  # the call's link, given back, and the spare, once its handshake is done
            await asyncio.sleep(0.05)
    assert started() == 3  # the catalog link's, the call's and the spare's
    slow.touch()
    # One of them stays busy, so each call below takes the last idle link there is.
    holding = asyncio.create_task(call("slow", {"seconds": 2, "steps": 1}))
    await asyncio.sleep(0.3)
    before = started()
    for _ in range(8):
        await call("whoami", {})
    await asyncio.sleep(0.3)  # time for any spare asked for to be started
    assert started() - before == 1
    await holding

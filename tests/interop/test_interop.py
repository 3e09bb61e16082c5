"""Portico against MCP software nobody here wrote: the official TypeScript SDK and MCP Inspector CLI as
clients, the reference servers (everything, memory, time) as backends.

Everything they need is installed by `bash tests/interop/setup.sh` into .cache/interop/; when it is
missing these tests fail (they never skip) and say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import RunningGateway, StartGateway, everything
from tests.interop.helpers import (
    HERE,
    INSPECTOR,
    MODULES,
    NODE,
    SCOPE,
    SERVER_EVERYTHING,
    SERVER_MEMORY,
    SERVER_TIME,
    node_env,
    parse_json,
    reference_backends,
    require_installed,
    run,
    text_of,
)

TS_CLIENT = HERE / "ts_ws_client.cjs"


def http_url(gw: RunningGateway, path: str) -> str:
    return str(gw.server.make_url(path))


# --- The TypeScript SDK (1.x) as a WebSocket client -------------------------------------------------


async def test_typescript_sdk_websocket_client(start_gateway: StartGateway, tmp_path: Path) -> None:
    require_installed(SCOPE / "sdk" / "package.json")
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    stdout = await run(
        [NODE, TS_CLIENT, MODULES, gw.url, "ev_echo", json.dumps({"text": "hello from the TS SDK"})],
        node_env(tmp_path / "home"),
    )
    seen = parse_json(stdout)
    assert seen["sdkVersion"].startswith("1.")
    assert seen["serverVersion"]["name"] == "portico"
    assert seen["protocolVersion"] == seen["requestedVersion"]
    assert "tools" in seen["serverCapabilities"]
    assert {"ev_echo", "ev_add", "ev_whoami"} <= set(seen["tools"])
    assert len(seen["tools"]) == len(set(seen["tools"]))
    assert seen["call"]["isError"] is False
    assert text_of(seen["call"]) == "hello from the TS SDK"


# --- The MCP Inspector CLI over Streamable HTTP and the legacy HTTP+SSE transport ----------------


@pytest.mark.parametrize(("transport", "path"), [("http", "/mcp"), ("sse", "/sse")])
async def test_inspector_cli(start_gateway: StartGateway, tmp_path: Path, transport: str, path: str) -> None:
    require_installed(INSPECTOR)
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    env = node_env(tmp_path / "home")
    base = [NODE, INSPECTOR, "--cli", "--transport", transport, "--server-url", http_url(gw, path)]

    listed = parse_json(await run([*base, "--method", "tools/list", "--format", "json"], env))
    tools = {t["name"]: t for t in listed["result"]["tools"]}
    assert {"ev_echo", "ev_add", "ev_whoami"} <= set(tools)
    assert tools["ev_echo"]["inputSchema"]["required"] == ["text"]

    echo = [*base, "--method", "tools/call", "--tool-name", "ev_echo", "--tool-arg", "text=hi there"]
    called = parse_json(await run([*echo, "--format", "json"], env))
    assert called["result"]["isError"] is False
    assert text_of(called["result"]) == "hi there"

    add = [*base, "--method", "tools/call", "--tool-name", "ev_add", "--tool-arg", "a=2", "b=40"]
    added = parse_json(await run([*add, "--format", "json"], env))
    assert text_of(added["result"]) == "42"


# --- Reference servers as backends, all behind one gateway -------------------------------------


async def test_reference_servers_behind_one_gateway(start_gateway: StartGateway, tmp_path: Path) -> None:
    require_installed(SERVER_EVERYTHING, SERVER_MEMORY, SERVER_TIME)
    gw = await start_gateway(reference_backends(tmp_path))
    client = await gw.client()
    names = [t["name"] for t in await client.list_all("tools/list", "tools")]
    assert len(names) == len(set(names))
    assert {"everything_echo", "memory_create_entities", "memory_read_graph", "time_get_current_time"} <= set(
        names
    ), names
    assert {n.split("_", 1)[0] for n in names} == {"everything", "memory", "time"}

    echoed = await client.call(
        "tools/call", {"name": "everything_echo", "arguments": {"message": "through portico"}}
    )
    assert "through portico" in text_of(echoed)

    entity = {"name": "portico", "entityType": "gateway", "observations": ["speaks MCP"]}
    await client.call("tools/call", {"name": "memory_create_entities", "arguments": {"entities": [entity]}})
    graph = await client.call("tools/call", {"name": "memory_read_graph", "arguments": {}})
    assert "speaks MCP" in text_of(graph)

    now = await client.call("tools/call", {"name": "time_get_current_time", "arguments": {"timezone": "UTC"}})
    assert now.get("isError") is not True
    assert json.loads(text_of(now))["timezone"] == "UTC"


async def test_inspector_cli_to_reference_server_through_gateway(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """Third-party software on both sides: Inspector CLI -> Portico -> server-everything."""
    require_installed(INSPECTOR, SERVER_EVERYTHING)
    gw = await start_gateway(
        {"mcpServers": {"everything": {"command": str(NODE), "args": [str(SERVER_EVERYTHING), "stdio"]}}}
    )
    stdout = await run(
        [
            *(NODE, INSPECTOR, "--cli", "--transport", "http", "--server-url", http_url(gw, "/mcp")),
            *("--method", "tools/call", "--tool-name", "everything_echo", "--tool-arg", "message=both ends"),
            *("--format", "json"),
        ],
        node_env(tmp_path / "home"),
    )
    assert "both ends" in text_of(parse_json(stdout)["result"])

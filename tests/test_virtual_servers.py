"""Virtual servers: a named subset of the aggregate at /servers/{name}/mcp, on WebSocket and HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import config
from proxy.errors import ConfigError
from tests.conftest import RunningGateway, StartGateway, everything
from tests.rawclient import RawClient, RpcError
from tests.test_http_transport import Endpoint, initialize_params, request, tool_call

SETTINGS: dict[str, Any] = {
    "mcpServers": {"a": everything("a"), "b": everything("b")},
    "virtual_servers": {
        "echoes": {"include": ["a/tool/echo", "b/tool/echo", "b/prompt/*"], "description": "echo only"},
        "all-of-b": {"include": ["b/*"]},
    },
}


async def open_virtual(gw: RunningGateway, name: str) -> RawClient:
    url = str(gw.server.make_url(f"/servers/{name}/mcp")).replace("http://", "ws://")
    client = await RawClient.connect(gw.http, url)
    gw.clients.append(client)
    await client.initialize()
    return client


async def test_a_virtual_server_lists_and_reaches_only_what_it_includes(start_gateway: StartGateway) -> None:
    gw = await start_gateway(SETTINGS)
    client = await open_virtual(gw, "echoes")
    tools = {t["name"] for t in await client.list_all("tools/list", "tools")}
    assert tools == {"a_echo", "b_echo"}
    prompts = {p["name"] for p in await client.list_all("prompts/list", "prompts")}
    assert prompts == {"b_greet"}
    assert await client.list_all("resources/list", "resources") == []
    reply = await client.call("tools/call", {"name": "a_echo", "arguments": {"text": "hi"}})
    assert reply["content"][0]["text"] == "hi"
    # A tool of the aggregate outside the virtual server does not exist there, exactly like a made-up one.
    with pytest.raises(RpcError) as refused:
        await client.call("tools/call", {"name": "a_add", "arguments": {"a": 1, "b": 2}})
    assert refused.value.code == -32602 and "Unknown tool" in refused.value.error["message"]
    with pytest.raises(RpcError):
        await client.call("prompts/get", {"name": "a_greet", "arguments": {"name": "x"}})
    # The whole aggregate is still there at /mcp.
    whole = await gw.client()
    assert "a_add" in {t["name"] for t in await whole.list_all("tools/list", "tools")}


async def test_a_backend_wide_pattern_includes_resources_and_templates(start_gateway: StartGateway) -> None:
    gw = await start_gateway(SETTINGS)
    client = await open_virtual(gw, "all-of-b")
    resources = [r["uri"] for r in await client.list_all("resources/list", "resources")]
    assert resources and all(uri.startswith("portico://b/") for uri in resources)
    templates = await client.list_all("resources/templates/list", "resourceTemplates")
    assert templates and all(t["uriTemplate"].startswith("portico://b/") for t in templates)
    read = await client.call("resources/read", {"uri": resources[0]})
    assert read["contents"]
    with pytest.raises(RpcError) as refused:
        await client.call("resources/read", {"uri": resources[0].replace("portico://b/", "portico://a/")})
    assert refused.value.code == -32002


async def test_virtual_servers_over_streamable_http_and_session_binding(start_gateway: StartGateway) -> None:
    gw = await start_gateway(SETTINGS)
    virtual = Endpoint(gw.http, gw.server.make_url("/servers/echoes/mcp"))
    session = await virtual.open_session()
    _, listed = await virtual.call(session, request("tools/list", {}, 2))
    assert {t["name"] for t in listed["result"]["tools"]} == {"a_echo", "b_echo"}
    _, refused = await virtual.call(session, tool_call("a_add", request_id=3, a=1, b=2))
    assert refused["error"]["code"] == -32602
    # A session belongs to the endpoint that opened it: its id means nothing on another one.
    whole = Endpoint(gw.http, gw.server.make_url("/mcp"))
    assert await whole.status_of(session) == 404
    other = Endpoint(gw.http, gw.server.make_url("/servers/all-of-b/mcp"))
    assert await other.status_of(session) == 404
    assert await virtual.status_of(session) == 200


async def test_an_unknown_virtual_server_is_404_on_every_transport(start_gateway: StartGateway) -> None:
    gw = await start_gateway(SETTINGS)
    missing = Endpoint(gw.http, gw.server.make_url("/servers/nope/mcp"))
    response = await missing.post(request("initialize", initialize_params()))
    assert response.status == 404
    assert "nope" in (await response.json())["error"]["message"]
    url = str(gw.server.make_url("/servers/nope/mcp")).replace("http://", "ws://")
    with pytest.raises(Exception) as refused:
        await RawClient.connect(gw.http, url)
    assert "404" in str(refused.value)


def test_virtual_server_config_is_checked() -> None:
    with pytest.raises(ConfigError) as empty:
        config.parse("virtual_servers: {x: {include: []}}")
    assert "virtual_servers.x.include" in empty.value.message
    with pytest.raises(ConfigError) as bad_name:
        config.parse("virtual_servers: {'a b': {include: ['x/*']}}")
    assert "virtual server name" in bad_name.value.message

"""Aggregation, namespacing and routing through a real gateway with real stdio backends."""

from __future__ import annotations

import pytest

from tests.conftest import StartGateway, everything, fixture_server
from tests.rawclient import RpcError

LONG_TOOL = "a_tool_with_a_very_long_name_that_exists_only_to_test_how_a_gateway_handles_long_tool_name"


def text_of(result: dict) -> str:
    return "".join(c.get("text", "") for c in result["content"])


async def test_tools_of_all_backends_are_merged_and_namespaced(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"alpha": everything("A"), "beta": everything("B")}})
    client = await gw.client()
    names = [t["name"] for t in (await client.call("tools/list"))["tools"]]
    assert "alpha_echo" in names and "beta_echo" in names
    assert len(names) == len(set(names))
    assert text_of(await client.call("tools/call", {"name": "alpha_whoami", "arguments": {}})).startswith(
        "A:"
    )
    assert text_of(await client.call("tools/call", {"name": "beta_whoami", "arguments": {}})).startswith("B:")


async def test_separator_is_configurable(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"namespacing": {"separator": "__"}, "mcpServers": {"ev": everything()}})
    client = await gw.client()
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "ev__echo" in names
    reply = await client.call("tools/call", {"name": "ev__echo", "arguments": {"text": "hi"}})
    assert text_of(reply) == "hi"


async def test_mode_never_exposes_names_unchanged(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"namespacing": {"mode": "never"}, "mcpServers": {"ev": everything()}})
    client = await gw.client()
    names = {t["name"] for t in (await client.call("tools/list"))["tools"]}
    assert "echo" in names and "ev_echo" not in names
    assert text_of(await client.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})) == "x"
    resources = (await client.call("resources/list"))["resources"]
    assert [r["uri"] for r in resources] == ["memo://one"]
    read = await client.call("resources/read", {"uri": "memo://item/9"})
    assert read["contents"][0]["text"] == "item 9"


async def test_long_tool_names_are_shortened_within_budget_and_still_route(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    tools = (await client.call("tools/list"))["tools"]
    long_ones = [t for t in tools if t["name"].startswith("ev_a_tool_with")]
    assert len(long_ones) == 1
    exposed = long_ones[0]["name"]
    assert len(exposed) <= 64 and exposed != f"ev_{LONG_TOOL}"
    assert text_of(await client.call("tools/call", {"name": exposed, "arguments": {}})) == "long"
    assert all(len(t["name"]) <= 64 for t in tools)


async def test_backend_pagination_is_followed_and_merged_lists_are_paged(start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        {
            "namespacing": {"page_size": 3},
            "mcpServers": {"paged": fixture_server("paged_server.py"), "ev": everything()},
        }
    )
    client = await gw.client()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await client.call("tools/list", {"cursor": cursor} if cursor else {})
        assert len(page["tools"]) <= 3
        seen += [t["name"] for t in page["tools"]]
        pages += 1
        cursor = page.get("nextCursor")
        if not cursor:
            break
    assert pages > 2
    assert len(seen) == len(set(seen))
    assert {f"paged_p{i}" for i in range(5)} <= set(seen)
    assert "ev_echo" in seen
    assert text_of(await client.call("tools/call", {"name": "paged_p4", "arguments": {}})) == "p4"
    for method, key, count in (
        ("prompts/list", "prompts", 3),
        ("resources/list", "resources", 3),
        ("resources/templates/list", "resourceTemplates", 3),
    ):
        items = await client.list_all(method, key)
        assert len([i for i in items if "paged" in str(i)]) == count


async def test_invalid_cursor_is_invalid_params(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    with pytest.raises(RpcError) as raised:
        await client.call("tools/list", {"cursor": "not-a-cursor"})
    assert raised.value.code == -32602


async def test_resources_and_templates_map_uris_both_ways(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    resources = (await client.call("resources/list"))["resources"]
    assert [r["uri"] for r in resources] == ["portico://ev/memo://one"]
    read = await client.call("resources/read", {"uri": "portico://ev/memo://one"})
    assert read["contents"][0]["text"] == "first memo"
    assert read["contents"][0]["uri"] == "portico://ev/memo://one"
    templates = (await client.call("resources/templates/list"))["resourceTemplates"]
    assert templates[0]["uriTemplate"] == "portico://ev/memo://item/{id}"
    item = await client.call("resources/read", {"uri": "portico://ev/memo://item/42"})
    assert item["contents"][0]["text"] == "item 42"
    with pytest.raises(RpcError) as raised:
        await client.call("resources/read", {"uri": "portico://nope/memo://one"})
    assert raised.value.code == -32002


async def test_prompts_and_completion_route_by_exposed_name(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    prompts = (await client.call("prompts/list"))["prompts"]
    assert [p["name"] for p in prompts] == ["ev_greet"]
    prompt = await client.call("prompts/get", {"name": "ev_greet", "arguments": {"name": "Ada"}})
    assert "Ada" in str(prompt["messages"])
    done = await client.call(
        "completion/complete",
        {"ref": {"type": "ref/prompt", "name": "ev_greet"}, "argument": {"name": "name", "value": "al"}},
    )
    assert sorted(done["completion"]["values"]) == ["alfred", "alice"]
    with pytest.raises(RpcError) as raised:
        await client.call("prompts/get", {"name": "greet"})
    assert raised.value.code == -32602


async def test_unknown_tool_is_invalid_params_and_reaches_no_backend(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    with pytest.raises(RpcError) as raised:
        await client.call("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert raised.value.code == -32602
    assert "echo" in str(raised.value)


async def test_capabilities_are_the_union_of_the_backends(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything(), "paged": fixture_server("paged_server.py")}})
    client = await gw.client(initialize=False)
    result = await client.initialize()
    caps = result["capabilities"]
    assert caps["tools"] == {"listChanged": True}
    assert caps["prompts"] == {"listChanged": True}
    assert caps["resources"] == {"listChanged": True, "subscribe": True}
    assert "logging" in caps and "completions" in caps
    assert result["serverInfo"]["name"] == "portico"

    gw2 = await start_gateway({"mcpServers": {"paged": fixture_server("paged_server.py")}})
    caps2 = (await (await gw2.client(initialize=False)).initialize())["capabilities"]
    assert "logging" not in caps2 and "completions" not in caps2
    assert "subscribe" not in caps2.get("resources", {})


async def test_completion_of_a_template_variable_routes_by_the_exposed_uri(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything()}})
    client = await gw.client()
    done = await client.call(
        "completion/complete",
        {
            "ref": {"type": "ref/resource", "uri": "portico://ev/memo://item/{id}"},
            "argument": {"name": "id", "value": "1"},
        },
    )
    assert done["completion"]["values"] == ["1", "12"]
    with pytest.raises(RpcError) as unknown:
        await client.call(
            "completion/complete",
            {
                "ref": {"type": "ref/resource", "uri": "memo://item/{id}"},
                "argument": {"name": "id", "value": ""},
            },
        )
    assert unknown.value.code == -32602

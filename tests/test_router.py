"""The aggregate catalog (merged lists, routing tables, URIs) and the pager over it."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from proxy.chain import Route, only_reads, safe_to_repeat
from proxy.errors import InvalidParams
from proxy.naming import NameCollision, NamingRules
from proxy.router import BackendLists, Catalog, Pager, build_catalog
from tests.conftest import StartGateway, everything

LONG = "a_tool_with_a_very_long_name_that_exists_only_to_test_how_a_gateway_handles_long_tool_name"


def tools(*names: str) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"name": n, "description": f"the {n} tool", "inputSchema": {"type": "object"}} for n in names
    )


def sample_lists() -> dict[str, BackendLists]:
    return {
        "weather": BackendLists(
            tools=tools("get_weather", "echo"),
            prompts=({"name": "forecast", "arguments": []},),
            resources=({"uri": "weather://today", "name": "today"},),
            resourceTemplates=({"uriTemplate": "weather://city/{name}", "name": "city"},),
        ),
        "notes": BackendLists(
            tools=tools("add_note", "echo", LONG),
            prompts=({"name": "summarize"}, {"name": "forecast"}),
            resources=({"uri": "notes://a", "name": "a"}, {"uri": "file:///shared.txt", "name": "shared"}),
            resourceTemplates=({"uriTemplate": "notes://{id}", "name": "note"},),
        ),
    }


def catalog(mode: str = "always", version: int = 1, **lists: BackendLists) -> Catalog:
    return build_catalog(version, NamingRules(mode=mode), lists or sample_lists())


# -- merged lists ------------------------------------------------------------------------------------------


def test_lists_are_merged_in_config_order() -> None:
    cat = catalog()
    names = [t["name"] for t in cat.items["tools"]]
    assert names[:4] == ["weather_get_weather", "weather_echo", "notes_add_note", "notes_echo"]
    assert len(names) == 5
    assert [p["name"] for p in cat.items["prompts"]] == [
        "weather_forecast",
        "notes_summarize",
        "notes_forecast",
    ]
    assert [r["uri"] for r in cat.items["resources"]] == [
        "portico://weather/weather://today",
        "portico://notes/notes://a",
        "portico://notes/file:///shared.txt",
    ]
    assert [t["uriTemplate"] for t in cat.items["resourceTemplates"]] == [
        "portico://weather/weather://city/{name}",
        "portico://notes/notes://{id}",
    ]
    # The other order of backends gives the other order of items.
    reverse = dict(reversed(list(sample_lists().items())))
    flipped = build_catalog(1, NamingRules(), reverse)
    assert [t["name"] for t in flipped.items["tools"]][:2] == ["notes_add_note", "notes_echo"]
    assert cat.backends == ("weather", "notes")
    assert flipped.backends == ("notes", "weather")


def test_items_keep_every_other_field() -> None:
    cat = catalog()
    tool = cat.items["tools"][0]
    assert tool == {
        "name": "weather_get_weather",
        "description": "the get_weather tool",
        "inputSchema": {"type": "object"},
    }
    assert cat.items["resources"][0]["name"] == "today"


def test_building_a_catalog_does_not_change_the_backends_lists() -> None:
    lists = sample_lists()
    build_catalog(1, NamingRules(), lists)
    assert lists["weather"].tools[0]["name"] == "get_weather"
    assert lists["notes"].resources[0]["uri"] == "notes://a"


def test_items_without_a_string_name_are_dropped_and_duplicates_keep_the_first() -> None:
    lists = {
        "a": BackendLists(
            tools=(
                {"name": "x", "description": "first"},
                {"name": 5},
                {"description": "no name"},
                {"name": "x", "description": "second"},
            ),
            resources=({"uri": None, "name": "bad"}, {"uri": "r://1", "name": "ok"}),
        )
    }
    cat = build_catalog(1, NamingRules(), lists)
    assert cat.items["tools"] == ({"name": "a_x", "description": "first"},)
    assert [r["uri"] for r in cat.items["resources"]] == ["portico://a/r://1"]


def test_mode_never_lists_names_and_uris_unchanged() -> None:
    lists = {
        "a": BackendLists(tools=tools("one"), resources=({"uri": "a://x", "name": "x"},)),
        "b": BackendLists(tools=tools("two"), resourceTemplates=({"uriTemplate": "b://{p}", "name": "p"},)),
    }
    cat = build_catalog(1, NamingRules(mode="never"), lists)
    assert [t["name"] for t in cat.items["tools"]] == ["one", "two"]
    assert [r["uri"] for r in cat.items["resources"]] == ["a://x"]
    assert [t["uriTemplate"] for t in cat.items["resourceTemplates"]] == ["b://{p}"]


def test_mode_never_collision_stops_the_build() -> None:
    lists = {"a": BackendLists(tools=tools("echo")), "b": BackendLists(tools=tools("echo"))}
    with pytest.raises(NameCollision) as caught:
        build_catalog(1, NamingRules(mode="never"), lists)
    assert "'a'" in str(caught.value)
    assert "'b'" in str(caught.value)


def test_mode_never_prompt_collision_stops_the_build() -> None:
    lists = {"a": BackendLists(prompts=({"name": "p"},)), "b": BackendLists(prompts=({"name": "p"},))}
    with pytest.raises(NameCollision) as caught:
        build_catalog(1, NamingRules(mode="never"), lists)
    assert "prompt" in str(caught.value)


# -- routing by name ---------------------------------------------------------------------------------------


def test_every_listed_name_routes_back_to_its_owner() -> None:
    cat = catalog()
    lists = sample_lists()
    for kind, key in (("tool", "tools"), ("prompt", "prompts")):
        owned = [(b, item["name"]) for b, own in lists.items() for item in getattr(own, key)]
        exposed = [item["name"] for item in cat.items[key]]
        assert len(owned) == len(exposed)
        for (backend, original), name in zip(owned, exposed, strict=True):
            assert cat.route_name(kind, name) == Route(backend, kind, original, name)


def test_long_names_route_to_the_original_name() -> None:
    cat = catalog()
    exposed = cat.items["tools"][4]["name"]
    assert exposed != f"notes_{LONG}"
    assert len(exposed) <= 64
    route = cat.route_name("tool", exposed)
    assert route is not None
    assert (route.backend, route.name) == ("notes", LONG)


def test_routing_is_a_look_up_not_string_splitting() -> None:
    # Backend "a_b" with tool "c" and backend "a" with tool "b_c": splitting at "_" would get one wrong.
    lists = {"a_b": BackendLists(tools=tools("c")), "a": BackendLists(tools=tools("b_c"))}
    cat = build_catalog(1, NamingRules(), lists)
    routes = [cat.route_name("tool", t["name"]) for t in cat.items["tools"]]
    assert [(r.backend, r.name) for r in routes if r] == [("a_b", "c"), ("a", "b_c")]


@pytest.mark.parametrize(
    "name", ["nope", "get_weather", "weather_", "weather_nope", "", None, 5, ["weather_echo"]]
)
def test_unknown_names_do_not_route(name: object) -> None:
    cat = catalog()
    assert cat.route_name("tool", name) is None


def test_a_prompt_name_does_not_route_as_a_tool() -> None:
    cat = catalog()
    assert cat.route_name("prompt", "notes_summarize") is not None
    assert cat.route_name("tool", "notes_summarize") is None


def test_mode_never_routes_names_as_they_are() -> None:
    lists = {"a": BackendLists(tools=tools("one")), "b": BackendLists(tools=tools("two"))}
    cat = build_catalog(1, NamingRules(mode="never"), lists)
    assert cat.route_name("tool", "two") == Route("b", "tool", "two", "two")
    assert cat.route_name("tool", "b_two") is None


# -- routing by URI ----------------------------------------------------------------------------------------


def test_every_listed_uri_routes_back_to_its_owner() -> None:
    cat = catalog()
    originals = [("weather", "weather://today"), ("notes", "notes://a"), ("notes", "file:///shared.txt")]
    for (backend, uri), item in zip(originals, cat.items["resources"], strict=True):
        assert item["uri"] == f"portico://{backend}/{uri}"
        assert cat.route_uri(item["uri"]) == Route(backend, "resource", uri, item["uri"])
        assert cat.expose_uri(backend, uri) == item["uri"]


def test_template_uris_route_with_their_kind() -> None:
    cat = catalog()
    exposed = "portico://weather/weather://city/paris"
    assert cat.route_uri(exposed) == Route("weather", "resource", "weather://city/paris", exposed)
    assert cat.route_uri(exposed, kind="template") == Route(
        "weather", "template", "weather://city/paris", exposed
    )


def test_uris_keep_their_slashes_and_query() -> None:
    cat = catalog()
    exposed = "portico://notes/file:///dir/sub/f.txt?x=1#top"
    route = cat.route_uri(exposed)
    assert route is not None
    assert route.name == "file:///dir/sub/f.txt?x=1#top"


@pytest.mark.parametrize(
    "uri",
    [
        "weather://today",
        "portico://",
        "portico://weather",
        "portico://nobody/x://y",
        "http://weather/x",
        "",
        None,
        1,
    ],
)
def test_foreign_uris_do_not_route(uri: object) -> None:
    assert catalog().route_uri(uri) is None


def test_mode_never_routes_by_exact_uri_then_longest_template_prefix() -> None:
    lists = {
        "files": BackendLists(
            resources=({"uri": "file:///etc/motd", "name": "motd"},),
            resourceTemplates=({"uriTemplate": "file:///{path}", "name": "any file"},),
        ),
        "projects": BackendLists(
            resources=({"uri": "file:///projects/readme", "name": "readme"},),
            resourceTemplates=({"uriTemplate": "file:///projects/{path}", "name": "a project file"},),
        ),
        "db": BackendLists(resourceTemplates=({"uriTemplate": "db://{table}/{id}", "name": "row"},)),
    }
    cat = build_catalog(1, NamingRules(mode="never"), lists)
    assert cat.expose_uri("files", "file:///etc/motd") == "file:///etc/motd"

    def owner(uri: str) -> str | None:
        route = cat.route_uri(uri)
        if route is not None:
            assert route.name == uri
            assert route.exposed == uri
        return route.backend if route else None

    assert owner("file:///etc/motd") == "files"
    assert owner("file:///projects/readme") == "projects"
    assert owner("file:///projects/app/main.py") == "projects"
    assert owner("file:///home/x") == "files"
    assert owner("db://users/7") == "db"
    assert owner("s3://bucket/key") is None
    assert owner("portico://files/file:///etc/motd") is None


def test_mode_never_exact_uri_beats_a_template_of_another_backend() -> None:
    lists = {
        "wide": BackendLists(resourceTemplates=({"uriTemplate": "memo://{id}", "name": "t"},)),
        "exact": BackendLists(resources=({"uri": "memo://special", "name": "s"},)),
    }
    cat = build_catalog(1, NamingRules(mode="never"), lists)
    route = cat.route_uri("memo://special")
    assert route is not None and route.backend == "exact"
    route = cat.route_uri("memo://other")
    assert route is not None and route.backend == "wide"


# -- the pager ---------------------------------------------------------------------------------------------


def many(count: int, prefix: str = "t") -> BackendLists:
    return BackendLists(
        tools=tools(*(f"{prefix}{i}" for i in range(count))),
        prompts=tuple({"name": f"{prefix}p{i}"} for i in range(count)),
    )


def page_all(pager: Pager, current: Catalog, method: str, key: str) -> tuple[list[str], int]:
    seen: list[str] = []
    params: dict[str, Any] = {}
    pages = 0
    while True:
        page = pager.page(current, method, params)
        pages += 1
        seen += [item["name"] for item in page[key]]
        if "nextCursor" not in page:
            return seen, pages
        assert isinstance(page["nextCursor"], str)
        params = {"cursor": page["nextCursor"]}


@pytest.mark.parametrize(("total", "size"), [(0, 3), (1, 3), (3, 3), (10, 3), (11, 1), (7, 500)])
def test_pages_hold_every_item_exactly_once(total: int, size: int) -> None:
    cat = build_catalog(1, NamingRules(), {"a": many(total)})
    pager = Pager(size)
    pager.remember(cat)
    seen, pages = page_all(pager, cat, "tools/list", "tools")
    assert seen == [f"a_t{i}" for i in range(total)]
    assert pages == max(1, -(-total // size))


def test_each_list_pages_separately() -> None:
    cat = build_catalog(1, NamingRules(), {"a": many(5), "b": many(4)})
    pager = Pager(2)
    pager.remember(cat)
    tools_seen, _ = page_all(pager, cat, "tools/list", "tools")
    prompts_seen, _ = page_all(pager, cat, "prompts/list", "prompts")
    assert tools_seen == [t["name"] for t in cat.items["tools"]]
    assert prompts_seen == [p["name"] for p in cat.items["prompts"]]
    assert len(set(tools_seen)) == 9


def test_a_cursor_keeps_reading_its_snapshot_after_the_catalog_changes() -> None:
    pager = Pager(3)
    old = build_catalog(1, NamingRules(), {"a": many(7)})
    pager.remember(old)
    first = pager.page(old, "tools/list", {})
    # A backend changes its tools: a new snapshot replaces the old one.
    new = build_catalog(2, NamingRules(), {"a": many(2, prefix="new"), "b": many(5)})
    pager.remember(new)
    names = [t["name"] for t in first["tools"]]
    cursor = first["nextCursor"]
    while cursor:
        page = pager.page(new, "tools/list", {"cursor": cursor})
        names += [t["name"] for t in page["tools"]]
        cursor = page.get("nextCursor")
    assert names == [f"a_t{i}" for i in range(7)]
    # A fresh listing sees the new catalog.
    fresh, _ = page_all(pager, new, "tools/list", "tools")
    assert fresh == [t["name"] for t in new.items["tools"]]
    assert fresh[:2] == ["a_new0", "a_new1"]


def forge(payload: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode()


GARBAGE_CURSORS = {
    "empty": "",
    "word": "garbage",
    "not-base64": "!!!not base64!!!",
    "non-ascii": "é",
    "int": 5,
    "object": {"o": 3},
    "array": ["x"],
    "bool": True,
    "json-array": forge([1, 2, 3]),
    "json-string": forge("tools/list"),
    "no-version": forge({"m": "tools/list"}),
    "no-offset": forge({"m": "tools/list", "v": 1}),
    "negative-offset": forge({"m": "tools/list", "v": 1, "o": -3}),
    "string-offset": forge({"m": "tools/list", "v": 1, "o": "3"}),
    "float-offset": forge({"m": "tools/list", "v": 1, "o": 1.5}),
    "list-version": forge({"m": "tools/list", "v": [1], "o": 3}),
    "object-version": forge({"m": "tools/list", "v": {"x": 1}, "o": 3}),
    "unknown-version": forge({"m": "tools/list", "v": 999, "o": 3}),
    "list-method": forge({"m": ["tools/list"], "v": 1, "o": 3}),
}


@pytest.mark.parametrize("cursor", list(GARBAGE_CURSORS.values()), ids=list(GARBAGE_CURSORS))
def test_garbage_cursors_are_invalid_params(cursor: object) -> None:
    cat = build_catalog(1, NamingRules(), {"a": many(10)})
    pager = Pager(3)
    pager.remember(cat)
    with pytest.raises(InvalidParams) as caught:
        pager.page(cat, "tools/list", {"cursor": cursor})
    assert caught.value.code == -32602


def test_a_cursor_of_another_list_method_is_refused() -> None:
    cat = build_catalog(1, NamingRules(), {"a": many(10)})
    pager = Pager(3)
    pager.remember(cat)
    cursor = pager.page(cat, "tools/list", {})["nextCursor"]
    assert pager.page(cat, "tools/list", {"cursor": cursor})["tools"]
    for other in ("prompts/list", "resources/list", "resources/templates/list"):
        with pytest.raises(InvalidParams):
            pager.page(cat, other, {"cursor": cursor})


def test_expired_cursors_are_refused_with_a_clear_message() -> None:
    pager = Pager(2, keep=2)
    first = build_catalog(1, NamingRules(), {"a": many(5)})
    pager.remember(first)
    cursor = pager.page(first, "tools/list", {})["nextCursor"]
    latest = first
    for version in (2, 3):
        latest = build_catalog(version, NamingRules(), {"a": many(5 + version)})
        pager.remember(latest)
    with pytest.raises(InvalidParams) as caught:
        pager.page(latest, "tools/list", {"cursor": cursor})
    assert "expired" in caught.value.message
    # A cursor of a snapshot still kept works.
    recent = pager.page(latest, "tools/list", {})["nextCursor"]
    assert pager.page(latest, "tools/list", {"cursor": recent})["tools"][0]["name"] == "a_t2"


# -- through a real gateway --------------------------------------------------------------------------------


async def test_a_real_gateway_pages_the_merged_tools(start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        {
            "namespacing": {"page_size": 4},
            "mcpServers": {"one": everything("one"), "two": everything("two")},
        }
    )
    client = await gw.client()
    names: list[str] = []
    params: dict[str, Any] = {}
    while True:
        page = await client.call("tools/list", params)
        assert len(page["tools"]) <= 4
        names += [t["name"] for t in page["tools"]]
        if "nextCursor" not in page:
            break
        params = {"cursor": page["nextCursor"]}
    assert len(names) == len(set(names))
    ones = [n for n in names if n.startswith("one_")]
    twos = [n for n in names if n.startswith("two_")]
    assert "one_echo" in ones and "two_echo" in twos
    assert len(ones) == len(twos) == len(names) // 2
    # Config order: every tool of "one" before any of "two".
    assert names.index(ones[-1]) < names.index(twos[0])
    assert all(len(n) <= 64 for n in names)
    # A name routes: calling "two_whoami" reaches the backend tagged "two".
    result = await client.call("tools/call", {"name": "two_whoami", "arguments": {}})
    assert result["content"][0]["text"].startswith("two:")
    # A resource URI routes back through the portico:// form.
    resources = await client.call("resources/list")
    uris = [r["uri"] for r in resources["resources"]]
    assert uris == ["portico://one/memo://one", "portico://two/memo://one"]
    read = await client.call("resources/read", {"uri": "portico://two/memo://item/42"})
    assert read["contents"][0]["text"] == "item 42"
    assert read["contents"][0]["uri"] == "portico://two/memo://item/42"
    # A garbage cursor is the client's mistake, and the session stays usable.
    reply = await client.request("tools/list", {"cursor": "garbage"})
    assert reply["error"]["code"] == -32602
    assert (await client.call("ping")) == {}


async def test_a_forged_cursor_through_the_gateway_is_invalid_params(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"one": everything("one")}})
    client = await gw.client()
    for name in ("json-array", "unknown-version", "list-version"):
        reply = await client.request("tools/list", {"cursor": GARBAGE_CURSORS[name]})
        assert reply["error"]["code"] == -32602, (name, reply)
    assert (await client.call("ping")) == {}


def test_tool_annotations_say_what_may_be_retried_cached_and_shared() -> None:
    annotated = (
        {"name": "look", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
        {"name": "put", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": True}},
        {"name": "send", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": "yes"}},
        {"name": "plain", "inputSchema": {"type": "object"}},
    )
    built = catalog(b=BackendLists(tools=annotated))
    look, put, send, plain = (built.route_name("tool", f"b_{n}") for n in ("look", "put", "send", "plain"))
    assert look is not None and look.read_only and look.idempotent
    assert put is not None and not put.read_only and put.idempotent
    # Only a literal true counts: anything else is the backend saying nothing.
    assert send is not None and not send.read_only and not send.idempotent
    assert plain is not None and not plain.read_only
    assert only_reads("tools/call", look) and safe_to_repeat("tools/call", look)
    assert not only_reads("tools/call", put) and safe_to_repeat("tools/call", put)
    assert not safe_to_repeat("tools/call", plain) and not safe_to_repeat("tools/call", None)
    assert only_reads("resources/read", None) and safe_to_repeat("prompts/get", None)
    assert not safe_to_repeat("resources/subscribe", None)

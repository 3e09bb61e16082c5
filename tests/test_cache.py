"""The cache plugin: through a real gateway in front of the counting fixture (in memory and in a real
Redis), and at the unit level through ``proxy.chain.Chain`` for what only a modern backend or a changed
policy can show."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from plugins.cache import Cache, CacheOptions, MemoryStore, rules
from plugins.cache.rules import ConfiguredTtls, entry_keys
from proxy.chain import (
    ANONYMOUS,
    POLICY_VERSION,
    Chain,
    Context,
    Direction,
    Handler,
    NamedPlugin,
    Principal,
    Route,
)
from proxy.jsonrpc import Message
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.fake_session import FakeSession
from tests.header_auth import HEADER_AUTH
from tests.rawclient import RawClient
from tests.redis_server import RedisServer

# -- the gateway-level tests, run against both stores --------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store_options(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """No options (the memory store), or the URL of a real, empty redis-server."""
    if request.param == "memory":
        yield {}
        return
    async with RedisServer() as server:
        yield {"redis_url": server.url}


async def cached_gateway(start_gateway: StartGateway, **options: Any) -> RunningGateway:
    return await start_gateway(
        {
            "mcpServers": {"c": fixture_server("counting_server.py")},
            "plugins": [HEADER_AUTH, {"name": "cache", "options": options}],
        }
    )


def cache_of(gw: RunningGateway) -> Cache:
    plugin = next(named.plugin for named in gw.gateway.plugins if named.name == "cache")
    assert isinstance(plugin, Cache)
    return plugin


async def as_user(gw: RunningGateway, name: str) -> RawClient:
    return await gw.client(headers={"Authorization": f"Bearer {name}"})


async def text_of(client: RawClient, tool: str, **arguments: Any) -> str:
    result = await client.call("tools/call", {"name": tool, "arguments": arguments})
    text: str = result["content"][0]["text"]
    return text


async def read(client: RawClient, uri: str = "portico://c/data://item/7") -> str:
    result = await client.call("resources/read", {"uri": uri})
    text: str = result["contents"][0]["text"]
    return text


async def backend_counts(client: RawClient) -> dict[str, int]:
    counts: dict[str, int] = json.loads(await text_of(client, "c_stats"))
    return counts


async def until(probe: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``probe`` until it holds; fail after ``seconds`` (a bound, not a timing assertion)."""
    async with asyncio.timeout(seconds):
        while not await probe():
            await asyncio.sleep(0.05)


async def test_a_second_read_only_call_is_answered_from_the_cache(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, **store_options)
    client = await as_user(gw, "alice")
    assert await text_of(client, "c_lookup", key="k") == "k #1"
    again = await client.request("tools/call", {"name": "c_lookup", "arguments": {"key": "k"}}, id="mine-7")
    assert again["id"] == "mine-7" and again["result"]["content"][0]["text"] == "k #1"
    # A hit is a copy: changing what one caller got changes nothing for the next.
    again["result"]["content"][0]["text"] = "changed"
    assert await text_of(client, "c_lookup", key="k") == "k #1"
    assert await text_of(client, "c_lookup", key="other") == "other #2"
    assert (await backend_counts(client))["tool:lookup"] == 2
    counters = cache_of(gw).counters()
    assert counters["hits"] == 2 and counters["misses"] == 2 and counters["stores"] == 2
    await cache_of(gw).close()


async def test_calls_without_read_only_hints_and_tool_errors_are_never_cached(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, **store_options)
    client = await as_user(gw, "alice")
    appended = [await text_of(client, "c_append", key="k", value="v") for _ in range(2)]
    assert appended == ["append k=v #1", "append k=v #2"]
    for _ in range(2):
        result = await client.call("tools/call", {"name": "c_fail", "arguments": {"text": "no"}})
        assert result["isError"] is True
    counts = await backend_counts(client)
    assert counts["tool:append"] == 2 and counts["tool:fail"] == 2
    assert cache_of(gw).counters()["stores"] == 0
    await cache_of(gw).close()


async def test_an_operator_may_vouch_for_a_tool_without_hints(start_gateway: StartGateway) -> None:
    gw = await cached_gateway(start_gateway, tools=["c/tool/app*"])
    client = await as_user(gw, "alice")
    assert [await text_of(client, "c_append", key="k", value="v") for _ in range(2)] == ["append k=v #1"] * 2


async def test_reads_are_cached_and_forgotten_on_resource_update_and_list_change(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, **store_options)
    client = await as_user(gw, "alice")
    assert [await read(client), await read(client)] == ["data://item/7 read #1"] * 2
    assert await read(client, "portico://c/data://fixed") == "data://fixed read #1"
    # The counting backend sends the update whether or not anyone subscribed, and no client has: the
    # cache hears it all the same.
    await text_of(client, "c_touch", uri="data://item/7")
    # The update forgot that URI's reads only, and what is read next is kept again. (Polled: the event
    # travels apart from the call's reply, and in Redis the invalidation is a write of its own.)
    await until(lambda: _fresh_and_kept(client, "data://item/7 read #1"))
    assert await read(client, "portico://c/data://fixed") == "data://fixed read #1"
    item_before = await read(client)
    await text_of(client, "c_add_tool", name="extra")
    await until(lambda: _fresh_and_kept(client, "data://fixed read #1", "portico://c/data://fixed"))
    await until(lambda: _fresh_and_kept(client, item_before))
    await cache_of(gw).close()


async def _fresh_and_kept(client: RawClient, stale: str, uri: str = "portico://c/data://item/7") -> bool:
    """Whether a read of ``uri`` no longer gives ``stale``, and the read after it gives the same again."""
    first = await read(client, uri)
    return first != stale and await read(client, uri) == first


async def _reads(client: RawClient, expected: str, uri: str = "portico://c/data://item/7") -> bool:
    return await read(client, uri) == expected


async def test_entries_expire_after_their_ttl(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, backends={"c": {"ttl_seconds": 0.2}}, **store_options)
    client = await as_user(gw, "alice")
    assert await read(client) == "data://item/7 read #1"
    await until(lambda: _reads(client, "data://item/7 read #2"))
    await cache_of(gw).close()


async def test_private_results_are_never_served_to_another_principal(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, **store_options)
    alice, bob = await as_user(gw, "alice"), await as_user(gw, "bob")
    assert await text_of(alice, "c_lookup", key="k") == "k #1"
    assert await text_of(bob, "c_lookup", key="k") == "k #2"
    assert await text_of(alice, "c_lookup", key="k") == "k #1"
    assert await text_of(bob, "c_lookup", key="k") == "k #2"
    await cache_of(gw).close()


async def test_a_backend_configured_shared_serves_everyone_the_same_answer(
    start_gateway: StartGateway, store_options: dict[str, Any]
) -> None:
    gw = await cached_gateway(start_gateway, backends={"c": {"shared": True}}, **store_options)
    alice, bob = await as_user(gw, "alice"), await as_user(gw, "bob")
    assert await text_of(alice, "c_lookup", key="k") == "k #1"
    assert await text_of(bob, "c_lookup", key="k") == "k #1"
    await cache_of(gw).close()


async def test_every_redis_key_has_a_ttl(start_gateway: StartGateway, redis_url: str) -> None:
    gw = await cached_gateway(start_gateway, redis_url=redis_url)
    client = await as_user(gw, "alice")
    await read(client)
    await text_of(client, "c_lookup", key="k")
    await client.call("resources/subscribe", {"uri": "portico://c/data://item/7"})
    await text_of(client, "c_touch", uri="data://item/7")
    await until(lambda: _reads(client, "data://item/7 read #2"))
    db = aioredis.Redis.from_url(redis_url)
    try:
        keys = await db.keys("portico:cache:*")
        assert any(b":generation:" in key for key in keys) and any(b":entry:c:" in key for key in keys)
        assert all(ttl > 0 for ttl in [await db.pttl(key) for key in keys])
    finally:
        await db.aclose()
    await cache_of(gw).close()


async def test_a_redis_that_fails_is_a_miss_not_an_error(start_gateway: StartGateway) -> None:
    # Nothing listens on port 1: every Redis operation fails at once.
    gw = await cached_gateway(start_gateway, redis_url="redis://127.0.0.1:1/0")
    client = await as_user(gw, "alice")
    assert [await text_of(client, "c_lookup", key="k") for _ in range(2)] == ["k #1", "k #2"]
    assert cache_of(gw).counters()["errors"] >= 2
    await cache_of(gw).close()


# -- unit level: through the chain, with a terminal standing in for a backend ------------------------------

TOOL = Route("m", "tool", "look", "m_look", read_only=True)


class Terminal:
    """Answers every request with ``result`` (or ``error``), counting the calls."""

    def __init__(self, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
        self.result = result if result is not None else {"content": [{"type": "text", "text": "r"}]}
        self.error = error
        self.calls = 0

    async def __call__(self, ctx: Context, message: Message) -> Message | None:
        self.calls += 1
        if self.error is not None:
            return {"jsonrpc": "2.0", "id": message["id"], "error": self.error}
        return {"jsonrpc": "2.0", "id": message["id"], "result": {**self.result, "n": self.calls}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SetPolicyVersion:
    """Stands in for the policy plugin: sets POLICY_VERSION to ``version``."""

    def __init__(self) -> None:
        self.version = 1

    async def __call__(self, ctx: Context, message: Message, call_next: Handler) -> Message | None:
        ctx.set(POLICY_VERSION, self.version)
        return await call_next(ctx, message)


def chain_with(
    terminal: Terminal, clock: Clock | None = None, policy: SetPolicyVersion | None = None, **options: Any
) -> tuple[Chain, Cache]:
    cache = Cache(CacheOptions(**options))
    if clock is not None:
        cache.store = MemoryStore(cache.options.max_entries, cache.options.max_bytes, clock=clock)
    plugins = [NamedPlugin("policy", policy)] if policy is not None else []
    return Chain([*plugins, NamedPlugin("cache", cache)], terminal), cache


async def call(
    chain: Chain,
    *,
    principal: Principal = ANONYMOUS,
    method: str = "tools/call",
    route: Route = TOOL,
    params: dict[str, Any] | None = None,
    direction: Direction = Direction.TO_BACKEND,
    seconds_left: float = 10,
) -> Message:
    ctx = Context(
        FakeSession(), direction, method, route, time.monotonic() + seconds_left, principal=principal
    )
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {"name": "m_look"}}
    reply = await chain.dispatch(ctx, message)
    assert reply is not None
    return reply


ALICE = Principal(subject="alice", kind="jwt", credential="token-of-alice")
BOB = Principal(subject="bob", kind="jwt", credential="token-of-bob")


async def test_a_result_with_ttl_ms_zero_is_not_kept() -> None:
    terminal = Terminal({"resultType": "complete", "ttlMs": 0, "cacheScope": "public"})
    chain, _ = chain_with(terminal)
    await call(chain)
    await call(chain)
    assert terminal.calls == 2


@pytest.mark.parametrize(
    ("configured", "ttl_ms", "lives"), [(60, 1000, 1.0), (1, 60_000, 1.0), (5, None, 5.0)]
)
async def test_the_shorter_of_the_configured_ttl_and_ttl_ms_wins(
    configured: float, ttl_ms: int | None, lives: float
) -> None:
    result: dict[str, Any] = {"resultType": "complete"} if ttl_ms is None else {"ttlMs": ttl_ms}
    terminal, clock = Terminal(result), Clock()
    chain, _ = chain_with(terminal, clock, default_ttl_seconds=configured)
    await call(chain)
    clock.now += lives - 0.01
    await call(chain)
    assert terminal.calls == 1
    clock.now += 0.02
    await call(chain)
    assert terminal.calls == 2


@pytest.mark.parametrize(
    ("scope", "options", "shared"),
    [
        ("public", {}, True),
        ("private", {"shared_by_default": True}, False),
        (None, {}, False),
        (None, {"shared_by_default": True}, True),
        (None, {"backends": {"m": {"shared": True}}}, True),
        ("something-new", {"shared_by_default": True}, False),
    ],
)
async def test_cache_scope_decides_who_may_share_a_result(
    scope: str | None, options: dict[str, Any], shared: bool
) -> None:
    terminal = Terminal({} if scope is None else {"cacheScope": scope})
    chain, _ = chain_with(terminal, **options)
    await call(chain, principal=ALICE)
    assert (await call(chain, principal=ALICE))["result"]["n"] == 1
    bobs = await call(chain, principal=BOB)
    assert (bobs["result"]["n"] == 1) is shared


@pytest.mark.parametrize(
    "terminal",
    [
        Terminal({"resultType": "input_required", "inputRequests": {}}),
        Terminal({"isError": True}),
        Terminal(error={"code": -32603, "message": "boom"}),
    ],
)
async def test_errors_and_unfinished_results_are_never_kept(terminal: Terminal) -> None:
    chain, cache = chain_with(terminal)
    await call(chain)
    await call(chain)
    assert terminal.calls == 2 and cache.counters()["stores"] == 0


async def test_a_changed_policy_version_misses() -> None:
    terminal, policy = Terminal(), SetPolicyVersion()
    chain, _ = chain_with(terminal, policy=policy)
    await call(chain)
    await call(chain)
    assert terminal.calls == 1
    policy.version = 2
    await call(chain)
    assert terminal.calls == 2


async def test_the_key_holds_params_but_not_meta() -> None:
    terminal = Terminal()
    chain, _ = chain_with(terminal)
    await call(chain, params={"name": "m_look", "arguments": {"a": 1, "b": 2}, "_meta": {"progressToken": 1}})
    await call(chain, params={"_meta": {"progressToken": 2}, "arguments": {"b": 2, "a": 1}, "name": "m_look"})
    assert terminal.calls == 1
    await call(chain, params={"name": "m_look", "arguments": {"a": 2, "b": 2}})
    assert terminal.calls == 2


async def test_only_reads_to_a_backend_are_cached() -> None:
    terminal = Terminal()
    chain, _ = chain_with(terminal)
    writer = Route("m", "tool", "write", "m_write")
    for _ in range(2):
        await call(chain, route=writer)
        await call(chain, method="tools/list")
        await call(chain, direction=Direction.TO_CLIENT, method="sampling/createMessage")
    assert terminal.calls == 6
    for _ in range(2):
        await call(chain, method="prompts/get", route=Route("m", "prompt", "p", "m_p"))
    assert terminal.calls == 7


async def test_per_object_ttls_win_over_the_backend_and_zero_turns_caching_off() -> None:
    terminal = Terminal()
    chain, _ = chain_with(terminal, ttls={"m/tool/lo*": 0}, backends={"m": {"ttl_seconds": 30}})
    await call(chain)
    await call(chain)
    assert terminal.calls == 2


async def test_backend_events_forget_a_backend_or_a_uri() -> None:
    terminal = Terminal()
    chain, cache = chain_with(terminal)
    resource = Route("m", "resource", "data://x", "portico://m/data://x")
    other = Route("m", "resource", "data://y", "portico://m/data://y")
    for route in (resource, other, resource, other):
        await call(chain, method="resources/read", route=route, params={"uri": route.exposed})
    assert terminal.calls == 2
    cache.backend_event("m", "resource_updated", {"uri": "portico://m/data://x"})
    for route in (resource, other):
        await call(chain, method="resources/read", route=route, params={"uri": route.exposed})
    assert terminal.calls == 3
    cache.backend_event("m", "down", {})
    await call(chain, method="resources/read", route=other, params={"uri": other.exposed})
    assert terminal.calls == 4


async def test_the_memory_store_is_bounded_in_entries_and_bytes() -> None:
    store = MemoryStore(max_entries=3, max_bytes=1000)
    for name in "abcd":
        await store.set(name, b"v", ttl=60)
    assert len(store) == 3 and await store.get_first(["a"]) is None and store.evictions == 1
    # Using an entry keeps it: the least recently used one goes next.
    assert await store.get_first(["b"]) == b"v"
    await store.set("e", b"v", ttl=60)
    assert await store.get_first(["c"]) is None and await store.get_first(["b"]) == b"v"
    # 3 + 996 bytes: the entry bound evicts "d", then the byte bound "b" and "e".
    await store.set("big", b"x" * 996, ttl=60)
    assert await store.get_first(["big"]) == b"x" * 996
    assert len(store) == 1 and store.size_bytes == 999 and store.evictions == 5
    await store.set("huge", b"x" * 2000, ttl=60)
    assert await store.get_first(["huge"]) is None and store.size_bytes <= 1000


async def test_a_result_bigger_than_max_entry_bytes_is_not_kept() -> None:
    terminal = Terminal({"content": [{"type": "text", "text": "x" * 5000}]})
    chain, _ = chain_with(terminal, max_entry_bytes=1000)
    await call(chain)
    await call(chain)
    assert terminal.calls == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"redis_url": "http://localhost"}, "redis_url must look like"),
        ({"redis_url": "redis://h:port/0"}, "bad port"),
        ({"max_entry_bytes": 10**9}, "max_entry_bytes"),
        ({"ttls": {"*": -1}}, "not between"),
        ({"nonsense": 1}, "Extra inputs"),
    ],
)
def test_bad_options_are_refused_clearly(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CacheOptions(**options)


async def test_each_object_keeps_its_own_configured_ttl() -> None:
    terminal = Terminal()
    chain, _ = chain_with(terminal, ttls={"m/tool/look": 0})
    other = Route("m", "tool", "other", "m_other", read_only=True)
    for route, calls in ((TOOL, 1), (other, 2), (TOOL, 3), (other, 3), (TOOL, 4)):
        await call(chain, route=route, params={"name": route.exposed})
        assert terminal.calls == calls


def test_configured_ttls_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "REMEMBERED_ROUTES", 2)
    ttls = ConfiguredTtls(CacheOptions(ttls={"m/resource/short*": 5}, backends={"n": {"ttl_seconds": 7}}))
    routes = [
        Route("m", "resource", "short-1", "portico://m/short-1"),
        Route("m", "resource", "long", "portico://m/long"),
        Route("n", "resource", "short-2", "portico://n/short-2"),
        Route("m", "resource", "short-3", "portico://m/short-3"),
    ]
    for _ in range(3):
        assert [ttls(route) for route in routes] == [5, 60, 7, 5]
    assert len(ttls._known) <= 2


def test_every_part_of_a_request_and_its_scope_makes_its_own_key() -> None:
    def keys(**changed: Any) -> tuple[str, str]:
        request: dict[str, Any] = {
            "route": TOOL,
            "method": "tools/call",
            "params": {"name": "m_look", "arguments": {"a": 1}},
            "parts": [1, ["0.0"]],
            "owner": "credential:token-of-alice",
        }
        found = entry_keys("portico:cache", **{**request, **changed})
        return found.private, found.shared

    private, shared = keys()
    assert private != shared and private.startswith("portico:cache:entry:m:")
    # The params are canonical: key order and _meta do not matter.
    reordered = keys(params={"_meta": {"progressToken": 3}, "arguments": {"a": 1}, "name": "m_look"})
    assert reordered == (private, shared)
    # Another principal has its own private entry, and the same shared one; no owner's name, however
    # chosen, makes a private key that is the shared key.
    owners = ["credential:token-of-bob", "public", "", '"]', '["public"]']
    private_keys = [private] + [keys(owner=owner)[0] for owner in owners]
    assert all(keys(owner=owner)[1] == shared for owner in owners)
    assert len({*private_keys, shared}) == len(private_keys) + 1
    # Anything else that differs makes both keys differ.
    different_requests = [
        keys(parts=[2, ["0.0"]]),  # another policy version
        keys(parts=[1, ["0.1"]]),  # another generation of the backend
        keys(parts=[1, ["0.0", "0.0"]]),  # a URI's generation too
        keys(params={"name": "m_look", "arguments": {"a": 2}}),
        keys(params={"name": "m_look", "arguments": {"a": "1"}}),
        keys(params={"name": "m_look", "arguments": {"a": 1}, "parts": [1, ["0.0"]]}, parts=[]),
        keys(method="prompts/get"),
        keys(route=Route("m", "tool", "other", "m_other", read_only=True)),
    ]
    every_key = [private, shared, *(key for pair in different_requests for key in pair)]
    assert len(set(every_key)) == len(every_key)


async def test_a_redis_that_hangs_costs_no_more_than_the_time_the_request_has_left() -> None:
    async def answer_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(answer_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    terminal = Terminal()
    # Redis's own budget is far longer than the request's: only the request's time can end the wait.
    chain, cache = chain_with(terminal, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_seconds=10)
    started = time.monotonic()
    try:
        reply = await call(chain, seconds_left=0.3)
        assert reply["result"]["n"] == 1 and time.monotonic() - started < 5
        assert cache.counters()["errors"] >= 1 and cache.counters()["hits"] == 0
    finally:
        await cache.close()
        server.close()

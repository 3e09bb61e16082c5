"""The ratelimit plugin: bucket maths on an injected clock, then limits through real gateways (WebSocket,
both HTTP eras with 429 and Retry-After), and buckets shared through a real Redis by two gateways."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from plugins.ratelimit import Draw, MemoryBuckets, RateLimit, RateLimitOptions
from proxy.chain import ANONYMOUS, Principal, Route
from proxy.errors import ConfigError
from tests.conftest import RunningGateway, StartGateway, fixture_server
from tests.header_auth import HEADER_AUTH
from tests.ports import free_port
from tests.rawclient import RawClient, RpcError
from tests.redis_server import RedisServer
from tests.test_http_transport import endpoint, tool_call
from tests.test_modern_era import modern_post
from tests.test_modern_era import request as modern_request

RATE_LIMITED = -32065


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


AUTH = HEADER_AUTH


def route(tool: str, backend: str = "c") -> Route:
    return Route(backend=backend, kind="tool", name=tool, exposed=f"{backend}_{tool}")


def limiter(clock: Clock | None = None, **options: Any) -> RateLimit:
    return RateLimit(RateLimitOptions.model_validate(options), clock=clock or Clock())


# -- bucket maths ----------------------------------------------------------------------------------------


async def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    buckets = MemoryBuckets(10, clock)
    bucket = [Draw("k", tokens_per_second=2.0, capacity=3.0)]
    assert [(await buckets.take(bucket)).allowed for _ in range(3)] == [True, True, True]
    refused = await buckets.take(bucket)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    clock.now += 0.25
    assert (await buckets.take(bucket)).retry_after == pytest.approx(0.25)
    clock.now += 0.25
    assert (await buckets.take(bucket)).allowed  # exactly when it was told to come back
    assert (await buckets.take(bucket)).retry_after == pytest.approx(0.5)
    clock.now += 100  # a long pause refills only up to the burst
    assert [(await buckets.take(bucket)).allowed for _ in range(4)] == [True, True, True, False]


async def test_a_request_takes_from_every_bucket_or_from_none() -> None:
    clock = Clock()
    buckets = MemoryBuckets(10, clock)
    roomy = Draw("roomy", tokens_per_second=1.0, capacity=5.0)
    slow = Draw("slow", tokens_per_second=0.1, capacity=1.0)
    assert (await buckets.take([roomy, slow])).allowed
    refused = await buckets.take([roomy, slow])
    # The emptiest bucket decides when to come back; the roomy one lost nothing to the refusal.
    assert refused.retry_after == pytest.approx(10.0)
    assert [(await buckets.take([roomy])).allowed for _ in range(5)] == [True, True, True, True, False]


async def test_rate_per_seconds_and_the_default_burst() -> None:
    clock = Clock()
    limit = limiter(clock, per_principal={"rate": 2, "per_seconds": 60})
    draws = limit.draws_for(ANONYMOUS, route("lookup"))
    assert [(await limit.store.take(draws)).allowed for _ in range(3)] == [True, True, False]
    assert (await limit.store.take(draws)).retry_after == pytest.approx(30.0)


async def test_in_memory_buckets_are_capped_least_recently_used_first() -> None:
    clock = Clock()
    buckets = MemoryBuckets(2, clock)
    one = Draw("one", 1.0, 1.0)
    assert (await buckets.take([one])).allowed
    assert (await buckets.take([Draw("two", 1.0, 1.0)])).allowed
    assert not (await buckets.take([one])).allowed  # a refusal does not make "one" recently used
    assert (await buckets.take([Draw("three", 1.0, 1.0)])).allowed
    assert len(buckets) == 2
    # "one" was dropped (least recently used), so it comes back full.
    assert (await buckets.take([one])).allowed


def test_which_buckets_a_request_takes_from() -> None:
    limit = limiter(
        per_principal={"rate": 10},
        backends={"c": {"rate": 5}},
        tools={"c/tool/up*": {"rate": 1, "scope": "shared"}, "c/tool/*": {"rate": 2}},
    )
    alice, bob = Principal(subject="alice"), Principal(subject="bob", tenant="t")
    assert limit.draws_for(alice, None) == []  # requests to the gateway itself: not limited by default
    keys = [d.key for d in limit.draws_for(alice, route("lookup"))]
    assert keys == ["p:0::alice", "b:c", "t:c/tool/lookup|0::alice"]
    assert [d.key for d in limit.draws_for(bob, route("upsert"))] == ["p:1:t:bob", "b:c", "t:c/tool/upsert|*"]
    assert [d.key for d in limit.draws_for(bob, route("x", backend="d"))] == ["p:1:t:bob"]
    gateway_too = limiter(per_principal={"rate": 10}, limit_gateway_requests=True)
    assert [d.key for d in gateway_too.draws_for(alice, None)] == ["p:0::alice"]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"per_principal": {"rate": 0.5}}, "burst (by default rate) must be at least 1"),
        ({"per_principal": {"rate": 1, "burst": 0}}, "greater than or equal to 1"),
        ({"per_principal": {"rate": 1, "per_second": 1}}, "unknown option"),
        ({"redis_url": "http://localhost"}, "redis_url must be a redis://"),
        ({"on_redis_error": "maybe"}, "on_redis_error"),
    ],
)
async def test_bad_options_are_one_clear_config_error(
    start_gateway: StartGateway, options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        await start_gateway({"mcpServers": {}, "plugins": [{"name": "ratelimit", "options": options}]})
    assert complaint in refused.value.message and "plugins[0].options" in refused.value.message


# -- through a real gateway ------------------------------------------------------------------------------


def backend(record: Path) -> dict[str, Any]:
    return fixture_server("counting_server.py", env={"RECORD_TO": str(record)})


def calls_reaching(record: Path) -> list[str]:
    lines = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [m["params"]["name"] for m in lines if m.get("method") == "tools/call"]


def rate_limit_of(gw: RunningGateway) -> RateLimit:
    found = next(p.plugin for p in gw.gateway.plugins if isinstance(p.plugin, RateLimit))
    assert isinstance(found, RateLimit)
    return found


async def lookup(client: RawClient, tool: str = "c_lookup") -> dict[str, Any]:
    return await client.call("tools/call", {"name": tool, "arguments": {"key": "k"}})


async def refused(client: RawClient, tool: str = "c_lookup") -> dict[str, Any]:
    with pytest.raises(RpcError) as error:
        await lookup(client, tool)
    assert error.value.code == RATE_LIMITED, error.value.error
    return error.value.error


async def limited_gateway(start_gateway: StartGateway, record: Path, **options: Any) -> RunningGateway:
    plugins = [AUTH, {"name": "ratelimit", "options": options}]
    return await start_gateway({"mcpServers": {"c": backend(record)}, "plugins": plugins})


async def as_principal(gw: RunningGateway, subject: str) -> RawClient:
    return await gw.client(headers={"Authorization": f"Bearer {subject}"})


async def test_each_principal_has_its_own_bucket(start_gateway: StartGateway, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    gw = await limited_gateway(start_gateway, record, per_principal={"rate": 3, "per_seconds": 60})
    alice, bob = await as_principal(gw, "alice"), await as_principal(gw, "bob")
    for _ in range(3):
        await lookup(alice)
    error = await refused(alice)
    assert 19 < error["data"]["retryAfterSeconds"] <= 20  # a token every 20 s
    await lookup(bob)  # bob's bucket is his own
    # Requests to the gateway itself are not limited (by default), even for a caller over its limit.
    assert await alice.list_all("tools/list", "tools")
    assert calls_reaching(record) == ["lookup"] * 4  # the refused call never reached the backend
    assert rate_limit_of(gw).counts() == {"allowed": 4, "limited": 1, "store_errors": 0}


async def test_a_backend_limit_is_shared_by_all_its_callers(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "record.jsonl"
    gw = await limited_gateway(start_gateway, record, backends={"c": {"rate": 2, "per_seconds": 60}})
    alice, bob = await as_principal(gw, "alice"), await as_principal(gw, "bob")
    await lookup(alice)
    await lookup(bob, "c_upsert")
    await refused(alice, "c_append")
    await refused(bob)
    assert calls_reaching(record) == ["lookup", "upsert"]


async def test_tool_limits_per_principal_or_shared(start_gateway: StartGateway, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    tools = {
        "c/tool/lookup": {"rate": 1, "per_seconds": 60},
        "c/tool/upsert": {"rate": 1, "per_seconds": 60, "scope": "shared"},
    }
    gw = await limited_gateway(start_gateway, record, tools=tools)
    alice, bob = await as_principal(gw, "alice"), await as_principal(gw, "bob")
    await lookup(alice)
    await refused(alice)
    await lookup(bob)  # per principal: bob has a lookup of his own
    await lookup(alice, "c_upsert")
    await refused(bob, "c_upsert")  # shared: alice used it up for everyone
    for _ in range(3):
        await lookup(alice, "c_append")  # no limit matches append
    assert calls_reaching(record) == ["lookup", "lookup", "upsert", "append", "append", "append"]


async def test_gateway_requests_take_from_the_principal_bucket_when_asked(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "record.jsonl"
    gw = await limited_gateway(
        start_gateway,
        record,
        per_principal={"rate": 4, "per_seconds": 60},
        limit_gateway_requests=True,
    )
    alice = await as_principal(gw, "alice")  # initialize took the first token
    await alice.call("ping")
    await alice.call("tools/list")
    await lookup(alice)
    with pytest.raises(RpcError) as error:
        await alice.call("ping")
    assert error.value.code == RATE_LIMITED


# -- HTTP: 429 and Retry-After ---------------------------------------------------------------------------


async def test_legacy_http_answers_429_with_retry_after(start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = await limited_gateway(
        start_gateway, tmp_path / "r.jsonl", per_principal={"rate": 1, "per_seconds": 90}
    )
    mcp = endpoint(gw)
    session = await mcp.open_session()
    first = await mcp.post(tool_call("c_lookup", key="k"), session)
    assert first.status == 200 and "Retry-After" not in first.headers
    await first.read()
    second = await mcp.post(tool_call("c_lookup", key="k"), session)
    assert second.status == 429, await second.text()
    assert second.headers["Retry-After"] == "90"
    body = await second.json()
    assert body["error"]["code"] == RATE_LIMITED and body["error"]["data"]["retryAfterSeconds"] > 89
    ping = await mcp.post({"jsonrpc": "2.0", "id": 77, "method": "ping"}, session)
    assert ping.status == 200  # the session lives on, and the gateway's own requests are not limited


async def test_modern_http_answers_429_with_retry_after(start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = await limited_gateway(
        start_gateway, tmp_path / "r.jsonl", per_principal={"rate": 2, "per_seconds": 2.5, "burst": 1}
    )
    url = gw.server.make_url("/mcp")
    call = modern_request("tools/call", {"name": "c_lookup", "arguments": {"key": "k"}})
    async with gw.http.post(url, json=call, headers=modern_post("c_lookup")) as first:
        assert first.status == 200, await first.text()
    async with gw.http.post(url, json=call, headers=modern_post("c_lookup")) as second:
        assert second.status == 429, await second.text()
        assert second.headers["Retry-After"] == "2"  # 1.25 s, rounded up to whole seconds
        assert (await second.json())["error"]["code"] == RATE_LIMITED


# -- Redis -----------------------------------------------------------------------------------------------


async def test_two_gateways_share_one_limit_through_redis(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    options = {"redis_url": redis_url, "per_principal": {"rate": 3, "per_seconds": 60}}
    first = await limited_gateway(start_gateway, tmp_path / "one.jsonl", **options)
    second = await limited_gateway(start_gateway, tmp_path / "two.jsonl", **options)
    try:
        alice_one, alice_two = await as_principal(first, "alice"), await as_principal(second, "alice")
        await lookup(alice_one)
        await lookup(alice_two)
        await lookup(alice_one)
        error = await refused(alice_two)
        assert 19 < error["data"]["retryAfterSeconds"] <= 20
        await refused(alice_one)
        await lookup(await as_principal(second, "bob"))
        assert len(calls_reaching(tmp_path / "one.jsonl")) + len(calls_reaching(tmp_path / "two.jsonl")) == 4
    finally:
        await rate_limit_of(first).close()
        await rate_limit_of(second).close()


async def test_concurrent_calls_on_two_gateways_never_overdraw_a_redis_bucket(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    options = {"redis_url": redis_url, "backends": {"c": {"rate": 5, "per_seconds": 600}}}
    gateways = [await limited_gateway(start_gateway, tmp_path / f"{n}.jsonl", **options) for n in (1, 2)]
    try:
        clients = [await as_principal(gw, f"user{n}") for n, gw in enumerate(gateways) for _ in range(2)]
        outcomes = await asyncio.gather(
            *(lookup(c) for c in clients for _ in range(6)), return_exceptions=True
        )
        refusals = [o for o in outcomes if isinstance(o, RpcError)]
        assert len(outcomes) - len(refusals) == 5 and all(r.code == RATE_LIMITED for r in refusals)
        reached = sum(len(calls_reaching(tmp_path / f"{n}.jsonl")) for n in (1, 2))
        assert reached == 5
    finally:
        for gw in gateways:
            await rate_limit_of(gw).close()


async def test_when_redis_fails_the_default_deny_refuses(start_gateway: StartGateway, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    async with RedisServer() as redis:
        gw = await limited_gateway(
            start_gateway,
            record,
            redis_url=redis.url,
            per_principal={"rate": 100},
            redis_timeout_seconds=1,
            redis_error_retry_seconds=3,
        )
        alice = await as_principal(gw, "alice")
        await lookup(alice)
    try:
        error = await refused(alice)  # redis-server is gone: the default is to refuse
        assert "unavailable" in error["message"] and error["data"]["retryAfterSeconds"] == 3
        assert calls_reaching(record) == ["lookup"]
        assert rate_limit_of(gw).counts() == {"allowed": 1, "limited": 1, "store_errors": 1}
    finally:
        await rate_limit_of(gw).close()


async def test_when_redis_fails_allow_lets_requests_through(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "record.jsonl"
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    gw = await limited_gateway(
        start_gateway, record, redis_url=nobody, per_principal={"rate": 1}, on_redis_error="allow"
    )
    try:
        alice = await as_principal(gw, "alice")
        for _ in range(3):
            await lookup(alice)  # over the limit of 1, but nothing can count it
        assert calls_reaching(record) == ["lookup"] * 3
        assert rate_limit_of(gw).counts() == {"allowed": 3, "limited": 0, "store_errors": 3}
    finally:
        await rate_limit_of(gw).close()

"""Gateway-issued tokens shared through Redis: two real gateways and one real redis-server, tokens made
and revoked by the real ``portico token`` command. A token created for the cluster verifies on every
instance; a revocation is in force on every instance within a second; a lost connection to Redis (a killed
subscription, a restarted Redis) never leaves a revoked token accepted; and checking a token on a message
costs no round trip to Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import asyncio as aioredis

from plugins.auth import Auth
from plugins.auth.shared_tokens import RedisTokenStore
from proxy import config
from proxy.errors import ConfigError, ErrorCode
from proxy.plugin_loader import build_plugins
from tests.conftest import RunningGateway, StartGateway, everything
from tests.rawclient import RpcError
from tests.redis_server import RedisServer
from tests.test_http_transport import eventually

TOKEN_KEY = "a-cluster-wide-token-hashing-key-0123456789"
OK = "ok"
REVOKED = "the token was revoked"
UNCHECKABLE = "gateway tokens cannot be checked right now"


def settings(tmp_path: Path, redis_url: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "mcpServers": {"ev": everything("tokens")},
        "plugins": [
            {
                "name": "auth",
                # Each instance its own (never created) SQLite path: only Redis can carry the tokens.
                "options": {"token_key": TOKEN_KEY, "token_store": str(tmp_path / "unused.sqlite")},
            }
        ],
    }


def portico_token(gw: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    """``portico token ARGS --config <this instance's config file>``, as its own process."""
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "proxy", "token", command, "--config", gw.gateway.config.source, *rest],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create(gw: RunningGateway, user: str) -> dict[str, Any]:
    done = portico_token(gw, "create", "--user", user, "--json")
    assert done.returncode == 0, done.stderr
    created: dict[str, Any] = orjson.loads(done.stdout)
    return created


def revoke(gw: RunningGateway, token_id: str) -> None:
    done = portico_token(gw, "revoke", token_id)
    assert done.returncode == 0, done.stderr


async def answer(gw: RunningGateway, token: str) -> str:
    """``ok`` if the instance lets an HTTP request with ``token`` in, else why it refused."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    async with gw.http.post(gw.url.replace("ws://", "http://"), json=body, headers=headers) as response:
        if response.status != 401:
            return OK
        refusal: dict[str, Any] = orjson.loads(await response.read())
        return str(refusal["error"]["message"])


async def until(gw: RunningGateway, token: str, wanted: str, seconds: float) -> None:
    started = time.monotonic()
    while (found := await answer(gw, token)) != wanted:
        assert time.monotonic() - started < seconds, f"still {found!r} after {seconds} s, not {wanted!r}"
        await asyncio.sleep(0.02)


def auth_of(gw: RunningGateway) -> Auth:
    plugin = next(named.plugin for named in gw.gateway.plugins if named.name == "auth")
    assert isinstance(plugin, Auth)
    return plugin


async def two_instances(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> tuple[RunningGateway, RunningGateway]:
    a = await start_gateway(settings(tmp_path / "a", redis_url))
    b = await start_gateway(settings(tmp_path / "b", redis_url))
    return a, b


async def test_a_token_created_for_the_cluster_verifies_on_every_instance(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    a, b = await two_instances(start_gateway, tmp_path, redis_url)
    assert await answer(a, "ptc_pat_000000000000_" + "x" * 43) == "the gateway token is not valid"
    alice = create(a, "alice")
    assert await answer(b, alice["token"]) == OK
    assert await answer(a, alice["token"]) == OK
    # Instances following already, and one started afterwards, see a token created after them.
    bob = create(b, "bob")
    assert await answer(a, bob["token"]) == OK
    c = await start_gateway(settings(tmp_path / "c", redis_url))
    assert await answer(c, alice["token"]) == OK and await answer(c, bob["token"]) == OK
    listing = portico_token(c, "list", "--json")
    assert [row["subject"] for row in orjson.loads(listing.stdout)] == ["alice", "bob"]
    assert not (tmp_path / "a" / "unused.sqlite").exists()


async def test_a_revocation_through_one_instance_fails_on_the_other_within_a_second(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    a, b = await two_instances(start_gateway, tmp_path, redis_url)
    alice, bob = create(a, "alice"), create(a, "bob")
    headers = {"Authorization": f"Bearer {alice['token']}"}
    session = await b.client(headers=headers)
    bystander = await b.client(headers={"Authorization": f"Bearer {bob['token']}"})
    assert await answer(b, alice["token"]) == OK  # and its principal is cached on B
    revoke(a, alice["id"])
    await until(b, alice["token"], REVOKED, seconds=1.0)
    assert await answer(a, alice["token"]) == REVOKED
    # The session opened on B before the revocation is refused, and ended, on its next message.
    with pytest.raises(RpcError) as caught:
        await session.call("tools/list")
    assert caught.value.code == ErrorCode.UNAUTHENTICATED
    assert caught.value.error["message"] == REVOKED
    assert await bystander.call("tools/list")
    assert await answer(b, bob["token"]) == OK


async def redis_reads(redis_url: str) -> int:
    """How many reads of hashes Redis has served so far."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("hget", "hgetall"))


async def test_checking_a_token_costs_no_round_trip_to_redis(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    a, b = await two_instances(start_gateway, tmp_path, redis_url)
    alice = create(a, "alice")
    session = await b.client(headers={"Authorization": f"Bearer {alice['token']}"})
    before = await redis_reads(redis_url)
    for _ in range(20):
        assert await session.call("tools/list")
    assert await redis_reads(redis_url) == before


async def test_a_lost_subscription_never_leaves_a_revoked_token_accepted(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    """The subscriptions are cut (as when the network drops them) and the token revoked at once, before
    the instances can follow again (every 0.5 s): the announcement reaches nobody. Once an instance has
    noticed, gateway tokens are refused, and once subscribed again it has read the revocation."""
    a, b = await two_instances(start_gateway, tmp_path, redis_url)
    alice, bob = create(a, "alice"), create(a, "bob")
    for gw in (a, b):
        assert await answer(gw, alice["token"]) == OK
    # A session of another token, open on B: refused while B cannot hear revocations, never ended by it.
    session = await b.client(headers={"Authorization": f"Bearer {bob['token']}"})
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        await redis.aclose()
    store = RedisTokenStore(redis_url, "portico:auth:", 5.0, None)
    try:
        assert store.revoke(alice["id"], time.time()) is not None
    finally:
        store.close()
    listener = auth_of(b).gateway_tokens.shared.listener  # type: ignore[union-attr]
    started = time.monotonic()
    answers: list[str] = []
    lost_it = False
    # Until B has noticed the cut (its loop reads the closed socket within moments) and followed again.
    while not (lost_it and listener.subscribed.is_set()):
        assert time.monotonic() - started < 3.0, f"B did not follow the channel again in time: {answers}"
        lost_it = lost_it or not listener.subscribed.is_set()
        answers.append(await answer(b, alice["token"]))
        try:
            await session.call("tools/list")
        except RpcError as exc:
            answers.append(f"session: {exc.error['message']}")
        await asyncio.sleep(0.01)
    # Accepted at most in the moments before B noticed; refused from then on, and revoked at the end.
    refused_from = next(i for i, found in enumerate(answers) if found != OK)
    assert set(answers[refused_from:]) <= {UNCHECKABLE, REVOKED, f"session: {UNCHECKABLE}"}, answers
    assert UNCHECKABLE in answers and f"session: {UNCHECKABLE}" in answers, answers
    assert await session.call("tools/list")
    for gw in (a, b):
        await until(gw, bob["token"], OK, seconds=2.0)
        assert await answer(gw, alice["token"]) == REVOKED


async def test_redis_restarting_leaves_no_token_accepted_that_it_does_not_hold(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """A Redis that restarts without its data (this one persists nothing): while it is down gateway tokens
    are refused; afterwards the tokens it lost fail everywhere, and the instances follow the new one."""
    first = RedisServer()
    async with first:
        a, b = await two_instances(start_gateway, tmp_path, first.url)
        alice = create(a, "alice")
        for gw in (a, b):
            assert await answer(gw, alice["token"]) == OK
    for gw in (a, b):
        await until(gw, alice["token"], UNCHECKABLE, seconds=2.0)
    second = RedisServer()
    second.port, second.url = first.port, first.url
    async with second:
        for gw in (a, b):
            await until(gw, alice["token"], "the gateway token is not valid", seconds=3.0)
        carol = create(a, "carol")
        assert await answer(b, carol["token"]) == OK
        revoke(b, carol["id"])
        await until(a, carol["token"], REVOKED, seconds=1.0)


async def test_the_token_commands_say_plainly_when_redis_cannot_be_reached(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    gw = await start_gateway(settings(tmp_path, redis_url))
    unknown = portico_token(gw, "revoke", "0123456789ab")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "portico: no token with id '0123456789ab' in Redis"
    source = Path(gw.gateway.config.source)
    source.write_text(source.read_text().replace(redis_url, "redis://127.0.0.1:1/0"))
    done = portico_token(gw, "create", "--user", "alice")
    assert done.returncode == 1
    assert done.stderr.startswith("portico: the shared token store in Redis cannot be used:")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_bad_redis_url_is_a_clear_config_error() -> None:
    text = f'plugins:\n  - name: auth\n    options: {{token_key: "{TOKEN_KEY}", redis_url: "http://x"}}\n'
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.options\.redis_url: redis_url must be a redis://"):
        build_plugins(config.parse(text, source="x.yaml"))


async def test_an_instance_follows_revocations_from_start_up_not_from_its_first_request(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    gw = await start_gateway(settings(tmp_path, redis_url))
    tokens = auth_of(gw).gateway_tokens
    assert tokens is not None and tokens.shared is not None
    # No client has reached it: its plugin's start() already reads and follows the shared tokens.
    shared = tokens.shared
    await eventually(lambda: shared.in_sync, what="the tokens in sync before any request")

"""Policy changes shared through Redis: two real gateways, each with its own copy of the policy files (as
separate pods have), one real redis-server. A change to one instance's files is in force on the other
within a second; a broken policy changes nothing anywhere; an instance that starts adopts the newest
published policy, and catches up on a change it missed while its connection to Redis was down."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from redis import asyncio as aioredis

from plugins.policy import Policy
from plugins.policy.broadcast import PUBLISH_SCRIPT
from proxy import config
from proxy.errors import ConfigError, ErrorCode
from proxy.plugin_loader import build_plugins
from tests.conftest import RunningGateway, StartGateway, everything
from tests.rawclient import RawClient, RpcError
from tests.redis_server import RedisServer
from tests.test_policy import RBAC_MODEL

# Everyone (anonymous included) may echo and add; the change takes add away.
BOTH = "p, *, ev/tool/echo, tools/call, allow\np, *, ev/tool/add, tools/call, allow\n"
ECHO_ONLY = "p, *, ev/tool/echo, tools/call, allow\n"
OPEN_MODEL = RBAC_MODEL.replace("g(r.sub, p.sub)", "keyMatch(r.sub, p.sub)")
PREFIX = "portico:policy:"


def policy_files(folder: Path, policy: str = BOTH) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.conf").write_text(OPEN_MODEL)
    (folder / "policy.csv").write_text(policy)
    return folder


def settings(folder: Path, redis_url: str) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "mcpServers": {"ev": everything("broadcast")},
        "plugins": [
            {
                "name": "policy",
                "options": {"model": str(folder / "model.conf"), "policy": str(folder / "policy.csv")},
            }
        ],
    }


def policy_of(gw: RunningGateway) -> Policy:
    plugin = next(named.plugin for named in gw.gateway.plugins if named.name == "policy")
    assert isinstance(plugin, Policy)
    return plugin


async def may_add(client: RawClient) -> bool:
    try:
        await client.call("tools/call", {"name": "ev_add", "arguments": {"a": 1, "b": 2}})
    except RpcError as exc:
        assert exc.code == ErrorCode.ACCESS_DENIED, exc.error
        return False
    return True


async def until_denied(client: RawClient, seconds: float) -> float:
    """Call ``add`` until the policy denies it; how long that took. Bounded by ``seconds``."""
    started = time.monotonic()
    while await may_add(client):
        assert time.monotonic() - started < seconds, f"add was still allowed after {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def two_instances(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> tuple[RunningGateway, RunningGateway, RawClient, RawClient]:
    a = await start_gateway(settings(policy_files(tmp_path / "a"), redis_url))
    b = await start_gateway(settings(policy_files(tmp_path / "b"), redis_url))
    client_a, client_b = await a.client(), await b.client()
    # The first request of each joins the cluster: both agree on one published policy.
    assert await may_add(client_a) and await may_add(client_b)
    assert policy_of(a).cluster is not None and policy_of(b).cluster is not None
    return a, b, client_a, client_b


async def published_version(redis_url: str) -> int | None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        version = await client.hget(PREFIX + "current", "version")
    finally:
        await client.aclose()
    return None if version is None else int(version)


async def test_a_change_on_one_instance_is_in_force_on_the_other_within_a_second(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    a, b, client_a, client_b = await two_instances(start_gateway, tmp_path, redis_url)
    b_files = (tmp_path / "b" / "policy.csv").read_text()
    (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY)
    # B's files never change: only the broadcast can take add away from its clients.
    await until_denied(client_b, seconds=1.0)
    assert (tmp_path / "b" / "policy.csv").read_text() == b_files
    assert not await may_add(client_a)
    assert (await client_b.call("tools/call", {"name": "ev_echo", "arguments": {"text": "hi"}}))["content"]
    version = await published_version(redis_url)
    assert version is not None and policy_of(a).cluster.version == policy_of(b).cluster.version == version  # type: ignore[union-attr]
    # Last change wins: a later change on B (back to both tools) reaches A the same way.
    (tmp_path / "b" / "policy.csv").write_text(BOTH)
    started = time.monotonic()
    while not await may_add(client_a):
        assert time.monotonic() - started < 1.0, "A did not take B's later change within a second"
        await asyncio.sleep(0.02)


async def test_a_broken_policy_file_changes_nothing_anywhere(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, client_a, client_b = await two_instances(start_gateway, tmp_path, redis_url)
    before = await published_version(redis_url)
    versions = (policy_of(a).engine.version, policy_of(b).engine.version)
    caplog.set_level(logging.ERROR, logger="portico.policy")
    # Valid except for one line, which would otherwise drop the add rule: all or nothing.
    (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY + "p, *, ev/tool/add, tools/call, maybe\n")
    started = time.monotonic()
    while "the previous policy stays in force" not in caplog.text:
        assert time.monotonic() - started < 2.0, "A never looked at its broken file"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # what a broadcast would need to arrive, were there one
    assert await may_add(client_a) and await may_add(client_b)
    assert await published_version(redis_url) == before
    assert (policy_of(a).engine.version, policy_of(b).engine.version) == versions


async def test_a_broken_publication_never_replaces_a_good_policy(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Texts another instance published (a newer gateway, or anyone with access to Redis) are checked
    exactly as files are: one this gateway would refuse is logged, and the policy in force stays."""
    _, _, client_a, client_b = await two_instances(start_gateway, tmp_path, redis_url)
    caplog.set_level(logging.ERROR, logger="portico.policy")
    redis = aioredis.Redis.from_url(redis_url)
    try:
        publish = redis.register_script(PUBLISH_SCRIPT)
        broken = "[request_definition]\nr = sub, obj\n"
        await publish(
            keys=[PREFIX + "current", PREFIX + "changes"], args=[broken, "", repr(time.time()), "x"]
        )
    finally:
        await redis.aclose()
    started = time.monotonic()
    while caplog.text.count("refusing published model") < 2:
        assert time.monotonic() - started < 2.0, "the broken publication was not refused by both"
        await asyncio.sleep(0.02)
    assert await may_add(client_a) and await may_add(client_b)
    # A real change afterwards is still taken.
    (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY)
    await until_denied(client_b, seconds=1.0)


async def test_an_instance_that_starts_adopts_the_published_policy(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    a = await start_gateway(settings(policy_files(tmp_path / "a"), redis_url))
    client_a = await a.client()
    assert await may_add(client_a)
    (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY)
    await until_denied(client_a, seconds=1.0)
    # B's files are older than the change A published: B's very first request is decided by A's policy.
    b_files = policy_files(tmp_path / "b")
    old = time.time() - 3600
    for name in ("model.conf", "policy.csv"):
        os.utime(b_files / name, (old, old))
    b = await start_gateway(settings(b_files, redis_url))
    assert not await may_add(await b.client())


async def test_an_instance_started_with_newer_files_brings_them_to_the_others(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    """A pod started from an updated ConfigMap: its files changed after the published policy did."""
    a = await start_gateway(settings(policy_files(tmp_path / "a"), redis_url))
    client_a = await a.client()
    assert await may_add(client_a)
    await asyncio.sleep(0.05)  # the files below are strictly newer than A's publication
    b = await start_gateway(settings(policy_files(tmp_path / "b", ECHO_ONLY), redis_url))
    assert not await may_add(await b.client())
    await until_denied(client_a, seconds=1.0)


async def test_a_change_missed_while_disconnected_is_caught_up_on(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    """B's subscription is cut (as when Redis restarts or the network drops it) and a change is published
    at once, before B can follow again (it retries every 0.5 s): the announcement never reaches B, which
    must read the published policy again once it has subscribed again."""
    _, _, client_a, client_b = await two_instances(start_gateway, tmp_path, redis_url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        publish = redis.register_script(PUBLISH_SCRIPT)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await publish(
            keys=[PREFIX + "current", PREFIX + "changes"],
            args=[OPEN_MODEL, ECHO_ONLY, repr(time.time()), "another-instance"],
        )
    finally:
        await redis.aclose()
    await until_denied(client_b, seconds=2.0)
    await until_denied(client_a, seconds=2.0)


def test_a_bad_redis_url_is_a_clear_config_error(tmp_path: Path) -> None:
    folder = policy_files(tmp_path)
    text = (
        "plugins:\n  - name: policy\n    options:\n"
        f"      {{model: {folder / 'model.conf'}, policy: {folder / 'policy.csv'}, redis_url: 'http://x'}}\n"
    )
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.options\.redis_url: redis_url must be a redis://"):
        build_plugins(config.parse(text, source="x.yaml"))


async def test_after_redis_restarts_without_its_data_changes_still_reach_every_instance(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """The restarted Redis counts versions from 1 again: an instance must not ignore them as old."""
    first = RedisServer()
    async with first:
        a, b, client_a, client_b = await two_instances(start_gateway, tmp_path, first.url)
        (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY)
        await until_denied(client_b, seconds=1.0)
        (tmp_path / "b" / "policy.csv").write_text(BOTH)
        started = time.monotonic()
        while not await may_add(client_a):
            assert time.monotonic() - started < 1.0, "A did not take B's change"
            await asyncio.sleep(0.02)
    second = RedisServer()
    second.port, second.url = first.port, first.url
    async with second:
        for gw in (a, b):
            listener = policy_of(gw).cluster.channel.listener  # type: ignore[union-attr]
            await asyncio.wait_for(listener.subscribed.wait(), 3.0)
        # The policy in force (B's, the last change) is published again, not A's older files.
        assert await published_version(second.url) is not None
        assert await may_add(client_a) and await may_add(client_b)
        (tmp_path / "a" / "policy.csv").write_text(ECHO_ONLY + "# after the restart\n")
        await until_denied(client_b, seconds=2.0)


async def test_an_instance_that_has_served_nothing_yet_still_shares_its_change(
    start_gateway: StartGateway, tmp_path: Path, redis_url: str
) -> None:
    """The plugin starts following at start-up (``start``), not at its first request: a change to the
    files of an instance no client has reached yet reaches the others all the same."""
    a = await start_gateway(settings(policy_files(tmp_path / "a"), redis_url))
    idle = await start_gateway(settings(policy_files(tmp_path / "idle"), redis_url))
    client_a = await a.client()
    assert await may_add(client_a)
    assert policy_of(idle).cluster is not None
    (tmp_path / "idle" / "policy.csv").write_text(ECHO_ONLY)
    await until_denied(client_a, seconds=1.5)

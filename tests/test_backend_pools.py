"""Backend pools: several instances of one backend behind one name, balanced, with failover.

Real gateway, real stdio replicas (tests/fixtures/counting_server.py, whose ``stats`` tool reports its
own pid and counts) and real WebSocket servers (tests/fixtures/ws_backend.py), killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from proxy.backend_pool import BackendPool
from proxy.config import RemoteBackendConfig
from tests.conftest import RunningGateway, StartGateway, fixture_server, listening_fixture
from tests.rawclient import RawClient, RpcError
from tests.test_aggregation import text_of
from tests.test_backend_restart import pid_of, tool_names
from tests.test_bidirectional import call

SLOW_RESTART = {"initial_backoff_seconds": 30.0, "max_backoff_seconds": 30.0}


def pool(replicas: int = 2, **extra: Any) -> dict[str, Any]:
    return fixture_server("counting_server.py", replicas=replicas, restart=SLOW_RESTART, **extra)


async def stats(client: RawClient) -> dict[str, Any]:
    counted: dict[str, Any] = json.loads(text_of(await client.call("tools/call", call("c_stats"))))
    return counted


def the_pool(gw: RunningGateway) -> BackendPool:
    backend = gw.gateway.backends["c"]
    assert isinstance(backend, BackendPool)
    return backend


async def test_round_robin_spreads_calls_over_the_replicas(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": pool(3, balance="round_robin")}})
    client = await gw.client()
    pids = {(await stats(client))["pid"] for _ in range(6)}
    assert pids == {pid_of(instance) for instance in the_pool(gw).instances}
    assert len(pids) == 3


async def test_least_outstanding_prefers_the_idle_instance(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": pool(2)}})
    client = await gw.client()
    slow = asyncio.create_task(client.call("tools/call", call("c_slow_lookup", key="s", seconds=2.0)))
    backend = the_pool(gw)
    async with asyncio.timeout(5):
        while sum(backend.outstanding) == 0:
            await asyncio.sleep(0.01)
    busy = backend.outstanding.index(1)
    idle_pid = pid_of(backend.instances[1 - busy])
    # While one replica is pinned by the slow call, every other call goes to the idle one.
    assert {(await stats(client))["pid"] for _ in range(4)} == {idle_pid}
    assert text_of(await slow) == "s #1"


async def test_a_read_only_call_fails_over_when_a_replica_is_killed(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": pool(2, balance="round_robin")}})
    client = await gw.client()
    backend = the_pool(gw)
    victim = backend.instances[0]
    os.kill(pid_of(victim), signal.SIGKILL)
    # Every lookup succeeds: the dead replica's calls move to the live one, and the tools stay listed.
    for n in range(1, 5):
        assert text_of(await client.call("tools/call", call("c_lookup", key="k"))) == f"k #{n}"
    assert "c_lookup" in await tool_names(client)
    assert backend.ready and not victim.ready


async def test_a_non_idempotent_call_is_not_failed_over(start_gateway: StartGateway, tmp_path: Path) -> None:
    record = tmp_path / "received.jsonl"
    entry = pool(2, timeout_seconds=3.0, env={"RECORD_TO": str(record)})
    gw = await start_gateway({"mcpServers": {"c": entry}})
    client = await gw.client()
    backend = the_pool(gw)
    # A slow read pins one replica, so the append goes to the other one, which has stopped answering.
    slow = asyncio.create_task(client.call("tools/call", call("c_slow_lookup", key="s", seconds=2.0)))
    async with asyncio.timeout(5):
        while sum(backend.outstanding) == 0:
            await asyncio.sleep(0.01)
    stopped = pid_of(backend.instances[backend.outstanding.index(0)])
    os.kill(stopped, signal.SIGSTOP)
    try:
        with pytest.raises(RpcError) as failed:
            await client.call("tools/call", call("c_append", key="k", value="v"))
        assert failed.value.code == -32001  # timed out, and not sent again elsewhere
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert text_of(await slow) == "s #1"
    # The stopped replica reads the append once it runs again; the busy one never got it.
    async with asyncio.timeout(5):
        while '"append"' not in record.read_text():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert record.read_text().count('"append"') == 1


async def test_tools_are_withdrawn_only_when_every_instance_is_down(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": pool(2)}})
    client = await gw.client()
    backend = the_pool(gw)
    os.kill(pid_of(backend.instances[0]), signal.SIGKILL)
    async with asyncio.timeout(5):
        while backend.instances[0].ready:
            await asyncio.sleep(0.02)
    assert "c_lookup" in await tool_names(client)
    os.kill(pid_of(backend.instances[1]), signal.SIGKILL)
    async with asyncio.timeout(5):
        while "c_lookup" in await tool_names(client):
            await asyncio.sleep(0.05)
    assert not backend.ready


async def test_a_websocket_pool_fails_over_to_the_live_server(start_gateway: StartGateway) -> None:
    async with (
        listening_fixture("ws_backend.py") as (url_a, process_a),
        listening_fixture("ws_backend.py") as (url_b, _),
    ):
        entry = {"urls": [url_a, url_b], "era": "legacy", "restart": SLOW_RESTART, "balance": "round_robin"}
        gw = await start_gateway({"mcpServers": {"remote": entry}})
        client = await gw.client()
        process_a.kill()
        await process_a.wait()
        for _ in range(4):
            reply = await client.call("tools/call", call("remote_echo", text="hi"))
            assert text_of(reply) == "hi"


def test_pool_config_keys() -> None:
    remote = RemoteBackendConfig.model_validate({"urls": ["ws://a/", "ws://b/"]})
    assert remote.instance_count == 2 and remote.balance == "least_outstanding"
    assert remote.instance(1).url == "ws://b/" and remote.transport == "websocket"
    with pytest.raises(ValidationError, match="not both"):
        RemoteBackendConfig.model_validate({"url": "ws://a/", "urls": ["ws://b/"]})
    with pytest.raises(ValidationError, match="balance"):
        RemoteBackendConfig.model_validate({"url": "ws://a/", "balance": "random"})

"""Crashed stdio backends come back, retries ride over a crash, the breaker withdraws and restores tools.

Real gateway, real stdio backends (tests/fixtures/counting_server.py, everything_server.py), real signals.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.backend import Backend
from proxy.config import RestartConfig
from proxy.errors import BackendUnavailable
from proxy.resilience import BackendDown, BreakerOpen
from proxy.restart import Restarter
from tests.conftest import RunningGateway, StartGateway, everything, fixture_server
from tests.rawclient import RawClient, RpcError
from tests.test_aggregation import text_of
from tests.test_bidirectional import call

FAST_RESTART = {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1.0}


def counting(**extra: Any) -> dict[str, Any]:
    return fixture_server("counting_server.py", restart=FAST_RESTART, **extra)


def pid_of(backend: Backend) -> int:
    link = backend._catalog_link
    assert link is not None
    pid = link.connector.pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return pid


async def tool_names(client: RawClient) -> set[str]:
    return {t["name"] for t in await client.list_all("tools/list", "tools")}


async def list_changes(client: RawClient, count: int, timeout: float = 10.0) -> None:
    """Wait until the client has had ``count`` tools/list_changed notifications in all."""
    deadline = time.monotonic() + timeout
    while len(client.notifications_of("notifications/tools/list_changed")) < count:
        assert time.monotonic() < deadline, "no tools/list_changed in time"
        await asyncio.sleep(0.02)


def session_of(gw: RunningGateway) -> Any:
    return next(iter(gw.gateway.sessions.values()))


async def test_a_killed_stdio_backend_is_restarted_and_its_tools_return(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting(), "ev": everything()}})
    client = await gw.client()
    backend = gw.gateway.backends["c"]
    assert text_of(await client.call("tools/call", call("c_lookup", key="k"))) == "k #1"
    old_pid = pid_of(backend)
    os.kill(old_pid, signal.SIGKILL)
    await list_changes(client, 1)
    assert not any(n.startswith("c_") for n in await tool_names(client))
    # During the outage calls fail at once: the tool is out of the lists, and a call to it is the
    # backend's failure (-32050), never the client's (-32602, unknown tool).
    started = time.monotonic()
    with pytest.raises(RpcError) as unknown:
        await client.call("tools/call", call("c_lookup", key="k"))
    assert unknown.value.code == -32050
    with pytest.raises(BackendDown) as down:
        await backend.call(session_of(gw), "tools/call", call("lookup", key="k"), 5.0)
    assert down.value.code == -32050 and "restarting" in down.value.message
    assert time.monotonic() - started < 1.0
    await list_changes(client, 2)
    assert {"c_lookup", "c_append", "ev_echo"} <= await tool_names(client)
    assert pid_of(backend) != old_pid
    assert text_of(await client.call("tools/call", call("c_lookup", key="k"))) == "k #1"  # a new process
    assert backend.restarter is not None and backend.restarter.restarts == 1


async def test_a_backend_without_restart_stays_down(start_gateway: StartGateway) -> None:
    entry = fixture_server("counting_server.py", restart={"enabled": False})
    gw = await start_gateway({"mcpServers": {"c": entry, "ev": everything()}})
    client = await gw.client()
    os.kill(pid_of(gw.gateway.backends["c"]), signal.SIGKILL)
    await list_changes(client, 1)
    await asyncio.sleep(1.0)
    assert gw.gateway.backends["c"].state == "down"
    assert not any(n.startswith("c_") for n in await tool_names(client))


async def test_a_non_idempotent_call_reaches_the_backend_once_even_when_it_dies_mid_call(
    start_gateway: StartGateway,
) -> None:
    gw = await start_gateway({"mcpServers": {"ev": everything(restart=FAST_RESTART)}})
    client = await gw.client()
    backend = gw.gateway.backends["ev"]
    assert backend.resilience.budget.tokens >= 1  # a retry would be affordable: only the hints forbid it
    crash = await client.request("tools/call", call("ev_crash"))
    assert crash["error"]["code"] == -32050
    await list_changes(client, 2)  # withdrawn, then back
    await asyncio.sleep(1.5)  # time enough for a (wrong) retry to crash the new process too
    assert backend.restarter is not None and backend.restarter.restarts == 1
    assert backend.ready and "ev_echo" in await tool_names(client)


async def test_a_read_only_call_is_retried_across_a_crash(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    client = await gw.client()
    backend = gw.gateway.backends["c"]
    pending = asyncio.create_task(client.call("tools/call", call("c_slow_lookup", key="s", seconds=1.0)))
    for _ in range(100):
        stats = json.loads(text_of(await client.call("tools/call", call("c_stats"))))
        if stats.get("tool:slow_lookup"):
            break
        await asyncio.sleep(0.02)
    os.kill(pid_of(backend), signal.SIGKILL)
    # Sent again to the restarted process, whose own count starts over.
    assert text_of(await asyncio.wait_for(pending, 20)) == "s #1"
    assert backend.restarter is not None and backend.restarter.restarts == 1


async def test_the_breaker_opens_on_timeouts_and_a_successful_probe_closes_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    entry = counting(
        timeout_seconds=0.5,
        breaker={"failures": 2, "reset_seconds": 0.5},
        env={"RECORD_TO": str(record)},
    )
    gw = await start_gateway({"mcpServers": {"c": entry, "ev": everything()}})
    client = await gw.client()
    backend = gw.gateway.backends["c"]
    pid = pid_of(backend)
    os.kill(pid, signal.SIGSTOP)
    try:
        for key in ("t1", "t2"):
            with pytest.raises(RpcError) as timed_out:
                await client.call("tools/call", call("c_lookup", key=key))
            assert timed_out.value.code == -32001
        await list_changes(client, 1)
        assert backend.breaker is not None and backend.breaker.state != "closed"
        assert not any(n.startswith("c_") for n in await tool_names(client))
        assert "ev_echo" in await tool_names(client)
        with pytest.raises(BreakerOpen) as refused:
            await backend.call(session_of(gw), "tools/call", call("lookup", key="refused"), 5.0)
        assert refused.value.code == -32050 and "circuit breaker" in refused.value.message
        await asyncio.sleep(1.5)  # at least one probe went out and timed out: still withdrawn
        assert (
            backend.breaker.state != "closed"
            and len(client.notifications_of("notifications/tools/list_changed")) == 1
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    await list_changes(client, 2)
    assert backend.breaker.closed and "c_lookup" in await tool_names(client)
    assert text_of(await client.call("tools/call", call("c_lookup", key="after"))) == "after #3"
    received = [json.loads(line) for line in record.read_text().splitlines()]
    assert not any("refused" in json.dumps(m) for m in received)  # nothing passed an open breaker
    assert sum(m.get("method") == "ping" for m in received) >= 2  # a failed probe, then a good one
    assert backend.restarter is not None and backend.restarter.restarts == 0


async def test_restart_attempts_back_off_exponentially_up_to_the_max() -> None:
    waits: list[float] = []
    attempts = 0

    async def record_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def start() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 5:
            raise BackendUnavailable("process exited with code 1")

    config = RestartConfig(initial_backoff_seconds=0.5, max_backoff_seconds=3)
    restarter = Restarter("b", config, start, sleep=record_sleep)
    restarter.schedule()
    assert await restarter.wait_until_back(5)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    # A crash soon after the restart keeps backing off; one after a long healthy run starts over.
    assert restarter.next_delay() == 3.0

"""Health checks on the catalog link: a backend that stops answering loses its tools, and gets them back.

Real gateway, real stdio backend (tests/fixtures/counting_server.py); a backend that is alive but does not
answer is made with SIGSTOP, so nothing but the health checks can notice it (no client calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from proxy.config import StdioBackendConfig
from tests.conftest import StartGateway, fixture_server
from tests.test_aggregation import text_of
from tests.test_backend_restart import list_changes, pid_of, tool_names
from tests.test_bidirectional import call

FAST_HEALTH = {"interval_seconds": 0.2, "timeout_seconds": 0.3}


def counting(**extra: Any) -> dict[str, Any]:
    return fixture_server(
        "counting_server.py", restart={"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1.0}, **extra
    )


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_failed_health_checks_open_the_breaker_and_withdraw_the_tools(
    start_gateway: StartGateway,
) -> None:
    backend_cfg = counting(health=FAST_HEALTH, breaker={"failures": 2, "reset_seconds": 0.5})
    gw = await start_gateway({"mcpServers": {"c": backend_cfg}})
    client = await gw.client()
    backend = gw.gateway.backends["c"]
    assert "c_lookup" in await tool_names(client)
    pid = pid_of(backend)
    os.kill(pid, signal.SIGSTOP)
    try:
        await list_changes(client, 1)
        assert backend.breaker is not None and not backend.breaker.closed
        assert not backend.ready
        assert "c_lookup" not in await tool_names(client)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Answering again, the process passes the breaker's probe and its tools return; it was never restarted.
    await list_changes(client, 2)
    assert backend.breaker.closed and "c_lookup" in await tool_names(client)
    assert pid_of(backend) == pid
    assert text_of(await client.call("tools/call", call("c_lookup", key="k"))) == "k #1"


async def test_server_discover_checks_count_an_error_reply_as_alive(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    record = tmp_path / "received.jsonl"
    health = {**FAST_HEALTH, "method": "server/discover"}
    backend_cfg = counting(health=health, breaker={"failures": 1}, env={"RECORD_TO": str(record)})
    gw = await start_gateway({"mcpServers": {"c": backend_cfg}})
    backend = gw.gateway.backends["c"]
    # A legacy backend answers server/discover with "method not found": an answer, so it is healthy.
    await eventually(lambda: backend.recovery.checks >= 3)
    assert record.read_text().count('"server/discover"') >= 3
    assert backend.ready and backend.breaker is not None and backend.breaker.closed


async def test_without_a_breaker_an_unanswering_process_is_restarted(start_gateway: StartGateway) -> None:
    backend_cfg = counting(health=FAST_HEALTH, breaker={"enabled": False, "failures": 2})
    gw = await start_gateway({"mcpServers": {"c": backend_cfg}})
    client = await gw.client()
    backend = gw.gateway.backends["c"]
    pid = pid_of(backend)
    os.kill(pid, signal.SIGSTOP)
    try:
        await eventually(lambda: backend.state == "ready" and pid_of(backend) != pid, timeout=20.0)
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed by the gateway, as it should be
            os.kill(pid, signal.SIGCONT)
    assert backend.restarter is not None and backend.restarter.restarts == 1
    assert text_of(await client.call("tools/call", call("c_lookup", key="k"))) == "k #1"


async def test_no_health_checks_unless_configured(start_gateway: StartGateway) -> None:
    gw = await start_gateway({"mcpServers": {"c": counting()}})
    await asyncio.sleep(0.5)
    assert gw.gateway.backends["c"].recovery.checks == 0


def test_health_config_keys_and_defaults() -> None:
    base = {"command": "x"}
    assert StdioBackendConfig.model_validate(base).health is None
    health = StdioBackendConfig.model_validate({**base, "health": {}}).health
    assert health is not None
    assert (health.interval_seconds, health.timeout_seconds, health.method) == (30.0, 5.0, "ping")
    with pytest.raises(ValidationError, match="method"):
        StdioBackendConfig.model_validate({**base, "health": {"method": "tools/list"}})
    with pytest.raises(ValidationError, match="interval_seconds"):
        StdioBackendConfig.model_validate({**base, "health": {"interval_seconds": 0}})

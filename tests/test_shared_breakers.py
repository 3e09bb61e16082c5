"""Circuit breakers shared by gateway instances (``breaker.shared``, with the ``redis`` section).

Two real gateways, one real redis-server, and one real WebSocket backend behind tests/fault_proxy.py.
Only instance A calls the backend; instance B learns from A that it is failing, and that it is back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import parse
from proxy.errors import ConfigError
from tests.conftest import RunningGateway, StartGateway, listening_fixture
from tests.fault_proxy import Fault, FaultProxy
from tests.test_faults import echo, echoed
from tests.test_http_transport import eventually

DEADLINE = 1.0


def settings(redis_url: str, url: str, shared: bool) -> dict[str, Any]:
    remote = {
        "url": url,
        "transport": "websocket",
        "era": "legacy",
        "timeout_seconds": DEADLINE,
        "retry": {"attempts": 1},
        "breaker": {"failures": 2, "reset_seconds": 1.5, "shared": shared},
    }
    return {"redis": {"url": redis_url, "key_prefix": "test"}, "mcpServers": {"remote": remote}}


def breaker_state(gw: RunningGateway) -> str:
    breaker = gw.gateway.backends["remote"].breaker
    assert breaker is not None
    return breaker.state


async def listening(gw: RunningGateway) -> None:
    breakers = gw.gateway.breakers
    assert breakers is not None
    await asyncio.wait_for(breakers.listener.subscribed.wait(), 5)


@pytest.mark.parametrize("shared", [True, False])
async def test_a_breaker_that_opens_on_one_instance_opens_on_the_others_and_closes_with_them(
    redis_url: str, start_gateway: StartGateway, shared: bool
) -> None:
    async with listening_fixture("ws_backend.py") as (url, _), FaultProxy.for_url(url) as proxy:
        a = await start_gateway(settings(redis_url, proxy.rewrite(url), shared))
        b = await start_gateway(settings(redis_url, proxy.rewrite(url), shared))
        await listening(a)
        await listening(b)
        client = await a.client()
        assert echoed(await echo(client, "up")) == "up"

        proxy.set_fault(Fault.blackhole())
        for text in ("one", "two"):
            reply = await echo(client, text)
            assert reply.get("error", {}).get("code") == -32001, reply
        assert breaker_state(a) == "open"
        if not shared:
            # Alone, B has seen nothing fail: it keeps the backend until its own calls fail.
            await asyncio.sleep(0.5)
            assert breaker_state(b) == "closed"
            return
        await eventually(lambda: breaker_state(b) == "open", what="B's breaker opens")
        assert "remote" not in b.gateway.catalog.backends  # its tools are withdrawn on B too

        # The backend heals: the first probe that succeeds (A's or B's) closes both.
        proxy.set_fault(Fault.passing())
        await eventually(
            lambda: breaker_state(a) == breaker_state(b) == "closed", timeout=15, what="both close"
        )
        assert echoed(await echo(await b.client(), "back")) == "back"


def test_a_stdio_backends_breaker_cannot_be_shared() -> None:
    with pytest.raises(ConfigError, match="shared is for remote backends"):
        parse("mcpServers: {local: {command: python3, breaker: {shared: true}}}")
